//! The Kafka engine: consume, decode, dedupe, enrich, encode, produce, commit.
//!
//! One async task (the dispatcher, [`run`]) owns all bookkeeping: the per-key scheduler, the
//! offset tracker and the revocation/drain state, so none of it needs a lock. Records come from
//! the consumer thread ([`consumer`]); each record runs as its own tokio task ([`worker`]) and
//! reports its final outcome back to the dispatcher, which stores the partition's committable
//! offset. See `docs/DESIGN.md` for the diagram and the offset rules.

pub mod breaker;
pub mod consumer;
pub mod dead_letter;
pub mod dedupe;
pub mod input;
pub mod kafka_config;
pub mod offsets;
pub mod producer;
pub mod scheduler;
pub mod stats;
pub mod worker;

use crate::avro::RecordEncoder;
use crate::config::Config;
use crate::enrich::Enricher;
use crate::event::DecoderSettings;
use crate::provider::Provider;
use consumer::{FlowControl, FromConsumer, ToConsumer};
use input::InputRecord;
use offsets::{OffsetTracker, TopicPartition};
use scheduler::KeyScheduler;
use serde::{Deserialize, Serialize};
use stats::{EngineStats, StatsSnapshot};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker::{Final, Job, WorkerContext};

/// The `[engine]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// Most records received and not yet finished, across the process. At the limit the
    /// consumer pauses its partitions instead of buffering.
    pub max_in_flight: usize,
    /// How often stored offsets are committed (librdkafka auto-commit interval).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On SIGTERM/SIGINT: how long in-flight records may take to finish before the rest is
    /// abandoned (uncommitted, so redelivered). Keep the pod's grace period above it.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On a rebalance: how long the revoked partitions' records may take to finish. Must stay
    /// below the group's session timeout (librdkafka `session.timeout.ms`, 45 s by default).
    #[serde(with = "humantime_serde")]
    pub revoke_drain_timeout: Duration,
    /// The per-provider circuit breaker.
    pub breaker: breaker::BreakerSettings,
    /// The dedupe cache.
    pub dedupe: dedupe::DedupeSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            commit_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            revoke_drain_timeout: Duration::from_secs(15),
            breaker: breaker::BreakerSettings::default(),
            dedupe: dedupe::DedupeSettings::default(),
        }
    }
}

/// Why the engine stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Consumer(#[from] consumer::ConsumerError),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Produce(#[from] producer::ProduceError),
    #[error("fatal consumer error: {0}")]
    ConsumerFatal(String),
}

/// What the engine is given besides the configuration.
pub struct EngineParts {
    pub enricher: Enricher,
    pub encoder: Arc<RecordEncoder>,
    pub stats: Arc<EngineStats>,
    /// Probe state, updated by the engine.
    pub health: Arc<crate::admin::Health>,
}

/// Runs the pipeline until `shutdown` resolves (then drains, flushes, commits and returns the
/// run's counters) or a fatal error occurs (then commits only what is safe and returns it).
pub async fn run(
    config: &Config,
    parts: EngineParts,
    shutdown: impl Future<Output = ()>,
) -> Result<StatsSnapshot, EngineError> {
    let settings = &config.engine;
    let producer: rdkafka::producer::FutureProducer<producer::ProducerLog> =
        kafka_config::producer_config(&config.kafka)
            .create_with_context(producer::ProducerLog)
            .map_err(EngineError::Producer)?;
    let producer = producer::OutputProducer::new(producer);
    let consumer_config = kafka_config::consumer_config(
        &config.kafka,
        &config.kafka.group_id,
        settings.commit_interval,
        config.admin.statistics_interval,
    );
    let handle = consumer::start(
        consumer_config,
        &config.input.topics,
        settings.max_in_flight,
        settings.revoke_drain_timeout + Duration::from_secs(2),
        parts.health.clone(),
    )?;
    let clearsale_breaker = Arc::new(breaker::CircuitBreaker::new(settings.breaker));
    let unico_breaker = Arc::new(breaker::CircuitBreaker::new(settings.breaker));
    parts
        .health
        .register_breaker(Provider::ClearSale, clearsale_breaker.clone());
    parts
        .health
        .register_breaker(Provider::Unico, unico_breaker.clone());
    let ctx = Arc::new(WorkerContext {
        enricher: parts.enricher,
        clearsale_breaker,
        unico_breaker,
        dedupe: dedupe::Dedupe::new(settings.dedupe),
        encoder: parts.encoder,
        output: config.output.clone(),
        producer: producer.clone(),
        stats: parts.stats.clone(),
    });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut dispatcher = Dispatcher {
        ctx,
        decoder: config.input.clone(),
        scheduler: KeyScheduler::default(),
        tracker: OffsetTracker::default(),
        running: HashMap::new(),
        epochs: HashMap::new(),
        tokens: HashMap::new(),
        root: CancellationToken::new(),
        generation: 0,
        flow: handle.flow.clone(),
        commands: handle.commands.clone(),
        done_tx,
        pending_revoke: None,
        fatal: None,
        revoke_drain_timeout: settings.revoke_drain_timeout,
        health: parts.health.clone(),
    };
    let result = dispatcher
        .run_loop(handle.events, done_rx, shutdown, settings.drain_timeout)
        .await;

    // Abandon what did not finish (it is not committed, so it is redelivered), flush, commit the
    // safe offsets and leave the group.
    dispatcher.root.cancel();
    if !producer.flush(Duration::from_secs(10)).await {
        tracing::warn!("producer flush did not complete; unacknowledged writes are not committed");
    }
    let offsets = dispatcher.tracker.committable();
    let (done, closed) = tokio::sync::oneshot::channel();
    let _ = handle.commands.send(ToConsumer::Close {
        generation: dispatcher.generation,
        offsets,
        done,
    });
    match tokio::time::timeout(Duration::from_secs(30), closed).await {
        Ok(Ok(Ok(()))) => tracing::info!("consumer closed, offsets committed"),
        _ => tracing::warn!("consumer did not close cleanly"),
    }
    let thread = handle.thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result.map(|()| parts.stats.snapshot())
}

