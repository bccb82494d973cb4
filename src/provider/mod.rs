//! The two providers: their API clients (which share one authorised-request flow, [`auth`]),
//! response models, and the one place where a failure is classified as permanent, transient or
//! systemic.

pub mod auth;
pub mod clearsale;
pub mod gate;
pub mod http;
pub mod lenient;
pub mod settings;
pub mod unico;

use clearsale::model::Analysis;
use unico::model::Process;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Which provider an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ClearSale Connect (analysis results).
    ClearSale,
    /// Unico IDUnico (identity processes).
    Unico,
}

impl Provider {
    /// Both providers, in a fixed order.
    pub const ALL: [Provider; 2] = [Provider::ClearSale, Provider::Unico];

    /// The position of this provider in [`Provider::ALL`] (for per-provider arrays).
    pub fn index(self) -> usize {
        match self {
            Provider::ClearSale => 0,
            Provider::Unico => 1,
        }
    }

    /// The lowercase name used in headers, configuration, metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::ClearSale => "clearsale",
            Provider::Unico => "unico",
        }
    }

    /// Parses the `provider` header / configuration value (case-insensitive, surrounding
    /// whitespace ignored).
    pub fn parse(value: &str) -> Option<Provider> {
        match value.trim().to_ascii_lowercase().as_str() {
            "clearsale" => Some(Provider::ClearSale),
            "unico" => Some(Provider::Unico),
            _ => None,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's answer for one event, as fetched by the clients (and re-fetched while pending).
// Moved once per event, never stored in bulk: the size difference is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// A ClearSale analysis. `still_pending` is true when the module the webhook named still read
    /// pending after the bounded re-fetch.
    ClearSale {
        analysis: Analysis,
        /// The response body as received (a JSON object).
        raw: String,
        still_pending: bool,
    },
    /// A Unico process.
    Unico {
        process: Process,
        /// The response body as received (a JSON object).
        raw: String,
    },
    /// Unico answered `410 Gone`: the process ended in error (status 5). A terminal answer, not a
    /// failure of ours.
    UnicoGone,
}

/// A failed provider call. Every variant names the provider and the operation; none carries a
/// secret or a response body that may hold personal data (only the provider's error `detail`/
/// `title`, truncated).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an HTTP status we do not treat as success.
    #[error("{provider} {operation}: HTTP {status}: {detail}")]
    Status {
        provider: Provider,
        operation: &'static str,
        status: u16,
        /// The `Retry-After` header, if any, already parsed.
        retry_after: Option<Duration>,
        /// The provider's error title/detail, truncated; never the request.
        detail: String,
    },
    /// The request did not complete in the configured timeout.
    #[error("{provider} {operation}: timed out after {timeout:?}")]
    Timeout {
        provider: Provider,
        operation: &'static str,
        timeout: Duration,
    },
    /// The connection could not be made or broke.
    #[error("{provider} {operation}: connection failed: {message}")]
    Connect {
        provider: Provider,
        operation: &'static str,
        message: String,
    },
    /// The provider answered 2xx with a body we cannot parse.
    #[error("{provider} {operation}: unparseable response: {message}")]
    InvalidResponse {
        provider: Provider,
        operation: &'static str,
        message: String,
    },
    /// Authentication still fails after one refresh: credentials, key or clock are wrong.
    #[error("{provider}: authentication failed: {message}")]
    Auth {
        provider: Provider,
        status: Option<u16>,
        message: String,
    },
    /// The client is misconfigured (bad key, bad URL); nothing will work until it is fixed.
    #[error("{provider}: configuration error: {message}")]
    Config { provider: Provider, message: String },
}

impl ProviderError {
    /// The provider the call was made to.
    pub fn provider(&self) -> Provider {
        match self {
            ProviderError::Status { provider, .. }
            | ProviderError::Timeout { provider, .. }
            | ProviderError::Connect { provider, .. }
            | ProviderError::InvalidResponse { provider, .. }
            | ProviderError::Auth { provider, .. }
            | ProviderError::Config { provider, .. } => *provider,
        }
    }

