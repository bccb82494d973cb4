//! The Schema Registry client and the Confluent encoder against a wiremock registry that follows
//! the Confluent REST API.

use chrono::{TimeZone, Utc};
use serde_json::json;
use std::time::Duration;
use webhook_enricher::avro::schema::ENRICHED_EVENT_AVSC;
use webhook_enricher::avro::{
    decode, schema, EncoderInitError, EncodingSettings, RecordEncoder, WireFormat,
};
use webhook_enricher::event::{Trigger, WebhookEvent};
use webhook_enricher::provider::{Fetched, Provider};
use webhook_enricher::record::{normalize, EnrichedRecord};
use webhook_enricher::registry::{
    RegistryClient, RegistryError, RegistrySettings, SubjectNameStrategy,
};
use webhook_enricher::secret::Secret;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const USER: &str = "sr-user";
const PASSWORD: &str = "sr-s3cret-pw";
/// `Basic base64("sr-user:sr-s3cret-pw")`.
const BASIC: &str = "Basic c3ItdXNlcjpzci1zM2NyZXQtcHc=";
const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

fn settings(server: &MockServer, auto_register: bool) -> EncodingSettings {
    EncodingSettings {
        format: WireFormat::Confluent,
        registry: RegistrySettings {
            urls: vec![server.uri()],
            username: USER.into(),
            password: Secret::new(PASSWORD),
            auto_register,
            subject_name_strategy: SubjectNameStrategy::TopicName,
            timeout: Duration::from_secs(5),
        },
    }
}

fn record(n: u8) -> EnrichedRecord {
    let event = WebhookEvent::new(
        Provider::Unico,
        "8263a268-5388-492a-bca2-28e1ff4a69f0".parse().unwrap(),
        Trigger::Unico { status: 3 },
    );
    let raw = json!({"status": 3, "score": n});
    let fetched = Fetched::Unico {
        process: serde_json::from_value(raw.clone()).unwrap(),
        raw: raw.to_string(),
    };
    normalize(
        &event,
        &fetched,
        None,
        false,
        Utc.with_ymd_and_hms(2025, 9, 26, 17, 22, 0).unwrap(),
    )
}

fn error_body(code: u32, message: &str) -> ResponseTemplate {
    let status = if code >= 10_000 { code / 100 } else { code };
    ResponseTemplate::new(status as u16).set_body_raw(
        json!({"error_code": code, "message": message}).to_string(),
        SR_JSON,
    )
}

