//! The authorised-request flow both provider clients share, and its tokens.
//!
//! [`Authorised`] sends a provider request with the cached bearer token, and when the API
//! refuses that token ([`Refusal`]) refreshes it once and sends the request once more; a second
//! refusal is [`ProviderError::Auth`]. Tokens come from the provider's [`TokenSource`] (ClearSale:
//! user and password; Unico: a signed JWT assertion) and are cached in a [`TokenCache`]: refreshed
//! ahead of expiry, one token request at a time, shared by all of the client's callers.
//!
//! The per-request path adds nothing to what a client did alone: no boxed future (the flow and
//! the token source are generic), no lock beyond the cache's short read of the current token
//! that every request already made, and the request is built by the client's closure, once per
//! attempt, as before.

use crate::provider::http::{HttpClient, ProviderRequest, Reply};
use crate::provider::{Provider, ProviderError};
use crate::telemetry::RequestMetrics;
use http::header::HeaderValue;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token endpoint's answer, checked the same way for both providers: 400/401/403 mean the
/// credentials (or the signed assertion) were refused, [`ProviderError::Auth`] with `refused`
/// saying what; another non-2xx answer is its [`ProviderError::Status`]; a 2xx answer is handed
/// back for the provider's own parser.
pub fn token_answer(
    reply: Reply,
    provider: Provider,
    refused: &str,
) -> Result<Reply, ProviderError> {
    match reply.status() {
        400 | 401 | 403 => Err(ProviderError::Auth {
            provider,
            status: Some(reply.status()),
            message: format!("{refused}: {}", reply.detail()),
        }),
        _ if !reply.is_success() => Err(reply.into_error()),
        _ => Ok(reply),
    }
}

/// How a provider hands out tokens: one token request, made through the provider's own HTTP
/// client (its pool and request gate). Caching, single flight and refresh are [`Authorised`]'s.
pub trait TokenSource {
    /// Requests one new token. A refusal of the credentials is [`ProviderError::Auth`]; other
    /// failures keep their usual variants (a token-endpoint outage is transient).
    fn fetch_token(
        &self,
        http: &HttpClient,
    ) -> impl Future<Output = Result<BearerToken, ProviderError>> + Send;
}

/// How an API says it refused the token it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// The answer statuses that mean "this token is refused": the token is refreshed once and
    /// the request sent again.
    pub statuses: &'static [u16],
    /// Appended to "still answers {status} with a fresh token" in the [`ProviderError::Auth`]
    /// of a refusal that survives the refresh: what else the provider may be refusing (empty
    /// when nothing else).
    pub hint: &'static str,
}

impl Refusal {
    fn refuses(&self, reply: &Reply) -> bool {
        self.statuses.contains(&reply.status())
    }
}

/// The authorised-request flow both provider clients share: a provider's HTTP client, where its
/// tokens come from, and its cached token.
///
/// [`Authorised::send`] takes the cached token (or fetches one, single flight), sends the
/// request with it, and when the API refuses the token ([`Refusal`]) refreshes it once and sends
/// the request once more; a second refusal is [`ProviderError::Auth`]. Every other answer is
/// returned as it came, for the client to parse. The client keeps only what is its own: how a
/// token is obtained ([`TokenSource`]), its request URLs, and the parsing of its answers.
#[derive(Debug)]
pub struct Authorised<S> {
    http: HttpClient,
    source: S,
    refusal: Refusal,
    token: TokenCache,
}

impl<S: TokenSource> Authorised<S> {
    /// The flow for `http`'s provider, with tokens from `source`. No request is made until the
    /// first [`Authorised::send`].
    pub fn new(http: HttpClient, source: S, refusal: Refusal) -> Self {
        Self {
            token: TokenCache::new(http.provider()),
            http,
            source,
            refusal,
        }
    }

