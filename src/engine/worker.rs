//! One record's way through the pipeline: decode (done by the engine loop, to find the ordering
//! key) → dedupe → wait for the provider's circuit → enrich → normalize → encode → produce →
//! mark seen. Every path ends in a final outcome whose write Kafka acknowledged, or in a fatal
//! producer error that stops the service.

use super::breaker::{CircuitBreaker, Permit};
use super::dead_letter::{self, DeadLetterReason, Source, Stage};
use super::dedupe::Dedupe;
use super::input::InputRecord;
use super::producer::{OutputProducer, ProduceError};
use super::stats::EngineStats;
use crate::avro::RecordEncoder;
use crate::config::OutputSettings;
use crate::enrich::{EnrichOutcome, Enricher};
use crate::event::{Decoded, Rejection, WebhookEvent};
use crate::failure::ErrorClass;
use crate::provider::Provider;
use crate::record::{normalize, Lineage};
use crate::telemetry;
use std::sync::Arc;

/// Header names on enriched records.
pub mod headers {
    /// The event's stable id (the downstream idempotency key).
    pub const EVENT_ID: &str = "event_id";
    /// `clearsale` or `unico`.
    pub const PROVIDER: &str = "provider";
    /// The normalized state symbol (`COMPLETED`, ...).
    pub const STATE: &str = "state";
    /// The ClearSale webhook type or the Unico status.
    pub const TRIGGER: &str = "trigger";
}

/// Everything a record needs, shared by all records.
pub struct WorkerContext {
    pub enricher: Enricher,
    pub clearsale_breaker: Arc<CircuitBreaker>,
    pub unico_breaker: Arc<CircuitBreaker>,
    pub dedupe: Dedupe,
    pub encoder: Arc<RecordEncoder>,
    pub output: OutputSettings,
    pub producer: OutputProducer,
    pub stats: Arc<EngineStats>,
}

impl WorkerContext {
    /// The circuit breaker of a provider.
    pub fn breaker(&self, provider: Provider) -> &CircuitBreaker {
        match provider {
            Provider::ClearSale => &self.clearsale_breaker,
            Provider::Unico => &self.unico_breaker,
        }
    }
}

/// A record with its decoding.
#[derive(Debug)]
pub struct Job {
    pub record: InputRecord,
    pub decoded: Result<Decoded, Rejection>,
    /// The ordering key: the provider's id, else the Kafka key, else the partition.
    pub key: String,
}

impl Job {
    /// Decodes a record and derives its ordering key.
    pub fn new(record: InputRecord, settings: &crate::event::DecoderSettings) -> Self {
        let decoded = crate::event::decode(
            crate::event::RawEvent {
                topic: &record.topic,
                payload: record.payload.as_deref(),
                provider_header: record.header("provider"),
            },
            settings,
        );
        let key = match &decoded {
            Ok(Decoded::Enrich(e)) => format!("{}:{}", e.provider, e.subject_id),
            Ok(Decoded::Skip(s)) => format!("{}:{}", s.provider, s.subject_id),
            Err(_) => match &record.key {
                Some(k) => format!("key:{}", String::from_utf8_lossy(k)),
                None => format!("partition:{}:{}", record.topic, record.partition),
            },
        };
        Self {
            record,
            decoded,
            key,
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
}

/// Processes one record to its final outcome.
pub async fn process(ctx: &WorkerContext, job: &Job) -> Result<Final, ProduceError> {
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
            return dead_letter(ctx, record, reason).await;
        }
        Ok(Decoded::Skip(skipped)) => {
            telemetry::record_skipped(&ctx.stats, skipped.provider, record, &skipped.reason);
            return Ok(Final::Skipped);
        }
        Ok(Decoded::Enrich(event)) => event,
    };
    if ctx.dedupe.is_duplicate(&event.event_id) {
        telemetry::record_deduplicated(&ctx.stats, event.provider, record, &event.event_id);
        return Ok(Final::Deduplicated);
    }

