//! Key-ordered scheduling: records with the same key run strictly one after another in arrival
//! (offset) order; records with different keys run concurrently.
//!
//! Pure bookkeeping: the engine asks [`KeyScheduler::submit`] whether a record may start now, and
//! on completion [`KeyScheduler::complete`] hands back the next record of that key, if any.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Per-key FIFO queues. `K` is the ordering key, `T` the queued work.
#[derive(Debug)]
pub struct KeyScheduler<K, T> {
    /// Keys with a record running; the queue holds the records waiting behind it.
    active: HashMap<K, VecDeque<T>>,
    queued: usize,
}

impl<K: Eq + Hash + Clone, T> Default for KeyScheduler<K, T> {
    fn default() -> Self {
        Self {
            active: HashMap::new(),
            queued: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, T> KeyScheduler<K, T> {
    /// Offers a record. Returns it back when it may start now (no record of its key is running);
    /// otherwise it is queued behind the running one and `None` is returned.
    pub fn submit(&mut self, key: K, work: T) -> Option<T> {
        match self.active.get_mut(&key) {
            Some(queue) => {
                queue.push_back(work);
                self.queued += 1;
                None
            }
            None => {
                self.active.insert(key, VecDeque::new());
                Some(work)
            }
        }
    }

    /// The running record of `key` finished: returns the next record of the key to start.
    pub fn complete(&mut self, key: &K) -> Option<T> {
        let queue = self.active.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => {
                self.queued -= 1;
                Some(next)
            }
            None => {
                self.active.remove(key);
                None
            }
        }
    }

    /// Removes queued (not running) records matching `drop`, e.g. those of revoked partitions.
    /// Returns them. Running records are untouched.
    pub fn remove_queued(&mut self, mut drop: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for queue in self.active.values_mut() {
            let mut keep = VecDeque::with_capacity(queue.len());
            for w in queue.drain(..) {
                if drop(&w) {
                    removed.push(w);
                } else {
                    keep.push_back(w);
                }
            }
            *queue = keep;
        }
        self.queued -= removed.len();
        removed
    }

    /// Keys with a running record.
    pub fn running(&self) -> usize {
        self.active.len()
    }

    /// Records waiting behind a running record of their key.
    pub fn queued(&self) -> usize {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_runs_in_order_different_keys_run_together() {
        let mut s = KeyScheduler::default();
        assert_eq!(s.submit("a", 1), Some(1));
        assert_eq!(s.submit("b", 2), Some(2), "a different key starts at once");
        assert_eq!(s.submit("a", 3), None, "same key waits");
        assert_eq!(s.submit("a", 4), None);
        assert_eq!(s.queued(), 2);
        assert_eq!(s.complete(&"a"), Some(3));
        assert_eq!(s.complete(&"a"), Some(4));
        assert_eq!(s.complete(&"a"), None);
        assert_eq!(s.submit("a", 5), Some(5), "key is free again");
        assert_eq!(s.complete(&"b"), None);
        assert_eq!(s.running(), 1);
    }

    #[test]
    fn remove_queued_keeps_running_and_order() {
        let mut s = KeyScheduler::default();
        s.submit("a", (0, 1));
        s.submit("a", (1, 2));
        s.submit("a", (0, 3));
        let removed = s.remove_queued(|w| w.0 == 1);
        assert_eq!(removed, vec![(1, 2)]);
        assert_eq!(s.complete(&"a"), Some((0, 3)));
        assert_eq!(s.queued(), 0);
    }
}
