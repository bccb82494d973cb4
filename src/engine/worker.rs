//! One record's way through the pipeline: (decoded by the consumer thread) → dedupe → wait for
//! the provider's circuit → enrich → normalize → encode → produce → mark seen. Every path ends in
//! a final outcome whose write Kafka acknowledged, in a fatal producer error that stops the
//! service, or — when its partition is being revoked while it only waits — in `Drained`.

use super::breaker::CircuitBreaker;
use super::dead_letter::{self, DeadLetterReason, Stage};
use super::dedupe::Dedupe;
use super::fallback::expectation::{final_result, FinalResult};
use super::fallback::TriggerSource;
use super::job::Job;
use super::producer::{OutputProducer, ProduceError};
use crate::avro::RecordEncoder;
use crate::enrich::decision::{self, AfterSystemic, Signal};
use crate::enrich::{Budget, EnrichOutcome, Enricher};
use crate::event::{Decoded, WebhookEvent};
use crate::failure::ErrorClass;
use crate::output::OutputSettings;
use crate::provider::Provider;
use crate::record::{normalize, Lineage};
use crate::telemetry::RecordEvents;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Header names on enriched records.
pub mod headers {
    /// The event's stable id (the downstream idempotency key).
    pub const EVENT_ID: &str = "event_id";
    /// The provider's name (`clearsale`, `unico`).
    pub const PROVIDER: &str = "provider";
    /// The normalized state symbol (`COMPLETED`, ...).
    pub const STATE: &str = "state";
    /// What the provider's webhook said (the ClearSale type, the Unico status).
    pub const TRIGGER: &str = "trigger";
    /// With the polling fallback on: the identity of the result, shared by the webhook and the
    /// poll that return the same result (`fallback::expectation::result_id`).
    pub const RESULT_ID: &str = "result_id";
    /// With the polling fallback on: `webhook` or `poll`.
    pub const TRIGGER_SOURCE: &str = "trigger_source";
}

/// One circuit breaker per provider.
pub struct Breakers([Arc<CircuitBreaker>; Provider::ALL.len()]);

impl Breakers {
    pub fn new(settings: super::breaker::BreakerSettings) -> Self {
        Self(Provider::ALL.map(|_| Arc::new(CircuitBreaker::new(settings))))
    }

    pub fn get(&self, provider: Provider) -> &Arc<CircuitBreaker> {
        &self.0[provider.index()]
    }
}

/// Everything a record needs, shared by all records.
pub struct WorkerContext {
    pub enricher: Enricher,
    pub breakers: Breakers,
    pub dedupe: Dedupe,
    pub encoder: Arc<RecordEncoder>,
    pub output: OutputSettings,
    pub producer: OutputProducer,
    pub events: Arc<RecordEvents>,
    /// Provider isolation (`engine.isolation.enabled`).
    pub diversion: Option<Diversion>,
    /// The polling fallback (`fallback.enabled`): told of every final webhook result published.
    pub fallback: Option<Arc<super::fallback::Link>>,
}

/// Where diverted records go, and the signal that makes waiting records divert themselves.
pub struct Diversion {
    /// Each provider's wait topic.
    pub wait_topics: [String; Provider::ALL.len()],
    /// Per provider: true while its circuit is not closed. A record from the input waiting for
    /// the circuit then writes itself to the wait topic instead of holding its place in memory.
    pub circuit_blocked: [tokio::sync::watch::Sender<bool>; Provider::ALL.len()],
    /// The delays of the retry rounds a poison record is given (`engine.isolation.retry_rounds`).
    pub retry_rounds: Vec<std::time::Duration>,
    /// How many records read back from each wait topic may call their provider at once.
    pub catch_up: super::catch_up::CatchUpGate,
}

impl Diversion {
    /// When the next retry round of a poison record that had `done` rounds ends, if it has
    /// one more.
    fn round_due(&self, done: u32) -> Option<chrono::DateTime<chrono::Utc>> {
        let delay = *self.retry_rounds.get(usize::try_from(done).ok()?)?;
        let now = chrono::Utc::now();
        Some(
            chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        )
    }

