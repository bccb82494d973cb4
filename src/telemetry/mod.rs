//! One emit site per event: each thing that happens is one function here that writes the metric
//! and, where useful, the log line. Call sites stay one line and metric names live in one place.
//! No ids in labels: labels are providers, outcomes, classes and status classes only.
//!
//! Events that happen per record go through [`RecordEvents`], which holds the metric handles
//! registered once (a labelled `metrics::counter!` looks its series up on every call) and the
//! run's counters ([`stats`]). Telemetry takes plain values (providers, classes, [`Source`]
//! coordinates), never engine types.

pub mod fallback;
pub mod receive;
mod redrive;
pub mod stats;

pub use redrive::*;

use crate::failure::ErrorClass;
use crate::provider::Provider;
use metrics::{Counter, Gauge, Histogram};
use stats::EngineStats;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Metric names (documented in the README "Metrics" table).
pub mod names {
    pub const PROVIDER_REQUESTS: &str = "webhook_enricher_provider_requests_total";
    pub const PROVIDER_REQUEST_SECONDS: &str = "webhook_enricher_provider_request_duration_seconds";
    pub const TOKEN_REFRESHES: &str = "webhook_enricher_token_refreshes_total";
    pub const PROVIDER_RETRIES: &str = "webhook_enricher_provider_retries_total";
    pub const RECORDS_CONSUMED: &str = "webhook_enricher_records_consumed_total";
    pub const RECORDS_PUBLISHED: &str = "webhook_enricher_records_published_total";
    pub const RECORDS_DEDUPLICATED: &str = "webhook_enricher_records_deduplicated_total";
    pub const RECORDS_SKIPPED: &str = "webhook_enricher_records_skipped_total";
    pub const RECORDS_DEAD_LETTERED: &str = "webhook_enricher_records_dead_lettered_total";
    pub const PRODUCE_RETRIES: &str = "webhook_enricher_produce_retries_total";
    pub const CIRCUIT_OPENED: &str = "webhook_enricher_circuit_opened_total";
    pub const RECORDS_PAUSED: &str = "webhook_enricher_records_paused_total";
    pub const CIRCUIT_STATE: &str = "webhook_enricher_circuit_state";
    pub const RECORDS_IN_FLIGHT: &str = "webhook_enricher_records_in_flight";
    pub const END_TO_END_SECONDS: &str = "webhook_enricher_end_to_end_latency_seconds";
    pub const CONSUMER_LAG: &str = "webhook_enricher_consumer_lag";
    pub const RECORDS_ABANDONED: &str = "webhook_enricher_records_abandoned_total";
    pub const DEAD_LETTER_REFUSED: &str = "webhook_enricher_dead_letter_refused_total";
    pub const RECORDS_PANICKED: &str = "webhook_enricher_records_panicked_total";
    pub const COMMIT_FAILURES: &str = "webhook_enricher_offset_commit_failures_total";
    pub const CONSUMPTION_STALLS: &str = "webhook_enricher_consumption_stalls_total";
    pub const INPUT_UNDECODABLE: &str = "webhook_enricher_input_undecodable_total";
    pub const RECORDS_DIVERTED: &str = "webhook_enricher_records_diverted_total";
    pub const RECORDS_RETURNED: &str = "webhook_enricher_records_returned_total";
    pub const LANES: &str = "webhook_enricher_lanes";
    pub const LANE_CHANGES: &str = "webhook_enricher_lane_changes_total";
    pub const WAIT_WRITE_REFUSED: &str = "webhook_enricher_wait_write_refused_total";
    pub const RETRY_ROUNDS: &str = "webhook_enricher_retry_rounds_total";
    pub const EXPECTATIONS_PENDING: &str = "webhook_enricher_expectations_pending";
    pub const EXPECTATIONS_RESOLVED: &str = "webhook_enricher_expectations_resolved_total";
    pub const FALLBACK_POLLS: &str = "webhook_enricher_fallback_polls_total";
    pub const WEBHOOK_DELAY_SECONDS: &str = "webhook_enricher_webhook_delay_seconds";
}

