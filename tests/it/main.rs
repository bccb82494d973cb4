mod avro;
mod clearsale_client;
mod engine;
mod enrich;
mod registry;
mod simulator;
mod support;
mod unico_client;
