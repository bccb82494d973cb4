//! webhook-enricher: turns provider webhook notifications on Kafka into complete,
//! decision-ready Avro records.
//!
//! The flow, module by module: [`event`] decodes raw webhooks, [`provider`] fetches results
//! from the providers' APIs, the normalized record is built and encoded to Avro, and the Kafka
//! engine publishes it. [`receive`] is the HTTP endpoint the providers call, which puts their
//! webhooks on the raw topic. See `docs/DESIGN.md`.
//!
//! `simulator` (the providers' stand-in) and `demo` are tools around the service, behind the
//! `simulator` and `demo` cargo features (on by default); the production image is built without
//! them, and no other module uses them.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod avro;
pub mod config;
pub mod datetime;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod enrich;
pub mod event;
pub mod failure;
pub mod health;
pub mod kafka;
pub mod logging;
pub mod output;
pub mod provider;
pub mod receive;
pub mod record;
pub mod redrive;
pub mod registry;
pub mod renormalize;
pub mod replay;
pub mod retry;
pub mod secret;
pub mod shutdown;
#[cfg(feature = "simulator")]
pub mod simulator;
pub mod telemetry;
