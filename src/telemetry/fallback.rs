//! The polling fallback's events (`engine::fallback`): one function per event, writing the
//! metric and the log line. Expectations are named by their topic, partition and offset (and a
//! provider), never by their payload.

use super::names;
use crate::engine::offsets::TopicPartition;
use crate::event::Rejection;
use crate::provider::Provider;
use chrono::{DateTime, Utc};

/// How an expectation was resolved (the `by` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// A webhook result was published (before or after the expectation arrived).
    Webhook,
    /// A poll published the result.
    Poll,
    /// Given up at its deadline: dead-lettered as `expectation_expired`.
    Expired,
    /// The provider refused the id for good: dead-lettered with the provider's class.
    DeadLetter,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Webhook => "webhook",
            By::Poll => "poll",
            By::Expired => "expired",
            By::DeadLetter => "dead_letter",
        }
    }
}

pub(super) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        names::EXPECTATIONS_PENDING,
        "Expectations waiting for their result (polling fallback)."
    );
    describe_counter!(
        names::EXPECTATIONS_RESOLVED,
        "Expectations resolved, by provider and by webhook, poll, expired or dead_letter."
    );
    describe_counter!(
        names::FALLBACK_POLLS,
        "Fallback polls of a provider's result endpoint, by provider and outcome."
    );
    describe_histogram!(
        names::WEBHOOK_DELAY_SECONDS,
        Unit::Seconds,
        "From an expectation's created_at to the publication of its webhook result, by provider."
    );
}

/// Expectations waiting now.
pub fn pending(waiting: usize) {
    metrics::gauge!(names::EXPECTATIONS_PENDING).set(waiting as f64);
}

/// An expectation was taken in and waits for its result.
pub fn expectation_received(tp: &TopicPartition, offset: i64) {
    tracing::debug!(topic = %tp.topic, partition = tp.partition, offset, "expectation waiting");
}

/// An expectation could not be decoded; it is dead-lettered with its class.
pub fn malformed(tp: &TopicPartition, offset: i64, rejection: &Rejection) {
    tracing::warn!(
        topic = %tp.topic,
        partition = tp.partition,
        offset,
        class = rejection.class.as_str(),
        reason = %rejection.reason,
        "expectation refused: dead-lettered"
    );
}

/// An expectation was resolved.
pub fn resolved(provider: Provider, by: By, polls: u32) {
    metrics::counter!(names::EXPECTATIONS_RESOLVED, "provider" => provider.as_str(), "by" => by.as_str())
        .increment(1);
    match by {
        By::Expired => tracing::warn!(
            provider = provider.as_str(),
            polls,
            "expectation expired without a final result: dead-lettered as expectation_expired"
        ),
        _ => tracing::debug!(
            provider = provider.as_str(),
            by = by.as_str(),
            polls,
            "expectation resolved"
        ),
    }
}

/// A fallback poll ended with `outcome` (`final`, `not_final`, `provider_unavailable`,
/// `already_published`, `failed_<class>`, `cancelled`, `fatal`).
pub fn polled(provider: Provider, outcome: &str) {
    metrics::counter!(names::FALLBACK_POLLS, "provider" => provider.as_str(), "outcome" => outcome.to_string())
        .increment(1);
    tracing::debug!(provider = provider.as_str(), outcome, "fallback poll");
}

/// The webhook of an expectation's result was published `at`: its delay since `created_at`.
pub fn webhook_delay(provider: Provider, created_at: DateTime<Utc>, at: DateTime<Utc>) {
    let seconds = (at - created_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(names::WEBHOOK_DELAY_SECONDS, "provider" => provider.as_str())
        .record(seconds);
}

/// Expectations partitions revoked: their waiting expectations are left to the next owner.
pub fn revoked(tp: &TopicPartition, dropped: usize) {
    tracing::info!(
        topic = %tp.topic,
        partition = tp.partition,
        unresolved = dropped,
        "expectations partition revoked: its unresolved expectations are read again by the next owner"
    );
}
