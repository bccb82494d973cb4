//! The provider simulator, driven over HTTP with reqwest: auth, token expiry, the Unico assertion
//! contract, determinism, and every injected fault.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;
use uuid::Uuid;
use webhook_enricher::provider::Provider;
use webhook_enricher::secret::Secret;
use webhook_enricher::simulator::{
    self, Operation, OutageWindow, SimulatorConfig, SimulatorHandle,
};

const ACCOUNT: &str = "svc";
const TENANT: &str = "tenant-1";
const API_KEY: &str = "test-api-key";

struct Keys {
    private: Secret,
    public: String,
    other_private: Secret,
}

/// Two 2048-bit key pairs, generated once per test binary (slow in debug builds).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (private, public) = simulator::generate_rsa_keypair(2048).unwrap();
        let (other_private, _) = simulator::generate_rsa_keypair(2048).unwrap();
        Keys {
            private,
            public,
            other_private,
        }
    })
}

fn config() -> SimulatorConfig {
    let mut config = SimulatorConfig::default();
    config.clearsale.user = "cs-user".into();
    config.clearsale.password = Secret::new("cs-password");
    config.unico.account = ACCOUNT.into();
    config.unico.tenant = TENANT.into();
    config.unico.api_key = Secret::new(API_KEY);
    config
}

fn config_with_key() -> SimulatorConfig {
    let mut config = config();
    config.unico.public_key_pem = Some(keys().public.clone());
    config
}

async fn start(config: SimulatorConfig) -> SimulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    simulator::start(config, listener).await.unwrap()
}

fn guid() -> String {
    Uuid::new_v4().to_string()
}

