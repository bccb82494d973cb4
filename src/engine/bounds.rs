//! A bounded run (`webhook-enricher replay`): each partition has an end offset (exclusive) and
//! records may have to fall inside a time window.
//!
//! The engine reads the bounds at three points, and nowhere else:
//!
//! - the consumer thread hands over no record at or past its partition's end (it pauses the
//!   partition instead), and marks a record whose own timestamp falls outside the window as
//!   filtered ([`Bounds::check`]);
//! - the worker finishes a filtered record at once, counted as "filtered out by time" and
//!   committed like any other final outcome, so a resumed replay does not read it again;
//! - every offset the engine stores for commit is reported ([`Bounds::stored`]): once each
//!   partition's stored offset reached its end, [`Bounds::finished`] resolves and the run drains
//!   and stops as on a shutdown signal.
//!
//! A partition whose start is already at its end is done from the start.

use super::offsets::TopicPartition;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Records to process: `from_ms <= timestamp < to_ms` (milliseconds since the epoch), each side
/// optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl TimeWindow {
    /// Whether a record with this timestamp is inside the window. A record without a timestamp
    /// cannot be placed, so it is inside (processed rather than silently left out).
    pub fn contains(&self, timestamp_ms: Option<i64>) -> bool {
        let Some(ts) = timestamp_ms else {
            return true;
        };
        self.from_ms.is_none_or(|from| ts >= from) && self.to_ms.is_none_or(|to| ts < to)
    }

    /// True when neither side is set.
    pub fn is_unbounded(&self) -> bool {
        self.from_ms.is_none() && self.to_ms.is_none()
    }
}

/// What to do with a polled record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Before its partition's start (the consumer was positioned earlier, on a broker that
    /// cannot fetch from the start itself): skip it, it is not part of the range.
    BeforeStart,
    /// Inside the range: process it.
    Process,
    /// Inside the offset range but outside the time window: finish it as filtered.
    Filtered,
    /// At or past its partition's end (or of a partition outside the range): do not hand it
    /// over.
    PastEnd,
}

/// One partition's range: the first offset to process and the end (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub tp: TopicPartition,
    pub start: i64,
    pub end: i64,
}

/// The bounds of a run, shared by the consumer thread, the workers and the caller.
#[derive(Debug)]
pub struct Bounds {
    starts: HashMap<TopicPartition, i64>,
    ends: HashMap<TopicPartition, i64>,
    window: TimeWindow,
    /// `replay --renormalize`: the records are enriched records to rebuild, not webhooks.
    renormalize: bool,
    /// Per partition: the next offset to process (stored progress, or the start) and where
    /// the partition is done (its end, or less once the consumer saw the end, see
    /// [`Bounds::reached_end`]).
    state: Mutex<HashMap<TopicPartition, Progress>>,
    finished: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    next: i64,
    done_at: i64,
}

impl Bounds {
    /// Bounds over `ranges`; a partition that is not among them has nothing to process.
    pub fn new(ranges: &[PartitionRange], window: TimeWindow) -> Self {
        let bounds = Self {
            starts: ranges.iter().map(|r| (r.tp.clone(), r.start)).collect(),
            ends: ranges.iter().map(|r| (r.tp.clone(), r.end)).collect(),
            window,
            renormalize: false,
            state: Mutex::new(
                ranges
                    .iter()
                    .map(|r| {
                        let p = Progress {
                            next: r.start.min(r.end),
                            done_at: r.end,
                        };
                        (r.tp.clone(), p)
                    })
                    .collect(),
            ),
            finished: CancellationToken::new(),
        };
        bounds.check_finished(&lock(&bounds.state));
        bounds
    }

    /// The records are enriched records to rebuild from their `raw_response`
    /// (`replay --renormalize`, see `crate::renormalize`), not webhooks to enrich.
    pub fn renormalizing(mut self) -> Self {
        self.renormalize = true;
        self
    }

    /// True when the records are to be rebuilt rather than enriched.
    pub fn renormalize(&self) -> bool {
        self.renormalize
    }

    /// What to do with the record at `offset` of `tp`, with this timestamp.
    pub fn check(&self, tp: &TopicPartition, offset: i64, timestamp_ms: Option<i64>) -> Check {
        if self.starts.get(tp).is_some_and(|start| offset < *start) {
            return Check::BeforeStart;
        }
        match self.ends.get(tp) {
            Some(end) if offset < *end => {
                if self.window.contains(timestamp_ms) {
                    Check::Process
                } else {
                    Check::Filtered
                }
            }
            _ => Check::PastEnd,
        }
    }

    /// The engine stored `next` as the next offset to commit of `tp` (every record before it
    /// has its final outcome).
    pub fn stored(&self, tp: &TopicPartition, next: i64) {
        let mut state = lock(&self.state);
        if let Some(p) = state.get_mut(tp) {
            p.next = p.next.max(next);
        }
        self.check_finished(&state);
    }

