//! The polling fallback: when a result's webhook does not come, fetch the result anyway.
//!
//! The systems that create analyses and processes write an *expectation* to the expectations
//! topic, keyed and partitioned like the raw webhooks ([`expectation`]). The consumer thread
//! reads partition *p* of that topic while it owns input partition *p* (like the wait topics:
//! manual assignment, committed offsets in `<group>.expectations`) and hands the records to the
//! fallback task ([`run`]), which holds them in the [`pending`] store. A webhook result the
//! worker publishes resolves its expectation; one whose result was published before the
//! expectation arrived is found in the recently-seen cache. An expectation still waiting
//! `fallback.after` past its creation is polled through the same enricher, provider gate and
//! circuit breaker as the webhooks (plus a cap of `fallback.poll_share` of the provider's rate);
//! a final answer is published through the worker's publish path with `trigger_source: poll`;
//! an answer not yet final is polled again with backoff until `fallback.max_wait` (or the
//! expectation's `deadline`), then the expectation is dead-lettered as `expectation_expired`.
//! An expectation's offset is stored only once it is resolved.

pub mod expectation;
pub mod pending;
pub mod settings;

pub use settings::FallbackSettings;

use super::consumer::{StoreOffset, ToConsumer};
use super::dead_letter::{DeadLetterReason, Stage};
use super::flow::Lane;
use super::input::InputRecord;
use super::job::{Job, OrderKey};
use super::offsets::TopicPartition;
use super::worker::{self, Final, Processed, WorkerContext};
use crate::enrich::{Budget, EnrichOutcome};
use crate::event::{Decoded, Rejection};
use crate::failure::ErrorClass;
use crate::provider::Provider;
use crate::telemetry::fallback as events;
use chrono::{DateTime, Utc};
use expectation::{Expectation, SeenResult, Verdict};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pending::{Admitted, Committable, EntryId, Pending};
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where a published record's result came from (the `trigger_source` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerSource {
    Webhook,
    Poll,
}

impl TriggerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerSource::Webhook => "webhook",
            TriggerSource::Poll => "poll",
        }
    }
}

/// What the fallback task is told, in order, by the consumer thread and the workers.
#[derive(Debug)]
pub enum Input {
    /// Expectations partitions assigned, each with its assignment epoch.
    Assigned(Vec<(TopicPartition, u64)>),
    /// Expectations partitions revoked (their offsets were committed by the consumer thread).
    Revoked(Vec<TopicPartition>),
    /// Expectation records, in poll order.
    Records(Vec<InputRecord>),
    /// The webhook path published a final result.
    Seen {
        provider: Provider,
        subject_id: Uuid,
        seen: SeenResult,
        at: DateTime<Utc>,
    },
}

type SeenKey = (Provider, Uuid, SeenResult);

/// The fallback's shared end: the consumer thread sends it expectations (within the
/// `max_pending` bound) and the workers the results they publish.
pub struct Link {
    tx: mpsc::UnboundedSender<Input>,
    seen: moka::sync::Cache<SeenKey, DateTime<Utc>>,
    /// Records sent and not yet taken in by the task.
    queued: AtomicUsize,
    /// Expectations the task holds unresolved.
    held: AtomicUsize,
    max_pending: usize,
    topic: Arc<str>,
}

impl Link {
    /// The expectations topic.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// True while `more` expectations, read but not yet sent, leave room for one more.
    pub fn has_room(&self, more: usize) -> bool {
        self.queued.load(Ordering::SeqCst) + self.held.load(Ordering::SeqCst) + more
            < self.max_pending
    }

    /// Hands expectation records to the task.
    pub fn records(&self, records: Vec<InputRecord>) {
        if records.is_empty() {
            return;
        }
        self.queued.fetch_add(records.len(), Ordering::SeqCst);
        let _ = self.tx.send(Input::Records(records));
    }

    pub fn assigned(&self, partitions: Vec<(TopicPartition, u64)>) {
        let _ = self.tx.send(Input::Assigned(partitions));
    }

    pub fn revoked(&self, partitions: Vec<TopicPartition>) {
        let _ = self.tx.send(Input::Revoked(partitions));
    }

