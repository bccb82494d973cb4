//! The catch-up gate: how many records read back from a provider's wait topic may be calling
//! the provider at once. The cap starts at `engine.isolation.catch_up_initial`, doubles every
//! `catch_up_ramp_every` while the provider's circuit stays closed (the runner ramps it), and
//! falls back to the start while the circuit is open, so a recovered provider is not stampeded.
//!
//! It bounds *calls*, not memory: the catch-up lane of the in-flight budget (`flow.rs`) bounds
//! how many records read back are held at all. The difference matters for a poison record or a
//! key with many notifications at the head of a wait partition: the records of a key wait
//! behind its first (per-key order) and a poison record waits out its retry rounds, and neither
//! holds a place here, so the records of other keys behind them still reach the provider. (With
//! a cap on held records only, a head of such records could take every place, leave only
//! failing records to probe a half-open circuit, and keep it open for good.)

use crate::provider::Provider;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
struct Slot {
    cap: usize,
    running: usize,
}

/// The gate of every provider.
#[derive(Debug)]
pub struct CatchUpGate {
    slots: Mutex<[Slot; Provider::ALL.len()]>,
    room: [Notify; Provider::ALL.len()],
}

/// A place at the gate; dropping it frees the place.
#[derive(Debug)]
pub struct CatchUpPermit<'a> {
    gate: &'a CatchUpGate,
    provider: Provider,
}

impl Drop for CatchUpPermit<'_> {
    fn drop(&mut self) {
        {
            let mut slots = self.gate.lock();
            let slot = &mut slots[self.provider.index()];
            slot.running = slot.running.saturating_sub(1);
        }
        self.gate.room[self.provider.index()].notify_one();
    }
}

impl CatchUpGate {
    /// A gate letting `initial` records of each provider through (at least one).
    pub fn new(initial: usize) -> Self {
        Self {
            slots: Mutex::new(
                [Slot {
                    cap: initial.max(1),
                    running: 0,
                }; Provider::ALL.len()],
            ),
            room: std::array::from_fn(|_| Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Slot; Provider::ALL.len()]> {
        // A poisoned lock only means a panic between two plain integer updates.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The provider's cap now.
    pub fn cap(&self, provider: Provider) -> usize {
        self.lock()[provider.index()].cap
    }

    /// Sets the provider's cap (at least one). Lowering it lets the records already through
    /// finish; raising it lets waiting records through at once.
    pub fn set_cap(&self, provider: Provider, cap: usize) {
        let raised = {
            let mut slots = self.lock();
            let slot = &mut slots[provider.index()];
            let raised = cap.max(1) > slot.cap;
            slot.cap = cap.max(1);
            raised
        };
        if raised {
            self.room[provider.index()].notify_waiters();
        }
    }

    /// Waits for a place. Cancel-safe: dropping the future while it waits takes nothing.
    pub async fn acquire(&self, provider: Provider) -> CatchUpPermit<'_> {
        let room = &self.room[provider.index()];
        loop {
            let notified = room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the wait is seen.
            notified.as_mut().enable();
            {
                let mut slots = self.lock();
                let slot = &mut slots[provider.index()];
                if slot.running < slot.cap {
                    slot.running += 1;
                    return CatchUpPermit {
                        gate: self,
                        provider,
                    };
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CS: Provider = Provider::ClearSale;

    #[tokio::test]
    async fn lets_cap_records_through_and_the_next_when_one_finishes() {
        let gate = CatchUpGate::new(2);
        let a = gate.acquire(CS).await;
        let _b = gate.acquire(CS).await;
        let third = tokio::time::timeout(Duration::from_millis(50), gate.acquire(CS)).await;
        assert!(third.is_err(), "the cap is 2");
        let _u = gate.acquire(Provider::Unico).await;
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), gate.acquire(CS)).await;
        assert!(third.is_ok(), "a finished record frees its place");
    }

    #[tokio::test]
    async fn raising_the_cap_lets_waiting_records_through_and_lowering_it_lets_running_ones_finish()
    {
        let gate = std::sync::Arc::new(CatchUpGate::new(1));
        let first = gate.acquire(CS).await;
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _p = gate.acquire(CS).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        gate.set_cap(CS, 4);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("let through on the raise")
            .expect("task");
        gate.set_cap(CS, 0);
        assert_eq!(gate.cap(CS), 1, "at least one");
        drop(first);
        let again = tokio::time::timeout(Duration::from_secs(5), gate.acquire(CS)).await;
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn a_cancelled_wait_takes_no_place() {
        let gate = CatchUpGate::new(1);
        let held = gate.acquire(CS).await;
        let cancelled = tokio::time::timeout(Duration::from_millis(20), gate.acquire(CS)).await;
        assert!(cancelled.is_err());
        drop(held);
        let _a = gate.acquire(CS).await;
        let none = tokio::time::timeout(Duration::from_millis(20), gate.acquire(CS)).await;
        assert!(none.is_err(), "exactly one place, taken once");
    }
}
