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

    /// Produces `values` in order, round-robin over the first `partitions` partitions, waiting
    /// for each ack.
    pub async fn produce_spread(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partitions: i32,
        values: &[impl AsRef<[u8]>],
    ) {
        for (i, value) in values.iter().enumerate() {
            self.produce(
                producer,
                topic,
                Some(i as i32 % partitions),
                None,
                value.as_ref(),
                &[],
            )
            .await;
        }
    }

    /// Reads every record of `topic` from the beginning until `count` are seen or `timeout`,
    /// then whatever else (duplicates) arrives within half a second.
    pub fn read_all(&self, topic: &str, count: usize, timeout: Duration) -> Vec<OutRecord> {
        blocking(|| {
            let reader = TopicReader::new(&self.bootstrap, topic);
            let mut out = reader.poll_until(Instant::now() + timeout, |r| r.len() >= count);
            out.extend(reader.poll_until(Instant::now() + Duration::from_millis(500), |_| false));
            out
        })
    }

    /// The committed offsets of `group` for `topic`'s partitions.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        committed_offsets(&self.bootstrap, group, topic, partitions)
    }

    /// The high watermark of every partition of `topic`; empty when the topic does not exist.
    pub fn end_offsets(&self, topic: &str) -> HashMap<i32, i64> {
        blocking(|| {
            let consumer = inspector(&self.bootstrap, &unique("watermarks"));
            (0..partition_count(&consumer, topic))
                .map(|p| {
                    let (_, high) = consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .expect("watermarks");
                    (p, high)
                })
                .collect()
        })
    }

    /// How many records `topic` holds (0 when it does not exist).
    pub fn count(&self, topic: &str) -> i64 {
        self.end_offsets(topic).values().sum()
    }

    /// Every record of `topic` up to its current end, by partition then offset. Reads by
    /// assignment (no group join), so it is quick.
    pub fn read_now(&self, topic: &str) -> Vec<OutRecord> {
        let ends = self.end_offsets(topic);
        if ends.values().all(|end| *end == 0) {
            return Vec::new();
        }
        let mut out = blocking(|| {
            let reader = TopicReader::new(&self.bootstrap, topic);
            let deadline = Instant::now() + Duration::from_secs(20);
            let out = reader.poll_until(deadline, |records| {
                ends.iter().all(|(p, end)| {
                    *end == 0
                        || records
                            .iter()
                            .any(|r| r.partition == *p && r.offset >= end - 1)
                })
            });
            assert!(
                Instant::now() < deadline,
                "could not read {topic} to its end"
            );
            out
        });
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
    config_for(&kafka.bootstrap, sim, input)
}

/// A configuration for one test against any broker: the simulator, fast retries, topics named
/// after `input` (`<input>.clearsale`, `<input>.unico`, `<input>.dlq`).
pub fn config_for(bootstrap: &str, sim: &SimulatorHandle, input: &str) -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap.to_string();
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
    // Servers started by tests listen on loopback only, on a port of the OS's choosing.
    c.admin.listen = "127.0.0.1:0".into();
    c
}

/// A loopback port that was free a moment ago (for a server the test must reach).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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
        let config = config.engine_run_settings();
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

    /// Waits for `run` to return by itself (a fatal error), without asking it to stop.
    pub async fn stop_when_done(mut self, timeout: Duration) -> Result<StatsSnapshot, EngineError> {
        let result = tokio::time::timeout(timeout, &mut self.task).await;
        let _ = self.stop.take();
        result
            .expect("the engine stops by itself")
            .expect("the engine task does not panic")
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

// ---------------------------------------------------------------------------------------------
// Broker-agnostic helpers (mock cluster or a real broker such as Tansu): they take a bootstrap.

/// A producer for tests (not the service's producer). Idempotent, so a retried write never
/// adds a second copy of an input.
pub fn producer_for(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // One record per batch: Tansu 0.6 answers a fetch that starts inside a batch with the
        // batches after it, so a consumer resuming mid-batch would skip records (README, Tests).
        .set("batch.num.messages", "1")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer")
}

/// Produces one record and waits for the ack; returns its partition and offset.
pub async fn produce_to(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    value: &[u8],
) -> (i32, i64) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    let d = producer
        .send(record, Duration::from_secs(20))
        .await
        .expect("produce");
    (d.partition, d.offset)
}

