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
use super::offsets::{OffsetTracker, TopicPartition};
use super::producer::ProduceError;
use super::scheduler::KeyScheduler;
use super::worker::Final;
use std::collections::{HashMap, HashSet};
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
    pub outcome: Outcome,
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
        }
    }

    /// Records arrived (in poll order). Each starts now or waits behind its key.
    pub fn on_jobs(&mut self, jobs: Vec<Job>, fx: &mut Effects) {
        for job in jobs {
            let tp = job.record.topic_partition();
            let Some(partition) = self.partitions.get_mut(&tp) else {
                // Not (or no longer) ours: the owner reads it.
                fx.released.add(job.lane, 1);
                fx.dropped_records += 1;
                continue;
            };
            if !self.tracker.begin(&tp, job.record.offset) {
                // A repeat of an offset already handed over (a seek back).
                fx.released.add(job.lane, 1);
                fx.dropped_records += 1;
                continue;
            }
            let job = Arc::new(job);
            if let Some(job) = self.scheduler.submit(job.key.clone(), job) {
                partition.running += 1;
                fx.start.push(Start {
                    job,
                    epoch: partition.epoch,
                    mode: Mode::Process,
                });
            }
        }
    }

    /// A task ended.
    pub fn on_done(&mut self, done: Done, now: Instant, fx: &mut Effects) {
        let current = self
            .partitions
            .get_mut(&done.tp)
            .filter(|p| p.epoch == done.epoch);
        match done.outcome {
            Outcome::Panicked(job) if current.is_some() && !self.failed => {
                // The key stays busy and the record in flight: a new task dead-letters it.
                fx.start.push(Start {
                    job,
                    epoch: done.epoch,
                    mode: Mode::DeadLetterPanicked,
                });
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
        if let Some(next) = self.scheduler.complete(&done.key) {
            let tp = next.record.topic_partition();
            match self.partitions.get_mut(&tp) {
                Some(partition) if !self.failed => {
                    partition.running += 1;
                    fx.start.push(Start {
                        job: next,
                        epoch: partition.epoch,
                        mode: Mode::Process,
                    });
                }
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

    /// Partitions were assigned with these epochs.
    pub fn on_assigned(&mut self, partitions: Vec<(TopicPartition, u64)>) {
        for (tp, epoch) in partitions {
            self.tracker.assign(tp.clone());
            self.partitions.insert(tp, Partition { epoch, running: 0 });
        }
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
        fx.drain.extend(revoking.partitions.iter().cloned());
        self.revocations.push(PendingRevocation {
            id: revoking.id,
            partitions: revoking.partitions,
            sender: revoking.reply,
            deadline: now + self.revoke_drain_timeout,
        });
        self.check_revocations(now, fx);
    }

    /// Time passed: answers revocations whose deadline came.
    pub fn on_tick(&mut self, now: Instant, fx: &mut Effects) {
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
        Done {
            tp: start.job.record.topic_partition(),
            epoch: start.epoch,
            offset: start.job.record.offset,
            key: start.job.key.clone(),
            lane: start.job.lane,
            outcome,
        }
    }

    fn finished(start: &Start) -> Done {
        done(start, Outcome::Finished(Final::Published))
    }

    fn assigned(partitions: &[i32]) -> Dispatcher {
        let mut d = Dispatcher::new(Duration::from_secs(10));
        d.on_assigned(partitions.iter().map(|p| (tp(*p), T0)).collect());
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
        d.on_assigned(vec![(tp(0), T0 + 1)]);
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
}
