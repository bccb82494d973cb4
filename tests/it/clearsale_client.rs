//! ClearSale client against a wiremock peer: token single flight, refresh on 401 and ahead of
//! expiry, error mapping, and redaction.

use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::Duration;
use webhook_enricher::provider::clearsale::ClearSaleClient;
use webhook_enricher::provider::settings::ClearSaleSettings;
use webhook_enricher::provider::{classify, FailureClass, NotFoundGrace, ProviderError};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const AUTH_PATH: &str = "/connect/v1/authenticate";
const PASSWORD: &str = "s3cr3t-Pa55word";

fn settings(base_url: &str) -> ClearSaleSettings {
    ClearSaleSettings {
        base_url: base_url.to_owned(),
        user: "api-user".into(),
        password: PASSWORD.into(),
        ..ClearSaleSettings::default()
    }
}

fn client(server: &MockServer) -> ClearSaleClient {
    // A trailing slash on the base URL is tolerated.
    ClearSaleClient::new(&settings(&format!("{}/", server.uri()))).unwrap()
}

fn analysis_path(id: uuid::Uuid) -> String {
    format!("/connect/v1/integration/analysis/{id}")
}

/// A .NET-style expiration date (7 fractional digits, no offset).
fn dotnet_date(at: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}",
        at.format("%Y-%m-%dT%H:%M:%S"),
        at.timestamp_subsec_nanos() / 100
    )
}

fn token_answer(token: &str, expires_in: chrono::Duration) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "token": token,
        "expirationDate": dotnet_date(Utc::now() + expires_in),
    }))
}

fn day() -> chrono::Duration {
    chrono::Duration::hours(24)
}

/// Mounts an authenticate mock answering `token` at most `times` times, expected `times` times.
async fn mount_auth(server: &MockServer, token: &str, expires_in: chrono::Duration, times: u64) {
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .and(body_json(json!({"user": "api-user", "password": PASSWORD})))
        .respond_with(token_answer(token, expires_in))
        .up_to_n_times(times)
        .expect(times)
        .mount(server)
        .await;
}

fn analysis_body(id: uuid::Uuid) -> serde_json::Value {
    json!({
        "analysisId": id.to_string(),
        "transactionId": "tx-1",
        "mfa": {"status": "approved"},
        "newModule": {"kept": true}
    })
}

/// Mounts the analysis read for `id`, answering 200 only to `Bearer <token>`.
async fn mount_analysis(server: &MockServer, id: uuid::Uuid, token: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path(analysis_path(id)))
        .and(header("Authorization", format!("Bearer {token}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(analysis_body(id)))
        .expect(times)
        .mount(server)
        .await;
}

async fn mount_unauthorized(server: &MockServer, id: uuid::Uuid, token: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path(analysis_path(id)))
        .and(header("Authorization", format!("Bearer {token}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "title": "Unauthorized", "status": 401, "detail": "token expired"
        })))
        .expect(times)
        .mount(server)
        .await;
}

/// Answers every analysis read for `id` with `response` (after a valid token).
async fn mount_answer(server: &MockServer, id: uuid::Uuid, response: ResponseTemplate) {
    mount_auth(server, "t1", day(), 1).await;
    Mock::given(method("GET"))
        .and(path(analysis_path(id)))
        .and(header("Authorization", "Bearer t1"))
        .respond_with(response)
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn returns_the_typed_analysis_and_the_whole_body() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "t1", day(), 1).await;
    mount_analysis(&server, id, "t1", 1).await;
    let (analysis, raw) = client(&server).get_analysis(id).await.unwrap();
    assert_eq!(analysis.transaction_id.as_deref(), Some("tx-1"));
    assert_eq!(analysis.module_status("mfa"), Some("approved"));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw,
        analysis_body(id),
        "the whole body, unknown fields kept"
    );
}