    /// Resolves when `provider`'s circuit is reported not closed (never, if the engine is gone).
    async fn blocked(&self, provider: Provider) {
        let mut rx = self.circuit_blocked[provider.index()].subscribe();
        if rx.wait_for(|b| *b).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A record's final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Published,
    Deduplicated,
    Skipped,
    DeadLettered(ErrorClass),
    /// Written to the provider's wait topic, acknowledged at this offset of partition
    /// (the input partition's number).
    Diverted {
        offset: i64,
    },
}

/// How processing ended.
#[derive(Debug)]
pub enum Processed {
    Final(Final),
    /// The producer failed fatally.
    Fatal(ProduceError),
    /// The record's partition is being revoked and the record was only waiting (for its
    /// provider's circuit): it stopped with nothing in flight.
    Drained,
}

impl From<Result<Final, ProduceError>> for Processed {
    fn from(r: Result<Final, ProduceError>) -> Self {
        match r {
            Ok(f) => Processed::Final(f),
            Err(e) => Processed::Fatal(e),
        }
    }
}

/// Processes one record to its final outcome. `drain` is cancelled when the record's partition
/// is being revoked: a record that is only waiting (for its provider's circuit, or between
/// enrichment attempts) then stops at once; a request in flight is let finish, and a produce is
/// never interrupted.
pub async fn process(ctx: &WorkerContext, job: &Job, drain: &CancellationToken) -> Processed {
    if job.filtered {
        ctx.events.filtered_by_time(job.source());
        return Processed::Final(Final::Skipped);
    }
    if job.renormalize {
        return renormalize(ctx, job).await.into();
    }
    let event = match &job.decoded {
        Err(rejection) => {
            let reason = DeadLetterReason::rejected(rejection);
            return dead_letter(ctx, job, reason).await.into();
        }
        Ok(Decoded::Skip(skipped)) => {
            ctx.events
                .skipped(skipped.provider, job.source(), &skipped.reason);
            return Processed::Final(Final::Skipped);
        }
        Ok(Decoded::Enrich(event)) => event,
    };
    if ctx.dedupe.is_duplicate(&event.event_id) {
        ctx.events
            .deduplicated(event.provider, job.source(), &event.event_id);
        return Processed::Final(Final::Deduplicated);
    }

    // A record read back for a retry round waits until the round is over.
    if let Some(due) = job.origin.as_ref().and_then(|o| o.not_before) {
        if !sleep_until_wall(due, drain).await {
            return Processed::Drained;
        }
    }
    // Retry rounds this record was given so far (carried by the wait topic).
    let mut round = job.origin.as_ref().map_or(0, |o| o.round);

    let breaker = ctx.breakers.get(event.provider);
    // The circuit's success count when this record last paused, for the poison-record rule of
    // `decision::after_systemic` (`None` before its first pause).
    let mut successes_at_last_pause: Option<u64> = None;
    if job.in_retry_round() {
        // Its round is over: counted like a pause (see the retry-round branch below).
        successes_at_last_pause = Some(breaker.successes());
    }
    // Provider attempts so far (carried into the wait topic's header if the record diverts).
    let mut attempts_so_far: u32 = 0;
    // A record from the input may leave for the wait topic while it waits for an open circuit;
    // one read back from the wait topic never does (it would overtake later records of its
    // key already waiting there).
    let diversion = ctx.diversion.as_ref().filter(|_| job.wait.is_none());
    // A record read back calls its provider only with a place at the catch-up gate.
    let mut catch_up = match catch_up_place(ctx, job, drain).await {
        Ok(place) => place,
        Err(Drained) => return Processed::Drained,
    };
    loop {
        let permit = tokio::select! {
            biased;
            _ = drain.cancelled() => return Processed::Drained,
            () = async {
                match diversion {
                    Some(d) => d.blocked(event.provider).await,
                    None => std::future::pending().await,
                }
            } => {
                return divert(ctx, job, event.provider, super::wait::Reason::CircuitOpen, attempts_so_far, None).await;
            }
            permit = breaker.acquire() => permit,
        };
        // A half-open probe is one attempt: the other records of the provider wait on it.
        let budget = if permit.is_probe() {
            Budget::Probe
        } else {
            Budget::Full
        };
        match ctx
            .enricher
            .enrich_observed(event, budget, drain, &Circuit::of(ctx, event.provider))
            .await
        {
            EnrichOutcome::Cancelled => return Processed::Drained,
            EnrichOutcome::Interrupted { attempts } => {
                // The circuit opened (a failure streak, or another record's exhausted budget)
                // while this record waited to retry: wait for it, or divert, like the others.
                // Counted like a pause for the poison-record rule.
                attempts_so_far = attempts_so_far.saturating_add(attempts);
                drop(permit);
                ctx.events.paused(
                    event.provider,
                    job.source(),
                    "the circuit opened while the record waited to retry",
                );
                successes_at_last_pause = Some(breaker.successes());
            }
            EnrichOutcome::Reachable { .. } => {
                // The probe got an answer: the provider is up; go on with the full budget.
                permit.succeeded();
            }
            EnrichOutcome::Fetched { fetched, attempts } => {
                permit.succeeded();
                let lineage = lineage(job);
                if ctx.fallback.is_some() {
                    if let Some(result) = final_result(event, &fetched) {
                        return publish_result(
                            ctx,
                            job,
                            event,
                            &fetched,
                            attempts,
                            &result,
                            TriggerSource::Webhook,
                        )
                        .await;
                    }
                }
                let include_raw = ctx.enricher.settings().include_raw_response;
                let enriched = normalize(
                    event,
                    &fetched,
                    Some(lineage),
                    include_raw,
                    chrono::Utc::now(),
                );
                return publish(ctx, job, event, &enriched, attempts, None)
                    .await
                    .into();
            }
            EnrichOutcome::Failed(failure) => {
                if decision::permanent_failure_reached_provider(budget, failure.attempts) {
                    permit.succeeded();
                }
                let reason = DeadLetterReason {
                    class: failure.class,
                    stage: Stage::Enrich,
                    message: failure.reason,
                    attempts: failure.attempts,
                    http_status: failure.http_status,
                    provider: Some(event.provider),
                };
                return dead_letter(ctx, job, reason).await.into();
            }
            EnrichOutcome::Systemic {
                provider,
                reason,
                attempts,
                retries_exhausted,
            } => {
                attempts_so_far = attempts_so_far.saturating_add(attempts);
                match decision::after_systemic(
                    retries_exhausted,
                    successes_at_last_pause,
                    breaker.successes(),
                ) {
                    AfterSystemic::DeadLetterRetriesExhausted => {
                        let next_round = ctx.diversion.as_ref().and_then(|d| d.round_due(round));
                        if let Some(due) = next_round {
                            // A poison record: one more round before the dead letter.
                            round += 1;
                            ctx.events
                                .retry_round(provider, job.source(), round, due, &reason);
                            if job.wait.is_none() {
                                // From the input: the round is spent in the wait topic, and its
                                // lane is diverted until it is read back and finished, so the
                                // key's later records follow it (per-key order).
                                return divert(
                                    ctx,
                                    job,
                                    provider,
                                    super::wait::Reason::RetriesExhausted,
                                    attempts_so_far,
                                    Some((round, due)),
                                )
                                .await;
                            }
                            // Read back from the wait topic: writing it there again would put it
                            // behind later records of its key already there, so the round is
                            // spent here, holding its key (and its wait offset) like a pause,
                            // but not its place at the catch-up gate.
                            drop(catch_up.take());
                            if !sleep_until_wall(due, drain).await {
                                return Processed::Drained;
                            }
                            catch_up = match catch_up_place(ctx, job, drain).await {
                                Ok(place) => place,
                                Err(Drained) => return Processed::Drained,
                            };
                            // Like a pause: if the provider answers others meanwhile, running
                            // out again ends the next round at once.
                            successes_at_last_pause = Some(breaker.successes());
                            continue;
                        }
                        let message = if round > 0 {
                            format!("{reason} (after {round} retry rounds)")
                        } else {
                            reason
                        };
                        let reason = DeadLetterReason {
                            class: ErrorClass::RetriesExhausted,
                            stage: Stage::Enrich,
                            message,
                            attempts: attempts_so_far
                                .saturating_add(job.origin.as_ref().map_or(0, |o| o.attempts)),
                            http_status: None,
                            provider: Some(provider),
                        };
                        return dead_letter(ctx, job, reason).await.into();
                    }
                    AfterSystemic::Pause => {
                        if let Some(period) = permit.failed_systemically() {
                            ctx.events.circuit_opened(provider, period, &reason);
                        }
                        ctx.events.paused(provider, job.source(), &reason);
                        successes_at_last_pause = Some(breaker.successes());
                    }
                }
            }
        }
    }
}

/// The provider's circuit as the enricher sees it: every attempt feeds its failure streak, and
/// its opening stops a record waiting between attempts.
pub(crate) struct Circuit<'a> {
    breaker: &'a CircuitBreaker,
    events: &'a RecordEvents,
    provider: Provider,
}

