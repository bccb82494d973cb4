mod avro;
mod registry;
