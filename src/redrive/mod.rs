//! `webhook-enricher redrive`: reads the dead-letter topic from the redrive group's committed
//! offsets (or the start of the range) up to its end offsets captured at start, and writes each
//! dead letter that passes the filters and the loop guard back to its source topic
//! (`__connect.errors.topic`) with its original key, value and headers plus a redrive count.
//!
//! A dead letter counts as done, and its offset is committed to the redrive group, only once its
//! republish is acknowledged (`acks=all`, idempotent producer) or once it was filtered out or
//! reported; commits are in offset order per partition, so an interrupted redrive resumes where
//! it stopped and never skips one. The first republish that fails stops the redrive: nothing past
//! it in its partition is committed. `--dry-run` produces and commits nothing.
//!
//! The pure decisions live in [`decide`], the printed report in [`report`].

pub mod decide;
pub mod report;

use crate::engine::input::InputRecord;
use crate::failure::ErrorClass;
use crate::kafka::KafkaSettings;
use decide::{Decision, Filter, FilteredBy, OffsetBound, TimeBound};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use report::{Line, PartitionRange, Summary};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a Kafka metadata, watermark, offset or commit request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The producer's `message.timeout.ms` unless `kafka.producer` sets it: a republish not
/// acknowledged by then is an error (the redrive stops; its dead letter is not committed).
pub const DEFAULT_MESSAGE_TIMEOUT_MS: &str = "30000";
/// Default of `--max-redrives`.
pub const DEFAULT_MAX_REDRIVES: u32 = 3;

/// The command line of `redrive`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RedriveOptions {
    /// Redrive only dead letters of this error class (repeatable; every class when absent):
    /// malformed_payload, invalid_id, unsupported_event, provider_rejected, not_found,
    /// invalid_response, encoding_failed, retries_exhausted, internal_error.
    #[arg(long = "class", value_name = "CLASS", value_parser = parse_class)]
    pub classes: Vec<ErrorClass>,
    /// Only dead letters written at or after this time (RFC 3339, or -<duration> before now:
    /// -6h). The dead letter's Kafka timestamp, else its `__connect.errors.failed.at`.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<TimeBound>,
    /// Only dead letters written before this time (end-exclusive; same forms as --from).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<TimeBound>,
    /// Dead-letter offsets to start at: one for every partition (120), or per partition
    /// (0=120,3=998; a partition not named starts where it would anyway).
    #[arg(long, value_name = "OFFSETS")]
    pub from_offset: Option<OffsetBound>,
    /// Dead-letter offsets to stop before (end-exclusive; same forms as --from-offset).
    #[arg(long, value_name = "OFFSETS")]
    pub to_offset: Option<OffsetBound>,
    /// Read only this partition of the dead-letter topic (repeatable; all when absent).
    #[arg(long = "partition", value_name = "PARTITION")]
    pub partitions: Vec<i32>,
    /// A dead letter whose record was already redriven this many times is not redriven again
    /// (it is reported).
    #[arg(long, default_value_t = DEFAULT_MAX_REDRIVES, value_name = "N")]
    pub max_redrives: u32,
    /// The consumer group that records the redrive's progress. Default:
    /// `<kafka.group_id>.redrive.<8 hex digits of the filters>`, so the same command resumes and
    /// a redrive with other filters starts afresh.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// List what would be redriven, grouped by class; produce nothing, commit nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Default for RedriveOptions {
    /// What the command line gives without options: every dead letter, `--max-redrives 3`.
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            from: None,
            to: None,
            from_offset: None,
            to_offset: None,
            partitions: Vec::new(),
            max_redrives: DEFAULT_MAX_REDRIVES,
            group: None,
            dry_run: false,
        }
    }
}

fn parse_class(s: &str) -> Result<ErrorClass, String> {
    ErrorClass::ALL
        .into_iter()
        .find(|c| c.as_str() == s.trim())
        .ok_or_else(|| {
            let names: Vec<_> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
            format!("not an error class; one of: {}", names.join(", "))
        })
}

