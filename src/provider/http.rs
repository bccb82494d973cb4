//! HTTP plumbing shared by the two provider clients: one pooled HTTP client per provider
//! behind its [`Gate`], base URLs, and the mapping of transport failures and error answers to
//! [`ProviderError`]. Tokens and the authorised-request flow are in [`crate::provider::auth`].
//!
//! The client is hyper's own pooled client (`hyper_util::client::legacy`, the engine reqwest is
//! built on), over rustls with the platform's roots; HTTP/1.1 unless HTTP/2 is asked for
//! (`alpn_http2`, `http2_prior_knowledge`). It is used
//! directly because every enriched event makes one request and reqwest's per-request layers
//! cost more than the request itself: measured on the benchmark machine, 100,000 GETs at 1,024
//! in flight took 62 µs of client CPU each through reqwest (its redirect policy alone parses
//! every URL again) and 36 µs through the same hyper client without those layers.
//!
//! Nothing here formats a request header, a token or a response body into an error or a log: an
//! error answer contributes only the provider's short error title/description, truncated.

use crate::provider::clearsale::model::Problem;
use crate::provider::gate::Gate;
use crate::provider::lenient;
use crate::provider::settings::{HttpSettings, RequestLimits};
use crate::provider::unico::model::ErrorBody;
use crate::provider::{Provider, ProviderError};
use crate::telemetry::RequestMetrics;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest provider error detail kept in a [`ProviderError::Status`] (in characters).
pub const MAX_DETAIL_CHARS: usize = 200;

/// The largest answer body read from a provider. Results are a few KiB; anything larger is
/// [`ProviderError::InvalidResponse`], never buffered whole.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

const USER_AGENT_VALUE: &str = concat!("webhook-enricher/", env!("CARGO_PKG_VERSION"));

/// An absolute `http`/`https` base URL, kept without a trailing slash, split once into the
/// parts every request URI is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    text: String,
    scheme: Scheme,
    authority: Authority,
    /// The base path without a trailing slash (empty for the root).
    path: String,
}

