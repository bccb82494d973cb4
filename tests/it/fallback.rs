//! The polling fallback (`[fallback]`, issue 11): expectations on their own topic,
//! co-partitioned with the input; a result whose webhook does not come is polled and published
//! with `trigger_source: poll`; a webhook and a poll of one result publish one record. Against the
//! mock cluster and the simulator (which answers every poll). No assertion on a duration: the
//! tests count records, provider calls and committed offsets.

use crate::support::{self, unico, Kafka, OutRecord, RunningEngine};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use webhook_enricher::config::Config;
use webhook_enricher::engine::dead_letter::names as dlq;
use webhook_enricher::engine::EngineError;
use webhook_enricher::provider::Provider;
use webhook_enricher::simulator::{Operation, SimulatorConfig, SimulatorHandle};

const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    kafka: Kafka,
    config: Config,
    input: String,
    expectations: String,
    sim: SimulatorHandle,
}

impl Setup {
    async fn new(expectation_partitions: i32) -> Self {
        Self::with_simulator(expectation_partitions, SimulatorConfig::default()).await
    }

    async fn with_simulator(expectation_partitions: i32, sim: SimulatorConfig) -> Self {
        let input = support::unique("fb");
        let expectations = format!("{input}.expectations");
        let kafka = Kafka::new(&[
            (&input, PARTITIONS),
            (&expectations, expectation_partitions),
        ]);
        let sim = support::start_simulator(sim).await;
        let mut config = support::config(&kafka, &sim, &input);
        config.fallback.enabled = true;
        config.fallback.expectations_topic = expectations.clone();
        // Counted from each expectation's creation: long enough for the engine to join the
        // group and publish the webhooks first on a busy machine, so the tests can tell which
        // path published a result.
        config.fallback.after = Duration::from_secs(5);
        config.fallback.poll_interval = Duration::from_millis(200);
        config.fallback.max_poll_interval = Duration::from_millis(500);
        config.fallback.max_wait = Duration::from_secs(120);
        Self {
            kafka,
            config,
            input,
            expectations,
            sim,
        }
    }

    fn group(&self) -> String {
        self.config
            .fallback
            .expectations_group(&self.config.kafka.group_id)
    }

    fn unico_topic(&self) -> String {
        self.config.output.unico_topic.clone()
    }

    /// Writes an expectation keyed like the raw webhook (the partitioner places both alike).
    async fn expect(&self, producer: &rdkafka::producer::FutureProducer, id: &str, statuses: &str) {
        let created = chrono::Utc::now().to_rfc3339();
        let value = format!(
            r#"{{"provider":"unico","id":"{id}","created_at":"{created}","expect":{statuses}}}"#
        );
        self.kafka
            .produce(
                producer,
                &self.expectations,
                None,
                Some(id),
                value.as_bytes(),
                &[],
            )
            .await;
    }

    async fn webhook(&self, producer: &rdkafka::producer::FutureProducer, id: &str) {
        self.kafka
            .produce(
                producer,
                &self.input,
                None,
                Some(id),
                unico(id, "3").as_bytes(),
                &[],
            )
            .await;
    }

    /// True once every expectation written is resolved and committed.
    fn expectations_committed(&self) -> bool {
        let end = self.kafka.end_offsets(&self.expectations);
        let committed = self
            .kafka
            .committed(&self.group(), &self.expectations, PARTITIONS);
        end.iter()
            .all(|(p, e)| support::committed_of(&committed, *p) == *e)
    }

    /// Result requests the simulator answered for `id`.
    fn fetches(&self, id: &str) -> usize {
        self.sim
            .calls()
            .iter()
            .filter(|c| c.operation == Operation::GetProcess && c.subject.as_deref() == Some(id))
            .count()
    }
}

/// Every expectation waits for any Unico status the simulator may answer (2, 3 or 4).
const ANY: &str = "[2,3,4,5]";

