//! The engine's lifecycle: shutdown drains and commits exactly what finished; a second engine
//! joining the group takes partitions over without losing records.

use crate::support::{self, clearsale, committed_of, new_id, Kafka, RunningEngine};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use webhook_enricher::provider::Provider;
use webhook_enricher::simulator::SimulatorConfig;

const DATE: &str = "2025-09-26T17:21:11.0367845Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_records_and_commits_exactly_what_finished() {
    let input = support::unique("drain");
    let kafka = Kafka::new(&[(&input, 2)]);
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(300);
    sim_config.latency.jitter = Duration::from_millis(200);
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.engine.max_in_flight = 4;
    config.clearsale.limits.rate_per_second = 0;
    let producer = kafka.producer();
    // Which input each analysis id is, by partition and offset.
    let mut origin: HashMap<String, (i32, i64)> = HashMap::new();
    for i in 0..40 {
        let id = new_id();
        let at = kafka
            .produce(
                &producer,
                &input,
                Some(i % 2),
                None,
                clearsale(&id, "mfa", DATE).as_bytes(),
                &[],
            )
            .await;
        origin.insert(id, at);
    }

    let engine = RunningEngine::start(&config).await;
    // Shut down while records are in flight (received, not finished).
    assert!(
        support::eventually(Duration::from_secs(30), || {
            let s = engine.snapshot();
            s.published >= 2 && s.consumed > s.finished()
        })
        .await,
        "{:?}",
        engine.snapshot()
    );
    let at_stop = engine.snapshot();
    let summary = engine.stop().await.expect("shutdown returns Ok");
    assert!(
        summary.published < 40,
        "shutdown came after everything finished: {summary:?}"
    );
    assert!(
        summary.published >= at_stop.consumed,
        "records in flight at shutdown were abandoned instead of drained: {at_stop:?} then {summary:?}"
    );
    assert_eq!(summary.finished(), summary.published, "{summary:?}");

    // Per partition: the finished records are exactly the first `committed` offsets.
    let mut finished: HashMap<i32, Vec<i64>> = HashMap::new();
    for r in kafka.read_now(&config.output.clearsale_topic) {
        let (partition, offset) = origin[r.key.as_deref().expect("output key")];
        finished.entry(partition).or_default().push(offset);
    }
    let committed = kafka.committed(&config.kafka.group_id, &input, 2);
    let mut total = 0;
    for partition in 0..2 {
        let mut offsets = finished.remove(&partition).unwrap_or_default();
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..committed_of(&committed, partition)).collect();
        assert_eq!(
            offsets, expected,
            "partition {partition}: finished records and the committed offset disagree ({committed:?})"
        );
        total += offsets.len() as u64;
    }
    assert_eq!(
        total, summary.published,
        "nothing finished is left uncommitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_joining_the_group_loses_nothing() {
    let input = support::unique("rebalance");
    let kafka = Kafka::new(&[(&input, 4)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.engine.max_in_flight = 16;
    // ClearSale may take the whole budget (no share kept for Unico), so the outage fills it.
    config.engine.provider_share = 1.0;
    config.clearsale.limits.rate_per_second = 0;
    // The mock coordinator waits a whole session timeout (less 1 s) for members before it
    // completes a rebalance of a running group; keep it short (and the revocation drain below it).
    config.engine.revoke_drain_timeout = Duration::from_secs(1);
    for (k, v) in [
        ("session.timeout.ms", "4000"),
        ("heartbeat.interval.ms", "300"),
    ] {
        config.kafka.consumer.0.insert(k.into(), v.into());
    }
    let producer = kafka.producer();
    let payloads: Vec<String> = (0..64).map(|_| clearsale(&new_id(), "mfa", DATE)).collect();
    kafka.produce_spread(&producer, &input, 4, &payloads).await;

    // While ClearSale is down the first engine fills its in-flight limit and pauses its
    // partitions; the second engine joins then, so the revocation finds them paused and the
    // stuck records are abandoned at the revocation deadline.
    sim.set_outage(Provider::ClearSale, true);
    let first = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || first.snapshot().consumed >= 16).await,
        "{:?}",
        first.snapshot()
    );
    let second = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || second.snapshot().consumed > 0).await,
        "the second engine never got a partition: {:?}",
        second.snapshot()
    );
    sim.set_outage(Provider::ClearSale, false);

    let group = &config.kafka.group_id;
    let all = HashMap::from([(0, 16), (1, 16), (2, 16), (3, 16)]);
    assert!(
        support::eventually(Duration::from_secs(40), || {
            kafka.committed(group, &input, 4) == all
        })
        .await,
        "{:?} first {:?} second {:?}",
        kafka.committed(group, &input, 4),
        first.snapshot(),
        second.snapshot()
    );
    let second_summary = second.stop().await.unwrap();
    let first_summary = first.stop().await.unwrap();
    assert!(
        first_summary.published > 0 && second_summary.published > 0,
        "both engines publish after the rebalance: {first_summary:?} {second_summary:?}"
    );
    assert_eq!(
        first_summary.dead_lettered_total() + second_summary.dead_lettered_total(),
        0
    );
    let published: HashSet<String> = kafka
        .read_now(&config.output.clearsale_topic)
        .iter()
        .map(|r| r.header("event_id").to_string())
        .collect();
    for p in &payloads {
        assert!(
            published.contains(&support::event_id(p).to_string()),
            "an input has no output"
        );
    }
    assert_eq!(kafka.committed(group, &input, 4), all);
}

/// Defect (issue 12, §1.8): record tasks outlived their owner. Dropping the `engine::run` future
/// (a caller's timeout, an aborted task) left them running: they kept waiting for the provider
/// and then published. Now every record task is cancelled with the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_engine_future_cancels_its_record_tasks() {
    let input = support::unique("dropped");
    let kafka = Kafka::new(&[(&input, 1)]);
    let mut sim_config = SimulatorConfig::default();
    // Every result answer takes 2 s: the records are in flight when the engine is dropped.
    sim_config.latency.base = Duration::from_secs(2);
    let sim = support::start_simulator(sim_config).await;
    let config = support::config(&kafka, &sim, &input);
    let producer = kafka.producer();
    let inputs: Vec<String> = (0..20).map(|_| clearsale(&new_id(), "mfa", DATE)).collect();
    kafka.produce_spread(&producer, &input, 1, &inputs).await;

    let stats = std::sync::Arc::new(webhook_enricher::engine::stats::EngineStats::default());
    let parts = webhook_enricher::app::build_parts(&config, stats.clone())
        .await
        .expect("engine parts");
    let settings = config.engine_run_settings();
    let engine = tokio::spawn(async move {
        webhook_enricher::engine::run(&settings, parts, std::future::pending::<()>()).await
    });
    assert!(
        support::eventually(Duration::from_secs(30), || stats.snapshot().consumed == 20).await,
        "{:?}",
        stats.snapshot()
    );
    // Past the token request (answered at once), well before the first result (2 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stats.snapshot().published,
        0,
        "answered too early to test anything"
    );
    engine.abort();
    assert!(engine.await.is_err_and(|e| e.is_cancelled()));
    // The provider answers 2 s after each request: a task that survived its engine would
    // publish then.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = stats.snapshot();
    assert_eq!(after.published, 0, "{after:?}");
    assert_eq!(after.dead_lettered_total(), 0, "{after:?}");
}
