//! The end of a partition's log (the offset after its last record), read rather than trusted.
//!
//! `replay` and `redrive` both end at "every record there when the command started". The high
//! watermark says where that is on Kafka, but a broker may report it behind the last record:
//! Tansu reports the last batch's first offset + 1, which cut a batch of records short. So the
//! end is read: from the reported high watermark's last record to the partition's end
//! (librdkafka's partition EOF). On a broker that reports it right, this reads one record per
//! partition. Blocking: it polls a consumer of its own.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Why the end of a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogEndError {
    #[error("reading the end of {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "the end of {topic} could not be read within {} s (partitions {partitions:?})",
        timeout.as_secs()
    )]
    Timeout {
        topic: String,
        partitions: Vec<i32>,
        timeout: Duration,
    },
}

/// The end of each partition of `topic`, from its `(partition, low, high)` watermarks, read with
/// a consumer made from `config` (partition EOF reported, nothing committed) and `context`.
/// An error for which `fatal` is false is logged and the read goes on until `timeout` (librdkafka
/// retries a lost connection by itself).
pub fn read<C: ConsumerContext + 'static>(
    config: &ClientConfig,
    context: C,
    topic: &str,
    watermarks: &[(i32, i64, i64)],
    timeout: Duration,
    fatal: impl Fn(&KafkaError) -> bool,
) -> Result<BTreeMap<i32, i64>, LogEndError> {
    let kafka = |source| LogEndError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let mut ends: BTreeMap<i32, i64> = watermarks.iter().map(|(p, _, h)| (*p, *h)).collect();
    let mut list = TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for (p, low, high) in watermarks {
        if high > low {
            list.add_partition_offset(topic, *p, Offset::Offset(high - 1))
                .map_err(kafka)?;
            open.insert(*p);
        }
    }
    if open.is_empty() {
        return Ok(ends);
    }
    let mut config = config.clone();
    config
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let reader: BaseConsumer<C> = config.create_with_context(context).map_err(kafka)?;
    reader.assign(&list).map_err(kafka)?;
    let deadline = Instant::now() + timeout;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LogEndError::Timeout {
                topic: topic.to_string(),
                partitions: open.into_iter().collect(),
                timeout,
            });
        }
        match reader.poll(left.min(Duration::from_millis(200))) {
            Some(Ok(m)) => {
                let end = ends.entry(m.partition()).or_default();
                *end = (*end).max(m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(error)) if fatal(&error) => return Err(kafka(error)),
            Some(Err(error)) => {
                crate::telemetry::librdkafka_error(&error, "reading the end of a topic")
            }
            None => {}
        }
    }
    Ok(ends)
}