/// Registers the help text of every metric (shown by `/metrics`).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    fallback::describe();
    describe_counter!(
        names::RECORDS_CONSUMED,
        "Records received from the input topics."
    );
    describe_counter!(
        names::RECORDS_PUBLISHED,
        "Enriched records acknowledged by their output topic, by provider."
    );
    describe_counter!(
        names::RECORDS_DEDUPLICATED,
        "Repeats of already published events dropped, by provider."
    );
    describe_counter!(
        names::RECORDS_SKIPPED,
        "Valid events not enriched (Unico statuses outside the set), by provider."
    );
    describe_counter!(
        names::RECORDS_DEAD_LETTERED,
        "Records acknowledged by the dead-letter topic, by error class."
    );
    describe_counter!(
        names::PROVIDER_REQUESTS,
        "HTTP requests to the providers, by provider, operation, outcome and status class."
    );
    describe_histogram!(
        names::PROVIDER_REQUEST_SECONDS,
        Unit::Seconds,
        "Provider HTTP request latency, by provider and operation."
    );
    describe_counter!(
        names::PROVIDER_RETRIES,
        "Provider calls retried, by provider and reason."
    );
    describe_counter!(
        names::TOKEN_REFRESHES,
        "Provider token requests, by provider and outcome."
    );
    describe_counter!(
        names::PRODUCE_RETRIES,
        "Kafka writes retried after an error."
    );
    describe_counter!(
        names::CIRCUIT_OPENED,
        "Times a provider's circuit opened (systemic failure), by provider."
    );
    describe_counter!(
        names::RECORDS_PAUSED,
        "Records whose provider call failed systemically and waited for the circuit, by provider."
    );
    describe_gauge!(
        names::CIRCUIT_STATE,
        "Provider circuit state: 0 closed, 1 open, 2 half-open."
    );
    describe_gauge!(
        names::RECORDS_IN_FLIGHT,
        "Records received and not yet finished."
    );
    describe_counter!(
        names::RECORDS_ABANDONED,
        "Records still running when a revocation or shutdown deadline passed (not committed; read again)."
    );
    describe_counter!(
        names::DEAD_LETTER_REFUSED,
        "Dead-letter writes the topic refused (the record's partition stops advancing until it accepts)."
    );
    describe_counter!(
        names::RECORDS_PANICKED,
        "Records whose processing panicked (a defect); they are dead-lettered."
    );
    describe_counter!(
        names::COMMIT_FAILURES,
        "Offset commits that failed, by when (revocation, shutdown)."
    );
    describe_counter!(
        names::CONSUMPTION_STALLS,
        "Times the in-flight budget stayed full for engine.pause_after and consumption paused."
    );
    describe_counter!(
        names::INPUT_UNDECODABLE,
        "Input record batches librdkafka could not decode (unsupported or corrupt compression, corrupt or oversized records), by reason; reported again on every fetch while the partition cannot advance."
    );
    describe_counter!(
        names::RECORDS_DIVERTED,
        "Records written to their provider's wait topic instead of waiting in memory, by provider and reason (circuit_open, provider_slow, lane_diverted, retries_exhausted)."
    );
    describe_counter!(
        names::RECORDS_RETURNED,
        "Records read back from a wait topic that reached a final outcome, by provider."
    );
    describe_gauge!(
        names::LANES,
        "This instance's provider lanes (one per provider and assigned input partition), by provider and state (direct, diverted, returning, unknown)."
    );
    describe_counter!(
        names::LANE_CHANGES,
        "Lane state changes, by provider and the state entered."
    );
    describe_counter!(
        names::RETRY_ROUNDS,
        "Retry rounds given to poison records (retries ran out while the provider answered others), by provider; a record is dead-lettered as retries_exhausted after its last round."
    );
    describe_counter!(
        names::WAIT_WRITE_REFUSED,
        "Wait-topic writes the topic refused (the record's partition stops advancing until it accepts)."
    );
    receive::describe_metrics();
    describe_histogram!(
        names::END_TO_END_SECONDS,
        Unit::Seconds,
        "From the input record's timestamp to the output's acknowledgement, by provider."
    );
}

