//! The consumer thread: owns librdkafka's consumer, polls it, decodes each record (to learn its
//! ordering key and provider lane) and hands the records to the dispatcher in batches, within
//! the in-flight budget ([`super::flow`]).
//!
//! It runs on its own OS thread so that blocking librdkafka calls (poll, the rebalance callbacks,
//! synchronous commits) never block a tokio worker, and the callbacks never touch a tokio lock.
//! The thread and the async engine talk over channels:
//!
//! - to the engine: batches of records, assignments (each partition with its assignment epoch),
//!   revocations (with an id and a reply channel), fatal errors;
//! - to the thread: offsets to store (each tagged with the partition's assignment epoch, so a
//!   store from before a rebalance never lands on a later assignment) and the final close.
//!
//! With provider isolation the thread also owns one consumer per provider's wait topic. They
//! never join a group: the rebalance callbacks assign them the wait partitions with the numbers
//! of the input partitions assigned (from the wait group's committed offsets), include those
//! partitions in revocations (drained, stored and committed in the callback like the input's),
//! and unassign them with the input. Each turn of the loop takes what they have locally, within
//! the provider's catch-up lane, and reports the end of a wait partition (librdkafka's partition
//! EOF) after the records read before it (see `lanes.rs`).
//!
//! # Flow control
//!
//! Fetching never stops and restarts once per batch of completions:
//!
//! - **Room in the budget**: poll and hand over.
//! - **The total is full**: the record just polled is held here, and the thread sleeps until the
//!   dispatcher frees room, without polling. librdkafka keeps prefetching meanwhile, within its
//!   own queue limits (`queued.max.messages.kbytes`, `queued.min.messages`, see
//!   `kafka/client_config.rs`), so when room frees up the next records are already local.
//! - **The total stays full for `engine.pause_after`** (a provider outage, not a backlog): every
//!   partition is paused and the thread polls again, to serve rebalances and stay in the group.
//!   Fetching resumes once the in-flight count falls below three quarters of the limit.
//! - **A provider's lane is full**: the record is parked here, and the records of its partition
//!   polled after it queue behind it (a partition reaches the engine in offset order); the other
//!   partitions keep flowing. A lane is full for a moment all the time in a backlog (a batch of
//!   one provider's records arrives at once), so parking does not pause: a pause costs a refetch,
//!   and the broker holds a fetch for up to `fetch.wait.max.ms` before it sees the new one
//!   (about half a second per pause, measured). Only a partition parked for `engine.pause_after`
//!   (its provider is slow, not busy) is paused, until its parked records are handed over.
//! - **The parked records reach their bound** (a quarter of `max_in_flight`): the thread stops
//!   polling as when the total is full, with the same stall rule.
//!
//! A pause makes librdkafka drop what it prefetched for the partition and fetch again from the
//! position after the last record polled, so the held and parked records are exactly the ones
//! between that position and what the engine has. They are not counted in the budget; there is
//! at most one held record and a quarter of `max_in_flight` parked ones. Held and parked records
//! of a revoked partition are dropped: they were never handed over, so nothing after them was
//! either, and the new owner reads them again.

use super::flow::{Admission, FlowControl};
use super::input::InputRecord;
use super::job::Job;
use super::offsets::TopicPartition;
use crate::event::DecoderSettings;
use crate::provider::Provider;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most records handed over in one batch.
const MAX_BATCH: usize = 512;
/// How long one poll waits for a record.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How long one poll waits while a partition is parked (its lane may free up at any time).
const POLL_WAIT_PARKED: Duration = Duration::from_millis(10);
/// How long a wait consumer waits for its topic's metadata (at start-up and after an
/// assignment; see [`WaitConsumer::learn_leaders`]).
const WAIT_METADATA_TIMEOUT: Duration = Duration::from_secs(1);

/// A revocation the engine must answer.
#[derive(Debug)]
pub struct Revoking {
    /// Distinguishes revocations in logs and in the dispatcher's bookkeeping.
    pub id: u64,
    pub partitions: Vec<TopicPartition>,
    /// The committable offsets of the revoked partitions, sent when their records are drained
    /// (or abandoned at the engine's deadline).
    pub reply: std_mpsc::SyncSender<Vec<(TopicPartition, i64)>>,
}

/// Messages from the consumer thread to the engine.
#[derive(Debug)]
pub enum FromConsumer {
    /// Partitions were assigned, each with its assignment epoch (new on every assignment).
    Assigned(Vec<(TopicPartition, u64)>),
    /// Partitions are being revoked: the engine drains them and replies.
    Revoking(Revoking),
    /// Records, in poll order, each already counted in the budget.
    Jobs(Vec<Job>),
    /// A wait partition was read to its end (provider isolation); `last` is the last offset
    /// read from it in this assignment. Sent after the records read before it.
    WaitEnd {
        tp: TopicPartition,
        last: Option<i64>,
    },
    /// The consumer cannot go on.
    Fatal(String),
}

