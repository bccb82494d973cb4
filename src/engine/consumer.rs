//! The consumer thread. librdkafka's consumer is driven by `poll`, which also runs the rebalance
//! callbacks, so it lives on a dedicated OS thread: blocking there (waiting for the async side
//! to drain revoked partitions, committing synchronously) never blocks a tokio worker, and the
//! callbacks never touch a tokio lock. The thread and the async engine talk over channels:
//!
//! - to the engine: records, assignments, revocations (with a reply channel), fatal errors;
//! - to the thread: offsets to store (tagged with the assignment generation, so a stale store
//!   from before a rebalance is dropped) and the final close.
//!
//! Backpressure: before each poll the thread compares the shared in-flight count with the
//! limit and pauses every assigned partition at the limit, resuming below three quarters of it.
//! Records librdkafka had already fetched when the pause took effect are parked here, in order,
//! and handed over as room frees up, so the engine never holds more than the limit.

use super::input::InputRecord;
use super::offsets::TopicPartition;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Messages from the consumer thread to the engine.
#[derive(Debug)]
pub enum FromConsumer {
    /// Partitions were assigned; `generation` tags later offset stores.
    Assigned {
        generation: u64,
        partitions: Vec<TopicPartition>,
    },
    /// Partitions are being revoked. The engine drains them (up to its deadline) and replies
    /// with the offsets to commit for them.
    Revoking {
        partitions: Vec<TopicPartition>,
        reply: std_mpsc::SyncSender<Vec<(TopicPartition, i64)>>,
    },
    /// A record (already counted in the in-flight total).
    Record(InputRecord),
    /// The consumer cannot go on.
    Fatal(String),
}

/// Messages from the engine to the consumer thread.
#[derive(Debug)]
pub enum ToConsumer {
    /// Store these next-offsets for the next commit, if still in `generation`.
    Store {
        generation: u64,
        offsets: Vec<(TopicPartition, i64)>,
    },
    /// Store these offsets, commit synchronously, close the consumer (leave the group) and end.
    Close {
        generation: u64,
        offsets: Vec<(TopicPartition, i64)>,
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

/// State shared between the engine and the consumer thread.
#[derive(Debug)]
pub struct FlowControl {
    /// Records received and not yet finished or dropped.
    pub in_flight: AtomicUsize,
    /// Pause fetching at this many records in flight.
    pub max_in_flight: usize,
    /// Stop fetching for good (shutdown).
    pub stop_fetching: AtomicBool,
}

/// The engine's side of the consumer thread.
pub struct ConsumerHandle {
    pub commands: std_mpsc::Sender<ToConsumer>,
    pub events: mpsc::UnboundedReceiver<FromConsumer>,
    pub flow: Arc<FlowControl>,
    pub thread: std::thread::JoinHandle<()>,
}

struct EngineContext {
    events: mpsc::UnboundedSender<FromConsumer>,
    /// Partitions revoked since the poll loop last looked (it drops their parked records).
    revoked: std::sync::Mutex<Vec<TopicPartition>>,
    health: Arc<crate::admin::Health>,
    generation: AtomicU64,
    closing: AtomicBool,
    revoke_wait: Duration,
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
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.hi_offset >= 0 {
                    crate::telemetry::consumer_lag(
                        topic,
                        *partition,
                        p.consumer_lag,
                        p.consumer_lag_stored,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = partitions_of(tpl);
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(partitions.iter().cloned());
        if !self.closing.load(Ordering::SeqCst) && !partitions.is_empty() {
            let (reply, answer) = std_mpsc::sync_channel(1);
            tracing::info!(
                partitions = partitions.len(),
                "partitions revoked: draining"
            );
            if self
                .events
                .send(FromConsumer::Revoking { partitions, reply })
                .is_ok()
            {
                match answer.recv_timeout(self.revoke_wait) {
                    Ok(offsets) => store(consumer, &offsets),
                    Err(_) => tracing::warn!(
                        "engine did not answer the revocation in time; committing what is stored"
                    ),
                }
            }
        }
        commit(consumer);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
            let partitions = partitions_of(tpl);
            tracing::info!(
                partitions = partitions.len(),
                generation,
                "partitions assigned"
            );
            let _ = self.events.send(FromConsumer::Assigned {
                generation,
                partitions,
            });
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

fn store(consumer: &BaseConsumer<EngineContext>, offsets: &[(TopicPartition, i64)]) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (tp, next) in offsets {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next)) {
            tracing::warn!(partition = %tp, error = %e, "cannot build offset list");
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // Happens when a partition was revoked meanwhile: its new owner starts from the last
        // commit, which is safe (at least once).
        tracing::debug!(error = %e, "offset store refused");
    }
}

fn commit(consumer: &BaseConsumer<EngineContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!("offsets committed"),
        Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "offset commit failed"),
    }
}

/// Creates the consumer, subscribes, and starts its thread.
pub fn start(
    config: ClientConfig,
    topics: &[String],
    max_in_flight: usize,
    revoke_wait: Duration,
    health: Arc<crate::admin::Health>,
) -> Result<ConsumerHandle, ConsumerError> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let context = EngineContext {
        events: events_tx,
        revoked: std::sync::Mutex::new(Vec::new()),
        health,
        generation: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        revoke_wait,
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
    let flow = Arc::new(FlowControl {
        in_flight: AtomicUsize::new(0),
        max_in_flight: max_in_flight.max(1),
        stop_fetching: AtomicBool::new(false),
    });
    let (commands, command_rx) = std_mpsc::channel();
    let thread_flow = flow.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || poll_loop(consumer, command_rx, thread_flow))
        .map_err(ConsumerError::Thread)?;
    Ok(ConsumerHandle {
        commands,
        events,
        flow,
        thread,
    })
}

