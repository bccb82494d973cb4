//! The enricher's retry orchestration through the real clients against wiremock peers: which
//! failures are retried and how often, the 404 grace, the pending re-fetch, 410, and systemic
//! failures. Delays are configured in milliseconds; nothing asserts a duration.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use webhook_enricher::enrich::{Budget, EnrichOutcome, EnrichSettings, Enricher, NotFoundSettings};
use webhook_enricher::event::{Trigger, WebhookEvent};
use webhook_enricher::failure::ErrorClass;
use webhook_enricher::provider::clearsale::ClearSaleClient;
use webhook_enricher::provider::settings::{ClearSaleSettings, UnicoSettings};
use webhook_enricher::provider::unico::UnicoClient;
use webhook_enricher::provider::{Fetched, Provider};
use webhook_enricher::record::{normalize, State};
use webhook_enricher::retry::BackoffPolicy;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn fast_settings() -> EnrichSettings {
    EnrichSettings {
        retry: BackoffPolicy {
            initial: Duration::from_millis(5),
            multiplier: 2.0,
            max_delay: Duration::from_millis(50),
            max_elapsed: Duration::from_millis(600),
        },
        not_found: NotFoundSettings {
            attempts: 3,
            delay: Duration::from_millis(10),
        },
        pending: BackoffPolicy {
            initial: Duration::from_millis(5),
            multiplier: 2.0,
            max_delay: Duration::from_millis(20),
            max_elapsed: Duration::from_millis(150),
        },
        include_raw_response: true,
    }
}

async fn clearsale_enricher(server: &MockServer, settings: EnrichSettings) -> Enricher {
    Mock::given(method("POST"))
        .and(path("/connect/v1/authenticate"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token": "tok", "expirationDate": "2999-01-01T00:00:00.0000000Z"
        })))
        .mount(server)
        .await;
    let cs = ClearSaleSettings {
        base_url: server.uri(),
        user: "u".into(),
        password: "p".into(),
        ..Default::default()
    };
    Enricher::new(
        Some(Arc::new(ClearSaleClient::new(&cs).unwrap())),
        None,
        settings,
    )
}

fn unico_key() -> &'static webhook_enricher::secret::Secret {
    static KEY: std::sync::OnceLock<webhook_enricher::secret::Secret> = std::sync::OnceLock::new();
    KEY.get_or_init(|| crate::support::keypair().0.clone())
}

async fn unico_enricher(server: &MockServer, settings: EnrichSettings) -> Enricher {
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at", "expires_in": 3600, "token_type": "Bearer"
        })))
        .mount(server)
        .await;
    let us = UnicoSettings {
        base_url: server.uri(),
        issuer_url: server.uri(),
        account: "acct".into(),
        tenant: "ten".into(),
        api_key: "key".into(),
        private_key_pem: unico_key().clone(),
        ..Default::default()
    };
    Enricher::new(
        None,
        Some(Arc::new(UnicoClient::new(&us).unwrap())),
        settings,
    )
}

fn cs_event(kind: &str) -> WebhookEvent {
    let date = chrono::DateTime::parse_from_rfc3339("2025-09-26T17:21:11Z")
        .unwrap()
        .to_utc();
    WebhookEvent::new(
        Provider::ClearSale,
        Uuid::new_v4(),
        Trigger::ClearSale {
            module_type: kind.into(),
            date,
        },
    )
}

fn unico_event(status: u8) -> WebhookEvent {
    WebhookEvent::new(Provider::Unico, Uuid::new_v4(), Trigger::Unico { status })
}

fn analysis_path(e: &WebhookEvent) -> String {
    format!("/connect/v1/integration/analysis/{}", e.subject_id)
}

fn process_path(e: &WebhookEvent) -> String {
    format!("/processes/v1/{}", e.subject_id)
}

/// The first `times` GETs of `at` get `response`, and exactly that many must come; later calls
/// fall through to the next mock.
async fn answer_first(server: &MockServer, at: String, response: ResponseTemplate, times: u64) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(response)
        .up_to_n_times(times)
        .expect(times)
        .mount(server)
        .await;
}

/// Every GET of `at` gets `response`, and exactly `times` must come.
async fn answer_exactly(server: &MockServer, at: String, response: ResponseTemplate, times: u64) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(response)
        .expect(times)
        .mount(server)
        .await;
}

/// Every GET of `at` gets `response`, however many come.
async fn answer_always(server: &MockServer, at: String, response: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(response)
        .mount(server)
        .await;
}

fn ok_analysis(e: &WebhookEvent, mfa_status: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "analysisId": e.subject_id.to_string(), "transactionId": "tx", "mfa": {"status": mfa_status}
    }))
}

/// Settings under which only a `Retry-After` of 1 s lets the retry happen: the policy's own
/// delay is drawn from up to an hour, far past the 4 s budget. A client or enricher that
/// ignored the header would run out of budget (or, rarely, retry sooner than 1 s).
fn retry_after_only_settings() -> EnrichSettings {
    let mut settings = fast_settings();
    settings.retry.initial = Duration::from_secs(3600);
    settings.retry.max_delay = Duration::from_secs(3600);
    settings.retry.max_elapsed = Duration::from_secs(4);
    settings
}

