//! What the brokers say at the start of a replay, and the replay group's starting point.
//!
//! Blocking librdkafka calls (metadata, watermarks, offsets-for-times, committed offsets,
//! commits): the caller runs these in `spawn_blocking`.

use super::range::{self, Observed, RangeSpec, Resolved};
use super::ReplayError;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

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
    /// Where the replay group's consumer is positioned: `range.resume_at`, or the earliest
    /// offset when the broker cannot fetch from there ([`fetch_starts`]); records before
    /// `resume_at` are then skipped.
    pub fetch_from: i64,
}

/// Every input partition's range, in topic and partition order.
pub fn resolve(
    config: &ClientConfig,
    topics: &[String],
    spec: &RangeSpec,
    from_ms: Option<i64>,
) -> Result<Vec<PlannedPartition>, ReplayError> {
    let consumer: BaseConsumer<PlanContext> = config
        .create_with_context(PlanContext)
        .map_err(ReplayError::Client)?;
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
        let mut watermarks = Vec::with_capacity(partitions.len());
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, TIMEOUT)
                .map_err(|source| ReplayError::Broker {
                    what: "the partition's watermarks",
                    topic: topic.clone(),
                    source,
                })?;
            watermarks.push((*p, low, high));
        }
        let ends = log_ends(config, topic, &watermarks)?;
        for (p, low, reported) in watermarks {
            let high = ends.get(&p).copied().unwrap_or(reported);
            let committed = offset_of(&committed, topic, p);
            let start_for_time = for_times.as_ref().and_then(|l| offset_of(l, topic, p));
            let seen = Observed {
                low,
                high,
                start_for_time,
                committed,
            };
            let range = range::resolve(spec, topic, p, seen);
            planned.push(PlannedPartition {
                topic: topic.clone(),
                partition: p,
                low,
                high,
                committed,
                range,
                fetch_from: range.resume_at,
            });
        }
    }
    Ok(planned)
}

/// The planning clients' librdkafka logs and errors, through the service's telemetry; the end of
/// a partition is what [`log_ends`] asks for, not an error.
struct PlanContext;

impl ClientContext for PlanContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            crate::telemetry::librdkafka_error(&error, reason);
        }
    }
}

impl ConsumerContext for PlanContext {}

/// The end of each partition's log (the offset after its last record), checked by reading from
/// the reported high watermark's last record to the partition's end: a broker may report the
/// high watermark behind the last record (Tansu reports the last batch's first offset + 1), and
/// the default end of a replay is "every record there when it started". On a broker that
/// reports it right, this reads one record per partition.
fn log_ends(
    config: &ClientConfig,
    topic: &str,
    watermarks: &[(i32, i64, i64)],
) -> Result<HashMap<i32, i64>, ReplayError> {
    use crate::kafka::log_end::{read, LogEndError};
    match read(config, PlanContext, topic, watermarks, TIMEOUT, |_| true) {
        Ok(ends) => Ok(ends.into_iter().collect()),
        Err(LogEndError::Kafka { topic, source }) => Err(ReplayError::Broker {
            what: "the end of the log",
            topic,
            source,
        }),
        Err(LogEndError::Timeout {
            topic, partitions, ..
        }) => Err(ReplayError::LogEnd { topic, partitions }),
    }
}

/// How long a partition may take to return its first record from its start before the broker
/// is taken to be unable to fetch from there.
const PROBE: Duration = Duration::from_secs(5);

/// Checks that the broker serves each partition's range from its start, and positions the
/// partitions it does not serve at their earliest offset instead (`fetch_from`); the engine then
/// skips the records before the start. Tansu returns nothing for a fetch from an offset inside a
/// stored batch (it answers with the next batch, or nothing), so a range starting there would
/// not be read; a Kafka broker answers at once with the record at the start. A partition whose
/// start holds no record (compaction) is also read from its earliest offset: slower, and exact. Returns the partitions so repositioned.
pub fn fetch_starts(
    config: &ClientConfig,
    planned: &mut [PlannedPartition],
) -> Result<Vec<(String, i32)>, ReplayError> {
    let mut list = TopicPartitionList::new();
    let mut open: HashSet<(String, i32)> = HashSet::new();
    for p in planned.iter() {
        if p.range.resume_at > p.low && p.range.resume_at < p.range.end {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.range.resume_at))
                .map_err(|source| ReplayError::Broker {
                    what: "the start of the range",
                    topic: p.topic.clone(),
                    source,
                })?;
            open.insert((p.topic.clone(), p.partition));
        }
    }
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let mut config = config.clone();
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let reader: BaseConsumer<PlanContext> = config
        .create_with_context(PlanContext)
        .map_err(ReplayError::Client)?;
    reader.assign(&list).map_err(|source| ReplayError::Broker {
        what: "the start of the range",
        topic: String::new(),
        source,
    })?;
    let deadline = Instant::now() + PROBE;
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(Ok(m)) = reader.poll(left.min(Duration::from_millis(200))) {
            let key = (m.topic().to_string(), m.partition());
            let start = planned
                .iter()
                .find(|p| p.topic == key.0 && p.partition == key.1)
                .map(|p| p.range.resume_at);
            // Served from the start: its first record is the start's. A later one means the
            // broker skipped records (Tansu returns the next batch after the offset's own).
            if start == Some(m.offset()) {
                open.remove(&key);
            } else {
                reader
                    .pause(&single(&key.0, key.1))
                    .map_err(|source| ReplayError::Broker {
                        what: "the start of the range",
                        topic: key.0.clone(),
                        source,
                    })?;
            }
        }
    }
    let mut moved: Vec<(String, i32)> = open.into_iter().collect();
    moved.sort();
    for p in planned.iter_mut() {
        if moved.contains(&(p.topic.clone(), p.partition)) {
            p.fetch_from = p.low;
        }
    }
    Ok(moved)
}

/// Commits each partition's starting point to the replay group where it differs from what the
/// group has committed, so the engine's consumer (which joins the group) starts exactly there.
/// The live group is never touched: this consumer's `group.id` is the replay group's.
pub fn seed(config: &ClientConfig, planned: &[PlannedPartition]) -> Result<usize, ReplayError> {
    let mut list = TopicPartitionList::new();
    for p in planned {
        if p.committed != Some(p.fetch_from) {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.fetch_from))
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
    let consumer: BaseConsumer<PlanContext> = config
        .create_with_context(PlanContext)
        .map_err(ReplayError::Client)?;
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
    let consumer: BaseConsumer<PlanContext> = config
        .create_with_context(PlanContext)
        .map_err(ReplayError::Client)?;
    let mut missing = Vec::new();
    for topic in topics {
        if partitions(&consumer, topic)?.is_none() {
            missing.push(topic.clone());
        }
    }
    Ok(missing)
}

fn single(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// A topic's partition numbers, `None` when it does not exist.
fn partitions(
    consumer: &BaseConsumer<PlanContext>,
    topic: &str,
) -> Result<Option<Vec<i32>>, ReplayError> {
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