fn by_subject(records: &[OutRecord]) -> HashMap<String, Vec<&OutRecord>> {
    let mut m: HashMap<String, Vec<&OutRecord>> = HashMap::new();
    for r in records {
        m.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    m
}

/// 20 % of the webhooks are withheld: every result is still published, once, the withheld ones
/// by a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_webhooks_are_recovered_by_polling() {
    let s = Setup::new(PARTITIONS).await;
    let producer = s.kafka.producer();
    let ids: Vec<String> = (0..20).map(|_| support::new_id()).collect();
    let withheld: HashSet<&String> = ids.iter().step_by(5).collect();
    assert_eq!(withheld.len(), 4);
    let engine = RunningEngine::start(&s.config).await;
    for id in &ids {
        s.expect(&producer, id, ANY).await;
        if !withheld.contains(id) {
            s.webhook(&producer, id).await;
        }
    }
    let out = s.kafka.read_all(&s.unico_topic(), ids.len(), WAIT);
    let subjects = by_subject(&out);
    assert_eq!(out.len(), ids.len(), "one record per result: {subjects:?}");
    for id in &ids {
        let records = &subjects[id];
        assert_eq!(records.len(), 1, "{id}");
        let r = records[0];
        let source = if withheld.contains(id) {
            "poll"
        } else {
            "webhook"
        };
        assert_eq!(r.header("trigger_source"), source, "{id}");
        assert!(!r.header("result_id").is_empty(), "{id}");
    }
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    engine.stop().await.expect("clean stop");
}

/// Healthy webhooks: every expectation resolves by its webhook and the provider is never
/// polled (one result request per id: the webhook's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_webhooks_cause_no_polls() {
    let s = Setup::new(PARTITIONS).await;
    let producer = s.kafka.producer();
    let ids: Vec<String> = (0..10).map(|_| support::new_id()).collect();
    let engine = RunningEngine::start(&s.config).await;
    for (i, id) in ids.iter().enumerate() {
        // Half the expectations come before their webhook, half after it.
        if i % 2 == 0 {
            s.expect(&producer, id, ANY).await;
            s.webhook(&producer, id).await;
        } else {
            s.webhook(&producer, id).await;
            s.expect(&producer, id, ANY).await;
        }
    }
    // An expectation is committed only once resolved: by its webhook, or by a poll, which
    // would show as a second request below.
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    let out = s.kafka.read_all(&s.unico_topic(), ids.len(), WAIT);
    assert_eq!(out.len(), ids.len());
    assert!(out.iter().all(|r| r.header("trigger_source") == "webhook"));
    for id in &ids {
        assert_eq!(s.fetches(id), 1, "{id} was polled");
    }
    assert_eq!(engine.snapshot().fallback_polls, 0);
    engine.stop().await.expect("clean stop");
}

/// A webhook that arrives after a poll published its result: no second record (the result
/// identity is shared), and the late webhook is counted as deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_webhook_after_a_poll_publishes_no_second_record() {
    let s = Setup::new(PARTITIONS).await;
    let producer = s.kafka.producer();
    let id = support::new_id();
    let engine = RunningEngine::start(&s.config).await;
    s.expect(&producer, &id, ANY).await;
    let polled = s.kafka.read_all(&s.unico_topic(), 1, WAIT);
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0].header("trigger_source"), "poll");
    s.webhook(&producer, &id).await;
    assert!(
        support::eventually(WAIT, || engine.snapshot().deduplicated == 1).await,
        "{:?}",
        engine.snapshot()
    );
    let out = s
        .kafka
        .read_all(&s.unico_topic(), 2, Duration::from_secs(2));
    assert_eq!(out.len(), 1, "a second decision for one result");
    assert_eq!(engine.snapshot().published, 1, "only the poll published");
    assert_eq!(engine.snapshot().resolved_by_poll, 1);
    engine.stop().await.expect("clean stop");
}

