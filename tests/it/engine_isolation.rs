//! Provider isolation (`engine.isolation`): a provider that cannot be served is diverted to its
//! wait topic, so the other provider and the input keep flowing; after recovery the wait topic is
//! read back, in per-key order, and the lane returns to direct. Against the mock cluster, with
//! ClearSale behind a switchable fake and Unico on the simulator.

use crate::support::{self, clearsale, new_id, unico, Kafka, OutRecord, RunningEngine};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use webhook_enricher::config::Config;
use webhook_enricher::engine::settings::Toggle;
use webhook_enricher::engine::wait::names as wait_headers;
use webhook_enricher::provider::Provider;
use webhook_enricher::simulator::SimulatorConfig;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// ClearSale's result endpoint: 503 (maintenance) while `down`, else an approved MFA module.
#[derive(Clone)]
struct Maintenance(Arc<AtomicBool>);

impl Respond for Maintenance {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.0.load(Ordering::SeqCst) {
            ResponseTemplate::new(503)
        } else {
            ResponseTemplate::new(200).set_body_json(json!({"mfa": {"status": "approved"}}))
        }
    }
}

async fn clearsale_peer(down: &Arc<AtomicBool>) -> MockServer {
    support::clearsale_peer(Maintenance(down.clone())).await
}

const PARTITIONS: i32 = 3;

struct Setup {
    kafka: Kafka,
    config: Config,
    input: String,
    wait_cs: String,
    sim: webhook_enricher::simulator::SimulatorHandle,
    _peer: MockServer,
}

async fn setup(down: &Arc<AtomicBool>, max_in_flight: usize) -> Setup {
    let input = support::unique("iso");
    let wait_cs = format!("{input}.wait.clearsale");
    let wait_unico = format!("{input}.wait.unico");
    let kafka = Kafka::new(&[
        (&input, PARTITIONS),
        (&wait_cs, PARTITIONS),
        (&wait_unico, PARTITIONS),
    ]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let peer = clearsale_peer(down).await;
    let mut config = support::config(&kafka, &sim, &input);
    config.clearsale.base_url = peer.uri();
    config.engine.max_in_flight = max_in_flight;
    let iso = &mut config.engine.isolation;
    iso.enabled = Toggle::On;
    iso.clearsale_wait_topic = wait_cs.clone();
    iso.unico_wait_topic = wait_unico;
    // Also how long a new lane holds records until its wait partition is known to be empty:
    // long enough for the mock cluster to answer, so Unico never needs its wait topic here.
    iso.divert_after = Duration::from_secs(5);
    iso.catch_up_initial = 4;
    iso.catch_up_ramp_every = Duration::from_millis(200);
    Setup {
        kafka,
        config,
        input,
        wait_cs,
        sim,
        _peer: peer,
    }
}

/// The input offset (lineage) of each published record, by key, in output order.
fn lineage_by_key(records: &[OutRecord]) -> HashMap<String, Vec<i64>> {
    let schema = webhook_enricher::avro::schema().expect("schema");
    let mut by_key: HashMap<String, Vec<(i32, i64, i64)>> = HashMap::new();
    for r in records {
        let decoded = webhook_enricher::avro::decode(&r.value, schema).expect("avro");
        let record = webhook_enricher::avro::to_json(&decoded.value);
        let offset = record["lineage"]["offset"]
            .as_i64()
            .expect("lineage offset");
        by_key
            .entry(r.key.clone().expect("key"))
            .or_default()
            .push((r.partition, r.offset, offset));
    }
    by_key
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v.into_iter().map(|(_, _, o)| o).collect())
        })
        .collect()
}

/// Each key's input offsets appear in increasing order (and each once).
fn assert_per_key_order(by_key: &HashMap<String, Vec<i64>>) {
    for (key, offsets) in by_key {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "key {key}: records published out of input order: {offsets:?}"
        );
    }
}

/// Produces one ClearSale notification of `analysis` (keyed by it) at `date`.
async fn produce_clearsale(
    s: &Setup,
    producer: &rdkafka::producer::FutureProducer,
    analysis: &str,
    date: &str,
) {
    let payload = clearsale(analysis, "mfa", date);
    s.kafka
        .produce(
            producer,
            &s.input,
            None,
            Some(analysis),
            payload.as_bytes(),
            &[],
        )
        .await;
}

