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
use std::time::{Duration, Instant};
use webhook_enricher::config::Config;
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
}

impl OutRecord {
    fn from<M: Message>(m: &M) -> Self {
        use rdkafka::message::Headers;
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
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