/// The consumer-lag gauges of the partitions assigned now. Kept apart from the `metrics`
/// recorder, which cannot remove a series: a revoked partition's lag must disappear, not freeze
/// at its last value. Rendered after the recorder's output on `/metrics`.
#[derive(Debug, Default)]
pub struct ConsumerLag {
    rows: std::sync::Mutex<std::collections::BTreeMap<(String, i32), [i64; 2]>>,
}

impl ConsumerLag {
    fn rows(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<(String, i32), [i64; 2]>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// librdkafka reported an assigned partition's lag (-1 when unknown: the value is kept).
    pub fn update(&self, topic: &str, partition: i32, committed_lag: i64, stored_lag: i64) {
        let mut rows = self.rows();
        let row = rows
            .entry((topic.to_string(), partition))
            .or_insert([-1, -1]);
        for (slot, lag) in row.iter_mut().zip([committed_lag, stored_lag]) {
            if lag >= 0 {
                *slot = lag;
            }
        }
    }

    /// The partitions were revoked: their series go.
    pub fn remove<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut rows = self.rows();
        for (topic, partition) in partitions {
            rows.remove(&(topic.to_string(), partition));
        }
    }

    /// The gauges in the Prometheus text format (nothing while no lag is known).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let rows = self.rows();
        let mut out = String::new();
        let mut header = false;
        for ((topic, partition), lags) in rows.iter() {
            for (basis, lag) in ["committed", "stored"].into_iter().zip(lags) {
                if *lag < 0 {
                    continue;
                }
                if !header {
                    header = true;
                    let _ = writeln!(out, "# HELP {} High watermark minus the committed (basis=committed) or stored (basis=stored) offset, by assigned topic and partition.", names::CONSUMER_LAG);
                    let _ = writeln!(out, "# TYPE {} gauge", names::CONSUMER_LAG);
                }
                let _ = writeln!(
                    out,
                    "{}{{topic=\"{}\",partition=\"{partition}\",basis=\"{basis}\"}} {lag}",
                    names::CONSUMER_LAG,
                    escape_label(topic)
                );
            }
        }
        out
    }
}

/// A Prometheus label value, escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

/// The metric handles of one provider operation (`get_analysis`, `token`, ...), registered
/// once per client: a series per outcome and status class, created when first seen.
pub struct RequestMetrics {
    provider: Provider,
    operation: &'static str,
    latency: Histogram,
    requests: [[OnceLock<Counter>; STATUS_CLASSES.len()]; OUTCOMES.len()],
}

const OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "connect"];
const STATUS_CLASSES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "other", "none"];

impl RequestMetrics {
    pub fn new(provider: Provider, operation: &'static str) -> Self {
        Self {
            provider,
            operation,
            latency: metrics::histogram!(names::PROVIDER_REQUEST_SECONDS, "provider" => provider.as_str(), "operation" => operation),
            requests: Default::default(),
        }
    }

