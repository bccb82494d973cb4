//! The simulator's configuration: credentials, latency and failure injection.
//!
//! Every field has a default (`SimulatorConfig::default()` serves both providers with the demo
//! credentials and no faults); unknown keys are errors. Durations are humantime strings
//! (`"250ms"`, `"24h"`).

use crate::provider::Provider;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::time::Duration;
use uuid::Uuid;

use super::SimulatorError;

/// The longest token lifetime accepted (keeps expiry arithmetic far from overflow).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The longest configurable delay of each latency field.
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// The whole simulator configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Seed for every derived value: result bodies per id and the injected-fault dice.
    /// Two simulators with the same seed answer the same id with the same body. Default `0`.
    pub seed: u64,
    /// How many call records the in-memory call log keeps (the oldest are dropped first).
    /// Counters are not affected by this bound. Default `10000`.
    pub call_log_capacity: usize,
    /// How many ids the per-id fetch counters (used by `faults.not_visible_for` and
    /// `faults.pending_fetches`) remember; the oldest id is forgotten first. Default `100000`.
    pub max_tracked_ids: usize,
    /// ClearSale Connect credentials and token lifetime.
    pub clearsale: ClearSaleConfig,
    /// Unico IDUnico credentials, token lifetime and rate limit.
    pub unico: UnicoConfig,
    /// Latency added to result endpoints.
    pub latency: LatencyConfig,
    /// Failure injection.
    pub faults: FaultConfig,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            call_log_capacity: 10_000,
            max_tracked_ids: 100_000,
            clearsale: ClearSaleConfig::default(),
            unico: UnicoConfig::default(),
            latency: LatencyConfig::default(),
            faults: FaultConfig::default(),
        }
    }
}

/// ClearSale Connect: the user/password pair `POST /connect/v1/authenticate` accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClearSaleConfig {
    /// Accepted user. Default `"demo"`.
    pub user: String,
    /// Accepted password. Default `"demo-password"`.
    pub password: Secret,
    /// Lifetime of an issued token (reported as `expirationDate`). Default `24h`.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

impl Default for ClearSaleConfig {
    fn default() -> Self {
        Self {
            user: "demo".into(),
            password: Secret::new("demo-password"),
            token_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Unico IDUnico: the service account the JWT-bearer grant accepts, and the API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnicoConfig {
    /// Service account name (the part of `iss` before `@`). Default `"demo-account"`.
    pub account: String,
    /// Tenant id (`iss` is `<account>@<tenant>.iam.acesso.io`). Default `"demo-tenant"`.
    pub tenant: String,
    /// The issuer URL the assertion's `aud` must equal (trailing `/` ignored). When absent, the
    /// simulator's own base URL (`http://<listen address>`) is expected. Default: absent.
    pub issuer_url: Option<String>,
    /// The `APIKEY` header value API calls must send. Default `"demo-api-key"`.
    pub api_key: Secret,
    /// SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM of the service account key. When
    /// set, the assertion's RS256 signature is verified; when absent only the header and claims
    /// are checked. Default: absent.
    pub public_key_pem: Option<String>,
    /// Lifetime of an issued access token (reported as `expires_in`). Default `1h`.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Requests per second `GET /processes/v1/{id}` accepts before answering 429 with
    /// `Retry-After` (the provider's default is 10). Default: absent (no limit).
    pub rate_limit_per_second: Option<NonZeroU32>,
}

impl Default for UnicoConfig {
    fn default() -> Self {
        Self {
            account: "demo-account".into(),
            tenant: "demo-tenant".into(),
            issuer_url: None,
            api_key: Secret::new("demo-api-key"),
            public_key_pem: None,
            token_ttl: Duration::from_secs(3600),
            rate_limit_per_second: None,
        }
    }
}

/// Latency of the result endpoints (`GET` analysis / process). Auth endpoints answer at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Added to every result answer. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// A uniformly random extra delay in `[0, jitter]`. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Fraction (0..=1) of result answers delayed by `slow_latency` on top. Default `0`.
    pub slow_rate: f64,
    /// The extra delay of a slow answer. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub slow_latency: Duration,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            base: Duration::ZERO,
            jitter: Duration::ZERO,
            slow_rate: 0.0,
            slow_latency: Duration::from_secs(5),
        }
    }
}

/// Failure injection. With the defaults nothing fails.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Fraction (0..=1) of result requests answering 500 or 503 (even odds), drawn from the
    /// seeded dice. Default `0`.
    pub error_rate: f64,
    /// Ids that always answer 404 (both providers). Default: none.
    pub not_found_ids: Vec<Uuid>,
    /// Every id answers 404 for its first N fetches ("the webhook arrived before the result is
    /// readable"), then 200. Default `0`.
    pub not_visible_for: u32,
    /// ClearSale: the asynchronous modules (`mfa`, `biolink`) read `"pending"` for the first N
    /// visible fetches of an id, then a final status. Default `0`.
    pub pending_fetches: u32,
    /// Unico: ids answering 410 Gone (a process that ended in error). Default: none.
    pub gone_ids: Vec<Uuid>,
    /// Scheduled outages: 503 on the provider's auth and result endpoints. Default: none.
    pub outages: Vec<OutageWindow>,
}

