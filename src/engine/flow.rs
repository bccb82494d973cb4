//! The in-flight budget, shared by the consumer thread (which admits records) and the
//! dispatcher (which releases them when they finish).
//!
//! Two bounds hold at every moment:
//!
//! - **the total**: at most `max_in_flight` records handed to the engine and not yet finished
//!   (running, or waiting behind a record of their key). This is the hard memory bound.
//! - **a lane per provider**: when more than one provider is enabled, one provider's records
//!   may take at most `provider_share` of the total, so a burst of one slow provider (held to
//!   its rate limit, or down) leaves room for the other. Records that call no provider
//!   (rejections, skips) use the `other` lane, bounded only by the total.
//!
//! Admission never blocks: [`FlowControl::try_admit`] says whether a record may enter, and the
//! consumer thread decides what to do when it may not (see `consumer.rs`). The consumer thread
//! sleeps in [`FlowControl::wait_for_room`] while the total is full, and the dispatcher's
//! [`FlowControl::release`] (one call per batch of completions) wakes it.

use crate::provider::Provider;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The part of the budget a record uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A record that will call this provider.
    Provider(Provider),
    /// A record read back from this provider's wait topic (catching up after a divert). At most
    /// a quarter of the budget; how many of them call the provider at once is the ramping
    /// catch-up gate's business (`catch_up.rs`).
    CatchUp(Provider),
    /// A record that calls no provider (dead-lettered at decode, or skipped).
    Other,
}

/// Number of lanes: two per provider (direct and catching up), plus `Other`.
pub const LANES: usize = 2 * Provider::ALL.len() + 1;

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::Provider(p) => p.index(),
            Lane::CatchUp(p) => Provider::ALL.len() + p.index(),
            Lane::Other => 2 * Provider::ALL.len(),
        }
    }

    /// The lane's name in metrics and logs (`clearsale`, `unico`, `clearsale_catch_up`, ...,
    /// `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Provider(p) => p.as_str(),
            Lane::CatchUp(Provider::ClearSale) => "clearsale_catch_up",
            Lane::CatchUp(Provider::Unico) => "unico_catch_up",
            Lane::Other => "other",
        }
    }
}

/// Counts per lane (a batch of releases, or the current occupancy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneCounts([usize; LANES]);

impl LaneCounts {
    pub fn add(&mut self, lane: Lane, n: usize) {
        self.0[lane.index()] += n;
    }

    pub fn get(&self, lane: Lane) -> usize {
        self.0[lane.index()]
    }

    /// A provider's records in its share: direct and read back from its wait topic.
    pub fn of_provider(&self, provider: Provider) -> usize {
        self.get(Lane::Provider(provider)) + self.get(Lane::CatchUp(provider))
    }

    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

/// Why a record may not enter now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The total is at `max_in_flight`.
    Full,
    /// The record's provider lane is at its share.
    LaneFull,
}

#[derive(Debug, Default)]
struct State {
    counts: LaneCounts,
    /// Set when the shutdown drain started: nothing more is admitted.
    stopping: bool,
    /// The consumer thread sleeps in `wait_for_room` (a notify is only sent then).
    waiting: bool,
    /// Per provider: its lanes are diverted, so its records from the input are only written to
    /// the wait topic (quick) and use the `Other` lane, not the provider's share.
    diverting: [bool; Provider::ALL.len()],
}

/// The shared budget.
#[derive(Debug)]
pub struct FlowControl {
    max_in_flight: usize,
    lane_cap: usize,
    state: Mutex<State>,
    room: Condvar,
}

