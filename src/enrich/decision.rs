//! The one place where a retry, pause or dead-letter decision is made.
//!
//! Everything here is a pure function of its inputs: what one attempt got, the per-event
//! counters ([`Tally`]), the [`Budget`], the time spent so far, the settings and a jitter draw.
//! No clock, no randomness of its own, no I/O, so every rule is unit-tested below. The loops
//! that call these functions only carry out the decision:
//!
//! - the enricher (`enrich/enricher.rs`) makes one request, asks [`Tally::decide`], then sleeps
//!   (unless cancelled) and retries, or returns the answer, the dead letter or the pause;
//! - the worker (`engine/worker.rs`) waits for the provider's circuit, runs the enricher, and
//!   asks [`after_systemic`] whether a systemic outcome pauses the provider or dead-letters the
//!   record, and [`permanent_failure_reached_provider`] whether a permanent failure tells the
//!   circuit that the provider answered.
//!
//! The failure classes themselves (permanent, transient, systemic) stay in
//! [`crate::provider::classify`]; the delays in [`crate::retry`]. Reason strings are formatted only
//! on the decisions that end the enrichment with a failure, never on an answer or a retry.

use super::settings::EnrichSettings;
use crate::failure::ErrorClass;
use crate::provider::{classify, FailureClass, NotFoundGrace, Provider, ProviderError};
use std::time::Duration;

/// How many attempts an enrichment may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The whole retry, not-found and pending budgets of the settings.
    Full,
    /// One attempt: the half-open probe of a circuit breaker. Any answer other than a systemic
    /// failure ends it.
    Probe,
    /// A fallback poll (`engine::fallback`): the retry and not-found budgets of `Full`, but a
    /// ClearSale module still pending ends it at once as reachable: the fallback polls again on
    /// its own schedule, so the pending re-fetch would only multiply its requests.
    Poll,
}

/// What one attempt got. `T` is the provider's answer; the decision hands it back untouched in
/// [`Decision::Publish`].
#[derive(Debug)]
pub enum Attempt<T> {
    /// The provider answered. `still_pending` is true when the ClearSale module the webhook named
    /// still reads pending.
    Answered { answer: T, still_pending: bool },
    /// The call failed.
    Failed(ProviderError),
}

/// Why an enrichment waits before its next attempt (the `reason` label of the retry metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The ClearSale module still reads pending.
    Pending,
    /// A 404 within its "not yet visible" grace.
    NotFound,
    /// 429.
    RateLimited,
    /// Another retryable HTTP status (408, 425, 5xx).
    Status,
    /// The request timed out.
    Timeout,
    /// The connection failed.
    Connect,
    /// Anything else (not produced by today's classification; kept for completeness).
    Other,
}

impl RetryReason {
    /// The stable label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Pending => "pending",
            RetryReason::NotFound => "not_found",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::Status => "status",
            RetryReason::Timeout => "timeout",
            RetryReason::Connect => "connect",
            RetryReason::Other => "other",
        }
    }

    fn of(error: &ProviderError) -> RetryReason {
        match error {
            ProviderError::Status { status: 404, .. } => RetryReason::NotFound,
            ProviderError::Status { status: 429, .. } => RetryReason::RateLimited,
            ProviderError::Status { .. } => RetryReason::Status,
            ProviderError::Timeout { .. } => RetryReason::Timeout,
            ProviderError::Connect { .. } => RetryReason::Connect,
            _ => RetryReason::Other,
        }
    }
}

/// What the enrichment does after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<T> {
    /// Publish the answer. `still_pending` is true when the pending re-fetch budget ran out while
    /// the module still read pending (it is published as pending).
    Publish { answer: T, still_pending: bool },
    /// Wait `delay`, then make another attempt.
    Retry {
        delay: Duration,
        reason: RetryReason,
    },
    /// A probe ([`Budget::Probe`]) reached the provider but the record needs more attempts: the
    /// provider is up.
    Reachable,
    /// Retrying cannot help: dead-letter the record with `class`.
    DeadLetter {
        class: ErrorClass,
        reason: String,
        http_status: Option<u16>,
    },
    /// The provider, or our access to it, is broken: pause it (open its circuit), do not
    /// dead-letter. `retries_exhausted` is true when transient failures outlasted the retry
    /// budget (see [`after_systemic`]).
    Pause {
        reason: String,
        retries_exhausted: bool,
    },
}