impl<'a> Circuit<'a> {
    /// `provider`'s circuit, reporting to the context's telemetry.
    pub(crate) fn of(ctx: &'a WorkerContext, provider: Provider) -> Self {
        Self {
            breaker: ctx.breakers.get(provider),
            events: &ctx.events,
            provider,
        }
    }
}

impl crate::enrich::CircuitSignal for Circuit<'_> {
    fn attempted(&self, signal: Signal) {
        let period = match signal {
            Signal::Answered => return self.breaker.answered(),
            Signal::Unavailable => self.breaker.unavailable(),
        };
        if let Some(period) = period {
            let streak = self.breaker.settings();
            self.events.circuit_opened(
                self.provider,
                period,
                &format!(
                    "at least {} attempts in a row over {:?} found the provider unavailable",
                    streak.failure_streak, streak.failure_streak_for
                ),
            );
        }
    }

    fn opened(&self) -> impl std::future::Future<Output = ()> + Send {
        self.breaker.opened()
    }
}

/// Writes the job's key and value with `headers` to `topic` (`partition`: `None` for the
/// partitioner's choice) and waits for the acknowledgement. A write the topic refuses is
/// reported through `refused` (with the error code) and tried again every 30 s until it is
/// accepted: the record's partition stops advancing, it never skips. Dead letters and diverts
/// are final outcomes, so neither may be dropped.
async fn write_until_accepted(
    ctx: &WorkerContext,
    topic: &str,
    partition: Option<i32>,
    job: &Job,
    headers: &[(&str, Option<&[u8]>)],
    refused: impl Fn(&str),
) -> Result<super::producer::Acked, ProduceError> {
    let record = &job.record;
    loop {
        match ctx
            .producer
            .send_to(
                topic,
                partition,
                record.key.as_deref(),
                record.payload.as_deref(),
                headers,
            )
            .await
        {
            Err(ProduceError::Refused { code, .. }) => {
                refused(&format!("{code:?}"));
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            written => return written,
        }
    }
}

/// The record's partition is being revoked (see [`Processed::Drained`]).
struct Drained;

/// A place at the catch-up gate for a record read back from a wait topic (`None` for any
/// other record).
async fn catch_up_place<'a>(
    ctx: &'a WorkerContext,
    job: &Job,
    drain: &CancellationToken,
) -> Result<Option<super::catch_up::CatchUpPermit<'a>>, Drained> {
    let (Some(diversion), Some(provider)) = (&ctx.diversion, job.wait) else {
        return Ok(None);
    };
    tokio::select! {
        biased;
        _ = drain.cancelled() => Err(Drained),
        place = diversion.catch_up.acquire(provider) => Ok(Some(place)),
    }
}

