mod avro;
mod clearsale_client;
mod engine;
mod engine_order;
mod registry;
mod simulator;
mod support;
mod unico_client;