/// What an attempt tells the provider's circuit breaker about the provider (its failure streak,
/// `engine::breaker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The provider answered: a result, a 404, a 429, a refusal, a body it could not parse.
    Answered,
    /// The provider did not answer usefully: a 5xx, 408 or 425, a timeout, a connection error.
    Unavailable,
}

impl<T> Decision<T> {
    /// What the attempt this decision follows tells the circuit: `None` for an authentication or
    /// configuration failure, or a failed probe (they settle the circuit themselves), and for a
    /// disabled provider (no attempt).
    pub fn signal(&self) -> Option<Signal> {
        match self {
            Decision::Publish { .. } | Decision::Reachable => Some(Signal::Answered),
            Decision::DeadLetter { class, .. } => {
                (*class != ErrorClass::UnsupportedEvent).then_some(Signal::Answered)
            }
            Decision::Retry { reason, .. } => Some(match reason {
                RetryReason::Pending | RetryReason::NotFound | RetryReason::RateLimited => {
                    Signal::Answered
                }
                RetryReason::Status
                | RetryReason::Timeout
                | RetryReason::Connect
                | RetryReason::Other => Signal::Unavailable,
            }),
            Decision::Pause {
                retries_exhausted: true,
                ..
            } => Some(Signal::Unavailable),
            Decision::Pause { .. } => None,
        }
    }
}

/// The counters of one event's enrichment. Starts at zero; [`Tally::decide`] updates it once per
/// attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attempts made, the one being decided included.
    pub attempts: u32,
    /// Delays already taken for transient failures other than 404 (the backoff exponent).
    pub retries: u32,
    /// Attempts that answered 404.
    pub not_found: u32,
    /// Re-fetches already scheduled because the module read pending.
    pub pending_polls: u32,
}

impl Tally {
    /// Counts one attempt and decides what follows it.
    ///
    /// `elapsed` is the time since the enrichment's first attempt started; `jitter` draws a
    /// number in `[0, 1)` and is called only when a backoff delay is computed.
    ///
    /// | attempt got | budget | decision |
    /// |---|---|---|
    /// | an answer, not pending | any | publish |
    /// | a pending answer | probe | reachable |
    /// | a pending answer, pending budget left | full | retry (`pending`) |
    /// | a pending answer, pending budget spent | full | publish, still pending |
    /// | a permanent failure (404 after its grace included) | any | dead-letter with its class |
    /// | a systemic failure | any | pause |
    /// | a 404 within its grace | probe | reachable |
    /// | another transient failure | probe | pause (`probe failed`) |
    /// | a 404 within its grace | full | retry after the fixed not-found delay |
    /// | another transient failure, retry budget left | full | retry after the backoff (or the clamped `Retry-After`) |
    /// | another transient failure, retry budget spent | full | pause, retries exhausted |
    pub fn decide<T>(
        &mut self,
        attempt: Attempt<T>,
        budget: Budget,
        elapsed: Duration,
        settings: &EnrichSettings,
        jitter: impl FnOnce() -> f64,
    ) -> Decision<T> {
        self.attempts = self.attempts.saturating_add(1);
        let probe = budget == Budget::Probe;
        let error = match attempt {
            Attempt::Answered {
                answer,
                still_pending: false,
            } => {
                return Decision::Publish {
                    answer,
                    still_pending: false,
                }
            }
            Attempt::Answered { .. } if probe || budget == Budget::Poll => {
                return Decision::Reachable
            }
            Attempt::Answered { answer, .. } => {
                return match settings.pending.next_delay(
                    self.pending_polls,
                    jitter(),
                    None,
                    elapsed,
                ) {
                    Some(delay) => {
                        self.pending_polls += 1;
                        Decision::Retry {
                            delay,
                            reason: RetryReason::Pending,
                        }
                    }
                    None => Decision::Publish {
                        answer,
                        still_pending: true,
                    },
                };
            }
            Attempt::Failed(error) => error,
        };

        let is_404 = error.http_status() == Some(404);
        if is_404 {
            self.not_found += 1;
        }
        let grace = if self.not_found < settings.not_found.attempts {
            NotFoundGrace::Open
        } else {
            NotFoundGrace::Exhausted
        };
        match classify(&error, grace) {
            FailureClass::Permanent => Decision::DeadLetter {
                class: permanent_class(&error),
                reason: error.to_string(),
                http_status: error.http_status(),
            },
            FailureClass::Systemic => Decision::Pause {
                reason: error.to_string(),
                retries_exhausted: false,
            },
            // The provider answered: it is up; the record's 404 grace goes on.
            FailureClass::Transient { .. } if probe && is_404 => Decision::Reachable,
            FailureClass::Transient { .. } if probe => Decision::Pause {
                reason: format!("probe failed: {error}"),
                retries_exhausted: false,
            },
            FailureClass::Transient { retry_after } => {
                let delay = if is_404 {
                    Some(settings.not_found.delay)
                } else {
                    settings
                        .retry
                        .next_delay(self.retries, jitter(), retry_after, elapsed)
                };
                match delay {
                    Some(delay) => {
                        self.retries += u32::from(!is_404);
                        Decision::Retry {
                            delay,
                            reason: RetryReason::of(&error),
                        }
                    }
                    None => Decision::Pause {
                        reason: format!(
                            "provider failing consistently: {} attempts over {elapsed:?}, last: {error}",
                            self.attempts
                        ),
                        retries_exhausted: true,
                    },
                }
            }
        }
    }
}

