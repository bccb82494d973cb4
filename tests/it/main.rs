mod avro;
mod clearsale_client;
mod registry;
mod simulator;
mod unico_client;
