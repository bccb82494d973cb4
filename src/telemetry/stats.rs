//! Counters of one engine run, for the run summary, the demo and tests. The same events also go
//! to the `metrics` recorder through [`crate::telemetry`].

use crate::failure::ErrorClass;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters, shared by the engine's tasks.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub consumed: AtomicU64,
    pub published: AtomicU64,
    pub deduplicated: AtomicU64,
    pub skipped: AtomicU64,
    /// Records whose provider call failed systemically and that waited for the circuit.
    pub systemic_pauses: AtomicU64,
    /// Times a provider circuit opened.
    pub circuits_opened: AtomicU64,
    /// Records given up at a deadline (revocation or shutdown), to be read again.
    pub abandoned: AtomicU64,
    /// Records written to a wait topic (final for their input offset; read back later).
    pub diverted: AtomicU64,
    /// Records read back from a wait topic that reached a final outcome.
    pub returned: AtomicU64,
    /// Retry rounds given to poison records (`engine.isolation.retry_rounds`).
    pub retry_rounds: AtomicU64,
    /// A bounded run (`replay`): records whose timestamp was outside the time window, finished
    /// without processing.
    pub filtered_by_time: AtomicU64,
    /// `replay --renormalize`: output records without `raw_response`, not rebuilt.
    pub without_raw_response: AtomicU64,
    /// Polling fallback: expectations waiting now (set, not added).
    pub expectations_waiting: AtomicU64,
    /// Polling fallback: expectations resolved by a webhook result.
    pub resolved_by_webhook: AtomicU64,
    /// Polling fallback: expectations resolved by a poll (a record published from a poll).
    pub resolved_by_poll: AtomicU64,
    /// Polling fallback: expectations given up and dead-lettered (expired or refused).
    pub expectations_given_up: AtomicU64,
    /// Polling fallback: polls made (each may make several requests: retries).
    pub fallback_polls: AtomicU64,
    dead_lettered: Mutex<BTreeMap<ErrorClass, u64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub consumed: u64,
    pub published: u64,
    pub deduplicated: u64,
    pub skipped: u64,
    pub systemic_pauses: u64,
    pub circuits_opened: u64,
    pub abandoned: u64,
    pub diverted: u64,
    pub returned: u64,
    pub retry_rounds: u64,
    pub filtered_by_time: u64,
    pub without_raw_response: u64,
    pub expectations_waiting: u64,
    pub resolved_by_webhook: u64,
    pub resolved_by_poll: u64,
    pub expectations_given_up: u64,
    pub fallback_polls: u64,
    pub dead_lettered: BTreeMap<ErrorClass, u64>,
}

impl StatsSnapshot {
    /// Every record with a final outcome (a diverted record's is its wait-topic write; the
    /// record read back from the wait topic is consumed and finished again).
    pub fn finished(&self) -> u64 {
        self.published
            + self.deduplicated
            + self.skipped
            + self.diverted
            + self.filtered_by_time
            + self.without_raw_response
            + self.dead_lettered_total()
    }

    /// Dead letters of every class.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }
}

impl EngineStats {
    pub(crate) fn add_dead_lettered(&self, class: ErrorClass) {
        let mut map = self.dead_lettered.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(class).or_default() += 1;
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            consumed: self.consumed.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            deduplicated: self.deduplicated.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            systemic_pauses: self.systemic_pauses.load(Ordering::Relaxed),
            circuits_opened: self.circuits_opened.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            diverted: self.diverted.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            retry_rounds: self.retry_rounds.load(Ordering::Relaxed),
            filtered_by_time: self.filtered_by_time.load(Ordering::Relaxed),
            without_raw_response: self.without_raw_response.load(Ordering::Relaxed),
            expectations_waiting: self.expectations_waiting.load(Ordering::Relaxed),
            resolved_by_webhook: self.resolved_by_webhook.load(Ordering::Relaxed),
            resolved_by_poll: self.resolved_by_poll.load(Ordering::Relaxed),
            expectations_given_up: self.expectations_given_up.load(Ordering::Relaxed),
            fallback_polls: self.fallback_polls.load(Ordering::Relaxed),
            dead_lettered: self
                .dead_lettered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