impl RedriveOptions {
    /// The default redrive group: `<base>.redrive.` and the first 8 hex digits of a UUID v5 over
    /// the dead-letter topic and every option that changes which dead letters are redriven, as
    /// given (so `--from -6h` gives the same group every time it is run; durations normalized:
    /// `-48h` and `-2days` are the same).
    pub fn default_group(&self, base: &str, dead_letter_topic: &str) -> String {
        let classes: BTreeSet<&str> = self.classes.iter().map(|c| c.as_str()).collect();
        let partitions: BTreeSet<i32> = self.partitions.iter().copied().collect();
        let show = |v: Option<String>| v.unwrap_or_default();
        let name = format!(
            "topic={dead_letter_topic}|class={}|from={}|to={}|from_offset={}|to_offset={}|partition={:?}|max_redrives={}",
            classes.into_iter().collect::<Vec<_>>().join(","),
            show(self.from.map(|t| t.to_string())),
            show(self.to.map(|t| t.to_string())),
            show(self.from_offset.as_ref().map(ToString::to_string)),
            show(self.to_offset.as_ref().map(ToString::to_string)),
            partitions,
            self.max_redrives,
        );
        let id = uuid::Uuid::new_v5(&crate::event::EVENT_ID_NAMESPACE, name.as_bytes());
        let hex = id.simple().to_string();
        format!("{base}.redrive.{}", &hex[..8])
    }

    /// The settings of one run against `kafka` and `dead_letter_topic`, with relative times
    /// resolved against `now` (built by `Config::redrive_settings`).
    pub fn settings(
        &self,
        kafka: &KafkaSettings,
        dead_letter_topic: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> RedriveSettings {
        RedriveSettings {
            kafka: kafka.clone(),
            group_id: self
                .group
                .clone()
                .unwrap_or_else(|| self.default_group(&kafka.group_id, dead_letter_topic)),
            dead_letter_topic: dead_letter_topic.to_string(),
            filter: Filter {
                classes: self.classes.iter().copied().collect(),
                from: self.from.map(|t| t.resolve(now)),
                to: self.to.map(|t| t.resolve(now)),
                from_offset: self.from_offset.clone(),
                to_offset: self.to_offset.clone(),
            },
            partitions: self.partitions.iter().copied().collect(),
            max_redrives: self.max_redrives,
            dry_run: self.dry_run,
            max_in_flight: 256,
            commit_every: Duration::from_secs(1),
        }
    }
}

/// Everything one redrive needs.
#[derive(Debug, Clone)]
pub struct RedriveSettings {
    pub kafka: KafkaSettings,
    pub dead_letter_topic: String,
    /// The redrive group (its committed offsets are the progress).
    pub group_id: String,
    pub filter: Filter,
    /// Partitions of the dead-letter topic to read; all when empty.
    pub partitions: BTreeSet<i32>,
    pub max_redrives: u32,
    pub dry_run: bool,
    /// Republishes waiting for their acknowledgement at once.
    pub max_in_flight: usize,
    /// How often the progress is committed while running (and always at the end).
    pub commit_every: Duration,
}

/// Why a redrive could not run. A republish that fails is not one of these: it is counted in
/// the [`Summary`], which is still printed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("creating the Kafka {client}: {source}")]
    Client {
        client: &'static str,
        source: KafkaError,
    },
    #[error("reading the metadata of the dead-letter topic {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("the dead-letter topic {topic} does not exist")]
    NoTopic { topic: String },
    #[error("the dead-letter topic {topic} has no partition {partition}")]
    NoPartition { topic: String, partition: i32 },
    #[error("reading the offsets of {topic} partition {partition}: {source}")]
    Offsets {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error("reading the committed offsets of group {group}: {source}")]
    Committed { group: String, source: KafkaError },
    #[error("assigning the partitions of {topic}: {source}")]
    Assign { topic: String, source: KafkaError },
    #[error("reading the end of the dead-letter topic {topic}: {source}")]
    LogEnd { topic: String, source: KafkaError },
    #[error("the end of the dead-letter topic {topic} could not be read within 30 s (partitions {partitions:?})")]
    LogEndTimeout { topic: String, partitions: Vec<i32> },
    #[error("a Kafka request task failed: {0}")]
    Task(String),
}

