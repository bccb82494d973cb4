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
///
/// apache-avro 0.22 leaves a logical-typed primitive as `{"type":"string"}` in the canonical form,
/// where the specification (and the Java and Python implementations) reduce it to `"string"`, so
/// its `RabinFingerprintHeader` would not match what other languages' single-object readers
/// compute. The fingerprint is therefore taken on the schema with its `logicalType` attributes
/// removed: the same binary encoding, and a canonical form that follows the specification.
pub fn fingerprint(schema: &Schema) -> Result<[u8; 8], apache_avro::Error> {
    let mut json = serde_json::to_value(schema)
        .map_err(|e| apache_avro::Error::new(apache_avro::error::Details::ParseSchemaJson(e)))?;
    strip_logical_types(&mut json);
    let plain = Schema::parse(&json)?;
    let mut out = [0u8; 8];
    out.copy_from_slice(&plain.fingerprint::<Rabin>().bytes);
    Ok(out)
}

fn strip_logical_types(json: &mut serde_json::Value) {
    match json {
        serde_json::Value::Object(o) => {
            o.remove("logicalType");
            o.values_mut().for_each(strip_logical_types);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_logical_types),
        _ => {}
    }
}

/// Lowercase hex of [`fingerprint`], in header byte order (the `schema-fingerprint` header).
pub fn fingerprint_hex(fingerprint: &[u8; 8]) -> String {
    fingerprint.iter().map(|b| format!("{b:02x}")).collect()
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
    fn fingerprint_follows_the_specification() {
        // The specification's example: the single-object header of schema "int" ends in
        // 8F 5C 39 3F 1A D5 75 72.
        let int = Schema::parse_str(r#""int""#).unwrap();
        assert_eq!(
            fingerprint_hex(&fingerprint(&int).unwrap()),
            "8f5c393f1ad57572"
        );
        // A logical type does not change the fingerprint (it does not change the bytes).
        let uuid = Schema::parse_str(r#"{"type":"string","logicalType":"uuid"}"#).unwrap();
        let string = Schema::parse_str(r#""string""#).unwrap();
        assert_eq!(fingerprint(&uuid).unwrap(), fingerprint(&string).unwrap());
        // Without logical types it is apache-avro's own fingerprint.
        let record = Schema::parse_str(
            r#"{"type":"record","name":"r","namespace":"n","doc":"d","fields":[{"name":"a","type":["null","long"],"default":null}]}"#,
        )
        .unwrap();
        assert_eq!(
            fingerprint(&record).unwrap().to_vec(),
            record.fingerprint::<Rabin>().bytes
        );
    }
}
