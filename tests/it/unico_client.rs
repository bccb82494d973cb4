//! Unico client against a wiremock peer: the JWT-bearer assertion, token single flight, refresh
//! on 401/403 and ahead of expiry, both auth headers, 410 Gone, error mapping, and redaction.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;
use webhook_enricher::provider::settings::UnicoSettings;
use webhook_enricher::provider::unico::{ProcessAnswer, UnicoClient};
use webhook_enricher::provider::{classify, FailureClass, NotFoundGrace, ProviderError};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN_PATH: &str = "/oauth2/token";
const API_KEY: &str = "api-key-0123456789";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// RSA key generation is slow in debug builds: one key per test binary.
fn key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
}

fn private_pem() -> String {
    key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

fn public_pem() -> String {
    key()
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

/// API and issuer on the same mock server; the audience is the issuer URL.
fn settings(server: &MockServer) -> UnicoSettings {
    UnicoSettings {
        base_url: format!("{}/", server.uri()),
        issuer_url: server.uri(),
        account: "svc-enricher".into(),
        tenant: "tenant-42".into(),
        private_key_pem: private_pem().into(),
        api_key: API_KEY.into(),
        ..UnicoSettings::default()
    }
}

fn client(server: &MockServer) -> UnicoClient {
    UnicoClient::new(&settings(server)).unwrap()
}

fn process_path(id: uuid::Uuid) -> String {
    format!("/processes/v1/{id}")
}

fn token_answer(token: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": token, "expires_in": expires_in, "token_type": "Bearer"
    }))
}

/// Mounts a token mock answering `token` at most `times` times, expected `times` times.
async fn mount_token(server: &MockServer, token: &str, expires_in: u64, times: u64) {
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(header("Content-Type", "application/x-www-form-urlencoded"))
        .respond_with(token_answer(token, expires_in))
        .up_to_n_times(times)
        .expect(times)
        .mount(server)
        .await;
}

fn process_body(id: uuid::Uuid) -> serde_json::Value {
    json!({
        "id": id.to_string(), "status": 3,
        "unicoId": {"result": "yes"}, "identityFraudsters": {"result": "inconclusive"},
        "government": {"serpro": 87}, "liveness": 1, "future": {"kept": true}
    })
}

/// Mounts the process read for `id`, answering `response` only with both auth headers.
async fn mount_process(
    server: &MockServer,
    id: uuid::Uuid,
    token: &str,
    response: ResponseTemplate,
    times: u64,
) {
    Mock::given(method("GET"))
        .and(path(process_path(id)))
        .and(header("Authorization", format!("Bearer {token}").as_str()))
        .and(header("APIKEY", API_KEY))
        .respond_with(response)
        .expect(times)
        .mount(server)
        .await;
}

fn found(id: uuid::Uuid) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(process_body(id))
}

fn refused(status: u16) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "Error": {"code": "40300", "description": "invalid token"}
    }))
}

/// Answers the process read for `id` with `response` (after a valid token).
async fn mount_answer(server: &MockServer, id: uuid::Uuid, response: ResponseTemplate) {
    mount_token(server, "at1", 3600, 1).await;
    mount_process(server, id, "at1", response, 1).await;
}

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let query = std::str::from_utf8(body).unwrap();
    reqwest::Url::parse(&format!("http://form.test/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn found_carries_the_typed_process_and_the_whole_body() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(&server, id, found(id)).await;
    match client(&server).get_process(id).await.unwrap() {
        ProcessAnswer::Found { process, raw } => {
            assert_eq!(process.status, Some(3));
            assert_eq!(process.liveness, Some(1));
            let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(raw, process_body(id), "the whole body, unknown fields kept");
        }
        ProcessAnswer::Gone => panic!("expected Found"),
    }
}

#[tokio::test]
async fn the_token_request_is_a_signed_jwt_bearer_assertion() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(&server, id, found(id)).await;
    client(&server).get_process(id).await.unwrap();

    let requests = server.received_requests().await.unwrap();
    let token_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.url.path() == TOKEN_PATH)
        .collect();
    assert_eq!(token_requests.len(), 1);
    let fields = form_fields(&token_requests[0].body);
    let names: BTreeSet<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["assertion", "grant_type"]));
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(field("grant_type"), GRANT);

    let jwt = field("assertion");
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[server.uri()]);
    validation.set_issuer(&["svc-enricher@tenant-42.iam.acesso.io"]);
    let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        &jwt,
        &DecodingKey::from_rsa_pem(public_pem().as_bytes()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    let keys: BTreeSet<&str> = claims.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["aud", "exp", "iat", "iss", "scope"]));
    assert_eq!(claims["scope"], "*");
    assert_eq!(claims["aud"], server.uri());
    let iat = claims["iat"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp > iat && exp - iat <= 3600, "iat {iat} exp {exp}");
}

