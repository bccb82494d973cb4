//! The receiver's events (`webhook-enricher receive`): one emit site per event, metric handles
//! registered once. Labels are providers, outcomes and reasons; request ids and provider ids go
//! to the logs only, and bodies and credentials nowhere.

use super::Throttle;
use crate::provider::Provider;
use metrics::{Counter, Gauge, Histogram};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Metric names (documented in the README "Metrics" table).
pub mod names {
    pub const REQUESTS: &str = "webhook_enricher_receiver_requests_total";
    pub const REQUEST_SECONDS: &str = "webhook_enricher_receiver_request_duration_seconds";
    pub const AUTH_FAILURES: &str = "webhook_enricher_receiver_auth_failures_total";
    pub const KAFKA_WRITE_SECONDS: &str = "webhook_enricher_receiver_kafka_write_duration_seconds";
    pub const IN_FLIGHT: &str = "webhook_enricher_receiver_requests_in_flight";
    pub const CONNECTIONS: &str = "webhook_enricher_receiver_connections";
}

/// Registers the help text of the receiver's metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::REQUESTS,
        "Webhook requests answered, by provider and outcome (provider \"none\": no endpoint at that path)."
    );
    describe_histogram!(
        names::REQUEST_SECONDS,
        Unit::Seconds,
        "Time from a webhook request's headers to its answer, by provider."
    );
    describe_counter!(
        names::AUTH_FAILURES,
        "Webhook requests that failed authentication (answered 401), by provider and reason."
    );
    describe_histogram!(
        names::KAFKA_WRITE_SECONDS,
        Unit::Seconds,
        "Raw-topic writes, from enqueue to acknowledgement or failure, by provider and outcome."
    );
    describe_gauge!(
        names::IN_FLIGHT,
        "Webhook requests admitted and not yet answered."
    );
    describe_gauge!(names::CONNECTIONS, "Open webhook connections.");
}

/// How a webhook request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// 200: written and acknowledged.
    Accepted,
    /// 200: written and acknowledged, but the engine will dead-letter it (the body does not
    /// decode).
    AcceptedMalformed,
    /// 400: the body could not be read (the client broke off or sent broken framing).
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403: the client is not on the endpoint's allowlist.
    Forbidden,
    /// 408: the body did not arrive within `receive.body_timeout`.
    BodyTimeout,
    /// 413.
    TooLarge,
    /// 503: `receive.max_in_flight` requests were already being handled.
    Overloaded,
    /// 503: the Kafka write failed or did not finish within `receive.write_timeout`.
    KafkaUnavailable,
    /// 503: the receiver is shutting down.
    ShuttingDown,
}

