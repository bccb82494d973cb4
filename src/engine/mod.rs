//! The Kafka engine: consume, decode, dedupe, enrich, encode, produce, commit.
//!
//! - The consumer thread ([`consumer`]) polls librdkafka, decodes each record and hands records
//!   over in batches, within the in-flight budget ([`flow`]).
//! - The dispatcher ([`dispatcher`]) is the bookkeeping as a state machine: per-key order,
//!   committable offsets, assignments and revocations.
//! - The runner ([`run`], this file) is the async loop around it: it feeds the dispatcher its
//!   events, starts one tokio task per record ([`worker`]), and carries out what the dispatcher
//!   asks (release budget, store offsets, cancel, answer revocations).
//!
//! See `docs/DESIGN.md` for the diagram and the offset rules.

pub mod breaker;
pub mod consumer;
pub mod dead_letter;
pub mod dedupe;
pub mod dispatcher;
pub mod flow;
pub mod input;
pub mod job;
pub mod offsets;
pub mod producer;
pub mod scheduler;
pub mod settings;
pub mod stats;
pub mod worker;

pub use settings::{EngineSettings, RunSettings};

use crate::avro::RecordEncoder;
use crate::enrich::Enricher;
use crate::provider::Provider;
use crate::telemetry::RecordEvents;
use consumer::{FromConsumer, ToConsumer};
use dispatcher::{Dispatcher, Done, Effects, Mode, Outcome, Start};
use flow::FlowControl;
use job::Job;
use offsets::TopicPartition;
use stats::{EngineStats, StatsSnapshot};
use std::collections::HashMap;
use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use worker::{Processed, WorkerContext};

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
    /// A defect of the service (a panic in the engine loop).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the engine is given besides the configuration.
pub struct EngineParts {
    pub enricher: Enricher,
    pub encoder: Arc<RecordEncoder>,
    pub stats: Arc<EngineStats>,
    /// Probe state, updated by the engine.
    pub health: Arc<crate::health::Health>,
}

/// How often the runner checks deadlines, beats the heartbeat and updates the gauges.
const TICK: Duration = Duration::from_millis(250);
/// Most completions handled in one turn of the loop.
const DONE_BATCH: usize = 1024;