    /// One authorised request: `build` makes the request carrying the given `Authorization`
    /// header value (it is called once, and once more after a refused token); `metrics` and
    /// `subject` are as in [`HttpClient::execute`].
    ///
    /// Returns the answer, whatever its status, except a refusal that survives one token refresh:
    /// that is [`ProviderError::Auth`] with the answer's status and the provider's error detail.
    /// A failed token request is returned as it is; nothing is sent then.
    pub async fn send<B>(
        &self,
        metrics: &RequestMetrics,
        subject: Option<uuid::Uuid>,
        build: B,
    ) -> Result<Reply, ProviderError>
    where
        B: Fn(&HeaderValue) -> ProviderRequest,
    {
        let token = self.token(None).await?;
        let reply = self
            .http
            .execute(metrics, subject, build(token.header()))
            .await?;
        if !self.refusal.refuses(&reply) {
            return Ok(reply);
        }
        let token = self.token(Some(&token)).await?;
        let reply = self
            .http
            .execute(metrics, subject, build(token.header()))
            .await?;
        if self.refusal.refuses(&reply) {
            return Err(ProviderError::Auth {
                provider: self.http.provider(),
                status: Some(reply.status()),
                message: format!(
                    "{} still answers {} with a fresh token{}: {}",
                    metrics.operation(),
                    reply.status(),
                    self.refusal.hint,
                    reply.detail()
                ),
            });
        }
        Ok(reply)
    }

    /// The cached token, or a new one from the source (single flight); `rejected` is a token
    /// the API refused.
    async fn token(
        &self,
        rejected: Option<&Arc<BearerToken>>,
    ) -> Result<Arc<BearerToken>, ProviderError> {
        self.token
            .get(rejected, || self.source.fetch_token(&self.http))
            .await
    }
}

/// A bearer token ready to send, and when to stop using it.
pub struct BearerToken {
    header: HeaderValue,
    refresh_at: Instant,
}

impl BearerToken {
    /// `Authorization: Bearer <token>`, to be refreshed `margin` before `lifetime` runs out (at
    /// once when the lifetime is shorter than the margin; it is still used for the current call).
    /// A token that is not a valid header value is [`ProviderError::InvalidResponse`].
    pub fn new(
        provider: Provider,
        operation: &'static str,
        token: &str,
        lifetime: Duration,
        margin: Duration,
    ) -> Result<Self, ProviderError> {
        let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ProviderError::InvalidResponse {
                provider,
                operation,
                message: "the token is not a valid HTTP header value".into(),
            }
        })?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }

    /// The `Authorization` header value (marked sensitive).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("token", &"[redacted]")
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// A shared token with single-flight refresh.
///
/// At most one token request runs at a time (the lock is held across it), and callers that were
/// waiting while a token request completed take that request's result (token or error) instead
/// of starting another. So N concurrent callers needing a token cause exactly one token request,
/// and N concurrent rejections of the same stale token cause exactly one refresh. Every token
/// request is reported once, here ([`crate::telemetry::token_refreshed`]).
pub struct TokenCache {
    provider: Provider,
    /// Number of token requests completed so far.
    completed: AtomicU64,
    /// The current token, readable without waiting for a refresh in progress: the fast path of
    /// every request.
    current: std::sync::Mutex<Option<Arc<BearerToken>>>,
    state: tokio::sync::Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    current: Option<Arc<BearerToken>>,
    /// The number and result of the last completed token request.
    last: Option<(u64, Result<Arc<BearerToken>, ProviderError>)>,
}

