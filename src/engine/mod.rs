//! The Kafka engine: consume, decode, dedupe, enrich, encode, produce, commit.

pub mod breaker;
pub mod consumer;
pub mod dead_letter;
pub mod dedupe;
pub mod input;
pub mod kafka_config;
pub mod offsets;
pub mod producer;
pub mod scheduler;
pub mod stats;
