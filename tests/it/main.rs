mod simulator;
mod clearsale_client;
mod unico_client;
