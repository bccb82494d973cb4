//! The per-provider request gate: a rate limit (GCRA token bucket) and a cap on requests in
//! flight. Every HTTP request to a provider, token requests included, passes its provider's gate.

use crate::provider::settings::RequestLimits;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::fmt;
use std::num::NonZeroU32;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Rate limit and concurrency cap for one provider.
pub struct Gate {
    /// `None` when the rate limit is disabled (`rate_per_second = 0`).
    rate: Option<DefaultDirectRateLimiter>,
    /// `None` when concurrency is not capped (`max_concurrent = 0`).
    slots: Option<Semaphore>,
}

/// The right to send one request; the concurrency slot is released when this is dropped.
#[must_use = "the request slot is released as soon as the permit is dropped"]
pub struct GatePermit<'a> {
    _slot: Option<SemaphorePermit<'a>>,
}

impl Gate {
    /// A gate enforcing `limits`: `rate_per_second` requests per second with a bucket of `burst`
    /// (the rate when `burst` is 0; no rate limit when the rate is 0), and at most
    /// `max_concurrent` requests in flight (no cap when 0).
    pub fn new(limits: &RequestLimits) -> Self {
        let quota = NonZeroU32::new(limits.rate_per_second).map(|rate| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        Self::with_quota(quota, limits.max_concurrent)
    }

    fn with_quota(quota: Option<Quota>, max_concurrent: usize) -> Self {
        Self {
            rate: quota.map(RateLimiter::direct),
            slots: (max_concurrent > 0).then(|| Semaphore::new(max_concurrent)),
        }
    }

    /// Waits for a concurrency slot, then for the rate limit, and returns the permit to hold for
    /// the whole request (until its body has been read).
    ///
    /// The slot is taken first so that the moment the rate limiter lets a request through is the
    /// moment it is sent.
    pub async fn acquire(&self) -> GatePermit<'_> {
        let slot = match &self.slots {
            // The semaphore is never closed, so `acquire` cannot fail.
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        GatePermit { _slot: slot }
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("rate_limited", &self.rate.is_some())
            .field(
                "available_slots",
                &self.slots.as_ref().map(Semaphore::available_permits),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn limits(rate_per_second: u32, burst: u32, max_concurrent: usize) -> RequestLimits {
        RequestLimits {
            rate_per_second,
            burst,
            max_concurrent,
        }
    }

    #[tokio::test]
    async fn max_concurrent_holds_under_many_acquirers() {
        let gate = Arc::new(Gate::new(&limits(0, 0, 3)));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (gate, in_flight, peak) = (gate.clone(), in_flight.clone(), peak.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire().await;
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    for _ in 0..5 {
                        tokio::task::yield_now().await;
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_slot_is_released_when_the_permit_drops() {
        let gate = Gate::new(&limits(0, 0, 1));
        let first = gate.acquire().await;
        assert!(gate.acquire().now_or_never().is_none());
        drop(first);
        assert!(gate.acquire().now_or_never().is_some());
    }

    #[tokio::test]
    async fn the_request_after_the_burst_waits_for_the_rate() {
        // One request per hour with a burst of 3: the 4th request cannot pass during the test.
        let quota =
            Quota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(3).unwrap());
        let gate = Gate::with_quota(Some(quota), 0);
        for n in 1..=3 {
            assert!(
                gate.acquire().now_or_never().is_some(),
                "request {n} is within the burst"
            );
        }
        assert!(gate.acquire().now_or_never().is_none());
    }

    #[tokio::test]
    async fn zero_rate_and_zero_concurrency_mean_unlimited() {
        let gate = Gate::new(&limits(0, 0, 0));
        let permits: Vec<_> = (0..1000)
            .map(|_| gate.acquire().now_or_never().expect("never waits"))
            .collect();
        assert_eq!(permits.len(), 1000);
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        let gate = Gate::new(&limits(5, 0, 0));
        let rate = gate.rate.as_ref().unwrap();
        // More than the bucket holds can never pass; exactly the bucket passes at once.
        assert!(rate.check_n(NonZeroU32::new(6).unwrap()).is_err());
        assert!(matches!(
            rate.check_n(NonZeroU32::new(5).unwrap()),
            Ok(Ok(()))
        ));
    }
}