struct PendingRevoke {
    partitions: Vec<TopicPartition>,
    reply: std_mpsc::SyncSender<Vec<(TopicPartition, i64)>>,
    deadline: Instant,
}

struct Done {
    tp: TopicPartition,
    /// The partition's assignment epoch when the task started: a completion from an earlier
    /// assignment of the same partition must not touch the current one's bookkeeping.
    epoch: u64,
    offset: i64,
    key: String,
    /// `None` when the task was cancelled (its partition was revoked, or shutdown).
    outcome: Option<Result<Final, producer::ProduceError>>,
}

struct Dispatcher {
    ctx: Arc<WorkerContext>,
    decoder: DecoderSettings,
    scheduler: KeyScheduler<String, Job>,
    tracker: OffsetTracker,
    /// Started, unfinished tasks per partition.
    running: HashMap<TopicPartition, usize>,
    /// Assignment epoch per partition, bumped on every assignment of it.
    epochs: HashMap<TopicPartition, u64>,
    /// Cancels the tasks of a partition (on revocation past the deadline).
    tokens: HashMap<TopicPartition, CancellationToken>,
    root: CancellationToken,
    generation: u64,
    flow: Arc<FlowControl>,
    commands: std_mpsc::Sender<ToConsumer>,
    done_tx: mpsc::UnboundedSender<Done>,
    pending_revoke: Option<PendingRevoke>,
    fatal: Option<EngineError>,
    revoke_drain_timeout: Duration,
    health: Arc<crate::admin::Health>,
}

impl Dispatcher {
    async fn run_loop(
        &mut self,
        mut events: mpsc::UnboundedReceiver<FromConsumer>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        shutdown: impl Future<Output = ()>,
        drain_timeout: Duration,
    ) -> Result<(), EngineError> {
        tokio::pin!(shutdown);
        let mut drain_deadline: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = &mut shutdown, if drain_deadline.is_none() => {
                    tracing::info!(in_flight = self.in_flight(), "shutdown requested: draining");
                    self.health.set_shutting_down();
                    self.flow.stop_fetching.store(true, Ordering::SeqCst);
                    drain_deadline = Some(Instant::now() + drain_timeout);
                }
                Some(done) = done_rx.recv() => self.on_done(done),
                event = events.recv() => match event {
                    Some(FromConsumer::Record(record)) => self.on_record(record),
                    Some(FromConsumer::Assigned { generation, partitions }) => self.on_assigned(generation, partitions),
                    Some(FromConsumer::Revoking { partitions, reply }) => self.on_revoking(partitions, reply),
                    Some(FromConsumer::Fatal(message)) => {
                        tracing::error!(error = %message, "fatal consumer error: stopping");
                        self.fatal = Some(EngineError::ConsumerFatal(message));
                    }
                    None => {
                        if self.fatal.is_none() && drain_deadline.is_none() {
                            self.fatal = Some(EngineError::ConsumerFatal("consumer thread ended".into()));
                        }
                    }
                },
                _ = tick.tick() => self.on_tick(),
            }
            self.check_revoke();
            if let Some(fatal) = self.fatal.take() {
                self.flow.stop_fetching.store(true, Ordering::SeqCst);
                return Err(fatal);
            }
            if let Some(deadline) = drain_deadline {
                if self.in_flight() == 0 {
                    tracing::info!("drained");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        in_flight = self.in_flight(),
                        "drain deadline passed: abandoning the rest (not committed)"
                    );
                    return Ok(());
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.flow.in_flight.load(Ordering::SeqCst)
    }

