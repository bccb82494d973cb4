//! One emit site per event: each thing that happens is one function here that writes the metric
//! and, where useful, the log line. Call sites stay one line and metric names live in one place.
//! No ids in labels: labels are providers, outcomes, classes and status classes only.

use crate::provider::Provider;
use std::time::Duration;

/// Metric names (documented in the README "Metrics" table).
pub mod names {
    pub const PROVIDER_REQUESTS: &str = "webhook_enricher_provider_requests_total";
    pub const PROVIDER_REQUEST_SECONDS: &str = "webhook_enricher_provider_request_duration_seconds";
    pub const TOKEN_REFRESHES: &str = "webhook_enricher_token_refreshes_total";
    pub const PROVIDER_RETRIES: &str = "webhook_enricher_provider_retries_total";
}

/// The status class label of an HTTP status: `2xx`, `4xx`, `5xx`, or `none` without a response.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// One HTTP request to a provider finished. `operation` is a fixed name (`authenticate`,
/// `get_analysis`, `token`, `get_process`); `outcome` is `ok`, `error`, `timeout` or `connect`.
pub fn provider_request(
    provider: Provider,
    operation: &'static str,
    outcome: &'static str,
    status: Option<u16>,
    latency: Duration,
) {
    let labels = [
        ("provider", provider.as_str()),
        ("operation", operation),
        ("outcome", outcome),
        ("status_class", status_class(status)),
    ];
    metrics::counter!(names::PROVIDER_REQUESTS, &labels).increment(1);
    metrics::histogram!(names::PROVIDER_REQUEST_SECONDS, "provider" => provider.as_str(), "operation" => operation)
        .record(latency.as_secs_f64());
}

/// A token was requested from a provider's auth endpoint (`ok` = a token came back).
pub fn token_refreshed(provider: Provider, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(names::TOKEN_REFRESHES, "provider" => provider.as_str(), "outcome" => outcome).increment(1);
    if ok {
        tracing::debug!(provider = provider.as_str(), "provider token refreshed");
    } else {
        tracing::warn!(
            provider = provider.as_str(),
            "provider token refresh failed"
        );
    }
}

/// A provider call will be retried after `delay`. `reason` is a fixed word (`status`, `timeout`,
/// `connect`, `not_found`, `pending`).
pub fn provider_retry(provider: Provider, reason: &'static str, delay: Duration) {
    metrics::counter!(names::PROVIDER_RETRIES, "provider" => provider.as_str(), "reason" => reason)
        .increment(1);
    tracing::debug!(
        provider = provider.as_str(),
        reason,
        delay_ms = delay.as_millis() as u64,
        "retrying provider call"
    );
}

/// At startup, the Schema Registry gave the schema id for an output subject (log only: it happens
/// once per subject).
pub fn schema_id_resolved(subject: &str, schema_id: u32) {
    tracing::info!(subject, schema_id, "schema registry id resolved");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(404)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "none");
    }
}
