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
    ends: HashMap<TopicPartition, i64>,
    window: TimeWindow,
    /// Per partition: the next offset to process (stored progress, or the start).
    next: Mutex<HashMap<TopicPartition, i64>>,
    finished: CancellationToken,
}

impl Bounds {
    /// Bounds over `ranges`; a partition that is not among them has nothing to process.
    pub fn new(ranges: &[PartitionRange], window: TimeWindow) -> Self {
        let bounds = Self {
            ends: ranges.iter().map(|r| (r.tp.clone(), r.end)).collect(),
            window,
            next: Mutex::new(
                ranges
                    .iter()
                    .map(|r| (r.tp.clone(), r.start.min(r.end)))
                    .collect(),
            ),
            finished: CancellationToken::new(),
        };
        bounds.check_finished(&lock(&bounds.next));
        bounds
    }

    /// What to do with the record at `offset` of `tp`, with this timestamp.
    pub fn check(&self, tp: &TopicPartition, offset: i64, timestamp_ms: Option<i64>) -> Check {
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
        let mut progress = lock(&self.next);
        if let Some(n) = progress.get_mut(tp) {
            *n = (*n).max(next);
        }
        self.check_finished(&progress);
    }

    fn check_finished(&self, progress: &HashMap<TopicPartition, i64>) {
        let done = self
            .ends
            .iter()
            .all(|(tp, end)| progress.get(tp).is_some_and(|n| n >= end));
        if done {
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

    /// Per partition: the next offset to process and the end, in partition order.
    pub fn progress(&self) -> Vec<(TopicPartition, i64, i64)> {
        let progress = lock(&self.next);
        let mut out: Vec<(TopicPartition, i64, i64)> = self
            .ends
            .iter()
            .map(|(tp, end)| (tp.clone(), progress.get(tp).copied().unwrap_or(*end), *end))
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
    fn a_range_with_nothing_to_process_is_finished_from_the_start() {
        assert!(
            Bounds::new(&[range(0, 7, 7), range(1, 9, 4)], TimeWindow::default()).is_finished()
        );
        assert!(Bounds::new(&[], TimeWindow::default()).is_finished());
    }
}
