//! Provider lanes: whether a provider's records of one input partition go straight to the
//! provider (**direct**) or to the provider's wait topic (**diverted**), as a state machine with
//! no I/O. The dispatcher owns it (`engine/dispatcher.rs`); `docs/DESIGN.md` explains why it
//! keeps per-key order.
//!
//! A lane is a provider and an input partition number `p`. Its diverted records go to partition
//! `p` of the provider's wait topic, which is read back by the instance that owns input
//! partition `p` (the wait topics have as many partitions as the input topics, and the wait
//! partitions follow the input assignment), so the lane has exactly one owner in the group.
//!
//! The modes:
//!
//! - **Unknown** (just assigned): the lane does not know yet whether the wait partition holds
//!   records from an earlier owner. New records are held (not started) until it does.
//! - **Direct**: records start normally.
//! - **Diverted**: records are written to the wait partition as they start. Diverting is always
//!   order-safe: a record starts only after every earlier record of its key finished (the
//!   scheduler), so it lands in the wait partition after them.
//! - **Returning**: the wait partition has been read to its end and only what is in memory is
//!   left; new records are held until that finished, then the lane is direct again.
//!
//! The one unsafe move would be back to direct while a record of some key is still in the wait
//! partition: a later record of that key would overtake it. So a lane returns to direct only
//! when the wait partition was read past every divert this owner made, every record read from it
//! finished, and no divert is still being written.

use crate::provider::Provider;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A diverted lane starts returning (holding new records) once its wait partition was read to
/// the end and at most this many of its records are still being processed: the hold then lasts
/// about one provider round trip.
const RETURN_AT_MOST: usize = 32;

/// A lane's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Unknown,
    Direct,
    Diverted,
    Returning,
}

impl Mode {
    /// The label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Unknown => "unknown",
            Mode::Direct => "direct",
            Mode::Diverted => "diverted",
            Mode::Returning => "returning",
        }
    }

    /// New records wait (in the dispatcher, not started) in this mode.
    pub fn holds(self) -> bool {
        matches!(self, Mode::Unknown | Mode::Returning)
    }
}

/// What to do with a record of a lane that is starting now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Divert,
}

/// A lane: a provider and an input partition number.
pub type LaneId = (Provider, i32);

/// A lane changed mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub lane: LaneId,
    pub from: Mode,
    pub to: Mode,
}

#[derive(Debug)]
struct Lane {
    mode: Mode,
    since: Instant,
    /// Records started to be diverted and not yet done.
    diverts_running: usize,
    /// Records read from the wait partition and not yet finished.
    wait_unfinished: usize,
    /// Of those, the ones in a retry round (poison records waiting out a delay): the lane does
    /// not start returning while one waits, which would hold new records for the whole round.
    wait_rounds: usize,
    /// The highest wait-partition offset a divert of this owner was acknowledged at.
    last_divert: Option<i64>,
    /// Set when the wait partition was read to its end: the last offset read then (`None`:
    /// nothing read in this assignment). Cleared when a record is read from it.
    end: Option<Option<i64>>,
}

impl Lane {
    fn new(now: Instant) -> Self {
        Self {
            mode: Mode::Unknown,
            since: now,
            diverts_running: 0,
            wait_unfinished: 0,
            wait_rounds: 0,
            last_divert: None,
            end: None,
        }
    }

    /// The wait partition was read past every divert this owner made.
    fn caught_up(&self) -> bool {
        match (self.end, self.last_divert) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(Some(read)), Some(written)) => read >= written,
            (Some(None), Some(_)) => false,
        }
    }

    /// Nothing of the lane is left in the wait partition or in flight through it.
    fn drained(&self) -> bool {
        self.caught_up() && self.wait_unfinished == 0 && self.diverts_running == 0
    }
}

/// The lanes of the partitions assigned to this instance.
#[derive(Debug)]
pub struct Lanes {
    lanes: HashMap<LaneId, Lane>,
    providers: Vec<Provider>,
    blocked: [bool; Provider::ALL.len()],
    /// How long a lane may hold records (unknown or returning) before it diverts them.
    hold_limit: Duration,
}