    /// The operation's fixed name (`get_analysis`, `token`, ...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    fn counter(&self, outcome: &'static str, class: &'static str) -> Option<&Counter> {
        let o = OUTCOMES.iter().position(|x| *x == outcome)?;
        let c = STATUS_CLASSES.iter().position(|x| *x == class)?;
        Some(self.requests[o][c].get_or_init(|| {
            let labels = [
                ("provider", self.provider.as_str()),
                ("operation", self.operation),
                ("outcome", outcome),
                ("status_class", class),
            ];
            metrics::counter!(names::PROVIDER_REQUESTS, &labels)
        }))
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("provider", &self.provider)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

/// One HTTP request to a provider finished: logs it at debug (provider, operation, the id the
/// request is about, status, latency; never headers or bodies) and counts it. `outcome` is
/// `ok`, `error`, `timeout` or `connect`.
pub fn provider_request_finished(
    metrics: &RequestMetrics,
    subject: Option<uuid::Uuid>,
    outcome: &'static str,
    status: Option<u16>,
    latency: Duration,
) {
    tracing::debug!(
        provider = metrics.provider.as_str(),
        operation = metrics.operation,
        subject = subject.map(tracing::field::display),
        outcome,
        status,
        latency_ms = latency.as_millis() as u64,
        "provider request finished"
    );
    if let Some(c) = metrics.counter(outcome, status_class(status)) {
        c.increment(1);
    }
    metrics.latency.record(latency.as_secs_f64());
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

/// A librdkafka log line. Its errors are mostly connection chatter that librdkafka retries by
/// itself (and readiness reports), so they are logged as warnings; ERROR stays for what an
/// operator must act on.
pub fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical => tracing::error!(target: "librdkafka", fac, "{message}"),
        Error | Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", fac, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// A librdkafka client error (transport failures, all brokers down, ...), retried by librdkafka.
/// The same error repeats on every poll while brokers are down: each distinct error is logged
/// once, then at most every 30 s with the number of repeats suppressed.
pub fn librdkafka_error(error: &rdkafka::error::KafkaError, reason: &str) {
    static THROTTLE: Throttle = Throttle::new();
    if let Some(repeats) = THROTTLE.admit(&format!("{error}|{reason}")) {
        tracing::warn!(target: "librdkafka", error = %error, reason, repeats, "kafka client error");
    }
}

/// An error returned by the consumer's poll (librdkafka retries; see [`librdkafka_error`]).
pub fn consumer_poll_error(error: &rdkafka::error::KafkaError) {
    static THROTTLE: Throttle = Throttle::new();
    if let Some(repeats) = THROTTLE.admit(&error.to_string()) {
        tracing::warn!(error = %error, repeats, "kafka consumer error");
    }
}

/// librdkafka could not decode a record batch it fetched from an input topic (`reason`:
/// `unsupported_compression`, `corrupt_compression`, `corrupt_record`, `record_too_large`). Its
/// partition cannot advance past it (nothing is skipped), and librdkafka reports it again on
/// every fetch: counted every time, logged at ERROR once, then at most every 30 s with the
/// repeats held back.
pub fn input_undecodable(reason: &'static str, error: &rdkafka::error::KafkaError) {
    static THROTTLE: Throttle = Throttle::new();
    metrics::counter!(names::INPUT_UNDECODABLE, "reason" => reason).increment(1);
    if let Some(repeats) = THROTTLE.admit(&error.to_string()) {
        tracing::error!(
            reason,
            error = %error,
            repeats,
            "an input record batch cannot be decoded: its partition cannot advance"
        );
    }
}

/// Lets each repeating log line through once, then at most every [`Throttle::EVERY`], counting
/// the repeats it held back. One slot per key (up to [`Throttle::KEYS`], the stalest evicted), so
/// two errors that interleave are each still throttled.
pub(crate) struct Throttle {
    slots: std::sync::Mutex<Vec<ThrottleSlot>>,
}

struct ThrottleSlot {
    key: String,
    at: std::time::Instant,
    suppressed: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(30);
    const KEYS: usize = 64;

    pub(crate) const fn new() -> Self {
        Self {
            slots: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `Some(repeats suppressed since the last line)` when the line should be logged.
    pub(crate) fn admit(&self, key: &str) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if let Some(slot) = slots.iter_mut().find(|s| s.key == key) {
            if now.duration_since(slot.at) < Self::EVERY {
                slot.suppressed += 1;
                return None;
            }
            let repeats = slot.suppressed;
            slot.at = now;
            slot.suppressed = 0;
            return Some(repeats);
        }
        if slots.len() >= Self::KEYS {
            if let Some(stalest) = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.at)
                .map(|(i, _)| i)
            {
                slots.swap_remove(stalest);
            }
        }
        slots.push(ThrottleSlot {
            key: key.to_string(),
            at: now,
            suppressed: 0,
        });
        Some(0)
    }
}

/// Where a record was read: what log lines about it carry (never its payload).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms since the epoch), for the end-to-end latency.
    pub timestamp_ms: Option<i64>,
}

const PROVIDERS: usize = Provider::ALL.len();

/// The per-record events of one engine run: the metric handles, registered once, and the run's
/// counters. Cheap to share (`Arc`).
pub struct RecordEvents {
    stats: Arc<EngineStats>,
    consumed: Counter,
    published: [Counter; PROVIDERS],
    deduplicated: [Counter; PROVIDERS],
    skipped: [Counter; PROVIDERS],
    paused: [Counter; PROVIDERS],
    circuit_opened: [Counter; PROVIDERS],
    circuit_state: [Gauge; PROVIDERS],
    end_to_end: [Histogram; PROVIDERS],
    dead_lettered: [Counter; ErrorClass::ALL.len()],
    in_flight: Gauge,
    abandoned: Counter,
    dead_letter_refused: Counter,
    panicked: Counter,
    /// By provider, then reason ([`DIVERT_REASONS`]).
    diverted: [[Counter; DIVERT_REASONS.len()]; PROVIDERS],
    returned: [Counter; PROVIDERS],
    retry_rounds: [Counter; PROVIDERS],
    wait_write_refused: Counter,
}

/// The reasons of `webhook_enricher_records_diverted_total`, in counter order.
pub const DIVERT_REASONS: [&str; 4] = [
    "circuit_open",
    "provider_slow",
    "lane_diverted",
    "retries_exhausted",
];

fn per_provider<T>(make: impl Fn(&'static str) -> T) -> [T; PROVIDERS] {
    Provider::ALL.map(|p| make(p.as_str()))
}

impl RecordEvents {
    /// Polling fallback: expectations waiting now (the gauge and the run's counters).
    pub fn expectations_waiting(&self, waiting: usize) {
        self.stats
            .expectations_waiting
            .store(waiting as u64, Ordering::Relaxed);
        fallback::pending(waiting);
    }

    /// Polling fallback: a poll ended with `outcome`.
    pub fn fallback_polled(&self, provider: Provider, outcome: &str) {
        self.stats.fallback_polls.fetch_add(1, Ordering::Relaxed);
        fallback::polled(provider, outcome);
    }

    /// Polling fallback: an expectation was resolved.
    pub fn expectation_resolved(&self, provider: Provider, by: fallback::By, polls: u32) {
        let counter = match by {
            fallback::By::Webhook => &self.stats.resolved_by_webhook,
            fallback::By::Poll => &self.stats.resolved_by_poll,
            fallback::By::Expired | fallback::By::DeadLetter => &self.stats.expectations_given_up,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fallback::resolved(provider, by, polls);
    }

    /// Registers the handles with the installed `metrics` recorder (none installed: no-ops).
    pub fn new(stats: Arc<EngineStats>) -> Self {
        Self {
            stats,
            consumed: metrics::counter!(names::RECORDS_CONSUMED),
            published: per_provider(
                |p| metrics::counter!(names::RECORDS_PUBLISHED, "provider" => p),
            ),
            deduplicated: per_provider(
                |p| metrics::counter!(names::RECORDS_DEDUPLICATED, "provider" => p),
            ),
            skipped: per_provider(|p| metrics::counter!(names::RECORDS_SKIPPED, "provider" => p)),
            paused: per_provider(|p| metrics::counter!(names::RECORDS_PAUSED, "provider" => p)),
            circuit_opened: per_provider(
                |p| metrics::counter!(names::CIRCUIT_OPENED, "provider" => p),
            ),
            circuit_state: per_provider(|p| metrics::gauge!(names::CIRCUIT_STATE, "provider" => p)),
            end_to_end: per_provider(
                |p| metrics::histogram!(names::END_TO_END_SECONDS, "provider" => p),
            ),
            dead_lettered: ErrorClass::ALL
                .map(|c| metrics::counter!(names::RECORDS_DEAD_LETTERED, "class" => c.as_str())),
            in_flight: metrics::gauge!(names::RECORDS_IN_FLIGHT),
            abandoned: metrics::counter!(names::RECORDS_ABANDONED),
            dead_letter_refused: metrics::counter!(names::DEAD_LETTER_REFUSED),
            panicked: metrics::counter!(names::RECORDS_PANICKED),
            diverted: per_provider(|p| {
                DIVERT_REASONS.map(
                    |r| metrics::counter!(names::RECORDS_DIVERTED, "provider" => p, "reason" => r),
                )
            }),
            returned: per_provider(|p| metrics::counter!(names::RECORDS_RETURNED, "provider" => p)),
            retry_rounds: per_provider(|p| metrics::counter!(names::RETRY_ROUNDS, "provider" => p)),
            wait_write_refused: metrics::counter!(names::WAIT_WRITE_REFUSED),
        }
    }

    /// A record was written to its provider's wait topic (`reason` is one of
    /// [`DIVERT_REASONS`]).
    pub fn diverted(&self, provider: Provider, source: Source<'_>, reason: &'static str) {
        self.stats.diverted.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = DIVERT_REASONS.iter().position(|r| *r == reason) {
            self.diverted[provider.index()][i].increment(1);
        }
        tracing::debug!(
            provider = provider.as_str(),
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            reason,
            "record diverted to the wait topic"
        );
    }

    /// A record read back from a wait topic reached its final outcome.
    pub fn returned(&self, provider: Provider) {
        self.stats.returned.fetch_add(1, Ordering::Relaxed);
        self.returned[provider.index()].increment(1);
    }

    /// A poison record (its retries ran out while the provider answered others) starts retry
    /// round `round` (1-based), due at `due`: in the wait topic for the first round, where it
    /// was read back for the later ones.
    pub fn retry_round(
        &self,
        provider: Provider,
        source: Source<'_>,
        round: u32,
        due: chrono::DateTime<chrono::Utc>,
        reason: &str,
    ) {
        self.stats.retry_rounds.fetch_add(1, Ordering::Relaxed);
        self.retry_rounds[provider.index()].increment(1);
        tracing::warn!(
            provider = provider.as_str(),
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            round,
            due = %due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            reason,
            "retries ran out while the provider answered others: retrying after a delay"
        );
    }

    /// The wait topic refused a record: its partition stops advancing until it accepts.
    pub fn wait_write_refused(&self, topic: &str, source: Source<'_>, code: &str) {
        self.wait_write_refused.increment(1);
        tracing::error!(
            topic,
            source_topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            code,
            "wait topic refuses the record; partition stalled"
        );
    }

    /// The number of this instance's lanes in each state, per provider.
    pub fn lanes(&self, counts: &[(Provider, &'static str, usize)]) {
        for (provider, state, n) in counts {
            metrics::gauge!(names::LANES, "provider" => provider.as_str(), "state" => *state)
                .set(*n as f64);
        }
    }

    /// A lane changed state.
    pub fn lane_changed(
        &self,
        provider: Provider,
        partition: i32,
        from: &'static str,
        to: &'static str,
    ) {
        metrics::counter!(names::LANE_CHANGES, "provider" => provider.as_str(), "state" => to)
            .increment(1);
        if to == "diverted" || from == "returning" {
            tracing::info!(
                provider = provider.as_str(),
                partition,
                from,
                to,
                "provider lane changed"
            );
        } else {
            tracing::debug!(
                provider = provider.as_str(),
                partition,
                from,
                to,
                "provider lane changed"
            );
        }
    }

    /// The run's counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Records were received from an input topic.
    pub fn consumed(&self, records: usize) {
        self.stats
            .consumed
            .fetch_add(records as u64, Ordering::Relaxed);
        self.consumed.increment(records as u64);
    }

    /// An enriched record was acknowledged by its output topic.
    pub fn published(
        &self,
        provider: Provider,
        source: Source<'_>,
        subject_id: &uuid::Uuid,
        state: &str,
    ) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        self.published[provider.index()].increment(1);
        if let Some(ts) = source.timestamp_ms {
            let now = chrono::Utc::now().timestamp_millis();
            self.end_to_end[provider.index()].record((now - ts).max(0) as f64 / 1000.0);
        }
        tracing::debug!(provider = provider.as_str(), subject_id = %subject_id, topic = source.topic,
            partition = source.partition, offset = source.offset, state, "record published");
    }

    /// A repeat of an already published event was dropped.
    pub fn deduplicated(&self, provider: Provider, source: Source<'_>, event_id: &uuid::Uuid) {
        self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
        self.deduplicated[provider.index()].increment(1);
        tracing::debug!(provider = provider.as_str(), event_id = %event_id, topic = source.topic,
            partition = source.partition, offset = source.offset, "duplicate dropped");
    }

    /// A valid event we do not enrich (a Unico status outside the configured set).
    pub fn skipped(&self, provider: Provider, source: Source<'_>, reason: &str) {
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        self.skipped[provider.index()].increment(1);
        tracing::debug!(
            provider = provider.as_str(),
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            reason,
            "record skipped"
        );
    }

    /// A bounded run (`replay`): a record outside the time window, finished without processing.
    pub fn filtered_by_time(&self, source: Source<'_>) {
        self.stats.filtered_by_time.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            timestamp_ms = source.timestamp_ms,
            "record filtered out by time"
        );
    }

    /// `replay --renormalize`: an output record without `raw_response` cannot be rebuilt; it is
    /// counted for the summary and logged with its id and offset.
    pub fn without_raw_response(
        &self,
        provider: Provider,
        source: Source<'_>,
        event_id: &uuid::Uuid,
    ) {
        self.stats
            .without_raw_response
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            provider = provider.as_str(),
            event_id = %event_id,
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            "record without raw_response: not re-normalized"
        );
    }

    /// A record was acknowledged by the dead-letter topic.
    pub fn dead_lettered(&self, class: ErrorClass, source: Source<'_>, message: &str) {
        self.stats.add_dead_lettered(class);
        if let Some(i) = ErrorClass::ALL.iter().position(|c| *c == class) {
            self.dead_lettered[i].increment(1);
        }
        tracing::warn!(
            class = class.as_str(),
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            reason = message,
            "record dead-lettered"
        );
    }

    /// The dead-letter topic refused a record: its partition stops advancing until it accepts.
    pub fn dead_letter_refused(&self, topic: &str, source: Source<'_>, code: &str) {
        self.dead_letter_refused.increment(1);
        tracing::error!(
            topic,
            source_topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            code,
            "dead-letter topic refuses the record; partition stalled"
        );
    }

    /// A provider's circuit opened (a transition, once per outage or failed probe): its work
    /// pauses for `period`.
    pub fn circuit_opened(&self, provider: Provider, period: Duration, reason: &str) {
        self.stats.circuits_opened.fetch_add(1, Ordering::Relaxed);
        self.circuit_opened[provider.index()].increment(1);
        tracing::error!(
            provider = provider.as_str(),
            pause_ms = period.as_millis() as u64,
            reason,
            "provider failing systemically: pausing its work (nothing is dead-lettered)"
        );
    }

    /// A record's provider call failed systemically; it waits for the circuit, keeping its place.
    pub fn paused(&self, provider: Provider, source: Source<'_>, reason: &str) {
        self.stats.systemic_pauses.fetch_add(1, Ordering::Relaxed);
        self.paused[provider.index()].increment(1);
        tracing::debug!(
            provider = provider.as_str(),
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            reason,
            "record waits for the provider's circuit"
        );
    }

    /// A record's task panicked; the record is dead-lettered so its key and offset move on.
    pub fn panicked(&self, source: Source<'_>) {
        self.panicked.increment(1);
        tracing::error!(
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            "a record's processing panicked: dead-lettering it (a defect: please report it)"
        );
    }

    /// Records still running were given up at a deadline (revocation or shutdown); they are not
    /// committed, so they are read again.
    pub fn abandoned(&self, records: usize, when: &'static str) {
        if records == 0 {
            return;
        }
        self.abandoned.increment(records as u64);
        self.stats
            .abandoned
            .fetch_add(records as u64, Ordering::Relaxed);
        if when == "shutdown" {
            tracing::warn!(
                in_flight = records,
                "drain deadline passed: abandoning the rest (not committed, read again)"
            );
        } else {
            tracing::warn!(running = records, when, "revocation deadline passed: abandoning the revoked partitions' records (not committed, read again)");
        }
    }

    /// The state of a provider's circuit (0 closed, 1 open, 2 half-open).
    pub fn circuit_state(&self, provider: Provider, state: f64) {
        self.circuit_state[provider.index()].set(state);
    }

    /// Records received and not yet finished.
    pub fn in_flight(&self, count: usize) {
        self.in_flight.set(count as f64);
    }
}

impl std::fmt::Debug for RecordEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordEvents").finish_non_exhaustive()
    }
}