/// The clients' context: librdkafka's logs and errors go through [`crate::telemetry`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RedriveLog;

impl ClientContext for RedriveLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is an event the consumer asks for (`recv` returns it too, and
        // the redrive uses it there), not an error.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        crate::telemetry::librdkafka_error(&error, reason);
    }
}

impl ConsumerContext for RedriveLog {}

type RedriveConsumer = Arc<StreamConsumer<RedriveLog>>;

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    consumer: &RedriveConsumer,
    f: impl FnOnce(&StreamConsumer<RedriveLog>) -> T + Send + 'static,
) -> Result<T, RedriveError> {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || f(&consumer))
        .await
        .map_err(|e| RedriveError::Task(e.to_string()))
}

/// Redrives the dead letters `settings` select, until the end offsets captured at start or until
/// `shutdown` resolves (then the republishes in flight finish and their progress is committed).
pub async fn run(
    settings: &RedriveSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, RedriveError> {
    let topic = settings.dead_letter_topic.clone();
    let consumer: RedriveConsumer = Arc::new(
        crate::kafka::client_config::redrive_consumer_config(&settings.kafka, &settings.group_id)
            .create_with_context(RedriveLog)
            .map_err(|source| RedriveError::Client {
                client: "consumer",
                source,
            })?,
    );
    let ranges = resolve_ranges(&consumer, settings).await?;
    let mut summary = Summary::new(settings, ranges.clone());
    let logged: Vec<_> = ranges
        .iter()
        .map(|r| (r.partition, r.committed, r.start, r.end))
        .collect();
    crate::telemetry::redrive_started(&topic, &settings.group_id, settings.dry_run, &logged);
    let producer: Option<FutureProducer<RedriveLog>> = if settings.dry_run {
        None
    } else {
        Some(
            crate::kafka::client_config::producer_config_with(
                &settings.kafka,
                &[("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS.into())],
            )
            .create_with_context(RedriveLog)
            .map_err(|source| RedriveError::Client {
                client: "producer",
                source,
            })?,
        )
    };

    // The end of each partition still to read; a partition leaves the map once read to its end.
    let mut ends: BTreeMap<i32, i64> = ranges
        .iter()
        .filter(|r| r.start < r.end)
        .map(|r| (r.partition, r.end))
        .collect();
    if !ends.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| r.start < r.end) {
            tpl.add_partition_offset(&topic, r.partition, Offset::Offset(r.start))
                .map_err(|source| RedriveError::Assign {
                    topic: topic.clone(),
                    source,
                })?;
        }
        consumer
            .assign(&tpl)
            .map_err(|source| RedriveError::Assign {
                topic: topic.clone(),
                source,
            })?;
    }

    let mut progress = Progress::default();
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
    let mut reading = !ends.is_empty();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut commit_tick = tokio::time::interval(settings.commit_every);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut consume_error = None;
    loop {
        if !reading && in_flight.is_empty() {
            break;
        }
        let room = in_flight.len() < settings.max_in_flight;
        tokio::select! {
            biased;
            _ = &mut shutdown, if !summary.interrupted => {
                summary.interrupted = true;
                reading = false;
                crate::telemetry::redrive_interrupted(in_flight.len());
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if progress.finish(&done) {
                    // The first failed republish stops the redrive: what is in flight finishes.
                    reading = false;
                }
                summary.record(done);
            }
            received = consumer.recv(), if reading && room => match received {
                Ok(message) => {
                    let record = InputRecord::from_message(&message, Arc::from(topic.as_str()));
                    drop(message);
                    let Some(end) = ends.get(&record.partition).copied() else { continue };
                    if record.offset + 1 >= end {
                        ends.remove(&record.partition);
                        finished(&consumer, &topic, record.partition);
                    }
                    if record.offset < end {
                        in_flight.push_back(handle(record, settings, producer.as_ref()));
                    }
                    reading = !ends.is_empty();
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    // The partition's current end is at or past the end captured at start.
                    if ends.remove(&partition).is_some() {
                        finished(&consumer, &topic, partition);
                    }
                    reading = !ends.is_empty();
                }
                Err(error) => {
                    if is_permanent(&error) {
                        // Reported in the summary (exit 1); what is in flight finishes.
                        crate::telemetry::redrive_read_failed(&topic, &error);
                        consume_error = Some(error);
                        reading = false;
                    } else {
                        crate::telemetry::librdkafka_error(&error, "reading the dead-letter topic");
                    }
                }
            },
            _ = commit_tick.tick(), if !settings.dry_run => {
                if let Err(error) = commit(&consumer, &topic, &mut progress).await? {
                    crate::telemetry::redrive_commit_failed(&settings.group_id, &error);
                }
            }
        }
    }
    // Every republish was awaited above: the producer holds nothing more to flush.
    drop(producer);
    if !settings.dry_run {
        if let Err(error) = commit(&consumer, &topic, &mut progress).await? {
            crate::telemetry::redrive_commit_failed(&settings.group_id, &error);
            summary.commit_error = Some(error.to_string());
        }
    }
    summary.committed = progress.committed.clone();
    summary.read_error = consume_error.map(|e| e.to_string());
    crate::telemetry::redrive_finished(
        summary.redriven_total(),
        summary.filtered_out_total(),
        summary.refused.count,
        summary.no_source.count,
        summary.errors.count,
        summary.interrupted,
    );
    Ok(summary)
}

/// Stops fetching a partition read to its end (what lies past the end is for the next run).
fn finished(consumer: &RedriveConsumer, topic: &str, partition: i32) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    // Failing to pause costs only fetches whose records are ignored.
    let _ = consumer.pause(&tpl);
}

