//! The wire formats of the output value, the encoder built once at startup, and a decoder for
//! printing and tests.
//!
//! | format | bytes |
//! |---|---|
//! | `confluent` | `00`, schema id (4 bytes, big-endian), Avro binary datum |
//! | `single_object` | `C3 01`, CRC-64-AVRO fingerprint of the schema (8 bytes, little-endian), Avro binary datum |

use crate::avro::schema::{
    fingerprint, fingerprint_hex, schema, SchemaError, ENRICHED_EVENT_AVSC,
    ENRICHED_EVENT_FULL_NAME,
};
use crate::record::EnrichedRecord;
use crate::registry::{RegistryClient, RegistryError, RegistrySettings};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Cursor;

/// The `content-type` header of every output record.
pub const CONTENT_TYPE: &str = "application/vnd.webhook-enricher.enriched-event+avro";
/// Header carrying the Schema Registry id (confluent format), in decimal.
pub const SCHEMA_ID_HEADER: &str = "schema-id";
/// Header carrying the schema fingerprint (single-object format): the 8 header bytes in hex.
pub const SCHEMA_FINGERPRINT_HEADER: &str = "schema-fingerprint";
/// Header carrying the schema's full name (`io.webhookenricher.v1.EnrichedEvent`), in both
/// formats: with the version, the schema identity a reader can act on without the registry.
pub const SCHEMA_NAME_HEADER: &str = "schema-name";
/// Header carrying the record's `schema_version` (decimal), in both formats.
pub const SCHEMA_VERSION_HEADER: &str = "schema-version";

const CONFLUENT_MAGIC: u8 = 0;
const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// How output values are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// Confluent Schema Registry framing (needs a registry).
    Confluent,
    /// Avro single-object encoding (no infrastructure; the default).
    #[default]
    SingleObject,
}

/// Encoding settings (the `[encoding]` configuration).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EncodingSettings {
    /// The wire format.
    pub format: WireFormat,
    /// The Schema Registry (used only by the `confluent` format).
    pub registry: RegistrySettings,
}

impl EncodingSettings {
    /// Every problem with these settings. The registry is only checked for `confluent`.
    pub fn validate(&self) -> Vec<String> {
        match self.format {
            WireFormat::Confluent => self
                .registry
                .validate()
                .into_iter()
                .map(|p| format!("encoding.{p}"))
                .collect(),
            WireFormat::SingleObject => Vec::new(),
        }
    }
}

/// The encoder could not be built; the service must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncoderInitError {
    /// The embedded schema is broken (a build defect).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A subject's schema id could not be resolved.
    #[error("resolving the schema id for output topic {topic}: {source}")]
    Registry {
        /// The output topic whose subject failed.
        topic: String,
        /// The registry failure.
        source: RegistryError,
    },
    /// The registry settings are unusable.
    #[error(transparent)]
    RegistryConfig(RegistryError),
}

/// A record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Confluent format: the topic was not among the output topics given at startup, so it has
    /// no schema id.
    #[error("no schema id for output topic {topic} (not resolved at startup)")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },
}

/// Bytes that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Neither framing: the first bytes are shown in hex.
    #[error(
        "unknown framing (first bytes {prefix}); expected 00 (confluent) or C3 01 (single object)"
    )]
    UnknownFraming {
        /// Up to the first two bytes, hex.
        prefix: String,
    },
    /// The value is shorter than its header.
    #[error("value of {len} bytes is shorter than its {format:?} header")]
    Truncated {
        /// The framing recognised.
        format: WireFormat,
        /// The value's length.
        len: usize,
    },
    /// Single object: the fingerprint is not the given schema's.
    #[error("schema fingerprint {found} does not match the reader's schema {expected}")]
    FingerprintMismatch {
        /// The given schema's fingerprint (hex).
        expected: String,
        /// The value's fingerprint (hex).
        found: String,
    },
    /// The datum does not decode with the schema.
    #[error("Avro datum does not decode: {message}")]
    Avro {
        /// apache-avro's message.
        message: String,
    },
    /// Bytes were left after the datum.
    #[error("{count} bytes left after the Avro datum")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The framing found.
    pub format: WireFormat,
    /// The Schema Registry id (confluent framing only).
    pub schema_id: Option<u32>,
    /// The Avro value ([`crate::avro::to_json`] prints it).
    pub value: Value,
}

/// Encodes records for the output topics. Built once at startup (registry calls happen there);
/// [`RecordEncoder::encode`] does no I/O.
pub struct RecordEncoder {
    framing: Framing,
    content: ContentHeaders,
}