/// An offset to store: the next offset to consume of a partition, in one assignment epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOffset {
    pub tp: TopicPartition,
    pub epoch: u64,
    pub next: i64,
}

/// Messages from the engine to the consumer thread.
#[derive(Debug)]
pub enum ToConsumer {
    /// Store these offsets for the next commit (each only if its epoch is still current).
    Store(Vec<StoreOffset>),
    /// Store these offsets, commit synchronously, close the consumer (leave the group) and end.
    /// The answer says whether the final commit succeeded.
    Close {
        offsets: Vec<StoreOffset>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Errors starting the consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("cannot start the consumer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How the poll loop behaves.
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// The budget stays full this long before every partition is paused.
    pub pause_after: Duration,
    pub decoder: DecoderSettings,
    /// A bounded run's ranges (`replay`); `None` for `run`.
    pub bounds: Option<Arc<super::bounds::Bounds>>,
}

/// The wait topics to read back (provider isolation) and their consumer's configuration.
pub struct WaitSettings {
    pub topics: Vec<(Provider, String)>,
    pub config: ClientConfig,
}

/// The expectations topic to read (polling fallback) and its consumer's configuration.
pub struct ExpectationsSettings {
    pub config: ClientConfig,
    pub link: Arc<super::fallback::Link>,
}

/// The expectations consumer (polling fallback): assigned the expectations partitions with the
/// numbers of the input partitions this instance owns, like the wait consumers; its records go
/// to the fallback task, not to the dispatcher.
struct ExpectationsConsumer {
    consumer: BaseConsumer<WaitContext>,
    link: Arc<super::fallback::Link>,
}

/// The engine's side of the consumer thread.
pub struct ConsumerHandle {
    pub commands: std_mpsc::Sender<ToConsumer>,
    pub events: mpsc::UnboundedReceiver<FromConsumer>,
    pub thread: std::thread::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct AssignmentChanges {
    /// Partitions revoked since the poll loop last looked.
    revoked: Vec<TopicPartition>,
    /// The assignment changed since the poll loop last looked.
    changed: bool,
}

/// A provider's wait-topic consumer: assigned the wait partitions with the numbers of the input
/// partitions this instance owns, by the engine consumer's rebalance callbacks.
struct WaitConsumer {
    provider: Provider,
    topic: Arc<str>,
    consumer: BaseConsumer<WaitContext>,
}

impl WaitConsumer {
    /// Asks the broker for the wait topic's partition leaders. A wait consumer never
    /// subscribes, so librdkafka learns a newly assigned partition's leader only at its next
    /// metadata refresh: the partition's start (committed offset, then a fetch to its end) waited
    /// for it, and a new lane held its input records that long (about a second, measured in the
    /// mixed benchmark). Asking once at start-up and once after each assignment starts the fetch
    /// at once. Best effort: librdkafka's own refresh still follows if this fails.
    fn learn_leaders(&self) {
        if let Err(e) = self
            .consumer
            .fetch_metadata(Some(&self.topic), WAIT_METADATA_TIMEOUT)
        {
            tracing::debug!(topic = %self.topic, error = %e, "wait topic metadata not fetched");
        }
    }
}

struct WaitContext {
    health: Arc<crate::health::Health>,
    topic: String,
    /// The partitions assigned now (lag gauges only for them).
    assigned: Mutex<HashSet<i32>>,
}

impl ClientContext for WaitContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a wait partition is an event this consumer asks for (it is also returned by
        // `poll`, where the engine uses it), not an error.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        crate::telemetry::librdkafka_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // The wait topic's lag, as `webhook_enricher_consumer_lag{topic=<wait topic>}`.
        let assigned = lock(&self.assigned);
        let lag = self.health.consumer_lag();
        if let Some(t) = statistics.topics.get(&self.topic) {
            for (partition, p) in &t.partitions {
                if assigned.contains(partition) && p.hi_offset >= 0 {
                    lag.update(
                        &self.topic,
                        *partition,
                        p.consumer_lag,
                        p.consumer_lag_stored,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for WaitContext {}

struct EngineContext {
    events: mpsc::UnboundedSender<FromConsumer>,
    /// The wait-topic consumers (empty without provider isolation).
    wait: Vec<WaitConsumer>,
    /// The expectations consumer (polling fallback on).
    expectations: Option<ExpectationsConsumer>,
    health: Arc<crate::health::Health>,
    /// The assignment epoch of each assigned partition.
    epochs: Mutex<HashMap<TopicPartition, u64>>,
    next_epoch: AtomicU64,
    next_revocation: AtomicU64,
    changes: Mutex<AssignmentChanges>,
    closing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps and lists updated in single statements: still valid after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientContext for EngineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::telemetry::librdkafka_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.health.on_statistics(&statistics);
        // Only the partitions assigned now: a revoked one's series is removed at revocation.
        let epochs = lock(&self.epochs);
        let lag = self.health.consumer_lag();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0
                    && p.hi_offset >= 0
                    && epochs.contains_key(&TopicPartition::new(topic.as_str(), *partition))
                {
                    lag.update(topic, *partition, p.consumer_lag, p.consumer_lag_stored);
                }
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    /// The rebalance itself, as rdkafka's default does it for eager assignment, without asking
    /// librdkafka for the rebalance protocol: that question goes to the group's queue, which is
    /// no longer served once the consumer is closing, so the default hung forever when a
    /// revocation arrived while the consumer closed (seen in the tests: the consumer thread never
    /// ended). The assignment strategy is forced to eager (`kafka/client_config.rs`).
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(base_consumer, &rebalance);
        let applied = if assign {
            base_consumer.assign(tpl)
        } else {
            base_consumer.unassign()
        };
        if let Err(e) = applied {
            tracing::warn!(error = %e, assign, "cannot apply the rebalance");
        }
        self.post_rebalance(base_consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let mut partitions = partitions_of(tpl);
        // The wait partitions follow the input partitions with their numbers.
        let numbers: HashSet<i32> = partitions.iter().map(|tp| tp.partition).collect();
        for w in &self.wait {
            let mut owned = lock(&w.consumer.context().assigned);
            for p in &numbers {
                if owned.remove(p) {
                    partitions.push(TopicPartition::new(w.topic.clone(), *p));
                }
            }
        }
        let mut expectations_revoked = Vec::new();
        if let Some(x) = &self.expectations {
            let topic = x.link.topic();
            let mut owned = lock(&x.consumer.context().assigned);
            for p in &numbers {
                if owned.remove(p) {
                    expectations_revoked.push(TopicPartition::new(topic.clone(), *p));
                }
            }
        }
        lock(&self.changes)
            .revoked
            .extend(partitions.iter().cloned());
        if !self.closing.load(Ordering::SeqCst) && !partitions.is_empty() {
            let id = self.next_revocation.fetch_add(1, Ordering::SeqCst) + 1;
            let (reply, answer) = std_mpsc::sync_channel(1);
            tracing::info!(
                revocation = id,
                partitions = partitions.len(),
                "partitions revoked: draining"
            );
            let sent = self.events.send(FromConsumer::Revoking(Revoking {
                id,
                partitions: partitions.clone(),
                reply,
            }));
            // The engine owns the drain deadline and always answers by it; the channel closes
            // if the engine is gone.
            match sent.ok().map(|()| answer.recv()) {
                Some(Ok(offsets)) => self.store_routed(consumer, &offsets),
                _ => tracing::warn!(
                    revocation = id,
                    "the engine did not answer the revocation; committing what is stored"
                ),
            }
        }
        let _ = commit(consumer, "revocation");
        for w in &self.wait {
            let _ = commit(&w.consumer, "revocation");
            let owned: Vec<i32> = lock(&w.consumer.context().assigned)
                .iter()
                .copied()
                .collect();
            if let Err(e) = w.consumer.assign(&wait_list(&w.topic, &owned)) {
                tracing::warn!(topic = %w.topic, error = %e, "cannot unassign wait partitions");
            }
        }
        if let Some(x) = &self.expectations {
            // Only resolved expectations were stored: the unresolved ones are read again by the
            // next owner.
            let _ = commit(&x.consumer, "revocation");
            let owned: Vec<i32> = lock(&x.consumer.context().assigned)
                .iter()
                .copied()
                .collect();
            if let Err(e) = x.consumer.assign(&wait_list(x.link.topic(), &owned)) {
                tracing::warn!(topic = %x.link.topic(), error = %e, "cannot unassign expectations partitions");
            }
            if !expectations_revoked.is_empty() {
                x.link.revoked(expectations_revoked.clone());
            }
        }
        let mut epochs = lock(&self.epochs);
        for tp in partitions.iter().chain(&expectations_revoked) {
            epochs.remove(tp);
        }
        self.health.consumer_lag().remove(
            partitions
                .iter()
                .chain(&expectations_revoked)
                .map(|tp| (&*tp.topic, tp.partition)),
        );
        lock(&self.changes).changed = true;
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut partitions = partitions_of(tpl);
                // Each wait topic's partitions with the numbers of the input partitions, read
                // from the wait group's committed offsets.
                let numbers: HashSet<i32> = partitions.iter().map(|tp| tp.partition).collect();
                for w in &self.wait {
                    let owned: Vec<i32> = {
                        let mut owned = lock(&w.consumer.context().assigned);
                        owned.extend(numbers.iter().copied());
                        owned.iter().copied().collect()
                    };
                    if let Err(e) = w.consumer.assign(&wait_list(&w.topic, &owned)) {
                        tracing::error!(topic = %w.topic, error = %e, "cannot assign wait partitions");
                    }
                    partitions.extend(
                        numbers
                            .iter()
                            .map(|p| TopicPartition::new(w.topic.clone(), *p)),
                    );
                }
                let mut epochs = lock(&self.epochs);
                let assigned: Vec<(TopicPartition, u64)> = partitions
                    .into_iter()
                    .map(|tp| {
                        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst) + 1;
                        epochs.insert(tp.clone(), epoch);
                        (tp, epoch)
                    })
                    .collect();
                if let Some(x) = &self.expectations {
                    // The expectations partitions with the numbers of the input partitions,
                    // read from the expectations group's committed offsets.
                    let topic = x.link.topic();
                    let owned: Vec<i32> = {
                        let mut owned = lock(&x.consumer.context().assigned);
                        owned.extend(numbers.iter().copied());
                        owned.iter().copied().collect()
                    };
                    let mine: Vec<(TopicPartition, u64)> = numbers
                        .iter()
                        .map(|p| {
                            let tp = TopicPartition::new(topic.clone(), *p);
                            let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst) + 1;
                            epochs.insert(tp.clone(), epoch);
                            (tp, epoch)
                        })
                        .collect();
                    // The task learns the epochs before the first record can be polled.
                    x.link.assigned(mine);
                    if let Err(e) = x.consumer.assign(&wait_list(topic, &owned)) {
                        tracing::error!(topic = %topic, error = %e, "cannot assign expectations partitions");
                    }
                }
                drop(epochs);
                lock(&self.changes).changed = true;
                tracing::info!(partitions = assigned.len(), "partitions assigned");
                let _ = self.events.send(FromConsumer::Assigned(assigned));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl EngineContext {
    /// The wait consumer of a wait topic.
    fn wait_consumer(&self, topic: &str) -> Option<&WaitConsumer> {
        self.wait.iter().find(|w| &*w.topic == topic)
    }

    /// Stores offsets with the consumer that reads their topic.
    fn store_routed(&self, main: &BaseConsumer<EngineContext>, offsets: &[(TopicPartition, i64)]) {
        let offsets: Vec<(TopicPartition, i64)> = match &self.expectations {
            None => offsets.to_vec(),
            Some(x) => {
                let (mine, rest): (Vec<_>, Vec<_>) = offsets
                    .iter()
                    .cloned()
                    .partition(|(tp, _)| tp.topic == *x.link.topic());
                store(&x.consumer, &mine);
                rest
            }
        };
        let offsets = &offsets[..];
        if self.wait.is_empty() {
            return store(main, offsets);
        }
        let (wait, input): (Vec<_>, Vec<_>) = offsets
            .iter()
            .cloned()
            .partition(|(tp, _)| self.wait_consumer(&tp.topic).is_some());
        store(main, &input);
        for w in &self.wait {
            let mine: Vec<(TopicPartition, i64)> = wait
                .iter()
                .filter(|(tp, _)| *tp.topic == *w.topic)
                .cloned()
                .collect();
            store(&w.consumer, &mine);
        }
    }
}

/// A wait topic's partitions, to be read from the wait group's committed offsets.
fn wait_list(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for p in partitions {
        if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Stored) {
            tracing::warn!(topic, partition = p, error = %e, "cannot build the wait partition list");
        }
    }
    tpl
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// Stores next-offsets of partitions assigned now (the caller checked the epochs).
fn store<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &[(TopicPartition, i64)]) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, next) in offsets {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next)) {
            tracing::warn!(partition = %tp, error = %e, "cannot build offset list");
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A partition revoked meanwhile: its new owner starts from the last commit (at least
        // once holds).
        tracing::debug!(error = %e, "offset store refused");
    }
}

/// Stores the offsets whose epoch is still the partition's current one.
fn store_current(consumer: &BaseConsumer<EngineContext>, offsets: &[StoreOffset]) {
    let current: Vec<(TopicPartition, i64)> = {
        let epochs = lock(&consumer.context().epochs);
        offsets
            .iter()
            .filter(|o| epochs.get(&o.tp) == Some(&o.epoch))
            .map(|o| (o.tp.clone(), o.next))
            .collect()
    };
    consumer.context().store_routed(consumer, &current);
}

fn commit<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    when: &'static str,
) -> Result<(), String> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => Ok(()),
        Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => {
            crate::telemetry::offset_commit_failed(when, &e);
            Err(e.to_string())
        }
    }
}

/// Why a consumer error means that librdkafka fetched a record batch it cannot decode, as the
/// `reason` label of the metric; `None` for other errors (connection trouble and the like,
/// which librdkafka retries by itself).
///
/// librdkafka does not skip such a batch: the partition's next fetch starts at the same offset
/// and fails again, so the partition stalls until an operator acts (the README's runbook).
/// Skipping it would lose records; every codec Kafka defines is built in, so what remains is
/// a corrupt or foreign batch.
fn undecodable(error: &KafkaError) -> Option<&'static str> {
    use rdkafka::types::RDKafkaErrorCode::*;
    let KafkaError::MessageConsumption(code) = error else {
        return None;
    };
    match code {
        // A codec this build lacks, or one Kafka does not define (attribute bits 5-7).
        NotImplemented | UnsupportedCompressionType => Some("unsupported_compression"),
        BadCompression => Some("corrupt_compression"),
        BadMessage | InvalidMessage | InvalidRecord => Some("corrupt_record"),
        MessageSizeTooLarge => Some("record_too_large"),
        _ => None,
    }
}

/// Creates the consumer, subscribes, and starts its thread.
pub fn start(
    config: ClientConfig,
    topics: &[String],
    flow: Arc<FlowControl>,
    settings: PollSettings,
    health: Arc<crate::health::Health>,
    wait: Option<WaitSettings>,
    expectations: Option<ExpectationsSettings>,
) -> Result<ConsumerHandle, ConsumerError> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut wait_consumers = Vec::new();
    if let Some(w) = wait {
        for (provider, topic) in w.topics {
            let consumer: BaseConsumer<WaitContext> = w
                .config
                .create_with_context(WaitContext {
                    health: health.clone(),
                    topic: topic.clone(),
                    assigned: Mutex::new(HashSet::new()),
                })
                .map_err(ConsumerError::Create)?;
            let wait = WaitConsumer {
                provider,
                topic: Arc::from(topic.as_str()),
                consumer,
            };
            wait.learn_leaders();
            wait_consumers.push(wait);
        }
    }
    let expectations = match expectations {
        Some(x) => Some(ExpectationsConsumer {
            consumer: x
                .config
                .create_with_context(WaitContext {
                    health: health.clone(),
                    topic: x.link.topic().to_string(),
                    assigned: Mutex::new(HashSet::new()),
                })
                .map_err(ConsumerError::Create)?,
            link: x.link,
        }),
        None => None,
    };
    let context = EngineContext {
        events: events_tx,
        wait: wait_consumers,
        expectations,
        health,
        epochs: Mutex::new(HashMap::new()),
        next_epoch: AtomicU64::new(0),
        next_revocation: AtomicU64::new(0),
        changes: Mutex::new(AssignmentChanges::default()),
        closing: AtomicBool::new(false),
    };
    let consumer: BaseConsumer<EngineContext> = config
        .create_with_context(context)
        .map_err(ConsumerError::Create)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| ConsumerError::Subscribe {
            topics: topics.to_vec(),
            source,
        })?;
    let (commands, command_rx) = std_mpsc::channel();
    let flow_max = flow.max_in_flight();
    let poll_loop = PollLoop {
        consumer,
        commands: command_rx,
        flow,
        settings,
        topics: HashMap::new(),
        held: None,
        parked: HashMap::new(),
        parked_count: 0,
        parked_cap: (flow_max / 4).max(1),
        assignment: Vec::new(),
        paused: HashSet::new(),
        full_since: None,
        stalled: false,
        wait_held: Provider::ALL.map(|_| None),
        wait_last: HashMap::new(),
        ended: HashSet::new(),
        last_in_range: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || poll_loop.run())
        .map_err(ConsumerError::Thread)?;
    Ok(ConsumerHandle {
        commands,
        events,
        thread,
    })
}