async fn clearsale_token(client: &Client, sim: &SimulatorHandle) -> String {
    let response = client
        .post(format!("{}/connect/v1/authenticate", sim.base_url()))
        .json(&json!({ "user": "cs-user", "password": "cs-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn get_analysis(
    client: &Client,
    sim: &SimulatorHandle,
    token: &str,
    id: &str,
) -> (StatusCode, Value) {
    let response = client
        .get(format!(
            "{}/connect/v1/integration/analysis/{id}",
            sim.base_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Contract-conforming claims for a simulator at `sim`.
fn claims(sim: &SimulatorHandle) -> Value {
    json!({
        "iss": format!("{ACCOUNT}@{TENANT}.iam.acesso.io"),
        "aud": sim.base_url(),
        "scope": "*",
        "iat": now(),
        "exp": now() + 3600,
    })
}

fn sign(claims: &Value, private: &Secret) -> String {
    let key = EncodingKey::from_rsa_pem(private.expose().as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

async fn token_request(
    client: &Client,
    sim: &SimulatorHandle,
    assertion: &str,
) -> reqwest::Response {
    client
        .post(format!("{}/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", simulator::JWT_BEARER_GRANT),
            ("assertion", assertion),
        ])
        .send()
        .await
        .unwrap()
}

async fn unico_token(client: &Client, sim: &SimulatorHandle) -> String {
    let response = token_request(client, sim, &sign(&claims(sim), &keys().private)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn get_process(
    client: &Client,
    sim: &SimulatorHandle,
    token: &str,
    id: &str,
) -> reqwest::Response {
    client
        .get(format!("{}/processes/v1/{id}", sim.base_url()))
        .bearer_auth(token)
        .header("APIKEY", API_KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn clearsale_authentication_success_and_failures() {
    let sim = start(config()).await;
    let client = Client::new();
    let url = format!("{}/connect/v1/authenticate", sim.base_url());

    let ok: Value = client
        .post(&url)
        .json(&json!({ "user": "cs-user", "password": "cs-password" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!ok["token"].as_str().unwrap().is_empty());
    let expiration = ok["expirationDate"].as_str().unwrap();
    let fraction = expiration.rsplit('.').next().unwrap();
    assert_eq!(fraction.len(), 8, "7 digits and Z: {expiration}");
    assert!(fraction.ends_with('Z'));
    let expires = webhook_enricher::datetime::parse_provider_datetime(expiration).unwrap();
    assert!(expires > chrono::Utc::now() + chrono::Duration::hours(23));

    let wrong = client
        .post(&url)
        .json(&json!({ "user": "cs-user", "password": "nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body, json!("User or Password not authorized"));

    let malformed = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"user\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let problem: Value = malformed.json().await.unwrap();
    assert_eq!(problem["status"], 400);
    assert_eq!(sim.stats().clearsale.auth_calls, 3);
}

#[tokio::test]
async fn clearsale_result_needs_a_live_token() {
    let sim = start(config()).await;
    let client = Client::new();
    let id = guid();

    let (status, problem) = get_analysis(&client, &sim, "forged", &id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["status"], 401);
    let anonymous = client
        .get(format!(
            "{}/connect/v1/integration/analysis/{id}",
            sim.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let token = clearsale_token(&client, &sim).await;
    let (status, body) = get_analysis(&client, &sim, &token, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["analysisId"], json!(id));
    assert!(body["transactionId"].is_string());

    sim.expire_tokens();
    let (status, _) = get_analysis(&client, &sim, &token, &id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let fresh = clearsale_token(&client, &sim).await;
    let (status, _) = get_analysis(&client, &sim, &fresh, &id).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn clearsale_bad_guid_and_not_found_ids() {
    let missing = Uuid::new_v4();
    let mut config = config();
    config.faults.not_found_ids = vec![missing];
    let sim = start(config).await;
    let client = Client::new();
    let token = clearsale_token(&client, &sim).await;

    let (status, problem) = get_analysis(&client, &sim, &token, "not-a-guid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        problem,
        json!({
            "title": "Fail to Validate Request.",
            "status": 400,
            "detail": "Invalid analysisId format. AnalysisId must be a valid Guid.",
        })
    );

    for _ in 0..2 {
        let (status, problem) = get_analysis(&client, &sim, &token, &missing.to_string()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(problem["title"], "Id not found");
        assert_eq!(
            problem["detail"],
            json!(format!("Analysis '{missing}' Not Found."))
        );
    }
}

#[tokio::test]
async fn not_visible_ids_answer_404_then_200() {
    let mut config = config();
    config.faults.not_visible_for = 2;
    let sim = start(config).await;
    let client = Client::new();
    let token = clearsale_token(&client, &sim).await;
    let id = guid();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_analysis(&client, &sim, &token, &id).await.0);
    }
    assert_eq!(
        statuses,
        [StatusCode::NOT_FOUND, StatusCode::NOT_FOUND, StatusCode::OK]
    );

    let unico = unico_token(&client, &sim).await;
    let process = guid();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_process(&client, &sim, &unico, &process).await.status());
    }
    assert_eq!(
        statuses,
        [StatusCode::NOT_FOUND, StatusCode::NOT_FOUND, StatusCode::OK]
    );
}

#[tokio::test]
async fn async_modules_read_pending_then_final() {
    let mut config = config();
    config.faults.pending_fetches = 2;
    let sim = start(config).await;
    let client = Client::new();
    let token = clearsale_token(&client, &sim).await;
    // About 70% of ids carry mfa or biolink; try ids until one does.
    let mut checked = 0;
    for _ in 0..40 {
        let id = guid();
        let (_, first) = get_analysis(&client, &sim, &token, &id).await;
        let modules: Vec<&str> = ["mfa", "biolink"]
            .into_iter()
            .filter(|m| first.get(*m).is_some())
            .collect();
        if modules.is_empty() {
            continue;
        }
        let (_, second) = get_analysis(&client, &sim, &token, &id).await;
        let (_, third) = get_analysis(&client, &sim, &token, &id).await;
        for module in modules {
            assert_eq!(first[module]["status"], "pending", "{first}");
            assert_eq!(second[module]["status"], "pending", "{second}");
            assert_ne!(third[module]["status"], "pending", "{third}");
        }
        checked += 1;
        if checked == 3 {
            return;
        }
    }
    panic!("no id with an asynchronous module found");
}

#[tokio::test]
async fn unico_token_success() {
    let sim = start(config_with_key()).await;
    let client = Client::new();
    let response = token_request(&client, &sim, &sign(&claims(&sim), &keys().private)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(!body["access_token"].as_str().unwrap().is_empty());
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(sim.stats().unico.auth_calls, 1);
}

#[tokio::test]
async fn unico_assertions_breaking_the_contract_are_rejected() {
    let sim = start(config_with_key()).await;
    let client = Client::new();
    let base = claims(&sim);
    let with = |key: &str, value: Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let cases = [
        (
            "extra claim",
            sign(&with("sub", json!("x")), &keys().private),
        ),
        (
            "wrong aud",
            sign(
                &with("aud", json!("https://identity.acesso.io")),
                &keys().private,
            ),
        ),
        (
            "wrong iss",
            sign(
                &with("iss", json!("other@tenant-1.iam.acesso.io")),
                &keys().private,
            ),
        ),
        (
            "wrong scope",
            sign(&with("scope", json!("read")), &keys().private),
        ),
        (
            "exp - iat > 3600",
            sign(&with("exp", json!(now() + 3601)), &keys().private),
        ),
        ("wrong signature", sign(&base, &keys().other_private)),
        ("not a JWT", "abc.def".to_owned()),
    ];
    for (name, assertion) in cases {
        let response = token_request(&client, &sim, &assertion).await;
        let status = response.status();
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED,
            "{name}: {status}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{name}: {body}");
        assert!(body.get("access_token").is_none(), "{name}");
    }

    let wrong_grant = client
        .post(format!("{}/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("assertion", sign(&base, &keys().private).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_grant.status(), StatusCode::BAD_REQUEST);
    let body: Value = wrong_grant.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    // The same base claims are accepted: the failures above come from the edits.
    let ok = token_request(&client, &sim, &sign(&base, &keys().private)).await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn unico_without_public_key_checks_claims_only() {
    let sim = start(config()).await;
    let client = Client::new();
    let other_key = sign(&claims(&sim), &keys().other_private);
    assert_eq!(
        token_request(&client, &sim, &other_key).await.status(),
        StatusCode::OK
    );
    let mut extra = claims(&sim);
    extra["jti"] = json!("1");
    assert_eq!(
        token_request(&client, &sim, &sign(&extra, &keys().private))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn unico_process_needs_token_and_api_key() {
    let sim = start(config_with_key()).await;
    let client = Client::new();
    let token = unico_token(&client, &sim).await;
    let id = guid();
    let url = format!("{}/processes/v1/{id}", sim.base_url());

    let no_key = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(no_key.status(), StatusCode::FORBIDDEN);
    let body: Value = no_key.json().await.unwrap();
    assert!(body["Error"]["code"].is_string());
    assert!(body["Error"]["description"].is_string());

    let wrong_key = client
        .get(&url)
        .bearer_auth(&token)
        .header("APIKEY", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), StatusCode::FORBIDDEN);

    let no_token = client
        .get(&url)
        .header("APIKEY", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);

    let ok = get_process(&client, &sim, &token, &id).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["id"], json!(id));
    assert!([2, 3, 4].contains(&body["status"].as_i64().unwrap()));

    sim.expire_tokens();
    assert_eq!(
        get_process(&client, &sim, &token, &id).await.status(),
        StatusCode::FORBIDDEN
    );
    let fresh = unico_token(&client, &sim).await;
    assert_eq!(
        get_process(&client, &sim, &fresh, &id).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unico_bad_guid_not_found_and_gone() {
    let (missing, gone) = (Uuid::new_v4(), Uuid::new_v4());
    let mut config = config_with_key();
    config.faults.not_found_ids = vec![missing];
    config.faults.gone_ids = vec![gone];
    let sim = start(config).await;
    let client = Client::new();
    let token = unico_token(&client, &sim).await;
    for (id, expected) in [
        ("123".to_owned(), StatusCode::BAD_REQUEST),
        (missing.to_string(), StatusCode::NOT_FOUND),
        (gone.to_string(), StatusCode::GONE),
        (guid(), StatusCode::OK),
    ] {
        let response = get_process(&client, &sim, &token, &id).await;
        assert_eq!(response.status(), expected, "{id}");
    }
    assert_eq!(sim.stats().unico.result_statuses.get(&410), Some(&1));
}

#[tokio::test]
async fn results_are_deterministic_per_id_and_seed() {
    let mut seeded = config_with_key();
    seeded.seed = 1234;
    let (a, b) = (start(seeded.clone()).await, start(seeded).await);
    let client = Client::new();
    let (cs_a, cs_b) = (
        clearsale_token(&client, &a).await,
        clearsale_token(&client, &b).await,
    );
    let (un_a, un_b) = (
        unico_token(&client, &a).await,
        unico_token(&client, &b).await,
    );
    for _ in 0..5 {
        let id = guid();
        let first = get_analysis(&client, &a, &cs_a, &id).await.1;
        assert_eq!(first, get_analysis(&client, &a, &cs_a, &id).await.1);
        assert_eq!(first, get_analysis(&client, &b, &cs_b, &id).await.1);
        let process: Value = get_process(&client, &a, &un_a, &id)
            .await
            .json()
            .await
            .unwrap();
        let again: Value = get_process(&client, &a, &un_a, &id)
            .await
            .json()
            .await
            .unwrap();
        let other: Value = get_process(&client, &b, &un_b, &id)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(process, again);
        assert_eq!(process, other);
    }

    let mut reseeded = config();
    reseeded.seed = 99;
    let c = start(reseeded).await;
    let cs_c = clearsale_token(&client, &c).await;
    let mut differs = false;
    for _ in 0..5 {
        let id = guid();
        differs |= get_analysis(&client, &a, &cs_a, &id).await.1
            != get_analysis(&client, &c, &cs_c, &id).await.1;
    }
    assert!(differs, "another seed must give other bodies");
}

#[tokio::test]
async fn runtime_outage_answers_503_then_recovers() {
    let sim = start(config_with_key()).await;
    let client = Client::new();
    let cs = clearsale_token(&client, &sim).await;
    let un = unico_token(&client, &sim).await;
    let id = guid();

    sim.set_outage(Provider::ClearSale, true);
    let (status, problem) = get_analysis(&client, &sim, &cs, &id).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["status"], 503);
    let auth = client
        .post(format!("{}/connect/v1/authenticate", sim.base_url()))
        .json(&json!({ "user": "cs-user", "password": "cs-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The other provider is unaffected.
    assert_eq!(
        get_process(&client, &sim, &un, &id).await.status(),
        StatusCode::OK
    );
    sim.set_outage(Provider::ClearSale, false);
    assert_eq!(
        get_analysis(&client, &sim, &cs, &id).await.0,
        StatusCode::OK
    );

    sim.set_outage(Provider::Unico, true);
    assert_eq!(
        get_process(&client, &sim, &un, &id).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let token = token_request(&client, &sim, &sign(&claims(&sim), &keys().private)).await;
    assert_eq!(token.status(), StatusCode::SERVICE_UNAVAILABLE);
    sim.set_outage(Provider::Unico, false);
    assert_eq!(
        get_process(&client, &sim, &un, &id).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn configured_outage_windows_apply_from_start() {
    let mut config = config();
    config.faults.outages = vec![
        OutageWindow {
            provider: Provider::ClearSale,
            start: Duration::ZERO,
            duration: Duration::from_secs(3600),
        },
        OutageWindow {
            provider: Provider::Unico,
            start: Duration::from_secs(3600),
            duration: Duration::from_secs(60),
        },
    ];
    let sim = start(config).await;
    let client = Client::new();
    let auth = client
        .post(format!("{}/connect/v1/authenticate", sim.base_url()))
        .json(&json!({ "user": "cs-user", "password": "cs-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Unico's window has not begun.
    unico_token(&client, &sim).await;
}

#[tokio::test]
async fn injected_errors_answer_500_or_503() {
    let mut config = config();
    config.faults.error_rate = 1.0;
    let sim = start(config).await;
    let client = Client::new();
    let token = clearsale_token(&client, &sim).await;
    for _ in 0..6 {
        let (status, problem) = get_analysis(&client, &sim, &token, &guid()).await;
        assert!(
            status == StatusCode::INTERNAL_SERVER_ERROR
                || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        assert_eq!(problem["status"], status.as_u16());
    }
}

#[tokio::test]
async fn unico_rate_limit_answers_429_with_retry_after() {
    let mut config = config_with_key();
    config.unico.rate_limit_per_second = std::num::NonZeroU32::new(1);
    let sim = start(config).await;
    let client = Client::new();
    let token = unico_token(&client, &sim).await;
    let id = guid();
    let mut limited = None;
    for _ in 0..20 {
        let response = get_process(&client, &sim, &token, &id).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("a burst beyond 1/s must be limited");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert!(body["Error"]["code"].is_string());
}

#[tokio::test]
async fn call_log_records_every_request_in_order_with_counters() {
    let sim = start(config_with_key()).await;
    let client = Client::new();
    let id = guid();
    let cs = clearsale_token(&client, &sim).await;
    get_analysis(&client, &sim, &cs, &id).await;
    get_analysis(&client, &sim, &cs, "bad").await;
    let un = unico_token(&client, &sim).await;
    get_process(&client, &sim, &un, &id).await;

    let calls = sim.calls();
    let summary: Vec<(u64, Provider, Operation, Option<&str>, u16)> = calls
        .iter()
        .map(|c| {
            (
                c.seq,
                c.provider,
                c.operation,
                c.subject.as_deref(),
                c.status,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, Provider::ClearSale, Operation::Authenticate, None, 200),
            (
                2,
                Provider::ClearSale,
                Operation::GetAnalysis,
                Some(id.as_str()),
                200
            ),
            (
                3,
                Provider::ClearSale,
                Operation::GetAnalysis,
                Some("bad"),
                400
            ),
            (4, Provider::Unico, Operation::Token, None, 200),
            (
                5,
                Provider::Unico,
                Operation::GetProcess,
                Some(id.as_str()),
                200
            ),
        ]
    );
    for pair in calls.windows(2) {
        assert!(pair[0].started <= pair[0].finished);
        assert!(pair[0].finished <= pair[1].started);
    }

    let stats = sim.stats();
    assert_eq!(stats.total_calls, 5);
    assert_eq!(stats.clearsale.auth_calls, 1);
    assert_eq!(stats.clearsale.result_calls, 2);
    assert_eq!(stats.unico.auth_calls, 1);
    assert_eq!(stats.unico.result_calls, 1);

    let served: Value = client
        .get(format!("{}/_simulator/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, serde_json::to_value(&stats).unwrap());
    assert_eq!(served["clearsale"]["result_statuses"]["400"], 1);
    // Reading the stats is not a provider call.
    assert_eq!(sim.calls().len(), 5);
}

#[tokio::test]
async fn call_log_is_bounded_but_counters_are_not() {
    let mut config = config();
    config.call_log_capacity = 3;
    let sim = start(config).await;
    let client = Client::new();
    let token = clearsale_token(&client, &sim).await;
    for _ in 0..5 {
        get_analysis(&client, &sim, &token, &guid()).await;
    }
    let seqs: Vec<u64> = sim.calls().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [4, 5, 6]);
    assert_eq!(sim.stats().total_calls, 6);
    assert_eq!(sim.stats().clearsale.result_calls, 5);
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let sim = start(config()).await;
    let url = format!("{}/_simulator/stats", sim.base_url());
    let client = Client::new();
    assert!(client.get(&url).send().await.unwrap().status().is_success());
    sim.shutdown().await.unwrap();
    let after = Client::new().get(&url).send().await;
    assert!(after.is_err(), "the port must be closed after shutdown");
}