    /// The webhook path published a final result: remembered (for an expectation that comes
    /// later) and told to the task (for one waiting now).
    pub fn webhook_result(&self, provider: Provider, subject_id: Uuid, seen: SeenResult) {
        let at = Utc::now();
        self.seen.insert((provider, subject_id, seen.clone()), at);
        let _ = self.tx.send(Input::Seen {
            provider,
            subject_id,
            seen,
            at,
        });
    }

    /// When a result that would end `e` was published by the webhook path, if it was recently.
    fn seen_before(&self, e: &Expectation) -> Option<DateTime<Utc>> {
        e.awaited()
            .into_iter()
            .filter_map(|s| self.seen.get(&(e.provider, e.subject_id, s)))
            .min()
    }
}

/// The fallback task's receiving end, made with its [`Link`].
pub struct Inbox(mpsc::UnboundedReceiver<Input>);

/// Creates the link and the task's inbox.
pub fn link(settings: &FallbackSettings) -> (Arc<Link>, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Link {
        tx,
        seen: moka::sync::Cache::builder()
            .max_capacity(settings.seen_capacity)
            .time_to_live(settings.seen_ttl)
            .build(),
        queued: AtomicUsize::new(0),
        held: AtomicUsize::new(0),
        max_pending: settings.max_pending,
        topic: Arc::from(settings.expectations_topic.as_str()),
    };
    (Arc::new(link), Inbox(rx))
}

/// What the task needs besides the worker context.
pub struct TaskSettings {
    pub fallback: FallbackSettings,
    /// Each provider's request rate (0: unlimited); polls take `poll_share` of it.
    pub provider_rates: [u32; Provider::ALL.len()],
    /// The Unico statuses expected when an expectation does not say (the final statuses the
    /// decoder enriches).
    pub unico_default: BTreeSet<u8>,
}

/// How one poll ended.
#[derive(Debug)]
enum PollOutcome {
    /// The final result was published by this poll.
    Published,
    /// The final result had been published already (by the webhook path).
    AlreadyPublished,
    /// The result could not be published (encoding failed, the output topic refused it): the
    /// expectation was dead-lettered instead, acknowledged.
    DeadLettered,
    /// The answer is not final yet (also: the provider failed systemically; the next poll
    /// waits for its circuit).
    NotFinal(&'static str),
    /// The provider refused the id for good: dead-letter the expectation with this reason.
    Failed(DeadLetterReason),
    /// A fatal producer error: the engine stops; the expectation stays unresolved.
    Fatal,
    /// Shutdown: the expectation stays unresolved (read again).
    Cancelled,
}

enum Completion {
    Poll(EntryId, PollOutcome),
    /// A dead letter for the expectation at this offset is done (`ok`: acknowledged).
    Resolved {
        tp: TopicPartition,
        offset: i64,
        ok: bool,
    },
}

/// Runs the fallback until `cancel` fires or every [`Link`] is gone.
pub async fn run(
    ctx: Arc<WorkerContext>,
    link: Arc<Link>,
    inbox: Inbox,
    settings: TaskSettings,
    commands: std_mpsc::Sender<ToConsumer>,
    cancel: CancellationToken,
) {
    let limiters = Provider::ALL.map(|p| {
        let rate = settings.provider_rates[p.index()];
        if rate == 0 {
            return None;
        }
        let share = (f64::from(rate) * settings.fallback.poll_share).floor();
        // At least one poll a second: a share that rounds to nothing would stop the fallback.
        let per_second = NonZeroU32::new((share as u32).max(1)).unwrap_or(NonZeroU32::MIN);
        Some(Arc::new(RateLimiter::direct(
            Quota::per_second(per_second).allow_burst(NonZeroU32::MIN),
        )))
    });
    let mut task = Task {
        ctx,
        link,
        settings,
        pending: Pending::default(),
        tasks: JoinSet::new(),
        polling: 0,
        limiters,
        commands,
        cancel: cancel.clone(),
    };
    let Inbox(mut rx) = inbox;
    loop {
        task.start_due_polls();
        task.publish_gauge();
        let wake = task.next_wake();
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            input = rx.recv() => match input {
                Some(input) => task.on_input(input),
                None => break,
            },
            Some(done) = task.tasks.join_next(), if !task.tasks.is_empty() => match done {
                Ok(done) => task.on_completion(done),
                Err(e) => tracing::error!(error = %e, "a fallback task failed; its expectation is read again after a restart"),
            },
            () = tokio::time::sleep(wake) => {}
        }
    }
    task.tasks.abort_all();
}

