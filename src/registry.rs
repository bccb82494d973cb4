//! Confluent Schema Registry client, used once at startup to turn each output topic's subject
//! into a schema id (see [`crate::avro::RecordEncoder`]).
//!
//! Built on `schema_registry_converter`'s async functions (`post_schema`,
//! `get_schema_by_subject_and_version`, `perform_sr_call`), which handle the REST calls, basic
//! auth, timeouts and fail-over across several URLs. The crate reports failures as a generic
//! `SRCError`; [`RegistryError`] turns them into typed variants from the HTTP status and the
//! registry's `error_code`.
//!
//! Two modes:
//! - `auto_register = true`: `POST /subjects/{subject}/versions` (idempotent: an already
//!   registered schema returns its id; an incompatible one gets 409).
//! - `auto_register = false`: `GET /subjects/{subject}/versions/latest`; its schema must be the
//!   one this build writes (same parsing canonical form). If the latest version is another schema
//!   (e.g. a newer version registered during a rolling deploy), the subject is searched for ours
//!   with `POST /subjects/{subject}` (lookup only, never registers).

use crate::secret::Secret;
use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_subject_and_version, perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How the subject of an output topic is named (Confluent's `subject.name.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value` (Confluent's default).
    #[default]
    TopicName,
    /// `<record full name>`, shared by every topic.
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

impl SubjectNameStrategy {
    /// The subject for a value written to `topic` with the record `record_full_name`.
    pub fn subject(self, topic: &str, record_full_name: &str) -> String {
        match self {
            SubjectNameStrategy::TopicName => format!("{topic}-value"),
            SubjectNameStrategy::RecordName => record_full_name.to_string(),
            SubjectNameStrategy::TopicRecordName => format!("{topic}-{record_full_name}"),
        }
    }
}

/// Schema Registry settings (the `[encoding.registry]` configuration; used only with the
/// `confluent` wire format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrySettings {
    /// Registry base URLs (`http(s)://host:port`), tried in order. Credentials go in
    /// `username`/`password`, never in the URL.
    pub urls: Vec<String>,
    /// Basic-auth user (the API key on Confluent Cloud). Empty: no authentication.
    pub username: String,
    /// Basic-auth password (the API secret on Confluent Cloud).
    pub password: Secret,
    /// Register the schema when the subject does not have it yet. When false, the schema must
    /// already be registered under the subject.
    pub auto_register: bool,
    /// How subjects are named.
    pub subject_name_strategy: SubjectNameStrategy,
    /// Timeout of each registry call (connect and read).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            username: String::new(),
            password: Secret::default(),
            auto_register: true,
            subject_name_strategy: SubjectNameStrategy::TopicName,
            timeout: Duration::from_secs(10),
        }
    }
}

impl RegistrySettings {
    /// Every problem with these settings, for the configuration's single `validate()`.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.urls.is_empty() {
            problems.push("registry.urls: at least one Schema Registry URL is required".into());
        }
        for url in &self.urls {
            match reqwest::Url::parse(url) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => problems.push(format!(
                    "registry.urls: scheme {:?} is not http or https",
                    u.scheme()
                )),
                Ok(u) if !u.username().is_empty() || u.password().is_some() => problems.push(
                    "registry.urls: credentials in a URL are not allowed; use registry.username and registry.password"
                        .into(),
                ),
                Ok(_) => {}
                // The URL may hold credentials: never echo it.
                Err(e) => problems.push(format!("registry.urls: not a valid URL ({e})")),
            }
        }
        if self.username.is_empty() && !self.password.is_empty() {
            problems.push("registry.password is set but registry.username is empty".into());
        }
        if self.timeout.is_zero() {
            problems.push("registry.timeout must be greater than zero".into());
        }
        problems
    }
}

/// A failed registry call. No variant carries the password or a URL with credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The settings are unusable (no URL, bad URL, client cannot be built).
    #[error("schema registry configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// No registry URL answered: connection refused, DNS, TLS or timeout.
    #[error("schema registry unreachable for subject {subject}: {message}")]
    Unreachable {
        /// The subject being resolved.
        subject: String,
        /// The transport error (never contains the URL).
        message: String,
    },
    /// The registry refused the credentials (401) or the permission (403).
    #[error("schema registry refused access to subject {subject}: HTTP {status} (check registry.username / registry.password)")]
    Unauthorized {
        /// The subject being resolved.
        subject: String,
        /// 401 or 403.
        status: u16,
    },
    /// The subject has no versions (lookup mode).
    #[error("schema registry subject {subject} not found; register the schema or set registry.auto_register = true")]
    SubjectNotFound {
        /// The missing subject.
        subject: String,
    },
    /// The subject exists but does not hold the schema this build writes (lookup mode).
    #[error("schema registry subject {subject} does not contain this build's schema (latest is version {latest_version:?}, id {latest_id}); register it or set registry.auto_register = true")]
    NotRegistered {
        /// The subject.
        subject: String,
        /// The latest version found under the subject.
        latest_version: Option<u32>,
        /// The schema id of that latest version.
        latest_id: u32,
    },
    /// The registry rejected the schema as incompatible with the subject's compatibility rule
    /// (HTTP 409).
    #[error("schema is incompatible with subject {subject}: {message}")]
    Incompatible {
        /// The subject.
        subject: String,
        /// The registry's explanation.
        message: String,
    },
    /// Any other answer: an unexpected HTTP status or a body that cannot be understood.
    #[error("schema registry bad response for subject {subject} (HTTP {status:?}): {message}")]
    BadResponse {
        /// The subject.
        subject: String,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// What was wrong (the registry's message, truncated).
        message: String,
    },
}