#[tokio::test]
async fn concurrent_calls_without_a_token_authenticate_once() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        // Slow enough that every caller is waiting for the token while it is requested.
        .respond_with(token_answer("t1", day()).set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&server)
        .await;
    mount_analysis(&server, id, "t1", 16).await;
    let client = client(&server);
    let results = futures::future::join_all((0..16).map(|_| client.get_analysis(id))).await;
    for result in results {
        result.unwrap();
    }
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_retries_once() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "old", day(), 1).await;
    mount_auth(&server, "new", day(), 1).await;
    mount_unauthorized(&server, id, "old", 1).await;
    mount_analysis(&server, id, "new", 1).await;
    let (analysis, _) = client(&server).get_analysis(id).await.unwrap();
    assert_eq!(analysis.transaction_id.as_deref(), Some("tx-1"));
}

#[tokio::test]
async fn concurrent_401s_for_the_same_token_refresh_once() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "old", day(), 1).await;
    mount_auth(&server, "new", day(), 1).await;
    mount_unauthorized(&server, id, "old", 16).await;
    mount_analysis(&server, id, "new", 16).await;
    let client = client(&server);
    let results = futures::future::join_all((0..16).map(|_| client.get_analysis(id))).await;
    for result in results {
        result.unwrap();
    }
}

#[tokio::test]
async fn a_second_401_is_a_systemic_auth_failure() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "old", day(), 1).await;
    mount_auth(&server, "new", day(), 1).await;
    mount_unauthorized(&server, id, "old", 1).await;
    mount_unauthorized(&server, id, "new", 1).await;
    let err = client(&server).get_analysis(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Auth {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(classify(&err, NotFoundGrace::Open), FailureClass::Systemic);
}

#[tokio::test]
async fn a_token_within_the_refresh_margin_is_refreshed_on_the_next_call() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    // The default margin is 5 minutes; this token expires in 1.
    mount_auth(&server, "short", chrono::Duration::minutes(1), 1).await;
    mount_auth(&server, "long", day(), 1).await;
    mount_analysis(&server, id, "short", 1).await;
    mount_analysis(&server, id, "long", 2).await;
    let client = client(&server);
    for _ in 0..3 {
        client.get_analysis(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_valid_token_is_reused_across_calls() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "t1", day(), 1).await;
    mount_analysis(&server, id, "t1", 3).await;
    let client = client(&server);
    for _ in 0..3 {
        client.get_analysis(id).await.unwrap();
    }
}

#[tokio::test]
async fn rejected_credentials_are_a_systemic_auth_failure() {
    for status in [400, 401, 403] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(AUTH_PATH))
            .respond_with(
                ResponseTemplate::new(status).set_body_json("User or Password not authorized"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server)
            .get_analysis(uuid::Uuid::new_v4())
            .await
            .unwrap_err();
        match &err {
            ProviderError::Auth {
                status: Some(s),
                message,
                ..
            } => {
                assert_eq!(*s, status);
                assert!(message.contains("User or Password not authorized"));
                assert!(!message.contains(PASSWORD));
            }
            other => panic!("{status}: {other:?}"),
        }
        assert_eq!(classify(&err, NotFoundGrace::Open), FailureClass::Systemic);
    }
}

#[tokio::test]
async fn an_authenticate_outage_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(AUTH_PATH))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .get_analysis(uuid::Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Status {
                status: 503,
                operation: "authenticate",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        classify(&err, NotFoundGrace::Open),
        FailureClass::Transient { .. }
    ));
}