enum Framing {
    SingleObject {
        header: Vec<u8>,
        fingerprint_hex: String,
    },
    Confluent {
        /// Output topic to schema id.
        ids: HashMap<String, u32>,
    },
}

impl std::fmt::Debug for RecordEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RecordEncoder");
        match &self.framing {
            Framing::SingleObject {
                fingerprint_hex, ..
            } => d
                .field("format", &WireFormat::SingleObject)
                .field("fingerprint", fingerprint_hex),
            Framing::Confluent { ids } => {
                d.field("format", &WireFormat::Confluent).field("ids", ids)
            }
        }
        .finish()
    }
}

impl RecordEncoder {
    /// Builds the encoder for `settings`. For `confluent`, resolves the schema id of every
    /// topic in `topics` through the registry (one call per distinct subject).
    pub async fn from_settings(
        settings: &EncodingSettings,
        topics: &[String],
    ) -> Result<Self, EncoderInitError> {
        match settings.format {
            WireFormat::SingleObject => Self::single_object(),
            WireFormat::Confluent => {
                let client = RegistryClient::new(&settings.registry)
                    .map_err(EncoderInitError::RegistryConfig)?;
                let schema = schema()?;
                let strategy = settings.registry.subject_name_strategy;
                let mut by_subject: HashMap<String, u32> = HashMap::new();
                let mut ids = HashMap::new();
                for topic in topics {
                    let subject = strategy.subject(topic, ENRICHED_EVENT_FULL_NAME);
                    let id = match by_subject.get(&subject) {
                        Some(id) => *id,
                        None => {
                            let id = client
                                .resolve_id(&subject, ENRICHED_EVENT_AVSC, schema)
                                .await
                                .map_err(|source| EncoderInitError::Registry {
                                    topic: topic.clone(),
                                    source,
                                })?;
                            crate::telemetry::schema_id_resolved(&subject, id);
                            by_subject.insert(subject, id);
                            id
                        }
                    };
                    ids.insert(topic.clone(), id);
                }
                Self::confluent(ids)
            }
        }
    }

    /// A single-object encoder (no I/O).
    pub fn single_object() -> Result<Self, EncoderInitError> {
        let schema = schema()?;
        let fingerprint = fingerprint(schema).map_err(|e| SchemaError {
            name: ENRICHED_EVENT_FULL_NAME,
            message: format!("cannot fingerprint: {e}"),
        })?;
        let mut header = SINGLE_OBJECT_MAGIC.to_vec();
        header.extend_from_slice(&fingerprint);
        let framing = Framing::SingleObject {
            header,
            fingerprint_hex: fingerprint_hex(&fingerprint),
        };
        Ok(Self {
            content: ContentHeaders::new(&framing),
            framing,
        })
    }

    /// A Confluent encoder with schema ids already known (output topic to id).
    pub fn confluent(ids: HashMap<String, u32>) -> Result<Self, EncoderInitError> {
        // The embedded schema is parsed (and checked) once, as for the single-object encoder.
        schema()?;
        let framing = Framing::Confluent { ids };
        Ok(Self {
            content: ContentHeaders::new(&framing),
            framing,
        })
    }

    /// The wire format this encoder writes.
    pub fn format(&self) -> WireFormat {
        match self.framing {
            Framing::SingleObject { .. } => WireFormat::SingleObject,
            Framing::Confluent { .. } => WireFormat::Confluent,
        }
    }

