//! Unico IDUnico: the JWT-bearer grant at `POST /oauth2/token` (the assertion is checked against
//! the documented contract) and `GET /processes/v1/{id}` (bearer token **and** `APIKEY`).

use super::calls::Operation;
use super::results::unico_process;
use super::state::State;
use super::{bearer_token, fault_answer, FaultAnswer};
use crate::provider::Provider;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The only grant type the token endpoint accepts.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The longest assertion lifetime (`exp - iat`) accepted, in seconds.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// The claims an assertion must carry, no more and no fewer.
const REQUIRED_CLAIMS: [&str; 5] = ["aud", "exp", "iat", "iss", "scope"];
/// Tolerated clock skew for `iat` in the future and `exp` in the past, in seconds.
const CLOCK_SKEW_SECS: i64 = 60;

/// The token request form.
#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: Option<String>,
    assertion: Option<String>,
}

/// An OAuth 2.0 error answer (RFC 6749 section 5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrantError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl GrantError {
    fn invalid_grant(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_grant",
            description: description.into(),
        }
    }

    fn invalid_client(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.into(),
        }
    }
}

impl IntoResponse for GrantError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response()
    }
}

/// `POST /oauth2/token`.
pub(crate) async fn token(
    AxumState(state): AxumState<Arc<State>>,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Response {
    let call = state.call(Operation::Token, None);
    let response = if state.in_outage(Provider::Unico) {
        GrantError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "The service is under maintenance.".into(),
        }
        .into_response()
    } else {
        match grant(&state, form) {
            Ok(()) => {
                let ttl = state.config.unico.token_ttl;
                let access_token = state.issue_token(Provider::Unico, ttl);
                let mut response = Json(json!({
                    "access_token": access_token,
                    "expires_in": ttl.as_secs(),
                    "token_type": "Bearer",
                }))
                .into_response();
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(error) => error.into_response(),
        }
    };
    call.finish(response)
}

fn grant(state: &State, form: Result<Form<TokenRequest>, FormRejection>) -> Result<(), GrantError> {
    let invalid_request = |description: &str| GrantError {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        description: description.into(),
    };
    let Ok(Form(request)) = form else {
        return Err(invalid_request(
            "The body must be application/x-www-form-urlencoded.",
        ));
    };
    let Some(grant_type) = request.grant_type else {
        return Err(invalid_request("grant_type is required."));
    };
    if grant_type != JWT_BEARER_GRANT {
        return Err(GrantError {
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            description: format!("Only {JWT_BEARER_GRANT} is supported."),
        });
    }
    let Some(assertion) = request.assertion else {
        return Err(invalid_request("assertion is required."));
    };
    verify_assertion(state, &assertion, chrono::Utc::now().timestamp())
}

/// Checks an assertion against the contract: RS256, exactly `{iss, aud, scope, iat, exp}`, the
/// configured issuer and audience, `scope == "*"`, `exp - iat <= 3600`, not expired, and the
/// signature when a public key is configured. `now` is the Unix time in seconds.
pub(crate) fn verify_assertion(state: &State, assertion: &str, now: i64) -> Result<(), GrantError> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| GrantError::invalid_grant("The assertion is not a JWT."))?;
    if header.alg != Algorithm::RS256 {
        return Err(GrantError::invalid_grant(
            "The assertion must be signed with RS256.",
        ));
    }
    let claims: Map<String, Value> = match &state.unico_key {
        Some(key) => {
            let mut validation = Validation::new(Algorithm::RS256);
            // Every claim is checked below, with the contract's own rules.
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.required_spec_claims = HashSet::new();
            jsonwebtoken::decode(assertion, key, &validation)
                .map(|data| data.claims)
                .map_err(|error| match error.kind() {
                    ErrorKind::InvalidSignature => GrantError::invalid_client(
                        "The assertion signature does not verify with the service account key.",
                    ),
                    _ => GrantError::invalid_grant("The assertion cannot be decoded."),
                })?
        }
        None => jsonwebtoken::dangerous::insecure_decode_claims(assertion)
            .map_err(|_| GrantError::invalid_grant("The assertion cannot be decoded."))?,
    };
    check_claims(state, &claims, now)
}

fn check_claims(state: &State, claims: &Map<String, Value>, now: i64) -> Result<(), GrantError> {
    let mut extra: Vec<&str> = claims
        .keys()
        .map(String::as_str)
        .filter(|k| !REQUIRED_CLAIMS.contains(k))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(GrantError::invalid_grant(format!(
            "Unexpected claims: {}.",
            extra.join(", ")
        )));
    }
    let missing: Vec<&str> = REQUIRED_CLAIMS
        .into_iter()
        .filter(|k| !claims.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(GrantError::invalid_grant(format!(
            "Missing claims: {}.",
            missing.join(", ")
        )));
    }
    let unico = &state.config.unico;
    let issuer = format!("{}@{}.iam.acesso.io", unico.account, unico.tenant);
    if claims["iss"].as_str() != Some(issuer.as_str()) {
        return Err(GrantError::invalid_client(
            "The issuer is not a known service account.",
        ));
    }
    let audience_matches = claims["aud"]
        .as_str()
        .is_some_and(|aud| aud.trim_end_matches('/') == state.audience);
    if !audience_matches {
        return Err(GrantError::invalid_grant(
            "The audience is not this issuer.",
        ));
    }
    if claims["scope"].as_str() != Some("*") {
        return Err(GrantError::invalid_grant("The scope must be \"*\"."));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(GrantError::invalid_grant(
            "iat and exp must be integer timestamps.",
        ));
    };
    if exp <= iat || exp - iat > MAX_ASSERTION_LIFETIME_SECS {
        return Err(GrantError::invalid_grant(format!(
            "exp must be after iat and at most {MAX_ASSERTION_LIFETIME_SECS} s later."
        )));
    }
    if iat > now + CLOCK_SKEW_SECS {
        return Err(GrantError::invalid_grant(
            "The assertion is issued in the future.",
        ));
    }
    if exp + CLOCK_SKEW_SECS <= now {
        return Err(GrantError::invalid_grant("The assertion has expired."));
    }
    Ok(())
}