impl Lanes {
    /// Lanes for `providers` (the enabled ones). A lane holds records at most `hold_limit`.
    pub fn new(providers: Vec<Provider>, hold_limit: Duration) -> Self {
        Self {
            lanes: HashMap::new(),
            providers,
            blocked: [false; Provider::ALL.len()],
            hold_limit,
        }
    }

    /// The providers with lanes.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Input partition `p` was assigned: its lanes start unknown (blocked providers' diverted).
    pub fn assign(&mut self, partition: i32, now: Instant, changes: &mut Vec<Change>) {
        for i in 0..self.providers.len() {
            let provider = self.providers[i];
            let id = (provider, partition);
            if self.lanes.contains_key(&id) {
                continue;
            }
            self.lanes.insert(id, Lane::new(now));
            self.evaluate(id, now, changes);
        }
    }

    /// Input partition `p` is no longer assigned.
    pub fn revoke(&mut self, partition: i32) {
        self.lanes.retain(|(_, p), _| *p != partition);
    }

    /// The lane's mode (`None`: not assigned).
    pub fn mode(&self, lane: LaneId) -> Option<Mode> {
        self.lanes.get(&lane).map(|l| l.mode)
    }

    /// Every assigned lane and its mode.
    pub fn modes(&self) -> impl Iterator<Item = (LaneId, Mode)> + '_ {
        self.lanes.iter().map(|(id, l)| (*id, l.mode))
    }

    /// What a record of `lane` starting now does. Only a direct lane processes it; any other
    /// mode diverts it (always order-safe).
    pub fn route(&self, lane: LaneId) -> Route {
        match self.mode(lane) {
            Some(Mode::Direct) | None => Route::Direct,
            Some(_) => Route::Divert,
        }
    }

    /// Whether the provider cannot be served now (circuit not closed, or its share full too
    /// long). Blocking diverts every lane of the provider at once.
    pub fn set_blocked(
        &mut self,
        provider: Provider,
        blocked: bool,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        self.blocked[provider.index()] = blocked;
        let ids: Vec<LaneId> = self
            .lanes
            .keys()
            .filter(|(p, _)| *p == provider)
            .copied()
            .collect();
        for id in ids {
            self.evaluate(id, now, changes);
        }
    }

    pub fn is_blocked(&self, provider: Provider) -> bool {
        self.blocked[provider.index()]
    }

    /// A record of the lane started to be diverted.
    pub fn divert_started(&mut self, lane: LaneId) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.diverts_running += 1;
        }
    }

    /// A divert started by [`Lanes::divert_started`] ended: acknowledged at `offset`, or not
    /// (`None`: cancelled).
    pub fn divert_ended(
        &mut self,
        lane: LaneId,
        offset: Option<i64>,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.diverts_running = l.diverts_running.saturating_sub(1);
        }
        if let Some(offset) = offset {
            self.diverted(lane, offset, now, changes);
        } else {
            self.evaluate(lane, now, changes);
        }
    }

    /// A record of the lane was written to the wait partition at `offset`. A record that was
    /// processing directly can divert itself (its provider's circuit opened while it waited):
    /// the lane is then diverted again, before the record's key moves on, so the key's next
    /// record follows it into the wait partition.
    pub fn diverted(&mut self, lane: LaneId, offset: i64, now: Instant, changes: &mut Vec<Change>) {
        let Some(l) = self.lanes.get_mut(&lane) else {
            return;
        };
        l.last_divert = Some(l.last_divert.map_or(offset, |o| o.max(offset)));
        if l.mode == Mode::Direct {
            self.set(lane, Mode::Diverted, now, changes);
        }
        self.evaluate(lane, now, changes);
    }

    /// A record was read from the lane's wait partition; `in_round`: it is in a retry round.
    pub fn wait_read(
        &mut self,
        lane: LaneId,
        in_round: bool,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.wait_unfinished += 1;
            l.wait_rounds += usize::from(in_round);
            l.end = None;
        }
        self.evaluate(lane, now, changes);
    }

    /// A record read from the lane's wait partition finished (or was dropped); `in_round` as it
    /// was read.
    pub fn wait_finished(
        &mut self,
        lane: LaneId,
        in_round: bool,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.wait_unfinished = l.wait_unfinished.saturating_sub(1);
            if in_round {
                l.wait_rounds = l.wait_rounds.saturating_sub(1);
            }
        }
        self.evaluate(lane, now, changes);
    }

    /// The lane's wait partition was read to its end; `last` is the last offset read from it in
    /// this assignment.
    pub fn wait_end(
        &mut self,
        lane: LaneId,
        last: Option<i64>,
        now: Instant,
        changes: &mut Vec<Change>,
    ) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.end = Some(last);
        }
        self.evaluate(lane, now, changes);
    }

    /// Time passed: a lane that held records for `hold_limit` diverts them instead.
    pub fn tick(&mut self, now: Instant, changes: &mut Vec<Change>) {
        let ids: Vec<LaneId> = self.lanes.keys().copied().collect();
        for id in ids {
            self.evaluate(id, now, changes);
        }
    }

    fn set(&mut self, id: LaneId, to: Mode, now: Instant, changes: &mut Vec<Change>) {
        if let Some(l) = self.lanes.get_mut(&id) {
            if l.mode != to {
                changes.push(Change {
                    lane: id,
                    from: l.mode,
                    to,
                });
                l.mode = to;
                l.since = now;
            }
        }
    }

    fn evaluate(&mut self, id: LaneId, now: Instant, changes: &mut Vec<Change>) {
        let blocked = self.blocked[id.0.index()];
        let hold_limit = self.hold_limit;
        // At most two steps (diverted → returning → direct).
        for _ in 0..3 {
            let Some(l) = self.lanes.get(&id) else {
                return;
            };
            let next = match l.mode {
                _ if blocked => Mode::Diverted,
                Mode::Direct => Mode::Direct,
                Mode::Diverted
                    if l.caught_up()
                        && l.wait_unfinished <= RETURN_AT_MOST
                        && l.wait_rounds == 0 =>
                {
                    Mode::Returning
                }
                Mode::Diverted => Mode::Diverted,
                Mode::Returning | Mode::Unknown if l.drained() => Mode::Direct,
                // An earlier owner left records in the wait partition.
                Mode::Unknown if l.wait_unfinished > 0 => Mode::Diverted,
                Mode::Returning | Mode::Unknown if now - l.since >= hold_limit => Mode::Diverted,
                mode => mode,
            };
            if next == l.mode {
                return;
            }
            self.set(id, next, now, changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: Provider = Provider::ClearSale;
    const LANE: LaneId = (CS, 0);

    fn lanes() -> (Lanes, Instant) {
        (
            Lanes::new(vec![CS, Provider::Unico], Duration::from_secs(10)),
            Instant::now(),
        )
    }

    fn modes(changes: &[Change]) -> Vec<(Mode, Mode)> {
        changes.iter().map(|c| (c.from, c.to)).collect()
    }

    #[test]
    fn a_new_lane_with_an_empty_wait_partition_becomes_direct() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.assign(0, now, &mut ch);
        assert!(ch.is_empty());
        assert_eq!(l.mode(LANE), Some(Mode::Unknown));
        assert!(Mode::Unknown.holds());
        l.wait_end(LANE, None, now, &mut ch);
        assert_eq!(modes(&ch), vec![(Mode::Unknown, Mode::Direct)]);
        assert_eq!(l.route(LANE), Route::Direct);
        assert_eq!(
            l.mode((Provider::Unico, 0)),
            Some(Mode::Unknown),
            "per provider"
        );
    }

    #[test]
    fn a_new_lane_with_an_earlier_owners_records_diverts_until_they_are_done() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.assign(0, now, &mut ch);
        l.wait_read(LANE, false, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Diverted));
        assert_eq!(l.route(LANE), Route::Divert);
        l.wait_read(LANE, false, now, &mut ch);
        l.wait_end(LANE, Some(11), now, &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Returning),
            "read to the end: hold new ones"
        );
        l.wait_finished(LANE, false, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Returning));
        l.wait_finished(LANE, false, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Direct));
        assert_eq!(
            modes(&ch),
            vec![
                (Mode::Unknown, Mode::Diverted),
                (Mode::Diverted, Mode::Returning),
                (Mode::Returning, Mode::Direct)
            ]
        );
    }

    #[test]
    fn blocking_diverts_every_lane_of_the_provider_and_only_that_provider() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        for p in [0, 1] {
            l.assign(p, now, &mut ch);
            for provider in [CS, Provider::Unico] {
                l.wait_end((provider, p), None, now, &mut ch);
            }
        }
        ch.clear();
        l.set_blocked(CS, true, now, &mut ch);
        assert_eq!(ch.len(), 2);
        assert!(ch.iter().all(|c| c.lane.0 == CS && c.to == Mode::Diverted));
        assert_eq!(l.route((Provider::Unico, 0)), Route::Direct);
        assert!(l.is_blocked(CS));
    }

    #[test]
    fn a_lane_returns_only_after_every_divert_was_read_back_and_finished() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.assign(0, now, &mut ch);
        l.wait_end(LANE, None, now, &mut ch);
        l.set_blocked(CS, true, now, &mut ch);
        // Two diverts: one acknowledged at 5, one still being written.
        l.divert_started(LANE);
        l.divert_started(LANE);
        l.divert_ended(LANE, Some(5), now, &mut ch);
        l.set_blocked(CS, false, now, &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Diverted),
            "offset 5 was not read back yet"
        );
        l.wait_end(LANE, Some(4), now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Diverted), "read only up to 4");
        l.wait_read(LANE, false, now, &mut ch);
        l.wait_end(LANE, Some(5), now, &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Returning),
            "all read: hold new records"
        );
        l.wait_finished(LANE, false, now, &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Returning),
            "a divert is still being written"
        );
        l.divert_ended(LANE, Some(6), now, &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Returning),
            "6 must be read back first"
        );
        l.wait_read(LANE, false, now, &mut ch);
        l.wait_end(LANE, Some(6), now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Returning));
        l.wait_finished(LANE, false, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Direct));
    }

    #[test]
    fn a_lane_does_not_return_while_a_read_back_record_waits_out_a_retry_round() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.assign(0, now, &mut ch);
        l.wait_end(LANE, None, now, &mut ch);
        // A poison record's retries ran out: it was written to the wait partition at 3.
        l.diverted(LANE, 3, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Diverted));
        l.wait_read(LANE, true, now, &mut ch);
        l.wait_end(LANE, Some(3), now, &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Diverted),
            "returning would hold new records for the whole round"
        );
        l.tick(now + Duration::from_secs(60), &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Diverted));
        l.wait_finished(LANE, true, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Direct), "its round is over");
    }

    #[test]
    fn a_late_divert_of_a_direct_record_diverts_the_lane_again() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.assign(0, now, &mut ch);
        l.wait_end(LANE, None, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Direct));
        // A record processing directly diverted itself (its circuit opened while it waited).
        l.diverted(LANE, 9, now, &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Diverted));
        assert_eq!(l.route(LANE), Route::Divert);
    }

    #[test]
    fn holding_is_bounded_in_time() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.assign(0, now, &mut ch);
        l.tick(now + Duration::from_secs(9), &mut ch);
        assert_eq!(l.mode(LANE), Some(Mode::Unknown));
        l.tick(now + Duration::from_secs(10), &mut ch);
        assert_eq!(
            l.mode(LANE),
            Some(Mode::Diverted),
            "the wait partition never answered"
        );
    }

    #[test]
    fn a_blocked_provider_diverts_new_lanes_at_once_and_revoked_lanes_go() {
        let (mut l, now) = lanes();
        let mut ch = Vec::new();
        l.set_blocked(CS, true, now, &mut ch);
        l.assign(3, now, &mut ch);
        assert_eq!(l.mode((CS, 3)), Some(Mode::Diverted));
        assert_eq!(l.mode((Provider::Unico, 3)), Some(Mode::Unknown));
        l.revoke(3);
        assert_eq!(l.mode((CS, 3)), None);
        assert_eq!(
            l.route((CS, 3)),
            Route::Direct,
            "not ours: never diverted by us"
        );
    }
}
