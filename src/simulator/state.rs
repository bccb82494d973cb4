//! The state shared by all handlers: issued tokens, per-id fetch counters, outages, the runtime
//! dice, the Unico rate limiter and the call log.

use super::calls::{CallLog, CallRecord, Operation, SimulatorStats, CLIENT_CLOSED};
use super::config::SimulatorConfig;
use super::results::Dice;
use crate::provider::Provider;
use crate::telemetry;
use axum::response::Response;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jsonwebtoken::DecodingKey;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest subject id kept in the call log.
const MAX_SUBJECT_CHARS: usize = 64;

/// Everything the handlers share.
pub(crate) struct State {
    pub(crate) config: SimulatorConfig,
    /// The `aud` a Unico assertion must carry, without a trailing `/`.
    pub(crate) audience: String,
    /// The Unico service account's public key, when signatures are verified.
    pub(crate) unico_key: Option<DecodingKey>,
    started_at: Instant,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    fetches: Mutex<FetchCounts>,
    manual_outage: [AtomicBool; 2],
    rolls: AtomicU64,
    limiter: Option<DefaultDirectRateLimiter>,
    log: Mutex<CallLog>,
}

#[derive(Debug, Clone, Copy)]
struct IssuedToken {
    provider: Provider,
    expires: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler cannot leave these maps inconsistent (each update is one insert or
    // remove), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn index(provider: Provider) -> usize {
    match provider {
        Provider::ClearSale => 0,
        Provider::Unico => 1,
    }
}

impl State {
    pub(crate) fn new(
        config: SimulatorConfig,
        audience: String,
        unico_key: Option<DecodingKey>,
    ) -> Self {
        let limiter = config
            .unico
            .rate_limit_per_second
            .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        Self {
            fetches: Mutex::new(FetchCounts::new(config.max_tracked_ids)),
            log: Mutex::new(CallLog::new(config.call_log_capacity)),
            audience,
            unico_key,
            started_at: Instant::now(),
            tokens: Mutex::new(HashMap::new()),
            manual_outage: [AtomicBool::new(false), AtomicBool::new(false)],
            rolls: AtomicU64::new(0),
            limiter,
            config,
        }
    }

    /// Issues a new opaque token for `provider`, valid for `ttl`. Expired tokens are pruned
    /// here so the map stays as small as the set of live tokens.
    pub(crate) fn issue_token(&self, provider: Provider, ttl: Duration) -> String {
        let token = Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, issued| issued.expires > now);
        tokens.insert(
            token.clone(),
            IssuedToken {
                provider,
                expires: now + ttl,
            },
        );
        token
    }

    /// True when `token` was issued for `provider` and has not expired.
    pub(crate) fn token_is_valid(&self, provider: Provider, token: &str) -> bool {
        lock(&self.tokens)
            .get(token)
            .is_some_and(|issued| issued.provider == provider && issued.expires > Instant::now())
    }

    /// Forgets every issued token: the next API call with one gets 401 / 403.
    pub(crate) fn expire_tokens(&self) {
        lock(&self.tokens).clear();
    }

    /// True while `provider` is down, by the runtime switch or a configured window.
    pub(crate) fn in_outage(&self, provider: Provider) -> bool {
        if self.manual_outage[index(provider)].load(Ordering::Relaxed) {
            return true;
        }
        let elapsed = self.started_at.elapsed();
        self.config
            .faults
            .outages
            .iter()
            .any(|window| window.provider == provider && window.contains(elapsed))
    }

    /// Turns the runtime outage switch of `provider` on or off (configured windows still apply).
    pub(crate) fn set_outage(&self, provider: Provider, down: bool) {
        self.manual_outage[index(provider)].store(down, Ordering::Relaxed);
    }

