use super::decision::{provider_disabled, Attempt, Budget, Decision, Signal, Tally};
use super::settings::EnrichSettings;
use crate::event::{Trigger, WebhookEvent};
use crate::failure::ErrorClass;
use crate::provider::clearsale::model::is_pending_status;
use crate::provider::clearsale::ClearSaleClient;
use crate::provider::unico::{ProcessAnswer, UnicoClient};
use crate::provider::{Fetched, Provider, ProviderError};
use crate::telemetry;
use rand::Rng;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The result of enriching one event.
// Returned once per event and consumed at once: the size difference is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum EnrichOutcome {
    /// The provider's answer (possibly still pending, possibly Unico's 410 Gone).
    Fetched { fetched: Fetched, attempts: u32 },
    /// A permanent failure: dead-letter the record.
    Failed(EnrichFailure),
    /// The provider or our access to it is broken: pause, retry later, do not dead-letter.
    /// `retries_exhausted` is true when transient failures outlasted the retry budget (the
    /// provider failing consistently), false for authentication/configuration failures.
    Systemic {
        provider: Provider,
        reason: String,
        attempts: u32,
        retries_exhausted: bool,
    },
    /// A probe ([`Budget::Probe`]) reached the provider, but the record needs more attempts
    /// (still pending, or a 404 within its grace): the provider is up.
    Reachable { attempts: u32 },
    /// The cancellation token fired while the enrichment was waiting (a backoff, a pending
    /// poll): it stopped with no request in flight.
    Cancelled,
    /// The provider's circuit opened while the enrichment was waiting between attempts
    /// ([`CircuitSignal::opened`]): it stopped with no request in flight, after `attempts`.
    /// The caller waits for the circuit like every other record (or diverts the record).
    Interrupted { attempts: u32 },
}