/// Consumer errors that reading again will not fix.
fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

/// Each partition's range: from the group's committed offset, the start of the offset range,
/// the first offset at or after `--from` (when the broker answers one) and the partition's
/// start, whichever is last; to the end offset now or the end of the offset range, whichever is
/// first. The time filter is applied again to every record, so a coarse answer of the broker to
/// offsets-for-times costs reading, never exactness.
async fn resolve_ranges(
    consumer: &RedriveConsumer,
    settings: &RedriveSettings,
) -> Result<Vec<PartitionRange>, RedriveError> {
    let topic = settings.dead_letter_topic.clone();
    let meta_topic = topic.clone();
    let metadata = blocking(consumer, move |c| {
        c.fetch_metadata(Some(&meta_topic), REQUEST_TIMEOUT)
    })
    .await?
    .map_err(|source| RedriveError::Metadata {
        topic: topic.clone(),
        source,
    })?;
    let existing: BTreeSet<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if existing.is_empty() {
        return Err(RedriveError::NoTopic { topic });
    }
    if let Some(partition) = settings.partitions.difference(&existing).next() {
        return Err(RedriveError::NoPartition {
            topic,
            partition: *partition,
        });
    }
    let partitions: Vec<i32> = if settings.partitions.is_empty() {
        existing.into_iter().collect()
    } else {
        settings.partitions.iter().copied().collect()
    };

    let mut all = TopicPartitionList::new();
    for p in &partitions {
        all.add_partition(&topic, *p);
    }
    let group = settings.group_id.clone();
    let query = all.clone();
    let committed = blocking(consumer, move |c| {
        c.committed_offsets(query, REQUEST_TIMEOUT)
    })
    .await?
    .map_err(|source| RedriveError::Committed { group, source })?;
    let by_time = match settings.filter.from {
        Some(from) => {
            let mut query = TopicPartitionList::new();
            for p in &partitions {
                query
                    .add_partition_offset(&topic, *p, Offset::Offset(from.timestamp_millis()))
                    .map_err(|source| RedriveError::Offsets {
                        topic: topic.clone(),
                        partition: *p,
                        source,
                    })?;
            }
            // A broker that cannot answer is only slower to read: the filter is exact anyway.
            blocking(consumer, move |c| {
                c.offsets_for_times(query, REQUEST_TIMEOUT)
            })
            .await?
            .ok()
        }
        None => None,
    };
    let offset_in = |tpl: Option<&TopicPartitionList>, p: i32| match tpl
        .and_then(|t| t.find_partition(&topic, p))
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) if o >= 0 => Some(o),
        _ => None,
    };

    let mut watermarks = Vec::with_capacity(partitions.len());
    for p in partitions {
        let wm_topic = topic.clone();
        let (low, high) = blocking(consumer, move |c| {
            c.fetch_watermarks(&wm_topic, p, REQUEST_TIMEOUT)
        })
        .await?
        .map_err(|source| RedriveError::Offsets {
            topic: topic.clone(),
            partition: p,
            source,
        })?;
        watermarks.push((p, low, high));
    }
    let ends = {
        let (kafka, group, topic, watermarks) = (
            settings.kafka.clone(),
            settings.group_id.clone(),
            topic.clone(),
            watermarks.clone(),
        );
        tokio::task::spawn_blocking(move || log_ends(&kafka, &group, &topic, &watermarks))
            .await
            .map_err(|e| RedriveError::Task(e.to_string()))??
    };

    let mut ranges = Vec::with_capacity(watermarks.len());
    for (p, low, reported) in watermarks {
        let high = ends.get(&p).copied().unwrap_or(reported);
        let committed = offset_in(Some(&committed), p);
        let start = [
            Some(low),
            committed,
            settings.filter.from_offset.as_ref().and_then(|b| b.get(p)),
            offset_in(by_time.as_ref(), p),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(low);
        let end = settings
            .filter
            .to_offset
            .as_ref()
            .and_then(|b| b.get(p))
            .map_or(high, |to| to.min(high));
        ranges.push(PartitionRange {
            partition: p,
            committed,
            start,
            end: end.max(start),
        });
    }
    Ok(ranges)
}

