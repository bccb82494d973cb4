//! Shared test harness: a librdkafka mock cluster, the provider simulator, a configuration that
//! points at both, and helpers to produce inputs and read outputs and committed offsets.

#![allow(dead_code)]

use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use webhook_enricher::config::Config;
use webhook_enricher::engine::stats::{EngineStats, StatsSnapshot};
use webhook_enricher::engine::EngineError;
use webhook_enricher::simulator::{self, SimulatorConfig, SimulatorHandle};

/// A unique suffix per test, so topics and groups never collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The RSA key pair used by every test (generated once: slow in debug builds).
pub fn keypair() -> &'static (webhook_enricher::secret::Secret, String) {
    static KEY: std::sync::OnceLock<(webhook_enricher::secret::Secret, String)> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| simulator::generate_rsa_keypair(2048).expect("keygen"))
}

/// A mock Kafka cluster with the topics of one test.
pub struct Kafka {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub bootstrap: String,
}

impl Kafka {
    pub fn new(topics: &[(&str, i32)]) -> Self {
        let cluster = MockCluster::new(1).expect("mock cluster");
        for (topic, partitions) in topics {
            cluster
                .create_topic(topic, *partitions, 1)
                .expect("create topic");
        }
        let bootstrap = cluster.bootstrap_servers();
        Self { cluster, bootstrap }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("message.timeout.ms", "10000")
            .create()
            .expect("producer")
    }