/// A plain consumer (no group membership) for metadata, watermarks and committed offsets.
pub fn inspector(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("inspector")
}

/// The number of partitions of `topic` (0 if it does not exist).
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> i32 {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()
        .and_then(|m| {
            m.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        })
        .unwrap_or(0)
}

/// How many records `topics` hold now (sum of high minus low watermarks).
pub fn record_count(consumer: &BaseConsumer, topics: &[&str]) -> i64 {
    blocking(|| record_count_now(consumer, topics))
}

fn record_count_now(consumer: &BaseConsumer, topics: &[&str]) -> i64 {
    let mut total = 0;
    for topic in topics {
        for p in 0..partition_count(consumer, topic) {
            if let Ok((low, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                total += high - low;
            }
        }
    }
    total
}

/// The committed offsets of `group` for `topic`'s partitions (partitions without a commit are
/// left out).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, i64> {
    blocking(|| committed_by_now(&inspector(bootstrap, group), topic, partitions))
}

/// The committed offsets of the group of `consumer` (an [`inspector`]) for `topic`.
pub fn committed_by(consumer: &BaseConsumer, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    blocking(|| committed_by_now(consumer, topic, partitions))
}

fn committed_by_now(consumer: &BaseConsumer, topic: &str, partitions: i32) -> HashMap<i32, i64> {
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

/// The key prefix of the fence records [`read_to_end`] writes (and skips when reading).
const FENCE_PREFIX: &str = "__test_fence__";

/// Reads every record of `topic` written before this call (use it once nothing writes to
/// `topic` any more). Each partition is read up to a fence record this function writes there
/// (and leaves out of the result): watermarks are not used, since some brokers (Tansu) report
/// them behind the last record.
pub async fn read_to_end(bootstrap: &str, topic: &str) -> Vec<OutRecord> {
    let partitions = blocking(|| partition_count(&inspector(bootstrap, &unique("meta")), topic));
    assert!(partitions > 0, "topic {topic} does not exist");
    let fence = unique(FENCE_PREFIX);
    let producer = producer_for(bootstrap);
    for p in 0..partitions {
        produce_to(&producer, topic, Some(p), Some(&fence), b"").await;
    }
    let fenced = |records: &[OutRecord]| {
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some(fence.as_str()))
            .map(|r| r.partition)
            .collect::<std::collections::HashSet<i32>>()
    };
    let records = blocking(|| {
        TopicReader::new(bootstrap, topic)
            .poll_until(Instant::now() + Duration::from_secs(30), |records| {
                fenced(records).len() >= partitions as usize
            })
    });
    let seen = fenced(&records);
    assert_eq!(
        seen.len(),
        partitions as usize,
        "{topic}: the fence records of partitions other than {seen:?} were not read back"
    );
    // Records after a partition's fence were written after this call began: leave them out.
    let mut past_fence = std::collections::HashSet::new();
    records
        .into_iter()
        .filter(|r| {
            let key = r.key.as_deref().unwrap_or_default();
            if key == fence {
                past_fence.insert(r.partition);
                return false;
            }
            !key.starts_with(FENCE_PREFIX) && !past_fence.contains(&r.partition)
        })
        .collect()
}

/// Runs a blocking librdkafka call from an async test without stalling the runtime worker it is
/// on: in a multi-thread runtime the worker's other tasks (the engine's) move away first
/// (`block_in_place`); outside one it just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The one topic reader of the tests: every partition of a topic assigned from the beginning
/// (no group join, no commits).
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    assigned: std::cell::Cell<bool>,
}