/// Sleeps until the wall-clock time `due` (at once if it passed); false when `drain` was
/// cancelled first (the record stops unfinished and is read again).
async fn sleep_until_wall(due: chrono::DateTime<chrono::Utc>, drain: &CancellationToken) -> bool {
    let left = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    if left.is_zero() {
        return true;
    }
    tokio::select! {
        biased;
        _ = drain.cancelled() => false,
        () = tokio::time::sleep(left) => true,
    }
}

/// Publishes a final result (fallback on): from a webhook (`source` webhook) or a poll. A result
/// whose identity was already published in this process (by the other path) is not published
/// again: counted as deduplicated.
pub(crate) async fn publish_result(
    ctx: &WorkerContext,
    job: &Job,
    event: &WebhookEvent,
    fetched: &crate::provider::Fetched,
    attempts: u32,
    result: &FinalResult,
    source: TriggerSource,
) -> Processed {
    if ctx.dedupe.is_duplicate(&result.result_id) {
        ctx.events
            .deduplicated(event.provider, job.source(), &result.result_id);
        return Processed::Final(Final::Deduplicated);
    }
    let lineage = lineage(job);
    let include_raw = ctx.enricher.settings().include_raw_response;
    let enriched = normalize(
        event,
        fetched,
        Some(lineage),
        include_raw,
        chrono::Utc::now(),
    );
    publish(ctx, job, event, &enriched, attempts, Some((result, source)))
        .await
        .into()
}

/// Dead-letters `job` (the fallback's expectations: malformed, expired, refused by the
/// provider).
pub(crate) async fn dead_letter_job(
    ctx: &WorkerContext,
    job: &Job,
    reason: DeadLetterReason,
) -> Processed {
    dead_letter(ctx, job, reason).await.into()
}