impl FlowControl {
    /// A budget of `max_in_flight` records (at least 1). With `isolate` (more than one provider
    /// enabled), each provider lane is capped at `provider_share` of it (at least one record).
    pub fn new(max_in_flight: usize, provider_share: f64, isolate: bool) -> Self {
        let max_in_flight = max_in_flight.max(1);
        let lane_cap = if isolate {
            ((max_in_flight as f64 * provider_share.clamp(0.0, 1.0)).ceil() as usize)
                .clamp(1, max_in_flight)
        } else {
            max_in_flight
        };
        Self {
            max_in_flight,
            lane_cap,
            state: Mutex::new(State::default()),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters updated in one statement each: still valid after a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The total bound.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The most records one provider may hold.
    pub fn lane_cap(&self) -> usize {
        self.lane_cap
    }

    /// Marks a provider's records from the input as diverted (or not): see [`Self::admit`].
    pub fn set_diverting(&self, provider: Provider, diverting: bool) {
        let woke = {
            let mut state = self.lock();
            let slot = &mut state.diverting[provider.index()];
            let changed = *slot != diverting;
            *slot = diverting;
            changed && state.waiting
        };
        if woke {
            self.room.notify_all();
        }
    }

    /// The lane a record from the input is charged to: a diverted provider's records only go
    /// to its wait topic, which takes a moment, so they use the `Other` lane instead of the
    /// provider's share (which its slow or stuck records may hold).
    pub fn charge(&self, lane: Lane) -> Lane {
        match lane {
            Lane::Provider(p) if self.lock().diverting[p.index()] => Lane::Other,
            lane => lane,
        }
    }

    /// Counts one more record in flight, if it fits.
    pub fn try_admit(&self, lane: Lane) -> Admission {
        let mut state = self.lock();
        if state.stopping || state.counts.total() >= self.max_in_flight {
            return Admission::Full;
        }
        if !self.lane_has_room(&state.counts, lane) {
            return Admission::LaneFull;
        }
        state.counts.add(lane, 1);
        Admission::Admitted
    }

    /// Whether `lane` has room for one more record. A provider's two lanes (direct and catching
    /// up) share its `provider_share` of the budget, so the other provider always keeps the
    /// rest: a slow provider's records read back from its wait topic must not take the places
    /// its direct records left. The catch-up lane always has room for one record, so a wait
    /// partition keeps moving even while the provider's direct records fill its share (a lane
    /// holding new records until its wait partition is read, for example).
    fn lane_has_room(&self, counts: &LaneCounts, lane: Lane) -> bool {
        match lane {
            Lane::Provider(p) => counts.of_provider(p) < self.lane_cap,
            Lane::CatchUp(p) => {
                let own = counts.get(lane);
                own < self.catch_up_max() && (own == 0 || counts.of_provider(p) < self.lane_cap)
            }
            Lane::Other => true,
        }
    }

    /// The most records a catch-up lane may hold: a quarter of the budget (within the
    /// provider's share, which its direct lane shares). Records read back from a wait topic
    /// wait for their provider like any other, and an outage during a catch-up must leave most
    /// of the budget to the input.
    pub fn catch_up_max(&self) -> usize {
        (self.max_in_flight / 4).clamp(1, self.lane_cap)
    }

    /// True when a record of `lane` would be admitted now.
    pub fn has_room(&self, lane: Lane) -> bool {
        let state = self.lock();
        !state.stopping
            && state.counts.total() < self.max_in_flight
            && self.lane_has_room(&state.counts, lane)
    }

    /// Records finished or dropped: frees their places and wakes the consumer thread.
    pub fn release(&self, released: &LaneCounts) {
        if released.is_empty() {
            return;
        }
        let waiting = {
            let mut state = self.lock();
            for (slot, n) in state.counts.0.iter_mut().zip(released.0) {
                *slot = slot.saturating_sub(n);
            }
            state.waiting
        };
        if waiting {
            self.room.notify_all();
        }
    }

    /// Records in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().counts.total()
    }

    /// Occupancy per lane now.
    pub fn occupancy(&self) -> LaneCounts {
        self.lock().counts
    }

    /// Waits up to `timeout` for the total to drop below the bound; true when it has.
    pub fn wait_for_room(&self, timeout: Duration) -> bool {
        let mut state = self.lock();
        state.waiting = true;
        let (mut state, _) = self
            .room
            .wait_timeout_while(state, timeout, |s| {
                !s.stopping && s.counts.total() >= self.max_in_flight
            })
            .unwrap_or_else(|e| e.into_inner());
        state.waiting = false;
        !state.stopping && state.counts.total() < self.max_in_flight
    }

    /// Stops admitting (shutdown) and wakes the consumer thread.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.room.notify_all();
    }

    /// True once [`FlowControl::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.lock().stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: Lane = Lane::Provider(Provider::ClearSale);
    const UNICO: Lane = Lane::Provider(Provider::Unico);

    #[test]
    fn the_total_is_a_hard_bound() {
        let f = FlowControl::new(3, 1.0, true);
        assert_eq!(f.try_admit(CS), Admission::Admitted);
        assert_eq!(f.try_admit(Lane::Other), Admission::Admitted);
        assert_eq!(f.try_admit(UNICO), Admission::Admitted);
        assert_eq!(f.try_admit(Lane::Other), Admission::Full);
        let mut r = LaneCounts::default();
        r.add(CS, 1);
        f.release(&r);
        assert_eq!(f.in_flight(), 2);
        assert_eq!(f.try_admit(CS), Admission::Admitted);
    }