#[tokio::test]
async fn a_pkcs1_key_is_accepted_too() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(&server, id, found(id)).await;
    let mut settings = settings(&server);
    settings.private_key_pem = key()
        .to_pkcs1_pem(LineEnding::LF)
        .unwrap()
        .to_string()
        .into();
    UnicoClient::new(&settings)
        .unwrap()
        .get_process(id)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_calls_without_a_token_request_one() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        // Slow enough that every caller is waiting for the token while it is requested.
        .respond_with(token_answer("at1", 3600).set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&server)
        .await;
    mount_process(&server, id, "at1", found(id), 16).await;
    let mut settings = settings(&server);
    settings.limits.rate_per_second = 0;
    settings.limits.max_concurrent = 16;
    let client = UnicoClient::new(&settings).unwrap();
    let results = futures::future::join_all((0..16).map(|_| client.get_process(id))).await;
    for result in results {
        assert!(matches!(result.unwrap(), ProcessAnswer::Found { .. }));
    }
}

#[tokio::test]
async fn api_calls_carry_both_the_bearer_token_and_the_api_key() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_token(&server, "at1", 3600, 1).await;
    // Without both headers the read is refused.
    Mock::given(method("GET"))
        .and(path(process_path(id)))
        .respond_with(refused(403))
        .with_priority(10)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(process_path(id)))
        .and(header("Authorization", "Bearer at1"))
        .and(header("APIKEY", API_KEY))
        .respond_with(found(id))
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    assert!(matches!(
        client(&server).get_process(id).await.unwrap(),
        ProcessAnswer::Found { .. }
    ));
}

#[tokio::test]
async fn a_401_or_403_refreshes_the_token_and_retries_once() {
    for status in [401, 403] {
        let server = MockServer::start().await;
        let id = uuid::Uuid::new_v4();
        mount_token(&server, "old", 3600, 1).await;
        mount_token(&server, "new", 3600, 1).await;
        mount_process(&server, id, "old", refused(status), 1).await;
        mount_process(&server, id, "new", found(id), 1).await;
        let answer = client(&server).get_process(id).await;
        assert!(
            matches!(answer, Ok(ProcessAnswer::Found { .. })),
            "{status}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_refusals_of_the_same_token_refresh_once() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_token(&server, "old", 3600, 1).await;
    mount_token(&server, "new", 3600, 1).await;
    mount_process(&server, id, "old", refused(401), 16).await;
    mount_process(&server, id, "new", found(id), 16).await;
    let mut settings = settings(&server);
    settings.limits.rate_per_second = 0;
    settings.limits.max_concurrent = 16;
    let client = UnicoClient::new(&settings).unwrap();
    let results = futures::future::join_all((0..16).map(|_| client.get_process(id))).await;
    for result in results {
        assert!(matches!(result.unwrap(), ProcessAnswer::Found { .. }));
    }
}

#[tokio::test]
async fn a_refusal_after_the_refresh_is_a_systemic_auth_failure() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_token(&server, "old", 3600, 1).await;
    mount_token(&server, "new", 3600, 1).await;
    mount_process(&server, id, "old", refused(403), 1).await;
    mount_process(&server, id, "new", refused(403), 1).await;
    let err = client(&server).get_process(id).await.unwrap_err();
    match &err {
        ProviderError::Auth {
            status: Some(403),
            message,
            ..
        } => assert!(message.contains("40300: invalid token"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(classify(&err, NotFoundGrace::Open), FailureClass::Systemic);
}

#[tokio::test]
async fn a_token_within_the_refresh_margin_is_refreshed_on_the_next_call() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    // The default margin is 5 minutes; this token lives 1.
    mount_token(&server, "short", 60, 1).await;
    mount_token(&server, "long", 3600, 1).await;
    mount_process(&server, id, "short", found(id), 1).await;
    mount_process(&server, id, "long", found(id), 2).await;
    let client = client(&server);
    for _ in 0..3 {
        client.get_process(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_valid_token_is_reused_across_calls() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_token(&server, "at1", 3600, 1).await;
    mount_process(&server, id, "at1", found(id), 3).await;
    let client = client(&server);
    for _ in 0..3 {
        client.get_process(id).await.unwrap();
    }
}

#[tokio::test]
async fn gone_is_a_terminal_answer_not_an_error() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(410).set_body_json(json!({
            "Error": {"code": "41000", "description": "process in error"}
        })),
    )
    .await;
    assert_eq!(
        client(&server).get_process(id).await.unwrap(),
        ProcessAnswer::Gone
    );
}

#[tokio::test]
async fn a_refused_assertion_is_a_systemic_auth_failure() {
    for status in [400, 401, 403] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({
                "error": "invalid_grant", "error_description": "signature mismatch"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server)
            .get_process(uuid::Uuid::new_v4())
            .await
            .unwrap_err();
        match &err {
            ProviderError::Auth {
                status: Some(s),
                message,
                ..
            } => {
                assert_eq!(*s, status);
                assert!(message.contains("invalid_grant: signature mismatch"));
            }
            other => panic!("{status}: {other:?}"),
        }
        assert_eq!(classify(&err, NotFoundGrace::Open), FailureClass::Systemic);
    }
}

#[tokio::test]
async fn a_token_endpoint_outage_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(502))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .get_process(uuid::Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Status {
                status: 502,
                operation: "token",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_429_carries_the_parsed_retry_after() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(429).insert_header("Retry-After", "2"),
    )
    .await;
    let err = client(&server).get_process(id).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Status {
                status: 429,
                retry_after: Some(d),
                ..
            } if d == Duration::from_secs(2)
        ),
        "{err:?}"
    );
    assert_eq!(
        classify(&err, NotFoundGrace::Open),
        FailureClass::Transient {
            retry_after: Some(Duration::from_secs(2))
        }
    );
}

