//! The pending store: per partition of the expectations topic, the expectations waiting for
//! their webhook, their poll schedule, and the committable offset. Pure bookkeeping (no I/O, no
//! clock: every time is passed in), owned by the fallback task.
//!
//! An expectation's offset is final only once the expectation is resolved (by a webhook, by a
//! poll, or by giving up with its dead letter acknowledged), so the committable offset of a
//! partition never passes an expectation still waiting: after a crash it is read again.

use super::expectation::{Expectation, SeenResult};
use super::settings::FallbackSettings;
use crate::engine::offsets::{PartitionOffsets, TopicPartition};
use crate::provider::Provider;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use uuid::Uuid;

/// The delay before the poll after `polls_done` polls that were not final: `poll_interval`
/// doubling per poll, capped at `max_poll_interval`.
pub fn backoff(settings: &FallbackSettings, polls_done: u32) -> Duration {
    let exp = polls_done.saturating_sub(1).min(30);
    settings
        .poll_interval
        .saturating_mul(1u32 << exp)
        .min(settings.max_poll_interval)
}

/// When the first poll is due: `after` past the expectation's creation (at once if that passed).
pub fn first_poll(settings: &FallbackSettings, e: &Expectation) -> DateTime<Utc> {
    add(e.created_at, settings.after)
}

/// When the fallback gives up: the expectation's `deadline`, else `created_at + max_wait`.
pub fn give_up_at(settings: &FallbackSettings, e: &Expectation) -> DateTime<Utc> {
    e.deadline
        .unwrap_or_else(|| add(e.created_at, settings.max_wait))
}

/// What follows a poll whose answer was not final, made at `now` after `polls_done` polls
/// (this one included): the next poll's due time, or `None` to give up. There is always at
/// least one poll (the first is made even when the expectation is read after its deadline), and
/// the last one is made at the deadline itself.
pub fn after_not_final(
    settings: &FallbackSettings,
    give_up: DateTime<Utc>,
    polls_done: u32,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if now >= give_up {
        return None;
    }
    Some(add(now, backoff(settings, polls_done)).min(give_up))
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The handle of a pending expectation.
pub type EntryId = u64;

/// One expectation waiting.
#[derive(Debug)]
pub struct Entry<R> {
    pub tp: TopicPartition,
    pub offset: i64,
    pub expectation: Expectation,
    /// The record it came from (dead letters and lineage).
    pub record: R,
    /// When the next poll is due.
    pub due: DateTime<Utc>,
    pub give_up: DateTime<Utc>,
    /// Polls made so far.
    pub polls: u32,
    /// A poll is running for it.
    pub polling: bool,
}

/// An offset to store for the next commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committable {
    pub tp: TopicPartition,
    pub epoch: u64,
    pub next: i64,
}

struct PartitionState {
    epoch: u64,
    offsets: PartitionOffsets,
}

/// How an expectation read from the topic was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Waiting, with this handle.
    Pending(EntryId),
    /// Its offset is tracked, but it is resolved by the caller (a dead letter being written,
    /// or a result already seen): call [`Pending::finish`] when that is done.
    Tracked,
    /// Not taken: its partition is not assigned, or the offset was already seen.
    Ignored,
}

/// The pending expectations of the partitions this instance owns.
pub struct Pending<R> {
    entries: HashMap<EntryId, Entry<R>>,
    by_subject: HashMap<(Provider, Uuid), BTreeSet<EntryId>>,
    partitions: HashMap<TopicPartition, PartitionState>,
    next_id: EntryId,
    /// Offsets taken in and not yet final (entries plus tracked ones): what the bound counts.
    open: usize,
}

impl<R> Default for Pending<R> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_subject: HashMap::new(),
            partitions: HashMap::new(),
            next_id: 0,
            open: 0,
        }
    }
}

