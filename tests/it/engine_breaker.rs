//! The circuit breaker inside the running engine: a half-open probe cancelled by a revocation
//! does not wedge its provider, and a rebalance during an outage cancels the records that only
//! wait instead of holding the group for the revocation deadline.

use crate::support::{self, clearsale, new_id, Kafka, RunningEngine};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use webhook_enricher::config::Config;
use webhook_enricher::simulator::SimulatorConfig;
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

const DATE: &str = "2025-09-26T17:21:11.0367845Z";

const DOWN: u8 = 0;
const HANG: u8 = 1;
const UP: u8 = 2;

/// ClearSale's result endpoint, switchable between down (503), up, and "hang the next request,
/// then down".
#[derive(Clone)]
struct Switch(Arc<AtomicU8>);

impl Respond for Switch {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self
            .0
            .compare_exchange(HANG, DOWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return ResponseTemplate::new(200)
                .set_body_json(json!({"mfa": {"status": "approved"}}))
                .set_delay(Duration::from_secs(300));
        }
        match self.0.load(Ordering::SeqCst) {
            UP => ResponseTemplate::new(200).set_body_json(json!({"mfa": {"status": "approved"}})),
            _ => ResponseTemplate::new(503),
        }
    }
}

async fn clearsale_peer(mode: &Arc<AtomicU8>) -> MockServer {
    support::clearsale_peer(Switch(mode.clone())).await
}

/// A group whose rebalances complete quickly on the mock coordinator.
fn group_config(
    kafka: &Kafka,
    sim: &webhook_enricher::simulator::SimulatorHandle,
    input: &str,
    peer: &MockServer,
) -> Config {
    let mut config = support::config(kafka, sim, input);
    config.clearsale.base_url = peer.uri();
    config.clearsale.limits.rate_per_second = 0;
    config.clearsale.http.request_timeout = Duration::from_secs(600);
    config.engine.revoke_drain_timeout = Duration::from_secs(1);
    for (k, v) in [
        ("session.timeout.ms", "4000"),
        ("heartbeat.interval.ms", "300"),
    ] {
        config.kafka.consumer.0.insert(k.into(), v.into());
    }
    config
}

/// The servers an [`outage`] test runs against, kept alive for its length.
struct Peers {
    _sim: webhook_enricher::simulator::SimulatorHandle,
    _clearsale: MockServer,
}

/// A two-partition input, the simulator, and ClearSale behind a switchable peer that starts
/// down: the input, the cluster, the peer's switch, [`group_config`]'s configuration, and the
/// servers.
async fn outage(name: &str) -> (String, Kafka, Arc<AtomicU8>, Config, Peers) {
    let input = support::unique(name);
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let mode = Arc::new(AtomicU8::new(DOWN));
    let peer = clearsale_peer(&mode).await;
    let config = group_config(&kafka, &sim, &input, &peer);
    (
        input,
        kafka,
        mode,
        config,
        Peers {
            _sim: sim,
            _clearsale: peer,
        },
    )
}

/// Defect: the probe permit was a plain value. A probe in flight when its partition was revoked
/// was cancelled at the revocation deadline, left the circuit half-open, and every later record
/// of the provider waited forever (while liveness stayed green).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_cancelled_by_a_revocation_does_not_wedge_the_provider() {
    let (input, kafka, mode, mut config, _peers) = outage("probe-revoked").await;
    // The first failure opens the circuit; probes come every 200 ms.
    config.enrich.retry.max_elapsed = Duration::from_millis(1);
    config.engine.breaker.open_for = Duration::from_millis(200);
    config.engine.breaker.max_open_for = Duration::from_millis(200);
    let producer = kafka.producer();
    let payloads: Vec<String> = (0..8).map(|_| clearsale(&new_id(), "mfa", DATE)).collect();
    kafka.produce_spread(&producer, &input, 2, &payloads).await;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine
            .snapshot()
            .circuits_opened
            > 0)
        .await,
        "{:?}",
        engine.snapshot()
    );
    // The next probe hangs: it is in flight when the rebalance comes.
    mode.store(HANG, Ordering::SeqCst);
    assert!(
        support::eventually(Duration::from_secs(30), || mode.load(Ordering::SeqCst)
            == DOWN)
        .await,
        "no probe was sent"
    );
    // A second member joins: the first engine's partitions are revoked, the hanging probe is
    // abandoned at the revocation deadline (1 s).
    let second = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().abandoned > 0).await,
        "the probe was not abandoned: {:?}",
        engine.snapshot()
    );
    mode.store(UP, Ordering::SeqCst);
    let group = &config.kafka.group_id;
    let all = HashMap::from([(0, 4), (1, 4)]);
    assert!(
        support::eventually(Duration::from_secs(40), || kafka
            .committed(group, &input, 2)
            == all)
        .await,
        "a provider stayed wedged: {:?} first {:?} second {:?}",
        kafka.committed(group, &input, 2),
        engine.snapshot(),
        second.snapshot()
    );
    let a = second.stop().await.expect("second engine stops");
    let b = engine.stop().await.expect("first engine stops");
    assert_eq!(a.dead_lettered_total() + b.dead_lettered_total(), 0);
    assert!(
        a.published > 0 && b.published > 0,
        "both members publish once the provider is back: {a:?} {b:?}"
    );
}