#[tokio::test]
async fn a_429_carries_the_parsed_retry_after() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(429).insert_header("Retry-After", "7"),
    )
    .await;
    let err = client(&server).get_analysis(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Status {
                status: 429,
                retry_after: Some(d),
                ..
            } if d == Duration::from_secs(7)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_5xx_is_a_status_error_with_the_problem_detail() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(503).set_body_json(json!({
            "title": "Service Unavailable", "status": 503, "detail": "maintenance"
        })),
    )
    .await;
    let err = client(&server).get_analysis(id).await.unwrap_err();
    match err {
        ProviderError::Status {
            status: 503,
            retry_after: None,
            detail,
            operation: "get_analysis",
            ..
        } => assert_eq!(detail, "Service Unavailable: maintenance"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_404_is_a_status_error() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    let detail = format!("Analysis '{id}' Not Found.");
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(404).set_body_json(json!({
            "type": "https://tools.ietf.org/html/rfc7231#section-6.5.4",
            "title": "Not Found", "status": 404, "detail": detail, "traceId": "00-abc"
        })),
    )
    .await;
    let err = client(&server).get_analysis(id).await.unwrap_err();
    match err {
        ProviderError::Status {
            status: 404,
            detail: got,
            ..
        } => assert_eq!(got, format!("Not Found: {detail}")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unparseable_200_is_an_invalid_response() {
    for body in ["<html>oops</html>", "[1, 2]", r#"{"mfa": 42}"#] {
        let server = MockServer::start().await;
        let id = uuid::Uuid::new_v4();
        mount_answer(
            &server,
            id,
            ResponseTemplate::new(200).set_body_string(body),
        )
        .await;
        let err = client(&server).get_analysis(id).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidResponse { .. }),
            "{body}: {err:?}"
        );
        assert_eq!(classify(&err, NotFoundGrace::Open), FailureClass::Permanent);
    }
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(200)
            .set_body_json(analysis_body(id))
            .set_delay(Duration::from_secs(5)),
    )
    .await;
    let mut settings = settings(&server.uri());
    settings.http.request_timeout = Duration::from_millis(300);
    let err = ClearSaleClient::new(&settings)
        .unwrap()
        .get_analysis(id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Timeout {
                operation: "get_analysis",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A provider answer is buffered whole only up to a bound: a huge body is an invalid answer
/// (a dead letter), never an unbounded allocation.
#[tokio::test]
async fn an_answer_over_the_body_limit_is_an_invalid_response() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    let huge = vec![b' '; webhook_enricher::provider::http::MAX_BODY_BYTES + 1];
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(200).set_body_raw(huge, "application/json"),
    )
    .await;
    let err = client(&server).get_analysis(id).await.unwrap_err();
    match &err {
        ProviderError::InvalidResponse { message, .. } => {
            assert!(message.contains("larger than"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(classify(&err, NotFoundGrace::Open), FailureClass::Permanent);
}

/// Requests carry the service's user agent and `Accept: application/json`.
#[tokio::test]
async fn requests_carry_the_service_user_agent_and_accept_json() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "t1", day(), 1).await;
    Mock::given(method("GET"))
        .and(path(analysis_path(id)))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(analysis_body(id)))
        .expect(1)
        .mount(&server)
        .await;
    client(&server).get_analysis(id).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    let get = requests
        .iter()
        .find(|r| r.method == wiremock::http::Method::GET)
        .unwrap();
    let agent = get.headers.get("user-agent").unwrap().to_str().unwrap();
    assert!(agent.starts_with("webhook-enricher/"), "{agent}");
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = ClearSaleClient::new(&settings(&format!("http://127.0.0.1:{port}"))).unwrap();
    let err = client.get_analysis(uuid::Uuid::new_v4()).await.unwrap_err();
    match &err {
        ProviderError::Connect { operation, .. } => assert_eq!(*operation, "authenticate"),
        other => panic!("{other:?}"),
    }
    assert!(!err.to_string().contains(PASSWORD));
}

#[test]
fn an_invalid_base_url_is_a_configuration_error() {
    let err = ClearSaleClient::new(&settings("apix.clearsale.com.br")).unwrap_err();
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn debug_output_never_shows_the_password_or_the_token() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_auth(&server, "eyJ-bearer-token", day(), 1).await;
    mount_analysis(&server, id, "eyJ-bearer-token", 1).await;
    let settings = settings(&server.uri());
    let client = ClearSaleClient::new(&settings).unwrap();
    client.get_analysis(id).await.unwrap();
    for text in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{client:?}"),
        format!("{client:#?}"),
    ] {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!text.contains("eyJ-bearer-token"), "{text}");
    }
}