impl RequestOutcome {
    /// Every outcome, in a fixed order (for per-outcome handles).
    pub const ALL: [RequestOutcome; 10] = [
        RequestOutcome::Accepted,
        RequestOutcome::AcceptedMalformed,
        RequestOutcome::BadRequest,
        RequestOutcome::Unauthorized,
        RequestOutcome::Forbidden,
        RequestOutcome::BodyTimeout,
        RequestOutcome::TooLarge,
        RequestOutcome::Overloaded,
        RequestOutcome::KafkaUnavailable,
        RequestOutcome::ShuttingDown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Accepted => "accepted",
            RequestOutcome::AcceptedMalformed => "accepted_malformed",
            RequestOutcome::BadRequest => "bad_request",
            RequestOutcome::Unauthorized => "unauthorized",
            RequestOutcome::Forbidden => "forbidden",
            RequestOutcome::BodyTimeout => "body_timeout",
            RequestOutcome::TooLarge => "too_large",
            RequestOutcome::Overloaded => "overloaded",
            RequestOutcome::KafkaUnavailable => "kafka_unavailable",
            RequestOutcome::ShuttingDown => "shutting_down",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// How a raw-topic write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Acknowledged.
    Ok,
    /// Not acknowledged within `receive.write_timeout`.
    Timeout,
    /// librdkafka's queue was full; nothing was enqueued.
    QueueFull,
    /// Refused or failed.
    Error,
}

impl WriteOutcome {
    const ALL: [WriteOutcome; 4] = [
        WriteOutcome::Ok,
        WriteOutcome::Timeout,
        WriteOutcome::QueueFull,
        WriteOutcome::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Ok => "ok",
            WriteOutcome::Timeout => "timeout",
            WriteOutcome::QueueFull => "queue_full",
            WriteOutcome::Error => "error",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// The failure reasons of [`ReceiverEvents::auth_failed`] (`missing`, `malformed`, `mismatch`).
const AUTH_REASONS: [&str; 3] = ["missing", "malformed", "mismatch"];

const PROVIDERS: usize = Provider::ALL.len();
const OUTCOMES: usize = RequestOutcome::ALL.len();

/// Counts of one receiver run, for its summary and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiveSummary {
    /// Answered 200 (including `accepted_malformed`).
    pub accepted: u64,
    /// Answered 200 with a body the engine will dead-letter.
    pub accepted_malformed: u64,
    /// Answered 4xx.
    pub refused: u64,
    /// Answered 503.
    pub unavailable: u64,
    /// Connections closed without an answer at the drain deadline.
    pub aborted_connections: u64,
}

/// The receiver's metric handles and counters. Cheap to share (`Arc`).
pub struct ReceiverEvents {
    requests: [[Counter; OUTCOMES]; PROVIDERS],
    not_found: Counter,
    request_seconds: [Histogram; PROVIDERS],
    auth_failures: [[Counter; AUTH_REASONS.len()]; PROVIDERS],
    write_seconds: [[Histogram; WriteOutcome::ALL.len()]; PROVIDERS],
    in_flight: Gauge,
    connections: Gauge,
    counts: [AtomicU64; OUTCOMES],
    aborted: AtomicU64,
    throttle: Throttle,
}

impl Default for ReceiverEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiverEvents {
    /// Registers the handles with the installed `metrics` recorder (none installed: no-ops).
    pub fn new() -> Self {
        Self {
            requests: Provider::ALL.map(|p| {
                RequestOutcome::ALL.map(|o| {
                    metrics::counter!(names::REQUESTS, "provider" => p.as_str(), "outcome" => o.as_str())
                })
            }),
            not_found: metrics::counter!(names::REQUESTS, "provider" => "none", "outcome" => "not_found"),
            request_seconds: Provider::ALL
                .map(|p| metrics::histogram!(names::REQUEST_SECONDS, "provider" => p.as_str())),
            auth_failures: Provider::ALL.map(|p| {
                AUTH_REASONS.map(|r| {
                    metrics::counter!(names::AUTH_FAILURES, "provider" => p.as_str(), "reason" => r)
                })
            }),
            write_seconds: Provider::ALL.map(|p| {
                WriteOutcome::ALL.map(|o| {
                    metrics::histogram!(names::KAFKA_WRITE_SECONDS, "provider" => p.as_str(), "outcome" => o.as_str())
                })
            }),
            in_flight: metrics::gauge!(names::IN_FLIGHT),
            connections: metrics::gauge!(names::CONNECTIONS),
            counts: Default::default(),
            aborted: AtomicU64::new(0),
            throttle: Throttle::new(),
        }
    }

    /// The receiver is listening.
    pub fn listening(
        &self,
        addr: std::net::SocketAddr,
        tls: bool,
        topic: &str,
        paths: &[(Provider, &str)],
    ) {
        let paths: Vec<String> = paths
            .iter()
            .map(|(p, path)| format!("{p} {path}"))
            .collect();
        tracing::info!(%addr, tls, topic, endpoints = ?paths, "webhook receiver listening");
    }

    /// An endpoint accepts unauthenticated requests (`auth.mode = "none"`): said once at start.
    pub fn unauthenticated_endpoint(&self, provider: Provider) {
        tracing::warn!(
            provider = provider.as_str(),
            "receive.{provider}.auth.mode is none: this endpoint accepts unauthenticated requests"
        );
    }

    /// A request was answered. `request_id` and `subject_id` go to the log line only.
    pub fn answered(
        &self,
        provider: Provider,
        outcome: RequestOutcome,
        request_id: &str,
        subject_id: Option<&str>,
        detail: &str,
        latency: Duration,
    ) {
        self.requests[provider.index()][outcome.index()].increment(1);
        self.request_seconds[provider.index()].record(latency.as_secs_f64());
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        let p = provider.as_str();
        let o = outcome.as_str();
        let ms = latency.as_millis() as u64;
        match outcome {
            RequestOutcome::Accepted => {
                tracing::debug!(
                    provider = p,
                    request_id,
                    subject_id,
                    latency_ms = ms,
                    "webhook accepted"
                );
            }
            RequestOutcome::AcceptedMalformed => {
                tracing::info!(provider = p, request_id, class = detail, latency_ms = ms,
                    "webhook accepted although its body does not decode: the engine will dead-letter it");
            }
            RequestOutcome::KafkaUnavailable | RequestOutcome::Overloaded => {
                if let Some(repeats) = self.throttle.admit(&format!("{p}|{o}")) {
                    tracing::warn!(
                        provider = p,
                        request_id,
                        outcome = o,
                        reason = detail,
                        repeats,
                        "webhook answered 503: the provider will retry"
                    );
                }
            }
            RequestOutcome::ShuttingDown => {
                tracing::debug!(
                    provider = p,
                    request_id,
                    outcome = o,
                    "webhook answered 503 while shutting down"
                );
            }
            // Authentication and allowlist refusals have their own events.
            RequestOutcome::Unauthorized | RequestOutcome::Forbidden => {}
            RequestOutcome::BadRequest | RequestOutcome::BodyTimeout | RequestOutcome::TooLarge => {
                tracing::info!(
                    provider = p,
                    request_id,
                    outcome = o,
                    reason = detail,
                    "webhook refused"
                );
            }
        }
    }

