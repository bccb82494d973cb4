//! The dispatcher: the engine's bookkeeping as a state machine, with no I/O.
//!
//! It owns the per-key scheduler, the offset tracker, the assignment epochs and the pending
//! revocations. Each event (records arrived, a record finished, partitions assigned, a
//! revocation began, a tick) updates the state and adds what must happen to an [`Effects`]:
//! tasks to start, budget to release, offsets to store, tasks to cancel, revocations to answer.
//! The runner (`engine/mod.rs`) carries the effects out; tests drive the transitions directly.
//!
//! The rules it keeps:
//!
//! - records of one key run one after another, in offset order (the scheduler);
//! - an offset is stored only when its record and every earlier record of its partition
//!   finished (the tracker);
//! - a completion from an earlier assignment of a partition (an older epoch) never touches the
//!   current assignment's offsets;
//! - a revocation is answered once the revoked partitions' running records finished, or at its
//!   deadline, whichever comes first; records that only wait are cancelled when it begins.

use super::consumer::{Revoking, StoreOffset};
use super::flow::{Lane, LaneCounts};
use super::job::{Job, OrderKey};
use super::lanes::{Change, LaneId, Lanes, Route};
use super::offsets::{OffsetTracker, TopicPartition};
use super::producer::ProduceError;
use super::scheduler::KeyScheduler;
use super::worker::Final;
use crate::provider::Provider;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a task is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The record's way through the pipeline.
    Process,
    /// A task processing this record panicked: dead-letter it, so its key and offset move on.
    DeadLetterPanicked,
    /// The record's provider lane is diverted: write it to the provider's wait topic.
    Divert,
}

/// A task to start.
#[derive(Debug)]
pub struct Start {
    pub job: Arc<Job>,
    /// The partition's assignment epoch, reported back in the task's [`Done`].
    pub epoch: u64,
    pub mode: Mode,
}

/// How a task ended.
#[derive(Debug)]
pub enum Outcome {
    /// The record has a final outcome whose write Kafka acknowledged.
    Finished(Final),
    /// Cancelled (revocation, shutdown) before a final outcome: the record is not finished and
    /// its offset is not committed; whoever owns the partition next reads it again.
    Cancelled,
    /// The producer failed fatally: the engine stops, committing nothing past this record.
    Fatal(ProduceError),
    /// The task panicked. The record comes back to be dead-lettered.
    Panicked(Arc<Job>),
}

/// A task's report.
#[derive(Debug)]
pub struct Done {
    pub tp: TopicPartition,
    pub epoch: u64,
    pub offset: i64,
    pub key: OrderKey,
    pub lane: Lane,
    /// What the task was started for.
    pub mode: Mode,
    /// The provider lane of an input record that calls a provider.
    pub input_lane: Option<LaneId>,
    /// The provider lane of a record read back from a wait topic.
    pub wait_lane: Option<LaneId>,
    /// That record is in a retry round (`Job::in_retry_round`).
    pub in_retry_round: bool,
    pub outcome: Outcome,
}

impl Done {
    /// The report of a task started for `job`.
    pub fn of(job: &Job, epoch: u64, mode: Mode, outcome: Outcome) -> Self {
        Self {
            tp: job.record.topic_partition(),
            epoch,
            offset: job.record.offset,
            key: job.key.clone(),
            lane: job.lane,
            mode,
            input_lane: job.input_lane(),
            wait_lane: job.wait_lane(),
            in_retry_round: job.in_retry_round(),
            outcome,
        }
    }
}

/// What the runner must do after an event.
#[derive(Debug, Default)]
pub struct Effects {
    pub start: Vec<Start>,
    /// Places to give back to the budget.
    pub released: LaneCounts,
    /// Offsets to store, by partition (the latest wins).
    pub store: HashMap<TopicPartition, StoreOffset>,
    /// Partitions being revoked: cancel their tasks that only wait.
    pub drain: Vec<TopicPartition>,
    /// Partitions whose revocation ended: cancel every task still running for them.
    pub abandon: Vec<TopicPartition>,
    /// Partitions that are no longer assigned (their revocation was answered).
    pub unassigned: Vec<TopicPartition>,
    /// Revocation answers to send.
    pub replies: Vec<Reply>,
    /// Records given up at a revocation deadline (still running, not committed).
    pub abandoned_records: usize,
    /// Records dropped before starting (their partition was revoked, or a repeated offset).
    pub dropped_records: usize,
    /// Provider lanes that changed mode.
    pub lane_changes: Vec<Change>,
}

