//! Configuration of the provider clients (the `[clearsale]` and `[unico]` sections).

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// HTTP behaviour shared by both clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Whole-request timeout (connect + send + read the body).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TCP + TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections are kept per host (0: unbounded). Unset: as many as
    /// `limits.max_concurrent` (unbounded when that is 0), so a connection is never closed just
    /// because more requests were in flight than the pool keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_max_idle_per_host: Option<usize>,
    /// Speak HTTP/2 without negotiation on `http://` URLs (h2c prior knowledge), for endpoints
    /// known to support it (a local proxy, the simulator).
    pub http2_prior_knowledge: bool,
    /// Offer HTTP/2 in the TLS handshake (ALPN) on `https://` URLs. Off by default: all of a
    /// host's requests then share one HTTP/2 connection, so throughput is capped at the server's
    /// concurrent-stream limit ÷ latency (often 100–250 streams), while HTTP/1.1 opens as many
    /// connections as `limits.max_concurrent` allows.
    pub alpn_http2: bool,
}

impl HttpSettings {
    /// The idle-pool bound in force for `limits`.
    pub fn pool_max_idle(&self, limits: &RequestLimits) -> usize {
        match self.pool_max_idle_per_host.unwrap_or(limits.max_concurrent) {
            0 => usize::MAX,
            n => n,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: None,
            http2_prior_knowledge: false,
            alpn_http2: false,
        }
    }
}

/// Per-provider request limits, applied to every HTTP call including token requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestLimits {
    /// Requests per second (token-bucket refill rate). 0 disables the rate limit.
    pub rate_per_second: u32,
    /// Burst allowed above the steady rate (bucket size). Defaults to the rate when 0.
    pub burst: u32,
    /// At most this many requests in flight at once.
    pub max_concurrent: usize,
}

impl RequestLimits {
    /// Unico's documented tenant limit is 10 requests/s.
    pub fn unico_default() -> Self {
        Self {
            rate_per_second: 10,
            burst: 10,
            max_concurrent: 10,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            rate_per_second: 50,
            burst: 50,
            max_concurrent: 32,
        }
    }
}

/// ClearSale Connect client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClearSaleSettings {
    /// When false, ClearSale events are dead-lettered as `unsupported_event`.
    pub enabled: bool,
    /// Production `https://apix.clearsale.com.br`, homologation
    /// `https://homologapix.clearsale.com.br`, or the simulator's address.
    pub base_url: String,
    /// API user for `POST /connect/v1/authenticate`.
    pub user: String,
    /// API password.
    pub password: Secret,
    /// Refresh the token this long before its `expirationDate`.
    #[serde(with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    pub http: HttpSettings,
    pub limits: RequestLimits,
}

impl Default for ClearSaleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            base_url: "https://apix.clearsale.com.br".into(),
            user: String::new(),
            password: Secret::default(),
            token_refresh_margin: Duration::from_secs(300),
            http: HttpSettings::default(),
            limits: RequestLimits::default(),
        }
    }
}

/// Unico IDUnico client settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnicoSettings {
    /// When false, Unico events are dead-lettered as `unsupported_event`.
    pub enabled: bool,
    /// API host: production `https://api.id.unico.app`, sandbox `https://api.id.uat.unico.app`.
    pub base_url: String,
    /// Token issuer: production `https://identity.acesso.io`, homologation
    /// `https://identityhomolog.acesso.io`. The token is requested at `{issuer_url}/oauth2/token`.
    pub issuer_url: String,
    /// The assertion's `aud`; the issuer URL when empty.
    pub audience: String,
    /// Service account name (the `<account>` in `iss = <account>@<tenant>.iam.acesso.io`).
    pub account: String,
    /// Tenant id.
    pub tenant: String,
    /// The service account's RSA private key, PEM (PKCS#1 or PKCS#8).
    pub private_key_pem: Secret,
    /// A file holding the private key PEM (for a mounted Kubernetes secret); read at startup and
    /// used when `private_key_pem` is empty.
    pub private_key_file: Option<std::path::PathBuf>,
    /// Sent as the `APIKEY` header on API calls.
    pub api_key: Secret,
    /// Assertion lifetime (`exp - iat`); at most 1 h.
    #[serde(with = "humantime_serde")]
    pub assertion_lifetime: Duration,
    /// Refresh the access token this long before it expires.
    #[serde(with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    pub http: HttpSettings,
    pub limits: RequestLimits,
}

impl Default for UnicoSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            base_url: "https://api.id.unico.app".into(),
            issuer_url: "https://identity.acesso.io".into(),
            audience: String::new(),
            account: String::new(),
            tenant: String::new(),
            private_key_pem: Secret::default(),
            private_key_file: None,
            api_key: Secret::default(),
            assertion_lifetime: Duration::from_secs(3600),
            token_refresh_margin: Duration::from_secs(300),
            http: HttpSettings::default(),
            limits: RequestLimits::unico_default(),
        }
    }
}

impl UnicoSettings {
    /// `<account>@<tenant>.iam.acesso.io`.
    pub fn issuer_claim(&self) -> String {
        format!("{}@{}.iam.acesso.io", self.account, self.tenant)
    }

    /// The assertion audience: `audience`, or the issuer URL.
    pub fn audience_claim(&self) -> &str {
        if self.audience.is_empty() {
            &self.issuer_url
        } else {
            &self.audience
        }
    }
}
