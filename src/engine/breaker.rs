//! A circuit breaker per provider.
//!
//! - **Closed**: calls go through.
//! - **Open**: a systemic failure (authentication broken, provider failing consistently) opened
//!   it, or a *failure streak*: `failure_streak` attempts in a row, across all records, found the
//!   provider unavailable (5xx, 408, 425, timeout, connection error) over at least
//!   `failure_streak_for`, with no answer in between. The streak opens it within seconds of an
//!   outage instead of after a record's whole retry budget (`enrich.retry.max_elapsed`), and
//!   records waiting between retries stop at once (`enrich::CircuitSignal::opened`). Every
//!   record of that provider waits, without calling the provider: no retries are burnt and
//!   nothing is dead-lettered. It stays open for `open_for`, growing by `multiplier` on each
//!   consecutive failed probe up to `max_open_for`.
//! - **Half-open**: after the open period, exactly one call (the probe) goes through; the others
//!   keep waiting. A probe that succeeds (any non-systemic answer) closes the circuit; a probe
//!   that fails opens it again.
//!
//! Waiting records keep their place in their key's queue, so order is preserved throughout.
//!
//! A caller holds a [`Permit`] while it calls and reports the outcome through it. A probe permit
//! that is dropped without an outcome (its task was cancelled, for example at a revocation
//! deadline, or panicked) puts the circuit back to open with its period already elapsed, so the
//! next waiter becomes the probe at once: a lost probe can never wedge its provider.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The `[engine.breaker]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerSettings {
    /// How long the circuit stays open after the first systemic failure.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Growth of the open period after each failed probe.
    pub multiplier: f64,
    /// The longest open period.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
    /// Attempts in a row, across all records, that found the provider unavailable with no
    /// answer in between, that open the circuit (with `failure_streak_for`); 0 turns the streak
    /// off (only a record's exhausted retry budget or broken authentication open it).
    pub failure_streak: u32,
    /// How long such a streak must last before it opens the circuit: a partial outage always
    /// has answers within it; a provider that is down has none.
    #[serde(with = "humantime_serde")]
    pub failure_streak_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            open_for: Duration::from_secs(5),
            multiplier: 2.0,
            max_open_for: Duration::from_secs(60),
            failure_streak: 20,
            failure_streak_for: Duration::from_secs(2),
        }
    }
}

/// The observable state (for metrics and readiness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open (the gauge value).
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed,
    Open {
        until: Instant,
        failures: u32,
        since: Instant,
    },
    HalfOpen {
        failures: u32,
        since: Instant,
    },
}

/// What a caller was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitKind {
    /// The circuit is closed.
    Normal,
    /// The single half-open probe.
    Probe,
}

/// The right to make one call, and the way to report its outcome. Dropping a probe permit
/// without reporting hands the probe to the next waiter.
#[derive(Debug)]
#[must_use = "report the call's outcome through the permit"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    kind: PermitKind,
    settled: bool,
}

impl Permit<'_> {
    /// Normal or probe.
    pub fn kind(&self) -> PermitKind {
        self.kind
    }

    /// True for the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.kind == PermitKind::Probe
    }

    /// The call got an answer that was not systemic: close the circuit.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.on_success();
    }

    /// The call failed systemically: open (or re-open) the circuit. Returns the open period when
    /// this call opened it, `None` when another in-flight call already had.
    pub fn failed_systemically(mut self) -> Option<Duration> {
        self.settled = true;
        self.breaker.on_systemic_failure(self.kind)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.kind == PermitKind::Probe && !self.settled {
            self.breaker.abandon_probe();
        }
    }
}