/// The decision for an event whose provider has no client in this deployment: dead-letter it as
/// `unsupported_event`, without an attempt.
pub fn provider_disabled<T>(provider: Provider) -> Decision<T> {
    Decision::DeadLetter {
        class: ErrorClass::UnsupportedEvent,
        reason: format!("provider {provider} is disabled in this deployment"),
        http_status: None,
    }
}

/// The dead-letter class of a permanent failure.
fn permanent_class(error: &ProviderError) -> ErrorClass {
    match error {
        ProviderError::Status { status: 404, .. } => ErrorClass::NotFound,
        ProviderError::InvalidResponse { .. } => ErrorClass::InvalidResponse,
        _ => ErrorClass::ProviderRejected,
    }
}

/// What the worker does with a systemic outcome ([`Decision::Pause`]) of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSystemic {
    /// Pause: report the failure to the provider's circuit and wait for it like the other
    /// records of the provider.
    Pause,
    /// A poison record: dead-letter it as [`ErrorClass::RetriesExhausted`].
    DeadLetterRetriesExhausted,
}

/// Poison-record detection. A record is dead-lettered as `retries_exhausted` only when its retry
/// budget ran out (`retries_exhausted`) in a *later* round, after the provider answered other
/// records since this record's previous systemic failure: `successes_at_last_pause` is the
/// circuit's success count when this record last paused (`None` in its first round) and
/// `successes_now` the count now. The first round never dead-letters: a record caught at the
/// start of an outage must wait like the others. Authentication/configuration failures
/// (`retries_exhausted == false`) always pause.
pub fn after_systemic(
    retries_exhausted: bool,
    successes_at_last_pause: Option<u64>,
    successes_now: u64,
) -> AfterSystemic {
    let served_others = successes_at_last_pause.is_some_and(|before| successes_now > before);
    if retries_exhausted && served_others {
        AfterSystemic::DeadLetterRetriesExhausted
    } else {
        AfterSystemic::Pause
    }
}