#[tokio::test]
async fn a_404_and_a_5xx_are_status_errors_with_unico_detail() {
    for status in [404, 500] {
        let server = MockServer::start().await;
        let id = uuid::Uuid::new_v4();
        mount_answer(
            &server,
            id,
            ResponseTemplate::new(status).set_body_json(json!({
                "Error": {"code": "40004", "description": "Process not found"}
            })),
        )
        .await;
        let err = client(&server).get_process(id).await.unwrap_err();
        match err {
            ProviderError::Status {
                status: got,
                detail,
                operation: "get_process",
                ..
            } => {
                assert_eq!(got, status);
                assert_eq!(detail, "40004: Process not found");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unparseable_200_is_an_invalid_response() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(
        &server,
        id,
        ResponseTemplate::new(200).set_body_string("not json"),
    )
    .await;
    let err = client(&server).get_process(id).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::InvalidResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unparseable_token_answer_is_an_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token_type": "Bearer"})))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .get_process(uuid::Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::InvalidResponse {
                operation: "token",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_answer(&server, id, found(id).set_delay(Duration::from_secs(5))).await;
    let mut settings = settings(&server);
    settings.http.request_timeout = Duration::from_millis(300);
    let err = UnicoClient::new(&settings)
        .unwrap()
        .get_process(id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Timeout {
                operation: "get_process",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = MockServer::start().await;
    let mut settings = settings(&server);
    settings.issuer_url = format!("http://127.0.0.1:{port}");
    let err = UnicoClient::new(&settings)
        .unwrap()
        .get_process(uuid::Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Connect {
                operation: "token",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_bad_private_key_is_a_configuration_error_without_key_material() {
    let pem = private_pem();
    let settings = UnicoSettings {
        account: "svc".into(),
        tenant: "t".into(),
        private_key_pem: pem.replacen("MII", "MIX", 1).into(),
        ..UnicoSettings::default()
    };
    let err = UnicoClient::new(&settings).unwrap_err();
    assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("MIX"),
        "{text}"
    );
}

#[tokio::test]
async fn debug_output_never_shows_the_keys_or_the_token() {
    let server = MockServer::start().await;
    let id = uuid::Uuid::new_v4();
    mount_token(&server, "access-token-xyz", 3600, 1).await;
    mount_process(&server, id, "access-token-xyz", found(id), 1).await;
    let settings = settings(&server);
    let client = UnicoClient::new(&settings).unwrap();
    client.get_process(id).await.unwrap();
    let key_line = private_pem().lines().nth(1).unwrap().to_owned();
    for text in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{client:?}"),
        format!("{client:#?}"),
    ] {
        assert!(!text.contains(API_KEY), "{text}");
        assert!(!text.contains(&key_line), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains("access-token-xyz"), "{text}");
    }
}