/// One provider's breaker. Share it behind an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    successes: std::sync::atomic::AtomicU64,
    /// Mirrors `inner` being `Closed`: the lock-free fast path of [`CircuitBreaker::acquire`].
    closed: std::sync::atomic::AtomicBool,
    /// The current failure streak: when it started and its length (`None`: the last attempt
    /// got an answer).
    streak: Mutex<Option<(Instant, u32)>>,
    /// Mirrors `streak` being `Some`: the lock-free fast path of [`CircuitBreaker::answered`].
    streaking: std::sync::atomic::AtomicBool,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            settings,
            inner: Mutex::new(Inner::Closed),
            changed,
            successes: Default::default(),
            closed: std::sync::atomic::AtomicBool::new(true),
            streak: Mutex::new(None),
            streaking: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// An attempt got an answer from the provider (a result, a 404, a 429, a refusal): the
    /// failure streak ends. Cheap when there is no streak (the hot path).
    pub fn answered(&self) {
        if self.streaking.load(std::sync::atomic::Ordering::Relaxed) {
            let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
            *streak = None;
            self.streaking
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// An attempt found the provider unavailable (5xx, 408, 425, timeout, connection error).
    /// Opens the closed circuit when the streak is long enough (`failure_streak` attempts over
    /// at least `failure_streak_for`); returns the open period when this call opened it.
    pub fn unavailable(&self) -> Option<Duration> {
        if self.settings.failure_streak == 0 {
            return None;
        }
        let now = Instant::now();
        {
            let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
            let (started, count) = streak.get_or_insert((now, 0));
            *count = count.saturating_add(1);
            self.streaking
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if *count < self.settings.failure_streak
                || now.duration_since(*started) < self.settings.failure_streak_for
            {
                return None;
            }
            *streak = None;
            self.streaking
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let inner = self.lock();
        if !matches!(*inner, Inner::Closed) {
            // Already open (or probing): the probe decides.
            return None;
        }
        Some(self.open(inner, 0, now, now))
    }

    /// Resolves once the circuit is not closed (at once if it is not). Cancel-safe.
    pub async fn opened(&self) {
        let mut changes = self.changed.subscribe();
        while self.closed.load(std::sync::atomic::Ordering::Acquire) {
            if changes.changed().await.is_err() {
                // The breaker lives as long as its receivers' owner: unreachable, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of a plain enum: the
        // value is still a valid state, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { until, .. } if Instant::now() < *until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How long the circuit has been open or half-open, if it is not closed.
    pub fn not_closed_for(&self) -> Option<Duration> {
        match &*self.lock() {
            Inner::Closed => None,
            Inner::Open { since, .. } | Inner::HalfOpen { since, .. } => Some(since.elapsed()),
        }
    }

    /// Successful calls so far (lets a caller tell whether the provider worked for others since
    /// its own last attempt).
    pub fn successes(&self) -> u64 {
        self.successes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn permit(&self, kind: PermitKind) -> Permit<'_> {
        Permit {
            breaker: self,
            kind,
            settled: false,
        }
    }

    /// Waits until a call may be made. Cancel-safe: dropping the future while it waits takes
    /// nothing.
    pub async fn acquire(&self) -> Permit<'_> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return self.permit(PermitKind::Normal);
        }
        let mut changes = self.changed.subscribe();
        loop {
            let wait_until = {
                let mut inner = self.lock();
                match &*inner {
                    Inner::Closed => return self.permit(PermitKind::Normal),
                    Inner::Open {
                        until,
                        failures,
                        since,
                    } => {
                        if Instant::now() >= *until {
                            *inner = Inner::HalfOpen {
                                failures: *failures,
                                since: *since,
                            };
                            // The permit exists before anyone else can observe the half-open
                            // state, so a cancellation from here on reaches its drop.
                            let permit = self.permit(PermitKind::Probe);
                            drop(inner);
                            self.changed.send_modify(|v| *v += 1);
                            return permit;
                        }
                        Some(*until)
                    }
                    Inner::HalfOpen { .. } => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = changes.changed() => {}
                    }
                }
                None => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// A probe ended without an outcome: open again with the period already over, so the next
    /// waiter probes at once. Failures are not counted: nothing was learnt about the provider.
    fn abandon_probe(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { failures, since } = *inner {
            *inner = Inner::Open {
                until: Instant::now(),
                failures,
                since,
            };
            drop(inner);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// A call got an answer that was not systemic: close the circuit.
    pub(crate) fn on_success(&self) {
        self.successes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        if !matches!(*inner, Inner::Closed) {
            *inner = Inner::Closed;
            self.closed
                .store(true, std::sync::atomic::Ordering::Release);
            drop(inner);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// A call failed systemically: open (or re-open) the circuit. Returns the open period when
    /// this call opened it, `None` when another in-flight call already had.
    pub(crate) fn on_systemic_failure(&self, permit: PermitKind) -> Option<Duration> {
        let now = Instant::now();
        let inner = self.lock();
        let (failures, since) = match &*inner {
            Inner::Closed => (0, now),
            // Another in-flight call already opened it: do not extend.
            Inner::Open { .. } if permit == PermitKind::Normal => return None,
            Inner::Open {
                failures, since, ..
            }
            | Inner::HalfOpen { failures, since } => (failures + 1, *since),
        };
        Some(self.open(inner, failures, since, now))
    }

    /// Opens the circuit (held in `inner`) for the period of its `failures`-th failed probe,
    /// open or not closed since `since`, and wakes the waiters; returns the period.
    fn open(
        &self,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        failures: u32,
        since: Instant,
        now: Instant,
    ) -> Duration {
        let period = self.open_period(failures);
        *inner = Inner::Open {
            until: now + period,
            failures,
            since,
        };
        self.closed
            .store(false, std::sync::atomic::Ordering::Release);
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        period
    }

    fn open_period(&self, failures: u32) -> Duration {
        let factor = self
            .settings
            .multiplier
            .max(1.0)
            .powi(failures.min(30) as i32);
        Duration::from_secs_f64(
            (self.settings.open_for.as_secs_f64() * factor)
                .min(self.settings.max_open_for.as_secs_f64()),
        )
    }
}

impl crate::health::Circuit for CircuitBreaker {
    fn not_closed_for(&self) -> Option<Duration> {
        CircuitBreaker::not_closed_for(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            open_for: Duration::from_secs(5),
            multiplier: 2.0,
            max_open_for: Duration::from_secs(12),
            failure_streak: 3,
            failure_streak_for: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_waits_probes_once_and_closes() {
        let b = Arc::new(CircuitBreaker::new(settings()));
        let permit = b.acquire().await;
        assert_eq!(permit.kind(), PermitKind::Normal);
        assert_eq!(permit.failed_systemically(), Some(Duration::from_secs(5)));
        assert_eq!(b.state(), BreakerState::Open);

        let started = Instant::now();
        let (probe_tx, probe_rx) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let b = b.clone();
            async move {
                let permit = b.acquire().await;
                let kind = permit.kind();
                let _ = probe_rx.await;
                permit.succeeded();
                kind
            }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        let second = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.kind() }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "only one probe while half-open");
        assert!(started.elapsed() >= Duration::from_secs(5));
        probe_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), PermitKind::Probe);
        assert_eq!(second.await.unwrap(), PermitKind::Normal);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.successes(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_grow_the_open_period_up_to_the_cap() {
        let b = CircuitBreaker::new(settings());
        assert_eq!(
            b.acquire().await.failed_systemically(),
            Some(Duration::from_secs(5))
        );
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        assert_eq!(probe.failed_systemically(), Some(Duration::from_secs(10)));
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        assert_eq!(probe.failed_systemically(), Some(Duration::from_secs(12)));
        assert!(b.not_closed_for().unwrap() >= Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_concurrent_failure_does_not_extend_the_open_period() {
        let b = CircuitBreaker::new(settings());
        let (one, two) = (b.acquire().await, b.acquire().await);
        one.failed_systemically();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            two.failed_systemically(),
            None,
            "already open: not reopened"
        );
        let t = Instant::now();
        assert!(b.acquire().await.is_probe());
        assert_eq!(t.elapsed(), Duration::from_secs(3));
    }

    /// Defect: the probe permit was a plain value, so a probe whose task was cancelled left the
    /// circuit half-open forever and every other record of the provider waiting.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_hands_the_probe_to_the_next_waiter() {
        let b = Arc::new(CircuitBreaker::new(settings()));
        b.acquire().await.failed_systemically();
        tokio::time::advance(Duration::from_secs(5)).await;
        let prober = tokio::spawn({
            let b = b.clone();
            async move {
                let _probe = b.acquire().await;
                // The call never ends: the task is cancelled (a revocation deadline).
                std::future::pending::<()>().await;
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.is_probe() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while the probe runs");
        prober.abort();
        let waited = tokio::time::timeout(Duration::from_secs(1), waiter).await;
        assert!(
            matches!(waited, Ok(Ok(true))),
            "the next waiter becomes the probe at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_normal_permit_changes_nothing() {
        let b = CircuitBreaker::new(settings());
        drop(b.acquire().await);
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().await.failed_systemically();
        let t = Instant::now();
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(5),
            "no extra failure counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_streak_opens_the_circuit_only_when_long_enough() {
        let b = CircuitBreaker::new(settings());
        // Three failures at once: long enough in count, not in time.
        for _ in 0..3 {
            assert_eq!(b.unavailable(), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            b.unavailable(),
            Some(Duration::from_secs(5)),
            "4 failures over 2 s open it"
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.unavailable(), None, "already open");
        // The probe closes it like any other opening.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ends_the_failure_streak() {
        let b = CircuitBreaker::new(settings());
        for _ in 0..10 {
            assert_eq!(b.unavailable(), None);
            tokio::time::sleep(Duration::from_millis(500)).await;
            if b.streaking.load(std::sync::atomic::Ordering::Relaxed) {
                // Every other attempt answers: a partial outage never opens it.
                b.answered();
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_streak_never_opens_the_circuit() {
        let b = CircuitBreaker::new(BreakerSettings {
            failure_streak: 0,
            ..settings()
        });
        for _ in 0..100 {
            assert_eq!(b.unavailable(), None);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opened_resolves_when_the_circuit_opens() {
        let b = Arc::new(CircuitBreaker::new(settings()));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "closed: waits");
        b.acquire().await.failed_systemically();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resolves once open")
            .expect("no panic");
        // Already open: at once.
        tokio::time::timeout(Duration::from_millis(1), b.opened())
            .await
            .expect("resolves at once");
    }
}