/// A revocation answer: the committable offsets of the revoked partitions.
#[derive(Debug)]
pub struct Reply {
    pub id: u64,
    pub sender: std_mpsc::SyncSender<Vec<(TopicPartition, i64)>>,
    pub offsets: Vec<(TopicPartition, i64)>,
}

#[derive(Debug)]
struct Partition {
    epoch: u64,
    /// Started, unfinished tasks of this epoch.
    running: usize,
}

#[derive(Debug)]
struct PendingRevocation {
    id: u64,
    partitions: Vec<TopicPartition>,
    sender: std_mpsc::SyncSender<Vec<(TopicPartition, i64)>>,
    deadline: Instant,
}

/// The engine's bookkeeping.
#[derive(Debug)]
pub struct Dispatcher {
    scheduler: KeyScheduler<OrderKey, Arc<Job>>,
    tracker: OffsetTracker,
    partitions: HashMap<TopicPartition, Partition>,
    revocations: Vec<PendingRevocation>,
    revoke_drain_timeout: Duration,
    fatal: Option<ProduceError>,
    /// A fatal error was seen: nothing more starts.
    failed: bool,
    /// Provider isolation (`None`: disabled).
    isolation: Option<Isolation>,
}

/// The provider lanes, their wait topics and the records they hold.
#[derive(Debug)]
struct Isolation {
    lanes: Lanes,
    wait_topics: Vec<(Arc<str>, Provider)>,
    /// Records of lanes that hold (unknown or returning), not yet given to the scheduler, so
    /// they take no key: a record read back from the wait topic must be able to run first.
    held: HashMap<LaneId, VecDeque<Arc<Job>>>,
}

impl Dispatcher {
    pub fn new(revoke_drain_timeout: Duration) -> Self {
        Self {
            scheduler: KeyScheduler::default(),
            tracker: OffsetTracker::default(),
            partitions: HashMap::new(),
            revocations: Vec::new(),
            revoke_drain_timeout,
            fatal: None,
            failed: false,
            isolation: None,
        }
    }

    /// With provider isolation: `lanes` for the enabled providers, whose wait topics are these.
    pub fn with_isolation(mut self, lanes: Lanes, wait_topics: Vec<(Arc<str>, Provider)>) -> Self {
        self.isolation = Some(Isolation {
            lanes,
            wait_topics,
            held: HashMap::new(),
        });
        self
    }

    /// The provider lanes, when isolation is on.
    pub fn lanes(&self) -> Option<&Lanes> {
        self.isolation.as_ref().map(|i| &i.lanes)
    }

    /// Records held by lanes that are unknown or returning.
    pub fn held(&self) -> usize {
        self.isolation
            .as_ref()
            .map_or(0, |i| i.held.values().map(VecDeque::len).sum())
    }

    /// Records arrived (in poll order). Each starts now or waits behind its key.
    pub fn on_jobs(&mut self, jobs: Vec<Job>, fx: &mut Effects) {
        let now = Instant::now();
        for job in jobs {
            let tp = job.record.topic_partition();
            if !self.partitions.contains_key(&tp) {
                // Not (or no longer) ours: the owner reads it.
                fx.released.add(job.lane, 1);
                fx.dropped_records += 1;
                continue;
            }
            if !self.tracker.begin(&tp, job.record.offset) {
                // A repeat of an offset already handed over (a seek back).
                fx.released.add(job.lane, 1);
                fx.dropped_records += 1;
                continue;
            }
            let job = Arc::new(job);
            if let Some(iso) = &mut self.isolation {
                if let Some(lane) = job.input_lane() {
                    if iso.lanes.mode(lane).is_some_and(|m| m.holds()) {
                        iso.held.entry(lane).or_default().push_back(job);
                        continue;
                    }
                }
                if let Some(lane) = job.wait_lane() {
                    let mut changes = Vec::new();
                    iso.lanes
                        .wait_read(lane, job.in_retry_round(), now, &mut changes);
                    self.submit(job, fx);
                    self.apply_lane_changes(changes, fx);
                    continue;
                }
            }
            self.submit(job, fx);
        }
    }

    /// Gives a record to the scheduler: it starts now, or waits behind its key.
    fn submit(&mut self, job: Arc<Job>, fx: &mut Effects) {
        if let Some(job) = self.scheduler.submit(job.key.clone(), job) {
            self.start(job, fx);
        }
    }

