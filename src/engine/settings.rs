//! The `[engine]` settings.

use super::{breaker, dedupe};
use crate::event::DecoderSettings;
use crate::kafka::KafkaSettings;
use crate::output::OutputSettings;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything [`run`](super::run) reads from the configuration: the engine takes its own
/// settings, not the whole configuration (`Config::engine_run_settings` builds them), so the
/// engine does not depend on the configuration module.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    /// Connection, security and raw properties of the consumer and the producer.
    pub kafka: KafkaSettings,
    /// The input topics and the webhook decoder.
    pub input: DecoderSettings,
    /// Where records and dead letters go.
    pub output: OutputSettings,
    /// The `[engine]` section.
    pub engine: EngineSettings,
    /// librdkafka statistics interval (readiness and lag gauges).
    pub statistics_interval: Duration,
}

/// The `[engine]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// Most records received and not yet finished, across the process: the hard memory bound.
    /// Throughput is about `max_in_flight ÷ provider latency`.
    pub max_in_flight: usize,
    /// With more than one provider enabled, the largest share (0..=1] of `max_in_flight` one
    /// provider's records may hold, so a burst of one slow provider leaves room for the other.
    pub provider_share: f64,
    /// How long the budget may stay full before the consumer pauses its partitions (an outage
    /// rather than a backlog). Until then it simply stops polling, which costs nothing.
    #[serde(with = "humantime_serde")]
    pub pause_after: Duration,
    /// How often stored offsets are committed (librdkafka auto-commit interval).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On SIGTERM/SIGINT: how long in-flight records may take to finish before the rest is
    /// abandoned (uncommitted, so redelivered). Keep the pod's grace period above it.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// After the drain: how long the producer may take to deliver what is queued.
    #[serde(with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// After the flush: how long the final commit and leaving the group may take.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// On a rebalance: how long the revoked partitions' records may take to finish. Must stay
    /// below the group's session timeout (librdkafka `session.timeout.ms`, 45 s by default).
    #[serde(with = "humantime_serde")]
    pub revoke_drain_timeout: Duration,
    /// The per-provider circuit breaker.
    pub breaker: breaker::BreakerSettings,
    /// The dedupe cache.
    pub dedupe: dedupe::DedupeSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            provider_share: 0.75,
            pause_after: Duration::from_secs(1),
            commit_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(30),
            revoke_drain_timeout: Duration::from_secs(15),
            breaker: breaker::BreakerSettings::default(),
            dedupe: dedupe::DedupeSettings::default(),
        }
    }
}

impl EngineSettings {
    /// Every problem with these settings (the session-timeout checks need the Kafka settings
    /// and live in `Config::validate`).
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_in_flight == 0 {
            p.push("engine.max_in_flight must be at least 1".into());
        }
        if !(self.provider_share > 0.0 && self.provider_share <= 1.0) {
            p.push(format!(
                "engine.provider_share must be above 0 and at most 1, got {}",
                self.provider_share
            ));
        }
        if self.pause_after.is_zero() || self.pause_after > Duration::from_secs(60) {
            p.push(
                "engine.pause_after must be between 1ms and 60s (far below max.poll.interval.ms)"
                    .into(),
            );
        }
        for (name, d) in [
            ("engine.drain_timeout", self.drain_timeout),
            ("engine.flush_timeout", self.flush_timeout),
            ("engine.close_timeout", self.close_timeout),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be positive"));
            }
        }
        p
    }

    /// The longest an orderly shutdown can take: drain, then flush, then close. The pod's
    /// termination grace period must be above it.
    pub fn shutdown_budget(&self) -> Duration {
        self.drain_timeout + self.flush_timeout + self.close_timeout
    }
}