/// kill -9 with pending expectations: the engine is dropped without a final commit while its
/// expectations wait; the next engine reads them again and resolves every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_expectations_survive_a_crash() {
    let mut s = Setup::new(PARTITIONS).await;
    // The first engine never polls in this test's lifetime.
    s.config.fallback.after = Duration::from_secs(3600);
    s.config.fallback.max_wait = Duration::from_secs(7200);
    let producer = s.kafka.producer();
    let ids: Vec<String> = (0..6).map(|_| support::new_id()).collect();
    for id in &ids {
        s.expect(&producer, id, ANY).await;
    }
    let stats = std::sync::Arc::new(webhook_enricher::engine::stats::EngineStats::default());
    let parts = webhook_enricher::app::build_parts(&s.config, stats.clone())
        .await
        .expect("engine parts");
    let settings = s.config.engine_run_settings();
    let crashed = tokio::spawn(async move {
        webhook_enricher::engine::run(&settings, parts, std::future::pending::<()>()).await
    });
    // The first engine has read the expectations once they all wait.
    assert!(
        support::eventually(WAIT, || stats.snapshot().expectations_waiting
            == ids.len() as u64)
        .await,
        "the expectations were not read"
    );
    crashed.abort();
    assert!(crashed.await.is_err_and(|e| e.is_cancelled()));
    assert!(
        !s.expectations_committed(),
        "nothing was resolved, nothing committed"
    );

    s.config.fallback.after = Duration::ZERO;
    s.config.fallback.max_wait = Duration::from_secs(120);
    let engine = RunningEngine::start(&s.config).await;
    let out = s.kafka.read_all(&s.unico_topic(), ids.len(), WAIT);
    let subjects = by_subject(&out);
    assert_eq!(out.len(), ids.len(), "{subjects:?}");
    for id in &ids {
        assert_eq!(subjects[id][0].header("trigger_source"), "poll");
    }
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    engine.stop().await.expect("clean stop");
}

/// A provider outage while expectations wait for polls: the polls wait at the circuit (one
/// probe per open period, no storm), and every result is published once the provider is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_the_fallback_bounds_the_polls_and_recovers() {
    let mut s = Setup::new(PARTITIONS).await;
    s.config.fallback.after = Duration::ZERO;
    let producer = s.kafka.producer();
    let ids: Vec<String> = (0..5).map(|_| support::new_id()).collect();
    s.sim.set_outage(Provider::Unico, true);
    let engine = RunningEngine::start(&s.config).await;
    for id in &ids {
        s.expect(&producer, id, ANY).await;
    }
    // Every Unico request: the outage began before the first token, so most are token
    // requests (a refused token is a systemic failure like a refused result).
    let requests = |sim: &SimulatorHandle| {
        sim.calls()
            .iter()
            .filter(|c| c.provider == Provider::Unico)
            .count()
    };
    // The first polls spend their retry budget (`enrich.retry.max_elapsed`, 2 s here) and open
    // the circuit; once it has opened a few times, every poll waits at the circuit.
    let opened = |n: u64| {
        let engine = &engine;
        async move {
            assert!(
                support::eventually(WAIT, || engine.snapshot().circuits_opened >= n).await,
                "{:?}",
                engine.snapshot()
            );
            engine.snapshot().circuits_opened
        }
    };
    let opens_before = opened(6).await;
    let calls_before = requests(&s.sim);
    // Three more open periods of the outage.
    let opens_after = opened(opens_before + 3).await;
    let calls_after = requests(&s.sim);
    // One probe per open period (a failed probe opens it again), whatever the number of
    // expectations waiting: no storm.
    let calls = calls_after - calls_before;
    let opens = (opens_after - opens_before) as usize;
    assert!(
        calls >= 1 && calls <= opens + 1,
        "{calls} Unico requests during {opens} open periods"
    );
    s.sim.set_outage(Provider::Unico, false);
    let out = s.kafka.read_all(&s.unico_topic(), ids.len(), WAIT);
    assert_eq!(by_subject(&out).len(), ids.len());
    assert_eq!(out.len(), ids.len());
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    engine.stop().await.expect("clean stop");
}

/// An expectations topic with another partition count than the input: start-up fails, naming
/// both topics and their counts; a missing one is named too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_when_the_topics_are_not_co_partitioned() {
    let s = Setup::new(PARTITIONS + 1).await;
    let engine = RunningEngine::start(&s.config).await;
    let err = engine
        .stop_when_done(WAIT)
        .await
        .expect_err("start-up must fail");
    let EngineError::Expectations(message) = &err else {
        panic!("{err:?}")
    };
    for needle in [
        s.expectations.as_str(),
        s.input.as_str(),
        "has 3 partitions",
        "has 2",
        "co-partitioned",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }

    let mut missing = s.config.clone();
    missing.fallback.expectations_topic = format!("{}.missing", s.expectations);
    let err = RunningEngine::start(&missing)
        .await
        .stop_when_done(WAIT)
        .await
        .expect_err("start-up must fail");
    assert!(
        err.to_string().contains("does not exist") && err.to_string().contains(".missing"),
        "{err}"
    );
}