/// A Kafka write failed and will be retried.
pub fn produce_retry(topic: &str, error: &rdkafka::error::KafkaError, attempt: u32) {
    metrics::counter!(names::PRODUCE_RETRIES).increment(1);
    if attempt % 10 == 0 {
        tracing::warn!(topic, error = %error, attempt, "kafka write failed, retrying");
    }
}

/// An offset commit failed (`when`: `revocation`, `shutdown`). librdkafka's periodic commits
/// retry; a failed final commit means the records after the last good commit are read again.
pub fn offset_commit_failed(when: &'static str, error: &rdkafka::error::KafkaError) {
    metrics::counter!(names::COMMIT_FAILURES, "when" => when).increment(1);
    tracing::error!(when, error = %error, "offset commit failed");
}

/// The in-flight budget stayed full for `engine.pause_after`: the consumer paused its
/// partitions (it keeps polling to stay in the group).
pub fn consumption_stalled(in_flight: usize) {
    metrics::counter!(names::CONSUMPTION_STALLS).increment(1);
    tracing::info!(in_flight, "in-flight budget full: pausing consumption");
}

/// Consumption resumed after [`consumption_stalled`].
pub fn consumption_resumed(in_flight: usize) {
    tracing::info!(
        in_flight,
        "room in the in-flight budget: resuming consumption"
    );
}