/// `GET /processes/v1/{id}`.
pub(crate) async fn get_process(
    AxumState(state): AxumState<Arc<State>>,
    Path(process_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let call = state.call(Operation::GetProcess, Some(&process_id));
    let response = process(&state, &process_id, &headers).await;
    call.finish(response)
}

async fn process(state: &State, process_id: &str, headers: &HeaderMap) -> Response {
    if state.in_outage(Provider::Unico) {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "50301",
            "Service unavailable.",
        );
    }
    if let Some(wait) = state.unico_rate_limited() {
        let mut response = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "42901",
            "Rate limit exceeded.",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after_seconds(wait));
        return response;
    }
    state.result_latency().await;
    let token_ok = bearer_token(headers).is_some_and(|t| state.token_is_valid(Provider::Unico, t));
    if !token_ok {
        return api_error(
            StatusCode::FORBIDDEN,
            "40301",
            "The access token is missing, invalid or expired.",
        );
    }
    let key_ok = headers
        .get("apikey")
        .is_some_and(|key| key.as_bytes() == state.config.unico.api_key.expose().as_bytes());
    if !key_ok {
        return api_error(
            StatusCode::FORBIDDEN,
            "40302",
            "The APIKEY header is missing or invalid.",
        );
    }
    let Ok(id) = Uuid::try_parse(process_id) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "40001",
            "The process id must be a valid GUID.",
        );
    };
    let faults = &state.config.faults;
    let not_found = || api_error(StatusCode::NOT_FOUND, "40401", "Process not found.");
    if faults.not_found_ids.contains(&id) {
        return not_found();
    }
    if faults.gone_ids.contains(&id) {
        return api_error(StatusCode::GONE, "41001", "The process ended in error.");
    }
    match fault_answer(state) {
        Some(FaultAnswer::InternalError) => {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "50001",
                "Internal error.",
            )
        }
        Some(FaultAnswer::Unavailable) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "50301",
                "Service unavailable.",
            )
        }
        None => {}
    }
    let fetch = state.count_fetch(Provider::Unico, id);
    if fetch.is_some_and(|n| n <= faults.not_visible_for) {
        return not_found();
    }
    Json(unico_process(state.config.seed, &id)).into_response()
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_seconds(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// The IDUnico error body: `{"Error": {"code", "description"}}`. The codes are the simulator's
/// own (the provider documents the shape, not a code list).
fn api_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "Error": { "code": code, "description": description } })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::config::SimulatorConfig;

    fn state() -> State {
        State::new(SimulatorConfig::default(), "http://sim".into(), None)
    }

    fn claims(now: i64) -> Map<String, Value> {
        json!({
            "iss": "demo-account@demo-tenant.iam.acesso.io",
            "aud": "http://sim/",
            "scope": "*",
            "iat": now,
            "exp": now + 3600,
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    /// Checks the valid claims with `edits` applied (a `null` value removes the claim).
    fn check(edits: &[(&str, Value)]) -> Result<(), GrantError> {
        let now = 1_700_000_000;
        let mut c = claims(now);
        for (key, value) in edits {
            if value.is_null() {
                c.remove(*key);
            } else {
                c.insert((*key).to_owned(), value.clone());
            }
        }
        check_claims(&state(), &c, now)
    }

    #[test]
    fn valid_claims_pass_with_trailing_slash_on_aud() {
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn every_contract_rule_is_enforced() {
        let cases = [
            ("extra claim", vec![("sub", json!("x"))]),
            ("missing claim", vec![("scope", Value::Null)]),
            (
                "iss",
                vec![("iss", json!("other@demo-tenant.iam.acesso.io"))],
            ),
            ("aud", vec![("aud", json!("https://identity.acesso.io"))]),
            ("scope", vec![("scope", json!("read"))]),
            ("lifetime", vec![("exp", json!(1_700_003_601))]),
            ("exp before iat", vec![("exp", json!(1_699_999_999))]),
            (
                "expired",
                vec![("iat", json!(1_699_990_000)), ("exp", json!(1_699_990_100))],
            ),
            (
                "issued in the future",
                vec![("iat", json!(1_700_001_000)), ("exp", json!(1_700_002_000))],
            ),
            ("non-integer iat", vec![("iat", json!("now"))]),
        ];
        for (name, edits) in cases {
            assert!(check(&edits).is_err(), "{name} must be rejected");
        }
    }

    #[test]
    fn non_rs256_and_garbage_are_rejected() {
        let s = state();
        assert!(verify_assertion(&s, "not-a-jwt", 0).is_err());
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(1_700_000_000),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let error = verify_assertion(&s, &hs256, 1_700_000_000).unwrap_err();
        assert!(error.description.contains("RS256"), "{error:?}");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), "2");
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), "3");
    }
}
