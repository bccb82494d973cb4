//! Which offset may be committed: per partition, the offset after the highest record such that
//! it and every earlier record of the partition have a final outcome.
//!
//! Offsets are ordered as seen, not assumed contiguous (compacted topics and transaction markers
//! leave gaps), so "earlier" means "an earlier offset that was handed to us".

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A partition of a topic. Cheap to clone (the topic name is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// The in-flight offsets of one partition.
///
/// Offsets arrive in increasing order, so they are kept in a ring in arrival order: `begin` is
/// a push at the back, `finish` a binary search, and the committable offset moves by popping
/// finished records off the front.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    /// (offset, finished?) in increasing offset order.
    pending: VecDeque<(i64, bool)>,
    /// The next offset to commit (one past the last finished contiguous record), once known.
    committable: Option<i64>,
}

impl PartitionOffsets {
    /// A record at `offset` was received. Offsets must arrive in increasing order; a repeat or an
    /// older offset (a seek back) is ignored and returns false.
    pub fn begin(&mut self, offset: i64) -> bool {
        let newest = self
            .pending
            .back()
            .map(|(o, _)| *o)
            .or(self.committable.map(|c| c - 1));
        if newest.is_some_and(|n| offset <= n) {
            return false;
        }
        self.pending.push_back((offset, false));
        true
    }

    /// The record at `offset` has a final outcome. Returns the new committable offset when it
    /// moved forward.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        let i = self
            .pending
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()?;
        self.pending[i].1 = true;
        let mut moved = None;
        while let Some(&(first, true)) = self.pending.front() {
            self.pending.pop_front();
            moved = Some(first + 1);
        }
        if moved.is_some() {
            self.committable = moved;
        }
        moved
    }

    /// The next offset to commit, if any record has finished.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Records received and not yet finished (or finished behind an unfinished one).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Records received and not finished yet.
    pub fn unfinished(&self) -> usize {
        self.pending.iter().filter(|(_, done)| !done).count()
    }

    /// True when the record at `offset` was received and is not finished yet.
    pub fn is_unfinished(&self, offset: i64) -> bool {
        self.pending
            .binary_search_by_key(&offset, |(o, _)| *o)
            .is_ok_and(|i| !self.pending[i].1)
    }

    /// The oldest unfinished offset.
    pub fn oldest_unfinished(&self) -> Option<i64> {
        self.pending.iter().find(|(_, done)| !done).map(|(o, _)| *o)
    }
}

/// Offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionOffsets>,
}

impl OffsetTracker {
    /// Starts tracking a partition (on assignment). Existing state is kept.
    pub fn assign(&mut self, tp: TopicPartition) {
        self.partitions.entry(tp).or_default();
    }

    /// Stops tracking a partition (on revocation); returns its final state.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<PartitionOffsets> {
        self.partitions.remove(tp)
    }

    /// True when the partition is tracked (assigned to us).
    pub fn is_assigned(&self, tp: &TopicPartition) -> bool {
        self.partitions.contains_key(tp)
    }

    /// See [`PartitionOffsets::begin`]. Unassigned partitions are tracked from their first record.
    pub fn begin(&mut self, tp: &TopicPartition, offset: i64) -> bool {
        self.partitions.entry(tp.clone()).or_default().begin(offset)
    }

    /// See [`PartitionOffsets::finish`]. Finishing a record of an unassigned partition does
    /// nothing (it was revoked while in flight; its new owner reprocesses it).
    pub fn finish(&mut self, tp: &TopicPartition, offset: i64) -> Option<i64> {
        self.partitions.get_mut(tp)?.finish(offset)
    }

    /// The committable offset of every partition that has one.
    pub fn committable(&self) -> Vec<(TopicPartition, i64)> {
        let mut v: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(tp, p)| p.committable().map(|c| (tp.clone(), c)))
            .collect();
        v.sort();
        v
    }

    /// Unfinished records across partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionOffsets::in_flight)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_passes_an_unfinished_record_when_completions_arrive_out_of_order() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            assert!(p.begin(o));
        }
        assert_eq!(p.finish(12), None);
        assert_eq!(p.finish(14), None);
        assert_eq!(p.committable(), None);
        assert_eq!(p.finish(10), Some(11));
        assert_eq!(p.finish(11), Some(13), "11 done and 12 done: next is 13");
        assert_eq!(p.oldest_unfinished(), Some(13));
        assert_eq!(p.finish(13), Some(15));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut p = PartitionOffsets::default();
        p.begin(3);
        p.begin(7);
        assert_eq!(p.finish(7), None);
        assert_eq!(p.finish(3), Some(8));
    }

    #[test]
    fn repeats_and_unknown_offsets_are_ignored() {
        let mut p = PartitionOffsets::default();
        assert!(p.begin(5));
        assert!(!p.begin(5));
        assert!(!p.begin(4));
        assert_eq!(p.finish(99), None);
        assert_eq!(p.finish(5), Some(6));
        assert!(
            !p.begin(5),
            "an offset at or below the committed one is a replay"
        );
        assert!(p.begin(6));
    }

    #[test]
    fn randomized_completion_orders_keep_the_invariant() {
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        for _ in 0..200 {
            let mut p = PartitionOffsets::default();
            let offsets: Vec<i64> = (0..40).collect();
            for o in &offsets {
                p.begin(*o);
            }
            let mut order = offsets.clone();
            order.shuffle(&mut rng);
            let mut finished = std::collections::BTreeSet::new();
            for o in order {
                finished.insert(o);
                if let Some(c) = p.finish(o) {
                    assert!(
                        (0..c).all(|x| finished.contains(&x)),
                        "committed {c} past an unfinished record"
                    );
                }
            }
            assert_eq!(p.committable(), Some(40));
        }
    }

    #[test]
    fn tracker_ignores_revoked_partitions() {
        let mut t = OffsetTracker::default();
        let a = TopicPartition::new("in", 0);
        t.assign(a.clone());
        t.begin(&a, 1);
        t.begin(&a, 2);
        assert_eq!(t.in_flight(), 2);
        let state = t.revoke(&a).unwrap();
        assert_eq!(state.in_flight(), 2);
        assert_eq!(t.finish(&a, 1), None);
        assert!(t.committable().is_empty());
    }
}