    /// The next roll of the runtime dice, uniform in `[0, 1)`: the sequence is fixed by the
    /// seed, the order of requests decides who gets which roll.
    pub(crate) fn roll(&self) -> f64 {
        let n = self.rolls.fetch_add(1, Ordering::Relaxed);
        Dice::new(self.config.seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407)).unit()
    }

    /// Sleeps for the configured result latency: base, jitter, and sometimes the slow delay.
    pub(crate) async fn result_latency(&self) {
        let latency = &self.config.latency;
        let mut delay = latency.base;
        if !latency.jitter.is_zero() {
            delay += latency.jitter.mul_f64(self.roll());
        }
        if latency.slow_rate > 0.0 && self.roll() < latency.slow_rate {
            delay += latency.slow_latency;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// `Some(retry_after)` when the Unico rate limit refuses this request.
    pub(crate) fn unico_rate_limited(&self) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        limiter
            .check()
            .err()
            .map(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Counts one fetch of `id` and returns its number (1 for the first), or `None` when no
    /// fault needs counting for this provider.
    pub(crate) fn count_fetch(&self, provider: Provider, id: Uuid) -> Option<u32> {
        let faults = &self.config.faults;
        let needed = faults.not_visible_for > 0
            || (provider == Provider::ClearSale && faults.pending_fetches > 0);
        needed.then(|| lock(&self.fetches).increment(provider, id))
    }

    /// Starts recording one request; the record is written when the guard is finished or
    /// dropped (the client went away).
    pub(crate) fn call(self: &Arc<Self>, operation: Operation, subject: Option<&str>) -> CallGuard {
        CallGuard {
            state: Arc::clone(self),
            operation,
            subject: subject.map(|s| s.chars().take(MAX_SUBJECT_CHARS).collect()),
            started: Instant::now(),
            status: None,
        }
    }

    pub(crate) fn calls(&self) -> Vec<CallRecord> {
        lock(&self.log).records()
    }

    pub(crate) fn stats(&self) -> SimulatorStats {
        lock(&self.log).stats()
    }
}

/// Records a request in the call log when dropped.
pub(crate) struct CallGuard {
    state: Arc<State>,
    operation: Operation,
    subject: Option<String>,
    started: Instant,
    status: Option<u16>,
}

impl CallGuard {
    /// Notes the status of `response` and hands it back; the record is written on drop.
    pub(crate) fn finish(mut self, response: Response) -> Response {
        self.status = Some(response.status().as_u16());
        response
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        telemetry::simulator_answered(
            self.operation.provider(),
            self.operation.as_str(),
            self.subject.as_deref(),
            status,
        );
        lock(&self.state.log).record(
            self.operation,
            self.subject.take(),
            status,
            self.started,
            Instant::now(),
        );
    }
}

/// Fetch counts per (provider, id), forgetting the oldest id beyond the capacity.
#[derive(Debug)]
struct FetchCounts {
    capacity: usize,
    counts: HashMap<(Provider, Uuid), u32>,
    order: VecDeque<(Provider, Uuid)>,
}

impl FetchCounts {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            counts: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn increment(&mut self, provider: Provider, id: Uuid) -> u32 {
        let key = (provider, id);
        if let Some(count) = self.counts.get_mut(&key) {
            *count = count.saturating_add(1);
            return *count;
        }
        if self.order.len() >= self.capacity.max(1) {
            if let Some(oldest) = self.order.pop_front() {
                self.counts.remove(&oldest);
            }
        }
        self.order.push_back(key);
        self.counts.insert(key, 1);
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(config: SimulatorConfig) -> Arc<State> {
        Arc::new(State::new(config, "http://sim".into(), None))
    }

    #[test]
    fn fetch_counts_forget_the_oldest_id() {
        let mut counts = FetchCounts::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(counts.increment(Provider::Unico, a), 1);
        assert_eq!(counts.increment(Provider::Unico, a), 2);
        assert_eq!(counts.increment(Provider::ClearSale, a), 1);
        assert_eq!(counts.increment(Provider::Unico, b), 1);
        assert_eq!(counts.increment(Provider::Unico, c), 1);
        assert_eq!(counts.counts.len(), 2);
        // (Unico, a) was the oldest: it starts again.
        assert_eq!(counts.increment(Provider::Unico, a), 1);
    }

    #[test]
    fn fetches_are_counted_only_when_a_fault_needs_them() {
        let id = Uuid::new_v4();
        assert_eq!(
            state(SimulatorConfig::default()).count_fetch(Provider::ClearSale, id),
            None
        );
        let mut config = SimulatorConfig::default();
        config.faults.pending_fetches = 1;
        let s = state(config);
        assert_eq!(s.count_fetch(Provider::Unico, id), None);
        assert_eq!(s.count_fetch(Provider::ClearSale, id), Some(1));
        assert_eq!(s.count_fetch(Provider::ClearSale, id), Some(2));
    }

    #[test]
    fn tokens_are_per_provider_and_expire() {
        let s = state(SimulatorConfig::default());
        let token = s.issue_token(Provider::Unico, Duration::from_secs(60));
        assert!(s.token_is_valid(Provider::Unico, &token));
        assert!(!s.token_is_valid(Provider::ClearSale, &token));
        assert!(!s.token_is_valid(Provider::Unico, "forged"));
        let stale = s.issue_token(Provider::ClearSale, Duration::ZERO);
        assert!(!s.token_is_valid(Provider::ClearSale, &stale));
        s.expire_tokens();
        assert!(!s.token_is_valid(Provider::Unico, &token));
    }

    #[test]
    fn runtime_outage_switch_is_per_provider() {
        let s = state(SimulatorConfig::default());
        s.set_outage(Provider::Unico, true);
        assert!(s.in_outage(Provider::Unico));
        assert!(!s.in_outage(Provider::ClearSale));
        s.set_outage(Provider::Unico, false);
        assert!(!s.in_outage(Provider::Unico));
    }

    #[test]
    fn dropped_guard_records_client_closed() {
        let s = state(SimulatorConfig::default());
        drop(s.call(Operation::GetProcess, Some("x")));
        let calls = s.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].status, CLIENT_CLOSED);
        assert_eq!(calls[0].subject.as_deref(), Some("x"));
    }
}