/// The end of each partition's log (the offset after its last record) when the command starts,
/// from `(partition, low, high)` watermarks: read from the high watermark's last record to the
/// end of the partition, because a broker may report the high watermark behind the last record
/// (Tansu reports the last batch's first offset + 1). On a broker that reports it right, this
/// reads one record per partition. Blocking (librdkafka polls).
fn log_ends(
    kafka: &KafkaSettings,
    group: &str,
    topic: &str,
    watermarks: &[(i32, i64, i64)],
) -> Result<BTreeMap<i32, i64>, RedriveError> {
    use crate::kafka::log_end::{read, LogEndError};
    // The redrive's own configuration; this reader only reads.
    let config = crate::kafka::client_config::redrive_consumer_config(kafka, group);
    match read(
        &config,
        RedriveLog,
        topic,
        watermarks,
        REQUEST_TIMEOUT,
        is_permanent,
    ) {
        Ok(ends) => Ok(ends),
        Err(LogEndError::Kafka { topic, source }) => Err(RedriveError::LogEnd { topic, source }),
        Err(LogEndError::Timeout {
            topic, partitions, ..
        }) => Err(RedriveError::LogEndTimeout { topic, partitions }),
    }
}

/// One dead letter's outcome, in the order the dead letters were read.
pub struct Done {
    pub partition: i32,
    pub offset: i64,
    pub outcome: Outcome,
}

/// What happened to one dead letter.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    FilteredOut(FilteredBy),
    NoSource(Line),
    Refused(Line),
    /// Would be redriven (`--dry-run`).
    Listed(Line),
    /// Republished and acknowledged.
    Redriven(Line),
    /// The republish failed.
    Failed(Line, String),
}