impl BaseUrl {
    /// Validates `url` (a trailing slash is tolerated). An invalid URL is a
    /// [`ProviderError::Config`] naming `setting`.
    pub fn parse(provider: Provider, setting: &str, url: &str) -> Result<Self, ProviderError> {
        let config = |problem: String| ProviderError::Config {
            provider,
            message: format!("{setting}: {problem}"),
        };
        let trimmed = url.trim().trim_end_matches('/');
        let parsed = url::Url::parse(trimmed).map_err(|e| config(format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(config("the URL scheme must be http or https".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(config("the URL must not have a query or fragment".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(config(
                "the URL must not carry credentials (set them in their own settings)".into(),
            ));
        }
        // `url` normalized it (host lowercase, default port dropped, path percent-encoded):
        // the parts below are valid URI parts.
        let normalized = parsed.as_str().trim_end_matches('/').to_owned();
        let uri: Uri = normalized
            .parse()
            .map_err(|e| config(format!("invalid URL: {e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(config("the URL must be absolute".into()));
        };
        let path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            text: trimmed.to_owned(),
            scheme,
            authority,
            path,
        })
    }

    /// `{base}{path}`; `path` starts with `/`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.text)
    }

    /// The request URI of `path` (which starts with `/` and holds only URI path characters:
    /// fixed segments and UUIDs).
    pub fn uri(&self, path: &str) -> Uri {
        let mut full = String::with_capacity(self.path.len() + path.len());
        full.push_str(&self.path);
        full.push_str(path);
        let path_and_query = PathAndQuery::try_from(full).unwrap_or_else(|_| {
            // Unreachable for the fixed paths and UUIDs the clients build; the request then
            // goes to the base path and the provider answers it with an error status.
            PathAndQuery::from_static("/")
        });
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A request to a provider, ready to send.
pub type ProviderRequest = Request<Full<Bytes>>;

/// A `GET` of `uri` with `headers`.
pub fn get(uri: Uri, headers: &[(HeaderName, &HeaderValue)]) -> ProviderRequest {
    request(Method::GET, uri, headers, None, Bytes::new())
}

/// A `POST` of `body` as JSON.
pub fn post_json(uri: Uri, body: &impl Serialize) -> Result<ProviderRequest, serde_json::Error> {
    let bytes = serde_json::to_vec(body)?;
    Ok(request(
        Method::POST,
        uri,
        &[],
        Some(HeaderValue::from_static("application/json")),
        bytes.into(),
    ))
}

/// A `POST` of `pairs` as `application/x-www-form-urlencoded`.
pub fn post_form(uri: Uri, pairs: &[(&str, &str)]) -> ProviderRequest {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    request(
        Method::POST,
        uri,
        &[],
        Some(HeaderValue::from_static(
            "application/x-www-form-urlencoded",
        )),
        body.into(),
    )
}

fn request(
    method: Method,
    uri: Uri,
    headers: &[(HeaderName, &HeaderValue)],
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> ProviderRequest {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let h = request.headers_mut();
    h.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(content_type) = content_type {
        h.insert(CONTENT_TYPE, content_type);
    }
    for (name, value) in headers {
        h.insert(name.clone(), (*value).clone());
    }
    request
}

/// One provider's pooled HTTP client and request gate.
pub struct HttpClient {
    provider: Provider,
    client: Client<Connector, Full<Bytes>>,
    gate: Gate,
    request_timeout: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("provider", &self.provider)
            .field("gate", &self.gate)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the pooled client (rustls with the platform's roots, timeouts and pool from
    /// `http`, no redirects) and the gate from `limits`.
    pub fn new(
        provider: Provider,
        http: &HttpSettings,
        limits: &RequestLimits,
    ) -> Result<Self, ProviderError> {
        let config = |problem: String| ProviderError::Config {
            provider,
            message: format!("cannot build the HTTP client: {problem}"),
        };
        let tls = tls_config().map_err(|e| config(format!("TLS: {e}")))?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(http.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let connector = if http.alpn_http2 || http.http2_prior_knowledge {
            connector.enable_http2().wrap_connector(tcp)
        } else {
            connector.wrap_connector(tcp)
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(http.pool_idle_timeout)
            .pool_max_idle_per_host(http.pool_max_idle(limits));
        if http.http2_prior_knowledge {
            builder.http2_only(true);
        }
        Ok(Self {
            provider,
            client: builder.build(connector),
            gate: Gate::new(limits),
            request_timeout: http.request_timeout,
            connect_timeout: http.connect_timeout,
        })
    }

    /// The provider this client calls.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Sends `request` through the gate and reads the whole answer, whatever its status, within
    /// the request timeout.
    ///
    /// `metrics` names the fixed operation used in metrics, logs and errors; `subject` is the
    /// id the request is about, if any (logged at debug). Transport failures become
    /// [`ProviderError::Timeout`] or [`ProviderError::Connect`].
    pub async fn execute(
        &self,
        metrics: &RequestMetrics,
        subject: Option<uuid::Uuid>,
        request: ProviderRequest,
    ) -> Result<Reply, ProviderError> {
        let operation = metrics.operation();
        let _permit = self.gate.acquire().await;
        let started = Instant::now();
        let exchange = async {
            let response = self.client.request(request).await.map_err(Failure::Send)?;
            let (parts, body) = response.into_parts();
            let retry_after = parts
                .headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::retry::parse_retry_after(v, chrono::Utc::now()));
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(Failure::Body)?
                .to_bytes();
            Ok::<_, Failure>(Reply {
                provider: self.provider,
                operation,
                status: parts.status,
                retry_after,
                body,
            })
        };
        let result = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::TimedOut),
        };
        let latency = started.elapsed();
        let (outcome, status) = match &result {
            Ok(reply) if reply.status.is_success() => ("ok", Some(reply.status.as_u16())),
            Ok(reply) => ("error", Some(reply.status.as_u16())),
            Err(Failure::TimedOut) => ("timeout", None),
            Err(Failure::Send(e)) if connect_timed_out(e) => ("timeout", None),
            Err(Failure::Body(e)) if e.is::<http_body_util::LengthLimitError>() => ("error", None),
            Err(_) => ("connect", None),
        };
        crate::telemetry::provider_request_finished(metrics, subject, outcome, status, latency);
        result.map_err(|e| self.transport_error(operation, e))
    }

    fn transport_error(&self, operation: &'static str, failure: Failure) -> ProviderError {
        let provider = self.provider;
        match failure {
            Failure::TimedOut => ProviderError::Timeout {
                provider,
                operation,
                timeout: self.request_timeout,
            },
            Failure::Send(e) if connect_timed_out(&e) => ProviderError::Timeout {
                provider,
                operation,
                timeout: self.connect_timeout,
            },
            Failure::Body(e) if e.is::<http_body_util::LengthLimitError>() => {
                ProviderError::InvalidResponse {
                    provider,
                    operation,
                    message: format!("the answer is larger than {MAX_BODY_BYTES} bytes"),
                }
            }
            Failure::Send(e) => ProviderError::Connect {
                provider,
                operation,
                message: error_chain(&e),
            },
            Failure::Body(e) => ProviderError::Connect {
                provider,
                operation,
                message: error_chain(&*e),
            },
        }
    }
}

/// The platform's certificate verifier over aws-lc-rs (the connector sets the ALPN protocols).
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth())
}

/// How a request failed below HTTP.
enum Failure {
    /// Connecting, sending, or reading the answer's head.
    Send(hyper_util::client::legacy::Error),
    /// Reading the answer's body (or it was too large).
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The request timeout passed.
    TimedOut,
}

/// True when the connection attempt itself timed out (`connect_timeout`).
fn connect_timed_out(error: &hyper_util::client::legacy::Error) -> bool {
    if !error.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        if cause.to_string().contains("timed out") {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A complete HTTP answer (any status).
pub struct Reply {
    provider: Provider,
    operation: &'static str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Reply {
    /// An answer as received: its status and whole body. The clients get theirs from
    /// [`HttpClient::execute`]; this builds one directly (the fuzz targets do).
    pub fn new(
        provider: Provider,
        operation: &'static str,
        status: StatusCode,
        body: Bytes,
    ) -> Self {
        Self {
            provider,
            operation,
            status,
            retry_after: None,
            body,
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// True for a 2xx answer.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The provider's short error description (see [`error_detail`]).
    pub fn detail(&self) -> String {
        error_detail(&self.body)
    }

    /// This answer as a [`ProviderError::Status`], with the parsed `Retry-After` and the
    /// provider's error detail.
    pub fn into_error(self) -> ProviderError {
        ProviderError::Status {
            provider: self.provider,
            operation: self.operation,
            status: self.status.as_u16(),
            retry_after: self.retry_after,
            detail: self.detail(),
        }
    }

    /// The body parsed as `T`; a body that does not parse is [`ProviderError::InvalidResponse`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| self.invalid(&e))
    }

    /// The body as received (a JSON object, kept whole: unknown fields included) and its typed
    /// view `T`, parsed once from the bytes.
    pub fn json_object<T: DeserializeOwned>(&self) -> Result<(T, String), ProviderError> {
        let first = self.body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Also catches what is not JSON at all, before serde would quote it.
            return Err(match first {
                Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                    ProviderError::InvalidResponse {
                        provider: self.provider,
                        operation: self.operation,
                        message: "the body is not a JSON object".into(),
                    }
                }
                _ => self.invalid_syntax(),
            });
        }
        let typed: T = serde_json::from_slice(&self.body).map_err(|e| {
            if e.is_data() {
                // serde's message can quote a value from the body: keep only that the shape is
                // wrong.
                ProviderError::InvalidResponse {
                    provider: self.provider,
                    operation: self.operation,
                    message: "the body does not have the expected shape".into(),
                }
            } else {
                self.invalid(&e)
            }
        })?;
        // serde_json validated the whole body as JSON, so it is UTF-8.
        let raw = String::from_utf8(self.body.to_vec()).map_err(|_| self.invalid_syntax())?;
        Ok((typed, raw))
    }

    fn invalid_syntax(&self) -> ProviderError {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&self.body) {
            Err(e) => self.invalid(&e),
            Ok(_) => ProviderError::InvalidResponse {
                provider: self.provider,
                operation: self.operation,
                message: "the body is not a JSON object".into(),
            },
        }
    }

    /// A [`ProviderError::InvalidResponse`] for this answer. serde's message can quote the
    /// offending value, so only the error category and position are kept.
    fn invalid(&self, error: &serde_json::Error) -> ProviderError {
        ProviderError::InvalidResponse {
            provider: self.provider,
            operation: self.operation,
            message: format!(
                "{:?} error at line {} column {}",
                error.classify(),
                error.line(),
                error.column()
            ),
        }
    }
}

/// The provider's error description from an error body: ClearSale's RFC 7807 `title`/`detail`,
/// Unico's `{"Error": {"code", "description"}}`, or a bare JSON string; truncated to
/// [`MAX_DETAIL_CHARS`]. OAuth2 token errors (`error`, `error_description`) are read too. Any other body gives `"no error detail"` (it is never copied).
pub fn error_detail(body: &[u8]) -> String {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| detail_of(&value));
    match detail {
        Some(d) if !d.trim().is_empty() => truncate(d.trim(), MAX_DETAIL_CHARS),
        _ => "no error detail".into(),
    }
}

fn detail_of(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(map) if map.contains_key("Error") => {
            let error = ErrorBody::deserialize(value).ok()?.error?;
            join_present([error.code, error.description])
        }
        serde_json::Value::Object(map) if map.contains_key("error") => {
            let error = OAuthError::deserialize(value).ok()?;
            join_present([error.error, error.error_description])
        }
        serde_json::Value::Object(_) => {
            let problem = Problem::deserialize(value).ok()?;
            join_present([problem.title, problem.detail])
        }
        _ => None,
    }
}

/// An OAuth2 token-endpoint error (RFC 6749 section 5.2).
#[derive(Deserialize)]
struct OAuthError {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    error: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    error_description: Option<String>,
}

fn join_present(parts: [Option<String>; 2]) -> Option<String> {
    let parts: Vec<String> = parts
        .into_iter()
        .flatten()
        .filter(|p| !p.trim().is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(": "))
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `error: cause: cause…`, truncated to [`MAX_DETAIL_CHARS`].
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    truncate(&text, MAX_DETAIL_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_tolerates_a_trailing_slash_and_rejects_garbage() {
        let base = BaseUrl::parse(Provider::ClearSale, "base_url", "https://x.test/").unwrap();
        assert_eq!(base.join("/a/b"), "https://x.test/a/b");
        let base = BaseUrl::parse(Provider::ClearSale, "base_url", "http://x.test/api//").unwrap();
        assert_eq!(base.join("/a"), "http://x.test/api/a");
        for bad in [
            "",
            "not a url",
            "ftp://x.test",
            "https://x.test/?q=1",
            "/relative",
        ] {
            let err = BaseUrl::parse(Provider::Unico, "issuer_url", bad).unwrap_err();
            assert!(matches!(err, ProviderError::Config { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("issuer_url"));
        }
    }

    #[test]
    fn base_url_builds_request_uris_under_its_path_and_refuses_credentials() {
        let base =
            BaseUrl::parse(Provider::ClearSale, "base_url", "https://X.test:8443/api/").unwrap();
        let id = uuid::Uuid::nil();
        assert_eq!(
            base.uri(&format!("/processes/v1/{id}")).to_string(),
            format!("https://x.test:8443/api/processes/v1/{id}")
        );
        let root = BaseUrl::parse(Provider::Unico, "issuer_url", "http://127.0.0.1:9").unwrap();
        assert_eq!(
            root.uri("/oauth2/token").to_string(),
            "http://127.0.0.1:9/oauth2/token"
        );
        let err = BaseUrl::parse(Provider::Unico, "base_url", "https://u:p@x.test").unwrap_err();
        assert!(err.to_string().contains("credentials"), "{err}");
        assert!(!err.to_string().contains("u:p"), "{err}");
    }

    #[test]
    fn error_detail_reads_both_providers_formats() {
        let problem = br#"{"type":"about:blank","title":"Not Found","status":404,
            "detail":"Analysis 'x' Not Found.","traceId":"t"}"#;
        assert_eq!(error_detail(problem), "Not Found: Analysis 'x' Not Found.");
        let unico = br#"{"Error":{"code":"40004","description":"Process not found"}}"#;
        assert_eq!(error_detail(unico), "40004: Process not found");
        let oauth = br#"{"error":"invalid_grant","error_description":"bad signature"}"#;
        assert_eq!(error_detail(oauth), "invalid_grant: bad signature");
        assert_eq!(
            error_detail(br#""User or Password not authorized""#),
            "User or Password not authorized"
        );
    }

    #[test]
    fn error_detail_never_copies_other_bodies_and_truncates() {
        assert_eq!(error_detail(b"<html>secret page</html>"), "no error detail");
        assert_eq!(error_detail(br#"{"name":"Maria"}"#), "no error detail");
        assert_eq!(error_detail(b"[1,2]"), "no error detail");
        let long = serde_json::to_vec(&"é".repeat(500)).unwrap();
        let detail = error_detail(&long);
        assert_eq!(detail.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(detail.ends_with('…'));
    }
}
