//! The engine under failure: provider outages and broken credentials (nothing dead-lettered,
//! nothing committed past the stuck record), bad payloads and provider refusals (dead-lettered
//! with their original bytes and the reason headers), and broker faults (nothing lost).

use crate::support::{self, clearsale, committed_of, new_id, unico, Kafka, RunningEngine};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;
use webhook_enricher::engine::dead_letter::names;
use webhook_enricher::provider::Provider;
use webhook_enricher::secret::Secret;
use webhook_enricher::simulator::SimulatorConfig;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DATE: &str = "2025-09-26T17:21:11.0367845Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outage_pauses_without_dead_letters_and_resumes() {
    let input = support::unique("outage");
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    let producer = kafka.producer();
    sim.set_outage(Provider::ClearSale, true);
    let payloads: Vec<String> = (0..4).map(|_| clearsale(&new_id(), "mfa", DATE)).collect();
    kafka.produce_spread(&producer, &input, 2, &payloads).await;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || {
            engine.stats.systemic_pauses.load(Ordering::Relaxed) > 0
        })
        .await,
        "the circuit never opened: {:?}",
        engine.snapshot()
    );
    let during = engine.snapshot();
    assert_eq!(during.finished(), 0, "{during:?}");
    assert_eq!(kafka.count(&config.output.dead_letter_topic), 0);
    let group = &config.kafka.group_id;
    assert!(kafka.committed(group, &input, 2).is_empty());

    sim.set_outage(Provider::ClearSale, false);
    assert!(
        support::eventually(Duration::from_secs(30), || {
            kafka.committed(group, &input, 2) == HashMap::from([(0, 2), (1, 2)])
        })
        .await,
        "{:?} {:?}",
        kafka.committed(group, &input, 2),
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.published, 4, "{summary:?}");
    assert_eq!(summary.dead_lettered_total(), 0, "{summary:?}");
    assert_eq!(kafka.count(&config.output.dead_letter_topic), 0);
    let published: HashSet<String> = kafka
        .read_now(&config.output.clearsale_topic)
        .iter()
        .map(|r| r.header("event_id").to_string())
        .collect();
    let expected: HashSet<String> = payloads
        .iter()
        .map(|p| support::event_id(p).to_string())
        .collect();
    assert_eq!(published, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_credentials_dead_letter_nothing_and_hold_the_offset() {
    let input = support::unique("auth");
    let kafka = Kafka::new(&[(&input, 1)]);
    let mut sim_config = SimulatorConfig::default();
    sim_config.clearsale.password = Secret::new("rotated-password");
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.engine.drain_timeout = Duration::from_millis(500);
    let producer = kafka.producer();
    // Offset 0 needs ClearSale (whose password the config no longer matches); offset 1 is a
    // Unico event, which is published meanwhile.
    let stuck = clearsale(&new_id(), "mfa", DATE);
    let fine = unico(&new_id(), "3");
    for p in [&stuck, &fine] {
        kafka
            .produce(&producer, &input, Some(0), None, p.as_bytes(), &[])
            .await;
    }

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || {
            let s = engine.snapshot();
            s.published == 1 && s.systemic_pauses > 0 && sim.stats().clearsale.auth_calls >= 2
        })
        .await,
        "{:?} {:?}",
        engine.snapshot(),
        sim.stats()
    );
    let group = &config.kafka.group_id;
    for _ in 0..3 {
        assert_eq!(committed_of(&kafka.committed(group, &input, 1), 0), 0);
        tokio::time::sleep(config.engine.commit_interval * 2).await;
    }
    let summary = engine
        .stop()
        .await
        .expect("a stuck record does not fail shutdown");
    assert_eq!(summary.published, 1, "{summary:?}");
    assert_eq!(summary.dead_lettered_total(), 0, "{summary:?}");
    assert_eq!(kafka.count(&config.output.dead_letter_topic), 0);
    assert_eq!(
        committed_of(&kafka.committed(group, &input, 1), 0),
        0,
        "the abandoned record is left for redelivery"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.clearsale.result_calls, 0,
        "no result call without a token"
    );
}