async fn publish(
    ctx: &WorkerContext,
    job: &Job,
    event: &WebhookEvent,
    enriched: &crate::record::EnrichedRecord,
    attempts: u32,
    result: Option<(&FinalResult, TriggerSource)>,
) -> Result<Final, ProduceError> {
    let topic = ctx.output.topic_for(event.provider, event.route());
    let value = match ctx.encoder.encode(topic, enriched) {
        Ok(v) => v,
        Err(e) => {
            let reason = DeadLetterReason {
                class: ErrorClass::EncodingFailed,
                stage: Stage::Encode,
                message: e.to_string(),
                attempts,
                http_status: None,
                provider: Some(event.provider),
            };
            return dead_letter(ctx, job, reason).await;
        }
    };
    let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let event_id = event.event_id.hyphenated().encode_lower(&mut id_buf);
    let trigger = event.trigger_label();
    let mut key_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let key = event.subject_id.hyphenated().encode_lower(&mut key_buf);
    let content = ctx.encoder.content_headers(topic);
    let mut hs: Vec<(&str, Option<&[u8]>)> = Vec::with_capacity(6 + content.len());
    hs.push((headers::EVENT_ID, Some(event_id.as_bytes())));
    hs.push((headers::PROVIDER, Some(event.provider.as_str().as_bytes())));
    hs.push((headers::STATE, Some(enriched.state.symbol().as_bytes())));
    hs.push((headers::TRIGGER, Some(trigger.as_bytes())));
    let mut result_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    if let Some((result, source)) = result {
        let result_id = result.result_id.hyphenated().encode_lower(&mut result_buf);
        hs.push((headers::RESULT_ID, Some(result_id.as_bytes())));
        hs.push((headers::TRIGGER_SOURCE, Some(source.as_str().as_bytes())));
    }
    hs.extend(content.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
    match ctx
        .producer
        .send(topic, Some(key.as_bytes()), Some(&value), &hs)
        .await
    {
        Ok(_) => {}
        Err(ProduceError::Refused { topic, code }) => {
            let reason = DeadLetterReason {
                class: ErrorClass::EncodingFailed,
                stage: Stage::Encode,
                message: format!("output topic {topic} refused the record: {code:?}"),
                attempts,
                http_status: None,
                provider: Some(event.provider),
            };
            return dead_letter(ctx, job, reason).await;
        }
        Err(fatal) => return Err(fatal),
    }
    ctx.dedupe.mark_published(event.event_id);
    if let Some((result, source)) = result {
        ctx.dedupe.mark_published(result.result_id);
        if let (TriggerSource::Webhook, Some(link)) = (source, &ctx.fallback) {
            link.webhook_result(event.provider, event.subject_id, result.seen.clone());
        }
    }
    ctx.events.published(
        event.provider,
        job.source(),
        &event.subject_id,
        enriched.state.symbol(),
    );
    Ok(Final::Published)
}

/// `replay --renormalize`: rebuilds an enriched record from its `raw_response` with the current
/// normalizer and schema, and publishes it like an enriched one (dedupe included). No provider
/// call. A record without `raw_response` is counted and reported; one that cannot be rebuilt is
/// dead-lettered.
async fn renormalize(ctx: &WorkerContext, job: &Job) -> Result<Final, ProduceError> {
    use crate::renormalize::{rebuild, Rebuilt};
    let include_raw = ctx.enricher.settings().include_raw_response;
    let rebuilt = match job.record.payload.as_deref() {
        Some(value) => rebuild(value, include_raw, chrono::Utc::now()).map_err(|e| e.to_string()),
        None => Err("the record has no value".to_string()),
    };
    match rebuilt {
        Ok(Rebuilt::Record { event, record }) => {
            if ctx.dedupe.is_duplicate(&event.event_id) {
                ctx.events
                    .deduplicated(event.provider, job.source(), &event.event_id);
                return Ok(Final::Deduplicated);
            }
            publish(ctx, job, &event, &record, 0, None).await
        }
        Ok(Rebuilt::NoRawResponse { provider, event_id }) => {
            ctx.events
                .without_raw_response(provider, job.source(), &event_id);
            Ok(Final::Skipped)
        }
        Err(message) => {
            let reason = DeadLetterReason {
                class: ErrorClass::MalformedPayload,
                stage: Stage::Decode,
                message,
                attempts: 0,
                http_status: None,
                provider: None,
            };
            dead_letter(ctx, job, reason).await
        }
    }
}

/// Dead-letters a record whose processing panicked (a defect), so its key and offset move on.
pub async fn dead_letter_panicked(ctx: &WorkerContext, job: &Job) -> Processed {
    ctx.events.panicked(job.source());
    let provider = match &job.decoded {
        Ok(Decoded::Enrich(e)) => Some(e.provider),
        Ok(Decoded::Skip(s)) => Some(s.provider),
        Err(r) => r.provider,
    };
    let reason = DeadLetterReason {
        class: ErrorClass::InternalError,
        stage: Stage::Internal,
        message: "the record's processing panicked (a defect of the service)".into(),
        attempts: 0,
        http_status: None,
        provider,
    };
    dead_letter(ctx, job, reason).await.into()
}

/// Writes the original record, unchanged, plus the reason headers, to the dead-letter topic, and
/// waits for the acknowledgement. Retries until it succeeds: a partition whose dead letters
/// cannot be written stops advancing; it never skips.
async fn dead_letter(
    ctx: &WorkerContext,
    job: &Job,
    reason: DeadLetterReason,
) -> Result<Final, ProduceError> {
    let record = &job.record;
    let from = job.source();
    let src = dead_letter::Source {
        topic: from.topic,
        partition: from.partition,
        offset: from.offset,
        timestamp_ms: from.timestamp_ms,
    };
    let added = dead_letter::headers(&reason, &src, chrono::Utc::now());
    let mut hs: Vec<(&str, Option<&[u8]>)> = Vec::with_capacity(record.headers.len() + added.len());
    hs.extend(
        record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref())),
    );
    hs.extend(added.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
    let topic = &ctx.output.dead_letter_topic;
    write_until_accepted(ctx, topic, None, job, &hs, |code| {
        ctx.events.dead_letter_refused(topic, job.source(), code)
    })
    .await?;
    ctx.events
        .dead_lettered(reason.class, job.source(), &reason.message);
    Ok(Final::DeadLettered(reason.class))
}