struct Task {
    ctx: Arc<WorkerContext>,
    link: Arc<Link>,
    settings: TaskSettings,
    pending: Pending<InputRecord>,
    tasks: JoinSet<Completion>,
    polling: usize,
    limiters: [Option<Arc<DefaultDirectRateLimiter>>; Provider::ALL.len()],
    commands: std_mpsc::Sender<ToConsumer>,
    cancel: CancellationToken,
}

/// The longest the loop sleeps without an event (it re-checks due polls then).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(1);

impl Task {
    fn publish_gauge(&self) {
        self.link.held.store(self.pending.open(), Ordering::SeqCst);
        self.ctx.events.expectations_waiting(self.pending.waiting());
    }

    fn next_wake(&self) -> std::time::Duration {
        if self.polling >= self.settings.fallback.max_concurrent_polls {
            return MAX_SLEEP;
        }
        match self.pending.next_due() {
            Some(due) => (due - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_SLEEP),
            None => MAX_SLEEP,
        }
    }

    fn store(&self, stored: Option<Committable>) {
        if let Some(c) = stored {
            let _ = self.commands.send(ToConsumer::Store(vec![StoreOffset {
                tp: c.tp,
                epoch: c.epoch,
                next: c.next,
            }]));
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Assigned(partitions) => {
                for (tp, epoch) in partitions {
                    self.pending.assign(tp, epoch);
                }
            }
            Input::Revoked(partitions) => {
                for tp in &partitions {
                    let dropped = self.pending.revoke(tp);
                    events::revoked(tp, dropped);
                }
            }
            Input::Records(records) => {
                self.link.queued.fetch_sub(records.len(), Ordering::SeqCst);
                for record in records {
                    self.take(record);
                }
            }
            Input::Seen {
                provider,
                subject_id,
                seen,
                at,
            } => {
                for id in self.pending.matching(provider, subject_id, &seen) {
                    if let Some((entry, stored)) = self.pending.resolve(id) {
                        self.ctx.events.expectation_resolved(
                            provider,
                            events::By::Webhook,
                            entry.polls,
                        );
                        events::webhook_delay(provider, entry.expectation.created_at, at);
                        self.store(stored);
                    }
                }
            }
        }
    }

    /// Takes in one expectation record.
    fn take(&mut self, record: InputRecord) {
        let tp = TopicPartition::new(record.topic.clone(), record.partition);
        let offset = record.offset;
        let decoded = expectation::decode(record.payload.as_deref(), &self.settings.unico_default)
            .and_then(|e| expectation::check_key(record.key.as_deref(), &e).map(|()| e));
        let e = match decoded {
            Ok(e) => e,
            Err(rejection) => {
                if self.pending.track(&tp, offset) == Admitted::Tracked {
                    events::malformed(&tp, offset, &rejection);
                    let reason = DeadLetterReason::rejected(&rejection);
                    self.dead_letter(record, Err(rejection), reason);
                }
                return;
            }
        };
        if let Some(at) = self.link.seen_before(&e) {
            // Its webhook result was published before the expectation arrived.
            if self.pending.track(&tp, offset) == Admitted::Tracked {
                self.ctx
                    .events
                    .expectation_resolved(e.provider, events::By::Webhook, 0);
                events::webhook_delay(e.provider, e.created_at, at);
                let stored = self.pending.finish(&tp, offset);
                self.store(stored);
            }
            return;
        }
        let due = pending::first_poll(&self.settings.fallback, &e);
        let give_up = pending::give_up_at(&self.settings.fallback, &e);
        if let Admitted::Pending(_) = self.pending.insert(&tp, offset, e, record, due, give_up) {
            events::expectation_received(&tp, offset);
        }
    }