/// Whether a permanent failure ([`Decision::DeadLetter`]) tells the provider's circuit that the
/// provider answered: always for a probe (its permit must be settled), and otherwise when at
/// least one request was made (a disabled provider makes none).
pub fn permanent_failure_reached_provider(budget: Budget, attempts: u32) -> bool {
    budget == Budget::Probe || attempts > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::NotFoundSettings;
    use crate::retry::BackoffPolicy;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn settings() -> EnrichSettings {
        EnrichSettings {
            retry: BackoffPolicy {
                initial: ms(100),
                multiplier: 2.0,
                max_delay: ms(1_000),
                max_elapsed: ms(5_000),
            },
            not_found: NotFoundSettings {
                attempts: 3,
                delay: ms(700),
            },
            pending: BackoffPolicy {
                initial: ms(2_000),
                multiplier: 2.0,
                max_delay: ms(8_000),
                max_elapsed: ms(20_000),
            },
            include_raw_response: true,
        }
    }

    fn status(code: u16, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::Status {
            provider: Provider::Unico,
            operation: "get process",
            status: code,
            retry_after,
            detail: "d".into(),
        }
    }

    fn timeout() -> ProviderError {
        ProviderError::Timeout {
            provider: Provider::ClearSale,
            operation: "get analysis",
            timeout: ms(1_000),
        }
    }

    fn connect() -> ProviderError {
        ProviderError::Connect {
            provider: Provider::ClearSale,
            operation: "get analysis",
            message: "refused".into(),
        }
    }

    fn invalid() -> ProviderError {
        ProviderError::InvalidResponse {
            provider: Provider::ClearSale,
            operation: "get analysis",
            message: "eof".into(),
        }
    }

    fn auth() -> ProviderError {
        ProviderError::Auth {
            provider: Provider::Unico,
            status: Some(401),
            message: "bad key".into(),
        }
    }

    fn config() -> ProviderError {
        ProviderError::Config {
            provider: Provider::Unico,
            message: "bad url".into(),
        }
    }

    fn answered(still_pending: bool) -> Attempt<&'static str> {
        Attempt::Answered {
            answer: "answer",
            still_pending,
        }
    }

    fn failed(error: ProviderError) -> Attempt<&'static str> {
        Attempt::Failed(error)
    }

    /// Decides one attempt on `tally` with a fixed jitter of one half.
    fn decide(
        tally: &mut Tally,
        attempt: Attempt<&'static str>,
        budget: Budget,
        elapsed: Duration,
    ) -> Decision<&'static str> {
        tally.decide(attempt, budget, elapsed, &settings(), || 0.5)
    }

    fn retry(delay: Duration, reason: RetryReason) -> Decision<&'static str> {
        Decision::Retry { delay, reason }
    }

    fn publish(still_pending: bool) -> Decision<&'static str> {
        Decision::Publish {
            answer: "answer",
            still_pending,
        }
    }

    fn pause(reason: &str, retries_exhausted: bool) -> Decision<&'static str> {
        Decision::Pause {
            reason: reason.into(),
            retries_exhausted,
        }
    }

    fn dead_letter(
        class: ErrorClass,
        reason: &str,
        http_status: Option<u16>,
    ) -> Decision<&'static str> {
        Decision::DeadLetter {
            class,
            reason: reason.into(),
            http_status,
        }
    }

    /// One row: the counters before, the attempt, the budget, the elapsed time; the expected
    /// decision and counters after.
    struct Row {
        name: &'static str,
        before: Tally,
        attempt: Attempt<&'static str>,
        budget: Budget,
        elapsed: Duration,
        decision: Decision<&'static str>,
        after: Tally,
    }

    fn tally(attempts: u32, retries: u32, not_found: u32, pending_polls: u32) -> Tally {
        Tally {
            attempts,
            retries,
            not_found,
            pending_polls,
        }
    }

    #[test]
    fn decision_table() {
        use Budget::{Full, Probe};
        use RetryReason as R;
        let zero = Duration::ZERO;
        let rows = vec![
            // Answers.
            Row {
                name: "a final answer is published",
                before: tally(0, 0, 0, 0),
                attempt: answered(false),
                budget: Full,
                elapsed: zero,
                decision: publish(false),
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "a final answer ends a probe by publishing it",
                before: tally(0, 0, 0, 0),
                attempt: answered(false),
                budget: Probe,
                elapsed: zero,
                decision: publish(false),
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "a pending answer to a probe: the provider is reachable",
                before: tally(0, 0, 0, 0),
                attempt: answered(true),
                budget: Probe,
                elapsed: zero,
                decision: Decision::Reachable,
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "a pending answer is re-fetched after the pending backoff (half of 2 s)",
                before: tally(0, 0, 0, 0),
                attempt: answered(true),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(1_000), R::Pending),
                after: tally(1, 0, 0, 1),
            },
            Row {
                name: "the pending backoff grows with the polls (half of 8 s, capped)",
                before: tally(3, 0, 0, 3),
                attempt: answered(true),
                budget: Full,
                elapsed: ms(10_000),
                decision: retry(ms(4_000), R::Pending),
                after: tally(4, 0, 0, 4),
            },
            Row {
                name: "the pending budget spent: published as still pending",
                before: tally(3, 0, 0, 3),
                attempt: answered(true),
                budget: Full,
                elapsed: ms(16_001),
                decision: publish(true),
                after: tally(4, 0, 0, 3),
            },
            // Permanent failures.
            Row {
                name: "400 is dead-lettered as provider_rejected",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(400, None)),
                budget: Full,
                elapsed: zero,
                decision: dead_letter(
                    ErrorClass::ProviderRejected,
                    "unico get process: HTTP 400: d",
                    Some(400),
                ),
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "a permanent failure ends a probe with a dead letter too",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(422, None)),
                budget: Probe,
                elapsed: zero,
                decision: dead_letter(
                    ErrorClass::ProviderRejected,
                    "unico get process: HTTP 422: d",
                    Some(422),
                ),
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "an unparseable answer is dead-lettered as invalid_response",
                before: tally(0, 0, 0, 0),
                attempt: failed(invalid()),
                budget: Full,
                elapsed: zero,
                decision: dead_letter(
                    ErrorClass::InvalidResponse,
                    "clearsale get analysis: unparseable response: eof",
                    None,
                ),
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "the third 404 (grace of 3 attempts) is dead-lettered as not_found",
                before: tally(2, 0, 2, 0),
                attempt: failed(status(404, None)),
                budget: Full,
                elapsed: ms(1_400),
                decision: dead_letter(
                    ErrorClass::NotFound,
                    "unico get process: HTTP 404: d",
                    Some(404),
                ),
                after: tally(3, 0, 3, 0),
            },
            // Systemic failures.
            Row {
                name: "authentication failing after a refresh pauses",
                before: tally(0, 0, 0, 0),
                attempt: failed(auth()),
                budget: Full,
                elapsed: zero,
                decision: pause("unico: authentication failed: bad key", false),
                after: tally(1, 0, 0, 0),
            },
            Row {
                name: "a configuration error pauses, also in a probe",
                before: tally(0, 0, 0, 0),
                attempt: failed(config()),
                budget: Probe,
                elapsed: zero,
                decision: pause("unico: configuration error: bad url", false),
                after: tally(1, 0, 0, 0),
            },
            // 404 grace.
            Row {
                name: "a first 404 waits the fixed not-found delay",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(404, None)),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(700), R::NotFound),
                after: tally(1, 0, 1, 0),
            },
            Row {
                name: "a 404 within the grace is not bounded by the retry budget",
                before: tally(1, 2, 1, 0),
                attempt: failed(status(404, None)),
                budget: Full,
                elapsed: ms(60_000),
                decision: retry(ms(700), R::NotFound),
                after: tally(2, 2, 2, 0),
            },
            Row {
                name: "a 404 within the grace answers a probe: reachable",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(404, None)),
                budget: Probe,
                elapsed: zero,
                decision: Decision::Reachable,
                after: tally(1, 0, 1, 0),
            },
            // Transient failures.
            Row {
                name: "a first 500 waits half of the initial backoff",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(500, None)),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(50), R::Status),
                after: tally(1, 1, 0, 0),
            },
            Row {
                name: "the backoff grows with the retries",
                before: tally(3, 3, 0, 0),
                attempt: failed(status(503, None)),
                budget: Full,
                elapsed: ms(1_000),
                decision: retry(ms(400), R::Status),
                after: tally(4, 4, 0, 0),
            },
            Row {
                name: "a 429 honours Retry-After, clamped to max_delay",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(429, Some(Duration::from_secs(30)))),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(1_000), R::RateLimited),
                after: tally(1, 1, 0, 0),
            },
            Row {
                name: "a Retry-After within max_delay is taken as is",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(503, Some(ms(300)))),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(300), R::Status),
                after: tally(1, 1, 0, 0),
            },
            Row {
                name: "a timeout is retried",
                before: tally(0, 0, 0, 0),
                attempt: failed(timeout()),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(50), R::Timeout),
                after: tally(1, 1, 0, 0),
            },
            Row {
                name: "a connection error is retried",
                before: tally(0, 0, 0, 0),
                attempt: failed(connect()),
                budget: Full,
                elapsed: zero,
                decision: retry(ms(50), R::Connect),
                after: tally(1, 1, 0, 0),
            },
            Row {
                name: "the retry budget spent: the provider is failing consistently",
                before: tally(6, 5, 0, 0),
                attempt: failed(status(502, None)),
                budget: Full,
                elapsed: ms(4_700),
                decision: pause(
                    "provider failing consistently: 7 attempts over 4.7s, last: unico get process: HTTP 502: d",
                    true,
                ),
                after: tally(7, 5, 0, 0),
            },
            Row {
                name: "a transient failure of a probe pauses again",
                before: tally(0, 0, 0, 0),
                attempt: failed(status(503, None)),
                budget: Probe,
                elapsed: zero,
                decision: pause("probe failed: unico get process: HTTP 503: d", false),
                after: tally(1, 0, 0, 0),
            },
        ];
        for row in rows {
            let mut t = row.before;
            let got = decide(&mut t, row.attempt, row.budget, row.elapsed);
            assert_eq!(got, row.decision, "{}", row.name);
            assert_eq!(t, row.after, "{} (counters)", row.name);
        }
    }

    #[test]
    fn a_poll_has_the_retry_budget_but_no_pending_refetch() {
        let s = settings();
        let mut t = Tally::default();
        assert_eq!(
            t.decide(answered(true), Budget::Poll, Duration::ZERO, &s, || 0.5),
            Decision::Reachable,
            "still pending: the fallback polls again later"
        );
        assert_eq!(t.pending_polls, 0);
        assert_eq!(
            t.decide(answered(false), Budget::Poll, Duration::ZERO, &s, || 0.5),
            publish(false)
        );
        let mut t = Tally::default();
        assert!(matches!(
            t.decide(
                failed(status(503, None)),
                Budget::Poll,
                Duration::ZERO,
                &s,
                || 0.5
            ),
            Decision::Retry {
                reason: RetryReason::Status,
                ..
            }
        ));
        assert!(matches!(
            t.decide(
                failed(status(404, None)),
                Budget::Poll,
                Duration::ZERO,
                &s,
                || 0.5
            ),
            Decision::Retry {
                reason: RetryReason::NotFound,
                ..
            }
        ));
        assert!(!permanent_failure_reached_provider(Budget::Poll, 0));
        assert!(permanent_failure_reached_provider(Budget::Poll, 1));
    }

    #[test]
    fn jitter_is_drawn_only_for_a_backoff() {
        let s = settings();
        let no_jitter = || -> f64 { panic!("jitter drawn") };
        let mut t = Tally::default();
        assert_eq!(
            t.decide(answered(false), Budget::Full, Duration::ZERO, &s, no_jitter),
            publish(false)
        );
        assert_eq!(
            t.decide(
                failed(status(404, None)),
                Budget::Full,
                Duration::ZERO,
                &s,
                no_jitter
            ),
            retry(ms(700), RetryReason::NotFound)
        );
        // The jitter draw sets the delay within [0, ceiling].
        let mut t = Tally::default();
        assert_eq!(
            t.decide(
                failed(status(500, None)),
                Budget::Full,
                Duration::ZERO,
                &s,
                || 0.0
            ),
            retry(Duration::ZERO, RetryReason::Status)
        );
    }

    #[test]
    fn a_whole_enrichment_walks_the_404_grace_then_dead_letters() {
        let s = settings();
        let mut t = Tally::default();
        let mut elapsed = Duration::ZERO;
        for _ in 0..2 {
            match t.decide(failed(status(404, None)), Budget::Full, elapsed, &s, || 0.5) {
                Decision::Retry { delay, .. } => elapsed += delay,
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            t.decide(failed(status(404, None)), Budget::Full, elapsed, &s, || 0.5),
            Decision::DeadLetter {
                class: ErrorClass::NotFound,
                ..
            }
        ));
        assert_eq!(t.attempts, 3);
    }

    #[test]
    fn what_an_attempt_tells_the_circuit() {
        use Budget::{Full, Probe};
        let at = |attempt, budget| decide(&mut Tally::default(), attempt, budget, ms(0)).signal();
        let up = Some(Signal::Answered);
        let down = Some(Signal::Unavailable);
        assert_eq!(at(answered(false), Full), up, "a result");
        assert_eq!(at(answered(true), Full), up, "still pending");
        assert_eq!(at(answered(true), Probe), up, "a reachable probe");
        assert_eq!(at(failed(status(404, None)), Full), up, "404 in grace");
        assert_eq!(at(failed(status(429, None)), Full), up, "rate limited");
        assert_eq!(at(failed(status(400, None)), Full), up, "refused");
        assert_eq!(at(failed(invalid()), Full), up, "unparseable body");
        assert_eq!(at(failed(status(503, None)), Full), down, "503");
        assert_eq!(at(failed(status(408, None)), Full), down, "408");
        assert_eq!(at(failed(timeout()), Full), down, "timeout");
        assert_eq!(at(failed(connect()), Full), down, "connection");
        assert_eq!(
            at(failed(auth()), Full),
            None,
            "auth settles the circuit itself"
        );
        assert_eq!(at(failed(config()), Full), None, "configuration");
        assert_eq!(at(failed(status(503, None)), Probe), None, "a failed probe");
        let exhausted = decide(
            &mut tally(5, 4, 0, 0),
            failed(status(503, None)),
            Full,
            ms(60_000),
        );
        assert_eq!(exhausted.signal(), down, "retries exhausted");
        assert_eq!(
            provider_disabled::<&str>(Provider::Unico).signal(),
            None,
            "no attempt"
        );
    }

    #[test]
    fn a_disabled_provider_is_an_unsupported_event() {
        assert_eq!(
            provider_disabled::<&str>(Provider::Unico),
            dead_letter(
                ErrorClass::UnsupportedEvent,
                "provider unico is disabled in this deployment",
                None
            )
        );
    }

    #[test]
    fn after_systemic_table() {
        use AfterSystemic::*;
        // (retries_exhausted, successes at the last pause, successes now) → decision
        let rows = [
            ((true, None, 5), Pause, "the first round never dead-letters"),
            (
                (true, Some(5), 5),
                Pause,
                "nobody was served since: an outage",
            ),
            (
                (true, Some(5), 6),
                DeadLetterRetriesExhausted,
                "others were served since: a poison record",
            ),
            ((false, None, 5), Pause, "auth failure, first round"),
            ((false, Some(5), 9), Pause, "auth failure always pauses"),
        ];
        for ((exhausted, before, now), expected, name) in rows {
            assert_eq!(after_systemic(exhausted, before, now), expected, "{name}");
        }
    }

    #[test]
    fn permanent_failure_reached_provider_table() {
        assert!(permanent_failure_reached_provider(Budget::Full, 1));
        assert!(!permanent_failure_reached_provider(Budget::Full, 0));
        assert!(permanent_failure_reached_provider(Budget::Probe, 0));
        assert!(permanent_failure_reached_provider(Budget::Probe, 1));
    }
}