/// Produces one Unico notification (status 3) of a new process, keyed by its id.
async fn produce_unico(s: &Setup, producer: &rdkafka::producer::FutureProducer) {
    let id = new_id();
    s.kafka
        .produce(
            producer,
            &s.input,
            None,
            Some(&id),
            unico(&id, "3").as_bytes(),
            &[],
        )
        .await;
}

/// Every one of the `count` Unico records is published while ClearSale is still down.
fn assert_unico_flows(s: &Setup, count: usize, within: Duration, engine: &RunningEngine) {
    let out = s
        .kafka
        .read_all(&s.config.output.unico_topic, count, within);
    assert_eq!(
        out.len(),
        count,
        "Unico flows during the outage: {:?}",
        engine.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_clearsale_outage_diverts_clearsale_while_unico_and_the_input_keep_flowing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let down = Arc::new(AtomicBool::new(true));
    // The in-flight limit is far below what the outage holds back.
    let mut s = setup(&down, 32).await;
    // Retries outlast the second over which a full share is found slow, so ClearSale is
    // found slow (no completions) before any record's retries run out.
    s.config.enrich.retry.max_elapsed = Duration::from_secs(5);
    let producer = s.kafka.producer();
    // 20 analyses with 10 notifications each (different dates), interleaved with Unico.
    let analyses: Vec<String> = (0..20).map(|_| new_id()).collect();
    let mut cs_count = 0;
    let mut unico_count = 0;
    for round in 0..10u32 {
        for a in &analyses {
            let date = format!("2025-09-26T17:21:{:02}.0000000Z", round);
            produce_clearsale(&s, &producer, a, &date).await;
            cs_count += 1;
        }
        for _ in 0..20 {
            produce_unico(&s, &producer).await;
            unico_count += 1;
        }
    }
    let engine = RunningEngine::start(&s.config).await;

    // During the outage: every Unico record is published...
    assert_unico_flows(&s, unico_count, Duration::from_secs(60), &engine);
    assert_eq!(
        s.kafka.count(&format!("{}.wait.unico", s.input)),
        0,
        "Unico was never diverted: it went straight through"
    );
    // ...every ClearSale record is in the wait topic, with its origin...
    let group = s.config.kafka.group_id.clone();
    assert!(
        support::eventually(Duration::from_secs(30), || s.kafka.count(&s.wait_cs)
            >= cs_count as i64)
        .await,
        "ClearSale diverted: {} of {cs_count} in the wait topic",
        s.kafka.count(&s.wait_cs)
    );
    // ...the input's committed offsets reach its end (nothing waits in memory)...
    let ends = s.kafka.end_offsets(&s.input);
    let covered = |committed: HashMap<i32, i64>, ends: &HashMap<i32, i64>| {
        ends.iter()
            .all(|(p, end)| *end == 0 || committed.get(p) == Some(end))
    };
    assert!(
        support::eventually(Duration::from_secs(30), || covered(
            s.kafka.committed(&group, &s.input, PARTITIONS),
            &ends
        ))
        .await,
        "input committed {:?}, end {:?}",
        s.kafka.committed(&group, &s.input, PARTITIONS),
        ends
    );
    // ...and nothing is dead-lettered for the outage.
    assert_eq!(s.kafka.count(&s.config.output.dead_letter_topic), 0);
    assert!(down.load(Ordering::SeqCst), "the outage is still on");
    let waiting = s.kafka.read_now(&s.wait_cs);
    let first = &waiting[0];
    assert_eq!(first.header(wait_headers::TOPIC), s.input);
    assert!(first.header(wait_headers::OFFSET).parse::<i64>().is_ok());
    assert!(first.header(wait_headers::FIRST_SEEN).ends_with('Z'));
    // `provider_slow` too: records arriving while the ones retrying the 503s fill ClearSale's
    // share with no completion (slower than its arrivals) are diverted before the circuit opens.
    assert!(
        ["circuit_open", "provider_slow", "lane_diverted"]
            .contains(&first.header(wait_headers::REASON)),
        "reason {:?}",
        first.header(wait_headers::REASON)
    );
    // The records already retrying kept retrying until their failures opened the circuit, and
    // diverted as `circuit_open` (had they been diverted as slow, the circuit would never have
    // opened and the lanes would have returned to a provider still down).
    assert!(
        waiting
            .iter()
            .any(|r| r.header(wait_headers::REASON) == "circuit_open"),
        "reasons {:?}",
        waiting
            .iter()
            .map(|r| r.header(wait_headers::REASON))
            .collect::<std::collections::BTreeSet<_>>()
    );
    for r in &waiting {
        let source_partition: i32 = r
            .header(wait_headers::PARTITION)
            .parse()
            .expect("partition");
        assert_eq!(
            r.partition, source_partition,
            "a wait partition per input partition"
        );
        assert!(
            analyses.iter().any(|a| r.key.as_deref() == Some(a)),
            "original key kept"
        );
    }
    let snapshot = engine.snapshot();
    assert!(snapshot.diverted >= cs_count as u64);

    // Recovery: ClearSale is read back and published, in per-key order, once each.
    down.store(false, Ordering::SeqCst);
    let cs_out = s.kafka.read_all(
        &s.config.output.clearsale_topic,
        cs_count,
        Duration::from_secs(60),
    );
    assert_eq!(
        cs_out.len(),
        cs_count,
        "every ClearSale record published once"
    );
    let by_key = lineage_by_key(&cs_out);
    assert_eq!(by_key.len(), analyses.len());
    assert_per_key_order(&by_key);
    assert_eq!(s.kafka.count(&s.config.output.dead_letter_topic), 0);

    // The lanes return to direct: new ClearSale records are published without the wait topic.
    let in_wait = s.kafka.count(&s.wait_cs);
    assert!(
        support::eventually(Duration::from_secs(20), || {
            let snap = engine.snapshot();
            snap.returned >= snap.diverted
        })
        .await,
        "every diverted record came back: {:?}",
        engine.snapshot()
    );
    // Wait a little for the lanes to see the end of their wait partitions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for a in &analyses {
        let payload = clearsale(a, "mfa", "2025-09-26T17:22:00.0000000Z");
        s.kafka
            .produce(&producer, &s.input, None, Some(a), payload.as_bytes(), &[])
            .await;
    }
    let cs_out = s.kafka.read_all(
        &s.config.output.clearsale_topic,
        cs_count + analyses.len(),
        Duration::from_secs(30),
    );
    assert_eq!(cs_out.len(), cs_count + analyses.len());
    assert_per_key_order(&lineage_by_key(&cs_out));
    assert_eq!(
        s.kafka.count(&s.wait_cs),
        in_wait,
        "after recovery nothing more is diverted"
    );
    let stats = engine.stop().await.expect("clean stop");
    assert_eq!(stats.dead_lettered_total(), 0);
    // The wait group committed what it read back.
    let wait_group = s.config.engine.isolation.wait_group(&group);
    let wait_ends = s.kafka.end_offsets(&s.wait_cs);
    let wait_committed = s.kafka.committed(&wait_group, &s.wait_cs, PARTITIONS);
    assert!(
        covered(wait_committed.clone(), &wait_ends),
        "wait group committed {wait_committed:?}, wait topic ends {wait_ends:?}"
    );
}

