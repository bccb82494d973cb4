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

pub mod bounds;
pub mod breaker;
pub mod catch_up;
pub mod consumer;
pub mod dead_letter;
pub mod dedupe;
pub mod dispatcher;
pub mod fallback;
pub mod flow;
pub mod input;
pub mod job;
pub mod lanes;
pub mod offsets;
pub mod producer;
pub mod scheduler;
pub mod settings;
pub mod stats;
pub mod wait;
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
    /// Provider isolation cannot start: a wait topic is missing or has the wrong partitions.
    #[error("{0}")]
    WaitTopics(String),
    /// The polling fallback cannot start: the expectations topic is missing or is not
    /// co-partitioned with the input topics.
    #[error("{0}")]
    Expectations(String),
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
    run_with(config, parts, None, shutdown).await
}

/// Runs the pipeline over a bounded range (`webhook-enricher replay`, see [`bounds`]): like
/// [`run`], and it also stops by itself, drained and committed, once every partition of
/// `bounds` reached its end.
pub async fn run_bounded(
    config: &RunSettings,
    parts: EngineParts,
    bounds: Arc<bounds::Bounds>,
    shutdown: impl Future<Output = ()>,
) -> Result<StatsSnapshot, EngineError> {
    let finished = bounds.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = finished.finished() => tracing::info!("every partition reached the end of its range"),
        }
    };
    run_with(config, parts, Some(bounds), stop).await
}