/// Runs the pipeline until `shutdown` resolves (then drains, flushes, commits and returns the
/// run's counters) or a fatal error occurs (then commits only what is safe and returns it).
///
/// Dropping the returned future cancels every record task it started.
pub async fn run(
    config: &RunSettings,
    parts: EngineParts,
    shutdown: impl Future<Output = ()>,
) -> Result<StatsSnapshot, EngineError> {
    let settings = &config.engine;
    let producer: rdkafka::producer::FutureProducer<producer::ProducerLog> =
        crate::kafka::client_config::producer_config(&config.kafka)
            .create_with_context(producer::ProducerLog)
            .map_err(EngineError::Producer)?;
    let producer = producer::OutputProducer::new(producer);
    let enabled = Provider::ALL
        .iter()
        .filter(|p| parts.enricher.has_provider(**p))
        .count();
    let flow = Arc::new(FlowControl::new(
        settings.max_in_flight,
        settings.provider_share,
        enabled > 1,
    ));
    let consumer_config = crate::kafka::client_config::consumer_config(
        &config.kafka,
        &config.kafka.group_id,
        settings.commit_interval,
        config.statistics_interval,
    );
    let handle = consumer::start(
        consumer_config,
        &config.input.topics,
        flow.clone(),
        consumer::PollSettings {
            pause_after: settings.pause_after,
            decoder: config.input.clone(),
        },
        parts.health.clone(),
    )?;
    let breakers = worker::Breakers::new(settings.breaker);
    for provider in Provider::ALL {
        parts
            .health
            .register_breaker(provider, breakers.get(provider).clone());
    }
    let events = Arc::new(RecordEvents::new(parts.stats.clone()));
    let ctx = Arc::new(WorkerContext {
        enricher: parts.enricher,
        breakers,
        dedupe: dedupe::Dedupe::new(settings.dedupe),
        encoder: parts.encoder,
        output: config.output.clone(),
        producer: producer.clone(),
        events: events.clone(),
    });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let consumer::ConsumerHandle {
        commands,
        events: consumer_events,
        thread: consumer_thread,
    } = handle;
    let root = CancellationToken::new();
    // Dropping `run`'s future cancels every task it started.
    let _cancel_on_drop = root.clone().drop_guard();
    let runner = Runner {
        ctx,
        dispatcher: Dispatcher::new(settings.revoke_drain_timeout),
        flow: flow.clone(),
        commands: commands.clone(),
        done_tx,
        tokens: HashMap::new(),
        root: root.clone(),
        health: parts.health.clone(),
        events: events.clone(),
    };
    // The loop runs as a task on the runtime's workers, beside the record tasks whose
    // completions it handles (not on the caller's thread, which would be woken for each batch).
    let stop = CancellationToken::new();
    let drain_timeout = settings.drain_timeout;
    let mut looping = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
        let stop = stop.clone();
        let mut runner = runner;
        async move {
            let result = runner
                .run_loop(
                    consumer_events,
                    done_rx,
                    stop.cancelled_owned(),
                    drain_timeout,
                )
                .await;
            (runner, result)
        }
    }));
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        joined = &mut looping => joined,
        () = &mut shutdown => {
            stop.cancel();
            (&mut looping).await
        }
    };
    let (runner, result) = match joined {
        Ok(done) => done,
        Err(e) => {
            // A defect: stop without committing anything more.
            flow.stop();
            root.cancel();
            return Err(EngineError::Internal(format!(
                "the engine loop failed: {e}"
            )));
        }
    };

    // Abandon what did not finish (it is not committed, so it is redelivered), flush, commit the
    // safe offsets and leave the group.
    flow.stop();
    root.cancel();
    if !producer.flush(settings.flush_timeout).await {
        tracing::warn!("producer flush did not complete; unacknowledged writes are not committed");
    }
    let offsets = runner.dispatcher.committable();
    let (done, closed) = tokio::sync::oneshot::channel();
    let _ = commands.send(ToConsumer::Close { offsets, done });
    match tokio::time::timeout(settings.close_timeout, closed).await {
        Ok(Ok(Ok(()))) => tracing::info!("consumer closed, offsets committed"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e,
            "consumer closed, but the final commit failed: records after the last commit will be read again"),
        Ok(Err(_)) => tracing::error!("the consumer thread ended before the final commit"),
        Err(_) => tracing::error!(
            timeout = ?settings.close_timeout,
            "the consumer did not close in time; records after the last commit will be read again"
        ),
    }
    let thread = consumer_thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result.map(|()| parts.stats.snapshot())
}

/// The cancellation tokens of one assigned partition's tasks.
struct PartitionTokens {
    /// Cancelled when the partition's revocation begins: tasks that only wait stop.
    drain: CancellationToken,
    /// Cancelled at the revocation deadline (or shutdown): every task stops.
    abandon: CancellationToken,
}

struct Runner {
    ctx: Arc<WorkerContext>,
    dispatcher: Dispatcher,
    flow: Arc<FlowControl>,
    commands: std_mpsc::Sender<ToConsumer>,
    done_tx: mpsc::UnboundedSender<Done>,
    tokens: HashMap<TopicPartition, PartitionTokens>,
    root: CancellationToken,
    health: Arc<crate::health::Health>,
    events: Arc<RecordEvents>,
}