    fn start_due_polls(&mut self) {
        let room = self
            .settings
            .fallback
            .max_concurrent_polls
            .saturating_sub(self.polling);
        if room == 0 {
            return;
        }
        for id in self.pending.take_due(Utc::now(), room) {
            let Some(entry) = self.pending.get(id) else {
                continue;
            };
            let e = entry.expectation.clone();
            let job = poll_job(&entry.record, &e);
            let ctx = self.ctx.clone();
            let limiter = self.limiters[e.provider.index()].clone();
            let cancel = self.cancel.clone();
            self.polling += 1;
            self.tasks.spawn(async move {
                let outcome = poll(&ctx, limiter.as_deref(), &e, job, &cancel).await;
                Completion::Poll(id, outcome)
            });
        }
    }

    fn on_completion(&mut self, done: Completion) {
        match done {
            Completion::Resolved { tp, offset, ok } => {
                if ok {
                    let stored = self.pending.finish(&tp, offset);
                    self.store(stored);
                }
            }
            Completion::Poll(id, outcome) => {
                self.polling = self.polling.saturating_sub(1);
                let Some(entry) = self.pending.get(id) else {
                    // Its partition was revoked meanwhile.
                    return;
                };
                let provider = entry.expectation.provider;
                let polls = entry.polls;
                let give_up = entry.give_up;
                self.ctx
                    .events
                    .fallback_polled(provider, &outcome_label(&outcome));
                match outcome {
                    PollOutcome::Published
                    | PollOutcome::AlreadyPublished
                    | PollOutcome::DeadLettered => {
                        let by = match outcome {
                            PollOutcome::Published => events::By::Poll,
                            PollOutcome::AlreadyPublished => events::By::Webhook,
                            _ => events::By::DeadLetter,
                        };
                        if let Some((_, stored)) = self.pending.resolve(id) {
                            self.ctx.events.expectation_resolved(provider, by, polls);
                            self.store(stored);
                        }
                    }
                    PollOutcome::NotFinal(_) => {
                        let now = Utc::now();
                        match pending::after_not_final(&self.settings.fallback, give_up, polls, now)
                        {
                            Some(due) => self.pending.reschedule(id, due),
                            None => {
                                if let Some(entry) = self.pending.detach(id) {
                                    self.ctx.events.expectation_resolved(
                                        provider,
                                        events::By::Expired,
                                        polls,
                                    );
                                    let reason = DeadLetterReason {
                                        class: ErrorClass::ExpectationExpired,
                                        stage: Stage::Enrich,
                                        message: format!(
                                            "no final result after {polls} polls: no matching webhook by {}",
                                            entry.give_up.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                                        ),
                                        attempts: polls,
                                        http_status: None,
                                        provider: Some(provider),
                                    };
                                    let e = entry.expectation.clone();
                                    self.dead_letter(entry.record, Ok(e), reason);
                                }
                            }
                        }
                    }
                    PollOutcome::Failed(reason) => {
                        if let Some(entry) = self.pending.detach(id) {
                            self.ctx.events.expectation_resolved(
                                provider,
                                events::By::DeadLetter,
                                polls,
                            );
                            let e = entry.expectation.clone();
                            self.dead_letter(entry.record, Ok(e), reason);
                        }
                    }
                    PollOutcome::Fatal | PollOutcome::Cancelled => {
                        // Left unresolved (its offset is not stored): read again after a restart.
                    }
                }
            }
        }
    }

    /// Writes an expectation's dead letter; its offset is finished once acknowledged.
    fn dead_letter(
        &mut self,
        record: InputRecord,
        decoded: Result<Expectation, Rejection>,
        reason: DeadLetterReason,
    ) {
        let ctx = self.ctx.clone();
        let tp = TopicPartition::new(record.topic.clone(), record.partition);
        let offset = record.offset;
        let job = match decoded {
            Ok(e) => poll_job(&record, &e),
            Err(r) => Job {
                key: OrderKey::Partition(record.topic.clone(), record.partition),
                record,
                decoded: Err(r),
                lane: Lane::Other,
                wait: None,
                origin: None,
                filtered: false,
                renormalize: false,
            },
        };
        self.tasks.spawn(async move {
            let written = worker::dead_letter_job(&ctx, &job, reason).await;
            Completion::Resolved {
                tp,
                offset,
                ok: matches!(written, Processed::Final(Final::DeadLettered(_))),
            }
        });
    }
}