async fn run_with(
    config: &RunSettings,
    parts: EngineParts,
    bounds: Option<Arc<bounds::Bounds>>,
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
    let mut isolated: Vec<Provider> = if settings.isolation.enabled == settings::Toggle::Off {
        Vec::new()
    } else {
        Provider::ALL
            .into_iter()
            .filter(|p| parts.enricher.has_provider(*p))
            .collect()
    };
    if !isolated.is_empty() {
        let topics: Vec<(Provider, String)> = isolated
            .iter()
            .map(|p| (*p, settings.isolation.wait_topic(*p).to_string()))
            .collect();
        let auto = settings.isolation.enabled == settings::Toggle::Auto;
        if !check_wait_topics(consumer_config.clone(), &config.input.topics, &topics, auto).await? {
            tracing::warn!(
                wait_topics = ?topics.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
                "provider isolation is off: no wait topic exists (engine.isolation.enabled = \"auto\"). A provider outage then pauses consumption for every provider once the in-flight limit is reached; create the wait topics to turn it on"
            );
            isolated.clear();
        } else {
            tracing::info!(providers = ?isolated, "provider isolation is on");
        }
    }
    let wait = if isolated.is_empty() {
        None
    } else {
        let topics: Vec<(Provider, String)> = isolated
            .iter()
            .map(|p| (*p, settings.isolation.wait_topic(*p).to_string()))
            .collect();
        Some(consumer::WaitSettings {
            topics,
            config: crate::kafka::client_config::wait_consumer_config(
                &config.kafka,
                &settings.isolation.wait_group(&config.kafka.group_id),
                settings.commit_interval,
                config.statistics_interval,
            ),
        })
    };
    let fallback = if config.fallback.enabled {
        check_expectations_topic(
            consumer_config.clone(),
            &config.input.topics,
            &config.fallback.expectations_topic,
        )
        .await?;
        let (link, inbox) = fallback::link(&config.fallback);
        tracing::info!(topic = %config.fallback.expectations_topic, "polling fallback is on");
        Some((link, inbox))
    } else {
        None
    };
    let expectations = fallback
        .as_ref()
        .map(|(link, _)| consumer::ExpectationsSettings {
            config: crate::kafka::client_config::wait_consumer_config(
                &config.kafka,
                &config.fallback.expectations_group(&config.kafka.group_id),
                settings.commit_interval,
                config.statistics_interval,
            ),
            link: link.clone(),
        });
    let handle = consumer::start(
        consumer_config,
        &config.input.topics,
        flow.clone(),
        consumer::PollSettings {
            pause_after: settings.pause_after,
            decoder: config.input.clone(),
            bounds,
        },
        parts.health.clone(),
        wait,
        expectations,
    )?;
    let breakers = worker::Breakers::new(settings.breaker);
    for provider in Provider::ALL {
        parts
            .health
            .register_breaker(provider, breakers.get(provider).clone());
    }
    let events = Arc::new(RecordEvents::new(parts.stats.clone()));
    let diversion = (!isolated.is_empty()).then(|| worker::Diversion {
        wait_topics: Provider::ALL.map(|p| settings.isolation.wait_topic(p).to_string()),
        circuit_blocked: Provider::ALL.map(|_| tokio::sync::watch::channel(false).0),
        retry_rounds: settings
            .isolation
            .retry_rounds
            .iter()
            .map(|d| **d)
            .collect(),
        catch_up: catch_up::CatchUpGate::new(settings.isolation.catch_up_initial),
    });
    let mut dispatcher = Dispatcher::new(settings.revoke_drain_timeout);
    if !isolated.is_empty() {
        let wait_topics = isolated
            .iter()
            .map(|p| (Arc::from(settings.isolation.wait_topic(*p)), *p))
            .collect();
        dispatcher = dispatcher.with_isolation(
            lanes::Lanes::new(isolated.clone(), settings.isolation.divert_after),
            wait_topics,
        );
    }
    let ctx = Arc::new(WorkerContext {
        enricher: parts.enricher,
        breakers,
        dedupe: dedupe::Dedupe::new(settings.dedupe),
        encoder: parts.encoder,
        output: config.output.clone(),
        producer: producer.clone(),
        events: events.clone(),
        diversion,
        fallback: fallback.as_ref().map(|(link, _)| link.clone()),
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
    // The fallback task stops polling as soon as the shutdown begins (its unresolved
    // expectations are not committed, so they are read again).
    let fallback_stop = root.child_token();
    let _fallback_task = fallback.map(|(link, inbox)| {
        let unico_default: std::collections::BTreeSet<u8> = config
            .input
            .unico_statuses
            .iter()
            .copied()
            .filter(|s| fallback::expectation::UNICO_FINAL_STATUSES.contains(s))
            .collect();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(fallback::run(
            ctx.clone(),
            link,
            inbox,
            fallback::TaskSettings {
                fallback: config.fallback.clone(),
                provider_rates: config.provider_rates,
                unico_default,
            },
            commands.clone(),
            fallback_stop.clone(),
        )))
    });
    let runner = Runner {
        ctx,
        dispatcher,
        flow: flow.clone(),
        isolation: settings.isolation.clone(),
        provider_rates: config.provider_rates,
        blocked: Provider::ALL.map(|_| Blocked::default()),
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
            fallback_stop.cancel();
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

/// Why a provider's lanes are diverted, as the runner sees it on its ticks.
#[derive(Debug, Default, Clone, Copy)]
struct Blocked {
    /// The circuit is not closed.
    circuit: bool,
    /// Since when the provider's share of the budget has been full.
    full_since: Option<Instant>,
    /// The provider is slower than its arrivals (see [`Blocked::observe`]).
    slow: bool,
    /// When the catch-up cap was last raised.
    ramped_at: Option<Instant>,
    /// Records of the provider's share (direct and read back) finished since `window_start`.
    finished: u64,
    window_start: Option<Instant>,
    /// Records of the share finished per second over the last whole window.
    rate: Option<f64>,
}

/// The direct lane's completion rate is measured over windows this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl Blocked {
    /// Updates `slow` from the provider's share: `held` records (direct and read back) of at
    /// most `lane_cap`.
    ///
    /// Slow once the share is full and either stayed full for `divert_after`, or drains so
    /// slowly that its records would wait longer than `divert_after` (e.g. Unico held to 10
    /// requests/s with hundreds in its share: the input would be held back behind it for a
    /// minute): at its configured rate limit (`max_rate`, known at once) or at the pace
    /// measured over a whole [`RATE_WINDOW`]. A busy provider (full share, fast completions) is
    /// not slow. It stays slow until the records it already holds have drained
    /// to half the share: they are served at its pace, and returning earlier would only fill
    /// the share again and park the input behind it.
    fn observe(
        &mut self,
        held: usize,
        lane_cap: usize,
        holding: bool,
        max_rate: Option<f64>,
        now: Instant,
        divert_after: Duration,
    ) {
        if held < lane_cap || holding || self.full_since.is_none() {
            // The pace that matters is the pace of a full share: measure from when it filled.
            self.rate = None;
            self.finished = 0;
            self.window_start = Some(now);
        } else {
            let start = *self.window_start.get_or_insert(now);
            if now - start >= RATE_WINDOW {
                self.rate = Some(self.finished as f64 / (now - start).as_secs_f64());
                self.finished = 0;
                self.window_start = Some(now);
            }
        }
        if held >= lane_cap {
            let full_for = now - *self.full_since.get_or_insert(now);
            // Records held by an `unknown` or `returning` lane are in the share but not
            // started: their lane, not the provider, is what keeps them.
            let too_slow = |r: f64| held as f64 > r * divert_after.as_secs_f64();
            let drains_slowly =
                !holding && (max_rate.is_some_and(too_slow) || self.rate.is_some_and(too_slow));
            self.slow = self.slow || full_for >= divert_after || drains_slowly;
        } else {
            self.full_since = None;
            if held < lane_cap / 2 {
                self.slow = false;
            }
        }
    }
}

struct Runner {
    ctx: Arc<WorkerContext>,
    dispatcher: Dispatcher,
    flow: Arc<FlowControl>,
    isolation: settings::IsolationSettings,
    /// Each provider's configured request rate (0: unlimited), for [`Blocked::observe`].
    provider_rates: [u32; Provider::ALL.len()],
    blocked: [Blocked; Provider::ALL.len()],
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
                        self.dispatcher.on_assigned(partitions, Instant::now(), &mut fx);
                    }
                    Some(FromConsumer::WaitEnd { tp, last }) => {
                        self.dispatcher.on_wait_end(&tp, last, Instant::now(), &mut fx);
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
                    let now = Instant::now();
                    self.update_blocked(now, &mut fx);
                    self.dispatcher.on_tick(now, &mut fx);
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
        for p in Provider::ALL {
            self.blocked[p.index()].finished += fx.released.of_provider(p) as u64;
        }
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
        for change in &fx.lane_changes {
            self.events.lane_changed(
                change.lane.0,
                change.lane.1,
                change.from.as_str(),
                change.to.as_str(),
            );
        }
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
        let divert_reason = job
            .input_lane()
            .map(|(p, _)| self.blocked[p.index()])
            .map_or(wait::Reason::LaneDiverted, |b| {
                if b.circuit {
                    wait::Reason::CircuitOpen
                } else if b.slow {
                    wait::Reason::ProviderSlow
                } else {
                    wait::Reason::LaneDiverted
                }
            });
        let completion = Completion {
            done: self.done_tx.clone(),
            job: Some(job.clone()),
            epoch,
            mode,
            outcome: None,
        };
        tokio::spawn(async move {
            let mut completion = completion;
            let processed = tokio::select! {
                biased;
                _ = abandon.cancelled() => None,
                p = async {
                    match (mode, job.provider()) {
                        (Mode::Divert, Some(provider)) => {
                            worker::divert(&ctx, &job, provider, divert_reason, 0, None).await
                        }
                        (Mode::Process | Mode::Divert, _) => worker::process(&ctx, &job, &drain).await,
                        (Mode::DeadLetterPanicked, _) => worker::dead_letter_panicked(&ctx, &job).await,
                    }
                } => Some(p),
            };
            if let (Some(provider), Some(Processed::Final(_))) = (job.wait, &processed) {
                ctx.events.returned(provider);
            }
            completion.outcome = Some(match processed {
                Some(Processed::Final(f)) => Outcome::Finished(f),
                Some(Processed::Fatal(e)) => Outcome::Fatal(e),
                Some(Processed::Drained) | None => Outcome::Cancelled,
            });
        });
    }

    /// Provider isolation: a provider is blocked while its circuit is not closed, or once its
    /// share of the budget stayed full for `divert_after`. Also ramps each catch-up lane: it
    /// starts at `catch_up_initial` and doubles every `catch_up_ramp_every` while the circuit
    /// stays closed.
    fn update_blocked(&mut self, now: Instant, fx: &mut Effects) {
        let Some(diversion) = &self.ctx.diversion else {
            return;
        };
        let providers: Vec<Provider> = self
            .dispatcher
            .lanes()
            .map(|l| l.providers().to_vec())
            .unwrap_or_default();
        let occupancy = self.flow.occupancy();
        for provider in providers {
            let circuit = self.ctx.breakers.get(provider).state() != breaker::BreakerState::Closed;
            let holding = self
                .dispatcher
                .lanes()
                .is_some_and(|l| l.modes().any(|((p, _), m)| p == provider && m.holds()));
            let b = &mut self.blocked[provider.index()];
            b.observe(
                occupancy.of_provider(provider),
                self.flow.lane_cap(),
                holding,
                // The provider's rate limit bounds its pace: a full share it cannot serve within
                // `divert_after` is known slow at once, before a whole rate window went by (the
                // input parked behind it meanwhile).
                Some(self.provider_rates[provider.index()])
                    .filter(|r| *r > 0)
                    .map(f64::from),
                now,
                self.isolation.divert_after,
            );
            b.circuit = circuit;
            diversion.circuit_blocked[provider.index()].send_if_modified(|v| {
                let changed = *v != circuit;
                *v = circuit;
                changed
            });
            let blocked = b.circuit || b.slow;
            if circuit {
                diversion.catch_up.set_cap(
                    provider,
                    self.isolation
                        .catch_up_initial
                        .min(self.flow.catch_up_max()),
                );
                b.ramped_at = None;
            } else {
                let at = *b.ramped_at.get_or_insert(now);
                if now - at >= self.isolation.catch_up_ramp_every {
                    let cap = diversion.catch_up.cap(provider);
                    diversion.catch_up.set_cap(
                        provider,
                        cap.saturating_mul(2).min(self.flow.catch_up_max()),
                    );
                    b.ramped_at = Some(now);
                }
            }
            self.dispatcher.set_blocked(provider, blocked, now, fx);
        }
        if let Some(lanes) = self.dispatcher.lanes() {
            for provider in lanes.providers() {
                let diverting = lanes
                    .modes()
                    .any(|((p, _), m)| p == *provider && m == lanes::Mode::Diverted);
                self.flow.set_diverting(*provider, diverting);
                self.health.set_diverted_lanes(
                    *provider,
                    lanes
                        .modes()
                        .filter(|((p, _), m)| p == provider && *m != lanes::Mode::Direct)
                        .count(),
                );
            }
            let mut counts = Vec::new();
            for provider in lanes.providers() {
                for mode in [
                    lanes::Mode::Direct,
                    lanes::Mode::Diverted,
                    lanes::Mode::Returning,
                    lanes::Mode::Unknown,
                ] {
                    let n = lanes
                        .modes()
                        .filter(|((p, _), m)| p == provider && *m == mode)
                        .count();
                    counts.push((*provider, mode.as_str(), n));
                }
            }
            self.events.lanes(&counts);
        }
    }

    fn on_tick(&self) {
        self.health.heartbeat();
        self.events.in_flight(self.flow.in_flight());
        tracing::trace!(
            occupancy = ?self.flow.occupancy(),
            queued = self.dispatcher.queued(),
            held = self.dispatcher.held(),
            lanes = ?self.dispatcher.lanes().map(|l| l.modes().collect::<Vec<_>>()),
            "engine state"
        );
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
    mode: Mode,
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
        let _ = self
            .done
            .send(Done::of(&job, self.epoch, self.mode, outcome));
    }
}

/// The partition count of `topic` (`None` when it does not exist or has no partitions), for the
/// start-up checks of the wait and expectations topics.
fn partition_count(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// Checks, before consuming, that every wait topic exists with as many partitions as each input
/// topic (a wait partition is read back by the owner of the input partition with its number).
/// Input topics that do not exist yet are not checked (the consumer waits for them).
///
/// `Ok(false)` when `auto` and no wait topic exists (isolation stays off); with `auto` and only
/// some missing, or without `auto` and any missing, an error names them.
/// Checks at start-up that the expectations topic exists and has as many partitions as every
/// input topic (co-partitioning: the owner of input partition p reads expectations partition p).
async fn check_expectations_topic(
    config: rdkafka::ClientConfig,
    inputs: &[String],
    expectations: &str,
) -> Result<(), EngineError> {
    let inputs = inputs.to_vec();
    let expectations = expectations.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::BaseConsumer;
        let fail = |m: String| EngineError::Expectations(m);
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| fail(format!("cannot check the expectations topic: {e}")))?;
        let timeout = Duration::from_secs(10);
        let partitions = |topic: &str| -> Result<Option<usize>, EngineError> {
            partition_count(&consumer, topic, timeout).map_err(|e| {
                fail(format!(
                    "cannot read the metadata of topic {topic:?} to check the expectations topic: {e}"
                ))
            })
        };
        let Some(n) = partitions(&expectations)? else {
            return Err(fail(format!(
                "fallback.enabled: the expectations topic {expectations:?} does not exist: create it with as many partitions as the input topics, or set fallback.enabled = false"
            )));
        };
        for input in &inputs {
            match partitions(input)? {
                Some(m) if m != n => {
                    return Err(fail(format!(
                        "fallback.enabled: the expectations topic {expectations:?} has {n} partitions but input topic {input:?} has {m}: they must be co-partitioned (same partition count, keyed like the raw webhooks), so the instance that reads a webhook also holds its expectation"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| EngineError::Internal(format!("the expectations-topic check failed: {e}")))?
}

async fn check_wait_topics(
    config: rdkafka::ClientConfig,
    inputs: &[String],
    waits: &[(Provider, String)],
    auto: bool,
) -> Result<bool, EngineError> {
    let inputs = inputs.to_vec();
    let waits: Vec<String> = waits.iter().map(|(_, t)| t.clone()).collect();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::BaseConsumer;
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| EngineError::WaitTopics(format!("cannot check the wait topics: {e}")))?;
        let timeout = Duration::from_secs(10);
        let partitions = |topic: &str| -> Result<Option<usize>, EngineError> {
            partition_count(&consumer, topic, timeout).map_err(|e| {
                EngineError::WaitTopics(format!(
                    "cannot read the metadata of topic {topic:?} to check the wait topics: {e}"
                ))
            })
        };
        let mut expected: Option<(String, usize)> = None;
        for input in &inputs {
            if let Some(n) = partitions(input)? {
                match &expected {
                    Some((first, m)) if *m != n => {
                        return Err(EngineError::WaitTopics(format!(
                            "engine.isolation needs every input topic to have the same number of partitions: {first:?} has {m}, {input:?} has {n}"
                        )))
                    }
                    Some(_) => {}
                    None => expected = Some((input.clone(), n)),
                }
            }
        }
        let found: Vec<Option<usize>> = waits
            .iter()
            .map(|w| partitions(w))
            .collect::<Result<_, _>>()?;
        if auto && found.iter().all(Option::is_none) {
            return Ok(false);
        }
        for (wait, found) in waits.iter().zip(found) {
            match (found, &expected) {
                (None, Some((input, n))) => {
                    return Err(EngineError::WaitTopics(format!(
                        "wait topic {wait:?} does not exist: create it with {n} partitions (as many as input topic {input:?}), or set engine.isolation.enabled = false"
                    )))
                }
                (None, None) => {
                    return Err(EngineError::WaitTopics(format!(
                        "wait topic {wait:?} does not exist: create it with as many partitions as the input topics, or set engine.isolation.enabled = false"
                    )))
                }
                (Some(w), Some((input, n))) if w != *n => {
                    return Err(EngineError::WaitTopics(format!(
                        "wait topic {wait:?} has {w} partitions but input topic {input:?} has {n}: they must be equal (a wait partition is read back by the owner of the input partition with its number)"
                    )))
                }
                _ => {}
            }
        }
        Ok(true)
    })
    .await
    .map_err(|e| EngineError::Internal(format!("the wait-topic check failed: {e}")))?
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
            diversion: None,
            fallback: None,
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        // The consumer thread's command channel: nobody reads it.
        let (commands, _) = std_mpsc::channel();
        let runner = Runner {
            ctx,
            dispatcher: Dispatcher::new(Duration::from_secs(5)),
            flow,
            isolation: Default::default(),
            provider_rates: [0; Provider::ALL.len()],
            blocked: Default::default(),
            commands,
            done_tx,
            tokens: HashMap::new(),
            root: CancellationToken::new(),
            health: Arc::new(Health::new(HealthSettings::default())),
            events,
        };
        (runner, done_rx)
    }

    #[test]
    fn a_full_share_that_drains_slowly_is_slow_within_a_second_and_a_busy_one_is_not() {
        let t0 = Instant::now();
        let divert_after = Duration::from_secs(10);
        let tick = Duration::from_millis(250);
        // Unico held to 10/s with its share (768) full; ClearSale finishing 15,000/s.
        let (mut slow, mut busy) = (Blocked::default(), Blocked::default());
        let mut now = t0;
        while now - t0 < Duration::from_secs(3) {
            slow.finished += 2;
            busy.finished += 3750;
            slow.observe(768, 768, false, None, now, divert_after);
            busy.observe(768, 768, false, None, now, divert_after);
            now += tick;
        }
        assert!(slow.slow, "768 records at 10/s would wait 77 s");
        assert!(!busy.slow, "a busy provider is not slow");
        // Slow stays until the share drained to half, then it is direct again.
        slow.observe(500, 768, false, None, now, divert_after);
        assert!(slow.slow);
        slow.observe(300, 768, false, None, now, divert_after);
        assert!(!slow.slow);
        // A share full for `divert_after` is slow whatever its pace.
        let mut now = t0;
        while now - t0 <= divert_after {
            busy.finished += 3750;
            busy.observe(768, 768, false, None, now, divert_after);
            now += tick;
        }
        assert!(busy.slow);
    }

    #[test]
    fn a_full_share_beyond_the_rate_limit_is_slow_at_once() {
        let t0 = Instant::now();
        let divert_after = Duration::from_secs(10);
        // Unico limited to 10/s: 768 records need 77 s, known before any completion is counted.
        let mut limited = Blocked::default();
        limited.observe(768, 768, false, Some(10.0), t0, divert_after);
        assert!(limited.slow);
        // Limited to 100/s: 768 records drain in under 8 s, not slow on the limit alone.
        let mut fast_enough = Blocked::default();
        fast_enough.observe(768, 768, false, Some(100.0), t0, divert_after);
        assert!(!fast_enough.slow);
        // A share not full is never slow; held by `unknown`/`returning` lanes, neither.
        let mut not_full = Blocked::default();
        not_full.observe(700, 768, false, Some(10.0), t0, divert_after);
        assert!(!not_full.slow);
        let mut holding = Blocked::default();
        holding.observe(768, 768, true, Some(10.0), t0, divert_after);
        assert!(!holding.slow);
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
