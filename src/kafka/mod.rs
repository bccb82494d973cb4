//! Kafka: the `[kafka]` settings (connection, security, compression, raw librdkafka
//! properties) and the librdkafka client configurations built from them
//! ([`client_config`]), shared by the engine (`run`), the receiver (`receive`) and the tools.
//! It knows nothing of either: both depend on it, it depends on neither.

pub mod client_config;
pub mod log_end;

use crate::secret::Secret;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The `[kafka]` section: connection and security, shared by the consumer and the producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Consumer group of `run`.
    pub group_id: String,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism and credentials (for `sasl_*`).
    pub sasl: SaslSettings,
    /// TLS files (for `ssl` and `sasl_ssl`).
    pub tls: TlsSettings,
    /// Compression of the records the service writes (output and dead-letter topics). Input is
    /// read whatever its codec.
    pub compression: Compression,
    /// Raw librdkafka properties for the consumer (applied last; see the librdkafka docs).
    pub consumer: LibrdkafkaProperties,
    /// Raw librdkafka properties for the producer (applied last).
    pub producer: LibrdkafkaProperties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "webhook-enricher".into(),
            client_id: "webhook-enricher".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl: SaslSettings::default(),
            tls: TlsSettings::default(),
            compression: Compression::default(),
            consumer: LibrdkafkaProperties::default(),
            producer: LibrdkafkaProperties::default(),
        }
    }
}

/// librdkafka `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub(crate) fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// The producer's `compression.type`: every codec is built into librdkafka here, so input
/// written with any of them is read too.
///
/// The default is `lz4`: the cheapest in CPU per byte (the service is CPU-bound, see the
/// benchmarks in the README), and a codec every Kafka client decodes (librdkafka always builds
/// it in, unlike zstd, which is a build option there: a librdkafka built without it cannot read
/// zstd records at all). `zstd` compresses further for more CPU; choose it when every reader of
/// the output topics supports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    /// Every codec.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The librdkafka value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// SASL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SaslSettings {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

impl Default for SaslSettings {
    fn default() -> Self {
        Self {
            mechanism: SaslMechanism::ScramSha512,
            username: String::new(),
            password: Secret::default(),
        }
    }
}

/// A SASL mechanism librdkafka supports without Kerberos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS settings (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsSettings {
    /// CA bundle; the system store when empty.
    pub ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub certificate_location: Option<PathBuf>,
    /// Client key for mutual TLS.
    pub key_location: Option<PathBuf>,
    /// Password of the client key.
    pub key_password: Secret,
}

/// Raw librdkafka properties passed through unchanged. They may hold credentials
/// (`sasl.password`, `ssl.key.password`...), so `Debug` and serialization print the values of
/// sensitive-looking keys as `[redacted]`.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct LibrdkafkaProperties(pub BTreeMap<String, String>);

impl LibrdkafkaProperties {
    /// True when a property name looks like it holds a credential.
    pub fn is_sensitive(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "key", "token", "jaas", "credential"]
            .iter()
            .any(|w| k.contains(w))
    }

    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if Self::is_sensitive(k) {
                        "[redacted]"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect()
    }
}

impl std::fmt::Debug for LibrdkafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for LibrdkafkaProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}
