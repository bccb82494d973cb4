//! The engine's ordering, dedupe, offset and backpressure rules, against the mock cluster and the
//! simulator: what happens to records, seen from the outside (outputs, the simulator's call log,
//! committed offsets).

use crate::support::{self, clearsale, committed_of, new_id, unico, Kafka, RunningEngine};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use webhook_enricher::provider::Provider;
use webhook_enricher::simulator::{CallRecord, Operation, SimulatorConfig};

const DATE: &str = "2025-09-26T17:21:11.0367845Z";

/// A date `n` seconds after [`DATE`], so events of one analysis differ.
fn date(n: u32) -> String {
    format!("2025-09-26T17:21:{:02}.0000000Z", n % 60)
}

/// The result-endpoint calls (no auth calls) of the call log.
fn result_calls(calls: &[CallRecord]) -> Vec<CallRecord> {
    calls
        .iter()
        .filter(|c| matches!(c.operation, Operation::GetAnalysis | Operation::GetProcess))
        .cloned()
        .collect()
}

fn overlap(a: &CallRecord, b: &CallRecord) -> bool {
    a.started < b.finished && b.started < a.finished
}

/// The most calls in progress at one instant.
fn max_concurrency(calls: &[CallRecord]) -> usize {
    let mut edges: Vec<(Instant, i32)> = calls
        .iter()
        .flat_map(|c| [(c.started, 1), (c.finished, -1)])
        .collect();
    // At the same instant an end comes before a start: touching intervals do not overlap.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_partitions_give_exactly_one_output_each() {
    let input = support::unique("dups");
    let kafka = Kafka::new(&[(&input, 3)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    let producer = kafka.producer();
    let a = new_id();
    let b = new_id();
    // Two events of one analysis (same key, different dates) and one Unico event, each sent
    // three times, every copy on a different partition.
    let events = [
        clearsale(&a, "mfa", &date(1)),
        clearsale(&a, "mfa", &date(2)),
        unico(&b, "3"),
    ];
    for copy in 0..3 {
        for (i, event) in events.iter().enumerate() {
            let partition = ((copy + i) % 3) as i32;
            kafka
                .produce(
                    &producer,
                    &input,
                    Some(partition),
                    None,
                    event.as_bytes(),
                    &[],
                )
                .await;
        }
    }

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().finished()
            == 9)
        .await,
        "{:?}",
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.published, 3, "{summary:?}");
    assert_eq!(summary.deduplicated, 6, "{summary:?}");
    assert_eq!(summary.dead_lettered_total(), 0, "{summary:?}");

    let mut outputs = kafka.read_now(&config.output.clearsale_topic);
    outputs.extend(kafka.read_now(&config.output.unico_topic));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &outputs {
        *seen.entry(r.header("event_id").to_string()).or_default() += 1;
    }
    let expected: HashMap<String, usize> = events
        .iter()
        .map(|e| (support::event_id(e).to_string(), 1))
        .collect();
    assert_eq!(seen, expected, "exactly one output per distinct event");
    assert_eq!(kafka.count(&config.output.dead_letter_topic), 0);
    let committed = kafka.committed(&config.kafka.group_id, &input, 3);
    assert_eq!(
        committed,
        HashMap::from([(0, 3), (1, 3), (2, 3)]),
        "every copy is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_runs_in_offset_order_while_different_keys_overlap() {
    let input = support::unique("order");
    let kafka = Kafka::new(&[(&input, 1)]);
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(80);
    sim_config.latency.jitter = Duration::from_millis(60);
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.clearsale.limits.rate_per_second = 0;
    let producer = kafka.producer();

    // On one partition, interleaved: five events of analysis `a`, three statuses of process
    // `u`, and six other analyses.
    let a = new_id();
    let u = new_id();
    let others: Vec<String> = (0..6).map(|_| new_id()).collect();
    let mut payloads = Vec::new();
    for (i, other) in others.iter().enumerate() {
        if i < 5 {
            payloads.push(clearsale(&a, "mfa", &date(i as u32)));
        }
        if (1..4).contains(&i) {
            payloads.push(unico(&u, &(i + 1).to_string()));
        }
        payloads.push(clearsale(other, "mfa", DATE));
    }
    for p in &payloads {
        kafka
            .produce(&producer, &input, Some(0), None, p.as_bytes(), &[])
            .await;
    }
    let total = payloads.len() as u64;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().finished()
            == total)
        .await,
        "{:?}",
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.published, total, "{summary:?}");

    let calls = result_calls(&sim.calls());
    for subject in [&a, &u] {
        let mut of_key: Vec<&CallRecord> = calls
            .iter()
            .filter(|c| c.subject.as_deref() == Some(subject.as_str()))
            .collect();
        let expected = payloads
            .iter()
            .filter(|p| p.contains(subject.as_str()))
            .count();
        assert_eq!(of_key.len(), expected, "one call per event of {subject}");
        of_key.sort_by_key(|c| c.started);
        for pair in of_key.windows(2) {
            assert!(
                pair[0].finished <= pair[1].started,
                "calls for one key overlap: {pair:?}"
            );
        }
    }
    let different_keys_overlap = calls.iter().enumerate().any(|(i, x)| {
        calls[i + 1..]
            .iter()
            .any(|y| x.subject != y.subject && overlap(x, y))
    });
    assert!(
        different_keys_overlap,
        "different keys of one partition never ran concurrently"
    );

    // Offset order per key: the outputs of a key appear in the order of their inputs.
    let position: HashMap<String, usize> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (support::event_id(p).to_string(), i))
        .collect();
    for (topic, key) in [
        (&config.output.clearsale_topic, &a),
        (&config.output.unico_topic, &u),
    ] {
        let order: Vec<usize> = kafka
            .read_now(topic)
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_str()))
            .map(|r| position[r.header("event_id")])
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "outputs of {key} out of offset order");
        assert!(order.len() >= 3);
    }
    let committed = kafka.committed(&config.kafka.group_id, &input, 1);
    assert_eq!(committed_of(&committed, 0), total as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offset_never_passes_an_unfinished_record() {
    let input = support::unique("hold");
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    let producer = kafka.producer();

    // Partition 0: a Unico record first (Unico is down), then five ClearSale records of other
    // keys, which finish first. Partition 1: one ClearSale record, to see commits happen.
    sim.set_outage(Provider::Unico, true);
    let slow = unico(&new_id(), "3");
    kafka
        .produce(&producer, &input, Some(0), None, slow.as_bytes(), &[])
        .await;
    for _ in 0..5 {
        let p = clearsale(&new_id(), "mfa", DATE);
        kafka
            .produce(&producer, &input, Some(0), None, p.as_bytes(), &[])
            .await;
    }
    let p = clearsale(&new_id(), "mfa", DATE);
    kafka
        .produce(&producer, &input, Some(1), None, p.as_bytes(), &[])
        .await;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().published == 6).await,
        "{:?}",
        engine.snapshot()
    );
    let group = &config.kafka.group_id;
    assert!(
        support::eventually(Duration::from_secs(10), || {
            committed_of(&kafka.committed(group, &input, 2), 1) == 1
        })
        .await,
        "partition 1 is committed"
    );
    // Several commit intervals pass while the first record of partition 0 is held.
    for _ in 0..4 {
        let committed = kafka.committed(group, &input, 2);
        assert_eq!(
            committed_of(&committed, 0),
            0,
            "committed past the unfinished record at offset 0: {committed:?}"
        );
        assert_eq!(engine.snapshot().finished(), 6);
        tokio::time::sleep(config.engine.commit_interval * 2).await;
    }

    sim.set_outage(Provider::Unico, false);
    assert!(
        support::eventually(Duration::from_secs(20), || {
            kafka.committed(group, &input, 2) == HashMap::from([(0, 6), (1, 1)])
        })
        .await,
        "{:?} {:?}",
        kafka.committed(group, &input, 2),
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.published, 7, "{summary:?}");
    assert_eq!(summary.dead_lettered_total(), 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_bounds_concurrent_provider_calls() {
    let input = support::unique("backpressure");
    let kafka = Kafka::new(&[(&input, 2)]);
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(60);
    sim_config.latency.jitter = Duration::from_millis(40);
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.engine.max_in_flight = 4;
    config.clearsale.limits.rate_per_second = 0;
    let producer = kafka.producer();
    let total = 40u64;
    let payloads: Vec<String> = (0..total)
        .map(|_| clearsale(&new_id(), "mfa", DATE))
        .collect();
    kafka.produce_spread(&producer, &input, 2, &payloads).await;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(40), || engine.snapshot().published
            == total)
        .await,
        "{:?}",
        engine.snapshot()
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.published, total);

    let calls = result_calls(&sim.calls());
    assert_eq!(calls.len() as u64, total, "one call per record");
    let max = max_concurrency(&calls);
    assert!(
        max <= 4,
        "{max} provider calls at once with max_in_flight = 4"
    );
    assert!(max >= 2, "records never ran concurrently (max {max})");
    assert_eq!(kafka.count(&config.output.clearsale_topic), total as i64);
    let committed = kafka.committed(&config.kafka.group_id, &input, 2);
    assert_eq!(committed, HashMap::from([(0, 20), (1, 20)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_unico_statuses_are_counted_and_committed_not_dead_lettered() {
    let input = support::unique("skip");
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    let producer = kafka.producer();
    let u = new_id();
    // Status 1 (processing) is outside the default enriched set {2,3,4,5}.
    let inputs = [
        (0, unico(&u, "1")),
        (0, unico(&u, "3")),
        (1, unico(&new_id(), "1")),
        (1, unico(&new_id(), "1")),
    ];
    for (partition, p) in &inputs {
        kafka
            .produce(&producer, &input, Some(*partition), None, p.as_bytes(), &[])
            .await;
    }

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().finished()
            == 4)
        .await,
        "{:?}",
        engine.snapshot()
    );
    let group = &config.kafka.group_id;
    assert!(
        support::eventually(Duration::from_secs(10), || {
            kafka.committed(group, &input, 2) == HashMap::from([(0, 2), (1, 2)])
        })
        .await,
        "skipped records are committed: {:?}",
        kafka.committed(group, &input, 2)
    );
    let summary = engine.stop().await.unwrap();
    assert_eq!(summary.skipped, 3, "{summary:?}");
    assert_eq!(summary.published, 1, "{summary:?}");
    assert_eq!(summary.dead_lettered_total(), 0, "{summary:?}");
    assert_eq!(kafka.count(&config.output.dead_letter_topic), 0);
    let outputs = kafka.read_now(&config.output.unico_topic);
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].header("trigger"), "3");
    let process_calls = result_calls(&sim.calls()).len();
    assert_eq!(process_calls, 1, "skipped statuses never call the provider");
}
