//! One record's way through the pipeline: (decoded by the consumer thread) → dedupe → wait for
//! the provider's circuit → enrich → normalize → encode → produce → mark seen. Every path ends in
//! a final outcome whose write Kafka acknowledged, in a fatal producer error that stops the
//! service, or — when its partition is being revoked while it only waits — in `Drained`.

use super::breaker::CircuitBreaker;
use super::dead_letter::{self, DeadLetterReason, Stage};
use super::dedupe::Dedupe;
use super::input::InputRecord;
use super::job::Job;
use super::producer::{OutputProducer, ProduceError};
use crate::avro::RecordEncoder;
use crate::enrich::decision::{self, AfterSystemic};
use crate::enrich::{Budget, EnrichOutcome, Enricher};
use crate::event::{Decoded, WebhookEvent};
use crate::failure::ErrorClass;
use crate::output::OutputSettings;
use crate::provider::Provider;
use crate::record::{normalize, Lineage};
use crate::telemetry::{RecordEvents, Source};
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
}

/// A record's final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Published,
    Deduplicated,
    Skipped,
    DeadLettered(ErrorClass),
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

fn source(record: &InputRecord) -> Source<'_> {
    Source {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
    }
}

/// Processes one record to its final outcome. `drain` is cancelled when the record's partition
/// is being revoked: a record that is only waiting (for its provider's circuit, or between
/// enrichment attempts) then stops at once; a request in flight is let finish, and a produce is
/// never interrupted.
pub async fn process(ctx: &WorkerContext, job: &Job, drain: &CancellationToken) -> Processed {
    let record = &job.record;
    let event = match &job.decoded {
        Err(rejection) => {
            let reason = DeadLetterReason {
                class: rejection.class,
                stage: Stage::Decode,
                message: rejection.reason.clone(),
                attempts: 0,
                http_status: None,
                provider: rejection.provider,
            };
            return dead_letter(ctx, record, reason).await.into();
        }
        Ok(Decoded::Skip(skipped)) => {
            ctx.events
                .skipped(skipped.provider, source(record), &skipped.reason);
            return Processed::Final(Final::Skipped);
        }
        Ok(Decoded::Enrich(event)) => event,
    };
    if ctx.dedupe.is_duplicate(&event.event_id) {
        ctx.events
            .deduplicated(event.provider, source(record), &event.event_id);
        return Processed::Final(Final::Deduplicated);
    }

    let breaker = ctx.breakers.get(event.provider);
    // The circuit's success count when this record last paused, for the poison-record rule of
    // `decision::after_systemic` (`None` before its first pause).
    let mut successes_at_last_pause: Option<u64> = None;
    loop {
        let permit = tokio::select! {
            biased;
            _ = drain.cancelled() => return Processed::Drained,
            permit = breaker.acquire() => permit,
        };
        // A half-open probe is one attempt: the other records of the provider wait on it.
        let budget = if permit.is_probe() {
            Budget::Probe
        } else {
            Budget::Full
        };
        match ctx.enricher.enrich_within(event, budget, drain).await {
            EnrichOutcome::Cancelled => return Processed::Drained,
            EnrichOutcome::Reachable { .. } => {
                // The probe got an answer: the provider is up; go on with the full budget.
                permit.succeeded();
            }
            EnrichOutcome::Fetched { fetched, attempts } => {
                permit.succeeded();
                let lineage = Lineage {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    offset: record.offset,
                    timestamp: record
                        .timestamp_ms
                        .and_then(chrono::DateTime::from_timestamp_millis),
                };
                let include_raw = ctx.enricher.settings().include_raw_response;
                let enriched = normalize(
                    event,
                    &fetched,
                    Some(lineage),
                    include_raw,
                    chrono::Utc::now(),
                );
                return publish(ctx, record, event, &enriched, attempts)
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
                return dead_letter(ctx, record, reason).await.into();
            }
            EnrichOutcome::Systemic {
                provider,
                reason,
                attempts,
                retries_exhausted,
            } => {
                match decision::after_systemic(
                    retries_exhausted,
                    successes_at_last_pause,
                    breaker.successes(),
                ) {
                    AfterSystemic::DeadLetterRetriesExhausted => {
                        let reason = DeadLetterReason {
                            class: ErrorClass::RetriesExhausted,
                            stage: Stage::Enrich,
                            message: reason,
                            attempts,
                            http_status: None,
                            provider: Some(provider),
                        };
                        return dead_letter(ctx, record, reason).await.into();
                    }
                    AfterSystemic::Pause => {
                        if let Some(period) = permit.failed_systemically() {
                            ctx.events.circuit_opened(provider, period, &reason);
                        }
                        ctx.events.paused(provider, source(record), &reason);
                        successes_at_last_pause = Some(breaker.successes());
                    }
                }
            }
        }
    }
}

async fn publish(
    ctx: &WorkerContext,
    record: &InputRecord,
    event: &WebhookEvent,
    enriched: &crate::record::EnrichedRecord,
    attempts: u32,
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
            return dead_letter(ctx, record, reason).await;
        }
    };
    let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let event_id = event.event_id.hyphenated().encode_lower(&mut id_buf);
    let trigger = event.trigger_label();
    let mut key_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let key = event.subject_id.hyphenated().encode_lower(&mut key_buf);
    let content = ctx.encoder.content_headers(topic);
    let mut hs: Vec<(&str, Option<&[u8]>)> = Vec::with_capacity(4 + content.len());
    hs.push((headers::EVENT_ID, Some(event_id.as_bytes())));
    hs.push((headers::PROVIDER, Some(event.provider.as_str().as_bytes())));
    hs.push((headers::STATE, Some(enriched.state.symbol().as_bytes())));
    hs.push((headers::TRIGGER, Some(trigger.as_bytes())));
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
            return dead_letter(ctx, record, reason).await;
        }
        Err(fatal) => return Err(fatal),
    }
    ctx.dedupe.mark_published(event.event_id);
    ctx.events.published(
        event.provider,
        source(record),
        &event.subject_id,
        enriched.state.symbol(),
    );
    Ok(Final::Published)
}

/// Dead-letters a record whose processing panicked (a defect), so its key and offset move on.
pub async fn dead_letter_panicked(ctx: &WorkerContext, job: &Job) -> Processed {
    ctx.events.panicked(source(&job.record));
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
    dead_letter(ctx, &job.record, reason).await.into()
}

/// Writes the original record, unchanged, plus the reason headers, to the dead-letter topic, and
/// waits for the acknowledgement. Retries until it succeeds: a partition whose dead letters
/// cannot be written stops advancing; it never skips.
async fn dead_letter(
    ctx: &WorkerContext,
    record: &InputRecord,
    reason: DeadLetterReason,
) -> Result<Final, ProduceError> {
    let src = dead_letter::Source {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
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
    loop {
        match ctx
            .producer
            .send(topic, record.key.as_deref(), record.payload.as_deref(), &hs)
            .await
        {
            Ok(_) => break,
            Err(ProduceError::Refused { code, .. }) => {
                ctx.events
                    .dead_letter_refused(topic, source(record), &format!("{code:?}"));
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            Err(fatal) => return Err(fatal),
        }
    }
    ctx.events
        .dead_lettered(reason.class, source(record), &reason.message);
    Ok(Final::DeadLettered(reason.class))
}