    /// Encodes one record for `topic`. Sync, no I/O.
    pub fn encode(&self, topic: &str, record: &EnrichedRecord) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(512);
        match &self.framing {
            Framing::SingleObject { header, .. } => out.extend_from_slice(header),
            Framing::Confluent { ids } => {
                let id = ids.get(topic).ok_or_else(|| EncodeError::UnknownTopic {
                    topic: topic.to_string(),
                })?;
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        crate::avro::serialize::write_record(record, &mut out);
        Ok(out)
    }

    /// The headers to put on every record written to `topic`: `content-type`, and `schema-id`
    /// (confluent, when the topic has an id) or `schema-fingerprint` (single object). Built once.
    pub fn content_headers(&self, topic: &str) -> &[(&'static str, String)] {
        self.content
            .per_topic
            .get(topic)
            .unwrap_or(&self.content.default)
    }
}

/// The content headers, per output topic.
struct ContentHeaders {
    per_topic: HashMap<String, Vec<(&'static str, String)>>,
    default: Vec<(&'static str, String)>,
}

impl ContentHeaders {
    /// `content-type`, the wire format's schema reference (`schema-id` or `schema-fingerprint`),
    /// then `schema-name` and `schema-version`.
    fn new(framing: &Framing) -> Self {
        let content_type = ("content-type", CONTENT_TYPE.to_string());
        let identity = [
            (SCHEMA_NAME_HEADER, ENRICHED_EVENT_FULL_NAME.to_string()),
            (
                SCHEMA_VERSION_HEADER,
                crate::record::SCHEMA_VERSION.to_string(),
            ),
        ];
        let with = |reference: Option<(&'static str, String)>| {
            let mut headers = vec![content_type.clone()];
            headers.extend(reference);
            headers.extend(identity.iter().cloned());
            headers
        };
        match framing {
            Framing::SingleObject {
                fingerprint_hex, ..
            } => Self {
                per_topic: HashMap::new(),
                default: with(Some((SCHEMA_FINGERPRINT_HEADER, fingerprint_hex.clone()))),
            },
            Framing::Confluent { ids } => Self {
                per_topic: ids
                    .iter()
                    .map(|(topic, id)| {
                        (
                            topic.clone(),
                            with(Some((SCHEMA_ID_HEADER, id.to_string()))),
                        )
                    })
                    .collect(),
                default: with(None),
            },
        }
    }
}

/// Decodes an output value written in either framing (recognised by its first bytes) with
/// `schema` as the writer's schema. Confluent: the id is returned, not checked (the caller chose
/// the schema); single object: the fingerprint must be `schema`'s.
pub fn decode(bytes: &[u8], schema: &Schema) -> Result<Decoded, DecodeError> {
    let (format, schema_id, datum) = match bytes {
        [CONFLUENT_MAGIC, rest @ ..] => {
            let (id, datum) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Truncated {
                    format: WireFormat::Confluent,
                    len: bytes.len(),
                })?;
            (WireFormat::Confluent, Some(u32::from_be_bytes(*id)), datum)
        }
        [0xC3, 0x01, rest @ ..] => {
            let (found, datum) = rest
                .split_first_chunk::<8>()
                .ok_or(DecodeError::Truncated {
                    format: WireFormat::SingleObject,
                    len: bytes.len(),
                })?;
            let expected = fingerprint(schema).map_err(|e| DecodeError::Avro {
                message: format!("cannot fingerprint the reader's schema: {e}"),
            })?;
            if *found != expected {
                return Err(DecodeError::FingerprintMismatch {
                    expected: fingerprint_hex(&expected),
                    found: fingerprint_hex(found),
                });
            }
            (WireFormat::SingleObject, None, datum)
        }
        _ => {
            return Err(DecodeError::UnknownFraming {
                prefix: bytes.iter().take(2).map(|b| format!("{b:02x}")).collect(),
            })
        }
    };
    let avro = |e: apache_avro::Error| DecodeError::Avro {
        message: e.to_string(),
    };
    let reader = GenericDatumReader::builder(schema).build().map_err(avro)?;
    let mut cursor = Cursor::new(datum);
    let value = reader.read_value(&mut cursor).map_err(avro)?;
    let left = datum.len() - usize::try_from(cursor.position()).unwrap_or(datum.len());
    if left > 0 {
        return Err(DecodeError::TrailingBytes { count: left });
    }
    Ok(Decoded {
        format,
        schema_id,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn encoder_can_be_shared_across_tasks() {
        assert_send_sync::<RecordEncoder>();
    }

    #[test]
    fn settings_default_to_single_object() {
        let s: EncodingSettings = toml::from_str("").unwrap();
        assert_eq!(s.format, WireFormat::SingleObject);
        assert!(s.validate().is_empty());
        let c: EncodingSettings = toml::from_str(
            "format = \"confluent\"\n[registry]\nurls = [\"http://r:8081\"]\nauto_register = false",
        )
        .unwrap();
        assert_eq!(c.format, WireFormat::Confluent);
        assert!(!c.registry.auto_register);
        // Unknown keys are reported by the configuration loader (see config::tests).
        assert!(toml::from_str::<EncodingSettings>("format = \"json\"").is_err());
        let missing_url: EncodingSettings = toml::from_str("format = \"confluent\"").unwrap();
        assert_eq!(missing_url.validate().len(), 1);
    }

    #[test]
    fn decode_rejects_bad_framing() {
        let s = schema().unwrap();
        assert!(matches!(
            decode(&[], s),
            Err(DecodeError::UnknownFraming { .. })
        ));
        assert!(matches!(
            decode(&[7, 1, 2], s),
            Err(DecodeError::UnknownFraming { .. })
        ));
        assert!(matches!(
            decode(&[0, 0, 0], s),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&[0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0], s),
            Err(DecodeError::FingerprintMismatch { .. })
        ));
    }
}