/// One input of the dead-letter test and what its dead letter must say.
struct Case {
    partition: i32,
    key: String,
    headers: Vec<(&'static str, String)>,
    value: Vec<u8>,
    class: &'static str,
    stage: &'static str,
    attempts: &'static str,
    http_status: Option<&'static str>,
    provider: Option<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_class_is_dead_lettered_with_its_original_bytes_and_reasons() {
    let input = support::unique("dlq");
    let kafka = Kafka::new(&[(&input, 2)]);
    let not_found = uuid::Uuid::new_v4();
    let mut sim_config = SimulatorConfig::default();
    sim_config.faults.not_found_ids = vec![not_found];
    let sim = support::start_simulator(sim_config).await;

    // ClearSale is a wiremock peer here: it refuses one id (422) and answers garbage for
    // another, which the simulator cannot do.
    let clearsale_peer = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/connect/v1/authenticate"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token": "t0k3n",
            "expirationDate": "2099-01-01T00:00:00.0000000",
        })))
        .expect(1)
        .mount(&clearsale_peer)
        .await;
    let refused = uuid::Uuid::new_v4();
    let garbage = uuid::Uuid::new_v4();
    Mock::given(method("GET"))
        .and(path(format!("/connect/v1/integration/analysis/{refused}")))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "title": "Unprocessable", "status": 422, "detail": "analysis belongs to another entity"
        })))
        .expect(1)
        .mount(&clearsale_peer)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/connect/v1/integration/analysis/{garbage}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([1, 2, 3])))
        .expect(1)
        .mount(&clearsale_peer)
        .await;

    let mut config = support::config(&kafka, &sim, &input);
    config.clearsale.base_url = clearsale_peer.uri();
    let producer = kafka.producer();
    let trace = |n: u32| vec![("trace-id", format!("t{n}"))];
    let cases = vec![
        Case {
            partition: 0,
            key: "k-malformed".into(),
            headers: trace(0),
            value: b"not json {".to_vec(),
            class: "malformed_payload",
            stage: "decode",
            attempts: "0",
            http_status: None,
            provider: None,
        },
        Case {
            partition: 1,
            key: "k-invalid-id".into(),
            headers: trace(1),
            value: clearsale("12345", "mfa", DATE).into_bytes(),
            class: "invalid_id",
            stage: "decode",
            attempts: "0",
            http_status: None,
            provider: Some("clearsale"),
        },
        Case {
            partition: 0,
            key: "k-unsupported".into(),
            headers: vec![("provider", "serasa".into()), ("trace-id", "t2".into())],
            value: clearsale(&new_id(), "mfa", DATE).into_bytes(),
            class: "unsupported_event",
            stage: "decode",
            attempts: "0",
            http_status: None,
            provider: None,
        },
        Case {
            partition: 1,
            key: "k-not-found".into(),
            headers: trace(3),
            value: unico(&not_found.to_string(), "3").into_bytes(),
            class: "not_found",
            stage: "enrich",
            attempts: "3",
            http_status: Some("404"),
            provider: Some("unico"),
        },
        Case {
            partition: 0,
            key: "k-rejected".into(),
            headers: trace(4),
            value: clearsale(&refused.to_string(), "mfa", DATE).into_bytes(),
            class: "provider_rejected",
            stage: "enrich",
            attempts: "1",
            http_status: Some("422"),
            provider: Some("clearsale"),
        },
        Case {
            partition: 1,
            key: "k-garbage".into(),
            headers: trace(5),
            value: clearsale(&garbage.to_string(), "mfa", DATE).into_bytes(),
            class: "invalid_response",
            stage: "enrich",
            attempts: "1",
            http_status: None,
            provider: Some("clearsale"),
        },
    ];
    let mut coordinates = Vec::new();
    for case in &cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        coordinates.push(
            kafka
                .produce(
                    &producer,
                    &input,
                    Some(case.partition),
                    Some(&case.key),
                    &case.value,
                    &headers,
                )
                .await,
        );
    }
    // A good record behind them, so the partition's offset must move past the dead letters.
    let good = unico(&new_id(), "3");
    kafka
        .produce(&producer, &input, Some(0), None, good.as_bytes(), &[])
        .await;

    let engine = RunningEngine::start(&config).await;
    let total = cases.len() as u64 + 1;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().finished()
            == total)
        .await,
        "{:?}",
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.published, 1, "{summary:?}");
    assert_eq!(summary.dead_lettered_total(), cases.len() as u64);

    let timestamps: HashMap<(i32, i64), Option<i64>> = kafka
        .read_now(&input)
        .iter()
        .map(|r| ((r.partition, r.offset), r.timestamp_ms))
        .collect();
    let dead_letters = kafka.read_now(&config.output.dead_letter_topic);
    assert_eq!(dead_letters.len(), cases.len());
    for (case, (partition, offset)) in cases.iter().zip(&coordinates) {
        let dl = dead_letters
            .iter()
            .find(|r| r.key.as_deref() == Some(case.key.as_str()))
            .unwrap_or_else(|| panic!("no dead letter for {}", case.key));
        let what = &case.class;
        assert_eq!(dl.value, case.value, "{what}: value changed");
        let original: Vec<(String, Option<String>)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.clone())))
            .collect();
        assert_eq!(
            dl.header_list[..original.len()],
            original[..],
            "{what}: original headers changed"
        );
        assert_eq!(dl.header(names::CLASS), case.class);
        assert_eq!(dl.header(names::STAGE), case.stage, "{what}");
        assert_eq!(dl.header(names::TOPIC), input, "{what}");
        assert_eq!(dl.header(names::PARTITION), partition.to_string(), "{what}");
        assert_eq!(dl.header(names::OFFSET), offset.to_string(), "{what}");
        let timestamp = timestamps[&(*partition, *offset)].expect("input timestamp");
        assert_eq!(dl.header(names::TIMESTAMP), timestamp.to_string(), "{what}");
        assert_eq!(dl.header(names::ATTEMPTS), case.attempts, "{what}");
        assert_eq!(
            dl.headers.get(names::HTTP_STATUS).map(String::as_str),
            case.http_status,
            "{what}"
        );
        assert_eq!(
            dl.headers.get(names::PROVIDER).map(String::as_str),
            case.provider,
            "{what}"
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(dl.header(names::FAILED_AT)).is_ok(),
            "{what}: failed-at {:?}",
            dl.header(names::FAILED_AT)
        );
        assert_eq!(
            dl.header(names::SERVICE_VERSION),
            env!("CARGO_PKG_VERSION"),
            "{what}"
        );
        assert_eq!(dl.header(names::CONNECTOR), "webhook-enricher");
        let message = dl.header(names::MESSAGE);
        assert!(!message.is_empty(), "{what}: empty message");
        assert!(
            !message.contains(&String::from_utf8_lossy(&case.value).to_string()),
            "{what}: the message repeats the payload"
        );
    }
    let committed = kafka.committed(&config.kafka.group_id, &input, 2);
    assert_eq!(committed, HashMap::from([(0, 4), (1, 3)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_faults_lose_nothing() {
    let input = support::unique("broker");
    let kafka = Kafka::new(&[(&input, 2)]);
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(100);
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.engine.max_in_flight = 4;
    config.clearsale.limits.rate_per_second = 0;
    let producer = kafka.producer();
    let payloads: Vec<String> = (0..20)
        .map(|i| {
            if i % 3 == 0 {
                unico(&new_id(), "3")
            } else {
                clearsale(&new_id(), "mfa", DATE)
            }
        })
        .collect();
    kafka.produce_spread(&producer, &input, 2, &payloads).await;

    use RDKafkaRespErr::*;
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        ],
    );
    kafka.cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        ],
    );
    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().published >= 4).await,
        "{:?}",
        engine.snapshot()
    );
    assert!(
        engine.snapshot().published < 20,
        "the broker must go down mid-stream"
    );
    kafka.cluster.broker_down(1).expect("broker down");
    // Keep the broker down long enough for requests in flight to fail (not for correctness).
    tokio::time::sleep(Duration::from_secs(1)).await;
    kafka.cluster.broker_up(1).expect("broker up");

    let group = &config.kafka.group_id;
    assert!(
        support::eventually(Duration::from_secs(40), || {
            kafka.committed(group, &input, 2) == HashMap::from([(0, 10), (1, 10)])
        })
        .await,
        "{:?} {:?}",
        kafka.committed(group, &input, 2),
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.dead_lettered_total(), 0, "{summary:?}");
    let mut published: HashSet<String> = HashSet::new();
    for topic in [&config.output.clearsale_topic, &config.output.unico_topic] {
        published.extend(
            kafka
                .read_now(topic)
                .iter()
                .map(|r| r.header("event_id").to_string()),
        );
    }
    for p in &payloads {
        assert!(
            published.contains(&support::event_id(p).to_string()),
            "an input has no output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_as_retries_exhausted_while_the_provider_serves_others() {
    let input = support::unique("poison");
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    // ClearSale is a wiremock peer: one id always fails with 500, every other id answers.
    let peer = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/connect/v1/authenticate"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token": "t0k3n", "expirationDate": "2099-01-01T00:00:00.0000000",
        })))
        .mount(&peer)
        .await;
    let poison = uuid::Uuid::new_v4();
    Mock::given(method("GET"))
        .and(path(format!("/connect/v1/integration/analysis/{poison}")))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({"title": "boom", "status": 500})),
        )
        .mount(&peer)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            r"^/connect/v1/integration/analysis/.+$",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"mfa": {"status": "approved"}})),
        )
        .mount(&peer)
        .await;
    let mut config = support::config(&kafka, &sim, &input);
    config.clearsale.base_url = peer.uri();
    config.enrich.retry.max_elapsed = Duration::from_millis(300);
    let engine = RunningEngine::start(&config).await;
    let producer = kafka.producer();
    kafka
        .produce(
            &producer,
            &input,
            Some(0),
            None,
            clearsale(&poison.to_string(), "mfa", DATE).as_bytes(),
            &[],
        )
        .await;
    // Healthy records keep arriving while the poison one fails, round after round.
    let mut healthy = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.snapshot().dead_lettered_total() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never dead-lettered: {:?}",
            engine.snapshot()
        );
        let id = uuid::Uuid::new_v4().to_string();
        kafka
            .produce(
                &producer,
                &input,
                Some(1),
                None,
                clearsale(&id, "mfa", DATE).as_bytes(),
                &[],
            )
            .await;
        healthy += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().finished()
            == healthy + 1)
        .await
    );
    let stats = engine.stop().await.expect("engine stops cleanly");
    assert_eq!(
        stats
            .dead_lettered
            .get(&webhook_enricher::failure::ErrorClass::RetriesExhausted),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.published, healthy);
    assert!(
        stats.circuits_opened >= 1,
        "the first round opens the circuit instead of dead-lettering: {stats:?}"
    );
    let dlq = kafka.read_all(&config.output.dead_letter_topic, 1, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].header("__connect.errors.class.name"),
        "retries_exhausted"
    );
    assert_eq!(
        dlq[0].value,
        clearsale(&poison.to_string(), "mfa", DATE).into_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_stops_the_engine_without_committing_past_the_record() {
    let input = support::unique("fatal");
    let kafka = Kafka::new(&[(&input, 1)]);
    // Provider latency keeps the second record's output write after the fault injection below.
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_secs(1);
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    // With the gapless guarantee, a sequence error is fatal for the idempotent producer.
    config
        .kafka
        .producer
        .0
        .insert("enable.gapless.guarantee".into(), "true".into());
    let producer = kafka.producer();
    let first = new_id();
    kafka
        .produce(
            &producer,
            &input,
            Some(0),
            None,
            clearsale(&first, "mfa", DATE).as_bytes(),
            &[],
        )
        .await;
    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().published == 1).await
    );
    assert!(
        support::eventually(Duration::from_secs(15), || kafka
            .committed(&config.kafka.group_id, &input, 1)
            .get(&0)
            == Some(&1))
        .await,
        "the first record is committed"
    );
    let second = new_id();
    kafka
        .produce(
            &producer,
            &input,
            Some(0),
            None,
            clearsale(&second, "mfa", DATE).as_bytes(),
            &[],
        )
        .await;
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 4],
    );
    let result = engine.stop_when_done(Duration::from_secs(60)).await;
    match result {
        Err(webhook_enricher::engine::EngineError::Produce(
            webhook_enricher::engine::producer::ProduceError::Fatal { .. },
        )) => {}
        other => panic!("expected a fatal producer error, got {other:?}"),
    }
    kafka.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert_eq!(
        kafka.committed(&config.kafka.group_id, &input, 1).get(&0),
        Some(&1),
        "nothing committed past the unpublished record"
    );
}
