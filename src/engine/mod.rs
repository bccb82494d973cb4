//! The Kafka engine: consume, decode, dedupe, enrich, encode, produce, commit.

pub mod breaker;
pub mod dead_letter;
pub mod dedupe;
pub mod offsets;
pub mod scheduler;
