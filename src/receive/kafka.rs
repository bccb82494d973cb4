//! The raw-topic writer: one idempotent `acks=all` producer (the engine's configuration rules,
//! [`crate::kafka::client_config`]), one write per accepted request, awaited until Kafka
//! acknowledges it or the write deadline passes.
//!
//! The deadline is also the producer's `message.timeout.ms` (unless `kafka.producer` overrides
//! it): a write answered 503 is then dropped from librdkafka's queue instead of being sent
//! minutes later, and the queue never holds more than the requests in flight. A write that
//! reached the broker but whose acknowledgement was lost can still land: the provider's retry
//! then adds a second copy, which the engine's dedupe absorbs. What can never happen is a 200
//! without an acknowledgement.

use super::raw::RawRecord;
use super::ServeSettings;
use crate::health::Health;
use crate::kafka::KafkaSettings;
use crate::telemetry::receive::WriteOutcome;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a write was not acknowledged. Each is answered 503: none is the provider's fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// No acknowledgement within the deadline (brokers down or slow).
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// librdkafka's queue is full; nothing was enqueued.
    #[error("the producer queue is full")]
    QueueFull,
    /// The write failed (refused by the topic, or the producer is closing).
    #[error("write failed: {0}")]
    Failed(String),
    /// The idempotent producer lost its guarantees; the receiver stops.
    #[error("fatal producer error: {code:?}: {message}")]
    Fatal {
        code: RDKafkaErrorCode,
        message: String,
    },
}

impl WriteError {
    /// The metric outcome.
    pub fn outcome(&self) -> WriteOutcome {
        match self {
            WriteError::Timeout(_) => WriteOutcome::Timeout,
            WriteError::QueueFull => WriteOutcome::QueueFull,
            WriteError::Failed(_) | WriteError::Fatal { .. } => WriteOutcome::Error,
        }
    }
}

/// The producer's client context: logs and errors through telemetry, statistics to readiness.
pub struct ReceiverKafka {
    health: Arc<Health>,
}

impl ClientContext for ReceiverKafka {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::telemetry::librdkafka_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.health.on_statistics(&statistics);
    }
}

/// Where a write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub partition: i32,
    pub offset: i64,
}

/// The raw-topic writer.
pub struct RawWriter {
    producer: FutureProducer<ReceiverKafka>,
    topic: String,
    deadline: Duration,
    fatal: CancellationToken,
}

/// The producer properties the receiver sets before the `kafka.producer` passthrough.
pub fn producer_defaults(config: &ServeSettings) -> Vec<(&'static str, String)> {
    let r = &config.receive;
    vec![
        (
            "statistics.interval.ms",
            config.statistics_interval.as_millis().max(100).to_string(),
        ),
        (
            "message.timeout.ms",
            r.write_timeout.as_millis().max(100).to_string(),
        ),
    ]
}

impl RawWriter {
    /// Creates the producer (it connects in the background; readiness follows it). `fatal` is
    /// cancelled when the producer raises a fatal error.
    pub fn new(
        config: &ServeSettings,
        health: Arc<Health>,
        fatal: CancellationToken,
    ) -> Result<Self, KafkaError> {
        let kafka: &KafkaSettings = &config.kafka;
        let producer: FutureProducer<ReceiverKafka> =
            crate::kafka::client_config::producer_config_with(kafka, &producer_defaults(config))
                .create_with_context(ReceiverKafka { health })?;
        Ok(Self {
            producer,
            topic: config.receive.topic.clone(),
            deadline: config.receive.write_timeout,
            fatal,
        })
    }

    /// Writes one record and waits for its acknowledgement, up to the write deadline.
    pub async fn write(&self, record: &RawRecord) -> Result<Written, WriteError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut message: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic)
            .payload(&record.payload[..])
            .headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key.as_str());
        }
        let delivery = match self.producer.send_result(message) {
            Ok(delivery) => delivery,
            Err((error, _)) => return Err(self.classify(&error)),
        };
        // librdkafka fails the write itself at `message.timeout.ms` (the same deadline); this is
        // the backstop should its answer be late.
        match tokio::time::timeout(self.deadline + Duration::from_secs(1), delivery).await {
            Err(_) => Err(WriteError::Timeout(self.deadline)),
            Ok(Err(_canceled)) => Err(WriteError::Failed("the producer was closed".into())),
            Ok(Ok(Ok(delivery))) => Ok(Written {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Ok(Err((error, _message)))) => Err(self.classify(&error)),
        }
    }

    fn classify(&self, error: &KafkaError) -> WriteError {
        if let Some((code, message)) = self.producer.client().fatal_error() {
            self.fatal.cancel();
            return WriteError::Fatal { code, message };
        }
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => WriteError::QueueFull,
            Some(RDKafkaErrorCode::MessageTimedOut) => WriteError::Timeout(self.deadline),
            _ => WriteError::Failed(error.to_string()),
        }
    }

    /// The producer's fatal error, if it raised one.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, message)| format!("{code:?}: {message}"))
    }

    /// Waits for queued writes (those answered 503 at their deadline may still be in flight),
    /// off the async workers.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}

impl std::fmt::Debug for RawWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWriter")
            .field("topic", &self.topic)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_deadline_is_the_message_timeout_and_the_guarantees_hold() {
        let mut config = crate::config::Config::default().receive_serve_settings();
        config.receive.write_timeout = Duration::from_millis(2500);
        let c = crate::kafka::client_config::producer_config_with(
            &config.kafka,
            &producer_defaults(&config),
        );
        assert_eq!(c.get("message.timeout.ms"), Some("2500"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("statistics.interval.ms"), Some("5000"));
    }
}
