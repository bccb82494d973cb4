//! The `[fallback]` settings (polling fallback for webhooks that do not come).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `[fallback]` section. Disabled by default: then no expectations consumer exists, no topic
/// is checked and nothing the engine writes changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackSettings {
    /// Turns the fallback on (needs the expectations topic, co-partitioned with the input).
    pub enabled: bool,
    /// The topic the systems that create analyses and processes write expectations to.
    pub expectations_topic: String,
    /// How long after an expectation's `created_at` the first poll is made when no matching
    /// webhook result was published.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// The delay after the first poll that was not final; it doubles per poll.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The largest delay between two polls of one expectation.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// How long after `created_at` the fallback gives up (when the expectation has no
    /// `deadline`): the expectation is dead-lettered as `expectation_expired`.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Most expectations held (waiting or being resolved) across the process; at the limit the
    /// expectations topic is not read until some are resolved (nothing is dropped).
    pub max_pending: usize,
    /// The share (0..1] of a provider's request rate that polls may use; webhooks keep the rest.
    pub poll_share: f64,
    /// Most polls running at once (each also takes the provider's concurrency cap).
    pub max_concurrent_polls: usize,
    /// How many recently published webhook results are remembered, so an expectation that
    /// arrives after its webhook resolves at once.
    pub seen_capacity: u64,
    /// How long a published webhook result is remembered for that.
    #[serde(with = "humantime_serde")]
    pub seen_ttl: Duration,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            expectations_topic: "webhooks.expectations".into(),
            after: Duration::from_secs(10),
            poll_interval: Duration::from_secs(5),
            max_poll_interval: Duration::from_secs(60),
            max_wait: Duration::from_secs(15 * 60),
            max_pending: 10_000,
            poll_share: 0.2,
            max_concurrent_polls: 32,
            seen_capacity: 100_000,
            seen_ttl: Duration::from_secs(60 * 60),
        }
    }
}

impl FallbackSettings {
    /// The consumer group whose committed offsets say how far the expectations topic is
    /// resolved (used for commits only; its consumer never joins it).
    pub fn expectations_group(&self, group_id: &str) -> String {
        format!("{group_id}.expectations")
    }

    /// Every problem with these settings (checked only when enabled), each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if self.expectations_topic.trim().is_empty() {
            p.push("fallback.expectations_topic must not be empty".into());
        }
        for (name, d) in [
            ("fallback.poll_interval", self.poll_interval),
            ("fallback.max_poll_interval", self.max_poll_interval),
            ("fallback.max_wait", self.max_wait),
            ("fallback.seen_ttl", self.seen_ttl),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be greater than 0"));
            }
        }
        if self.max_poll_interval < self.poll_interval {
            p.push("fallback.max_poll_interval must not be below fallback.poll_interval".into());
        }
        if self.max_wait < self.after {
            p.push("fallback.max_wait must not be below fallback.after".into());
        }
        if self.max_pending == 0 {
            p.push("fallback.max_pending must be at least 1".into());
        }
        if self.max_concurrent_polls == 0 {
            p.push("fallback.max_concurrent_polls must be at least 1".into());
        }
        if self.seen_capacity == 0 {
            p.push("fallback.seen_capacity must be at least 1".into());
        }
        if !(self.poll_share > 0.0 && self.poll_share <= 1.0) {
            p.push(format!(
                "fallback.poll_share must be in (0, 1], got {}",
                self.poll_share
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_settings_are_not_checked() {
        let s = FallbackSettings {
            poll_share: 7.0,
            ..FallbackSettings::default()
        };
        assert!(s.validate().is_empty());
    }

    #[test]
    fn every_bad_setting_is_named() {
        let s = FallbackSettings {
            enabled: true,
            expectations_topic: " ".into(),
            after: Duration::from_secs(100),
            poll_interval: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(50),
            max_pending: 0,
            poll_share: 0.0,
            max_concurrent_polls: 0,
            seen_capacity: 0,
            seen_ttl: Duration::ZERO,
        };
        let problems = s.validate().join("\n");
        for key in [
            "fallback.expectations_topic",
            "fallback.max_poll_interval",
            "fallback.max_wait must not be below fallback.after",
            "fallback.max_pending",
            "fallback.poll_share",
            "fallback.max_concurrent_polls",
            "fallback.seen_capacity",
            "fallback.seen_ttl",
        ] {
            assert!(problems.contains(key), "{key} missing from:\n{problems}");
        }
        assert!(FallbackSettings {
            enabled: true,
            ..FallbackSettings::default()
        }
        .validate()
        .is_empty());
    }
}
