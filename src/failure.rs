//! The closed list of reasons an input record is dead-lettered.
//!
//! Each class has a stable snake_case name: it is the `__connect.errors.class.name`-style header
//! value on the dead-letter topic and the `class` label of the dead-letter metric. Adding a class
//! is a documented, reviewed change (README "Dead-letter classes").

use serde::Serialize;
use std::fmt;

/// Why a record could not be turned into an output record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Not JSON, not an object of the expected shape, or larger than the size limit.
    MalformedPayload,
    /// An id (`analysisId`, `id`/`processId`) is not a GUID.
    InvalidId,
    /// Well-formed but not something we enrich: an unknown provider header or an unknown status.
    UnsupportedEvent,
    /// The provider refused the request for this id (400 or another non-retryable 4xx).
    ProviderRejected,
    /// The provider still answers 404 after the "not yet visible" grace.
    NotFound,
    /// The provider answered 2xx with a body that cannot be parsed.
    InvalidResponse,
    /// The normalized record could not be encoded with the output schema, or the output topic
    /// refused it (too large).
    EncodingFailed,
    /// The provider kept failing for this record until the retry budget was spent, while it
    /// answered other records in the meantime: a poison record, not an outage.
    RetriesExhausted,
    /// The record's processing failed inside the service (a panic: a defect to report). It is
    /// dead-lettered so that its key and partition move on.
    InternalError,
    /// Polling fallback: an expectation got no final result, by webhook or by poll, before its
    /// deadline (`fallback.max_wait`). The dead letter is the expectation; `redrive` puts it
    /// back on the expectations topic, which arms it again.
    ExpectationExpired,
}

impl ErrorClass {
    /// Every class, for documentation and tests.
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::MalformedPayload,
        ErrorClass::InvalidId,
        ErrorClass::UnsupportedEvent,
        ErrorClass::ProviderRejected,
        ErrorClass::NotFound,
        ErrorClass::InvalidResponse,
        ErrorClass::EncodingFailed,
        ErrorClass::RetriesExhausted,
        ErrorClass::InternalError,
        ErrorClass::ExpectationExpired,
    ];

    /// The stable name used in headers, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::MalformedPayload => "malformed_payload",
            ErrorClass::InvalidId => "invalid_id",
            ErrorClass::UnsupportedEvent => "unsupported_event",
            ErrorClass::ProviderRejected => "provider_rejected",
            ErrorClass::NotFound => "not_found",
            ErrorClass::InvalidResponse => "invalid_response",
            ErrorClass::EncodingFailed => "encoding_failed",
            ErrorClass::RetriesExhausted => "retries_exhausted",
            ErrorClass::InternalError => "internal_error",
            ErrorClass::ExpectationExpired => "expectation_expired",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        for (c, n) in ErrorClass::ALL.iter().zip(&names) {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(n));
            assert!(n.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorClass::ALL.len());
    }
}