    /// Starts a record the scheduler released (its partition is assigned, its key free).
    fn start(&mut self, job: Arc<Job>, fx: &mut Effects) {
        let tp = job.record.topic_partition();
        let Some(partition) = self.partitions.get_mut(&tp) else {
            return;
        };
        partition.running += 1;
        let mut mode = Mode::Process;
        if let (Some(iso), Some(lane)) = (&mut self.isolation, job.input_lane()) {
            if iso.lanes.route(lane) == Route::Divert {
                iso.lanes.divert_started(lane);
                mode = Mode::Divert;
            }
        }
        fx.start.push(Start {
            job,
            epoch: partition.epoch,
            mode,
        });
    }

    /// Acts on lane changes: a lane that stops holding gives its held records to the scheduler,
    /// in order (they start direct, or diverted, by the lane's new mode).
    fn apply_lane_changes(&mut self, changes: Vec<Change>, fx: &mut Effects) {
        let mut pending = changes;
        while !pending.is_empty() {
            let mut released = Vec::new();
            for change in &pending {
                if change.from.holds() && !change.to.holds() {
                    if let Some(iso) = &mut self.isolation {
                        if let Some(held) = iso.held.remove(&change.lane) {
                            released.extend(held);
                        }
                    }
                }
            }
            fx.lane_changes.append(&mut pending);
            for job in released {
                if self.failed {
                    fx.released.add(job.lane, 1);
                    fx.dropped_records += 1;
                } else {
                    self.submit(job, fx);
                }
            }
        }
    }

    /// A provider became blocked (its circuit is not closed, or its share stayed full) or
    /// unblocked: its lanes divert, or may start returning.
    pub fn set_blocked(
        &mut self,
        provider: Provider,
        blocked: bool,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(iso) = &mut self.isolation else {
            return;
        };
        if iso.lanes.is_blocked(provider) == blocked {
            return;
        }
        let mut changes = Vec::new();
        iso.lanes.set_blocked(provider, blocked, now, &mut changes);
        self.apply_lane_changes(changes, fx);
    }

    /// A wait partition was read to its end; `last` is the last offset read from it.
    pub fn on_wait_end(
        &mut self,
        tp: &TopicPartition,
        last: Option<i64>,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(iso) = &mut self.isolation else {
            return;
        };
        let Some(provider) = iso
            .wait_topics
            .iter()
            .find(|(t, _)| **t == *tp.topic)
            .map(|(_, p)| *p)
        else {
            return;
        };
        let mut changes = Vec::new();
        iso.lanes
            .wait_end((provider, tp.partition), last, now, &mut changes);
        self.apply_lane_changes(changes, fx);
    }

    fn is_wait_topic(&self, topic: &str) -> bool {
        self.isolation
            .as_ref()
            .is_some_and(|i| i.wait_topics.iter().any(|(t, _)| &**t == topic))
    }

    /// A task ended.
    pub fn on_done(&mut self, done: Done, now: Instant, fx: &mut Effects) {
        let current = self
            .partitions
            .get_mut(&done.tp)
            .filter(|p| p.epoch == done.epoch);
        let mut changes = Vec::new();
        if let Some(iso) = &mut self.isolation {
            let diverted_at = match &done.outcome {
                Outcome::Finished(Final::Diverted { offset }) => Some(*offset),
                _ => None,
            };
            if let Some(lane) = done.input_lane {
                if done.mode == Mode::Divert {
                    iso.lanes.divert_ended(lane, diverted_at, now, &mut changes);
                } else if let Some(offset) = diverted_at {
                    iso.lanes.diverted(lane, offset, now, &mut changes);
                }
            }
            if let Some(lane) = done.wait_lane {
                if !matches!(done.outcome, Outcome::Panicked(_)) {
                    iso.lanes
                        .wait_finished(lane, done.in_retry_round, now, &mut changes);
                }
            }
        }
        match done.outcome {
            Outcome::Panicked(job) if current.is_some() && !self.failed => {
                // The key stays busy and the record in flight: a new task dead-letters it.
                fx.start.push(Start {
                    job,
                    epoch: done.epoch,
                    mode: Mode::DeadLetterPanicked,
                });
                self.apply_lane_changes(changes, fx);
                return;
            }
            outcome => {
                fx.released.add(done.lane, 1);
                if let Some(partition) = current {
                    partition.running = partition.running.saturating_sub(1);
                    match outcome {
                        Outcome::Finished(_) => {
                            if let Some(next) = self.tracker.finish(&done.tp, done.offset) {
                                fx.store.insert(
                                    done.tp.clone(),
                                    StoreOffset {
                                        tp: done.tp.clone(),
                                        epoch: done.epoch,
                                        next,
                                    },
                                );
                            }
                        }
                        Outcome::Fatal(error) => self.fail(error),
                        Outcome::Cancelled | Outcome::Panicked(_) => {}
                    }
                } else if let Outcome::Fatal(error) = outcome {
                    self.fail(error);
                }
            }
        }
        // Lane changes first: the key's next record starts by the lane's new mode.
        self.apply_lane_changes(changes, fx);
        if let Some(next) = self.scheduler.complete(&done.key) {
            let tp = next.record.topic_partition();
            match self.partitions.get(&tp) {
                Some(_) if !self.failed => self.start(next, fx),
                _ => {
                    fx.released.add(next.lane, 1);
                    fx.dropped_records += 1;
                    // Its key is free again for the records behind it.
                    self.release_key_chain(&next.key, fx);
                }
            }
        }
        self.check_revocations(now, fx);
    }