impl Runner {
    async fn run_loop(
        &mut self,
        mut events: mpsc::UnboundedReceiver<FromConsumer>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        shutdown: impl Future<Output = ()>,
        drain_timeout: Duration,
    ) -> Result<(), EngineError> {
        tokio::pin!(shutdown);
        let mut drain_deadline: Option<Instant> = None;
        let mut consumer_gone = false;
        let mut fatal: Option<EngineError> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dones = Vec::with_capacity(DONE_BATCH);
        loop {
            let mut fx = Effects::default();
            tokio::select! {
                biased;
                // Completions first: they free the budget the consumer thread waits on.
                _ = done_rx.recv_many(&mut dones, DONE_BATCH) => {
                    let now = Instant::now();
                    for done in dones.drain(..) {
                        self.dispatcher.on_done(done, now, &mut fx);
                    }
                }
                event = events.recv(), if !consumer_gone => match event {
                    Some(FromConsumer::Jobs(jobs)) => {
                        self.events.consumed(jobs.len());
                        self.dispatcher.on_jobs(jobs, &mut fx);
                    }
                    Some(FromConsumer::Assigned(partitions)) => {
                        for (tp, _) in &partitions {
                            let drain = self.root.child_token();
                            let abandon = self.root.child_token();
                            self.tokens.insert(tp.clone(), PartitionTokens { drain, abandon });
                        }
                        self.dispatcher.on_assigned(partitions);
                    }
                    Some(FromConsumer::Revoking(revoking)) => {
                        self.dispatcher.on_revoking(revoking, Instant::now(), &mut fx);
                    }
                    Some(FromConsumer::Fatal(message)) => {
                        tracing::error!(error = %message, "fatal consumer error: stopping");
                        fatal.get_or_insert(EngineError::ConsumerFatal(message));
                    }
                    None => {
                        consumer_gone = true;
                        if drain_deadline.is_none() {
                            fatal.get_or_insert(EngineError::ConsumerFatal("consumer thread ended".into()));
                        }
                    }
                },
                _ = &mut shutdown, if drain_deadline.is_none() => {
                    tracing::info!(in_flight = self.flow.in_flight(), "shutdown requested: draining");
                    self.health.set_shutting_down();
                    self.flow.stop();
                    drain_deadline = Some(Instant::now() + drain_timeout);
                }
                _ = tick.tick() => {
                    self.dispatcher.on_tick(Instant::now(), &mut fx);
                    self.on_tick();
                }
            }
            self.apply(fx);
            if let Some(error) = self.dispatcher.take_fatal() {
                tracing::error!(error = %error, "fatal producer error: stopping without committing past the failed record");
                fatal.get_or_insert(error.into());
            }
            if let Some(fatal) = fatal.take() {
                self.flow.stop();
                return Err(fatal);
            }
            if let Some(deadline) = drain_deadline {
                if self.flow.in_flight() == 0 {
                    tracing::info!("drained");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    self.events.abandoned(self.flow.in_flight(), "shutdown");
                    return Ok(());
                }
            }
        }
    }

    /// Carries out what the dispatcher asked for.
    fn apply(&mut self, fx: Effects) {
        for start in fx.start {
            self.spawn(start);
        }
        self.flow.release(&fx.released);
        if !fx.store.is_empty() {
            let _ = self
                .commands
                .send(ToConsumer::Store(fx.store.into_values().collect()));
        }
        for tp in &fx.drain {
            if let Some(t) = self.tokens.get(tp) {
                t.drain.cancel();
            }
        }
        for tp in &fx.abandon {
            if let Some(t) = self.tokens.get(tp) {
                t.abandon.cancel();
            }
        }
        self.events.abandoned(fx.abandoned_records, "revocation");
        for tp in &fx.unassigned {
            self.tokens.remove(tp);
        }
        for reply in fx.replies {
            tracing::info!(
                revocation = reply.id,
                partitions = reply.offsets.len(),
                "revocation answered"
            );
            let _ = reply.sender.send(reply.offsets);
        }
    }

    fn spawn(&self, start: Start) {
        let Start { job, epoch, mode } = start;
        let tp = job.record.topic_partition();
        let (drain, abandon) = match self.tokens.get(&tp) {
            Some(t) => (t.drain.clone(), t.abandon.clone()),
            // Not assigned (cannot happen: the dispatcher starts only assigned partitions'
            // records); such a task is cancelled at once.
            None => {
                let t = self.root.child_token();
                t.cancel();
                (t.clone(), t)
            }
        };
        let ctx = self.ctx.clone();
        let completion = Completion {
            done: self.done_tx.clone(),
            job: Some(job.clone()),
            epoch,
            outcome: None,
        };
        tokio::spawn(async move {
            let mut completion = completion;
            let processed = tokio::select! {
                biased;
                _ = abandon.cancelled() => None,
                p = async {
                    match mode {
                        Mode::Process => worker::process(&ctx, &job, &drain).await,
                        Mode::DeadLetterPanicked => worker::dead_letter_panicked(&ctx, &job).await,
                    }
                } => Some(p),
            };
            completion.outcome = Some(match processed {
                Some(Processed::Final(f)) => Outcome::Finished(f),
                Some(Processed::Fatal(e)) => Outcome::Fatal(e),
                Some(Processed::Drained) | None => Outcome::Cancelled,
            });
        });
    }