impl TopicReader {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let reader = Self {
            consumer: inspector(bootstrap, &unique("reader")),
            topic: topic.to_string(),
            assigned: std::cell::Cell::new(false),
        };
        reader.assign();
        reader
    }

    /// Assigns every partition once the topic exists (it may be created while we wait).
    fn assign(&self) {
        let partitions = partition_count(&self.consumer, &self.topic);
        if partitions == 0 {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                .expect("partition offset");
        }
        self.consumer.assign(&tpl).expect("assign");
        self.assigned.set(true);
    }

    /// Polls until `done` holds for the records read so far, or `deadline`.
    pub fn poll_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&[OutRecord]) -> bool,
    ) -> Vec<OutRecord> {
        let mut out = Vec::new();
        while !done(&out) && Instant::now() < deadline {
            if !self.assigned.get() {
                self.assign();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                out.push(OutRecord::from(&m));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The built binary as a child process.

/// Writes `config` as a TOML file for `--config`. Secrets are printed as `[redacted]`: pass
/// the real values with [`secret_env`].
pub fn write_config(config: &Config, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("webhook-enricher.toml");
    let text = config.to_redacted_toml().expect("config as TOML");
    std::fs::write(&path, text).expect("write config file");
    path
}

/// The configuration's secrets as `WEBHOOK_ENRICHER_*` environment variables.
pub fn secret_env(config: &Config) -> Vec<(String, String)> {
    let cs = &config.receive.clearsale.auth;
    let un = &config.receive.unico.auth;
    [
        ("CLEARSALE__PASSWORD", &config.clearsale.password),
        ("UNICO__API_KEY", &config.unico.api_key),
        ("UNICO__PRIVATE_KEY_PEM", &config.unico.private_key_pem),
        ("RECEIVE__CLEARSALE__AUTH__PASSWORD", &cs.password),
        ("RECEIVE__CLEARSALE__AUTH__TOKEN", &cs.token),
        ("RECEIVE__CLEARSALE__AUTH__API_KEY", &cs.api_key),
        ("RECEIVE__UNICO__AUTH__PASSWORD", &un.password),
        ("RECEIVE__UNICO__AUTH__TOKEN", &un.token),
        ("RECEIVE__UNICO__AUTH__API_KEY", &un.api_key),
    ]
    .into_iter()
    .filter(|(_, secret)| !secret.is_empty())
    .map(|(name, secret)| {
        (
            format!("{}{name}", webhook_enricher::config::ENV_PREFIX),
            secret.expose().to_string(),
        )
    })
    .collect()
}

/// A command for the built binary with a clean environment: no inherited `WEBHOOK_ENRICHER_*`
/// or `RUST_LOG` variables, so only what the test passes configures it.
pub fn binary_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-enricher"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with(webhook_enricher::config::ENV_PREFIX) || text == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// A directory kept after the test (under the target dir) for logs of child processes.
pub fn log_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("it-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// The last `lines` lines of a file (for assertion messages).
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}",
        all.len() - from,
        path.display(),
        all[from..].join("\n")
    )
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test never
/// leaves it behind. Its stderr goes to `log`.
pub struct ChildGuard {
    child: std::process::Child,
    /// Where the child's stderr (and stdout) go.
    pub log: std::path::PathBuf,
    exited: Option<std::process::ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr appended to `log` (created if missing).
    pub fn spawn(mut cmd: std::process::Command, log: std::path::PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = cmd.spawn().expect("spawn child process");
        Self {
            child,
            log,
            exited: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended (reaping it).
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the shell's `kill`, if the process
    /// is still running (never to a reaped pid, which may have been reused).
    pub fn signal(&mut self, name: &str) {
        assert!(
            self.try_status().is_none(),
            "process already exited ({:?}) before SIG{name}\n{}",
            self.exited,
            self.tail()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.pid())])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// SIGKILL, then reap.
    pub fn kill_now(&mut self) -> std::process::ExitStatus {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().expect("wait"));
        }
        self.exited.expect("exit status")
    }

    /// Waits for the exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.try_status().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.try_status()
    }

    /// Waits until the log contains `needle`, up to `timeout`, failing early if the process
    /// ends. Returns whether it was found.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_contains(needle) {
                return true;
            }
            if self.try_status().is_some() || Instant::now() >= deadline {
                return self.log_contains(needle);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True when the log contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|t| t.contains(needle))
            .unwrap_or(false)
    }

    /// The log's last lines, for assertion messages.
    pub fn tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // No panics here: this also runs while a failed test unwinds.
        if self.exited.is_none() && !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The built binary running `run` with a configuration file and secrets from the environment.
pub fn spawn_run(config: &Config, dir: &std::path::Path, log_name: &str) -> ChildGuard {
    let file = write_config(config, dir);
    let mut cmd = binary_command();
    cmd.arg("--config")
        .arg(&file)
        .args(["--log-level", "info,librdkafka=warn", "run"])
        .envs(secret_env(config));
    let log = log_dir().join(format!("{}.log", unique(log_name)));
    ChildGuard::spawn(cmd, log)
}

