//! Publishing: enriched records to their output topic and failed ones to the dead-letter topic.
//! A write returns only once Kafka acknowledged it (`acks=all`), so an offset never moves past a
//! record whose output is not durable.
//!
//! Errors are retried with backoff, forever, because the alternative is skipping a record:
//! a partition whose writes fail stops advancing. Only a fatal producer error (the idempotent
//! producer lost its guarantees) stops the service.

use crate::retry::BackoffPolicy;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::time::Duration;

/// A write that can never succeed, or a producer that can no longer be used.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer raised a fatal error; the service must stop without committing further.
    #[error("fatal producer error on topic {topic}: {code:?}: {message}")]
    Fatal {
        topic: String,
        code: RDKafkaErrorCode,
        message: String,
    },
    /// The broker refuses this record for good (too large for the topic).
    #[error("record refused by topic {topic}: {code:?}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// The producer's client context: librdkafka's logs and errors go through [`crate::telemetry`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerLog;

impl ClientContext for ProducerLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::telemetry::librdkafka_error(&error, reason);
    }
}

/// Where a write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// The shared producer.
#[derive(Clone)]
pub struct OutputProducer {
    producer: FutureProducer<ProducerLog>,
    retry: BackoffPolicy,
}

impl OutputProducer {
    pub fn new(producer: FutureProducer<ProducerLog>) -> Self {
        let retry = BackoffPolicy {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5),
            max_elapsed: Duration::MAX,
        };
        Self { producer, retry }
    }

    /// Writes one record and waits for its acknowledgement, retrying transient failures.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<Acked, ProduceError> {
        self.send_to(topic, None, key, payload, headers).await
    }

    /// [`OutputProducer::send`] to a chosen partition (`None`: the partitioner's choice).
    pub async fn send_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<Acked, ProduceError> {
        let mut attempt = 0u32;
        loop {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in headers {
                owned = owned.insert(Header { key: k, value: *v });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(delivery) => {
                    return Ok(Acked {
                        partition: delivery.partition,
                        offset: delivery.offset,
                    })
                }
                Err((error, _)) => {
                    if let Some((code, message)) = self.producer.client().fatal_error() {
                        return Err(ProduceError::Fatal {
                            topic: topic.to_string(),
                            code,
                            message,
                        });
                    }
                    let code = error.rdkafka_error_code();
                    if matches!(
                        code,
                        Some(
                            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord
                        )
                    ) {
                        return Err(ProduceError::Refused {
                            topic: topic.to_string(),
                            code: code.unwrap_or(RDKafkaErrorCode::Fail),
                        });
                    }
                    let delay = self
                        .retry
                        .full_jitter(attempt, rand::random::<f64>())
                        .max(Duration::from_millis(50));
                    crate::telemetry::produce_retry(topic, &error, attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Waits for every queued write (shutdown). Runs librdkafka's blocking flush off the async
    /// workers.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}