    fn fail(&mut self, error: ProduceError) {
        self.failed = true;
        self.fatal.get_or_insert(error);
    }

    /// Drops every record queued behind `key` (after a fatal error).
    fn release_key_chain(&mut self, key: &OrderKey, fx: &mut Effects) {
        while let Some(next) = self.scheduler.complete(key) {
            fx.released.add(next.lane, 1);
            fx.dropped_records += 1;
        }
    }

    /// Partitions were assigned with these epochs (input partitions, and with isolation the
    /// wait partitions with the same numbers).
    pub fn on_assigned(
        &mut self,
        partitions: Vec<(TopicPartition, u64)>,
        now: Instant,
        fx: &mut Effects,
    ) {
        let mut changes = Vec::new();
        for (tp, epoch) in partitions {
            if !self.is_wait_topic(&tp.topic) {
                if let Some(iso) = &mut self.isolation {
                    iso.lanes.assign(tp.partition, now, &mut changes);
                }
            }
            self.tracker.assign(tp.clone());
            self.partitions.insert(tp, Partition { epoch, running: 0 });
        }
        self.apply_lane_changes(changes, fx);
    }

    /// A revocation began: queued records of the revoked partitions are dropped (never started,
    /// so the new owner reads them), waiting ones are cancelled, running ones get until the
    /// deadline.
    pub fn on_revoking(&mut self, revoking: Revoking, now: Instant, fx: &mut Effects) {
        let revoked: HashSet<&TopicPartition> = revoking.partitions.iter().collect();
        for job in self
            .scheduler
            .remove_queued(|job| revoked.contains(&job.record.topic_partition()))
        {
            fx.released.add(job.lane, 1);
            fx.dropped_records += 1;
        }
        let wait_partitions: Vec<i32> = revoking
            .partitions
            .iter()
            .filter(|tp| self.is_wait_topic(&tp.topic))
            .map(|tp| tp.partition)
            .collect();
        if let Some(iso) = &mut self.isolation {
            for held in iso.held.values_mut() {
                held.retain(|job| {
                    let gone = revoked.contains(&job.record.topic_partition());
                    if gone {
                        fx.released.add(job.lane, 1);
                        fx.dropped_records += 1;
                    }
                    !gone
                });
            }
            iso.held.retain(|_, h| !h.is_empty());
            for p in wait_partitions {
                iso.lanes.revoke(p);
            }
        }
        fx.drain.extend(revoking.partitions.iter().cloned());
        self.revocations.push(PendingRevocation {
            id: revoking.id,
            partitions: revoking.partitions,
            sender: revoking.reply,
            deadline: now + self.revoke_drain_timeout,
        });
        self.check_revocations(now, fx);
    }

    /// Time passed: answers revocations whose deadline came; lanes that held records too long
    /// divert them.
    pub fn on_tick(&mut self, now: Instant, fx: &mut Effects) {
        if let Some(iso) = &mut self.isolation {
            let mut changes = Vec::new();
            iso.lanes.tick(now, &mut changes);
            self.apply_lane_changes(changes, fx);
        }
        self.check_revocations(now, fx);
    }

