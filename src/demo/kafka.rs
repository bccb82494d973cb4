//! The demo's Kafka: librdkafka's in-process mock cluster, producing the samples, and reading
//! topics back from the beginning (by assignment, so no consumer-group join is needed).

use super::samples::Sample;
use super::DemoError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// How long one Kafka operation of the demo may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// A running mock cluster. The cluster is not `Send`, so it lives on its own thread, which
/// keeps it until this handle is dropped.
pub(super) struct MockKafka {
    bootstrap: String,
    _stop: std::sync::mpsc::Sender<()>,
}

impl MockKafka {
    /// Starts a one-broker cluster and creates `topics` (name, partitions).
    pub(super) async fn start(topics: Vec<(String, i32)>) -> Result<Self, DemoError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("demo-mock-kafka".into())
            .spawn(move || {
                let cluster = match create_cluster(&topics) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                if ready_tx.send(Ok(cluster.bootstrap_servers())).is_ok() {
                    // Returns when the handle (the only sender) is dropped.
                    let _ = stopped.recv();
                }
            })
            .map_err(|source| DemoError::Thread { source })?;
        let bootstrap = ready_rx.await.map_err(|_| DemoError::Kafka {
            operation: "start the mock cluster",
            message: "the mock cluster thread ended".into(),
        })??;
        Ok(Self {
            bootstrap,
            _stop: stop,
        })
    }

    /// The cluster's `bootstrap.servers`.
    pub(super) fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

fn create_cluster(
    topics: &[(String, i32)],
) -> Result<MockCluster<'static, rdkafka::producer::DefaultProducerContext>, DemoError> {
    let failed = |operation| move |e: rdkafka::error::KafkaError| kafka_error(operation, e);
    let cluster = MockCluster::new(1).map_err(failed("start the mock cluster"))?;
    for (topic, partitions) in topics {
        cluster
            .create_topic(topic, *partitions, 1)
            .map_err(failed("create a topic"))?;
    }
    Ok(cluster)
}

fn kafka_error(operation: &'static str, error: rdkafka::error::KafkaError) -> DemoError {
    DemoError::Kafka {
        operation,
        message: error.to_string(),
    }
}

/// Produces the samples to `topic`, in order, and returns where each landed (partition, offset).
pub(super) async fn produce(
    bootstrap: &str,
    topic: &str,
    samples: &[Sample],
) -> Result<Vec<(i32, i64)>, DemoError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
        .create()
        .map_err(|e| kafka_error("create the sample producer", e))?;
    let mut deliveries = Vec::with_capacity(samples.len());
    for sample in samples {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &sample.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .payload(sample.payload.as_slice())
            .headers(headers);
        if let Some(key) = &sample.key {
            record = record.key(key);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| kafka_error("produce a sample", e))?;
        deliveries.push(delivery);
    }
    let mut landed = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(d)) => landed.push((d.partition, d.offset)),
            Ok(Err((e, _))) => return Err(kafka_error("produce a sample", e)),
            Err(_) => {
                return Err(DemoError::Kafka {
                    operation: "produce a sample",
                    message: "the producer was dropped".into(),
                })
            }
        }
    }
    Ok(landed)
}

/// Produces one keyed record (the withheld webhook's expectation) and waits for its ack; the
/// partitioner places it as the receiver places the webhooks of its key.
pub(super) async fn produce_one(
    bootstrap: &str,
    topic: &str,
    key: &str,
    value: &[u8],
) -> Result<(), DemoError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
        .create()
        .map_err(|e| kafka_error("create the expectation producer", e))?;
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(value).key(key);
    producer
        .send(record, KAFKA_TIMEOUT)
        .await
        .map_err(|(e, _)| kafka_error("produce the expectation", e))?;
    Ok(())
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ReadRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, as text.
    pub key: Option<String>,
    /// Its value (empty when null).
    pub value: Vec<u8>,
    /// Its headers, values as text.
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    /// The value of header `name`, or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// How many records each of `topics` (each with `partitions` partitions) holds now: the sum of
/// its partitions' high minus low watermarks (the demo's topics are never compacted or
/// truncated, and its producers are not transactional, so that is the number of records).
pub(super) async fn record_counts(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<Vec<u64>, DemoError> {
    let bootstrap = bootstrap.to_string();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let failed = |e| kafka_error("count a topic's records", e);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .map_err(failed)?;
        let mut counts = Vec::with_capacity(topics.len());
        for topic in &topics {
            let mut count = 0;
            for partition in 0..partitions {
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
                    .map_err(failed)?;
                count += u64::try_from(high - low).unwrap_or_default();
            }
            counts.push(count);
        }
        Ok(counts)
    })
    .await
    .map_err(|e| DemoError::Kafka {
        operation: "count a topic's records",
        message: e.to_string(),
    })?
}

/// Reads every record of `topic` (with `partitions` partitions) present now, by partition and
/// offset.
pub(super) async fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<ReadRecord>, DemoError> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic, partitions))
        .await
        .map_err(|e| DemoError::Kafka {
            operation: "read a topic back",
            message: e.to_string(),
        })?
}

fn read_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<ReadRecord>, DemoError> {
    let failed = |e| kafka_error("read a topic back", e);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "webhook-enricher-demo-reader")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(failed)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    let mut ends = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .map_err(failed)?;
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(failed)?;
            remaining += 1;
        }
        ends.push(high);
    }
    let mut records = Vec::new();
    if remaining == 0 {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(failed)?;
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    while remaining > 0 {
        if Instant::now() >= deadline {
            return Err(DemoError::Kafka {
                operation: "read a topic back",
                message: format!("{topic}: timed out with {remaining} partition(s) unread"),
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(failed)?;
        let end = usize::try_from(message.partition())
            .ok()
            .and_then(|p| ends.get(p))
            .copied()
            .unwrap_or_default();
        if message.offset() + 1 == end {
            remaining -= 1;
        }
        records.push(ReadRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().unwrap_or_default().to_vec(),
            headers: message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