    /// Produces one record and waits for the ack.
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        value: &[u8],
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).payload(value).headers(hs);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let d = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produce");
        (d.partition, d.offset)
    }

    /// Reads every record of `topic` from the beginning until `count` are seen or `timeout`.
    pub fn read_all(&self, topic: &str, count: usize, timeout: Duration) -> Vec<OutRecord> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("reader");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(OutRecord::from(&m));
            }
        }
        // Pick up any extra records (duplicates) that are already there.
        let quiet = Instant::now() + Duration::from_millis(500);
        while Instant::now() < quiet {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(OutRecord::from(&m));
            }
        }
        out
    }

    /// The committed offsets of `group` for `topic`'s partitions.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .create()
            .expect("offset reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// The high watermark of every partition of `topic`; empty when the topic does not exist.
    pub fn end_offsets(&self, topic: &str) -> HashMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", unique("watermarks"))
            .create()
            .expect("watermark reader");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions
            .into_iter()
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                (p, high)
            })
            .collect()
    }

    /// How many records `topic` holds (0 when it does not exist).
    pub fn count(&self, topic: &str) -> i64 {
        self.end_offsets(topic).values().sum()
    }

    /// Every record of `topic` up to its current end, by partition then offset. Reads by
    /// assignment (no group join), so it is quick.
    pub fn read_now(&self, topic: &str) -> Vec<OutRecord> {
        let ends = self.end_offsets(topic);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        let mut missing: HashMap<i32, i64> = HashMap::new();
        for (p, end) in &ends {
            if *end > 0 {
                tpl.add_partition_offset(topic, *p, Offset::Beginning)
                    .expect("partition offset");
                missing.insert(*p, *end);
            }
        }
        let mut out = Vec::new();
        if missing.is_empty() {
            return out;
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !missing.is_empty() {
            assert!(
                Instant::now() < deadline,
                "could not read {topic} to its end"
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if missing
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() >= end - 1)
                {
                    missing.remove(&m.partition());
                }
                out.push(OutRecord::from(&m));
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    pub fn admin(&self) -> AdminClient<rdkafka::client::DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin")
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// The headers in order, null values as `None`.
    pub header_list: Vec<(String, Option<String>)>,
    /// The record timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl OutRecord {
    fn from<M: Message>(m: &M) -> Self {
        use rdkafka::message::Headers;
        let header_list: Vec<(String, Option<String>)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let headers = header_list
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect();
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
            header_list,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Starts the simulator with credentials matching [`config`].
pub async fn start_simulator(mut sim: SimulatorConfig) -> SimulatorHandle {
    sim.unico.public_key_pem = Some(keypair().1.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    simulator::start(sim, listener).await.expect("simulator")
}

/// A configuration for one test: the mock cluster, the simulator, fast retries.
pub fn config(kafka: &Kafka, sim: &SimulatorHandle, input: &str) -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap_servers = kafka.bootstrap.clone();
    c.kafka.group_id = unique("group");
    c.input.topics = vec![input.to_string()];
    c.output.clearsale_topic = format!("{input}.clearsale");
    c.output.unico_topic = format!("{input}.unico");
    c.output.dead_letter_topic = format!("{input}.dlq");
    let defaults = SimulatorConfig::default();
    c.clearsale.base_url = sim.base_url();
    c.clearsale.user = defaults.clearsale.user.clone();
    c.clearsale.password = defaults.clearsale.password.clone();
    c.unico.base_url = sim.base_url();
    c.unico.issuer_url = sim.base_url();
    c.unico.account = defaults.unico.account.clone();
    c.unico.tenant = defaults.unico.tenant.clone();
    c.unico.api_key = defaults.unico.api_key.clone();
    c.unico.private_key_pem = keypair().0.clone();
    c.unico.limits.rate_per_second = 0;
    c.enrich.retry.initial = Duration::from_millis(10);
    c.enrich.retry.max_delay = Duration::from_millis(100);
    c.enrich.retry.max_elapsed = Duration::from_secs(2);
    c.enrich.not_found.delay = Duration::from_millis(50);
    c.enrich.pending.initial = Duration::from_millis(20);
    c.enrich.pending.max_delay = Duration::from_millis(50);
    c.enrich.pending.max_elapsed = Duration::from_millis(500);
    c.engine.commit_interval = Duration::from_millis(200);
    c.engine.drain_timeout = Duration::from_secs(10);
    c.engine.breaker.open_for = Duration::from_millis(200);
    c.engine.breaker.max_open_for = Duration::from_secs(1);
    c
}

/// An engine running in-process, as `webhook-enricher run` would. Dropping it resolves the
/// shutdown future too.
pub struct RunningEngine {
    pub stats: Arc<EngineStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<StatsSnapshot, EngineError>>,
}

impl RunningEngine {
    /// Builds the engine's parts from `config` and spawns `engine::run`.
    pub async fn start(config: &Config) -> Self {
        let stats = Arc::new(EngineStats::default());
        let parts = webhook_enricher::app::build_parts(config, stats.clone())
            .await
            .expect("engine parts");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task = tokio::spawn(async move {
            webhook_enricher::engine::run(&config, parts, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Resolves the shutdown future (what SIGTERM does) and waits for `run` to return.
    pub async fn stop(mut self) -> Result<StatsSnapshot, EngineError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the engine stops within a minute")
            .expect("the engine task does not panic")
    }
}

/// A ClearSale webhook payload.
pub fn clearsale(id: &str, kind: &str, date: &str) -> String {
    format!(r#"{{"analysisId":"{id}","date":"{date}","type":"{kind}"}}"#)
}

/// A Unico webhook payload.
pub fn unico(id: &str, status: &str) -> String {
    format!(r#"{{"id":"{id}","status":"{status}"}}"#)
}

/// The `event_id` the engine derives for a well-formed payload.
pub fn event_id(payload: &str) -> uuid::Uuid {
    let decoded = webhook_enricher::event::decode(
        webhook_enricher::event::RawEvent {
            topic: "any",
            payload: Some(payload.as_bytes()),
            provider_header: None,
        },
        &webhook_enricher::event::DecoderSettings::default(),
    );
    match decoded {
        Ok(webhook_enricher::event::Decoded::Enrich(e)) => e.event_id,
        other => panic!("not an enrichable payload: {other:?}"),
    }
}

/// A fresh provider id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The committed offset of one partition, 0 when nothing is committed.
pub fn committed_of(committed: &HashMap<i32, i64>, partition: i32) -> i64 {
    committed.get(&partition).copied().unwrap_or(0)
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}