/// A registry client. Cheap to keep for the life of the process; all calls are `async`.
#[derive(Clone)]
pub struct RegistryClient {
    sr: SrSettings,
    auto_register: bool,
    urls: Vec<String>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("urls", &self.urls)
            .field("auto_register", &self.auto_register)
            .finish_non_exhaustive()
    }
}

/// One version of a subject as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredVersion {
    /// Global schema id (what goes in the wire format).
    pub id: u32,
    /// Version within the subject, when the registry said.
    pub version: Option<u32>,
    /// The schema text.
    pub schema: String,
}

impl RegistryClient {
    /// Builds a client from validated settings.
    pub fn new(settings: &RegistrySettings) -> Result<Self, RegistryError> {
        let problems = settings.validate();
        if !problems.is_empty() {
            return Err(RegistryError::Config {
                message: problems.join("; "),
            });
        }
        let mut urls = settings
            .urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string());
        let first = urls.next().ok_or_else(|| RegistryError::Config {
            message: "no registry URL".into(),
        })?;
        let mut builder = SrSettings::new_builder(first);
        for url in urls {
            builder.add_url(url);
        }
        if !settings.username.is_empty() {
            let password = Some(settings.password.expose()).filter(|p| !p.is_empty());
            builder.set_basic_authorization(&settings.username, password);
        }
        builder.set_timeout(settings.timeout);
        let sr = builder.build().map_err(|e| RegistryError::Config {
            message: format!("cannot build the HTTP client: {}", e.error),
        })?;
        Ok(Self {
            sr,
            auto_register: settings.auto_register,
            urls: settings.urls.clone(),
        })
    }

    /// The schema id to write for `subject`: registered when `auto_register` is on, otherwise
    /// looked up (see the module docs).
    pub async fn resolve_id(
        &self,
        subject: &str,
        schema_text: &str,
        schema: &Schema,
    ) -> Result<u32, RegistryError> {
        if self.auto_register {
            return self.register(subject, schema_text).await;
        }
        let latest = self.latest(subject).await?;
        if same_schema(&latest.schema, schema) {
            return Ok(latest.id);
        }
        match self.lookup(subject, schema_text).await {
            Ok(found) => Ok(found.id),
            Err(RegistryError::SubjectNotFound { .. }) => Err(RegistryError::NotRegistered {
                subject: subject.to_string(),
                latest_version: latest.version,
                latest_id: latest.id,
            }),
            Err(e) => Err(e),
        }
    }

    /// `POST /subjects/{subject}/versions`: registers the schema (or finds it) and returns its id.
    pub async fn register(&self, subject: &str, schema_text: &str) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema_text.to_string());
        post_schema(&self.sr, subject.to_string(), supplied)
            .await
            .map(|r| r.id)
            .map_err(|e| classify(subject, &e))
    }

    /// `GET /subjects/{subject}/versions/latest`.
    pub async fn latest(&self, subject: &str) -> Result<RegisteredVersion, RegistryError> {
        let r = get_schema_by_subject_and_version(&self.sr, subject, None)
            .await
            .map_err(|e| classify(subject, &e))?;
        Ok(RegisteredVersion {
            id: r.id,
            version: r.version,
            schema: r.schema,
        })
    }

    /// `POST /subjects/{subject}`: finds the version of `subject` holding this schema, without
    /// registering it. [`RegistryError::SubjectNotFound`] when the subject or the schema is
    /// missing.
    pub async fn lookup(
        &self,
        subject: &str,
        schema_text: &str,
    ) -> Result<RegisteredVersion, RegistryError> {
        let body = serde_json::json!({ "schema": schema_text, "schemaType": "AVRO" }).to_string();
        let r = perform_sr_call(&self.sr, SrCall::PostForVersion(subject, &body))
            .await
            .map_err(|e| classify(subject, &e))?;
        let id = r.id.ok_or_else(|| RegistryError::BadResponse {
            subject: subject.to_string(),
            status: None,
            message: "lookup answer has no id".into(),
        })?;
        Ok(RegisteredVersion {
            id,
            version: r.version,
            schema: r.schema.unwrap_or_else(|| schema_text.to_string()),
        })
    }
}