fn poll_loop(
    consumer: BaseConsumer<EngineContext>,
    commands: std_mpsc::Receiver<ToConsumer>,
    flow: Arc<FlowControl>,
) {
    // The (assignment generation, paused) state last applied to the assignment.
    let mut applied: Option<(u64, bool)> = None;
    // Records received while at the limit (prefetched before the pause took effect).
    let mut parked: std::collections::VecDeque<InputRecord> = std::collections::VecDeque::new();
    let mut backpressure = false;
    let resume_below = flow.max_in_flight - flow.max_in_flight / 4;
    loop {
        loop {
            match commands.try_recv() {
                Ok(ToConsumer::Store {
                    generation,
                    offsets,
                }) => {
                    if generation == consumer.context().generation.load(Ordering::SeqCst) {
                        store(&consumer, &offsets);
                    }
                }
                Ok(ToConsumer::Close {
                    generation,
                    offsets,
                    done,
                }) => {
                    if generation == consumer.context().generation.load(Ordering::SeqCst) {
                        store(&consumer, &offsets);
                    }
                    commit(&consumer);
                    consumer.context().closing.store(true, Ordering::SeqCst);
                    // Dropping closes the consumer: it leaves the group (running the revoke
                    // callback, which now only commits) and waits until librdkafka is done.
                    drop(consumer);
                    let _ = done.send(Ok(()));
                    return;
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    consumer.context().closing.store(true, Ordering::SeqCst);
                    commit(&consumer);
                    return;
                }
            }
        }

        // Records of revoked partitions that were parked are dropped: they were never handed to
        // the engine, so nothing after them was either, and the new owner reads them again.
        let revoked = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !revoked.is_empty() {
            parked.retain(|r| !revoked.contains(&r.topic_partition()));
        }
        let stopping = flow.stop_fetching.load(Ordering::SeqCst);
        while !stopping && flow.in_flight.load(Ordering::SeqCst) < flow.max_in_flight {
            match parked.pop_front() {
                Some(record) => forward(&consumer, &flow, record),
                None => break,
            }
        }

        // Backpressure with hysteresis: pause at the limit, resume only below the low mark, so
        // each finished record does not resume fetching for a single message.
        let in_flight = flow.in_flight.load(Ordering::SeqCst);
        if in_flight >= flow.max_in_flight {
            backpressure = true;
        } else if in_flight < resume_below {
            backpressure = false;
        }
        let generation = consumer.context().generation.load(Ordering::SeqCst);
        let want_pause = stopping || backpressure || !parked.is_empty();
        // Applied once per assignment generation and on every change: librdkafka keeps a
        // partition's application pause across a revoke and a new assign, so a partition paused
        // before a rebalance must be resumed explicitly when it comes back.
        if applied != Some((generation, want_pause)) {
            if let Ok(assignment) = consumer.assignment() {
                let result = if want_pause {
                    consumer.pause(&assignment)
                } else {
                    consumer.resume(&assignment)
                };
                match result {
                    Ok(()) => applied = Some((generation, want_pause)),
                    Err(e) => {
                        tracing::warn!(error = %e, pause = want_pause, "cannot pause or resume partitions")
                    }
                }
            }
        }

        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let record = InputRecord::from_message(&message);
                drop(message);
                // librdkafka may still deliver records it fetched before the pause took effect:
                // they wait here, in order, so the engine never holds more than the limit.
                if stopping
                    || !parked.is_empty()
                    || flow.in_flight.load(Ordering::SeqCst) >= flow.max_in_flight
                {
                    parked.push_back(record);
                } else {
                    forward(&consumer, &flow, record);
                }
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    let _ = consumer
                        .context()
                        .events
                        .send(FromConsumer::Fatal(format!("{code:?}: {reason}")));
                } else {
                    crate::telemetry::consumer_poll_error(&e);
                }
            }
            None => {}
        }
    }
}

/// Hands a record to the engine, counting it in flight.
fn forward(consumer: &BaseConsumer<EngineContext>, flow: &FlowControl, record: InputRecord) {
    flow.in_flight.fetch_add(1, Ordering::SeqCst);
    if consumer
        .context()
        .events
        .send(FromConsumer::Record(record))
        .is_err()
    {
        flow.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
