//! The `[receive]` settings: where the receiver listens, what it writes where, its limits, and
//! one endpoint per provider with its path, allowlist and authentication.

use crate::event::DecoderSettings;
use crate::kafka::KafkaSettings;
use crate::provider::Provider;
use crate::secret::Secret;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`serve`](super::serve) reads from the configuration (`Config::receive_serve_settings`
/// builds them): the receiver takes its own settings, not the whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    /// Connection, security and raw properties of the producer.
    pub kafka: KafkaSettings,
    /// The webhook decoder (payload limit, headers) the receiver checks bodies with.
    pub input: DecoderSettings,
    /// The `[receive]` section.
    pub receive: ReceiveSettings,
    /// librdkafka statistics interval (readiness).
    pub statistics_interval: Duration,
}

/// The `[receive]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReceiveSettings {
    /// Address of the webhook listener (`host:port`).
    pub listen: String,
    /// The raw topic every accepted webhook is written to (the engine's input).
    pub topic: String,
    /// Larger bodies are refused with 413, before or while reading them.
    pub max_body_bytes: usize,
    /// Time to receive a request's headers, counted from when the connection is ready for a
    /// request: it also closes idle keep-alive connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time to receive a request's body once its headers are in (408 after it).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long a Kafka write may take before the request is answered 503 (also the
    /// producer's `message.timeout.ms`, so a write answered 503 is not left queued).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Requests admitted at once (past authentication); more are answered 503 at once.
    pub max_in_flight: usize,
    /// Open connections at once; past it, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// The `Retry-After` of a 503 (whole seconds, rounded up).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// On SIGTERM: how long to keep serving normally while `/readyz` already fails, so load
    /// balancers stop sending before the listener closes.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// On SIGTERM, after the delay: how long requests in flight may take to finish; connections
    /// still open then are closed without an answer (the provider retries).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Request headers copied to the Kafka record (as `http.<name>`), lowercase names.
    /// `authorization`, `proxy-authorization`, `cookie` and the API-key headers are refused.
    pub forward_headers: Vec<String>,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` is trusted to name the client.
    pub trusted_proxies: Vec<String>,
    /// Serve HTTPS with these PEM files; plain HTTP when unset (TLS at the ingress).
    pub tls: ReceiveTlsSettings,
    /// The ClearSale endpoint.
    pub clearsale: EndpointSettings,
    /// The Unico endpoint.
    pub unico: EndpointSettings,
}

impl Default for ReceiveSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            topic: "webhooks.raw".into(),
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            max_connections: 2048,
            retry_after: Duration::from_secs(5),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
            forward_headers: Vec::new(),
            trusted_proxies: Vec::new(),
            tls: ReceiveTlsSettings::default(),
            clearsale: EndpointSettings::new(&default_path(Provider::ClearSale)),
            unico: EndpointSettings::new(&default_path(Provider::Unico)),
        }
    }
}

/// TLS of the webhook listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReceiveTlsSettings {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl ReceiveTlsSettings {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// One provider's endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointSettings {
    /// Serve this endpoint.
    pub enabled: bool,
    /// The path the provider posts to; empty means `/webhooks/<provider>` (filled in at load).
    pub path: String,
    /// Client addresses allowed (CIDRs or addresses); everyone when empty.
    pub allow_cidrs: Vec<String>,
    /// How the provider authenticates.
    pub auth: AuthSettings,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        Self::new("")
    }
}

impl EndpointSettings {
    fn new(path: &str) -> Self {
        Self {
            enabled: true,
            path: path.into(),
            allow_cidrs: Vec::new(),
            auth: AuthSettings::default(),
        }
    }
}

/// The path of a provider's endpoint when none is configured.
pub fn default_path(provider: Provider) -> String {
    format!("/webhooks/{provider}")
}

/// How a provider authenticates its webhook requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `basic`, `bearer`, `api_key`, or `none` (explicit opt-out). Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
    /// `basic`: the user (no `:`).
    pub username: String,
    /// `basic`: the password (may contain `:`).
    pub password: Secret,
    /// `bearer`: the static token of `Authorization: Bearer <token>`.
    pub token: Secret,
    /// `api_key`: the header carrying the key; empty means the bare key is the whole
    /// `Authorization` value.
    pub header: String,
    /// `api_key`: the key.
    pub api_key: Secret,
}

/// An authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// `Authorization: Basic base64(user:password)`.
    Basic,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A key in a named header, or the bare key as the `Authorization` value.
    ApiKey,
    /// No authentication (explicit opt-in only).
    None,
}

impl AuthMode {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Basic => "basic",
            AuthMode::Bearer => "bearer",
            AuthMode::ApiKey => "api_key",
            AuthMode::None => "none",
        }
    }
}

/// Headers that are never copied to Kafka: credentials.
const NEVER_FORWARDED: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

impl ReceiveSettings {
    /// The endpoint of a provider.
    pub fn endpoint(&self, provider: Provider) -> &EndpointSettings {
        match provider {
            Provider::ClearSale => &self.clearsale,
            Provider::Unico => &self.unico,
        }
    }

    /// Gives endpoints without a path their provider's default path (a partial `[receive.<p>]`
    /// section is filled from a provider-neutral default).
    pub fn apply_default_paths(&mut self) {
        for provider in Provider::ALL {
            let endpoint = match provider {
                Provider::ClearSale => &mut self.clearsale,
                Provider::Unico => &mut self.unico,
            };
            if endpoint.path.trim().is_empty() {
                endpoint.path = default_path(provider);
            }
        }
    }

    /// The `Retry-After` value in whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// Every rule the types cannot express, one line per problem. `max_payload_bytes` is the
    /// engine's `input.max_payload_bytes`: a larger body would only be dead-lettered.
    pub fn validate(&self, max_payload_bytes: usize) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "receive.listen {:?} is not an address (host:port, e.g. 0.0.0.0:8080)",
                self.listen
            ));
        }
        if self.topic.trim().is_empty() {
            p.push("receive.topic must not be empty".into());
        }
        if self.max_body_bytes == 0 {
            p.push("receive.max_body_bytes must be positive".into());
        } else if self.max_body_bytes > max_payload_bytes {
            p.push(format!(
                "receive.max_body_bytes ({}) must not exceed input.max_payload_bytes ({max_payload_bytes}): the engine would dead-letter the larger bodies",
                self.max_body_bytes
            ));
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_timeout", self.body_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                p.push(format!("receive.{name} must be positive"));
            }
        }
        if self.write_timeout < Duration::from_millis(100) {
            p.push("receive.write_timeout must be at least 100ms".into());
        }
        if self.drain_timeout < self.body_timeout + self.write_timeout {
            p.push(format!(
                "receive.drain_timeout ({:?}) must be at least receive.body_timeout + receive.write_timeout ({:?}): a request in flight may need that long",
                self.drain_timeout,
                self.body_timeout + self.write_timeout
            ));
        }
        if self.max_in_flight == 0 {
            p.push("receive.max_in_flight must be at least 1".into());
        }
        if self.max_connections == 0 {
            p.push("receive.max_connections must be at least 1".into());
        }
        if self.retry_after.is_zero() {
            p.push("receive.retry_after must be at least 1s".into());
        }
        let mut refused: Vec<String> = NEVER_FORWARDED.iter().map(|h| h.to_string()).collect();
        for provider in Provider::ALL {
            let auth = &self.endpoint(provider).auth;
            if auth.mode == Some(AuthMode::ApiKey) && !auth.header.trim().is_empty() {
                refused.push(auth.header.trim().to_ascii_lowercase());
            }
        }
        for header in &self.forward_headers {
            let name = header.trim().to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!(
                    "receive.forward_headers: {header:?} is not a header name"
                ));
            } else if refused.contains(&name) {
                p.push(format!(
                    "receive.forward_headers: {name:?} carries credentials and is never copied to Kafka"
                ));
            }
        }
        check_networks(&mut p, "receive.trusted_proxies", &self.trusted_proxies);
        let tls = &self.tls;
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                for (name, path) in [("cert_file", cert), ("key_file", key)] {
                    if !path.is_file() {
                        p.push(format!(
                            "receive.tls.{name} {} is not a readable file",
                            path.display()
                        ));
                    }
                }
            }
            (None, None) => {}
            _ => p.push("receive.tls.cert_file and receive.tls.key_file go together".into()),
        }
        if !self.clearsale.enabled && !self.unico.enabled {
            p.push(
                "at least one of receive.clearsale.enabled and receive.unico.enabled must be true"
                    .into(),
            );
        }
        for provider in Provider::ALL {
            let endpoint = self.endpoint(provider);
            if endpoint.enabled {
                endpoint.validate(&mut p, provider.as_str());
            }
        }
        if self.clearsale.enabled && self.unico.enabled && self.clearsale.path == self.unico.path {
            p.push("receive.clearsale.path and receive.unico.path must differ".into());
        }
        p
    }
}

impl EndpointSettings {
    fn validate(&self, p: &mut Vec<String>, provider: &str) {
        let prefix = format!("receive.{provider}");
        let path_ok = self.path.starts_with('/')
            && self.path.len() > 1
            && !self.path.contains("//")
            && self
                .path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
        if !path_ok {
            p.push(format!(
                "{prefix}.path {:?} must be an absolute path of letters, digits and / - . _ ~ (e.g. /webhooks/{provider})",
                self.path
            ));
        }
        check_networks(p, &format!("{prefix}.allow_cidrs"), &self.allow_cidrs);
        let a = &self.auth;
        let prefix = format!("{prefix}.auth");
        let Some(mode) = a.mode else {
            p.push(format!(
                "{prefix}.mode is required: basic, bearer, api_key, or none to accept unauthenticated requests"
            ));
            return;
        };
        // What each mode uses; a value set for another mode is a mistake worth reporting.
        let fields: [(&str, bool, bool); 5] = [
            ("username", !a.username.is_empty(), mode == AuthMode::Basic),
            ("password", !a.password.is_empty(), mode == AuthMode::Basic),
            ("token", !a.token.is_empty(), mode == AuthMode::Bearer),
            ("header", !a.header.is_empty(), mode == AuthMode::ApiKey),
            ("api_key", !a.api_key.is_empty(), mode == AuthMode::ApiKey),
        ];
        for (field, set, used) in fields {
            if set && !used {
                p.push(format!(
                    "{prefix}.{field} is set but {prefix}.mode is {}",
                    mode.as_str()
                ));
            }
        }
        let required = |p: &mut Vec<String>, field: &str, value: &str| {
            if value.is_empty() {
                p.push(format!(
                    "{prefix}.{field} is required with mode {}",
                    mode.as_str()
                ));
            } else if value.trim() != value {
                p.push(format!(
                    "{prefix}.{field} starts or ends with whitespace (a trailing newline from a secret file?)"
                ));
            }
        };
        match mode {
            AuthMode::Basic => {
                required(p, "username", &a.username);
                required(p, "password", a.password.expose());
                if a.username.contains(':') {
                    p.push(format!(
                        "{prefix}.username must not contain ':' (Basic authentication splits user and password at the first ':')"
                    ));
                }
            }
            AuthMode::Bearer => {
                required(p, "token", a.token.expose());
                if a.token.expose().chars().any(char::is_whitespace) {
                    p.push(format!("{prefix}.token must not contain whitespace"));
                }
            }
            AuthMode::ApiKey => {
                required(p, "api_key", a.api_key.expose());
                if http::HeaderValue::from_str(a.api_key.expose()).is_err() {
                    p.push(format!(
                        "{prefix}.api_key must be printable ASCII (it travels in a header)"
                    ));
                }
                let header = a.header.trim().to_ascii_lowercase();
                if !header.is_empty() {
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        p.push(format!(
                            "{prefix}.header {:?} is not a header name",
                            a.header
                        ));
                    } else if header == "proxy-authorization" || header == "cookie" {
                        p.push(format!(
                            "{prefix}.header {header:?} is not supported: leave it empty for the bare key in Authorization, or name the provider's key header"
                        ));
                    }
                }
            }
            AuthMode::None => {}
        }
    }
}

/// Parses a list of CIDRs or single addresses (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
pub fn parse_networks(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|entry| {
            let text = entry.trim();
            text.parse::<IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{entry:?} is neither a CIDR nor an IP address"))
        })
        .collect()
}

fn check_networks(p: &mut Vec<String>, name: &str, entries: &[String]) {
    if let Err(e) = parse_networks(entries) {
        p.push(format!("{name}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ReceiveSettings {
        let mut s = ReceiveSettings::default();
        s.clearsale.auth = AuthSettings {
            mode: Some(AuthMode::Basic),
            username: "clearsale".into(),
            password: "pa:ss:word".into(),
            ..Default::default()
        };
        s.unico.auth = AuthSettings {
            mode: Some(AuthMode::ApiKey),
            header: "x-api-key".into(),
            api_key: "k3y".into(),
            ..Default::default()
        };
        s
    }

    #[test]
    fn defaults_need_only_the_authentication_modes() {
        assert_eq!(valid().validate(65_536), Vec::<String>::new());
        let problems = ReceiveSettings::default().validate(65_536);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with("receive.clearsale.auth.mode is required"));
        assert!(problems[1].starts_with("receive.unico.auth.mode is required"));
    }

    #[test]
    fn every_problem_is_listed() {
        let mut s = valid();
        s.listen = "nowhere".into();
        s.topic = " ".into();
        s.max_body_bytes = 100_000;
        s.write_timeout = Duration::from_millis(10);
        s.max_in_flight = 0;
        s.forward_headers = vec![
            "user-agent".into(),
            "Authorization".into(),
            "X-API-Key".into(),
        ];
        s.trusted_proxies = vec!["10.0.0.0/8".into(), "ten".into()];
        s.tls.cert_file = Some("/nonexistent.pem".into());
        s.clearsale.path = "webhooks/cs".into();
        s.clearsale.auth.username = "a:b".into();
        s.clearsale.auth.token = "stray".into();
        s.unico.auth.api_key = "k3y\n".into();
        s.unico.allow_cidrs = vec!["300.1.1.1".into()];
        let all = s.validate(65_536).join("\n");
        for expected in [
            "receive.listen",
            "receive.topic",
            "receive.max_body_bytes (100000) must not exceed input.max_payload_bytes",
            "receive.write_timeout must be at least 100ms",
            "receive.max_in_flight",
            "\"authorization\" carries credentials",
            "\"x-api-key\" carries credentials",
            "receive.trusted_proxies: \"ten\"",
            "receive.tls.cert_file and receive.tls.key_file go together",
            "receive.clearsale.path",
            "receive.clearsale.auth.username must not contain ':'",
            "receive.clearsale.auth.token is set but receive.clearsale.auth.mode is basic",
            "receive.unico.auth.api_key starts or ends with whitespace",
            "receive.unico.allow_cidrs: \"300.1.1.1\"",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert!(!all.contains("user-agent"), "{all}");
    }

    #[test]
    fn modes_require_their_secret() {
        let mut s = valid();
        s.clearsale.auth = AuthSettings {
            mode: Some(AuthMode::Bearer),
            ..Default::default()
        };
        s.unico.auth = AuthSettings {
            mode: Some(AuthMode::Basic),
            username: "u".into(),
            ..Default::default()
        };
        let all = s.validate(65_536).join("\n");
        assert!(
            all.contains("receive.clearsale.auth.token is required with mode bearer"),
            "{all}"
        );
        assert!(
            all.contains("receive.unico.auth.password is required with mode basic"),
            "{all}"
        );
        s.clearsale.auth.mode = Some(AuthMode::None);
        s.unico.enabled = false;
        assert_eq!(s.validate(65_536), Vec::<String>::new());
    }

    #[test]
    fn drain_must_cover_a_request_and_paths_must_differ() {
        let mut s = valid();
        s.drain_timeout = Duration::from_secs(3);
        s.unico.path = s.clearsale.path.clone();
        let all = s.validate(65_536).join("\n");
        assert!(all.contains("receive.drain_timeout"), "{all}");
        assert!(all.contains("must differ"), "{all}");
    }

    #[test]
    fn networks_parse_as_cidrs_or_addresses() {
        let nets = parse_networks(&[
            "10.1.2.3/8".into(),
            " 192.0.2.7 ".into(),
            "2001:db8::/32".into(),
        ])
        .unwrap();
        assert_eq!(nets[0].to_string(), "10.0.0.0/8");
        assert_eq!(nets[1].to_string(), "192.0.2.7/32");
        assert_eq!(nets[2].to_string(), "2001:db8::/32");
        assert!(parse_networks(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let mut s = ReceiveSettings::default();
        assert_eq!(s.retry_after_secs(), 5);
        s.retry_after = Duration::from_millis(1500);
        assert_eq!(s.retry_after_secs(), 2);
        s.retry_after = Duration::from_millis(1);
        assert_eq!(s.retry_after_secs(), 1);
    }
}