fn topics(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn assert_no_password(error: &impl std::fmt::Debug, display: String) {
    assert!(!display.contains(PASSWORD), "{display}");
    assert!(!format!("{error:?}").contains(PASSWORD), "{error:?}");
    assert!(
        !display.contains("c3ItdXNlcjpzci1zM2NyZXQtcHc"),
        "{display}"
    );
}

#[tokio::test]
async fn auto_register_posts_once_with_basic_auth_and_caches_the_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/subjects/enriched-value/versions"))
        .and(header("authorization", BASIC))
        .and(body_partial_json(
            json!({"schema": ENRICHED_EVENT_AVSC, "schemaType": "AVRO"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"id":42}"#, SR_JSON))
        .expect(1)
        .mount(&server)
        .await;

    let encoder = RecordEncoder::from_settings(&settings(&server, true), &topics(&["enriched"]))
        .await
        .unwrap();
    for n in 0..200 {
        let bytes = encoder.encode("enriched", &record(n)).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
        let decoded = decode(&bytes, schema().unwrap()).unwrap();
        assert_eq!(decoded.schema_id, Some(42));
    }
    assert!(encoder
        .content_headers("enriched")
        .contains(&("schema-id", "42".to_string())));
    // Dropping the server verifies `.expect(1)`: one registry call for 200 records.
}

#[tokio::test]
async fn one_call_per_subject_with_the_record_name_strategy() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(
            "/subjects/io.webhookenricher.v1.EnrichedEvent/versions",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"id":9}"#, SR_JSON))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = settings(&server, true);
    s.registry.subject_name_strategy = SubjectNameStrategy::RecordName;
    let encoder = RecordEncoder::from_settings(&s, &topics(&["a", "b", "c"]))
        .await
        .unwrap();
    for t in ["a", "b", "c"] {
        assert_eq!(
            &encoder.encode(t, &record(1)).unwrap()[..5],
            &[0, 0, 0, 0, 9]
        );
    }
}

#[tokio::test]
async fn lookup_mode_uses_the_latest_version_and_never_registers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/subjects/enriched-value/versions/latest"))
        .and(header("authorization", BASIC))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(
                json!({"subject": "enriched-value", "version": 3, "id": 77,
                   "schema": ENRICHED_EVENT_AVSC})
                .to_string(),
                SR_JSON,
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"id":1}"#, SR_JSON))
        .expect(0)
        .mount(&server)
        .await;
    let encoder = RecordEncoder::from_settings(&settings(&server, false), &topics(&["enriched"]))
        .await
        .unwrap();
    assert_eq!(
        &encoder.encode("enriched", &record(1)).unwrap()[..5],
        &[0, 0, 0, 0, 77]
    );
}

fn other_schema() -> String {
    json!({"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}).to_string()
}

#[tokio::test]
async fn lookup_mode_finds_our_schema_when_latest_is_another_version() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/subjects/enriched-value/versions/latest"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            json!({"subject": "enriched-value", "version": 4, "id": 80, "schema": other_schema()})
                .to_string(),
            SR_JSON,
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/subjects/enriched-value"))
        .and(body_partial_json(json!({"schema": ENRICHED_EVENT_AVSC})))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(
                json!({"subject": "enriched-value", "version": 3, "id": 77,
                   "schema": ENRICHED_EVENT_AVSC})
                .to_string(),
                SR_JSON,
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let encoder = RecordEncoder::from_settings(&settings(&server, false), &topics(&["enriched"]))
        .await
        .unwrap();
    assert_eq!(
        &encoder.encode("enriched", &record(1)).unwrap()[..5],
        &[0, 0, 0, 0, 77]
    );
}

#[tokio::test]
async fn lookup_mode_fails_clearly_when_the_schema_is_absent() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/subjects/enriched-value/versions/latest"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            json!({"subject": "enriched-value", "version": 4, "id": 80, "schema": other_schema()})
                .to_string(),
            SR_JSON,
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/subjects/enriched-value"))
        .respond_with(error_body(40403, "Schema not found"))
        .expect(1)
        .mount(&server)
        .await;
    let err = RecordEncoder::from_settings(&settings(&server, false), &topics(&["enriched"]))
        .await
        .unwrap_err();
    match &err {
        EncoderInitError::Registry { topic, source } => {
            assert_eq!(topic, "enriched");
            assert_eq!(
                source,
                &RegistryError::NotRegistered {
                    subject: "enriched-value".into(),
                    latest_version: Some(4),
                    latest_id: 80
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("auto_register"), "{err}");
}

#[tokio::test]
async fn lookup_mode_missing_subject() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/subjects/enriched-value/versions/latest"))
        .respond_with(error_body(40401, "Subject 'enriched-value' not found."))
        .expect(1)
        .mount(&server)
        .await;
    let client = RegistryClient::new(&settings(&server, false).registry).unwrap();
    let err = client
        .resolve_id("enriched-value", ENRICHED_EVENT_AVSC, schema().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RegistryError::SubjectNotFound {
            subject: "enriched-value".into()
        }
    );
}

#[tokio::test]
async fn unauthorized_is_typed_and_never_shows_the_password() {
    for body in [
        error_body(401, "Unauthorized"),
        // Some proxies answer 401 with a non-JSON body.
        ResponseTemplate::new(401).set_body_string("<html>401</html>"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/subjects/enriched-value/versions"))
            .respond_with(body)
            .expect(1)
            .mount(&server)
            .await;
        let err = RecordEncoder::from_settings(&settings(&server, true), &topics(&["enriched"]))
            .await
            .unwrap_err();
        let EncoderInitError::Registry { source, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            source,
            &RegistryError::Unauthorized {
                subject: "enriched-value".into(),
                status: 401
            }
        );
        assert_no_password(&err, err.to_string());
    }
}

#[tokio::test]
async fn incompatible_schema_is_typed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/subjects/enriched-value/versions"))
        .respond_with(error_body(
            409,
            "Schema being registered is incompatible with an earlier schema",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = RegistryClient::new(&settings(&server, true).registry).unwrap();
    let err = client
        .register("enriched-value", ENRICHED_EVENT_AVSC)
        .await
        .unwrap_err();
    match &err {
        RegistryError::Incompatible { subject, message } => {
            assert_eq!(subject, "enriched-value");
            assert!(message.contains("incompatible"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_no_password(&err, err.to_string());
}

#[tokio::test]
async fn server_error_is_a_bad_response_with_its_status() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/subjects/enriched-value/versions"))
        .respond_with(error_body(50001, "Error in the backend data store"))
        .expect(1)
        .mount(&server)
        .await;
    let client = RegistryClient::new(&settings(&server, true).registry).unwrap();
    let err = client
        .register("enriched-value", ENRICHED_EVENT_AVSC)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::BadResponse {
                status: Some(500),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_registry_is_typed_and_never_shows_the_password() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut s = settings(&MockServer::start().await, true);
    s.registry.urls = vec![format!("http://127.0.0.1:{port}")];
    let err = RecordEncoder::from_settings(&s, &topics(&["enriched"]))
        .await
        .unwrap_err();
    let EncoderInitError::Registry { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(source, RegistryError::Unreachable { .. }),
        "{source:?}"
    );
    assert_no_password(&err, err.to_string());
    let client = RegistryClient::new(&s.registry).unwrap();
    assert!(!format!("{client:?}").contains(PASSWORD));
}

#[tokio::test]
async fn fails_over_to_the_next_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/subjects/enriched-value/versions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"id":5}"#, SR_JSON))
        .expect(1)
        .mount(&server)
        .await;
    let mut s = settings(&server, true);
    s.registry.urls = vec![format!("http://127.0.0.1:{port}"), server.uri()];
    let encoder = RecordEncoder::from_settings(&s, &topics(&["enriched"]))
        .await
        .unwrap();
    assert_eq!(
        &encoder.encode("enriched", &record(1)).unwrap()[..5],
        &[0, 0, 0, 0, 5]
    );
}

#[tokio::test]
async fn confluent_without_urls_is_a_configuration_error() {
    let s = EncodingSettings {
        format: WireFormat::Confluent,
        ..Default::default()
    };
    let err = RecordEncoder::from_settings(&s, &topics(&["enriched"]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EncoderInitError::RegistryConfig(RegistryError::Config { .. })
        ),
        "{err:?}"
    );
}