    fn release(&self, records: usize) {
        self.flow.in_flight.fetch_sub(records, Ordering::SeqCst);
    }

    fn on_record(&mut self, record: InputRecord) {
        crate::telemetry::record_consumed(&self.ctx.stats);
        let tp = record.topic_partition();
        if !self.tracker.is_assigned(&tp) || !self.tracker.begin(&tp, record.offset) {
            // A record of a partition we no longer own, or a repeat of an offset in flight.
            self.release(1);
            return;
        }
        let job = Job::new(record, &self.decoder);
        if let Some(job) = self.scheduler.submit(job.key.clone(), job) {
            self.start(job);
        }
    }

    fn start(&mut self, job: Job) {
        let tp = job.record.topic_partition();
        let epoch = self.epochs.get(&tp).copied().unwrap_or_default();
        *self.running.entry(tp.clone()).or_default() += 1;
        let token = self
            .tokens
            .entry(tp.clone())
            .or_insert_with(|| self.root.child_token())
            .child_token();
        let ctx = self.ctx.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = token.cancelled() => None,
                result = worker::process(&ctx, &job) => Some(result),
            };
            let _ = done.send(Done {
                tp,
                epoch,
                offset: job.record.offset,
                key: job.key,
                outcome,
            });
        });
    }

    fn on_done(&mut self, done: Done) {
        self.release(1);
        let current = self.epochs.get(&done.tp) == Some(&done.epoch);
        if current {
            if let Some(n) = self.running.get_mut(&done.tp) {
                *n = n.saturating_sub(1);
            }
        }
        match done.outcome {
            Some(Ok(_)) if !current => {}
            Some(Ok(_)) => {
                if let Some(next) = self.tracker.finish(&done.tp, done.offset) {
                    let _ = self.commands.send(ToConsumer::Store {
                        generation: self.generation,
                        offsets: vec![(done.tp.clone(), next)],
                    });
                }
            }
            Some(Err(error)) => {
                tracing::error!(error = %error, topic = %done.tp.topic, partition = done.tp.partition,
                    offset = done.offset, "fatal producer error: stopping without committing past this record");
                self.fatal = Some(error.into());
            }
            None => {}
        }
        if let Some(next) = self.scheduler.complete(&done.key) {
            if self.fatal.is_some() {
                self.release(1);
            } else {
                self.start(next);
            }
        }
    }

    fn on_assigned(&mut self, generation: u64, partitions: Vec<TopicPartition>) {
        self.generation = generation;
        for tp in partitions {
            *self.epochs.entry(tp.clone()).or_default() += 1;
            self.tracker.assign(tp.clone());
            self.tokens.insert(tp, self.root.child_token());
        }
    }

    fn on_revoking(
        &mut self,
        partitions: Vec<TopicPartition>,
        reply: std_mpsc::SyncSender<Vec<(TopicPartition, i64)>>,
    ) {
        let removed = self
            .scheduler
            .remove_queued(|job| partitions.contains(&job.record.topic_partition()));
        self.release(removed.len());
        self.pending_revoke = Some(PendingRevoke {
            partitions,
            reply,
            deadline: Instant::now() + self.revoke_drain_timeout,
        });
    }

    /// Finishes a pending revocation once its partitions' running records are done, or at its
    /// deadline (then their tasks are cancelled and their records are left to the new owner).
    fn check_revoke(&mut self) {
        let Some(pending) = &self.pending_revoke else {
            return;
        };
        let running: usize = pending
            .partitions
            .iter()
            .filter_map(|tp| self.running.get(tp))
            .sum();
        if running > 0 && Instant::now() < pending.deadline {
            return;
        }
        let Some(pending) = self.pending_revoke.take() else {
            return;
        };
        if running > 0 {
            tracing::warn!(
                running,
                "revocation deadline passed: abandoning the revoked partitions' records"
            );
        }
        let mut offsets = Vec::new();
        for tp in &pending.partitions {
            if let Some(state) = self.tracker.revoke(tp) {
                if let Some(next) = state.committable() {
                    offsets.push((tp.clone(), next));
                }
            }
            if let Some(token) = self.tokens.remove(tp) {
                token.cancel();
            }
            self.running.remove(tp);
        }
        let _ = pending.reply.send(offsets);
    }
    fn on_tick(&mut self) {
        self.health.heartbeat();
        crate::telemetry::records_in_flight(self.in_flight());
        for provider in Provider::ALL {
            crate::telemetry::circuit_state(
                provider,
                self.ctx.breaker(provider).state().as_gauge(),
            );
        }
    }
}
