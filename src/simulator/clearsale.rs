//! ClearSale Connect: `POST /connect/v1/authenticate` and
//! `GET /connect/v1/integration/analysis/{analysisId}`, answering with the documented bodies and
//! RFC 7807 problems.

use super::calls::Operation;
use super::results::{clearsale_analysis, dotnet_datetime};
use super::state::State;
use super::{bearer_token, fault_answer, FaultAnswer};
use crate::provider::Provider;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The authenticate request body.
#[derive(Deserialize)]
pub(crate) struct Credentials {
    user: String,
    password: String,
}

/// `POST /connect/v1/authenticate`.
pub(crate) async fn authenticate(
    AxumState(state): AxumState<Arc<State>>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    let call = state.call(Operation::Authenticate, None);
    let response = if state.in_outage(Provider::ClearSale) {
        maintenance()
    } else {
        match body {
            Err(_) => problem(
                StatusCode::BAD_REQUEST,
                "Fail to Validate Request.",
                "The body must be a JSON object with 'user' and 'password'.",
            ),
            Ok(Json(credentials)) => {
                let expected = &state.config.clearsale;
                if credentials.user == expected.user
                    && credentials.password == expected.password.expose()
                {
                    let ttl = expected.token_ttl;
                    let token = state.issue_token(Provider::ClearSale, ttl);
                    // The TTL is validated to at most a year, so this cannot overflow.
                    let expires = chrono::Utc::now()
                        + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero());
                    Json(json!({ "token": token, "expirationDate": dotnet_datetime(&expires) }))
                        .into_response()
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        Json(json!("User or Password not authorized")),
                    )
                        .into_response()
                }
            }
        }
    };
    call.finish(response)
}

/// `GET /connect/v1/integration/analysis/{analysisId}`.
pub(crate) async fn get_analysis(
    AxumState(state): AxumState<Arc<State>>,
    Path(analysis_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let call = state.call(Operation::GetAnalysis, Some(&analysis_id));
    let response = analysis(&state, &analysis_id, &headers).await;
    call.finish(response)
}

async fn analysis(state: &State, analysis_id: &str, headers: &HeaderMap) -> Response {
    if state.in_outage(Provider::ClearSale) {
        return maintenance();
    }
    state.result_latency().await;
    let authorized =
        bearer_token(headers).is_some_and(|t| state.token_is_valid(Provider::ClearSale, t));
    if !authorized {
        return problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "The bearer token is missing, invalid or expired.",
        );
    }
    let Ok(id) = Uuid::try_parse(analysis_id) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Fail to Validate Request.",
            "Invalid analysisId format. AnalysisId must be a valid Guid.",
        );
    };
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            "Id not found",
            &format!("Analysis '{analysis_id}' Not Found."),
        )
    };
    if state.config.faults.not_found_ids.contains(&id) {
        return not_found();
    }
    match fault_answer(state) {
        Some(FaultAnswer::InternalError) => return internal_error(),
        Some(FaultAnswer::Unavailable) => return maintenance(),
        None => {}
    }
    let faults = &state.config.faults;
    let fetch = state.count_fetch(Provider::ClearSale, id);
    let visible_fetch = fetch.map(|n| n.saturating_sub(faults.not_visible_for));
    if visible_fetch == Some(0) {
        return not_found();
    }
    let pending = visible_fetch.is_some_and(|n| n <= faults.pending_fetches);
    Json(clearsale_analysis(state.config.seed, &id, pending)).into_response()
}

/// An RFC 7807 problem answer.
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    problem_body(
        status,
        json!({ "title": title, "status": status.as_u16(), "detail": detail }),
    )
}

fn problem_body(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn internal_error() -> Response {
    problem_body(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({
            "type": "https://tools.ietf.org/html/rfc7231#section-6.6.1",
            "title": "Internal server error",
            "status": 500,
            "detail": "The server encountered an unexpected condition that prevented it from fulfilling the request",
            "traceId": Uuid::new_v4().to_string(),
        }),
    )
}

fn maintenance() -> Response {
    problem_body(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "type": "https://tools.ietf.org/html/rfc7231#section-6.6.4",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "The service is temporarily unavailable or under maintenance.",
        }),
    )
}
