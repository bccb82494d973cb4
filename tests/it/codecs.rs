//! Kafka compression: input written with every codec Kafka defines is consumed, and output is
//! written with the codec `kafka.compression` names. Which codec a batch really had is read from
//! librdkafka's own debug log (a batch that would not shrink is sent uncompressed, so a test that
//! only round-trips records could pass without compressing anything).

use crate::support::{self, Kafka, LogCapture};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use webhook_enricher::config::{Compression, KafkaSettings};
use webhook_enricher::kafka::client_config as kafka_config;
use webhook_enricher::simulator::SimulatorConfig;

const INPUT_CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

/// How many records of `topic` (all its partitions) were read, and the codec of each batch they
/// arrived in, by librdkafka's fetch log ("Enqueue N message(s) ... (codec)").
fn read_with_codecs(bootstrap: &str, topic: &str, count: usize) -> (usize, Vec<String>) {
    support::blocking(|| {
        let consumer: BaseConsumer<LogCapture> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", support::unique("codec-reader"))
            .set("enable.auto.commit", "false")
            .set("debug", "fetch")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug)
            .create_with_context(LogCapture::default())
            .expect("reader");
        // Every partition of the topic (the output topics are auto-created with several).
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(topic, partition.id(), Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut read = 0;
        while read < count && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => read += 1,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        let codecs = consumer
            .context()
            .lines()
            .into_iter()
            .filter(|l| l.contains("Enqueue") && l.contains(topic))
            .filter_map(|l| {
                let codec = l.rsplit(", ").next()?.trim_end_matches(')').to_string();
                Some(codec)
            })
            .collect();
        (read, codecs)
    })
}

/// Produces `values` to partition 0 of `topic` in one batch compressed with `codec`; returns the
/// producer's log line for that batch.
async fn produce_compressed(
    bootstrap: &str,
    topic: &str,
    codec: &str,
    values: &[String],
) -> String {
    let capture = LogCapture::default();
    let producer: FutureProducer<LogCapture> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", codec)
        // Wait for all the records: one batch, so it is worth compressing.
        .set("linger.ms", "200")
        .set("debug", "msg")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug)
        .create_with_context(capture.clone())
        .expect("producer");
    let sends = values.iter().map(|v| {
        producer.send(
            FutureRecord::<(), str>::to(topic).partition(0).payload(v),
            Duration::from_secs(10),
        )
    });
    for delivery in futures::future::join_all(sends).await {
        delivery.expect("delivered");
    }
    let _ = support::blocking(|| producer.flush(Duration::from_secs(10)));
    let lines = capture.lines();
    lines
        .into_iter()
        .find(|l| l.contains("Produce MessageSet") && l.contains(topic))
        .unwrap_or_else(|| panic!("no produce log line for {topic}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_input_of_every_codec_and_compresses_output_as_configured() {
    let topics: Vec<String> = INPUT_CODECS
        .iter()
        .map(|c| support::unique(&format!("raw-{c}")))
        .collect();
    let kafka = Kafka::new(&topics.iter().map(|t| (t.as_str(), 1)).collect::<Vec<_>>());
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let mut config = support::config(&kafka, &sim, &topics[0]);
    config.input.topics = topics.clone();
    config.kafka.compression = Compression::Zstd;

    let per_codec = 5;
    for (codec, topic) in INPUT_CODECS.iter().zip(&topics) {
        let values: Vec<String> = (0..per_codec)
            .map(|_| support::clearsale(&support::new_id(), "mfa", "2025-09-26T17:21:11.0367845Z"))
            .collect();
        let line = produce_compressed(&kafka.bootstrap, topic, codec, &values).await;
        assert!(
            line.contains(&format!("{per_codec} message(s)"))
                && line.ends_with(&format!("{codec})")),
            "the input batch was not {codec}-compressed: {line}"
        );
    }

    let engine = support::RunningEngine::start(&config).await;
    let total = per_codec * INPUT_CODECS.len();
    assert!(
        support::eventually(Duration::from_secs(60), || engine.snapshot().finished()
            == total as u64)
        .await,
        "{:?}",
        engine.snapshot()
    );
    let summary = engine.stop().await.expect("clean stop");
    assert_eq!(summary.published, total as u64, "{summary:?}");
    for topic in &topics {
        let committed = kafka.committed(&config.kafka.group_id, topic, 1);
        assert_eq!(
            support::committed_of(&committed, 0),
            per_codec as i64,
            "{topic}"
        );
    }
    let (read, codecs) = read_with_codecs(&kafka.bootstrap, &config.output.clearsale_topic, total);
    assert_eq!(read, total);
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| c == "zstd"),
        "output batches: {codecs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_codec_round_trips_through_the_broker() {
    let topics: Vec<(Compression, String)> = Compression::ALL
        .iter()
        .map(|c| (*c, support::unique(&format!("out-{}", c.as_librdkafka()))))
        .collect();
    let kafka = Kafka::new(
        &topics
            .iter()
            .map(|(_, t)| (t.as_str(), 1))
            .collect::<Vec<_>>(),
    );
    let value = support::clearsale(&support::new_id(), "mfa", "2025-09-26T17:21:11Z");
    for (compression, topic) in &topics {
        let settings = KafkaSettings {
            bootstrap_servers: kafka.bootstrap.clone(),
            compression: *compression,
            ..Default::default()
        };
        let producer: FutureProducer = kafka_config::producer_config(&settings)
            .set("linger.ms", "100")
            .create()
            .expect("the service's producer");
        let sends = (0..10).map(|_| {
            producer.send(
                FutureRecord::<(), str>::to(topic)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(10),
            )
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.expect("delivered");
        }
        let (read, codecs) = read_with_codecs(&kafka.bootstrap, topic, 10);
        assert_eq!(read, 10, "{compression:?}");
        let expected = match compression {
            Compression::None => "uncompressed",
            other => other.as_librdkafka(),
        };
        assert!(
            !codecs.is_empty() && codecs.iter().all(|c| c == expected),
            "{compression:?}: batches {codecs:?}"
        );
    }
}