/// Writes the record, unchanged, plus the wait headers, to `provider`'s wait topic, in the
/// partition with its input partition's number, and waits for the acknowledgement. Like a dead
/// letter, a refused write is retried until it succeeds (the partition stops advancing; it never
/// skips). Used for a record started while its lane is diverted, and for one that diverted
/// itself while it waited for an open circuit.
pub async fn divert(
    ctx: &WorkerContext,
    job: &Job,
    provider: Provider,
    reason: super::wait::Reason,
    attempts: u32,
    retry_round: Option<(u32, chrono::DateTime<chrono::Utc>)>,
) -> Processed {
    let Some(diversion) = &ctx.diversion else {
        // Not configured: the dispatcher never asks for it. Process instead of losing it.
        return Processed::Fatal(ProduceError::Fatal {
            topic: String::new(),
            code: rdkafka::types::RDKafkaErrorCode::Fail,
            message: "a record was diverted with isolation disabled (a defect)".into(),
        });
    };
    let record = &job.record;
    let from = job.source();
    let origin = super::wait::Origin {
        topic: Arc::from(from.topic),
        partition: from.partition,
        offset: from.offset,
        timestamp_ms: from.timestamp_ms,
        first_seen: None,
        attempts: attempts.saturating_add(job.origin.as_ref().map_or(0, |o| o.attempts)),
        round: retry_round.map_or(0, |(r, _)| r),
        not_before: retry_round.map(|(_, due)| due),
    };
    let first_seen = job
        .origin
        .as_ref()
        .and_then(|o| o.first_seen)
        .unwrap_or_else(chrono::Utc::now);
    let added = super::wait::headers(&origin, reason, first_seen);
    let mut hs: Vec<(&str, Option<&[u8]>)> = Vec::with_capacity(record.headers.len() + added.len());
    hs.extend(
        record
            .headers
            .iter()
            .filter(|(k, _)| !super::wait::names::ALL.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_deref())),
    );
    hs.extend(added.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
    let topic = &diversion.wait_topics[provider.index()];
    let written = write_until_accepted(ctx, topic, Some(record.partition), job, &hs, |code| {
        ctx.events.wait_write_refused(topic, job.source(), code)
    })
    .await;
    match written {
        Ok(acked) => {
            ctx.events.diverted(provider, job.source(), reason.as_str());
            Processed::Final(Final::Diverted {
                offset: acked.offset,
            })
        }
        Err(fatal) => Processed::Fatal(fatal),
    }
}

/// Where the record came from, as the output record's `lineage`.
fn lineage(job: &Job) -> Lineage {
    let src = job.source();
    Lineage {
        topic: src.topic.to_string(),
        partition: src.partition,
        offset: src.offset,
        timestamp: src
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis),
    }
}
