//! The Unico IDUnico client: an access token from the OAuth2 JWT-bearer grant (cached until
//! `expires_in` minus the refresh margin, single flight) and `GET /processes/v1/{processId}`.
//!
//! The token cache, the send and the one refresh and retry after a 401/403 are the shared
//! authorised-request flow ([`Authorised`]); this module keeps what is Unico's own: how a token
//! is obtained (`ServiceAccount`, with the signed assertion of `assertion.rs`), the URLs and
//! the `APIKEY` header, and the parsing of the answers.
//!
//! One call is one attempt: retries with backoff live in the caller. The only repeat made here is
//! the one retry after a 401/403 with a refreshed token.

use super::assertion::AssertionSigner;
use super::model::{Process, TokenResponse};
use crate::provider::auth::{token_answer, Authorised, BearerToken, Refusal, TokenSource};
use crate::provider::http::{self, BaseUrl, HttpClient, Reply};
use crate::provider::settings::UnicoSettings;
use crate::provider::{Provider, ProviderError};
use crate::telemetry::RequestMetrics;
use ::http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use ::http::Uri;
use std::time::Duration;

const PROVIDER: Provider = Provider::Unico;
/// Operation name of the token request (metrics, logs, errors).
const TOKEN: &str = "token";
/// Operation name of the process read (metrics, logs, errors).
const GET_PROCESS: &str = "get_process";
/// RFC 7523 grant type.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The API key header (`APIKEY`; header names are case-insensitive).
const APIKEY: HeaderName = HeaderName::from_static("apikey");
/// `expires_in` when the token answer leaves it out.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The API refuses the token, or the API key, with 401 or 403.
const REFUSAL: Refusal = Refusal {
    statuses: &[401, 403],
    hint: " (token or API key invalid)",
};

/// Unico's answer for one process.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessAnswer {
    /// 200: the typed view and the whole JSON body (unknown fields kept).
    Found {
        process: Process,
        /// The body as received (a JSON object).
        raw: String,
    },
    /// 410 Gone: the process ended in error (status 5). Terminal, not a failure.
    Gone,
}

/// A Unico IDUnico API client. Share it behind an `Arc`; it holds one connection pool, one
/// request gate and one access token for all callers. `Debug` never shows the API key, the
/// private key or the token.
#[derive(Debug)]
pub struct UnicoClient {
    api: Authorised<ServiceAccount>,
    base_url: BaseUrl,
    /// The `APIKEY` header value, marked sensitive.
    api_key: HeaderValue,
    get_process_metrics: RequestMetrics,
}

/// Where Unico's access tokens come from: `POST {issuer}/oauth2/token` with an assertion signed
/// by the service account's key. `Debug` never shows the key.
#[derive(Debug)]
struct ServiceAccount {
    token_url: Uri,
    signer: AssertionSigner,
    token_refresh_margin: Duration,
    token_metrics: RequestMetrics,
}

impl UnicoClient {
    /// Builds the client and checks the private key by signing once. An invalid URL, key, API key
    /// or assertion lifetime is [`ProviderError::Config`]. No request is made until the first
    /// call.
    pub fn new(settings: &UnicoSettings) -> Result<Self, ProviderError> {
        let issuer = BaseUrl::parse(PROVIDER, "unico.issuer_url", &settings.issuer_url)?;
        let mut api_key = HeaderValue::from_str(settings.api_key.expose()).map_err(|_| {
            ProviderError::Config {
                provider: PROVIDER,
                message: "unico.api_key is not a valid HTTP header value".into(),
            }
        })?;
        api_key.set_sensitive(true);
        let http = HttpClient::new(PROVIDER, &settings.http, &settings.limits)?;
        let base_url = BaseUrl::parse(PROVIDER, "unico.base_url", &settings.base_url)?;
        let account = ServiceAccount {
            token_url: issuer.uri("/oauth2/token"),
            signer: AssertionSigner::new(settings)?,
            token_refresh_margin: settings.token_refresh_margin,
            token_metrics: RequestMetrics::new(PROVIDER, TOKEN),
        };
        Ok(Self {
            api: Authorised::new(http, account, REFUSAL),
            base_url,
            api_key,
            get_process_metrics: RequestMetrics::new(PROVIDER, GET_PROCESS),
        })
    }

    /// One `GET /processes/v1/{processId}`, plus at most one token refresh and one retry when the
    /// API answers 401 or 403.
    ///
    /// 200 is [`ProcessAnswer::Found`]; 410 is [`ProcessAnswer::Gone`]. A second 401/403 is
    /// [`ProviderError::Auth`]; any other non-2xx answer is [`ProviderError::Status`]; a 2xx body
    /// that is not a JSON object of the expected shape is [`ProviderError::InvalidResponse`].
    pub async fn get_process(
        &self,
        process_id: uuid::Uuid,
    ) -> Result<ProcessAnswer, ProviderError> {
        let reply = self
            .api
            .send(&self.get_process_metrics, Some(process_id), |token| {
                let uri = self
                    .base_url
                    .uri(&format!("/processes/v1/{}", process_id.as_hyphenated()));
                http::get(uri, &[(AUTHORIZATION, token), (APIKEY, &self.api_key)])
            })
            .await?;
        process_from_reply(reply)
    }
}

impl TokenSource for ServiceAccount {
    /// One `POST {issuer}/oauth2/token` with a freshly signed assertion. 400/401/403 mean the
    /// service account, key or clock is wrong ([`ProviderError::Auth`]); other failures are the
    /// usual transient errors.
    async fn fetch_token(&self, client: &HttpClient) -> Result<BearerToken, ProviderError> {
        let assertion = self.signer.sign()?;
        let form = [
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.as_str()),
        ];
        let request = http::post_form(self.token_url.clone(), &form);
        let reply = client.execute(&self.token_metrics, None, request).await?;
        token_from_reply(reply, self.token_refresh_margin)
    }
}

/// The process in the answer to `GET /processes/v1/{id}` (after the client's one retry on
/// 401/403): `410 Gone` is [`ProcessAnswer::Gone`], another non-2xx answer its
/// [`ProviderError::Status`], a body that is not the expected JSON object
/// [`ProviderError::InvalidResponse`].
pub fn process_from_reply(reply: Reply) -> Result<ProcessAnswer, ProviderError> {
    if reply.status() == 410 {
        return Ok(ProcessAnswer::Gone);
    }
    if !reply.is_success() {
        return Err(reply.into_error());
    }
    let (process, raw) = reply.json_object()?;
    Ok(ProcessAnswer::Found { process, raw })
}

/// The access token in an answer to `POST {issuer}/oauth2/token`, to be refreshed
/// `refresh_margin` before `expires_in` runs out. 400/401/403 mean the service account, key or
/// clock is wrong ([`ProviderError::Auth`]).
pub fn token_from_reply(
    reply: Reply,
    refresh_margin: Duration,
) -> Result<BearerToken, ProviderError> {
    let reply = token_answer(reply, PROVIDER, &format!("{TOKEN} refused the assertion"))?;
    let answer: TokenResponse = reply.json()?;
    let lifetime = answer
        .expires_in
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    BearerToken::new(
        PROVIDER,
        TOKEN,
        &answer.access_token,
        lifetime,
        refresh_margin,
    )
}
