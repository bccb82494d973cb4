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
    /// The `[fallback]` section (polling fallback; off by default).
    pub fallback: super::fallback::FallbackSettings,
    /// Each provider's request rate (`<provider>.limits.rate_per_second`, 0 when unlimited or
    /// disabled), indexed by `Provider::index`: the fallback's polls take `poll_share` of it.
    pub provider_rates: [u32; crate::provider::Provider::ALL.len()],
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
    /// Provider isolation: diverting a blocked provider's records to its wait topic.
    pub isolation: IsolationSettings,
}

/// On, off, or decided at start-up (`true`, `false`, `"auto"` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Toggle {
    Off,
    On,
    #[default]
    Auto,
}

impl Serialize for Toggle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Toggle::Off => s.serialize_bool(false),
            Toggle::On => s.serialize_bool(true),
            Toggle::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Toggle;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Toggle, E> {
                Ok(if v { Toggle::On } else { Toggle::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Toggle, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "true" | "on" => Ok(Toggle::On),
                    "false" | "off" => Ok(Toggle::Off),
                    "auto" => Ok(Toggle::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// At most this many retry rounds (`engine.isolation.retry_rounds`).
const MAX_RETRY_ROUNDS: usize = 10;
/// A retry round is at most this long: the record holds one place of its provider's catch-up
/// lane, and its lane stays diverted, while it waits.
const MAX_RETRY_ROUND: Duration = Duration::from_secs(3600);

/// The `[engine.isolation]` settings: when a provider cannot be served, its records go to its
/// wait topic instead of waiting in memory, so the other provider and the input keep flowing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IsolationSettings {
    /// Divert a blocked provider's records to its wait topic: `true` (the wait topics must
    /// exist: a missing one stops the start with its name), `false` (records of a blocked
    /// provider wait in memory and, once the in-flight limit is reached, consumption pauses for
    /// every provider), or `"auto"` (the default: on when the wait topics exist, off with a
    /// warning when none does).
    pub enabled: Toggle,
    /// ClearSale's wait topic: as many partitions as each input topic.
    pub clearsale_wait_topic: String,
    /// Unico's wait topic: as many partitions as each input topic.
    pub unico_wait_topic: String,
    /// The consumer group that reads the wait topics back (manually assigned, never joined:
    /// only its committed offsets are used). Empty: `<kafka.group_id>.wait`.
    pub wait_group_id: String,
    /// A provider whose share of the in-flight budget stayed full this long is diverted (it is
    /// slower than its arrivals). An open circuit diverts at once.
    #[serde(with = "humantime_serde")]
    pub divert_after: Duration,
    /// Catching up after a divert starts with this many of the provider's records in flight...
    pub catch_up_initial: usize,
    /// ...and doubles it this often, up to a quarter of `max_in_flight`, while the circuit stays
    /// closed.
    #[serde(with = "humantime_serde")]
    pub catch_up_ramp_every: Duration,
    /// Poison records: a record whose retries ran out while the provider answered other records
    /// is not dead-lettered at once but given one retry round per entry, each a delay before it
    /// is tried again with its full retry budget: the first spent in the wait topic (the
    /// record is written there and read back once due), the later ones where it is read back.
    /// It is dead-lettered as `retries_exhausted` after the last. Empty: dead-lettered at once.
    pub retry_rounds: Vec<humantime_serde::Serde<Duration>>,
}

impl Default for IsolationSettings {
    fn default() -> Self {
        Self {
            enabled: Toggle::Auto,
            clearsale_wait_topic: "webhooks.wait.clearsale".into(),
            unico_wait_topic: "webhooks.wait.unico".into(),
            wait_group_id: String::new(),
            divert_after: Duration::from_secs(10),
            catch_up_initial: 8,
            catch_up_ramp_every: Duration::from_secs(1),
            retry_rounds: vec![
                Duration::from_secs(30).into(),
                Duration::from_secs(120).into(),
            ],
        }
    }
}

impl IsolationSettings {
    /// A provider's wait topic.
    pub fn wait_topic(&self, provider: crate::provider::Provider) -> &str {
        match provider {
            crate::provider::Provider::ClearSale => &self.clearsale_wait_topic,
            crate::provider::Provider::Unico => &self.unico_wait_topic,
        }
    }

    /// The delay of retry round `round` (0-based), if there is one.
    pub fn retry_round(&self, round: u32) -> Option<Duration> {
        let i = usize::try_from(round).ok()?;
        self.retry_rounds.get(i).map(|d| **d)
    }

    /// The wait topics' consumer group.
    pub fn wait_group(&self, group_id: &str) -> String {
        if self.wait_group_id.trim().is_empty() {
            format!("{group_id}.wait")
        } else {
            self.wait_group_id.clone()
        }
    }

    fn validate(&self, p: &mut Vec<String>) {
        if self.enabled == Toggle::Off {
            return;
        }
        for (name, topic) in [
            (
                "engine.isolation.clearsale_wait_topic",
                &self.clearsale_wait_topic,
            ),
            ("engine.isolation.unico_wait_topic", &self.unico_wait_topic),
        ] {
            if topic.trim().is_empty() {
                p.push(format!("{name} must not be empty"));
            }
        }
        if self.clearsale_wait_topic == self.unico_wait_topic {
            p.push("engine.isolation: the two providers need different wait topics (a wait topic is read back by its provider's lane)".into());
        }
        if self.divert_after.is_zero() {
            p.push("engine.isolation.divert_after must be positive".into());
        }
        if self.catch_up_initial == 0 {
            p.push("engine.isolation.catch_up_initial must be at least 1".into());
        }
        if self.catch_up_ramp_every.is_zero() {
            p.push("engine.isolation.catch_up_ramp_every must be positive".into());
        }
        if self.retry_rounds.len() > MAX_RETRY_ROUNDS {
            p.push(format!(
                "engine.isolation.retry_rounds: at most {MAX_RETRY_ROUNDS} rounds"
            ));
        }
        for d in &self.retry_rounds {
            if d.is_zero() || **d > MAX_RETRY_ROUND {
                p.push(format!(
                    "engine.isolation.retry_rounds: each round must be positive and at most {} (got {})",
                    humantime_serde::re::humantime::format_duration(MAX_RETRY_ROUND),
                    humantime_serde::re::humantime::format_duration(**d)
                ));
            }
        }
    }
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
            isolation: IsolationSettings::default(),
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
        self.isolation.validate(&mut p);
        p
    }

    /// The longest an orderly shutdown can take: drain, then flush, then close. The pod's
    /// termination grace period must be above it.
    pub fn shutdown_budget(&self) -> Duration {
        self.drain_timeout + self.flush_timeout + self.close_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Holder {
        enabled: Toggle,
    }

    #[test]
    fn isolation_is_true_false_or_auto() {
        let parse = |s: &str| toml::from_str::<Holder>(s).map(|h| h.enabled);
        assert_eq!(parse("enabled = true").unwrap(), Toggle::On);
        assert_eq!(parse("enabled = false").unwrap(), Toggle::Off);
        assert_eq!(parse("enabled = \"auto\"").unwrap(), Toggle::Auto);
        assert_eq!(parse("enabled = \"off\"").unwrap(), Toggle::Off);
        assert!(parse("enabled = \"maybe\"").is_err());
        assert_eq!(IsolationSettings::default().enabled, Toggle::Auto);
        let back = toml::to_string(&Holder {
            enabled: Toggle::Auto,
        })
        .unwrap();
        assert_eq!(parse(&back).unwrap(), Toggle::Auto);
    }

    #[test]
    fn isolation_settings_are_checked_unless_off() {
        let mut s = EngineSettings::default();
        s.isolation.unico_wait_topic = s.isolation.clearsale_wait_topic.clone();
        s.isolation.catch_up_initial = 0;
        let problems = s.validate();
        assert!(problems.iter().any(|p| p.contains("different wait topics")));
        assert!(problems.iter().any(|p| p.contains("catch_up_initial")));
        s.isolation.enabled = Toggle::Off;
        assert!(s.validate().is_empty());
        assert_eq!(s.isolation.wait_group("g"), "g.wait");
    }

    #[test]
    fn retry_rounds_read_as_durations_and_are_bounded() {
        let s: IsolationSettings = toml::from_str("retry_rounds = [\"1s\", \"5m\"]").unwrap();
        assert_eq!(s.retry_round(0), Some(Duration::from_secs(1)));
        assert_eq!(s.retry_round(1), Some(Duration::from_secs(300)));
        assert_eq!(s.retry_round(2), None);
        let back = toml::to_string(&s).unwrap();
        assert!(back.contains("retry_rounds = [\"1s\", \"5m\"]"), "{back}");
        let none: IsolationSettings = toml::from_str("retry_rounds = []").unwrap();
        assert_eq!(none.retry_round(0), None);
        assert!(toml::from_str::<IsolationSettings>("retry_rounds = [\"soon\"]").is_err());
        let mut e = EngineSettings::default();
        e.isolation.retry_rounds = vec![Duration::ZERO.into(), Duration::from_secs(7200).into()];
        let problems = e.validate();
        assert_eq!(
            problems
                .iter()
                .filter(|p| p.contains("retry_rounds"))
                .count(),
            2,
            "{problems:?}"
        );
        e.isolation.retry_rounds = vec![Duration::from_secs(1).into(); 11];
        assert!(e.validate().iter().any(|p| p.contains("at most 10 rounds")));
    }
}