/// The issue's own measurement, at the default retry budget: 600 ClearSale and 600 Unico
/// webhooks, `max_in_flight = 200`, ClearSale answering 503. The ClearSale records already
/// started are within a retry budget far longer than the test (10 minutes): only the failure
/// streak across records can open the circuit, which stops their retries, diverts them and
/// frees their places. Without it, Unico stopped once the started ClearSale records held the
/// budget, until their budgets ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_circuit_within_the_retry_budget_and_unico_keeps_flowing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let down = Arc::new(AtomicBool::new(true));
    let mut s = setup(&down, 200).await;
    s.config.enrich.retry = webhook_enricher::enrich::EnrichSettings::default().retry;
    s.config.enrich.retry.max_elapsed = Duration::from_secs(600);
    s.config.engine.breaker = Default::default();
    let producer = s.kafka.producer();
    let mut cs_count = 0;
    let mut unico_count = 0;
    for _ in 0..600 {
        produce_clearsale(&s, &producer, &new_id(), "2025-09-26T17:21:00.0000000Z").await;
        cs_count += 1;
        produce_unico(&s, &producer).await;
        unico_count += 1;
    }
    let engine = RunningEngine::start(&s.config).await;

    // Well within the retry budget: every Unico record is published...
    assert_unico_flows(&s, unico_count, Duration::from_secs(90), &engine);
    // ...every ClearSale record waits in the wait topic, the circuit having opened...
    assert!(
        support::eventually(Duration::from_secs(60), || s.kafka.count(&s.wait_cs)
            >= cs_count as i64)
        .await,
        "ClearSale diverted: {} of {cs_count} in the wait topic ({:?})",
        s.kafka.count(&s.wait_cs),
        engine.snapshot()
    );
    let snapshot = engine.snapshot();
    assert!(snapshot.circuits_opened >= 1, "{snapshot:?}");
    let waiting = s.kafka.read_now(&s.wait_cs);
    assert!(
        waiting
            .iter()
            .any(|r| r.header(wait_headers::REASON) == "circuit_open"),
        "the records that were retrying left as circuit_open"
    );
    // ...the input's committed offsets reach its end, and nothing is dead-lettered.
    let group = s.config.kafka.group_id.clone();
    let ends = s.kafka.end_offsets(&s.input);
    assert!(
        support::eventually(Duration::from_secs(30), || {
            let committed = s.kafka.committed(&group, &s.input, PARTITIONS);
            ends.iter()
                .all(|(p, end)| *end == 0 || committed.get(p) == Some(end))
        })
        .await,
        "input committed {:?}, end {ends:?}",
        s.kafka.committed(&group, &s.input, PARTITIONS)
    );
    assert_eq!(s.kafka.count(&s.config.output.dead_letter_topic), 0);
    assert!(down.load(Ordering::SeqCst), "the outage is still on");

    // Recovery: every ClearSale record is published once.
    down.store(false, Ordering::SeqCst);
    let cs_out = s.kafka.read_all(
        &s.config.output.clearsale_topic,
        cs_count,
        Duration::from_secs(120),
    );
    assert_eq!(cs_out.len(), cs_count, "{:?}", engine.snapshot());
    let stats = engine.stop().await.expect("clean stop");
    assert_eq!(stats.dead_lettered_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_wait_topic_stops_the_start_with_its_name() {
    let down = Arc::new(AtomicBool::new(false));
    let mut s = setup(&down, 32).await;
    s.config.engine.isolation.unico_wait_topic = support::unique("no-such-wait-topic");
    let missing = s.config.engine.isolation.unico_wait_topic.clone();
    let engine = RunningEngine::start(&s.config).await;
    let error = engine
        .stop_when_done(Duration::from_secs(30))
        .await
        .expect_err("the engine refuses to start");
    let message = error.to_string();
    assert!(message.contains(&missing), "{message}");
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_topic_with_other_partitions_than_the_input_stops_the_start() {
    let down = Arc::new(AtomicBool::new(false));
    let mut s = setup(&down, 32).await;
    let odd = support::unique("odd-wait");
    s.kafka
        .cluster
        .create_topic(&odd, PARTITIONS + 1, 1)
        .expect("topic");
    s.config.engine.isolation.clearsale_wait_topic = odd.clone();
    let engine = RunningEngine::start(&s.config).await;
    let message = engine
        .stop_when_done(Duration::from_secs(30))
        .await
        .expect_err("the engine refuses to start")
        .to_string();
    assert!(
        message.contains(&odd) && message.contains("partitions"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_isolation_with_only_some_wait_topics_stops_the_start() {
    let down = Arc::new(AtomicBool::new(false));
    let mut s = setup(&down, 32).await;
    s.config.engine.isolation.enabled = Toggle::Auto;
    s.config.engine.isolation.unico_wait_topic = support::unique("missing-unico-wait");
    let missing = s.config.engine.isolation.unico_wait_topic.clone();
    let engine = RunningEngine::start(&s.config).await;
    let message = engine
        .stop_when_done(Duration::from_secs(30))
        .await
        .expect_err("one wait topic exists, the other does not: a mistake, not a choice")
        .to_string();
    assert!(message.contains(&missing), "{message}");
}

/// A webhook produced for the order and accounting checks.
struct Sent {
    partition: i32,
    offset: i64,
}

/// ClearSale notifications of `keys` analyses, `per_key` each (same partition per analysis, in
/// date order), interleaved with as many single Unico notifications.
async fn produce_ordered(s: &Setup, keys: usize, per_key: usize) -> Vec<Sent> {
    let producer = s.kafka.producer();
    let analyses: Vec<String> = (0..keys).map(|_| new_id()).collect();
    let mut sent = Vec::new();
    for round in 0..per_key {
        for (i, a) in analyses.iter().enumerate() {
            let date = format!("2025-09-26T17:21:{:02}.0000000Z", round);
            let partition = (i % PARTITIONS as usize) as i32;
            let (partition, offset) = s
                .kafka
                .produce(
                    &producer,
                    &s.input,
                    Some(partition),
                    Some(a),
                    clearsale(a, "mfa", &date).as_bytes(),
                    &[],
                )
                .await;
            sent.push(Sent { partition, offset });
            let id = new_id();
            let (partition, offset) = s
                .kafka
                .produce(
                    &producer,
                    &s.input,
                    Some(partition),
                    Some(&id),
                    unico(&id, "3").as_bytes(),
                    &[],
                )
                .await;
            sent.push(Sent { partition, offset });
        }
    }
    sent
}

/// The input (partition, offset) each published record names in its lineage.
fn published_inputs(records: &[OutRecord]) -> std::collections::HashSet<(i32, i64)> {
    let schema = webhook_enricher::avro::schema().expect("schema");
    records
        .iter()
        .map(|r| {
            let decoded = webhook_enricher::avro::decode(&r.value, schema).expect("avro");
            let record = webhook_enricher::avro::to_json(&decoded.value);
            let l = &record["lineage"];
            (
                l["partition"].as_i64().expect("partition") as i32,
                l["offset"].as_i64().expect("offset"),
            )
        })
        .collect()
}

/// Per key, the first publication of each input comes in input order (under at-least-once a
/// record published again after a crash may repeat, but never overtakes a later one the first
/// time).
fn assert_first_publications_in_order(by_key: &HashMap<String, Vec<i64>>) {
    for (key, offsets) in by_key {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<i64> = offsets
            .iter()
            .copied()
            .filter(|o| seen.insert(*o))
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "key {key}: first publications out of input order: {offsets:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_a_lane_is_diverted_then_a_restart_accounts_for_every_input_in_order() {
    let down = Arc::new(AtomicBool::new(false));
    let mut s = setup(&down, 32).await;
    // ClearSale on the simulator, whose outage the test switches.
    s.config.clearsale.base_url = s.sim.base_url();
    s.config
        .kafka
        .consumer
        .0
        .insert("session.timeout.ms".into(), "6000".into());
    s.config.engine.revoke_drain_timeout = Duration::from_secs(3);
    let dir = tempfile::tempdir().expect("tempdir");
    s.sim.set_outage(Provider::ClearSale, true);
    let sent = produce_ordered(&s, 12, 6).await;
    let cs_total = sent.len() / 2;

    let mut first = support::spawn_run(&s.config, dir.path(), "iso-kill9-first");
    let diverted = support::eventually(Duration::from_secs(60), || {
        s.kafka.count(&s.wait_cs) >= (cs_total / 2) as i64
            && s.kafka.count(&s.config.output.unico_topic) >= 20
    })
    .await;
    assert!(diverted, "no diversion before the kill\n{}", first.tail());
    first.kill_now();
    s.sim.set_outage(Provider::ClearSale, false);

    let mut second = support::spawn_run(&s.config, dir.path(), "iso-kill9-second");
    let group = s.config.kafka.group_id.clone();
    let wait_group = s.config.engine.isolation.wait_group(&group);
    let ends = s.kafka.end_offsets(&s.input);
    let all_in = |committed: HashMap<i32, i64>, ends: &HashMap<i32, i64>| {
        ends.iter()
            .all(|(p, end)| *end == 0 || committed.get(p) == Some(end))
    };
    let done = support::eventually(Duration::from_secs(120), || {
        all_in(s.kafka.committed(&group, &s.input, PARTITIONS), &ends)
            && all_in(
                s.kafka.committed(&wait_group, &s.wait_cs, PARTITIONS),
                &s.kafka.end_offsets(&s.wait_cs),
            )
    })
    .await;
    assert!(
        done,
        "not everything committed after the restart\n{}",
        second.tail()
    );
    second.signal("TERM");
    let status = second.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        second.tail()
    );

    let mut published =
        support::read_to_end(&s.kafka.bootstrap, &s.config.output.clearsale_topic).await;
    let cs_published = published.clone();
    published.extend(support::read_to_end(&s.kafka.bootstrap, &s.config.output.unico_topic).await);
    assert_eq!(
        s.kafka.count(&s.config.output.dead_letter_topic),
        0,
        "nothing is dead-lettered for an outage"
    );
    let inputs = published_inputs(&published);
    for input in &sent {
        assert!(
            inputs.contains(&(input.partition, input.offset)),
            "input {}:{} was never published",
            input.partition,
            input.offset
        );
    }
    assert_first_publications_in_order(&lineage_by_key(&cs_published));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_rebalance_while_a_lane_is_diverted_and_keep_order() {
    let down = Arc::new(AtomicBool::new(true));
    let mut s = setup(&down, 32).await;
    s.config.engine.revoke_drain_timeout = Duration::from_secs(1);
    for (k, v) in [
        ("session.timeout.ms", "4000"),
        ("heartbeat.interval.ms", "300"),
    ] {
        s.config.kafka.consumer.0.insert(k.into(), v.into());
    }
    let sent = produce_ordered(&s, 12, 4).await;
    let first = RunningEngine::start(&s.config).await;
    assert!(
        support::eventually(Duration::from_secs(60), || first.snapshot().diverted >= 20).await,
        "{:?}",
        first.snapshot()
    );
    // A second instance joins while ClearSale's lanes are diverted: the partitions and their
    // wait partitions move together.
    let second = RunningEngine::start(&s.config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || second.snapshot().consumed > 0).await,
        "the second instance never got a partition: {:?}",
        second.snapshot()
    );
    let more = produce_ordered(&s, 6, 3).await;
    down.store(false, Ordering::SeqCst);
    let expected = sent.len() + more.len();
    let cs = s.config.output.clearsale_topic.clone();
    let unico_topic = s.config.output.unico_topic.clone();
    assert!(
        support::eventually(Duration::from_secs(90), || {
            let mut all = s.kafka.read_now(&cs);
            all.extend(s.kafka.read_now(&unico_topic));
            published_inputs(&all).len() >= expected
        })
        .await,
        "first {:?} second {:?}",
        first.snapshot(),
        second.snapshot()
    );
    let a = second.stop().await.expect("second stops");
    let b = first.stop().await.expect("first stops");
    assert_eq!(a.dead_lettered_total() + b.dead_lettered_total(), 0);
    let cs_published = s.kafka.read_now(&cs);
    assert_first_publications_in_order(&lineage_by_key(&cs_published));
}

/// ClearSale answers 500 for the ids in the set, and normally for every other id.
#[derive(Clone)]
struct FailingIds(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Respond for FailingIds {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let id = request.url.path().rsplit('/').next().unwrap_or_default();
        if self.0.lock().expect("lock").contains(id) {
            ResponseTemplate::new(500).set_body_json(json!({"title": "boom", "status": 500}))
        } else {
            ResponseTemplate::new(200).set_body_json(json!({"mfa": {"status": "approved"}}))
        }
    }
}

fn rfc3339(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .with_timezone(&chrono::Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_get_retry_rounds_through_the_wait_topic_before_the_dead_letter_in_key_order(
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let down = Arc::new(AtomicBool::new(false));
    let mut s = setup(&down, 32).await;
    // Two poison analyses: `always` never answers, `healed` answers once the test fixes it.
    let always = new_id();
    let healed = new_id();
    let failing = FailingIds(Arc::new(std::sync::Mutex::new(
        [always.clone(), healed.clone()].into_iter().collect(),
    )));
    Mock::given(method("GET"))
        .and(path_regex(r"^/connect/v1/integration/analysis/.+$"))
        .respond_with(failing.clone())
        .with_priority(1)
        .mount(&s._peer)
        .await;
    s.config.enrich.retry.max_elapsed = Duration::from_millis(300);
    s.config.engine.isolation.retry_rounds =
        vec![Duration::from_secs(1).into(), Duration::from_secs(2).into()];
    let engine = RunningEngine::start(&s.config).await;
    let producer = s.kafka.producer();
    // Each poison analysis has two notifications (the second must never overtake the first).
    let mut poison_offsets: HashMap<String, Vec<i64>> = HashMap::new();
    for second in 0..2 {
        for a in [&always, &healed] {
            let date = format!("2025-09-26T17:21:{second:02}.0000000Z");
            let (_, offset) = s
                .kafka
                .produce(
                    &producer,
                    &s.input,
                    Some(0),
                    Some(a),
                    clearsale(a, "mfa", &date).as_bytes(),
                    &[],
                )
                .await;
            poison_offsets.entry(a.clone()).or_default().push(offset);
        }
    }
    // Healthy ClearSale records keep arriving on the same partition (the provider serves
    // others, which is what makes a record whose retries ran out a poison record).
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, kafka_producer, input) = (stop.clone(), producer.clone(), s.input.clone());
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let id = new_id();
                let payload = clearsale(&id, "mfa", "2025-09-26T17:21:00.0000000Z");
                let record = rdkafka::producer::FutureRecord::to(&input)
                    .partition(0)
                    .key(&id)
                    .payload(&payload);
                kafka_producer
                    .send(record, Duration::from_secs(5))
                    .await
                    .expect("produce");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };

    // A poison record's first failure opens the circuit (it could be an outage), so it goes to
    // the wait topic with its lane; read back, its retries run out while the provider serves the
    // healthy records, and it waits out its retry rounds there, holding its key.
    // (Both analyses are in the wait topic before `healed` heals: on a busy machine `always` can
    // start its first round before `healed` has failed at all.)
    let in_wait = |key: &str| {
        s.kafka
            .read_now(&s.wait_cs)
            .iter()
            .any(|r| r.key.as_deref() == Some(key))
    };
    assert!(
        support::eventually(Duration::from_secs(60), || engine.snapshot().retry_rounds
            >= 1
            && in_wait(&always)
            && in_wait(&healed))
        .await,
        "no retry round started: {:?}",
        engine.snapshot()
    );
    failing.0.lock().expect("lock").remove(&healed);
    let waited: Vec<OutRecord> = s.kafka.read_now(&s.wait_cs);
    for key in [&always, &healed] {
        assert!(
            waited
                .iter()
                .any(|r| r.key.as_deref() == Some(key.as_str())),
            "the poison analysis went through the wait topic"
        );
    }
    for r in &waited {
        if r.header(wait_headers::REASON) == "retries_exhausted" {
            // Diverted straight from the input for its first round (when its circuit stayed
            // closed): it says which round and when it is due.
            assert_eq!(r.header(wait_headers::ROUND), "1");
            let seen = rfc3339(r.header(wait_headers::FIRST_SEEN));
            let due = rfc3339(r.header(wait_headers::NOT_BEFORE));
            assert!(due >= seen + chrono::Duration::seconds(1), "{seen} → {due}");
        }
    }

    // `always` runs out of rounds: both its notifications are dead-lettered, in input order.
    let dlq = s.kafka.read_all(
        &s.config.output.dead_letter_topic,
        2,
        Duration::from_secs(90),
    );
    assert_eq!(dlq.len(), 2, "{:?}", engine.snapshot());
    let mut dead: Vec<(i32, i64, i64)> = dlq
        .iter()
        .map(|r| {
            assert_eq!(r.key.as_deref(), Some(always.as_str()));
            assert_eq!(r.header("__connect.errors.class.name"), "retries_exhausted");
            assert_eq!(
                r.header("__connect.errors.topic"),
                s.input,
                "names the input"
            );
            (
                r.partition,
                r.offset,
                r.header("__connect.errors.offset").parse().expect("offset"),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead.iter().map(|d| d.2).collect::<Vec<_>>(),
        poison_offsets[&always],
        "dead-lettered in input order"
    );
    let first = dlq
        .iter()
        .find(|r| r.header("__connect.errors.offset") == poison_offsets[&always][0].to_string())
        .expect("first");
    assert!(
        first
            .header("__connect.errors.exception.message")
            .contains("after 2 retry rounds"),
        "{}",
        first.header("__connect.errors.exception.message")
    );
    // Its two rounds (1 s and 2 s) passed between its input record and its dead letter.
    let written = first
        .header("__connect.errors.timestamp")
        .parse::<i64>()
        .expect("ts");
    let failed_at = rfc3339(first.header("__connect.errors.failed.at"));
    assert!(
        failed_at.timestamp_millis() - written >= 3_000,
        "dead-lettered {} ms after it was written",
        failed_at.timestamp_millis() - written
    );

    // `healed` is published after its round, both notifications, in input order.
    assert!(
        support::eventually(Duration::from_secs(60), || {
            let out = s.kafka.read_now(&s.config.output.clearsale_topic);
            lineage_by_key(&out)
                .get(&healed)
                .is_some_and(|o| o.len() == 2)
        })
        .await,
        "the healed analysis was not published: {:?}",
        engine.snapshot()
    );
    stop.store(true, Ordering::SeqCst);
    let healthy = feeder.await.expect("feeder");
    let out = s.kafka.read_all(
        &s.config.output.clearsale_topic,
        healthy + 2,
        Duration::from_secs(60),
    );
    assert_eq!(
        out.len(),
        healthy + 2,
        "every healthy record published once"
    );
    let by_key = lineage_by_key(&out);
    assert_per_key_order(&by_key);
    assert_eq!(by_key[&healed], poison_offsets[&healed]);
    // The lanes return to direct once the rounds are over.
    assert!(
        support::eventually(Duration::from_secs(30), || {
            let snap = engine.snapshot();
            snap.returned >= snap.diverted
        })
        .await,
        "{:?}",
        engine.snapshot()
    );
    let stats = engine.stop().await.expect("clean stop");
    assert_eq!(stats.dead_lettered_total(), 2, "{stats:?}");
    assert!(
        stats.retry_rounds >= 4,
        "both notifications of `always` had both rounds: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slower_than_its_arrivals_is_diverted_and_published_once_its_backlog_drains() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let down = Arc::new(AtomicBool::new(false));
    let mut s = setup(&down, 200).await;
    // Unico held to its tenant's 10 requests/s while it is 5% of a backlog: its share of the
    // budget (150) fills and would take 15 s to drain, longer than `divert_after` (5 s here):
    // it is diverted about a second after it filled.
    s.config.unico.limits.rate_per_second = 10;
    s.config.unico.limits.burst = 1;
    // ClearSale as fast as the machine allows (its default limit is 50 requests/s).
    s.config.clearsale.limits.rate_per_second = 0;
    s.config.clearsale.limits.max_concurrent = 0;
    let producer = s.kafka.producer();
    let (mut cs_count, mut unico_ids) = (0usize, Vec::new());
    for i in 0..4000 {
        let partition = Some((i % PARTITIONS as usize) as i32);
        let id = new_id();
        let payload = if i % 20 == 0 {
            unico_ids.push(id.clone());
            unico(&id, "3")
        } else {
            cs_count += 1;
            clearsale(&id, "mfa", "2025-09-26T17:21:00.0000000Z")
        };
        s.kafka
            .produce(
                &producer,
                &s.input,
                partition,
                Some(&id),
                payload.as_bytes(),
                &[],
            )
            .await;
    }
    let engine = RunningEngine::start(&s.config).await;
    // ClearSale is not held back behind Unico: all of it is published while Unico still has
    // most of its backlog ahead (200 records at 10/s take 20 s).
    let cs_out = s.kafka.read_all(
        &s.config.output.clearsale_topic,
        cs_count,
        Duration::from_secs(60),
    );
    assert_eq!(cs_out.len(), cs_count);
    let unico_now = s.kafka.count(&s.config.output.unico_topic);
    assert!(
        (unico_now as usize) < unico_ids.len(),
        "ClearSale finished before Unico's backlog ({unico_now} of {} Unico published)",
        unico_ids.len()
    );
    // Unico was diverted as slow, not for an outage.
    let wait_unico = format!("{}.wait.unico", s.input);
    let waiting = s.kafka.read_now(&wait_unico);
    assert!(
        !waiting.is_empty(),
        "Unico diverted: {:?}",
        engine.snapshot()
    );
    assert!(waiting
        .iter()
        .any(|r| r.header(wait_headers::REASON) == "provider_slow"));
    assert_eq!(s.kafka.count(&s.wait_cs), 0, "ClearSale never diverted");
    // Every Unico record is published once its backlog drains.
    let unico_out = s.kafka.read_all(
        &s.config.output.unico_topic,
        unico_ids.len(),
        Duration::from_secs(90),
    );
    assert_eq!(unico_out.len(), unico_ids.len());
    let published: std::collections::HashSet<String> =
        unico_out.iter().filter_map(|r| r.key.clone()).collect();
    assert!(unico_ids.iter().all(|id| published.contains(id)));
    let stats = engine.stop().await.expect("clean stop");
    assert_eq!(stats.dead_lettered_total(), 0, "{stats:?}");
}