    fn on_tick(&self) {
        self.health.heartbeat();
        self.events.in_flight(self.flow.in_flight());
        for provider in Provider::ALL {
            self.events
                .circuit_state(provider, self.ctx.breakers.get(provider).state().as_gauge());
        }
    }
}

/// Reports a task's end to the dispatcher when dropped, however the task ends: with its outcome,
/// cancelled (its future dropped) or panicking. A record's key and offset therefore never stay
/// busy because its task did not report.
struct Completion {
    done: mpsc::UnboundedSender<Done>,
    job: Option<Arc<Job>>,
    epoch: u64,
    outcome: Option<Outcome>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let Some(job) = self.job.take() else {
            return;
        };
        let outcome = match self.outcome.take() {
            Some(o) => o,
            None if std::thread::panicking() => Outcome::Panicked(job.clone()),
            None => Outcome::Cancelled,
        };
        let _ = self.done.send(Done {
            tp: job.record.topic_partition(),
            epoch: self.epoch,
            offset: job.record.offset,
            key: job.key.clone(),
            lane: job.lane,
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, HealthSettings};
    use flow::{Admission, Lane};

    /// A runner with no provider, no partition and a producer that connects to nothing (creating
    /// it does not connect), over `flow`.
    fn runner(flow: Arc<FlowControl>) -> (Runner, mpsc::UnboundedReceiver<Done>) {
        let producer: rdkafka::producer::FutureProducer<producer::ProducerLog> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .create_with_context(producer::ProducerLog)
                .expect("a producer");
        let events = Arc::new(RecordEvents::new(Arc::new(EngineStats::default())));
        let ctx = Arc::new(WorkerContext {
            enricher: Enricher::new(None, None, Default::default()),
            breakers: worker::Breakers::new(Default::default()),
            dedupe: dedupe::Dedupe::new(Default::default()),
            encoder: Arc::new(RecordEncoder::single_object().expect("the embedded schema")),
            output: Default::default(),
            producer: producer::OutputProducer::new(producer),
            events: events.clone(),
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        // The consumer thread's command channel: nobody reads it.
        let (commands, _) = std_mpsc::channel();
        let runner = Runner {
            ctx,
            dispatcher: Dispatcher::new(Duration::from_secs(5)),
            flow,
            commands,
            done_tx,
            tokens: HashMap::new(),
            root: CancellationToken::new(),
            health: Arc::new(Health::new(HealthSettings::default())),
            events,
        };
        (runner, done_rx)
    }

    /// The consumer thread ends during the shutdown drain while a record is still in flight: the
    /// loop stops listening to the closed channel and waits, idle, for the drain's deadline.
    ///
    /// The loop runs on a runtime with paused time, whose clock jumps to the next timer only
    /// when every task waits. A loop that polls the closed channel again and again never waits,
    /// so the clock never reaches the deadline and `run_loop` never returns: the test thread
    /// notices it after a real-time timeout.
    #[test]
    fn a_consumer_gone_during_the_drain_does_not_spin_the_loop() {
        let (result_tx, result_rx) = std_mpsc::channel();
        // Not joined: a spinning loop never ends.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a runtime");
            let result = rt.block_on(async {
                let flow = Arc::new(FlowControl::new(1, 1.0, false));
                // One record in flight that never finishes: the drain lasts until its deadline.
                assert_eq!(flow.try_admit(Lane::Other), Admission::Admitted);
                let (mut runner, done_rx) = runner(flow);
                let (events_tx, events_rx) = mpsc::unbounded_channel::<FromConsumer>();
                // The consumer thread dies 1 s into the 5 s drain (a channel closed from the
                // start would be read before the shutdown, as the fatal error it is then).
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    drop(events_tx);
                });
                // Shutdown is requested at once; the runner keeps the completion channel open.
                runner
                    .run_loop(events_rx, done_rx, async {}, Duration::from_secs(5))
                    .await
            });
            let _ = result_tx.send(result);
        });
        match result_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(result) => assert!(
                result.is_ok(),
                "the drain ends at its deadline, not with an error: {result:?}"
            ),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                panic!("the drain loop spins on a closed consumer channel")
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => panic!("the runtime thread panicked"),
        }
    }
}