/// Decides and, for a record to redrive, republishes it and waits for the acknowledgement.
fn handle(
    record: InputRecord,
    settings: &RedriveSettings,
    producer: Option<&FutureProducer<RedriveLog>>,
) -> BoxFuture<'static, Done> {
    let (partition, offset) = (record.partition, record.offset);
    let done = move |outcome| Done {
        partition,
        offset,
        outcome,
    };
    let decision = decide::decide(
        &record,
        &settings.filter,
        settings.max_redrives,
        &settings.dead_letter_topic,
    );
    let class = decide::class_name(&record);
    crate::telemetry::redrive_read(partition, offset, &class);
    let line = |target: Option<&str>, count: Option<u32>, note: &str| Line {
        partition,
        offset,
        class: class.clone(),
        key: report::key_label(record.key.as_deref()),
        target: target.map(str::to_string),
        count,
        note: note.to_string(),
    };
    let outcome = match decision {
        Decision::FilteredOut(by) => Outcome::FilteredOut(by),
        Decision::NoSource(why) => {
            let line = line(None, decide::redrive_count(&record), why.as_str());
            crate::telemetry::redrive_no_source(partition, offset, &class, why.as_str());
            Outcome::NoSource(line)
        }
        Decision::Refused { count } => {
            let line = line(None, count, "");
            crate::telemetry::redrive_refused(
                partition,
                offset,
                &class,
                count,
                settings.max_redrives,
            );
            Outcome::Refused(line)
        }
        Decision::Redrive(republish) => {
            let line = line(Some(&republish.topic), Some(republish.count), "");
            match producer {
                None => Outcome::Listed(line),
                Some(producer) => {
                    let producer = producer.clone();
                    return async move {
                        let outcome = match send(&producer, &republish).await {
                            Ok(()) => {
                                crate::telemetry::redriven(
                                    partition,
                                    offset,
                                    &line.class,
                                    &republish.topic,
                                    line.count,
                                );
                                Outcome::Redriven(line)
                            }
                            Err(error) => {
                                crate::telemetry::redrive_failed(
                                    partition,
                                    offset,
                                    &line.class,
                                    &republish.topic,
                                    &error,
                                );
                                Outcome::Failed(line, error)
                            }
                        };
                        done(outcome)
                    }
                    .boxed();
                }
            }
        }
    };
    futures::future::ready(done(outcome)).boxed()
}

/// Writes one record and waits for its acknowledgement; librdkafka retries until
/// `message.timeout.ms`. The error is the reason, for the report.
async fn send(
    producer: &FutureProducer<RedriveLog>,
    republish: &decide::Republish,
) -> Result<(), String> {
    let mut headers = OwnedHeaders::new_with_capacity(republish.headers.len());
    for (key, value) in &republish.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&republish.topic).headers(headers);
    if let Some(key) = &republish.key {
        record = record.key(key);
    }
    if let Some(payload) = &republish.payload {
        record = record.payload(payload);
    }
    match producer.send(record, Timeout::Never).await {
        Ok(_) => Ok(()),
        Err((error, _)) => Err(match producer.client().fatal_error() {
            Some((code, message)) => format!("fatal producer error: {code:?}: {message}"),
            None => error.to_string(),
        }),
    }
}

/// Per partition, the offset to commit: one past the last dead letter done, in order, before
/// any failure.
#[derive(Debug, Default)]
struct Progress {
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
    failed: BTreeSet<i32>,
}

impl Progress {
    /// Takes one outcome (they arrive in reading order). True when it is a failure.
    fn finish(&mut self, done: &Done) -> bool {
        if matches!(done.outcome, Outcome::Failed(..)) {
            self.failed.insert(done.partition);
            return true;
        }
        if !self.failed.contains(&done.partition) {
            self.next.insert(done.partition, done.offset + 1);
        }
        false
    }

    /// The offsets not committed yet.
    fn pending(&self) -> Vec<(i32, i64)> {
        self.next
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect()
    }
}

