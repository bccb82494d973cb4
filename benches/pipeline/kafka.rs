//! The harness's Kafka: librdkafka's mock cluster (on its own thread, it is not `Send`), the
//! preload, progress by high watermarks, reading topics back and the group's committed offsets.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::workload::RawRecord;

const TIMEOUT: Duration = Duration::from_secs(30);

pub type Result<T> = std::result::Result<T, String>;

fn failed(what: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> String {
    move |e| format!("{what}: {e}")
}

/// A running mock cluster; dropped, it stops (and frees every record it held).
pub struct MockKafka {
    pub bootstrap: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockKafka {
    pub fn start(brokers: i32, topics: &[(String, i32)]) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("bench-mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("mock cluster: {e}")));
                        return;
                    }
                };
                for (topic, partitions) in &topics {
                    if let Err(e) = cluster.create_topic(topic, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("create topic {topic}: {e}")));
                        return;
                    }
                }
                if ready_tx.send(Ok(cluster.bootstrap_servers())).is_ok() {
                    let _ = stopped.recv();
                }
            })
            .map_err(|e| format!("mock cluster thread: {e}"))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| "the mock cluster thread ended".to_string())??;
        Ok(Self {
            bootstrap,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Produces every record (keyed; the default partitioner spreads keys over the partitions) and
/// waits until all are acknowledged. Returns each record's create timestamp (ms).
pub fn preload(bootstrap: &str, topic: &str, records: &[RawRecord]) -> Result<Vec<i64>> {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("partitioner", "murmur2_random")
        .create()
        .map_err(failed("preload producer"))?;
    let mut timestamps = Vec::with_capacity(records.len());
    for r in records {
        let ts = chrono::Utc::now().timestamp_millis();
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .key(&r.key)
            .payload(&r.value)
            .timestamp(ts);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        timestamps.push(ts);
    }
    producer.flush(TIMEOUT).map_err(failed("preload flush"))?;
    if producer.in_flight_count() > 0 {
        return Err("preload: records still unacknowledged after the flush".into());
    }
    Ok(timestamps)
}

/// A client for watermarks and committed offsets.
pub struct Inspector {
    bootstrap: String,
    consumer: BaseConsumer,
}

impl Inspector {
    pub fn new(bootstrap: &str, group: &str) -> Result<Self> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(failed("inspector"))?;
        Ok(Self {
            bootstrap: bootstrap.to_string(),
            consumer,
        })
    }

    /// The sum of the partitions' high watermarks (topics written from offset 0, without
    /// transactions, so this is the record count).
    pub fn count(&self, topic: &str, partitions: i32) -> Result<i64> {
        Ok(self.high_watermarks(topic, partitions)?.iter().sum())
    }

    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> Result<Vec<i64>> {
        (0..partitions)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .map(|(_, high)| high)
                    .map_err(failed("watermarks"))
            })
            .collect()
    }

    /// The committed offsets of `group` on `topic` (-1 where nothing is committed).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(failed("committed-offsets client"))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, TIMEOUT)
            .map_err(failed("committed offsets"))?;
        Ok((0..partitions)
            .map(
                |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect())
    }
}

/// An output record as the correctness check and the latency need it.
pub struct OutRecord {
    pub event_id: Option<String>,
    pub timestamp_ms: Option<i64>,
}

/// Reads output topics from the beginning as they are written, so the mock cluster's
/// per-partition retention (5 MiB; older records are dropped) never hides a record from the check.
pub struct LiveReader {
    stop: Arc<AtomicBool>,
    counts: Arc<Vec<AtomicI64>>,
    thread: Option<std::thread::JoinHandle<Result<Vec<Vec<OutRecord>>>>>,
}

impl LiveReader {
    /// Starts reading `topics` (name, partitions); counts are kept per topic, in that order.
    pub fn start(bootstrap: &str, topics: &[(&str, i32)]) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "bench-live-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            .create()
            .map_err(failed("live reader"))?;
        let mut tpl = TopicPartitionList::new();
        let mut index = std::collections::HashMap::new();
        for (i, (topic, partitions)) in topics.iter().enumerate() {
            index.insert(topic.to_string(), i);
            for p in 0..*partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(failed("assignment"))?;
            }
        }
        consumer.assign(&tpl).map_err(failed("assign"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Vec<AtomicI64>> =
            Arc::new((0..topics.len()).map(|_| AtomicI64::new(0)).collect());
        let (stop2, counts2) = (stop.clone(), counts.clone());
        let n = topics.len();
        let thread = std::thread::Builder::new()
            .name("bench-live-reader".into())
            .spawn(move || {
                let mut out: Vec<Vec<OutRecord>> = (0..n).map(|_| Vec::new()).collect();
                while !stop2.load(Ordering::Acquire) {
                    let Some(m) = consumer.poll(Duration::from_millis(20)) else {
                        continue;
                    };
                    let m = m.map_err(failed("live read"))?;
                    let Some(&i) = index.get(m.topic()) else {
                        continue;
                    };
                    let event_id = m.headers().and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == "event_id")
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    });
                    out[i].push(OutRecord {
                        event_id,
                        timestamp_ms: m.timestamp().to_millis(),
                    });
                    counts2[i].fetch_add(1, Ordering::Release);
                }
                Ok(out)
            })
            .map_err(|e| format!("live reader thread: {e}"))?;
        Ok(Self {
            stop,
            counts,
            thread: Some(thread),
        })
    }

    /// Records read so far from topic `i`.
    pub fn count(&self, i: usize) -> i64 {
        self.counts[i].load(Ordering::Acquire)
    }

    /// Stops and returns every record read, per topic.
    pub fn finish(mut self) -> Result<Vec<Vec<OutRecord>>> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err("the live reader panicked".into()),
        }
    }
}