/// What an enrichment tells its provider's circuit after each attempt, and how the circuit stops
/// an enrichment waiting between attempts. The engine's circuit breaker implements it (through
/// the worker, which also reports the opening); [`NoCircuit`] ignores everything.
pub trait CircuitSignal: Sync {
    /// What an attempt found ([`Decision::signal`]).
    fn attempted(&self, signal: Signal);
    /// Resolves once the circuit is open.
    fn opened(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// No circuit: attempts are not reported and nothing interrupts the retries.
pub struct NoCircuit;

impl CircuitSignal for NoCircuit {
    fn attempted(&self, _: Signal) {}
    async fn opened(&self) {
        std::future::pending::<()>().await
    }
}

/// A permanent failure, with what the dead-letter headers need.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichFailure {
    pub class: ErrorClass,
    pub reason: String,
    pub http_status: Option<u16>,
    pub attempts: u32,
}

/// Fetches results for events. Cheap to clone.
#[derive(Clone)]
pub struct Enricher {
    clearsale: Option<Arc<ClearSaleClient>>,
    unico: Option<Arc<UnicoClient>>,
    settings: EnrichSettings,
}

impl Enricher {
    /// An enricher over the configured clients; a provider without a client is disabled and its
    /// events are dead-lettered as `unsupported_event`.
    pub fn new(
        clearsale: Option<Arc<ClearSaleClient>>,
        unico: Option<Arc<UnicoClient>>,
        settings: EnrichSettings,
    ) -> Self {
        Self {
            clearsale,
            unico,
            settings,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &EnrichSettings {
        &self.settings
    }

    /// True when a client is configured for `provider`.
    pub fn has_provider(&self, provider: Provider) -> bool {
        match provider {
            Provider::ClearSale => self.clearsale.is_some(),
            Provider::Unico => self.unico.is_some(),
        }
    }

    /// Enriches one event with the full budget. Never loops forever: every wait is bounded by
    /// the settings.
    pub async fn enrich(&self, event: &WebhookEvent) -> EnrichOutcome {
        self.enrich_within(event, Budget::Full, &CancellationToken::new())
            .await
    }

    /// Enriches one event within `budget`, without a circuit. When `cancel` fires during a wait
    /// between attempts the enrichment ends as [`EnrichOutcome::Cancelled`]; a request in flight
    /// is let finish.
    pub async fn enrich_within(
        &self,
        event: &WebhookEvent,
        budget: Budget,
        cancel: &CancellationToken,
    ) -> EnrichOutcome {
        self.enrich_observed(event, budget, cancel, &NoCircuit)
            .await
    }

    /// Enriches one event within `budget`, telling `circuit` what each attempt found. When
    /// `cancel` fires during a wait between attempts the enrichment ends as
    /// [`EnrichOutcome::Cancelled`]; when the circuit opens during such a wait, as
    /// [`EnrichOutcome::Interrupted`]. A request in flight is let finish.
    ///
    /// This loop only carries out what [`Tally::decide`] decides after each attempt: it sleeps
    /// (unless cancelled), reports retries, and turns the final decision into the outcome.
    pub async fn enrich_observed(
        &self,
        event: &WebhookEvent,
        budget: Budget,
        cancel: &CancellationToken,
        circuit: &impl CircuitSignal,
    ) -> EnrichOutcome {
        let enabled = self.has_provider(event.provider);
        let start = Instant::now();
        let mut tally = Tally::default();
        loop {
            let decision = if !enabled {
                provider_disabled(event.provider)
            } else {
                if cancel.is_cancelled() {
                    return EnrichOutcome::Cancelled;
                }
                let attempt = match self.fetch_once(event).await {
                    Ok(answer) => Attempt::Answered {
                        still_pending: is_still_pending(event, &answer),
                        answer,
                    },
                    Err(error) => Attempt::Failed(error),
                };
                let decision =
                    tally.decide(attempt, budget, start.elapsed(), &self.settings, jitter);
                if let Some(signal) = decision.signal() {
                    circuit.attempted(signal);
                }
                decision
            };
            let attempts = tally.attempts;
            return match decision {
                Decision::Retry { delay, reason } => {
                    telemetry::provider_retry(event.provider, reason.as_str(), delay);
                    match wait_between_attempts(delay, cancel, circuit).await {
                        Waited::Over => continue,
                        Waited::Cancelled => EnrichOutcome::Cancelled,
                        Waited::CircuitOpened => EnrichOutcome::Interrupted { attempts },
                    }
                }
                Decision::Publish {
                    answer,
                    still_pending,
                } => EnrichOutcome::Fetched {
                    fetched: if still_pending {
                        mark_still_pending(answer)
                    } else {
                        answer
                    },
                    attempts,
                },
                Decision::Reachable => EnrichOutcome::Reachable { attempts },
                Decision::DeadLetter {
                    class,
                    reason,
                    http_status,
                } => EnrichOutcome::Failed(EnrichFailure {
                    class,
                    reason,
                    http_status,
                    attempts,
                }),
                Decision::Pause {
                    reason,
                    retries_exhausted,
                } => EnrichOutcome::Systemic {
                    provider: event.provider,
                    reason,
                    attempts,
                    retries_exhausted,
                },
            };
        }
    }

    async fn fetch_once(&self, event: &WebhookEvent) -> Result<Fetched, ProviderError> {
        match event.provider {
            Provider::ClearSale => {
                let client = self
                    .clearsale
                    .as_ref()
                    .ok_or_else(|| disabled(Provider::ClearSale))?;
                let (analysis, raw) = client.get_analysis(event.subject_id).await?;
                Ok(Fetched::ClearSale {
                    analysis,
                    raw,
                    still_pending: false,
                })
            }
            Provider::Unico => {
                let client = self
                    .unico
                    .as_ref()
                    .ok_or_else(|| disabled(Provider::Unico))?;
                Ok(match client.get_process(event.subject_id).await? {
                    ProcessAnswer::Found { process, raw } => Fetched::Unico { process, raw },
                    ProcessAnswer::Gone => Fetched::UnicoGone,
                })
            }
        }
    }
}

/// How a wait between attempts ended.
enum Waited {
    Over,
    Cancelled,
    CircuitOpened,
}

/// Sleeps for `delay`, unless `cancel` fires or the circuit opens first.
async fn wait_between_attempts(
    delay: std::time::Duration,
    cancel: &CancellationToken,
    circuit: &impl CircuitSignal,
) -> Waited {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Waited::Cancelled,
        () = circuit.opened() => Waited::CircuitOpened,
        _ = tokio::time::sleep(delay) => Waited::Over,
    }
}

fn disabled(provider: Provider) -> ProviderError {
    ProviderError::Config {
        provider,
        message: "provider is disabled".into(),
    }
}

/// True when the ClearSale module the webhook named still reads pending.
fn is_still_pending(event: &WebhookEvent, fetched: &Fetched) -> bool {
    match (&event.trigger, fetched) {
        (Trigger::ClearSale { module_type, .. }, Fetched::ClearSale { analysis, .. }) => analysis
            .module_status(module_type)
            .is_some_and(is_pending_status),
        _ => false,
    }
}

fn mark_still_pending(fetched: Fetched) -> Fetched {
    match fetched {
        Fetched::ClearSale { analysis, raw, .. } => Fetched::ClearSale {
            analysis,
            raw,
            still_pending: true,
        },
        other => other,
    }
}

fn jitter() -> f64 {
    rand::rng().random::<f64>()
}