/// With the fallback disabled, nothing changes: the expectations topic is not read (no
/// commits in its group, nothing polled) and records carry exactly the headers they always had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_fallback_changes_nothing() {
    let mut s = Setup::new(PARTITIONS + 1).await;
    s.config.fallback.enabled = false;
    let producer = s.kafka.producer();
    let polled_id = support::new_id();
    s.expect(&producer, &polled_id, ANY).await;
    let id = support::new_id();
    let engine = RunningEngine::start(&s.config).await;
    s.webhook(&producer, &id).await;
    let out = s.kafka.read_all(&s.unico_topic(), 1, WAIT);
    assert_eq!(out.len(), 1);
    let names: Vec<&str> = out[0].header_list.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "provider",
            "state",
            "trigger",
            "content-type",
            "schema-fingerprint",
            "schema-name",
            "schema-version"
        ],
        "the headers of a record without the fallback"
    );
    engine.stop().await.expect("clean stop");
    assert_eq!(s.fetches(&polled_id), 0, "an expectation was polled");
    let committed = s
        .kafka
        .committed(&s.group(), &s.expectations, PARTITIONS + 1);
    assert!(committed.values().all(|o| *o <= 0), "{committed:?}");
}

/// A malformed expectation, or one keyed unlike its webhooks, is dead-lettered with its class and
/// the expectations topic as its source (never dropped, never a crash); one with no final result by its deadline is
/// dead-lettered as `expectation_expired`. Both offsets are committed once acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_expired_expectations_are_dead_lettered() {
    let mut s = Setup::new(PARTITIONS).await;
    s.config.fallback.after = Duration::ZERO;
    s.config.fallback.max_wait = Duration::from_secs(1);
    let producer = s.kafka.producer();
    let engine = RunningEngine::start(&s.config).await;
    s.kafka
        .produce(
            &producer,
            &s.expectations,
            Some(0),
            Some("k"),
            b"{not json",
            &[],
        )
        .await;
    // Keyed unlike its webhooks: it could land away from them.
    let other = support::new_id();
    let value = format!(
        r#"{{"provider":"unico","id":"{other}","created_at":"{}"}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    s.kafka
        .produce(
            &producer,
            &s.expectations,
            Some(1),
            Some("order-42"),
            value.as_bytes(),
            &[],
        )
        .await;
    // The simulator never answers status 5 for this id: never final.
    let id = support::new_id();
    s.expect(&producer, &id, "[5]").await;
    let dead = s
        .kafka
        .read_all(&s.config.output.dead_letter_topic, 3, WAIT);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let class = |r: &OutRecord| r.header(dlq::CLASS).to_string();
    let mut classes: Vec<String> = dead.iter().map(class).collect();
    classes.sort();
    assert_eq!(
        classes,
        [
            "expectation_expired",
            "malformed_payload",
            "malformed_payload"
        ]
    );
    assert!(dead
        .iter()
        .any(|r| r.header(dlq::MESSAGE).contains("record key")));
    assert_eq!(
        s.fetches(&other),
        0,
        "a wrongly keyed expectation is not polled"
    );
    for r in &dead {
        assert_eq!(
            r.header(dlq::TOPIC),
            s.expectations,
            "redrive sends it back there"
        );
    }
    let expired = dead
        .iter()
        .find(|r| class(r) == "expectation_expired")
        .unwrap();
    assert_eq!(expired.key.as_deref(), Some(id.as_str()));
    assert!(s.fetches(&id) >= 1, "polled before giving up");
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    assert_eq!(s.kafka.count(&s.unico_topic()), 0);
    engine.stop().await.expect("clean stop");
}

