use super::settings::EnrichSettings;
use crate::event::{Trigger, WebhookEvent};
use crate::failure::ErrorClass;
use crate::provider::clearsale::model::is_pending_status;
use crate::provider::clearsale::ClearSaleClient;
use crate::provider::unico::{ProcessAnswer, UnicoClient};
use crate::provider::{classify, FailureClass, Fetched, NotFoundGrace, Provider, ProviderError};
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
}

/// How many attempts an enrichment may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The whole retry, not-found and pending budgets of the settings.
    Full,
    /// One attempt: the half-open probe of a circuit breaker. Any answer other than a systemic
    /// failure ends it.
    Probe,
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

    /// Enriches one event within `budget`. When `cancel` fires during a wait between attempts
    /// the enrichment ends as [`EnrichOutcome::Cancelled`]; a request in flight is let finish.
    pub async fn enrich_within(
        &self,
        event: &WebhookEvent,
        budget: Budget,
        cancel: &CancellationToken,
    ) -> EnrichOutcome {
        if !self.has_provider(event.provider) {
            return EnrichOutcome::Failed(EnrichFailure {
                class: ErrorClass::UnsupportedEvent,
                reason: format!("provider {} is disabled in this deployment", event.provider),
                http_status: None,
                attempts: 0,
            });
        }
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut not_found = 0u32;
        let mut pending_polls = 0u32;
        let probe = budget == Budget::Probe;
        loop {
            if cancel.is_cancelled() {
                return EnrichOutcome::Cancelled;
            }
            attempts += 1;
            let error = match self.fetch_once(event).await {
                Ok(fetched) => {
                    if !is_still_pending(event, &fetched) {
                        return EnrichOutcome::Fetched { fetched, attempts };
                    }
                    if probe {
                        return EnrichOutcome::Reachable { attempts };
                    }
                    let waited = start.elapsed();
                    match self
                        .settings
                        .pending
                        .next_delay(pending_polls, jitter(), None, waited)
                    {
                        Some(delay) => {
                            pending_polls += 1;
                            telemetry::provider_retry(event.provider, "pending", delay);
                            if !sleep_unless_cancelled(delay, cancel).await {
                                return EnrichOutcome::Cancelled;
                            }
                            continue;
                        }
                        None => {
                            return EnrichOutcome::Fetched {
                                fetched: mark_still_pending(fetched),
                                attempts,
                            };
                        }
                    }
                }
                Err(error) => error,
            };

            let is_404 = error.http_status() == Some(404);
            if is_404 {
                not_found += 1;
            }
            let grace = if not_found < self.settings.not_found.attempts {
                NotFoundGrace::Open
            } else {
                NotFoundGrace::Exhausted
            };
            match classify(&error, grace) {
                FailureClass::Permanent => {
                    return EnrichOutcome::Failed(permanent(&error, attempts))
                }
                FailureClass::Systemic => {
                    return EnrichOutcome::Systemic {
                        provider: event.provider,
                        reason: error.to_string(),
                        attempts,
                        retries_exhausted: false,
                    }
                }
                FailureClass::Transient { .. } if probe => {
                    return if is_404 {
                        // The provider answered: it is up; the record's 404 grace goes on.
                        EnrichOutcome::Reachable { attempts }
                    } else {
                        EnrichOutcome::Systemic {
                            provider: event.provider,
                            reason: format!("probe failed: {error}"),
                            attempts,
                            retries_exhausted: false,
                        }
                    };
                }
                FailureClass::Transient { retry_after } => {
                    let delay = if is_404 {
                        Some(self.settings.not_found.delay)
                    } else {
                        self.settings.retry.next_delay(
                            retries,
                            jitter(),
                            retry_after,
                            start.elapsed(),
                        )
                    };
                    let Some(delay) = delay else {
                        return EnrichOutcome::Systemic {
                            provider: event.provider,
                            reason: format!(
                                "provider failing consistently: {attempts} attempts over {:?}, last: {error}",
                                start.elapsed()
                            ),
                            attempts,
                            retries_exhausted: true,
                        };
                    };
                    retries += u32::from(!is_404);
                    telemetry::provider_retry(event.provider, retry_reason(&error), delay);
                    if !sleep_unless_cancelled(delay, cancel).await {
                        return EnrichOutcome::Cancelled;
                    }
                }
            }
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

/// Sleeps for `delay`; false when `cancel` fired first.
async fn sleep_unless_cancelled(delay: std::time::Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
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

fn permanent(error: &ProviderError, attempts: u32) -> EnrichFailure {
    let class = match error {
        ProviderError::Status { status: 404, .. } => ErrorClass::NotFound,
        ProviderError::InvalidResponse { .. } => ErrorClass::InvalidResponse,
        _ => ErrorClass::ProviderRejected,
    };
    EnrichFailure {
        class,
        reason: error.to_string(),
        http_status: error.http_status(),
        attempts,
    }
}

fn retry_reason(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Status { status: 404, .. } => "not_found",
        ProviderError::Status { status: 429, .. } => "rate_limited",
        ProviderError::Status { .. } => "status",
        ProviderError::Timeout { .. } => "timeout",
        ProviderError::Connect { .. } => "connect",
        _ => "other",
    }
}

fn jitter() -> f64 {
    rand::rng().random::<f64>()
}