    /// The HTTP status of the failed answer, where there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            ProviderError::Auth { status, .. } => *status,
            _ => None,
        }
    }
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Retrying cannot help: dead-letter the event now.
    Permanent,
    /// Retry with backoff; `retry_after` is the provider's hint, if it gave one.
    Transient { retry_after: Option<Duration> },
    /// The provider (or our access to it) is broken for every event: pause, do not dead-letter.
    Systemic,
}

/// Where the bounded "not yet visible" grace for 404 stands for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFoundGrace {
    /// More 404 retries are allowed.
    Open,
    /// The grace has been used up; a 404 is now final.
    Exhausted,
}

/// The single classification of provider failures.
///
/// | failure | class |
/// |---|---|
/// | 400, 401/403 (after the client's one refresh these surface as `Auth`), other 4xx | permanent |
/// | 404 within the grace | transient |
/// | 404 after the grace | permanent |
/// | 408, 425, 429 (with `Retry-After`), 5xx | transient |
/// | timeout, connection error | transient |
/// | 2xx with an unparseable body | permanent |
/// | authentication failing after a refresh, configuration errors | systemic |
///
/// "The provider failing consistently" is also systemic: the enricher reports it when transient
/// failures outlast the retry budget (see `crate::enrich`).
pub fn classify(error: &ProviderError, grace: NotFoundGrace) -> FailureClass {
    match error {
        ProviderError::Status { status: 404, .. } => match grace {
            NotFoundGrace::Open => FailureClass::Transient { retry_after: None },
            NotFoundGrace::Exhausted => FailureClass::Permanent,
        },
        ProviderError::Status {
            status: 408 | 425 | 429,
            retry_after,
            ..
        } => FailureClass::Transient {
            retry_after: *retry_after,
        },
        ProviderError::Status {
            status,
            retry_after,
            ..
        } if *status >= 500 => FailureClass::Transient {
            retry_after: *retry_after,
        },
        ProviderError::Status { .. } => FailureClass::Permanent,
        ProviderError::Timeout { .. } | ProviderError::Connect { .. } => {
            FailureClass::Transient { retry_after: None }
        }
        ProviderError::InvalidResponse { .. } => FailureClass::Permanent,
        ProviderError::Auth { .. } | ProviderError::Config { .. } => FailureClass::Systemic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::Status {
            provider: Provider::Unico,
            operation: "get process",
            status: code,
            retry_after,
            detail: String::new(),
        }
    }

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
        }
        assert_eq!(Provider::parse(" ClearSale "), Some(Provider::ClearSale));
        assert_eq!(Provider::parse("serasa"), None);
    }

    #[test]
    fn classification_table() {
        use FailureClass::*;
        let open = NotFoundGrace::Open;
        assert_eq!(classify(&status(400, None), open), Permanent);
        assert_eq!(classify(&status(403, None), open), Permanent);
        assert_eq!(classify(&status(422, None), open), Permanent);
        assert_eq!(
            classify(&status(404, None), open),
            Transient { retry_after: None }
        );
        assert_eq!(
            classify(&status(404, None), NotFoundGrace::Exhausted),
            Permanent
        );
        let ra = Some(Duration::from_secs(3));
        assert_eq!(
            classify(&status(429, ra), open),
            Transient { retry_after: ra }
        );
        assert_eq!(
            classify(&status(500, None), open),
            Transient { retry_after: None }
        );
        assert_eq!(
            classify(&status(503, ra), open),
            Transient { retry_after: ra }
        );
        let timeout = ProviderError::Timeout {
            provider: Provider::ClearSale,
            operation: "get analysis",
            timeout: Duration::from_secs(1),
        };
        assert_eq!(classify(&timeout, open), Transient { retry_after: None });
        let connect = ProviderError::Connect {
            provider: Provider::ClearSale,
            operation: "get analysis",
            message: "refused".into(),
        };
        assert_eq!(classify(&connect, open), Transient { retry_after: None });
        let invalid = ProviderError::InvalidResponse {
            provider: Provider::ClearSale,
            operation: "get analysis",
            message: "eof".into(),
        };
        assert_eq!(classify(&invalid, open), Permanent);
        let auth = ProviderError::Auth {
            provider: Provider::Unico,
            status: Some(403),
            message: "x".into(),
        };
        assert_eq!(classify(&auth, open), Systemic);
    }
}