    #[test]
    fn one_provider_cannot_take_the_others_share() {
        let f = FlowControl::new(8, 0.75, true);
        assert_eq!(f.lane_cap(), 6);
        for _ in 0..6 {
            assert_eq!(f.try_admit(UNICO), Admission::Admitted);
        }
        assert_eq!(f.try_admit(UNICO), Admission::LaneFull);
        assert!(!f.has_room(UNICO));
        assert!(f.has_room(CS));
        assert_eq!(f.try_admit(CS), Admission::Admitted);
        assert_eq!(f.try_admit(Lane::Other), Admission::Admitted);
        assert_eq!(f.try_admit(CS), Admission::Full);
    }

    #[test]
    fn the_catch_up_lane_holds_at_most_a_quarter_of_the_budget() {
        let f = FlowControl::new(8, 0.75, true);
        let catch_up = Lane::CatchUp(Provider::ClearSale);
        assert_eq!(f.catch_up_max(), 2);
        assert_eq!(f.try_admit(catch_up), Admission::Admitted);
        assert_eq!(f.try_admit(catch_up), Admission::Admitted);
        assert_eq!(f.try_admit(catch_up), Admission::LaneFull);
        assert!(f.has_room(CS), "the direct lane is separate");
        let mut r = LaneCounts::default();
        r.add(catch_up, 1);
        f.release(&r);
        assert_eq!(f.try_admit(catch_up), Admission::Admitted);
    }

    #[test]
    fn a_providers_direct_and_catch_up_lanes_share_its_share() {
        // 16 places: a share of 12, a catch-up lane of at most 4.
        let f = FlowControl::new(16, 0.75, true);
        let catch_up = Lane::CatchUp(Provider::Unico);
        for _ in 0..10 {
            assert_eq!(f.try_admit(UNICO), Admission::Admitted);
        }
        assert_eq!(f.try_admit(catch_up), Admission::Admitted);
        assert_eq!(f.try_admit(catch_up), Admission::Admitted);
        assert_eq!(
            f.try_admit(catch_up),
            Admission::LaneFull,
            "10 direct + 2 read back fill Unico's share"
        );
        assert_eq!(f.try_admit(UNICO), Admission::LaneFull);
        // ClearSale keeps the rest of the budget.
        for _ in 0..4 {
            assert_eq!(f.try_admit(CS), Admission::Admitted);
        }
        assert_eq!(f.try_admit(CS), Admission::Full);
        // A full direct lane still lets one record read back in, so a wait partition moves.
        let g = FlowControl::new(16, 0.75, true);
        for _ in 0..12 {
            assert_eq!(g.try_admit(UNICO), Admission::Admitted);
        }
        assert_eq!(g.try_admit(catch_up), Admission::Admitted);
        assert_eq!(g.try_admit(catch_up), Admission::LaneFull);
    }

    #[test]
    fn a_diverted_providers_records_are_charged_outside_its_share() {
        let f = FlowControl::new(8, 0.5, true);
        for _ in 0..4 {
            assert_eq!(f.try_admit(CS), Admission::Admitted);
        }
        assert_eq!(f.try_admit(f.charge(CS)), Admission::LaneFull);
        f.set_diverting(Provider::ClearSale, true);
        assert_eq!(f.charge(CS), Lane::Other, "only written to the wait topic");
        assert_eq!(f.charge(UNICO), UNICO);
        assert_eq!(f.try_admit(f.charge(CS)), Admission::Admitted);
        f.set_diverting(Provider::ClearSale, false);
        assert_eq!(f.charge(CS), CS);
    }

    #[test]
    fn a_single_provider_uses_the_whole_budget() {
        let f = FlowControl::new(4, 0.5, false);
        assert_eq!(f.lane_cap(), 4);
        for _ in 0..4 {
            assert_eq!(f.try_admit(CS), Admission::Admitted);
        }
    }

    #[test]
    fn stop_refuses_everything_and_wakes_the_waiter() {
        let f = std::sync::Arc::new(FlowControl::new(1, 1.0, false));
        assert_eq!(f.try_admit(CS), Admission::Admitted);
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || f.wait_for_room(Duration::from_secs(30)))
        };
        f.stop();
        assert!(!waiter.join().unwrap());
        assert_eq!(f.try_admit(Lane::Other), Admission::Full);
    }

    #[test]
    fn a_release_wakes_the_waiter() {
        let f = std::sync::Arc::new(FlowControl::new(1, 1.0, false));
        assert_eq!(f.try_admit(CS), Admission::Admitted);
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || f.wait_for_room(Duration::from_secs(30)))
        };
        let mut r = LaneCounts::default();
        r.add(CS, 1);
        f.release(&r);
        assert!(waiter.join().unwrap());
    }
}
