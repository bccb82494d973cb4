//! The run's counters live with the rest of the telemetry ([`crate::telemetry::stats`]); they
//! are re-exported here for the engine's callers.

pub use crate::telemetry::stats::{EngineStats, StatsSnapshot};