impl TokenCache {
    /// An empty cache for `provider`'s tokens.
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            completed: AtomicU64::new(0),
            current: std::sync::Mutex::new(None),
            state: tokio::sync::Mutex::new(TokenState::default()),
        }
    }

    /// A fresh token: the cached one, or one from `fetch`.
    ///
    /// `rejected` is the token the provider just refused (401/403): it is not returned again.
    pub async fn get<F, Fut>(
        &self,
        rejected: Option<&Arc<BearerToken>>,
        fetch: F,
    ) -> Result<Arc<BearerToken>, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BearerToken, ProviderError>>,
    {
        if rejected.is_none() {
            let current = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(token) = current.filter(|t| t.is_fresh()) {
                return Ok(token);
            }
        }
        let seen = self.completed.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some((number, result)) = &state.last {
            if *number > seen {
                // A token request completed while we waited: share its result.
                return result.clone();
            }
        }
        if let Some(current) = &state.current {
            let was_rejected = rejected.is_some_and(|r| Arc::ptr_eq(r, current));
            if current.is_fresh() && !was_rejected {
                return Ok(current.clone());
            }
        }
        let result = fetch().await.map(Arc::new);
        crate::telemetry::token_refreshed(self.provider, result.is_ok());
        state.current = result.as_ref().ok().cloned();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = state.current.clone();
        let number = self.completed.fetch_add(1, Ordering::AcqRel) + 1;
        state.last = Some((number, result.clone()));
        result
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("requests", &self.completed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::http::BaseUrl;
    use crate::provider::settings::{HttpSettings, RequestLimits};
    use http::header::AUTHORIZATION;
    use std::collections::VecDeque;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[test]
    fn a_token_endpoint_refusal_is_auth_other_failures_are_status() {
        let answer = |status: u16, body: &'static str| {
            Reply::new(
                Provider::Unico,
                "token",
                ::http::StatusCode::from_u16(status).unwrap(),
                bytes::Bytes::from_static(body.as_bytes()),
            )
        };
        for status in [400, 401, 403] {
            match token_answer(
                answer(status, r#"{"error":"invalid_grant"}"#),
                Provider::Unico,
                "POST /oauth2/token refused the assertion",
            ) {
                Err(ProviderError::Auth {
                    provider: Provider::Unico,
                    status: Some(s),
                    message,
                }) => {
                    assert_eq!(s, status);
                    assert!(
                        message.starts_with("POST /oauth2/token refused the assertion: "),
                        "{message}"
                    );
                }
                other => panic!("{status}: {:?}", other.err()),
            }
        }
        assert!(matches!(
            token_answer(answer(503, ""), Provider::Unico, "refused"),
            Err(ProviderError::Status { status: 503, .. })
        ));
        assert!(matches!(
            token_answer(answer(429, ""), Provider::Unico, "refused"),
            Err(ProviderError::Status { status: 429, .. })
        ));
        match token_answer(answer(200, "{}"), Provider::Unico, "refused") {
            Ok(reply) => assert_eq!(reply.status(), 200),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn token(lifetime: Duration) -> BearerToken {
        BearerToken::new(
            Provider::Unico,
            "token",
            "t",
            lifetime,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn token_cache_reuses_a_fresh_token_and_refreshes_a_rejected_one() {
        let cache = TokenCache::new(Provider::ClearSale);
        let first = cache
            .get(None, || async { Ok(token(Duration::from_secs(3600))) })
            .await
            .unwrap();
        let again = cache
            .get(None, || async { panic!("must not fetch") })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let second = cache
            .get(Some(&first), || async {
                Ok(token(Duration::from_secs(3600)))
            })
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        // The old token being rejected again does not cause another refresh.
        let third = cache
            .get(Some(&first), || async { panic!("must not fetch") })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&second, &third));
    }

    #[tokio::test]
    async fn token_cache_refreshes_a_token_within_the_margin() {
        let cache = TokenCache::new(Provider::ClearSale);
        let short = cache
            .get(None, || async { Ok(token(Duration::from_secs(30))) })
            .await
            .unwrap();
        let next = cache
            .get(None, || async { Ok(token(Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&short, &next));
    }

    #[test]
    fn bearer_token_debug_is_redacted() {
        let t = BearerToken::new(
            Provider::ClearSale,
            "authenticate",
            "eyJsecret",
            Duration::from_secs(10),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer eyJsecret");
        assert!(!format!("{t:?}").contains("eyJsecret"));
        let bad = BearerToken::new(
            Provider::ClearSale,
            "authenticate",
            "line\nbreak",
            Duration::from_secs(10),
            Duration::ZERO,
        );
        assert!(matches!(bad, Err(ProviderError::InvalidResponse { .. })));
    }

    /// A token source answering from a script, counting its token requests.
    #[derive(Debug)]
    struct Scripted {
        answers: std::sync::Mutex<VecDeque<Result<&'static str, ProviderError>>>,
        fetches: AtomicU64,
        /// How long each token request takes (so that concurrent callers overlap it).
        delay: Duration,
    }

    impl Scripted {
        fn new(answers: Vec<Result<&'static str, ProviderError>>) -> Self {
            Self {
                answers: std::sync::Mutex::new(answers.into()),
                fetches: AtomicU64::new(0),
                delay: Duration::ZERO,
            }
        }

        fn slow(mut self) -> Self {
            self.delay = Duration::from_millis(200);
            self
        }
    }

    impl TokenSource for Scripted {
        async fn fetch_token(&self, _client: &HttpClient) -> Result<BearerToken, ProviderError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let answer = self.answers.lock().unwrap().pop_front();
            let token = answer.expect("a token request the test did not script")?;
            BearerToken::new(
                Provider::ClearSale,
                "token",
                token,
                Duration::from_secs(3600),
                Duration::from_secs(60),
            )
        }
    }

    const ONLY_401: Refusal = Refusal {
        statuses: &[401],
        hint: "",
    };
    const ALSO_403: Refusal = Refusal {
        statuses: &[401, 403],
        hint: " (token or API key invalid)",
    };
    const PATH: &str = "/thing";

    /// The flow, and a function sending one `GET /thing` through it.
    struct Harness {
        flow: Authorised<Scripted>,
        base: BaseUrl,
        metrics: RequestMetrics,
    }

    impl Harness {
        fn new(server: &MockServer, source: Scripted, refusal: Refusal) -> Self {
            let limits = RequestLimits {
                rate_per_second: 0,
                burst: 0,
                max_concurrent: 0,
            };
            let http =
                HttpClient::new(Provider::ClearSale, &HttpSettings::default(), &limits).unwrap();
            Self {
                flow: Authorised::new(http, source, refusal),
                base: BaseUrl::parse(Provider::ClearSale, "base_url", &server.uri()).unwrap(),
                metrics: RequestMetrics::new(Provider::ClearSale, "get_thing"),
            }
        }

        async fn send(&self) -> Result<Reply, ProviderError> {
            self.flow
                .send(&self.metrics, None, |token| {
                    crate::provider::http::get(self.base.uri(PATH), &[(AUTHORIZATION, token)])
                })
                .await
        }

        fn fetches(&self) -> u64 {
            self.flow.source.fetches.load(Ordering::SeqCst)
        }
    }

    /// Answers `GET /thing` sent with `Bearer {token}`; exactly `times` such requests are
    /// expected (checked when the server drops).
    async fn answer(server: &MockServer, token: &str, response: ResponseTemplate, times: u64) {
        Mock::given(method("GET"))
            .and(path(PATH))
            .and(header("Authorization", format!("Bearer {token}").as_str()))
            .respond_with(response)
            .expect(times)
            .mount(server)
            .await;
    }

    /// The status of an answer (`Reply` has no `Debug`: its body may hold personal data).
    fn status(result: Result<Reply, ProviderError>) -> u16 {
        match result {
            Ok(reply) => reply.status(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn failure(result: Result<Reply, ProviderError>) -> ProviderError {
        match result {
            Ok(reply) => panic!("answered {}", reply.status()),
            Err(e) => e,
        }
    }

    fn refused(status: u16) -> ResponseTemplate {
        ResponseTemplate::new(status)
            .set_body_json(serde_json::json!({"title": "Refused", "detail": "token expired"}))
    }

    fn token_outage() -> ProviderError {
        ProviderError::Status {
            provider: Provider::ClearSale,
            operation: "token",
            status: 503,
            retry_after: Some(Duration::from_secs(4)),
            detail: "maintenance".into(),
        }
    }

    fn credentials_refused() -> ProviderError {
        ProviderError::Auth {
            provider: Provider::ClearSale,
            status: Some(401),
            message: "token refused the credentials: nope".into(),
        }
    }

    #[tokio::test]
    async fn a_refused_token_is_refreshed_once_and_the_request_sent_again() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", refused(401), 1).await;
        answer(&server, "secret-b", ResponseTemplate::new(200), 2).await;
        let source = Scripted::new(vec![Ok("secret-a"), Ok("secret-b")]);
        let h = Harness::new(&server, source, ONLY_401);
        assert_eq!(status(h.send().await), 200);
        assert_eq!(h.fetches(), 2);
        // The refreshed token is the cached one now.
        assert_eq!(status(h.send().await), 200);
        assert_eq!(h.fetches(), 2);
    }

    #[tokio::test]
    async fn a_refusal_of_the_fresh_token_is_an_auth_failure() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", refused(401), 1).await;
        answer(&server, "secret-b", refused(401), 1).await;
        let source = Scripted::new(vec![Ok("secret-a"), Ok("secret-b")]);
        let h = Harness::new(&server, source, ONLY_401);
        let err = failure(h.send().await);
        match &err {
            ProviderError::Auth {
                provider: Provider::ClearSale,
                status: Some(401),
                message,
            } => assert_eq!(
                message,
                "get_thing still answers 401 with a fresh token: Refused: token expired"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{err} {err:?}").contains("secret"), "{err:?}");
        assert_eq!(h.fetches(), 2, "one token, one refresh, no more");
    }

    #[tokio::test]
    async fn only_the_refusal_statuses_refresh_the_token() {
        // For a 401-only API, a 403 is an ordinary answer, returned as it came.
        let server = MockServer::start().await;
        answer(&server, "secret-a", refused(403), 1).await;
        let h = Harness::new(&server, Scripted::new(vec![Ok("secret-a")]), ONLY_401);
        assert_eq!(status(h.send().await), 403);
        assert_eq!(h.fetches(), 1);

        // Where 403 is a refusal too, it is refreshed once, then it is the hinted Auth failure.
        let server = MockServer::start().await;
        answer(&server, "secret-a", refused(403), 1).await;
        answer(&server, "secret-b", refused(403), 1).await;
        let source = Scripted::new(vec![Ok("secret-a"), Ok("secret-b")]);
        let h = Harness::new(&server, source, ALSO_403);
        match failure(h.send().await) {
            ProviderError::Auth {
                status: Some(403),
                message,
                ..
            } => assert_eq!(
                message,
                "get_thing still answers 403 with a fresh token (token or API key invalid): \
                 Refused: token expired"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.fetches(), 2);
    }

    #[tokio::test]
    async fn other_answers_are_returned_as_they_came_and_the_token_is_reused() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", ResponseTemplate::new(404), 2).await;
        let h = Harness::new(&server, Scripted::new(vec![Ok("secret-a")]), ALSO_403);
        for _ in 0..2 {
            assert_eq!(status(h.send().await), 404);
        }
        assert_eq!(h.fetches(), 1);
    }

    #[tokio::test]
    async fn a_failed_token_request_is_returned_and_nothing_is_sent() {
        for error in [credentials_refused(), token_outage()] {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .respond_with(ResponseTemplate::new(200))
                .expect(0)
                .mount(&server)
                .await;
            let h = Harness::new(&server, Scripted::new(vec![Err(error.clone())]), ONLY_401);
            let err = failure(h.send().await);
            assert_eq!(format!("{err:?}"), format!("{error:?}"));
            assert_eq!(h.fetches(), 1);
        }
    }

    #[tokio::test]
    async fn a_failed_refresh_is_returned() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", refused(401), 1).await;
        let source = Scripted::new(vec![Ok("secret-a"), Err(token_outage())]);
        let h = Harness::new(&server, source, ONLY_401);
        let err = failure(h.send().await);
        assert_eq!(format!("{err:?}"), format!("{:?}", token_outage()));
        assert_eq!(h.fetches(), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_token_request() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", ResponseTemplate::new(200), 16).await;
        let h = Harness::new(
            &server,
            Scripted::new(vec![Ok("secret-a")]).slow(),
            ONLY_401,
        );
        let replies = futures::future::join_all((0..16).map(|_| h.send())).await;
        for reply in replies {
            assert_eq!(status(reply), 200);
        }
        assert_eq!(h.fetches(), 1);
    }

    #[tokio::test]
    async fn concurrent_callers_share_a_failed_token_request() {
        let server = MockServer::start().await;
        let source = Scripted::new(vec![Err(token_outage())]).slow();
        let h = Harness::new(&server, source, ONLY_401);
        let replies = futures::future::join_all((0..16).map(|_| h.send())).await;
        for reply in replies {
            let err = failure(reply);
            assert_eq!(format!("{err:?}"), format!("{:?}", token_outage()));
        }
        assert_eq!(h.fetches(), 1);
    }

    #[tokio::test]
    async fn concurrent_refusals_of_one_token_share_one_refresh() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", refused(401), 16).await;
        answer(&server, "secret-b", ResponseTemplate::new(200), 16).await;
        let source = Scripted::new(vec![Ok("secret-a"), Ok("secret-b")]).slow();
        let h = Harness::new(&server, source, ONLY_401);
        let replies = futures::future::join_all((0..16).map(|_| h.send())).await;
        for reply in replies {
            assert_eq!(status(reply), 200);
        }
        assert_eq!(h.fetches(), 2);
    }

    #[tokio::test]
    async fn debug_shows_no_token() {
        let server = MockServer::start().await;
        answer(&server, "secret-a", ResponseTemplate::new(200), 1).await;
        let h = Harness::new(&server, Scripted::new(vec![Ok("secret-a")]), ONLY_401);
        assert_eq!(status(h.send().await), 200);
        let text = format!("{:?}", h.flow);
        assert!(!text.contains("secret-a"), "{text}");
    }
}