    fn check_revocations(&mut self, now: Instant, fx: &mut Effects) {
        let mut i = 0;
        while i < self.revocations.len() {
            let running: usize = self.revocations[i]
                .partitions
                .iter()
                .filter_map(|tp| self.partitions.get(tp))
                .map(|p| p.running)
                .sum();
            if running > 0 && now < self.revocations[i].deadline {
                i += 1;
                continue;
            }
            let revocation = self.revocations.swap_remove(i);
            let mut offsets = Vec::new();
            for tp in &revocation.partitions {
                if let Some(state) = self.tracker.revoke(tp) {
                    if let Some(next) = state.committable() {
                        offsets.push((tp.clone(), next));
                    }
                }
                fx.store.remove(tp);
                if let Some(p) = self.partitions.remove(tp) {
                    if p.running > 0 {
                        fx.abandon.push(tp.clone());
                        fx.abandoned_records += p.running;
                    }
                }
                fx.unassigned.push(tp.clone());
            }
            fx.replies.push(Reply {
                id: revocation.id,
                sender: revocation.sender,
                offsets,
            });
        }
    }

    /// The committable offsets of every assigned partition (for the final commit).
    pub fn committable(&self) -> Vec<StoreOffset> {
        self.tracker
            .committable()
            .into_iter()
            .filter_map(|(tp, next)| {
                let epoch = self.partitions.get(&tp)?.epoch;
                Some(StoreOffset { tp, epoch, next })
            })
            .collect()
    }

    /// The fatal error that stops the engine, once.
    pub fn take_fatal(&mut self) -> Option<ProduceError> {
        self.fatal.take()
    }

    /// True once a fatal error was seen (even after [`Dispatcher::take_fatal`]).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Records waiting behind a running record of their key.
    pub fn queued(&self) -> usize {
        self.scheduler.queued()
    }

    /// Revocations not yet answered.
    pub fn pending_revocations(&self) -> usize {
        self.revocations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::input::InputRecord;
    use crate::engine::worker::Final;
    use crate::event::DecoderSettings;
    use rdkafka::types::RDKafkaErrorCode;

    const T0: u64 = 1;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("in", p)
    }