struct PollLoop {
    consumer: BaseConsumer<EngineContext>,
    commands: std_mpsc::Receiver<ToConsumer>,
    flow: Arc<FlowControl>,
    settings: PollSettings,
    /// Topic names, shared by their records.
    topics: HashMap<String, Arc<str>>,
    /// A record polled while the total was full.
    held: Option<Job>,
    /// Records polled while their lane was full (or behind such a record in their partition),
    /// with the moment their partition was first parked.
    parked: HashMap<TopicPartition, Parked>,
    /// Records in `parked`.
    parked_count: usize,
    /// At most this many parked records; at the bound the thread stops polling.
    parked_cap: usize,
    /// The current assignment.
    assignment: Vec<TopicPartition>,
    /// Partitions this loop has paused.
    paused: HashSet<TopicPartition>,
    /// Since when the total has been full.
    full_since: Option<Instant>,
    /// The total stayed full for `pause_after`: every partition is paused.
    stalled: bool,
    /// Per provider, a wait-topic record read while its catch-up lane was full.
    wait_held: [Option<Job>; Provider::ALL.len()],
    /// The last offset read from each wait partition in its assignment.
    wait_last: HashMap<TopicPartition, i64>,
    /// A bounded run: partitions that reached the end of their range (kept paused).
    ended: HashSet<TopicPartition>,
    /// A bounded run: the last offset of each partition's range handed over.
    last_in_range: HashMap<TopicPartition, i64>,
}