    /// The consumer read a record at or past the end of `tp`: the records of the range are all
    /// handed over, the last of them at `last` (`None`: none in this process). The partition is
    /// then done once that one is, even if the offsets up to the end hold no record (a
    /// transaction marker, or records removed by compaction, just before the end).
    pub fn reached_end(&self, tp: &TopicPartition, last: Option<i64>) {
        let mut state = lock(&self.state);
        if let Some(p) = state.get_mut(tp) {
            p.done_at = match last {
                Some(last) => p.done_at.min(last + 1),
                None => p.done_at.min(p.next),
            };
        }
        self.check_finished(&state);
    }

    fn check_finished(&self, state: &HashMap<TopicPartition, Progress>) {
        if state.values().all(|p| p.next >= p.done_at) {
            self.finished.cancel();
        }
    }

    /// Resolves once every partition reached its end.
    pub async fn finished(&self) {
        self.finished.cancelled().await;
    }

    /// True once every partition reached its end.
    pub fn is_finished(&self) -> bool {
        self.finished.is_cancelled()
    }

    /// Per partition: the next offset to process and where it is done, in partition order.
    pub fn progress(&self) -> Vec<(TopicPartition, i64, i64)> {
        let state = lock(&self.state);
        let mut out: Vec<(TopicPartition, i64, i64)> = state
            .iter()
            .map(|(tp, p)| (tp.clone(), p.next.min(p.done_at), p.done_at))
            .collect();
        out.sort_by(|a, b| (&*a.0.topic, a.0.partition).cmp(&(&*b.0.topic, b.0.partition)));
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A plain map updated in single statements: still valid after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(partition: i32, start: i64, end: i64) -> PartitionRange {
        PartitionRange {
            tp: TopicPartition::new("in", partition),
            start,
            end,
        }
    }

    #[test]
    fn records_at_or_past_the_end_and_of_other_partitions_are_not_processed() {
        let b = Bounds::new(&[range(0, 10, 20)], TimeWindow::default());
        let tp = TopicPartition::new("in", 0);
        assert_eq!(b.check(&tp, 9, None), Check::BeforeStart);
        assert_eq!(b.check(&tp, 10, None), Check::Process);
        assert_eq!(b.check(&tp, 19, None), Check::Process);
        assert_eq!(b.check(&tp, 20, None), Check::PastEnd);
        assert_eq!(
            b.check(&TopicPartition::new("in", 1), 0, None),
            Check::PastEnd
        );
        assert_eq!(
            b.check(&TopicPartition::new("other", 0), 0, None),
            Check::PastEnd
        );
    }

    #[test]
    fn the_window_includes_its_start_and_excludes_its_end() {
        let w = TimeWindow {
            from_ms: Some(1_000),
            to_ms: Some(2_000),
        };
        let b = Bounds::new(&[range(0, 0, 100)], w);
        let tp = TopicPartition::new("in", 0);
        assert_eq!(b.check(&tp, 0, Some(999)), Check::Filtered);
        assert_eq!(b.check(&tp, 0, Some(1_000)), Check::Process);
        assert_eq!(b.check(&tp, 0, Some(1_999)), Check::Process);
        assert_eq!(b.check(&tp, 0, Some(2_000)), Check::Filtered);
        assert_eq!(b.check(&tp, 0, None), Check::Process);
        assert!(TimeWindow::default().contains(Some(i64::MIN)));
    }

    #[test]
    fn finishes_when_every_partition_stored_its_end() {
        let b = Bounds::new(&[range(0, 0, 3), range(1, 5, 5)], TimeWindow::default());
        assert!(!b.is_finished(), "partition 0 has records to process");
        b.stored(&TopicPartition::new("in", 0), 2);
        assert!(!b.is_finished());
        // Progress of a partition outside the range changes nothing.
        b.stored(&TopicPartition::new("in", 7), 100);
        assert!(!b.is_finished());
        b.stored(&TopicPartition::new("in", 0), 3);
        assert!(b.is_finished());
        assert_eq!(
            b.progress(),
            vec![
                (TopicPartition::new("in", 0), 3, 3),
                (TopicPartition::new("in", 1), 5, 5)
            ]
        );
    }

    #[test]
    fn a_partition_whose_last_offsets_hold_no_record_is_done_once_its_last_record_is() {
        let b = Bounds::new(&[range(0, 0, 10), range(1, 4, 8)], TimeWindow::default());
        let (p0, p1) = (TopicPartition::new("in", 0), TopicPartition::new("in", 1));
        // Offsets 8 and 9 hold no record: the consumer's next record is at 10.
        b.reached_end(&p0, Some(7));
        assert!(!b.is_finished(), "record 7 is not done yet");
        b.stored(&p0, 8);
        assert!(!b.is_finished(), "partition 1 is not done");
        // Partition 1 holds no record in its range at all.
        b.reached_end(&p1, None);
        assert!(b.is_finished());
        assert_eq!(b.progress(), vec![(p0, 8, 8), (p1, 4, 4)]);
    }

    #[test]
    fn a_range_with_nothing_to_process_is_finished_from_the_start() {
        assert!(
            Bounds::new(&[range(0, 7, 7), range(1, 9, 4)], TimeWindow::default()).is_finished()
        );
        assert!(Bounds::new(&[], TimeWindow::default()).is_finished());
    }
}