/// The provider simulator answered one request (`operation` is a fixed name, `id` the
/// analysis/process id from the path, if any). Debug only: the simulator is a test tool.
pub fn simulator_answered(
    provider: Provider,
    operation: &'static str,
    id: Option<&str>,
    status: u16,
) {
    tracing::debug!(
        provider = provider.as_str(),
        operation,
        id = id.unwrap_or(""),
        status,
        "simulator answered"
    );
}

/// The provider simulator is listening on `addr`.
pub fn simulator_listening(addr: std::net::SocketAddr) {
    tracing::info!(%addr, "provider simulator listening");
}

/// At startup, the Schema Registry gave the schema id for an output subject (log only: it happens
/// once per subject).
pub fn schema_id_resolved(subject: &str, schema_id: u32) {
    tracing::info!(subject, schema_id, "schema registry id resolved");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect: a revoked partition's lag gauge stayed at its last value forever.
    #[test]
    fn revoked_partitions_lose_their_lag_series() {
        let lag = ConsumerLag::default();
        assert_eq!(lag.render(), "");
        lag.update("in", 0, 5, 3);
        lag.update("in", 1, 7, -1);
        lag.update("in", 1, -1, 2);
        let text = lag.render();
        assert!(
            text.contains("# TYPE webhook_enricher_consumer_lag gauge"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"webhook_enricher_consumer_lag{topic="in",partition="0",basis="committed"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"webhook_enricher_consumer_lag{topic="in",partition="1",basis="committed"} 7"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"webhook_enricher_consumer_lag{topic="in",partition="1",basis="stored"} 2"#
            ),
            "{text}"
        );
        lag.remove([("in", 0)]);
        let text = lag.render();
        assert!(!text.contains(r#"partition="0""#), "{text}");
        assert!(text.contains(r#"partition="1""#), "{text}");
        lag.update("a\"b", 2, 1, 1);
        assert!(lag.render().contains(r#"topic="a\"b""#));
    }

    #[test]
    fn throttle_lets_a_new_line_through_and_holds_repeats() {
        let t = Throttle::new();
        assert_eq!(t.admit("a"), Some(0));
        assert_eq!(t.admit("a"), None);
        assert_eq!(t.admit("a"), None);
        assert_eq!(t.admit("b"), Some(0), "a different error is logged at once");
        assert_eq!(t.admit("b"), None);
        // Defect: one slot for all keys, so interleaved errors were never throttled.
        assert_eq!(t.admit("a"), None, "a's slot survives b");
        assert_eq!(t.admit("b"), None);
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(404)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "none");
    }
}