/// The records of one partition waiting for their lane, oldest first.
struct Parked {
    since: Instant,
    jobs: VecDeque<Job>,
}

enum Step {
    Continue,
    Exit,
}

impl PollLoop {
    fn run(mut self) {
        loop {
            if let Step::Exit = self.apply_commands() {
                return;
            }
            let force = self.apply_assignment_changes();
            let stopping = self.flow.is_stopping();
            let mut batch = Vec::new();
            if !stopping {
                self.poll_wait();
                self.poll_expectations();
                self.admit_waiting(&mut batch);
            }
            let full = self.held.is_some()
                || self.parked_count >= self.parked_cap
                || self.flow.in_flight() >= self.flow.max_in_flight();
            let now = Instant::now();
            if full {
                let since = *self.full_since.get_or_insert(now);
                if !self.stalled && now - since >= self.settings.pause_after {
                    self.stalled = true;
                    crate::telemetry::consumption_stalled(self.flow.in_flight());
                }
            } else {
                self.full_since = None;
                let resume_below = self.flow.max_in_flight() - self.flow.max_in_flight() / 4;
                if self.stalled && self.flow.in_flight() < resume_below {
                    self.stalled = false;
                    crate::telemetry::consumption_resumed(self.flow.in_flight());
                }
            }
            self.reconcile_pauses(stopping, force, now);
            self.send(batch);
            if full && !self.stalled && !stopping {
                // A short stall (the backlog outruns the providers): wait for room without
                // polling; librdkafka keeps the next records local meanwhile.
                let since = self.full_since.unwrap_or(now);
                let left = self.settings.pause_after.saturating_sub(now - since);
                let cap = if self.parked.is_empty() {
                    POLL_WAIT
                } else {
                    POLL_WAIT_PARKED
                };
                self.flow
                    .wait_for_room(left.clamp(Duration::from_millis(1), cap));
                continue;
            }
            let wait = if self.parked.is_empty() || self.stalled || stopping {
                POLL_WAIT
            } else {
                POLL_WAIT_PARKED
            };
            self.poll_batch(wait, stopping);
        }
    }

