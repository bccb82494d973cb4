//! The Kafka engine against librdkafka's mock cluster and the provider simulator.

use crate::support::{self, Kafka};
use std::sync::Arc;
use std::time::Duration;
use webhook_enricher::engine::stats::EngineStats;
use webhook_enricher::simulator::SimulatorConfig;

fn clearsale(id: &str, kind: &str) -> String {
    format!(r#"{{"analysisId":"{id}","date":"2025-09-26T17:21:11.0367845Z","type":"{kind}"}}"#)
}

fn unico(id: &str, status: &str) -> String {
    format!(r#"{{"id":"{id}","status":"{status}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_both_providers_dedupes_and_dead_letters() {
    let input = support::unique("raw");
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    let producer = kafka.producer();
    let a = uuid::Uuid::new_v4().to_string();
    let b = uuid::Uuid::new_v4().to_string();
    let inputs = [
        clearsale(&a, "mfa"),
        clearsale(&a, "mfa"), // duplicate
        unico(&b, "3"),
        unico(&b, "1"), // skipped
        "not json".to_string(),
    ];
    kafka.produce_spread(&producer, &input, 2, &inputs).await;

    let stats = Arc::new(EngineStats::default());
    let parts = webhook_enricher::app::build_parts(&config, stats.clone())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = config.engine_run_settings();
    let engine = tokio::spawn(async move {
        webhook_enricher::engine::run(&cfg, parts, async {
            let _ = stopped.await;
        })
        .await
    });
    assert!(
        support::eventually(Duration::from_secs(30), || stats.snapshot().finished() == 5).await,
        "{:?}",
        stats.snapshot()
    );
    let _ = stop.send(());
    let summary = engine.await.unwrap().unwrap();
    assert_eq!(summary.published, 2);
    assert_eq!(summary.deduplicated, 1);
    assert_eq!(summary.skipped, 1);
    assert_eq!(summary.dead_lettered_total(), 1);

    let cs = kafka.read_all(&config.output.clearsale_topic, 1, Duration::from_secs(10));
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].key.as_deref(), Some(a.as_str()));
    assert_eq!(cs[0].header("provider"), "clearsale");
    let dlq = kafka.read_all(&config.output.dead_letter_topic, 1, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value, b"not json");
    assert_eq!(
        dlq[0].header("__connect.errors.class.name"),
        "malformed_payload"
    );
    let committed = kafka.committed(&config.kafka.group_id, &input, 2);
    assert_eq!(committed.values().sum::<i64>(), 5, "{committed:?}");
}
