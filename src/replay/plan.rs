//! What the brokers say at the start of a replay, and the replay group's starting point.
//!
//! Blocking librdkafka calls (metadata, watermarks, offsets-for-times, committed offsets,
//! commits): the caller runs these in `spawn_blocking`.

use super::range::{self, Observed, RangeSpec, Resolved};
use super::ReplayError;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

/// How long one broker question may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One input partition's range, with what it was resolved from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPartition {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// The replay group's committed offset when the command started.
    pub committed: Option<i64>,
    pub range: Resolved,
}

/// Every input partition's range, in topic and partition order.
pub fn resolve(
    config: &ClientConfig,
    topics: &[String],
    spec: &RangeSpec,
    from_ms: Option<i64>,
) -> Result<Vec<PlannedPartition>, ReplayError> {
    let consumer: BaseConsumer = config.create().map_err(ReplayError::Client)?;
    for named in spec.partition_offsets.topics() {
        if !topics.iter().any(|t| t == named) {
            return Err(ReplayError::PartitionOffsetsTopic {
                topic: named.to_string(),
            });
        }
    }
    let mut planned = Vec::new();
    for topic in topics {
        let partitions =
            partitions(&consumer, topic)?.ok_or_else(|| ReplayError::TopicMissing {
                topic: topic.clone(),
            })?;
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition(topic, *p);
        }
        let committed = consumer
            .committed_offsets(list.clone(), TIMEOUT)
            .map_err(|source| ReplayError::Broker {
                what: "the replay group's committed offsets",
                topic: topic.clone(),
                source,
            })?;
        let for_times = match from_ms {
            Some(ms) => {
                let mut query = TopicPartitionList::new();
                for p in &partitions {
                    query
                        .add_partition_offset(topic, *p, Offset::Offset(ms))
                        .map_err(|source| ReplayError::Broker {
                            what: "the offsets-for-times query",
                            topic: topic.clone(),
                            source,
                        })?;
                }
                Some(
                    consumer
                        .offsets_for_times(query, TIMEOUT)
                        .map_err(|source| ReplayError::Broker {
                            what: "the offsets for the start time",
                            topic: topic.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|source| ReplayError::Broker {
                    what: "the partition's watermarks",
                    topic: topic.clone(),
                    source,
                })?;
            let committed = offset_of(&committed, topic, p);
            let start_for_time = for_times.as_ref().and_then(|l| offset_of(l, topic, p));
            let seen = Observed {
                low,
                high,
                start_for_time,
                committed,
            };
            planned.push(PlannedPartition {
                topic: topic.clone(),
                partition: p,
                low,
                high,
                committed,
                range: range::resolve(spec, topic, p, seen),
            });
        }
    }
    Ok(planned)
}

/// Commits each partition's starting point to the replay group where it differs from what the
/// group has committed, so the engine's consumer (which joins the group) starts exactly there.
/// The live group is never touched: this consumer's `group.id` is the replay group's.
pub fn seed(config: &ClientConfig, planned: &[PlannedPartition]) -> Result<usize, ReplayError> {
    let mut list = TopicPartitionList::new();
    for p in planned {
        if p.committed != Some(p.range.resume_at) {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.range.resume_at))
                .map_err(|source| ReplayError::Broker {
                    what: "the replay group's starting offsets",
                    topic: p.topic.clone(),
                    source,
                })?;
        }
    }
    let n = list.count();
    if n == 0 {
        return Ok(0);
    }
    let consumer: BaseConsumer = config.create().map_err(ReplayError::Client)?;
    consumer
        .commit(&list, CommitMode::Sync)
        .map_err(ReplayError::Seed)?;
    Ok(n)
}

/// The topics among `topics` that do not exist.
pub fn missing_topics(
    config: &ClientConfig,
    topics: &[String],
) -> Result<Vec<String>, ReplayError> {
    let consumer: BaseConsumer = config.create().map_err(ReplayError::Client)?;
    let mut missing = Vec::new();
    for topic in topics {
        if partitions(&consumer, topic)?.is_none() {
            missing.push(topic.clone());
        }
    }
    Ok(missing)
}

/// A topic's partition numbers, `None` when it does not exist.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Option<Vec<i32>>, ReplayError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|source| ReplayError::Broker {
            what: "the topic's metadata",
            topic: topic.to_string(),
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            ps.sort_unstable();
            ps
        }))
}

/// The offset of `partition` in a broker's answer, `None` for none or a negative one.
fn offset_of(list: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    match list.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) if o >= 0 => Some(o),
        _ => None,
    }
}