#[tokio::test]
async fn retry_after_on_429_is_honoured_then_success() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, retry_after_only_settings()).await;
    let e = cs_event("mfa");
    answer_first(
        &server,
        analysis_path(&e),
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        1,
    )
    .await;
    answer_exactly(&server, analysis_path(&e), ok_analysis(&e, "approved"), 1).await;
    let started = std::time::Instant::now();
    let outcome = enricher.enrich(&e).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before the provider's Retry-After"
    );
    match outcome {
        EnrichOutcome::Fetched {
            attempts,
            fetched: Fetched::ClearSale { still_pending, .. },
        } => {
            assert_eq!(attempts, 2);
            assert!(!still_pending);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_errors_then_success() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_first(
        &server,
        analysis_path(&e),
        ResponseTemplate::new(503).set_body_json(json!({"title": "maintenance", "status": 503})),
        2,
    )
    .await;
    answer_exactly(&server, analysis_path(&e), ok_analysis(&e, "approved"), 1).await;
    assert!(matches!(
        enricher.enrich(&e).await,
        EnrichOutcome::Fetched { attempts: 3, .. }
    ));
}

#[tokio::test]
async fn not_found_gets_a_bounded_grace_then_is_permanent() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_exactly(
        &server,
        analysis_path(&e),
        ResponseTemplate::new(404).set_body_json(json!({"title": "Id not found", "status": 404})),
        3,
    )
    .await;
    match enricher.enrich(&e).await {
        EnrichOutcome::Failed(f) => {
            assert_eq!(f.class, ErrorClass::NotFound);
            assert_eq!(f.http_status, Some(404));
            assert_eq!(f.attempts, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn not_found_that_becomes_visible_within_the_grace_succeeds() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_first(&server, analysis_path(&e), ResponseTemplate::new(404), 2).await;
    answer_exactly(&server, analysis_path(&e), ok_analysis(&e, "approved"), 1).await;
    assert!(matches!(
        enricher.enrich(&e).await,
        EnrichOutcome::Fetched { attempts: 3, .. }
    ));
}

#[tokio::test]
async fn bad_request_is_permanent_at_once() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_exactly(
        &server,
        analysis_path(&e),
        ResponseTemplate::new(400)
            .set_body_json(json!({"title": "Fail to Validate Request.", "status": 400})),
        1,
    )
    .await;
    match enricher.enrich(&e).await {
        EnrichOutcome::Failed(f) => {
            assert_eq!(f.class, ErrorClass::ProviderRejected);
            assert_eq!(f.attempts, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unparseable_answer_is_permanent() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_exactly(
        &server,
        analysis_path(&e),
        ResponseTemplate::new(200).set_body_string("<html>"),
        1,
    )
    .await;
    assert!(
        matches!(enricher.enrich(&e).await, EnrichOutcome::Failed(f) if f.class == ErrorClass::InvalidResponse)
    );
}

#[tokio::test]
async fn a_provider_failing_consistently_is_systemic_not_a_dead_letter() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_always(&server, analysis_path(&e), ResponseTemplate::new(500)).await;
    match enricher.enrich(&e).await {
        EnrichOutcome::Systemic {
            provider,
            retries_exhausted,
            attempts,
            ..
        } => {
            assert_eq!(provider, Provider::ClearSale);
            assert!(retries_exhausted);
            assert!(attempts > 1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn broken_authentication_is_systemic() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/connect/v1/authenticate"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!("User or Password not authorized")),
        )
        .mount(&server)
        .await;
    let cs = ClearSaleSettings {
        base_url: server.uri(),
        user: "u".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let enricher = Enricher::new(
        Some(Arc::new(ClearSaleClient::new(&cs).unwrap())),
        None,
        fast_settings(),
    );
    assert!(matches!(
        enricher.enrich(&cs_event("mfa")).await,
        EnrichOutcome::Systemic {
            retries_exhausted: false,
            ..
        }
    ));
}

#[tokio::test]
async fn pending_module_is_refetched_until_final() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_first(&server, analysis_path(&e), ok_analysis(&e, "pending"), 2).await;
    answer_exactly(&server, analysis_path(&e), ok_analysis(&e, "approved"), 1).await;
    match enricher.enrich(&e).await {
        EnrichOutcome::Fetched { fetched, attempts } => {
            assert_eq!(attempts, 3);
            let record = normalize(&e, &fetched, None, false, chrono::Utc::now());
            assert_eq!(record.state, State::Completed);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pending_forever_is_published_as_pending_after_the_bound() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_always(&server, analysis_path(&e), ok_analysis(&e, "pending")).await;
    match enricher.enrich(&e).await {
        EnrichOutcome::Fetched { fetched, attempts } => {
            assert!(matches!(
                fetched,
                Fetched::ClearSale {
                    still_pending: true,
                    ..
                }
            ));
            assert!(attempts > 1);
            assert_eq!(
                normalize(&e, &fetched, None, false, chrono::Utc::now()).state,
                State::Pending
            );
        }
        other => panic!("{other:?}"),
    }
    // The module named by the webhook decides: a pending `mfa` does not hold a `biolink` event.
    let b = cs_event("biolink");
    answer_exactly(&server, analysis_path(&b), ok_analysis(&b, "pending"), 1).await;
    assert!(matches!(
        enricher.enrich(&b).await,
        EnrichOutcome::Fetched { attempts: 1, .. }
    ));
}

#[tokio::test]
async fn unico_gone_is_a_terminal_failed_result() {
    let server = MockServer::start().await;
    let enricher = unico_enricher(&server, fast_settings()).await;
    let e = unico_event(5);
    answer_exactly(
        &server,
        process_path(&e),
        ResponseTemplate::new(410)
            .set_body_json(json!({"Error": {"code": "41001", "description": "gone"}})),
        1,
    )
    .await;
    match enricher.enrich(&e).await {
        EnrichOutcome::Fetched {
            fetched,
            attempts: 1,
        } => {
            assert_eq!(fetched, Fetched::UnicoGone);
            assert_eq!(
                normalize(&e, &fetched, None, true, chrono::Utc::now()).state,
                State::Failed
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unico_429_with_retry_after_then_success() {
    let server = MockServer::start().await;
    let enricher = unico_enricher(&server, retry_after_only_settings()).await;
    let e = unico_event(3);
    answer_first(
        &server,
        process_path(&e),
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        1,
    )
    .await;
    answer_exactly(
        &server,
        process_path(&e),
        ResponseTemplate::new(200).set_body_json(
            json!({"id": e.subject_id.to_string(), "status": 3, "unicoId": {"result": "yes"}}),
        ),
        1,
    )
    .await;
    let started = std::time::Instant::now();
    let outcome = enricher.enrich(&e).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before the provider's Retry-After"
    );
    match outcome {
        EnrichOutcome::Fetched {
            fetched,
            attempts: 2,
        } => {
            assert_eq!(
                normalize(&e, &fetched, None, true, chrono::Utc::now()).state,
                State::Completed
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_disabled_provider_is_an_unsupported_event() {
    let enricher = Enricher::new(None, None, fast_settings());
    assert!(matches!(
        enricher.enrich(&unico_event(3)).await,
        EnrichOutcome::Failed(f) if f.class == ErrorClass::UnsupportedEvent && f.attempts == 0
    ));
}

/// Defect: the half-open probe ran the whole retry budget (60 s by default) while every other
/// record of its provider waited. A probe is one attempt.
#[tokio::test]
async fn a_probe_is_one_attempt() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let e = cs_event("mfa");
    answer_exactly(&server, analysis_path(&e), ResponseTemplate::new(503), 1).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    match enricher.enrich_within(&e, Budget::Probe, &cancel).await {
        EnrichOutcome::Systemic {
            attempts,
            retries_exhausted,
            ..
        } => {
            assert_eq!(attempts, 1);
            assert!(!retries_exhausted, "a failed probe is not a poison record");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_probe_answered_404_or_pending_says_the_provider_is_up() {
    let server = MockServer::start().await;
    let enricher = clearsale_enricher(&server, fast_settings()).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let missing = cs_event("mfa");
    answer_exactly(
        &server,
        analysis_path(&missing),
        ResponseTemplate::new(404),
        1,
    )
    .await;
    assert_eq!(
        enricher
            .enrich_within(&missing, Budget::Probe, &cancel)
            .await,
        EnrichOutcome::Reachable { attempts: 1 }
    );
    let pending = cs_event("mfa");
    answer_exactly(
        &server,
        analysis_path(&pending),
        ok_analysis(&pending, "pending"),
        1,
    )
    .await;
    assert_eq!(
        enricher
            .enrich_within(&pending, Budget::Probe, &cancel)
            .await,
        EnrichOutcome::Reachable { attempts: 1 }
    );
}

#[tokio::test]
async fn a_cancelled_enrichment_stops_between_attempts() {
    let server = MockServer::start().await;
    let mut settings = fast_settings();
    settings.retry.initial = Duration::from_secs(3600);
    settings.retry.max_delay = Duration::from_secs(3600);
    settings.retry.max_elapsed = Duration::from_secs(7200);
    let enricher = clearsale_enricher(&server, settings).await;
    let e = cs_event("mfa");
    answer_exactly(&server, analysis_path(&e), ResponseTemplate::new(503), 1).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn({
        let cancel = cancel.clone();
        async move { enricher.enrich_within(&e, Budget::Full, &cancel).await }
    });
    // Wait until the first attempt was answered: the enrichment now sleeps for an hour.
    while server.received_requests().await.unwrap_or_default().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the cancelled sleep ends")
        .unwrap();
    assert_eq!(outcome, EnrichOutcome::Cancelled);
}