    /// A request to a path with no endpoint (404).
    pub fn not_found(&self) {
        self.not_found.increment(1);
    }

    /// A request failed authentication (answered 401). Logged at most every 30 s per provider and
    /// reason: a misconfigured provider retries a lot.
    pub fn auth_failed(
        &self,
        provider: Provider,
        reason: &'static str,
        client: IpAddr,
        request_id: &str,
    ) {
        if let Some(i) = AUTH_REASONS.iter().position(|r| *r == reason) {
            self.auth_failures[provider.index()][i].increment(1);
        }
        let p = provider.as_str();
        if let Some(repeats) = self.throttle.admit(&format!("{p}|auth|{reason}")) {
            tracing::warn!(provider = p, reason, client = %client, request_id, repeats,
                "webhook authentication failed (401)");
        }
    }

    /// A client outside the endpoint's allowlist, or an unknown one, was refused (403).
    pub fn forbidden(&self, provider: Provider, client: Option<IpAddr>, request_id: &str) {
        let p = provider.as_str();
        if let Some(repeats) = self.throttle.admit(&format!("{p}|forbidden")) {
            tracing::warn!(
                provider = p,
                client = client.map(tracing::field::display),
                request_id,
                repeats,
                "webhook from a client outside the allowlist refused (403)"
            );
        }
    }

    /// A raw-topic write finished.
    pub fn write_finished(&self, provider: Provider, outcome: WriteOutcome, latency: Duration) {
        self.write_seconds[provider.index()][outcome.index()].record(latency.as_secs_f64());
    }

    /// `accept` failed (out of file descriptors, a connection reset before it was accepted).
    pub fn accept_failed(&self, error: &std::io::Error) {
        if let Some(repeats) = self.throttle.admit(&format!("accept|{:?}", error.kind())) {
            tracing::warn!(error = %error, repeats, "accepting a webhook connection failed");
        }
    }

    /// A TLS handshake failed or timed out (scanners, clients without SNI support...).
    pub fn tls_handshake_failed(&self, peer: std::net::SocketAddr, reason: &str) {
        tracing::debug!(peer = %peer, reason, "TLS handshake failed");
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self, count: usize) {
        self.in_flight.set(count as f64);
    }

    /// Open connections.
    pub fn connections(&self, count: usize) {
        self.connections.set(count as f64);
    }

    /// Connections still open at the drain deadline were closed without an answer.
    pub fn aborted_at_deadline(&self, connections: usize) {
        if connections == 0 {
            return;
        }
        self.aborted
            .fetch_add(connections as u64, Ordering::Relaxed);
        tracing::warn!(
            connections,
            "drain deadline passed: closing the remaining connections without an answer (their providers retry)"
        );
    }

    /// The counts so far.
    pub fn summary(&self) -> ReceiveSummary {
        let count = |o: RequestOutcome| self.counts[o.index()].load(Ordering::Relaxed);
        use RequestOutcome::*;
        ReceiveSummary {
            accepted: count(Accepted) + count(AcceptedMalformed),
            accepted_malformed: count(AcceptedMalformed),
            refused: [BadRequest, Unauthorized, Forbidden, BodyTimeout, TooLarge]
                .into_iter()
                .map(count)
                .sum(),
            unavailable: [Overloaded, KafkaUnavailable, ShuttingDown]
                .into_iter()
                .map(count)
                .sum(),
            aborted_connections: self.aborted.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for ReceiverEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverEvents").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_groups_outcomes_by_status() {
        let e = ReceiverEvents::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for outcome in RequestOutcome::ALL {
            e.answered(Provider::Unico, outcome, "r", None, "", Duration::ZERO);
        }
        e.auth_failed(Provider::Unico, "mismatch", ip, "r");
        e.aborted_at_deadline(2);
        assert_eq!(
            e.summary(),
            ReceiveSummary {
                accepted: 2,
                accepted_malformed: 1,
                refused: 5,
                unavailable: 3,
                aborted_connections: 2,
            }
        );
    }
}