    let breaker = ctx.breaker(event.provider);
    // Poison-record detection: a record is dead-lettered as `retries_exhausted` only when its
    // retry budget ran out in a *later* round, after the provider answered other records since
    // this record's previous systemic failure. The first round never dead-letters: a record
    // caught at the start of an outage must wait like the others.
    let mut successes_since_last_failure: Option<u64> = None;
    loop {
        let permit = breaker.acquire().await;
        match ctx.enricher.enrich(event).await {
            EnrichOutcome::Fetched { fetched, attempts } => {
                breaker.on_success();
                let lineage = Lineage {
                    topic: record.topic.clone(),
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
                return publish(ctx, record, event, &enriched, attempts).await;
            }
            EnrichOutcome::Failed(failure) => {
                if permit == Permit::Probe || failure.attempts > 0 {
                    breaker.on_success();
                }
                let reason = DeadLetterReason {
                    class: failure.class,
                    stage: Stage::Enrich,
                    message: failure.reason,
                    attempts: failure.attempts,
                    http_status: failure.http_status,
                    provider: Some(event.provider),
                };
                return dead_letter(ctx, record, reason).await;
            }
            EnrichOutcome::Systemic {
                provider,
                reason,
                attempts,
                retries_exhausted,
            } => {
                let healthy_for_others =
                    successes_since_last_failure.is_some_and(|before| breaker.successes() > before);
                if retries_exhausted && healthy_for_others {
                    let reason = DeadLetterReason {
                        class: ErrorClass::RetriesExhausted,
                        stage: Stage::Enrich,
                        message: reason,
                        attempts,
                        http_status: None,
                        provider: Some(provider),
                    };
                    return dead_letter(ctx, record, reason).await;
                }
                if let Some(period) = breaker.on_systemic_failure(permit) {
                    telemetry::circuit_opened(&ctx.stats, provider, period, &reason);
                }
                telemetry::record_paused(&ctx.stats, provider, record, &reason);
                successes_since_last_failure = Some(breaker.successes());
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
    let module_type = match &event.trigger {
        crate::event::Trigger::ClearSale { module_type, .. } => Some(module_type.as_str()),
        crate::event::Trigger::Unico { .. } => None,
    };
    let topic = ctx.output.topic_for(event.provider, module_type);
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
    let mut hs: Vec<(String, Option<Vec<u8>>)> = vec![
        (
            headers::EVENT_ID.into(),
            Some(event.event_id.to_string().into_bytes()),
        ),
        (
            headers::PROVIDER.into(),
            Some(event.provider.as_str().as_bytes().to_vec()),
        ),
        (
            headers::STATE.into(),
            Some(enriched.state.symbol().as_bytes().to_vec()),
        ),
        (
            headers::TRIGGER.into(),
            Some(event.trigger_label().into_bytes()),
        ),
    ];
    hs.extend(
        ctx.encoder
            .content_headers(topic)
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v.into_bytes()))),
    );
    let key = event.subject_id.to_string();
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
    ctx.dedupe.mark_published(event.event_id).await;
    telemetry::record_published(
        &ctx.stats,
        event.provider,
        record,
        &event.subject_id,
        enriched.state.symbol(),
    );
    Ok(Final::Published)
}

/// Writes the original record, unchanged, plus the reason headers, to the dead-letter topic, and
/// waits for the acknowledgement. Retries until it succeeds: a partition whose dead letters
/// cannot be written stops advancing; it never skips.
async fn dead_letter(
    ctx: &WorkerContext,
    record: &InputRecord,
    reason: DeadLetterReason,
) -> Result<Final, ProduceError> {
    let source = Source {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
    };
    let mut hs = record.headers.clone();
    hs.extend(
        dead_letter::headers(&reason, &source, chrono::Utc::now())
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v.into_bytes()))),
    );
    let topic = &ctx.output.dead_letter_topic;
    loop {
        match ctx
            .producer
            .send(topic, record.key.as_deref(), record.payload.as_deref(), &hs)
            .await
        {
            Ok(_) => break,
            Err(ProduceError::Refused { code, .. }) => {
                tracing::error!(topic = %topic, source_topic = %record.topic, partition = record.partition,
                    offset = record.offset, code = ?code, "dead-letter topic refuses the record; partition stalled");
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            Err(fatal) => return Err(fatal),
        }
    }
    telemetry::record_dead_lettered(&ctx.stats, reason.class, record, &reason.message);
    Ok(Final::DeadLettered(reason.class))
}