/// `fallback.max_pending` bounds the expectations held: at the limit the topic is not read, and
/// nothing is dropped: once webhooks resolve the held ones, the rest are read and resolved too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_bound_stops_reading_and_drops_nothing() {
    let mut s = Setup::new(PARTITIONS).await;
    s.config.fallback.max_pending = 2;
    // Nothing is polled in this test: only webhooks resolve.
    s.config.fallback.after = Duration::from_secs(3600);
    s.config.fallback.max_wait = Duration::from_secs(7200);
    let producer = s.kafka.producer();
    let ids: Vec<String> = (0..6).map(|_| support::new_id()).collect();
    for id in &ids {
        s.expect(&producer, id, ANY).await;
    }
    let engine = RunningEngine::start(&s.config).await;
    let mut most = 0;
    let full = support::eventually(WAIT, || {
        let waiting = engine.snapshot().expectations_waiting;
        most = most.max(waiting);
        waiting == 2
    })
    .await;
    assert!(full, "{:?}", engine.snapshot());
    for id in &ids {
        s.webhook(&producer, id).await;
    }
    let all = support::eventually(WAIT, || {
        let now = engine.snapshot();
        most = most.max(now.expectations_waiting);
        now.resolved_by_webhook == ids.len() as u64
    })
    .await;
    assert!(all, "{:?}", engine.snapshot());
    assert!(most <= 2, "{most} expectations held at once");
    assert_eq!(engine.snapshot().resolved_by_poll, 0);
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    engine.stop().await.expect("clean stop");
}

/// A poll the provider refuses for good (an id it does not know, past the not-found grace):
/// the expectation is dead-lettered with the provider's class, not polled until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_the_provider_refuses_dead_letters_the_expectation() {
    let unknown = uuid::Uuid::new_v4();
    let mut sim = SimulatorConfig::default();
    sim.faults.not_found_ids = vec![unknown];
    let mut s = Setup::with_simulator(PARTITIONS, sim).await;
    s.config.fallback.after = Duration::ZERO;
    let producer = s.kafka.producer();
    let engine = RunningEngine::start(&s.config).await;
    s.expect(&producer, &unknown.to_string(), ANY).await;
    let dead = s
        .kafka
        .read_all(&s.config.output.dead_letter_topic, 1, WAIT);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].header(dlq::CLASS), "not_found");
    assert_eq!(dead[0].header(dlq::TOPIC), s.expectations);
    assert!(dead[0].header(dlq::MESSAGE).starts_with("fallback poll: "));
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    let snapshot = engine.snapshot();
    assert_eq!(snapshot.expectations_given_up, 1, "{snapshot:?}");
    assert_eq!(s.kafka.count(&s.unico_topic()), 0);
    engine.stop().await.expect("clean stop");
}

/// ClearSale's MFA module reads pending for the first two polls, then answered: the fallback
/// polls again on its own schedule (no pending re-fetch inside a poll: one request per poll),
/// and publishes the module's result once, to ClearSale's topic, its `event_id` being its
/// `result_id` (a ClearSale webhook's identity holds a date a poll cannot know).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_clearsale_module_is_polled_until_final() {
    #[derive(Clone)]
    struct PendingTwice(std::sync::Arc<std::sync::atomic::AtomicU32>);
    impl wiremock::Respond for PendingTwice {
        fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let status = if n < 2 { "pending" } else { "approved" };
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"mfa": {"status": status}}))
        }
    }
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let peer = support::clearsale_peer(PendingTwice(calls.clone())).await;
    let mut s = Setup::new(PARTITIONS).await;
    s.config.clearsale.base_url = peer.uri();
    s.config.fallback.after = Duration::ZERO;
    let producer = s.kafka.producer();
    let engine = RunningEngine::start(&s.config).await;
    let id = support::new_id();
    let created = chrono::Utc::now().to_rfc3339();
    let value = format!(
        r#"{{"provider":"clearsale","id":"{id}","created_at":"{created}","expect":"mfa"}}"#
    );
    s.kafka
        .produce(
            &producer,
            &s.expectations,
            None,
            Some(&id),
            value.as_bytes(),
            &[],
        )
        .await;
    let out = s.kafka.read_all(&s.config.output.clearsale_topic, 1, WAIT);
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(r.key.as_deref(), Some(id.as_str()));
    assert_eq!(r.header("trigger_source"), "poll");
    assert_eq!(r.header("trigger"), "mfa");
    assert_eq!(r.header("state"), "COMPLETED");
    assert_eq!(r.header("event_id"), r.header("result_id"));
    assert!(support::eventually(WAIT, || s.expectations_committed()).await);
    let snapshot = engine.snapshot();
    assert_eq!(snapshot.fallback_polls, 3, "{snapshot:?}");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one request per poll"
    );
    engine.stop().await.expect("clean stop");
}
