//! Retry delays: exponential backoff with full jitter, a cap, a maximum elapsed time, and a
//! clamped `Retry-After`. Everything here is a pure function of its inputs (the jitter is passed
//! in as a number in `[0, 1)`), so the schedule is unit-tested without clocks or randomness.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A retry schedule; configuration data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackoffPolicy {
    /// The base of the first delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// No single delay is longer than this (also the clamp for `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl BackoffPolicy {
    /// The upper bound of the delay before retry number `retry` (0-based):
    /// `min(max_delay, initial * multiplier^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(retry.min(63) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        let cap = self.max_delay.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    /// Full jitter: a delay uniformly drawn in `[0, ceiling(retry)]`, with `unit` in `[0, 1)`.
    pub fn full_jitter(&self, retry: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.ceiling(retry).mul_f64(unit)
    }

    /// The delay before retry number `retry`, given the provider's `Retry-After` hint and how long
    /// the event has been retried so far. `None` means: give up, the budget is spent.
    ///
    /// A `Retry-After` replaces the jittered delay, clamped to `max_delay` (a provider that asks
    /// for an hour gets `max_delay`, and the budget decides the rest).
    pub fn next_delay(
        &self,
        retry: u32,
        unit: f64,
        retry_after: Option<Duration>,
        elapsed: Duration,
    ) -> Option<Duration> {
        let delay = match retry_after {
            Some(hint) => clamp_retry_after(hint, self.max_delay),
            None => self.full_jitter(retry, unit),
        };
        if elapsed.saturating_add(delay) > self.max_elapsed {
            None
        } else {
            Some(delay)
        }
    }
}

/// Clamps a provider's `Retry-After` to `[0, cap]`.
pub fn clamp_retry_after(hint: Duration, cap: Duration) -> Duration {
    hint.min(cap)
}

/// Parses a `Retry-After` header value: delta-seconds (`"120"`, also fractional) or an HTTP date
/// (RFC 7231), relative to `now`. Dates in the past give zero.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v)
        .ok()?
        .with_timezone(&chrono::Utc);
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[test]
    fn ceiling_grows_exponentially_then_caps() {
        let p = policy();
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_secs(1));
        assert_eq!(p.ceiling(1000), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let p = policy();
        assert_eq!(p.full_jitter(2, 0.0), Duration::ZERO);
        assert_eq!(p.full_jitter(2, 0.5), Duration::from_millis(200));
        assert!(p.full_jitter(2, 0.999_999) <= Duration::from_millis(400));
        // Out-of-range jitter is clamped, never panics.
        assert_eq!(p.full_jitter(2, 7.0), Duration::from_millis(400));
        assert_eq!(p.full_jitter(2, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn retry_after_replaces_jitter_and_is_clamped() {
        let p = policy();
        let d = p.next_delay(0, 0.0, Some(Duration::from_millis(700)), Duration::ZERO);
        assert_eq!(d, Some(Duration::from_millis(700)));
        let d = p.next_delay(0, 0.0, Some(Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(d, Some(Duration::from_secs(1)));
    }

    #[test]
    fn budget_ends_retries() {
        let p = policy();
        assert_eq!(
            p.next_delay(5, 1.0, None, Duration::from_millis(3_900)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            p.next_delay(5, 1.0, None, Duration::from_millis(4_500)),
            None
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 01 Jan 2025 00:00:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