fn outcome_label(o: &PollOutcome) -> String {
    match o {
        PollOutcome::Published => "final".into(),
        PollOutcome::AlreadyPublished => "already_published".into(),
        PollOutcome::DeadLettered => "dead_lettered".into(),
        PollOutcome::NotFinal(why) => (*why).into(),
        PollOutcome::Failed(r) => format!("failed_{}", r.class.as_str()),
        PollOutcome::Fatal => "fatal".into(),
        PollOutcome::Cancelled => "cancelled".into(),
    }
}

/// The expectation's record as a job (its lineage and dead-letter source are the expectation's
/// coordinates), decoded as the poll's event.
fn poll_job(record: &InputRecord, e: &Expectation) -> Job {
    Job {
        key: OrderKey::Subject(e.provider, e.subject_id),
        record: record.clone(),
        decoded: Ok(Decoded::Enrich(e.poll_event(Utc::now()))),
        lane: Lane::Other,
        wait: None,
        origin: None,
        filtered: false,
        renormalize: false,
    }
}

/// One poll: the poll share, the provider's circuit (waited for like every record), the
/// enricher with a record's budget (the provider's gate), and the verdict.
async fn poll(
    ctx: &WorkerContext,
    limiter: Option<&DefaultDirectRateLimiter>,
    e: &Expectation,
    job: Job,
    cancel: &CancellationToken,
) -> PollOutcome {
    let breaker = ctx.breakers.get(e.provider);
    let permit = tokio::select! {
        biased;
        () = cancel.cancelled() => return PollOutcome::Cancelled,
        permit = async {
            if let Some(l) = limiter {
                l.until_ready().await;
            }
            breaker.acquire().await
        } => permit,
    };
    // One attempt when this poll probes a half-open circuit; else a record's retry and
    // not-found budgets, without the pending re-fetch (the fallback's own schedule polls again).
    let budget = if permit.is_probe() {
        Budget::Probe
    } else {
        Budget::Poll
    };
    let probe = e.poll_event(Utc::now());
    match ctx
        .enricher
        .enrich_observed(
            &probe,
            budget,
            cancel,
            &worker::Circuit::of(ctx, e.provider),
        )
        .await
    {
        EnrichOutcome::Cancelled => PollOutcome::Cancelled,
        EnrichOutcome::Interrupted { .. } => {
            // The circuit opened while the poll waited to retry: poll again later.
            drop(permit);
            PollOutcome::NotFinal("provider_unavailable")
        }
        EnrichOutcome::Reachable { .. } => {
            permit.succeeded();
            PollOutcome::NotFinal("not_final")
        }
        EnrichOutcome::Fetched { fetched, attempts } => {
            permit.succeeded();
            match expectation::verdict(e, &fetched, Utc::now()) {
                Verdict::NotFinal => PollOutcome::NotFinal("not_final"),
                Verdict::Final { event, result } => {
                    let job = Job {
                        decoded: Ok(Decoded::Enrich(event.clone())),
                        ..job
                    };
                    match worker::publish_result(
                        ctx,
                        &job,
                        &event,
                        &fetched,
                        attempts,
                        &result,
                        TriggerSource::Poll,
                    )
                    .await
                    {
                        Processed::Final(Final::Published) => PollOutcome::Published,
                        Processed::Final(Final::Deduplicated) => PollOutcome::AlreadyPublished,
                        Processed::Final(Final::DeadLettered(_)) => PollOutcome::DeadLettered,
                        Processed::Fatal(_) => PollOutcome::Fatal,
                        Processed::Final(_) | Processed::Drained => PollOutcome::Cancelled,
                    }
                }
            }
        }
        EnrichOutcome::Failed(failure) => {
            if crate::enrich::decision::permanent_failure_reached_provider(budget, failure.attempts)
            {
                permit.succeeded();
            }
            PollOutcome::Failed(DeadLetterReason {
                class: failure.class,
                stage: Stage::Enrich,
                message: format!("fallback poll: {}", failure.reason),
                attempts: failure.attempts,
                http_status: failure.http_status,
                provider: Some(e.provider),
            })
        }
        EnrichOutcome::Systemic {
            provider, reason, ..
        } => {
            if let Some(period) = permit.failed_systemically() {
                ctx.events.circuit_opened(provider, period, &reason);
            }
            PollOutcome::NotFinal("provider_unavailable")
        }
    }
}
