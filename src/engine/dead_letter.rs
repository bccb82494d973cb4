//! Dead-letter records: the original key, value and headers unchanged, plus headers saying why.
//!
//! Header names follow Kafka Connect's `__connect.errors.*` convention (so existing tooling that
//! reads Connect dead-letter queues understands them); the ones Connect does not define use the
//! same prefix. See the README, "Dead-letter headers".

use crate::failure::ErrorClass;
use chrono::{DateTime, SecondsFormat, Utc};

/// Header names added to dead-letter records.
pub mod names {
    /// Kafka Connect: the source topic.
    pub const TOPIC: &str = "__connect.errors.topic";
    /// Kafka Connect: the source partition.
    pub const PARTITION: &str = "__connect.errors.partition";
    /// Kafka Connect: the source offset.
    pub const OFFSET: &str = "__connect.errors.offset";
    /// Kafka Connect: the connector name (always `webhook-enricher`).
    pub const CONNECTOR: &str = "__connect.errors.connector.name";
    /// Kafka Connect: the stage that failed (`decode`, `enrich`, `encode`).
    pub const STAGE: &str = "__connect.errors.stage";
    /// Kafka Connect's exception class; here the error class (`malformed_payload`, ...).
    pub const CLASS: &str = "__connect.errors.class.name";
    /// Kafka Connect: the error message (a human reason, never the payload).
    pub const MESSAGE: &str = "__connect.errors.exception.message";
    /// Ours: the source record's timestamp (ms since the epoch), when it had one.
    pub const TIMESTAMP: &str = "__connect.errors.timestamp";
    /// Ours: how many provider attempts were made (0 when it failed before enrichment).
    pub const ATTEMPTS: &str = "__connect.errors.attempts";
    /// Ours: the provider's HTTP status, when there was one.
    pub const HTTP_STATUS: &str = "__connect.errors.http.status";
    /// Ours: when it was dead-lettered, RFC 3339 UTC.
    pub const FAILED_AT: &str = "__connect.errors.failed.at";
    /// Ours: the service version that dead-lettered it.
    pub const SERVICE_VERSION: &str = "__connect.errors.service.version";
    /// Ours: the provider, when it was known.
    pub const PROVIDER: &str = "__connect.errors.provider";
}

/// Where a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Enrich,
    Encode,
    /// Inside the service (a panic).
    Internal,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Enrich => "enrich",
            Stage::Encode => "encode",
            Stage::Internal => "internal",
        }
    }
}

/// Why a record is dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterReason {
    pub class: ErrorClass,
    pub stage: Stage,
    pub message: String,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub provider: Option<crate::provider::Provider>,
}

impl DeadLetterReason {
    /// A record (a webhook or an expectation) that could not be decoded.
    pub fn rejected(rejection: &crate::event::Rejection) -> Self {
        Self {
            class: rejection.class,
            stage: Stage::Decode,
            message: rejection.reason.clone(),
            attempts: 0,
            http_status: None,
            provider: rejection.provider,
        }
    }
}

/// The source coordinates of the failed record.
#[derive(Debug, Clone, PartialEq)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

/// The headers to append to the original ones, in a fixed order.
pub fn headers(
    reason: &DeadLetterReason,
    source: &Source<'_>,
    failed_at: DateTime<Utc>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (names::TOPIC, source.topic.to_string()),
        (names::PARTITION, source.partition.to_string()),
        (names::OFFSET, source.offset.to_string()),
        (names::CONNECTOR, "webhook-enricher".to_string()),
        (names::STAGE, reason.stage.as_str().to_string()),
        (names::CLASS, reason.class.as_str().to_string()),
        (names::MESSAGE, reason.message.clone()),
        (names::ATTEMPTS, reason.attempts.to_string()),
        (
            names::FAILED_AT,
            failed_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
        (
            names::SERVICE_VERSION,
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ];
    if let Some(ts) = source.timestamp_ms {
        h.push((names::TIMESTAMP, ts.to_string()));
    }
    if let Some(status) = reason.http_status {
        h.push((names::HTTP_STATUS, status.to_string()));
    }
    if let Some(p) = reason.provider {
        h.push((names::PROVIDER, p.as_str().to_string()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_every_required_header() {
        let reason = DeadLetterReason {
            class: ErrorClass::NotFound,
            stage: Stage::Enrich,
            message: "clearsale get_analysis: HTTP 404".into(),
            attempts: 3,
            http_status: Some(404),
            provider: Some(crate::provider::Provider::ClearSale),
        };
        let src = Source {
            topic: "raw",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_000),
        };
        let at = DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        let h: std::collections::HashMap<_, _> = headers(&reason, &src, at).into_iter().collect();
        assert_eq!(h[names::CLASS], "not_found");
        assert_eq!(h[names::TOPIC], "raw");
        assert_eq!(h[names::PARTITION], "2");
        assert_eq!(h[names::OFFSET], "41");
        assert_eq!(h[names::TIMESTAMP], "1700000000000");
        assert_eq!(h[names::ATTEMPTS], "3");
        assert_eq!(h[names::HTTP_STATUS], "404");
        assert_eq!(h[names::FAILED_AT], "2025-01-02T03:04:05.000Z");
        assert_eq!(h[names::SERVICE_VERSION], env!("CARGO_PKG_VERSION"));
        assert_eq!(h[names::PROVIDER], "clearsale");
        assert!(h[names::MESSAGE].contains("404"));
    }

    #[test]
    fn optional_headers_are_absent_when_unknown() {
        let reason = DeadLetterReason {
            class: ErrorClass::MalformedPayload,
            stage: Stage::Decode,
            message: "not JSON".into(),
            attempts: 0,
            http_status: None,
            provider: None,
        };
        let src = Source {
            topic: "raw",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        };
        let h = headers(&reason, &src, Utc::now());
        assert!(!h.iter().any(|(k, _)| *k == names::HTTP_STATUS
            || *k == names::TIMESTAMP
            || *k == names::PROVIDER));
    }
}