/// Defect: records sleeping between retries during an outage counted as running, so every
/// rebalance held the group for the whole revocation deadline and then abandoned them. They
/// have nothing in flight: a revocation now stops them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_during_an_outage_cancels_the_waiting_records_at_once() {
    let (input, kafka, mode, mut config, _peers) = outage("outage-rebalance").await;
    // A long retry budget: during the whole test the records are between attempts.
    config.enrich.retry.max_elapsed = Duration::from_secs(600);
    config.engine.revoke_drain_timeout = Duration::from_secs(3);
    let producer = kafka.producer();
    let payloads: Vec<String> = (0..8).map(|_| clearsale(&new_id(), "mfa", DATE)).collect();
    kafka.produce_spread(&producer, &input, 2, &payloads).await;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || engine.snapshot().consumed >= 8).await,
        "{:?}",
        engine.snapshot()
    );
    let second = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || second.snapshot().consumed > 0).await,
        "the second member never got a partition: {:?}",
        second.snapshot()
    );
    mode.store(UP, Ordering::SeqCst);
    let group = &config.kafka.group_id;
    let all = HashMap::from([(0, 4), (1, 4)]);
    assert!(
        support::eventually(Duration::from_secs(60), || kafka
            .committed(group, &input, 2)
            == all)
        .await,
        "{:?}",
        kafka.committed(group, &input, 2)
    );
    let a = second.stop().await.expect("second engine stops");
    let b = engine.stop().await.expect("first engine stops");
    assert_eq!(
        b.abandoned, 0,
        "records that only waited were abandoned at the deadline instead of stopped: {b:?}"
    );
    assert_eq!(a.dead_lettered_total() + b.dead_lettered_total(), 0);
}

/// Without provider isolation: a provider that answers nothing opens its circuit on the failure
/// streak across records (`engine.breaker.failure_streak`), long before any record's retry
/// budget (here 10 minutes) could run out. The records retrying then stop and wait for the
/// circuit (counted as paused), nothing is dead-lettered, and after recovery every record is
/// published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_streak_opens_the_circuit_and_the_retrying_records_wait_for_it() {
    let (input, kafka, mode, mut config, _peers) = outage("streak").await;
    config.enrich.retry.max_elapsed = Duration::from_secs(600);
    config.engine.breaker.failure_streak = 20;
    config.engine.breaker.failure_streak_for = Duration::from_millis(500);
    let producer = kafka.producer();
    let payloads: Vec<String> = (0..30).map(|_| clearsale(&new_id(), "mfa", DATE)).collect();
    kafka.produce_spread(&producer, &input, 2, &payloads).await;

    let engine = RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(60), || {
            let s = engine.snapshot();
            s.circuits_opened > 0 && s.systemic_pauses > 0
        })
        .await,
        "the streak opened the circuit and stopped the retries: {:?}",
        engine.snapshot()
    );
    assert_eq!(engine.snapshot().published, 0, "the provider is still down");
    mode.store(UP, Ordering::SeqCst);
    let out = kafka.read_all(
        &config.output.clearsale_topic,
        payloads.len(),
        Duration::from_secs(60),
    );
    assert_eq!(out.len(), payloads.len(), "{:?}", engine.snapshot());
    let stats = engine.stop().await.expect("clean stop");
    assert_eq!(stats.dead_lettered_total(), 0);
}
