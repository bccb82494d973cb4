//! The ClearSale Connect client: `POST /connect/v1/authenticate` for a bearer token (cached,
//! refreshed ahead of `expirationDate`, single flight) and
//! `GET /connect/v1/integration/analysis/{analysisId}`.
//!
//! The token cache, the send and the one refresh and retry after a 401 are the shared
//! authorised-request flow ([`Authorised`]); this module keeps what is ClearSale's own: how a token
//! is obtained (`Credentials`), the URLs, and the parsing of the answers.
//!
//! One call is one attempt: retries with backoff live in the caller. The only repeat made here is
//! the one retry after a 401 with a refreshed token.

use super::model::{Analysis, AuthenticateRequest, AuthenticateResponse};
use crate::datetime::parse_provider_datetime;
use crate::provider::auth::{token_answer, Authorised, BearerToken, Refusal, TokenSource};
use crate::provider::http::{self, BaseUrl, HttpClient, Reply};
use crate::provider::settings::ClearSaleSettings;
use crate::provider::{Provider, ProviderError};
use crate::secret::Secret;
use crate::telemetry::RequestMetrics;
use ::http::header::AUTHORIZATION;
use ::http::Uri;
use std::time::Duration;

const PROVIDER: Provider = Provider::ClearSale;
/// Operation name of the token request (metrics, logs, errors).
const AUTHENTICATE: &str = "authenticate";
/// Operation name of the analysis read (metrics, logs, errors).
const GET_ANALYSIS: &str = "get_analysis";
/// The API refuses an expired or unknown token with 401 (a 403 is an ordinary answer).
const REFUSAL: Refusal = Refusal {
    statuses: &[401],
    hint: "",
};

/// A ClearSale Connect API client. Share it behind an `Arc`; it holds one connection pool, one
/// request gate and one token for all callers. `Debug` never shows the password or the token.
#[derive(Debug)]
pub struct ClearSaleClient {
    api: Authorised<Credentials>,
    base_url: BaseUrl,
    get_analysis_metrics: RequestMetrics,
}

/// Where ClearSale's tokens come from: `POST /connect/v1/authenticate` with the API user and
/// password. `Debug` never shows the password.
#[derive(Debug)]
struct Credentials {
    authenticate_url: Uri,
    user: String,
    password: Secret,
    token_refresh_margin: Duration,
    authenticate_metrics: RequestMetrics,
}

impl ClearSaleClient {
    /// Builds the client. An invalid `base_url` or HTTP setting is [`ProviderError::Config`].
    /// No request is made until the first call.
    pub fn new(settings: &ClearSaleSettings) -> Result<Self, ProviderError> {
        let http = HttpClient::new(PROVIDER, &settings.http, &settings.limits)?;
        let base_url = BaseUrl::parse(PROVIDER, "clearsale.base_url", &settings.base_url)?;
        let credentials = Credentials {
            authenticate_url: base_url.uri("/connect/v1/authenticate"),
            user: settings.user.clone(),
            password: settings.password.clone(),
            token_refresh_margin: settings.token_refresh_margin,
            authenticate_metrics: RequestMetrics::new(PROVIDER, AUTHENTICATE),
        };
        Ok(Self {
            api: Authorised::new(http, credentials, REFUSAL),
            base_url,
            get_analysis_metrics: RequestMetrics::new(PROVIDER, GET_ANALYSIS),
        })
    }

    /// One `GET /connect/v1/integration/analysis/{analysisId}`, plus at most one token refresh
    /// and one retry when the API answers 401. Returns the typed view and the whole JSON body.
    ///
    /// A second 401 is [`ProviderError::Auth`]; any other non-2xx answer is
    /// [`ProviderError::Status`]; a 2xx body that is not a JSON object of the expected shape is
    /// [`ProviderError::InvalidResponse`].
    pub async fn get_analysis(
        &self,
        analysis_id: uuid::Uuid,
    ) -> Result<(Analysis, String), ProviderError> {
        let reply = self
            .api
            .send(&self.get_analysis_metrics, Some(analysis_id), |token| {
                let uri = self.base_url.uri(&format!(
                    "/connect/v1/integration/analysis/{}",
                    analysis_id.as_hyphenated()
                ));
                http::get(uri, &[(AUTHORIZATION, token)])
            })
            .await?;
        analysis_from_reply(reply)
    }
}

impl TokenSource for Credentials {
    /// One `POST /connect/v1/authenticate`. 400/401/403 mean the credentials are wrong
    /// ([`ProviderError::Auth`]); other failures are the usual transient errors.
    async fn fetch_token(&self, client: &HttpClient) -> Result<BearerToken, ProviderError> {
        let body = AuthenticateRequest {
            user: &self.user,
            password: self.password.expose(),
        };
        let request = http::post_json(self.authenticate_url.clone(), &body).map_err(|e| {
            ProviderError::Config {
                provider: PROVIDER,
                message: format!("{AUTHENTICATE}: cannot encode the request: {e}"),
            }
        })?;
        let reply = client
            .execute(&self.authenticate_metrics, None, request)
            .await?;
        token_from_reply(reply, self.token_refresh_margin)
    }
}

/// The analysis in the answer to `GET /connect/v1/integration/analysis/{analysisId}` (after the
/// client's one retry on 401): a non-2xx answer is its [`ProviderError::Status`], a body that is
/// not the expected JSON object is [`ProviderError::InvalidResponse`].
pub fn analysis_from_reply(reply: Reply) -> Result<(Analysis, String), ProviderError> {
    if !reply.is_success() {
        return Err(reply.into_error());
    }
    reply.json_object()
}

/// The token in an answer to `POST /connect/v1/authenticate`, to be refreshed `refresh_margin`
/// before its `expirationDate`. 400/401/403 mean the credentials are wrong
/// ([`ProviderError::Auth`]).
pub fn token_from_reply(
    reply: Reply,
    refresh_margin: Duration,
) -> Result<BearerToken, ProviderError> {
    let reply = token_answer(
        reply,
        PROVIDER,
        &format!("{AUTHENTICATE} refused the credentials"),
    )?;
    let answer: AuthenticateResponse = reply.json()?;
    let expires_at = parse_provider_datetime(&answer.expiration_date).map_err(|e| {
        ProviderError::InvalidResponse {
            provider: PROVIDER,
            operation: AUTHENTICATE,
            message: format!("expirationDate: {e}"),
        }
    })?;
    let lifetime = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    BearerToken::new(
        PROVIDER,
        AUTHENTICATE,
        &answer.token,
        lifetime,
        refresh_margin,
    )
}