impl<R> Pending<R> {
    /// A partition was assigned (a new epoch: any earlier state of it is gone).
    pub fn assign(&mut self, tp: TopicPartition, epoch: u64) {
        let dropped = self.drop_partition(&tp);
        debug_assert_eq!(dropped, 0, "assigned twice without a revocation");
        self.partitions.insert(
            tp,
            PartitionState {
                epoch,
                offsets: PartitionOffsets::default(),
            },
        );
    }

    /// A partition was revoked: its expectations are forgotten (the next owner reads them
    /// again from the last commit). Returns how many open offsets it held.
    pub fn revoke(&mut self, tp: &TopicPartition) -> usize {
        let dropped = self.drop_partition(tp);
        self.partitions.remove(tp);
        dropped
    }

    fn drop_partition(&mut self, tp: &TopicPartition) -> usize {
        let Some(state) = self.partitions.get(tp) else {
            return 0;
        };
        let open = state.offsets.unfinished();
        let ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|(_, e)| &e.tp == tp)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove_entry(id);
        }
        self.open = self.open.saturating_sub(open);
        open
    }

    /// Offsets taken in and not final yet (the `max_pending` bound).
    pub fn open(&self) -> usize {
        self.open
    }

    /// Expectations waiting (a subset of [`open`](Self::open)).
    pub fn waiting(&self) -> usize {
        self.entries.len()
    }

    /// Tracks the offset of a record that the caller resolves itself.
    pub fn track(&mut self, tp: &TopicPartition, offset: i64) -> Admitted {
        let Some(state) = self.partitions.get_mut(tp) else {
            return Admitted::Ignored;
        };
        if !state.offsets.begin(offset) {
            return Admitted::Ignored;
        }
        self.open += 1;
        Admitted::Tracked
    }

    /// Takes in an expectation to wait for.
    pub fn insert(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        expectation: Expectation,
        record: R,
        due: DateTime<Utc>,
        give_up: DateTime<Utc>,
    ) -> Admitted {
        if self.track(tp, offset) == Admitted::Ignored {
            return Admitted::Ignored;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.by_subject
            .entry((expectation.provider, expectation.subject_id))
            .or_default()
            .insert(id);
        self.entries.insert(
            id,
            Entry {
                tp: tp.clone(),
                offset,
                expectation,
                record,
                due,
                give_up,
                polls: 0,
                polling: false,
            },
        );
        Admitted::Pending(id)
    }

    pub fn get(&self, id: EntryId) -> Option<&Entry<R>> {
        self.entries.get(&id)
    }

    /// The waiting expectations a published webhook result resolves.
    pub fn matching(&self, provider: Provider, subject: Uuid, seen: &SeenResult) -> Vec<EntryId> {
        self.by_subject
            .get(&(provider, subject))
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                self.entries
                    .get(id)
                    .is_some_and(|e| e.expectation.matched_by(seen))
            })
            .collect()
    }

    /// The expectations whose poll is due at `now` and not running; they are marked running.
    pub fn take_due(&mut self, now: DateTime<Utc>, max: usize) -> Vec<EntryId> {
        let mut due: Vec<(DateTime<Utc>, EntryId)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.polling && e.due <= now)
            .map(|(id, e)| (e.due, *id))
            .collect();
        due.sort();
        due.truncate(max);
        for (_, id) in &due {
            if let Some(e) = self.entries.get_mut(id) {
                e.polling = true;
                e.polls = e.polls.saturating_add(1);
            }
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// The earliest due time of an expectation not being polled.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.entries
            .values()
            .filter(|e| !e.polling)
            .map(|e| e.due)
            .min()
    }

    /// A poll ended without a final answer: poll again at `due`.
    pub fn reschedule(&mut self, id: EntryId, due: DateTime<Utc>) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.polling = false;
            e.due = due;
        }
    }

    /// Removes a waiting expectation whose resolution the caller now carries out (a record or a
    /// dead letter to write); its offset stays open until [`finish`](Self::finish).
    pub fn detach(&mut self, id: EntryId) -> Option<Entry<R>> {
        self.remove_entry(id)
    }

    /// The expectation at `offset` is resolved: returns the offset to store when the partition's
    /// committable offset moved (`None` also when the partition was revoked meanwhile).
    pub fn finish(&mut self, tp: &TopicPartition, offset: i64) -> Option<Committable> {
        let state = self.partitions.get_mut(tp)?;
        if state.offsets.is_unfinished(offset) {
            self.open = self.open.saturating_sub(1);
        }
        let moved = state.offsets.finish(offset);
        moved.map(|next| Committable {
            tp: tp.clone(),
            epoch: state.epoch,
            next,
        })
    }

    /// Resolves a waiting expectation at once (its webhook came): removes it and finishes its
    /// offset.
    pub fn resolve(&mut self, id: EntryId) -> Option<(Entry<R>, Option<Committable>)> {
        let entry = self.remove_entry(id)?;
        let stored = self.finish(&entry.tp, entry.offset);
        Some((entry, stored))
    }

    fn remove_entry(&mut self, id: EntryId) -> Option<Entry<R>> {
        let entry = self.entries.remove(&id)?;
        let key = (entry.expectation.provider, entry.expectation.subject_id);
        if let Some(ids) = self.by_subject.get_mut(&key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_subject.remove(&key);
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::super::expectation::Expect;
    use super::*;

    fn settings() -> FallbackSettings {
        FallbackSettings {
            poll_interval: Duration::from_secs(2),
            max_poll_interval: Duration::from_secs(30),
            ..FallbackSettings::default()
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn unico(id: u128, statuses: &[u8]) -> Expectation {
        Expectation {
            provider: Provider::Unico,
            subject_id: Uuid::from_u128(id),
            created_at: t(0),
            deadline: None,
            expect: Expect::UnicoStatuses(statuses.iter().copied().collect()),
        }
    }

    #[test]
    fn backoff_doubles_from_the_interval_to_the_cap() {
        let s = settings();
        let delays: Vec<u64> = (1..=7).map(|n| backoff(&s, n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            backoff(&s, u32::MAX),
            Duration::from_secs(30),
            "no overflow"
        );
    }

    #[test]
    fn the_schedule_starts_after_creation_and_ends_at_the_deadline() {
        let s = FallbackSettings {
            after: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
            ..settings()
        };
        let mut e = unico(1, &[3]);
        assert_eq!(first_poll(&s, &e), t(10));
        assert_eq!(give_up_at(&s, &e), t(60));
        e.deadline = Some(t(20));
        assert_eq!(give_up_at(&s, &e), t(20), "the producer's deadline wins");
        // Not final at 10 after one poll: next at 12; the last poll lands on the deadline.
        assert_eq!(after_not_final(&s, t(60), 1, t(10)), Some(t(12)));
        assert_eq!(after_not_final(&s, t(60), 5, t(50)), Some(t(60)));
        assert_eq!(after_not_final(&s, t(60), 6, t(60)), None, "given up");
        // Read long after its deadline: the first poll is still made, then it gives up.
        assert_eq!(after_not_final(&s, t(20), 1, t(500)), None);
    }

    #[test]
    fn offsets_are_committable_only_past_resolved_expectations() {
        let tp = TopicPartition::new("exp", 0);
        let mut p: Pending<()> = Pending::default();
        p.assign(tp.clone(), 7);
        let a = p.insert(&tp, 10, unico(1, &[3]), (), t(10), t(60));
        let b = p.insert(&tp, 11, unico(2, &[3]), (), t(10), t(60));
        let (Admitted::Pending(a), Admitted::Pending(b)) = (a, b) else {
            panic!("both pending");
        };
        assert_eq!(p.open(), 2);
        // The later one resolves first: nothing to commit yet.
        let (_, stored) = p.resolve(b).unwrap();
        assert_eq!(stored, None);
        let (_, stored) = p.resolve(a).unwrap();
        assert_eq!(
            stored,
            Some(Committable {
                tp: tp.clone(),
                epoch: 7,
                next: 12
            })
        );
        assert_eq!(p.open(), 0);
        assert_eq!(
            p.insert(&tp, 11, unico(2, &[3]), (), t(0), t(0)),
            Admitted::Ignored,
            "an old offset"
        );
        let other = TopicPartition::new("exp", 1);
        assert_eq!(p.track(&other, 0), Admitted::Ignored, "not assigned");
    }

    #[test]
    fn a_webhook_result_resolves_only_the_expectations_it_matches() {
        let tp = TopicPartition::new("exp", 0);
        let mut p: Pending<()> = Pending::default();
        p.assign(tp.clone(), 1);
        let Admitted::Pending(final_only) =
            p.insert(&tp, 0, unico(1, &[3, 4, 5]), (), t(10), t(60))
        else {
            panic!()
        };
        let Admitted::Pending(divergence) = p.insert(&tp, 1, unico(1, &[2]), (), t(10), t(60))
        else {
            panic!()
        };
        assert_eq!(
            p.matching(
                Provider::Unico,
                Uuid::from_u128(1),
                &SeenResult::UnicoStatus(3)
            ),
            vec![final_only]
        );
        assert_eq!(
            p.matching(
                Provider::Unico,
                Uuid::from_u128(1),
                &SeenResult::UnicoStatus(2)
            ),
            vec![divergence]
        );
        assert!(p
            .matching(
                Provider::Unico,
                Uuid::from_u128(2),
                &SeenResult::UnicoStatus(3)
            )
            .is_empty());
        assert!(p
            .matching(
                Provider::ClearSale,
                Uuid::from_u128(1),
                &SeenResult::UnicoStatus(3)
            )
            .is_empty());
    }

    #[test]
    fn due_polls_are_taken_once_in_due_order_and_rescheduled() {
        let tp = TopicPartition::new("exp", 0);
        let mut p: Pending<()> = Pending::default();
        p.assign(tp.clone(), 1);
        let Admitted::Pending(late) = p.insert(&tp, 0, unico(1, &[3]), (), t(20), t(60)) else {
            panic!()
        };
        let Admitted::Pending(early) = p.insert(&tp, 1, unico(2, &[3]), (), t(10), t(60)) else {
            panic!()
        };
        assert!(p.take_due(t(5), 10).is_empty());
        assert_eq!(p.next_due(), Some(t(10)));
        assert_eq!(p.take_due(t(30), 10), vec![early, late]);
        assert!(
            p.take_due(t(30), 10).is_empty(),
            "running polls are not taken again"
        );
        assert_eq!(p.next_due(), None);
        p.reschedule(early, t(40));
        assert_eq!(p.next_due(), Some(t(40)));
        assert_eq!(p.get(early).unwrap().polls, 1);
        assert_eq!(p.take_due(t(40), 1), vec![early]);
        assert_eq!(p.get(early).unwrap().polls, 2);
    }

    #[test]
    fn revocation_forgets_the_partition_and_frees_its_places() {
        let tp = TopicPartition::new("exp", 0);
        let mut p: Pending<()> = Pending::default();
        p.assign(tp.clone(), 1);
        let Admitted::Pending(id) = p.insert(&tp, 0, unico(1, &[3]), (), t(10), t(60)) else {
            panic!()
        };
        assert_eq!(p.track(&tp, 1), Admitted::Tracked);
        assert_eq!(p.open(), 2);
        assert_eq!(p.revoke(&tp), 2);
        assert_eq!(p.open(), 0);
        assert_eq!(p.waiting(), 0);
        assert!(p.get(id).is_none());
        assert_eq!(
            p.finish(&tp, 1),
            None,
            "a late finish of a revoked partition stores nothing"
        );
        assert!(p
            .matching(
                Provider::Unico,
                Uuid::from_u128(1),
                &SeenResult::UnicoStatus(3)
            )
            .is_empty());
    }
}
