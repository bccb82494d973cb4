//! The `[enrich]` configuration section: retry schedules and their bounds.

use crate::retry::BackoffPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `[enrich]` configuration section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnrichSettings {
    /// Delays between retries of transient failures (5xx, 429, timeouts, connection errors).
    /// When `max_elapsed` passes without success the provider is reported as failing
    /// consistently (systemic), and the engine pauses instead of dead-lettering.
    pub retry: BackoffPolicy,
    /// The bounded "not yet visible" grace for 404.
    pub not_found: NotFoundSettings,
    /// The bounded re-fetch while the ClearSale module named by the webhook reads pending.
    pub pending: BackoffPolicy,
    /// Keep the provider's raw JSON answer in the record (`raw_response`).
    pub include_raw_response: bool,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        Self {
            retry: BackoffPolicy::default(),
            not_found: NotFoundSettings::default(),
            pending: BackoffPolicy {
                initial: Duration::from_secs(2),
                multiplier: 2.0,
                max_delay: Duration::from_secs(15),
                max_elapsed: Duration::from_secs(60),
            },
            include_raw_response: true,
        }
    }
}

/// How long a 404 may mean "not visible yet".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NotFoundSettings {
    /// Total attempts that may answer 404 before the 404 is final (the first call included).
    pub attempts: u32,
    /// Fixed delay between those attempts.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

impl Default for NotFoundSettings {
    fn default() -> Self {
        Self {
            attempts: 3,
            delay: Duration::from_secs(15),
        }
    }
}
