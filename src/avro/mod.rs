//! Avro for the enriched record: the embedded schema ([`mod@schema`]), the conversion of an
//! [`EnrichedRecord`](crate::record::EnrichedRecord) to an Avro value and of any Avro value to
//! readable JSON ([`value`]), and the two wire formats with the encoder built at startup
//! ([`wire`]). The encoder writes records through a borrowed `serde` view (`serialize`), straight
//! to bytes; the `Value` conversion is the reference the tests hold it to.
//!
//! Two framings are supported:
//! - `confluent`: magic byte `0`, the 4-byte big-endian Schema Registry id, the Avro datum. The id
//!   is resolved per output topic through [`crate::registry`] once, at startup.
//! - `single_object` (default, no infrastructure): Avro single-object encoding, `C3 01`, the
//!   8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form,
//!   the Avro datum.

pub mod schema;
mod serialize;
pub mod value;
pub mod wire;

pub use schema::{schema, SchemaError};
pub use value::{to_avro_value, to_json};
pub use wire::{
    decode, DecodeError, Decoded, EncodeError, EncoderInitError, EncodingSettings, RecordEncoder,
    WireFormat,
};