/// One scheduled outage, relative to the simulator's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageWindow {
    /// The provider that is down.
    pub provider: Provider,
    /// When the outage begins, after the simulator started.
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// How long it lasts.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl OutageWindow {
    /// True when `elapsed` (time since start) falls inside the window.
    pub fn contains(&self, elapsed: Duration) -> bool {
        elapsed >= self.start && elapsed < self.start.saturating_add(self.duration)
    }
}

impl SimulatorConfig {
    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), SimulatorError> {
        let mut problems = Vec::new();
        for (name, rate) in [
            ("faults.error_rate", self.faults.error_rate),
            ("latency.slow_rate", self.latency.slow_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                problems.push(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.max_tracked_ids == 0 {
            problems.push("max_tracked_ids must be at least 1".into());
        }
        if self.clearsale.user.is_empty() {
            problems.push("clearsale.user must not be empty".into());
        }
        if self.unico.account.is_empty() || self.unico.tenant.is_empty() {
            problems.push("unico.account and unico.tenant must not be empty".into());
        }
        if self.unico.api_key.is_empty() {
            problems.push("unico.api_key must not be empty".into());
        }
        for (name, ttl) in [
            ("clearsale.token_ttl", self.clearsale.token_ttl),
            ("unico.token_ttl", self.unico.token_ttl),
        ] {
            if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
                problems.push(format!(
                    "{name} must be positive and at most {}",
                    humantime_serde::re::humantime::format_duration(MAX_TOKEN_TTL)
                ));
            }
        }
        for (name, delay) in [
            ("latency.base", self.latency.base),
            ("latency.jitter", self.latency.jitter),
            ("latency.slow_latency", self.latency.slow_latency),
        ] {
            if delay > MAX_LATENCY {
                problems.push(format!(
                    "{name} must be at most {}",
                    humantime_serde::re::humantime::format_duration(MAX_LATENCY)
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SimulatorError::InvalidConfig {
                problems: problems.join("; "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default() {
        let parsed: SimulatorConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, SimulatorConfig::default());
        assert!(parsed.validate().is_ok());
    }

    #[test]
    fn parses_every_section_with_humantime_durations() {
        let parsed: SimulatorConfig = toml::from_str(
            r#"
            seed = 7
            [clearsale]
            token_ttl = "10m"
            [unico]
            rate_limit_per_second = 10
            [latency]
            base = "20ms"
            [faults]
            error_rate = 0.1
            gone_ids = ["8263a268-5388-492a-bca2-28e1ff4a69f0"]
            [[faults.outages]]
            provider = "unico"
            start = "30s"
            duration = "1m"
            "#,
        )
        .unwrap();
        assert_eq!(parsed.seed, 7);
        assert_eq!(parsed.clearsale.token_ttl, Duration::from_secs(600));
        assert_eq!(parsed.unico.rate_limit_per_second, NonZeroU32::new(10));
        assert_eq!(parsed.latency.base, Duration::from_millis(20));
        assert_eq!(parsed.faults.gone_ids.len(), 1);
        let window = &parsed.faults.outages[0];
        assert_eq!(window.provider, Provider::Unico);
        assert!(!window.contains(Duration::from_secs(29)));
        assert!(window.contains(Duration::from_secs(30)));
        assert!(!window.contains(Duration::from_secs(90)));
    }

    #[test]
    fn unknown_keys_and_bad_ids_are_refused() {
        assert!(toml::from_str::<SimulatorConfig>("sede = 1").is_err());
        assert!(toml::from_str::<SimulatorConfig>("[faults]\nerror_rat = 1.0").is_err());
        assert!(toml::from_str::<SimulatorConfig>("[faults]\ngone_ids = [\"nope\"]").is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut config = SimulatorConfig::default();
        config.faults.error_rate = 1.5;
        config.latency.slow_rate = -0.1;
        config.unico.api_key = Secret::default();
        config.clearsale.token_ttl = Duration::from_secs(400 * 86_400);
        config.latency.jitter = Duration::from_secs(7200);
        config.max_tracked_ids = 0;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("faults.error_rate"), "{message}");
        assert!(message.contains("latency.slow_rate"), "{message}");
        assert!(message.contains("unico.api_key"), "{message}");
        assert!(message.contains("clearsale.token_ttl"), "{message}");
        assert!(message.contains("latency.jitter"), "{message}");
        assert!(message.contains("max_tracked_ids"), "{message}");
    }

    #[test]
    fn debug_does_not_print_credentials() {
        let config = SimulatorConfig::default();
        let debug = format!("{config:?}");
        assert!(!debug.contains("demo-password"));
        assert!(!debug.contains("demo-api-key"));
    }
}