/// Whether a registered schema text writes the same bytes as `ours` (same parsing canonical
/// form; docs and defaults may differ).
fn same_schema(registered: &str, ours: &Schema) -> bool {
    Schema::parse_str(registered).is_ok_and(|r| r.canonical_form() == ours.canonical_form())
}

/// Turns the crate's generic error into a typed one.
///
/// The HTTP status is read from the registry's `error_code` (Confluent codes are the status, or
/// the status followed by two digits: 40401 = 404 subject not found) and, when the body was not a
/// registry error, from the crate's message (`... failed with status 401 Unauthorized`).
fn classify(subject: &str, error: &SRCError) -> RegistryError {
    use std::error::Error as _;
    let subject = subject.to_string();
    let source = error.source();
    if let Some(e) = source.and_then(|s| s.downcast_ref::<reqwest::Error>()) {
        if e.is_decode() {
            return RegistryError::BadResponse {
                subject,
                status: e.status().map(|s| s.as_u16()),
                message: "response body is not a Schema Registry answer".into(),
            };
        }
        return RegistryError::Unreachable {
            subject,
            message: transport_message(e),
        };
    }
    let raw = source.and_then(|s| s.downcast_ref::<RawError>());
    let status = status_from_message(&error.error)
        .or_else(|| raw.and_then(|r| status_from_error_code(r.error_code)));
    let message = raw
        .filter(|r| r.error_code != 0)
        .map(|r| truncate(&r.message, 300))
        .unwrap_or_else(|| truncate(&error.error, 300));
    match status {
        Some(status @ (401 | 403)) => RegistryError::Unauthorized { subject, status },
        Some(404) => RegistryError::SubjectNotFound { subject },
        Some(409) => RegistryError::Incompatible { subject, message },
        _ => RegistryError::BadResponse {
            subject,
            status,
            message,
        },
    }
}

/// The kind of a transport failure and its innermost cause, without the URL.
fn transport_message(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = e.source();
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    match last {
        Some(c) => format!("{kind}: {}", truncate(&c, 200)),
        None => kind.to_string(),
    }
}

fn status_from_message(message: &str) -> Option<u16> {
    let rest = message.split("with status ").nth(1)?;
    rest.get(..3)?.parse().ok()
}

fn status_from_error_code(code: u32) -> Option<u16> {
    let status = match code {
        100..=599 => code,
        10_000..=59_999 => code / 100,
        _ => return None,
    };
    u16::try_from(status).ok()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_strategies() {
        let name = "io.webhookenricher.v1.EnrichedEvent";
        assert_eq!(
            SubjectNameStrategy::TopicName.subject("enriched", name),
            "enriched-value"
        );
        assert_eq!(
            SubjectNameStrategy::RecordName.subject("enriched", name),
            name
        );
        assert_eq!(
            SubjectNameStrategy::TopicRecordName.subject("enriched", name),
            "enriched-io.webhookenricher.v1.EnrichedEvent"
        );
    }

    #[test]
    fn status_extraction() {
        assert_eq!(
            status_from_message(
                "HTTP request to schema registry failed with status 401 Unauthorized"
            ),
            Some(401)
        );
        assert_eq!(status_from_message("could not parse"), None);
        assert_eq!(status_from_error_code(40401), Some(404));
        assert_eq!(status_from_error_code(409), Some(409));
        assert_eq!(status_from_error_code(42201), Some(422));
        assert_eq!(status_from_error_code(0), None);
    }

    #[test]
    fn validation_reports_every_problem_and_refuses_credentials_in_urls() {
        let settings = RegistrySettings {
            urls: vec![
                "http://user:hunter2@registry:8081".into(),
                "ftp://registry".into(),
                "not a url".into(),
            ],
            password: Secret::new("hunter2"),
            timeout: Duration::ZERO,
            ..Default::default()
        };
        let problems = settings.validate();
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(!problems.join("\n").contains("hunter2"));
        assert!(RegistrySettings {
            urls: vec!["https://registry:8081".into()],
            ..Default::default()
        }
        .validate()
        .is_empty());
    }

    #[test]
    fn settings_parse_strategy_names() {
        let s: RegistrySettings = toml::from_str(
            r#"urls = ["http://r:8081"]
               subject_name_strategy = "topic_record_name"
               timeout = "3s""#,
        )
        .unwrap();
        assert_eq!(
            s.subject_name_strategy,
            SubjectNameStrategy::TopicRecordName
        );
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert!(s.auto_register);
    }
}