    /// A ClearSale record of `subject` (keys: equal subjects share an order key).
    fn job(partition: i32, offset: i64, subject: u128) -> Job {
        let id = uuid::Uuid::from_u128(subject);
        let payload =
            format!(r#"{{"analysisId":"{id}","date":"2025-09-26T17:21:11Z","type":"mfa"}}"#);
        Job::new(
            InputRecord {
                topic: Arc::from("in"),
                partition,
                offset,
                key: None,
                payload: Some(payload.into_bytes()),
                headers: Vec::new(),
                timestamp_ms: None,
            },
            &DecoderSettings::default(),
        )
    }

    fn done(start: &Start, outcome: Outcome) -> Done {
        Done::of(&start.job, start.epoch, start.mode, outcome)
    }

    fn finished(start: &Start) -> Done {
        done(start, Outcome::Finished(Final::Published))
    }

    fn assigned(partitions: &[i32]) -> Dispatcher {
        let mut d = Dispatcher::new(Duration::from_secs(10));
        d.on_assigned(
            partitions.iter().map(|p| (tp(*p), T0)).collect(),
            Instant::now(),
            &mut Effects::default(),
        );
        d
    }

    fn revoking(
        id: u64,
        partitions: &[i32],
    ) -> (Revoking, std_mpsc::Receiver<Vec<(TopicPartition, i64)>>) {
        let (reply, answer) = std_mpsc::sync_channel(1);
        (
            Revoking {
                id,
                partitions: partitions.iter().map(|p| tp(*p)).collect(),
                reply,
            },
            answer,
        )
    }

    fn stored(fx: &Effects, p: i32) -> Option<i64> {
        fx.store.get(&tp(p)).map(|s| s.next)
    }

    #[test]
    fn records_arrived_start_at_once_unless_their_key_is_busy() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 2), job(0, 2, 1)], &mut fx);
        let offsets: Vec<i64> = fx.start.iter().map(|s| s.job.record.offset).collect();
        assert_eq!(
            offsets,
            vec![0, 1],
            "offset 2 waits behind offset 0 (same key)"
        );
        assert_eq!(d.queued(), 1);
        assert!(fx
            .start
            .iter()
            .all(|s| s.mode == Mode::Process && s.epoch == T0));
    }

    #[test]
    fn done_starts_the_next_record_of_the_key_and_stores_only_contiguous_offsets() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 2), job(0, 2, 1)], &mut fx);
        let (first, second) = (fx.start.remove(0), fx.start.remove(0));
        let now = Instant::now();

        let mut fx = Effects::default();
        d.on_done(finished(&second), now, &mut fx);
        assert_eq!(
            stored(&fx, 0),
            None,
            "offset 0 is unfinished: nothing is stored"
        );
        assert_eq!(fx.released.total(), 1);

        let mut fx = Effects::default();
        d.on_done(finished(&first), now, &mut fx);
        assert_eq!(stored(&fx, 0), Some(2), "0 and 1 finished: next is 2");
        assert_eq!(fx.start.len(), 1, "the key's next record starts");
        assert_eq!(fx.start[0].job.record.offset, 2);

        let third = fx.start.remove(0);
        let mut fx = Effects::default();
        d.on_done(finished(&third), now, &mut fx);
        assert_eq!(stored(&fx, 0), Some(3));
        assert_eq!(d.committable()[0].next, 3);
    }

    #[test]
    fn records_of_unassigned_partitions_and_repeated_offsets_are_dropped() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(1, 0, 1), job(0, 5, 2)], &mut fx);
        assert_eq!(fx.start.len(), 1);
        assert_eq!(fx.dropped_records, 1);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 5, 3)], &mut fx);
        assert_eq!(fx.start.len(), 0, "offset 5 was already handed over");
        assert_eq!(fx.dropped_records, 1);
        assert_eq!(fx.released.total(), 1);
    }

    #[test]
    fn a_completion_of_an_earlier_assignment_never_stores_for_the_current_one() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1)], &mut fx);
        let old = fx.start.remove(0);
        // Revoked at its deadline, then assigned again with a new epoch.
        let (r, _answer) = revoking(1, &[0]);
        let now = Instant::now();
        d.on_revoking(r, now, &mut Effects::default());
        d.on_tick(now + Duration::from_secs(11), &mut Effects::default());
        d.on_assigned(
            vec![(tp(0), T0 + 1)],
            Instant::now(),
            &mut Effects::default(),
        );
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1)], &mut fx);
        assert!(
            fx.start.is_empty(),
            "the key is still busy with the old task"
        );

        let mut fx = Effects::default();
        d.on_done(finished(&old), now, &mut fx);
        assert_eq!(
            stored(&fx, 0),
            None,
            "an old epoch's completion stores nothing"
        );
        assert_eq!(
            fx.start.len(),
            1,
            "but frees the key: the re-read record starts"
        );
        assert_eq!(fx.start[0].epoch, T0 + 1);
    }

    #[test]
    fn a_revocation_is_answered_when_its_running_records_finish() {
        let mut d = assigned(&[0, 1]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(1, 0, 2), job(0, 1, 1)], &mut fx);
        let (p0, p1) = (fx.start.remove(0), fx.start.remove(0));
        let now = Instant::now();

        let (r, answer) = revoking(7, &[0]);
        let mut fx = Effects::default();
        d.on_revoking(r, now, &mut fx);
        assert_eq!(
            fx.drain,
            vec![tp(0)],
            "waiting tasks of partition 0 are cancelled"
        );
        assert_eq!(
            fx.dropped_records, 1,
            "the queued record of partition 0 is dropped"
        );
        assert!(fx.replies.is_empty(), "a record still runs");
        assert_eq!(d.pending_revocations(), 1);

        let mut fx = Effects::default();
        d.on_done(finished(&p0), now, &mut fx);
        assert_eq!(fx.replies.len(), 1);
        let reply = fx.replies.remove(0);
        assert_eq!(reply.id, 7);
        assert_eq!(reply.offsets, vec![(tp(0), 1)]);
        assert_eq!(fx.unassigned, vec![tp(0)]);
        assert!(fx.abandon.is_empty());
        drop(answer);

        // Partition 1 was not revoked: its record still stores its offset.
        let mut fx = Effects::default();
        d.on_done(finished(&p1), now, &mut fx);
        assert_eq!(stored(&fx, 1), Some(1));
    }

    #[test]
    fn a_revocation_deadline_abandons_what_still_runs() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 2)], &mut fx);
        let (a, _b) = (fx.start.remove(0), fx.start.remove(0));
        let now = Instant::now();
        d.on_done(finished(&a), now, &mut Effects::default());
        let (r, _answer) = revoking(1, &[0]);
        let mut fx = Effects::default();
        d.on_revoking(r, now, &mut fx);
        assert!(fx.replies.is_empty());
        let mut fx = Effects::default();
        d.on_tick(now + Duration::from_secs(9), &mut fx);
        assert!(fx.replies.is_empty(), "before the deadline");
        d.on_tick(now + Duration::from_secs(10), &mut fx);
        assert_eq!(fx.replies.len(), 1);
        assert_eq!(
            fx.replies[0].offsets,
            vec![(tp(0), 1)],
            "only what finished"
        );
        assert_eq!(fx.abandon, vec![tp(0)]);
        assert_eq!(fx.abandoned_records, 1);
    }

    #[test]
    fn a_cancelled_record_is_not_finished() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1)], &mut fx);
        let s = fx.start.remove(0);
        let mut fx = Effects::default();
        d.on_done(done(&s, Outcome::Cancelled), Instant::now(), &mut fx);
        assert_eq!(fx.released.total(), 1);
        assert_eq!(stored(&fx, 0), None);
        assert!(d.committable().is_empty());
    }

    #[test]
    fn a_panicked_record_is_restarted_to_be_dead_lettered_keeping_its_key() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 1)], &mut fx);
        let s = fx.start.remove(0);
        let mut fx = Effects::default();
        d.on_done(
            done(&s, Outcome::Panicked(s.job.clone())),
            Instant::now(),
            &mut fx,
        );
        assert_eq!(fx.start.len(), 1);
        assert_eq!(fx.start[0].mode, Mode::DeadLetterPanicked);
        assert_eq!(fx.start[0].job.record.offset, 0);
        assert!(fx.released.is_empty(), "still in flight");
        let retry = fx.start.remove(0);
        let mut fx = Effects::default();
        d.on_done(finished(&retry), Instant::now(), &mut fx);
        assert_eq!(stored(&fx, 0), Some(1));
        assert_eq!(fx.start[0].job.record.offset, 1, "the key moves on");
    }

    #[test]
    fn a_fatal_error_stops_starting_and_commits_nothing_past_it() {
        let mut d = assigned(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 1), job(0, 2, 1)], &mut fx);
        let s = fx.start.remove(0);
        let fatal = ProduceError::Fatal {
            topic: "out".into(),
            code: RDKafkaErrorCode::Fatal,
            message: "fenced".into(),
        };
        let mut fx = Effects::default();
        d.on_done(done(&s, Outcome::Fatal(fatal)), Instant::now(), &mut fx);
        assert!(fx.start.is_empty(), "nothing more starts");
        assert_eq!(fx.dropped_records, 2, "the key's queue is given back");
        assert_eq!(fx.released.total(), 3);
        assert!(d.is_failed());
        assert!(d.take_fatal().is_some());
        assert!(d.take_fatal().is_none());
        assert!(d.committable().is_empty());
    }

    // Provider isolation.

    const WAIT: &str = "wait.cs";

    fn isolated(partitions: &[i32]) -> (Dispatcher, Instant) {
        let now = Instant::now();
        let mut d = Dispatcher::new(Duration::from_secs(10)).with_isolation(
            Lanes::new(vec![Provider::ClearSale], Duration::from_secs(5)),
            vec![(Arc::from(WAIT), Provider::ClearSale)],
        );
        let mut assigned: Vec<(TopicPartition, u64)> =
            partitions.iter().map(|p| (tp(*p), T0)).collect();
        assigned.extend(
            partitions
                .iter()
                .map(|p| (TopicPartition::new(WAIT, *p), T0)),
        );
        d.on_assigned(assigned, now, &mut Effects::default());
        (d, now)
    }

    /// A ClearSale record read back from the wait topic, diverted from input offset `source`.
    fn wait_job(partition: i32, offset: i64, source: i64, subject: u128) -> Job {
        let mut j = job(partition, source, subject);
        let origin = crate::engine::wait::Origin {
            topic: Arc::from("in"),
            partition,
            offset: source,
            timestamp_ms: None,
            first_seen: None,
            attempts: 0,
            round: 0,
            not_before: None,
        };
        let mut record = j.record.clone();
        record.topic = Arc::from(WAIT);
        record.offset = offset;
        record.headers = crate::engine::wait::headers(
            &origin,
            crate::engine::wait::Reason::CircuitOpen,
            chrono::Utc::now(),
        )
        .into_iter()
        .map(|(k, v)| (k.to_string(), Some(v.into_bytes())))
        .collect();
        j = Job::from_wait(record, Provider::ClearSale, &DecoderSettings::default());
        j
    }

    fn diverted(start: &Start, offset: i64) -> Done {
        done(start, Outcome::Finished(Final::Diverted { offset }))
    }

    fn modes(fx: &Effects) -> Vec<(i64, Mode)> {
        fx.start
            .iter()
            .map(|s| (s.job.record.offset, s.mode))
            .collect()
    }

    #[test]
    fn an_unknown_lane_holds_its_records_until_its_wait_partition_is_read() {
        let (mut d, now) = isolated(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 2), job(0, 2, 1)], &mut fx);
        assert!(
            fx.start.is_empty(),
            "held: the wait partition may hold their keys"
        );
        assert_eq!(d.held(), 3);
        let mut fx = Effects::default();
        d.on_wait_end(&TopicPartition::new(WAIT, 0), None, now, &mut fx);
        assert_eq!(d.held(), 0);
        assert_eq!(
            modes(&fx),
            vec![(0, Mode::Process), (1, Mode::Process)],
            "empty wait partition: direct, in order, offset 2 behind offset 0"
        );
        assert_eq!(fx.lane_changes.len(), 1);
    }

    #[test]
    fn a_diverted_lane_diverts_and_wait_records_do_not_hold_the_input_back() {
        let (mut d, now) = isolated(&[0]);
        let mut fx = Effects::default();
        // An earlier owner left a record of subject 1 in the wait partition.
        d.on_jobs(vec![wait_job(0, 0, 0, 1)], &mut fx);
        assert_eq!(modes(&fx), vec![(0, Mode::Process)], "read back at once");
        let w = fx.start.remove(0);
        assert_eq!(
            d.lanes().unwrap().mode((Provider::ClearSale, 0)),
            Some(super::super::lanes::Mode::Diverted)
        );
        // A new record of the same subject goes behind it in the wait partition, without
        // waiting for it to be processed.
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 5, 1)], &mut fx);
        assert_eq!(modes(&fx), vec![(5, Mode::Divert)]);
        let i = fx.start.remove(0);
        let mut fx = Effects::default();
        d.on_done(diverted(&i, 1), now, &mut fx);
        assert_eq!(
            stored(&fx, 0),
            Some(6),
            "a divert is final for the input offset"
        );
        // Read back to the end and processed: the lane returns.
        let mut fx = Effects::default();
        d.on_jobs(vec![wait_job(0, 1, 5, 1)], &mut fx);
        assert!(
            fx.start.is_empty(),
            "behind the first wait record of its subject"
        );
        d.on_wait_end(&TopicPartition::new(WAIT, 0), Some(1), now, &mut fx);
        let mut fx = Effects::default();
        d.on_done(finished(&w), now, &mut fx);
        assert_eq!(
            modes(&fx),
            vec![(1, Mode::Process)],
            "the wait records keep their order"
        );
        let w2 = fx.start.remove(0);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 6, 1)], &mut fx);
        assert!(
            fx.start.is_empty(),
            "returning: held until the wait records are done"
        );
        let mut fx = Effects::default();
        d.on_done(finished(&w2), now, &mut fx);
        assert_eq!(
            modes(&fx),
            vec![(6, Mode::Process)],
            "direct again, after them"
        );
    }

    #[test]
    fn a_direct_record_that_diverts_itself_diverts_the_next_of_its_key() {
        let (mut d, now) = isolated(&[0]);
        d.on_wait_end(
            &TopicPartition::new(WAIT, 0),
            None,
            now,
            &mut Effects::default(),
        );
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 1)], &mut fx);
        assert_eq!(modes(&fx), vec![(0, Mode::Process)]);
        let first = fx.start.remove(0);
        // Its circuit opened while it waited: it wrote itself to the wait topic.
        let mut fx = Effects::default();
        d.on_done(diverted(&first, 0), now, &mut fx);
        assert_eq!(
            modes(&fx),
            vec![(1, Mode::Divert)],
            "it follows into the wait topic"
        );
    }

    #[test]
    fn blocking_a_provider_diverts_its_lane_and_releases_held_records_as_diverts() {
        let (mut d, now) = isolated(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1), job(0, 1, 2)], &mut fx);
        assert_eq!(d.held(), 2);
        let mut fx = Effects::default();
        d.set_blocked(Provider::ClearSale, true, now, &mut fx);
        assert_eq!(modes(&fx), vec![(0, Mode::Divert), (1, Mode::Divert)]);
    }

    #[test]
    fn a_revocation_drops_held_records_and_the_lanes() {
        let (mut d, now) = isolated(&[0]);
        let mut fx = Effects::default();
        d.on_jobs(vec![job(0, 0, 1)], &mut fx);
        let (r, _answer) = revoking(1, &[0]);
        let mut r = r;
        r.partitions.push(TopicPartition::new(WAIT, 0));
        let mut fx = Effects::default();
        d.on_revoking(r, now, &mut fx);
        assert_eq!(fx.dropped_records, 1);
        assert_eq!(fx.released.total(), 1);
        assert_eq!(d.held(), 0);
        assert_eq!(d.lanes().unwrap().mode((Provider::ClearSale, 0)), None);
        assert_eq!(fx.replies.len(), 1, "nothing ran: answered at once");
    }
}
