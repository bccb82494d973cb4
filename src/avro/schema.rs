//! The Avro schema of the enriched record, embedded in the binary and validated once.
//!
//! `avro/enriched_event.avsc` holds the top-level record `io.webhookenricher.v1.EnrichedEvent`
//! with every nested record and enum defined inline, so the file is self-contained: it is
//! registered as one Schema Registry subject without references, and its fingerprint covers
//! every nested type.

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use std::sync::OnceLock;

/// The schema text, exactly as in `avro/enriched_event.avsc` (what is registered).
pub const ENRICHED_EVENT_AVSC: &str = include_str!("../../avro/enriched_event.avsc");

/// The full name of the top-level record (used by the record-name subject strategies).
pub const ENRICHED_EVENT_FULL_NAME: &str = "io.webhookenricher.v1.EnrichedEvent";

/// The embedded schema failed to parse. Only a broken build can cause it; the service refuses
/// to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("embedded Avro schema {name} is invalid: {message}")]
pub struct SchemaError {
    /// The schema's full name.
    pub name: &'static str,
    /// The parser's message.
    pub message: String,
}

/// The parsed `EnrichedEvent` schema (parsed on first use, then shared).
pub fn schema() -> Result<&'static Schema, SchemaError> {
    static SCHEMA: OnceLock<Result<Schema, SchemaError>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::parse_str(ENRICHED_EVENT_AVSC).map_err(|e| SchemaError {
                name: ENRICHED_EVENT_FULL_NAME,
                message: e.to_string(),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, in the byte order
/// of the single-object header (little-endian).
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&schema.fingerprint::<Rabin>().bytes);
    out
}

/// Lowercase hex of [`fingerprint`], in header byte order (the `schema-fingerprint` header).
pub fn fingerprint_hex(schema: &Schema) -> String {
    fingerprint(schema)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_parses_and_is_the_named_record() {
        let s = schema().expect("embedded schema must parse");
        match s {
            Schema::Record(r) => assert_eq!(r.name.fullname(None), ENRICHED_EVENT_FULL_NAME),
            other => panic!("top level must be a record, got {other:?}"),
        }
    }

    #[test]
    fn fingerprint_matches_apache_avro_header_builder() {
        use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
        let s = schema().unwrap();
        let header = RabinFingerprintHeader::from_schema(s).build_header();
        assert_eq!(&header[..2], &[0xC3, 0x01]);
        assert_eq!(&header[2..], &fingerprint(s));
        assert_eq!(fingerprint_hex(s).len(), 16);
    }
}