/// Commits the progress made since the last commit (synchronously, off the async workers).
/// The outer error is a task failure; the inner one the broker's answer.
async fn commit(
    consumer: &RedriveConsumer,
    topic: &str,
    progress: &mut Progress,
) -> Result<Result<(), KafkaError>, RedriveError> {
    let pending = progress.pending();
    if pending.is_empty() {
        return Ok(Ok(()));
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &pending {
        if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(*o)) {
            return Ok(Err(e));
        }
    }
    let result = blocking(consumer, move |c| c.commit(&tpl, CommitMode::Sync)).await?;
    if result.is_ok() {
        progress.committed.extend(pending);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: RedriveOptions,
    }

    fn parse(args: &[&str]) -> Result<RedriveOptions, clap::Error> {
        Cli::try_parse_from(std::iter::once("redrive").chain(args.iter().copied()))
            .map(|c| c.options)
    }

    #[test]
    fn the_command_line_parses_every_option_and_refuses_bad_values() {
        let o = parse(&[
            "--class",
            "not_found",
            "--class",
            "retries_exhausted",
            "--from",
            "-6h",
            "--to",
            "2026-12-03T10:00:00Z",
            "--from-offset",
            "0=5",
            "--to-offset",
            "100",
            "--partition",
            "0",
            "--max-redrives",
            "5",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(
            o.classes,
            [ErrorClass::NotFound, ErrorClass::RetriesExhausted]
        );
        assert_eq!(o.from, Some(TimeBound::Ago(Duration::from_secs(6 * 3600))));
        assert_eq!(o.to_offset, Some(OffsetBound::All(100)));
        assert_eq!(o.partitions, [0]);
        assert_eq!(o.max_redrives, 5);
        assert!(o.dry_run);
        assert_eq!(parse(&[]).unwrap(), RedriveOptions::default());
        for bad in [
            &["--class", "nope"][..],
            &["--from", "yesterday"],
            &["--to-offset", "0=x"],
            &["--max-redrives", "-1"],
        ] {
            let error = parse(bad).expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn the_default_group_follows_the_filters_as_written() {
        let base = parse(&["--class", "not_found", "--from", "-6h"]).unwrap();
        let group = base.default_group("enricher", "dlq");
        assert!(group.starts_with("enricher.redrive."), "{group}");
        assert_eq!(group.len(), "enricher.redrive.".len() + 8);
        // The same command (even in another order) resumes in the same group.
        let same = parse(&["--from", "-6h", "--class", "not_found"]).unwrap();
        assert_eq!(same.default_group("enricher", "dlq"), group);
        // --dry-run and --group do not change which dead letters are selected.
        let dry = parse(&["--class", "not_found", "--from", "-6h", "--dry-run"]).unwrap();
        assert_eq!(dry.default_group("enricher", "dlq"), group);
        for other in [
            &["--class", "retries_exhausted", "--from", "-6h"][..],
            &["--class", "not_found", "--from", "-7h"],
            &[
                "--class",
                "not_found",
                "--from",
                "-6h",
                "--max-redrives",
                "4",
            ],
            &["--class", "not_found", "--from", "-6h", "--partition", "1"],
        ] {
            let o = parse(other).unwrap();
            assert_ne!(o.default_group("enricher", "dlq"), group, "{other:?}");
        }
        assert_ne!(base.default_group("enricher", "other-dlq"), group);
        let explicit = parse(&["--group", "mine"]).unwrap();
        let kafka = KafkaSettings::default();
        let settings = explicit.settings(&kafka, "dlq", chrono::Utc::now());
        assert_eq!(settings.group_id, "mine");
        let settings = base.settings(&kafka, "dlq", chrono::Utc::now());
        assert_eq!(
            settings.group_id,
            base.default_group("webhook-enricher", "dlq")
        );
    }

    #[test]
    fn progress_stops_at_a_failure_in_its_partition_only() {
        let line = Line {
            partition: 0,
            offset: 0,
            class: "not_found".into(),
            key: "(no key)".into(),
            target: None,
            count: None,
            note: String::new(),
        };
        let done = |partition, offset, outcome| Done {
            partition,
            offset,
            outcome,
        };
        let mut p = Progress::default();
        assert!(!p.finish(&done(0, 4, Outcome::Redriven(line.clone()))));
        assert!(!p.finish(&done(1, 9, Outcome::FilteredOut(FilteredBy::Class))));
        assert!(p.finish(&done(0, 5, Outcome::Failed(line.clone(), "x".into()))));
        assert!(!p.finish(&done(0, 6, Outcome::Redriven(line.clone()))));
        assert!(!p.finish(&done(1, 10, Outcome::Refused(line))));
        assert_eq!(p.pending(), [(0, 5), (1, 11)]);
        p.committed.extend(p.pending());
        assert!(p.pending().is_empty());
    }
}