    /// Stores offsets; on `Close`, commits, closes the consumer and ends the loop.
    fn apply_commands(&mut self) -> Step {
        loop {
            match self.commands.try_recv() {
                Ok(ToConsumer::Store(offsets)) => {
                    store_current(&self.consumer, &offsets);
                    if let Some(bounds) = &self.settings.bounds {
                        for o in &offsets {
                            bounds.stored(&o.tp, o.next);
                        }
                    }
                }
                Ok(ToConsumer::Close { offsets, done }) => {
                    store_current(&self.consumer, &offsets);
                    let mut committed = commit(&self.consumer, "shutdown");
                    for w in &self.consumer.context().wait {
                        let wait_committed = commit(&w.consumer, "shutdown");
                        if committed.is_ok() {
                            committed = wait_committed;
                        }
                    }
                    if let Some(x) = &self.consumer.context().expectations {
                        let x_committed = commit(&x.consumer, "shutdown");
                        if committed.is_ok() {
                            committed = x_committed;
                        }
                    }
                    self.close();
                    let _ = done.send(committed);
                    return Step::Exit;
                }
                Err(std_mpsc::TryRecvError::Empty) => return Step::Continue,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    let _ = commit(&self.consumer, "shutdown");
                    for w in &self.consumer.context().wait {
                        let _ = commit(&w.consumer, "shutdown");
                    }
                    if let Some(x) = &self.consumer.context().expectations {
                        let _ = commit(&x.consumer, "shutdown");
                    }
                    self.close();
                    return Step::Exit;
                }
            }
        }
    }

    fn close(&mut self) {
        self.consumer
            .context()
            .closing
            .store(true, Ordering::SeqCst);
        // Closing leaves the group (running the revoke callback, which now only commits) and
        // waits until librdkafka is done; it happens when the consumer is dropped with the loop.
    }

    /// Drops held and parked records of revoked partitions; refreshes the assignment. True when
    /// the assignment changed (pauses are then applied afresh: librdkafka keeps a partition's
    /// pause across a revoke and a new assign).
    fn apply_assignment_changes(&mut self) -> bool {
        let changes = std::mem::take(&mut *lock(&self.consumer.context().changes));
        if !changes.revoked.is_empty() {
            let revoked: HashSet<&TopicPartition> = changes.revoked.iter().collect();
            if self
                .held
                .as_ref()
                .is_some_and(|j| revoked.contains(&j.record.topic_partition()))
            {
                self.held = None;
            }
            self.parked.retain(|tp, _| !revoked.contains(tp));
            self.parked_count = self.parked.values().map(|p| p.jobs.len()).sum();
            for held in &mut self.wait_held {
                if held
                    .as_ref()
                    .is_some_and(|j| revoked.contains(&j.record.topic_partition()))
                {
                    *held = None;
                }
            }
            self.wait_last.retain(|tp, _| !revoked.contains(tp));
        }
        if !changes.changed {
            return false;
        }
        for w in &self.consumer.context().wait {
            if !lock(&w.consumer.context().assigned).is_empty() {
                w.learn_leaders();
            }
        }
        self.assignment = self
            .consumer
            .assignment()
            .map(|tpl| partitions_of(&tpl))
            .unwrap_or_default();
        self.paused.clear();
        true
    }

    /// Reads the wait topics back (provider isolation), within each provider's catch-up lane:
    /// a record that does not fit is held and that wait consumer is not polled until it does
    /// (librdkafka keeps the next ones local). The end of a wait partition is reported after
    /// the records read before it.
    fn poll_wait(&mut self) {
        let context = self.consumer.context();
        if context.wait.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        for w in &context.wait {
            let slot = w.provider.index();
            if let Some(job) = self.wait_held[slot].take() {
                match self.flow.try_admit(job.lane) {
                    Admission::Admitted => batch.push(job),
                    _ => {
                        self.wait_held[slot] = Some(job);
                        continue;
                    }
                }
            }
            for _ in 0..MAX_BATCH {
                let Some(message) = w.consumer.poll(Duration::ZERO) else {
                    break;
                };
                let message = match message {
                    Ok(m) => m,
                    Err(KafkaError::PartitionEOF(partition)) => {
                        let tp = TopicPartition::new(w.topic.clone(), partition);
                        let last = self.wait_last.get(&tp).copied();
                        send_jobs(context, &self.flow, std::mem::take(&mut batch));
                        let _ = context.events.send(FromConsumer::WaitEnd { tp, last });
                        continue;
                    }
                    Err(e) => {
                        crate::telemetry::consumer_poll_error(&e);
                        break;
                    }
                };
                let record = InputRecord::from_message(&message, w.topic.clone());
                drop(message);
                self.wait_last
                    .insert(record.topic_partition(), record.offset);
                let job = Job::from_wait(record, w.provider, &self.settings.decoder);
                match self.flow.try_admit(job.lane) {
                    Admission::Admitted => batch.push(job),
                    _ => {
                        self.wait_held[slot] = Some(job);
                        break;
                    }
                }
            }
        }
        send_jobs(context, &self.flow, batch);
    }

    /// Reads expectations (polling fallback) for the fallback task while it has room under
    /// `fallback.max_pending`; at the limit the topic is simply not read (librdkafka keeps at
    /// most its small prefetch), so nothing is dropped.
    fn poll_expectations(&mut self) {
        let Some(x) = &self.consumer.context().expectations else {
            return;
        };
        let mut batch = Vec::new();
        while x.link.has_room(batch.len()) && batch.len() < MAX_BATCH {
            let Some(message) = x.consumer.poll(Duration::ZERO) else {
                break;
            };
            match message {
                Ok(m) => batch.push(InputRecord::from_message(&m, x.link.topic().clone())),
                Err(e) => {
                    crate::telemetry::consumer_poll_error(&e);
                    break;
                }
            }
        }
        x.link.records(batch);
    }

    /// Hands over the held record and the parked ones whose lane has room, in order.
    fn admit_waiting(&mut self, batch: &mut Vec<Job>) {
        if let Some(mut job) = self.held.take() {
            job.lane = self.flow.charge(job.lane_for_input());
            match self.flow.try_admit(job.lane) {
                Admission::Admitted => batch.push(job),
                Admission::LaneFull => self.park(job),
                Admission::Full => {
                    self.held = Some(job);
                    return;
                }
            }
        }
        let mut emptied = Vec::new();
        'partitions: for (tp, parked) in self.parked.iter_mut() {
            while let Some(job) = parked.jobs.front_mut() {
                job.lane = self.flow.charge(job.lane_for_input());
                match self.flow.try_admit(job.lane) {
                    Admission::Admitted => {
                        if let Some(job) = parked.jobs.pop_front() {
                            self.parked_count -= 1;
                            batch.push(job);
                        }
                    }
                    Admission::LaneFull => continue 'partitions,
                    Admission::Full => break 'partitions,
                }
            }
            emptied.push(tp.clone());
        }
        for tp in emptied {
            self.parked.remove(&tp);
        }
    }

    fn park(&mut self, job: Job) {
        let tp = job.record.topic_partition();
        self.parked
            .entry(tp)
            .or_insert_with(|| Parked {
                since: Instant::now(),
                jobs: VecDeque::new(),
            })
            .jobs
            .push_back(job);
        self.parked_count += 1;
    }

    /// Pauses what must not fetch (everything when stopping or stalled, partitions parked for
    /// `pause_after` otherwise) and resumes the rest; only changes are applied, unless `force`.
    fn reconcile_pauses(&mut self, stopping: bool, force: bool, now: Instant) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for tp in &self.assignment {
            let parked_long = self
                .parked
                .get(tp)
                .is_some_and(|p| now - p.since >= self.settings.pause_after);
            let want = stopping || self.stalled || parked_long || self.ended.contains(tp);
            let is = self.paused.contains(tp);
            if force || want != is {
                let list = if want { &mut pause } else { &mut resume };
                list.add_partition(&tp.topic, tp.partition);
                if want {
                    self.paused.insert(tp.clone());
                } else {
                    self.paused.remove(tp);
                }
            }
        }
        if pause.count() > 0 {
            if let Err(e) = self.consumer.pause(&pause) {
                tracing::warn!(error = %e, "cannot pause partitions");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = self.consumer.resume(&resume) {
                tracing::warn!(error = %e, "cannot resume partitions");
            }
        }
    }

    /// Polls up to a batch of records: the first poll waits up to `wait`, the rest take only
    /// what is local.
    fn poll_batch(&mut self, wait: Duration, stopping: bool) {
        let mut batch = Vec::new();
        let mut wait = wait;
        while batch.len() < MAX_BATCH {
            let Some(message) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        let _ = self
                            .consumer
                            .context()
                            .events
                            .send(FromConsumer::Fatal(format!("{code:?}: {reason}")));
                    } else if let Some(reason) = undecodable(&e) {
                        crate::telemetry::input_undecodable(reason, &e);
                        self.consumer
                            .context()
                            .health
                            .input_undecodable(e.to_string());
                    } else {
                        crate::telemetry::consumer_poll_error(&e);
                    }
                    break;
                }
            };
            let topic = match self.topics.get(message.topic()) {
                Some(t) => t.clone(),
                None => {
                    let t: Arc<str> = Arc::from(message.topic());
                    self.topics.insert(message.topic().to_string(), t.clone());
                    t
                }
            };
            let record = InputRecord::from_message(&message, topic);
            drop(message);
            if stopping {
                // Never handed over, so never committed: the next owner reads it again.
                continue;
            }
            let mut job = match self.bounded(record) {
                Some(job) => job,
                None => continue,
            };
            job.lane = self.flow.charge(job.lane);
            // A partition's records reach the engine in offset order: behind a parked record,
            // the next ones of its partition wait too (its pause normally stops them coming).
            let tp = job.record.topic_partition();
            if self.parked.contains_key(&tp) {
                self.park(job);
                if self.parked_count >= self.parked_cap {
                    break;
                }
                continue;
            }
            match self.flow.try_admit(job.lane) {
                Admission::Admitted => batch.push(job),
                Admission::LaneFull => {
                    self.park(job);
                    if self.parked_count >= self.parked_cap {
                        break;
                    }
                }
                Admission::Full => {
                    self.held = Some(job);
                    break;
                }
            }
        }
        self.send(batch);
    }

    /// A bounded run (`replay`): the job for a record inside its partition's range (marked
    /// filtered when its timestamp is outside the window), or `None` for a record before the
    /// start (skipped) or at or past the end (its partition is then paused: nothing after it is
    /// processed either).
    fn bounded(&mut self, record: InputRecord) -> Option<Job> {
        let Some(bounds) = &self.settings.bounds else {
            return Some(Job::new(record, &self.settings.decoder));
        };
        let tp = record.topic_partition();
        match bounds.check(&tp, record.offset, record.timestamp_ms) {
            super::bounds::Check::Process => {
                self.last_in_range.insert(tp, record.offset);
                let job = Job::new(record, &self.settings.decoder);
                Some(if bounds.renormalize() {
                    job.renormalizing()
                } else {
                    job
                })
            }
            super::bounds::Check::Filtered => {
                self.last_in_range.insert(tp, record.offset);
                Some(Job::new(record, &self.settings.decoder).filtered_by_time())
            }
            super::bounds::Check::BeforeStart => None,
            super::bounds::Check::PastEnd => {
                if self.ended.insert(tp.clone()) {
                    bounds.reached_end(&tp, self.last_in_range.get(&tp).copied());
                    let mut list = TopicPartitionList::new();
                    list.add_partition(&tp.topic, tp.partition);
                    if let Err(e) = self.consumer.pause(&list) {
                        tracing::warn!(partition = %tp, error = %e, "cannot pause a partition at the end of its range");
                    }
                    self.paused.insert(tp);
                }
                None
            }
        }
    }

    fn send(&self, batch: Vec<Job>) {
        send_jobs(self.consumer.context(), &self.flow, batch);
    }
}

