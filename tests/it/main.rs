mod avro;
mod clearsale_client;
mod demo;
mod engine;
mod registry;
mod simulator;
mod support;
mod unico_client;