/// The built binary running `receive` with a configuration file and secrets from the
/// environment.
pub fn spawn_receive(config: &Config, dir: &std::path::Path, log_name: &str) -> ChildGuard {
    let file = write_config(config, dir);
    let mut cmd = binary_command();
    cmd.arg("--config")
        .arg(&file)
        .args([
            "--log-format",
            "json",
            "--log-level",
            "info,librdkafka=warn",
            "receive",
        ])
        .envs(secret_env(config));
    let log = log_dir().join(format!("{}.log", unique(log_name)));
    ChildGuard::spawn(cmd, log)
}

// ---------------------------------------------------------------------------------------------
// A realistic mix of webhooks and the outcome each must have.

/// What must come out of one input webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// An enriched record keyed by this provider id.
    Published { subject_id: String },
    /// A dead letter carrying the original value.
    DeadLettered,
    /// Nothing (a Unico status outside the enriched set): no record keyed by this id.
    Skipped { subject_id: String },
}

/// One input webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The Kafka value.
    pub value: String,
    /// The Kafka key (the provider id for valid webhooks).
    pub key: Option<String>,
    /// What must come out of it.
    pub expected: Expected,
}

impl Webhook {
    /// How many outcomes it has in `counts` (from [`outcome_counts`]): enriched records keyed
    /// by its provider id plus dead letters carrying its value. Any input may end in a dead
    /// letter (e.g. `retries_exhausted`), not only bad payloads.
    pub fn outcomes(&self, counts: &HashMap<String, usize>) -> usize {
        let published = match &self.expected {
            Expected::Published { subject_id } | Expected::Skipped { subject_id } => counts
                .get(&format!("out:{subject_id}"))
                .copied()
                .unwrap_or(0),
            Expected::DeadLettered => 0,
        };
        published
            + counts
                .get(&format!("dlq:{}", self.value))
                .copied()
                .unwrap_or(0)
    }

    /// False for a skipped webhook, which must have no output at all.
    pub fn must_appear(&self) -> bool {
        !matches!(self.expected, Expected::Skipped { .. })
    }
}