/// Hands a batch of admitted records to the engine.
fn send_jobs(context: &EngineContext, flow: &FlowControl, batch: Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    let mut lanes = super::flow::LaneCounts::default();
    for job in &batch {
        lanes.add(job.lane, 1);
    }
    if context.events.send(FromConsumer::Jobs(batch)).is_err() {
        // The engine is gone; give the places back so nothing waits on them.
        flow.release(&lanes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn batches_librdkafka_cannot_decode_are_told_apart_from_other_errors() {
        let consumption = KafkaError::MessageConsumption;
        for (code, reason) in [
            (RDKafkaErrorCode::NotImplemented, "unsupported_compression"),
            (
                RDKafkaErrorCode::UnsupportedCompressionType,
                "unsupported_compression",
            ),
            (RDKafkaErrorCode::BadCompression, "corrupt_compression"),
            (RDKafkaErrorCode::BadMessage, "corrupt_record"),
            (RDKafkaErrorCode::InvalidMessage, "corrupt_record"),
            (RDKafkaErrorCode::MessageSizeTooLarge, "record_too_large"),
        ] {
            assert_eq!(undecodable(&consumption(code)), Some(reason), "{code:?}");
        }
        for other in [
            consumption(RDKafkaErrorCode::BrokerTransportFailure),
            consumption(RDKafkaErrorCode::AllBrokersDown),
            KafkaError::PartitionEOF(0),
            KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::BadCompression),
        ] {
            assert_eq!(undecodable(&other), None, "{other:?}");
        }
    }
}