/// `n` webhooks, each with its own provider id: ClearSale and Unico alternating, every tenth a
/// bad payload (not JSON, or an id that is not a GUID), and, with `with_skipped`, every
/// fifteenth a Unico status that is not enriched (1).
pub fn webhook_mix(n: usize, with_skipped: bool) -> Vec<Webhook> {
    const TYPES: [&str; 3] = ["mfa", "biolink", "devicecheck"];
    (0..n)
        .map(|i| {
            let id = uuid::Uuid::new_v4().to_string();
            if i % 10 == 9 {
                let value = if i % 20 == 9 {
                    format!("not json #{i} {id}")
                } else {
                    format!(r#"{{"id":"not-a-guid-{id}","status":"3"}}"#)
                };
                Webhook {
                    value,
                    key: None,
                    expected: Expected::DeadLettered,
                }
            } else if with_skipped && i % 15 == 14 {
                Webhook {
                    value: format!(r#"{{"id":"{id}","status":"1"}}"#),
                    key: Some(id.clone()),
                    expected: Expected::Skipped { subject_id: id },
                }
            } else if i % 2 == 0 {
                Webhook {
                    value: format!(
                        r#"{{"analysisId":"{id}","date":"2025-09-26T17:21:11.0367845Z","type":"{}"}}"#,
                        TYPES[i % TYPES.len()]
                    ),
                    key: Some(id.clone()),
                    expected: Expected::Published { subject_id: id },
                }
            } else {
                Webhook {
                    value: format!(r#"{{"id":"{id}","status":"{}"}}"#, 2 + i % 4),
                    key: Some(id.clone()),
                    expected: Expected::Published { subject_id: id },
                }
            }
        })
        .collect()
}

/// A produced webhook and where it landed.
#[derive(Debug, Clone)]
pub struct Produced {
    pub webhook: Webhook,
    pub partition: i32,
    pub offset: i64,
}

/// Produces `webhooks` round-robin over `partitions` partitions, in order.
pub async fn produce_webhooks(
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    webhooks: Vec<Webhook>,
) -> Vec<Produced> {
    let mut out = Vec::with_capacity(webhooks.len());
    for (i, webhook) in webhooks.into_iter().enumerate() {
        let (partition, offset) = produce_to(
            producer,
            topic,
            Some(i as i32 % partitions),
            webhook.key.as_deref(),
            webhook.value.as_bytes(),
        )
        .await;
        out.push(Produced {
            webhook,
            partition,
            offset,
        });
    }
    out
}

/// Outcomes by identity: `out:<key>` for enriched records, `dlq:<value>` for dead letters
/// (read them with [`Webhook::outcomes`]).
pub fn outcome_counts(outputs: &[OutRecord], dead_letters: &[OutRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in outputs {
        *counts
            .entry(format!("out:{}", r.key.clone().unwrap_or_default()))
            .or_default() += 1;
    }
    for r in dead_letters {
        *counts
            .entry(format!("dlq:{}", String::from_utf8_lossy(&r.value)))
            .or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// Kafka at the wire level.

/// A librdkafka client context that keeps its log lines (set `debug` to get the ones wanted).
/// Clones share the lines, so a clone can read what a client wrapping its own context logged.
#[derive(Default, Clone)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<String>>>);

impl LogCapture {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rdkafka::ClientContext for LogCapture {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, message: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message.to_string());
    }
}

impl rdkafka::consumer::ConsumerContext for LogCapture {}

/// CRC-32C (Castagnoli), the checksum of a Kafka record batch.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Writes one record batch with compression attribute `codec` (0-7; Kafka defines 0-4) and
/// `payload` as its (compressed) records, as a Produce request (v3) straight over TCP, so the
/// batch can be one no client would write: a codec Kafka does not define, or a body the codec
/// cannot decompress. librdkafka's mock broker stores batches without decompressing them, as a
/// real broker does with `compression.type=producer`. Returns the batch's base offset.
pub fn produce_raw_batch(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    codec: i16,
    payload: &[u8],
) -> i64 {
    use std::io::{Read, Write};
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as i16).to_be_bytes());
        out.extend(s.as_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // From the attributes on: what the CRC covers.
    let mut covered = Vec::new();
    covered.extend(codec.to_be_bytes()); // attributes: the compression codec in bits 0-2
    covered.extend(0i32.to_be_bytes()); // lastOffsetDelta: one record
    covered.extend(now.to_be_bytes()); // baseTimestamp
    covered.extend(now.to_be_bytes()); // maxTimestamp
    covered.extend((-1i64).to_be_bytes()); // producerId: not idempotent
    covered.extend((-1i16).to_be_bytes()); // producerEpoch
    covered.extend((-1i32).to_be_bytes()); // baseSequence
    covered.extend(1i32.to_be_bytes()); // record count
    covered.extend(payload);
    let mut after_length = Vec::new();
    after_length.extend(0i32.to_be_bytes()); // partitionLeaderEpoch
    after_length.push(2); // magic: record batch v2
    after_length.extend(crc32c(&covered).to_be_bytes());
    after_length.extend(covered);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // baseOffset (the broker assigns it)
    batch.extend((after_length.len() as i32).to_be_bytes());
    batch.extend(after_length);

    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // api key: Produce
    request.extend(3i16.to_be_bytes()); // api version
    request.extend(7i32.to_be_bytes()); // correlation id
    string(&mut request, "raw-batch-test"); // client id
    request.extend((-1i16).to_be_bytes()); // transactional id: null
    request.extend(1i16.to_be_bytes()); // acks
    request.extend(10_000i32.to_be_bytes()); // timeout ms
    request.extend(1i32.to_be_bytes()); // one topic
    string(&mut request, topic);
    request.extend(1i32.to_be_bytes()); // one partition
    request.extend(partition.to_be_bytes());
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(batch);

    let address = bootstrap.split(',').next().expect("a broker");
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .expect("write");
    stream.write_all(&request).expect("write");
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("response length");
    let mut response = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut response).expect("response");
    // correlation id, topic count, topic name, partition count, partition, error code, offset
    let name_end = 4 + 4 + 2 + topic.len();
    let at = name_end + 4 + 4;
    let error = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(error, 0, "the broker refused the raw batch");
    i64::from_be_bytes(response[at + 2..at + 10].try_into().expect("offset"))
}

/// A ClearSale stand-in (wiremock) for what the simulator cannot do: it issues a token to any
/// credentials and answers every analysis with `results`.
pub async fn clearsale_peer(results: impl wiremock::Respond + 'static) -> wiremock::MockServer {
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let peer = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/connect/v1/authenticate"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token": "t0k3n", "expirationDate": "2099-01-01T00:00:00.0000000",
        })))
        .mount(&peer)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/connect/v1/integration/analysis/.+$"))
        .respond_with(results)
        .mount(&peer)
        .await;
    peer
}
