//! `redrive` against librdkafka's mock cluster: the filters, the loop guard, the dry run, the
//! progress committed only after the acknowledgement, resuming, and the whole way round with the
//! engine (a `not_found` dead letter redriven after the provider was fixed).

use crate::support::{self, Kafka, OutRecord};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use webhook_enricher::config::Config;
use webhook_enricher::engine::dead_letter::names;
use webhook_enricher::failure::ErrorClass;
use webhook_enricher::redrive::decide::headers::{COUNT, FROM};
use webhook_enricher::redrive::report::Summary;
use webhook_enricher::redrive::{self, RedriveOptions, RedriveSettings};

/// A dead letter as the engine writes it: the original key, value and headers, then the
/// `__connect.errors.*` headers.
pub struct DeadLetter {
    pub partition: i32,
    pub class: &'static str,
    /// `None`: no `__connect.errors.topic` header.
    pub source: Option<String>,
    pub key: String,
    pub value: String,
    pub redrive_count: Option<&'static str>,
    pub timestamp_ms: Option<i64>,
}

impl DeadLetter {
    pub fn new(partition: i32, class: &'static str, source: &str) -> Self {
        let key = support::new_id();
        Self {
            partition,
            class,
            source: Some(source.to_string()),
            value: support::clearsale(&key, "mfa", "2026-12-01T10:00:00Z"),
            key,
            redrive_count: None,
            timestamp_ms: None,
        }
    }

    /// The original headers (what a republish must carry, before the redrive's own).
    fn original_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            ("provider".to_string(), "clearsale".to_string()),
            ("request-id".to_string(), format!("req-{}", self.key)),
        ];
        if let Some(c) = self.redrive_count {
            h.push((COUNT.to_string(), c.to_string()));
        }
        h
    }
}

/// Writes the dead letters, in order, and returns where each landed. They are all handed to the
/// producer before any acknowledgement is awaited, so consecutive ones share record batches (as
/// the engine's dead letters do).
pub async fn write(producer: &FutureProducer, topic: &str, dls: &[DeadLetter]) -> Vec<(i32, i64)> {
    let mut pending = Vec::with_capacity(dls.len());
    for dl in dls {
        let mut hs = OwnedHeaders::new();
        let mut added = vec![
            (names::PARTITION, "0".to_string()),
            (names::OFFSET, "17".to_string()),
            (names::CONNECTOR, "webhook-enricher".to_string()),
            (names::CLASS, dl.class.to_string()),
            (names::FAILED_AT, "2026-12-03T10:00:00.000Z".to_string()),
        ];
        if let Some(source) = &dl.source {
            added.insert(0, (names::TOPIC, source.clone()));
        }
        for (k, v) in dl
            .original_headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(added.iter().map(|(k, v)| (*k, v.as_str())))
        {
            hs = hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .partition(dl.partition)
            .key(dl.key.as_str())
            .payload(dl.value.as_str())
            .headers(hs);
        if let Some(ts) = dl.timestamp_ms {
            record = record.timestamp(ts);
        }
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("dead letter queued"),
        );
    }
    let mut at = Vec::with_capacity(pending.len());
    for delivery in pending {
        let d = delivery
            .await
            .expect("delivery reported")
            .expect("dead letter written");
        at.push((d.partition, d.offset));
    }
    at
}

fn config(kafka: &Kafka, dead_letter_topic: &str) -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap_servers = kafka.bootstrap.clone();
    c.kafka.group_id = support::unique("group");
    c.output.dead_letter_topic = dead_letter_topic.to_string();
    c
}

fn settings(config: &Config, options: &RedriveOptions) -> RedriveSettings {
    config.redrive_settings(options, chrono::Utc::now())
}

async fn run(settings: &RedriveSettings) -> Summary {
    tokio::time::timeout(
        Duration::from_secs(60),
        redrive::run(settings, std::future::pending()),
    )
    .await
    .expect("the redrive ends by itself")
    .expect("the redrive runs")
}

/// The records of `topic` by their key.
fn by_key(records: Vec<OutRecord>) -> HashMap<String, OutRecord> {
    records
        .into_iter()
        .map(|r| (r.key.clone().unwrap_or_default(), r))
        .collect()
}

/// The header list a republished record must carry.
fn republished_headers(
    dl: &DeadLetter,
    count: &str,
    dlt: &str,
    at: (i32, i64),
) -> Vec<(String, Option<String>)> {
    let mut h: Vec<(String, Option<String>)> = dl
        .original_headers()
        .into_iter()
        .filter(|(k, _)| k != COUNT)
        .map(|(k, v)| (k, Some(v)))
        .collect();
    h.push((COUNT.to_string(), Some(count.to_string())));
    h.push((FROM.to_string(), Some(format!("{dlt}/{}/{}", at.0, at.1))));
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrives_only_the_named_class_with_its_original_record_and_commits_every_dead_letter() {
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 2), (&raw, 1)]);
    let producer = kafka.producer();
    let mut orphan = DeadLetter::new(1, "not_found", &raw);
    orphan.source = None;
    let mut again = DeadLetter::new(1, "not_found", &raw);
    again.redrive_count = Some("1");
    let dls = vec![
        DeadLetter::new(0, "not_found", &raw),
        DeadLetter::new(0, "malformed_payload", &raw),
        DeadLetter::new(0, "not_found", &raw),
        DeadLetter::new(1, "retries_exhausted", &raw),
        again,
        orphan,
    ];
    let at = write(&producer, &dlt, &dls).await;
    let config = config(&kafka, &dlt);
    let options = RedriveOptions {
        classes: vec![ErrorClass::NotFound],
        ..RedriveOptions::default()
    };
    let summary = run(&settings(&config, &options)).await;

    assert_eq!(summary.redriven_total(), 3, "{}", summary.render());
    assert_eq!(summary.redriven["not_found"].count, 3);
    assert_eq!(summary.filtered_out_total(), 2);
    assert_eq!(summary.no_source.count, 1);
    assert_eq!(summary.no_source.lines[0].offset, at[5].1);
    assert_eq!(summary.errors.count, 0);
    assert!(!summary.failed());

    let out = by_key(kafka.read_now(&raw));
    assert_eq!(out.len(), 3, "{out:#?}");
    for (i, count) in [(0, "1"), (2, "1"), (4, "2")] {
        let dl = &dls[i];
        let r = &out[&dl.key];
        assert_eq!(r.value, dl.value.as_bytes());
        assert_eq!(r.header_list, republished_headers(dl, count, &dlt, at[i]));
    }
    // Every dead letter read counts as done: filtered out and reported ones too.
    let group = summary.group.clone();
    assert!(group.starts_with(&format!("{}.redrive.", config.kafka.group_id)));
    assert_eq!(
        kafka.committed(&group, &dlt, 2),
        HashMap::from([(0, 3), (1, 3)])
    );
    // Run again: nothing new to read, nothing redriven twice.
    let again = run(&settings(&config, &options)).await;
    assert_eq!(again.redriven_total(), 0, "{}", again.render());
    assert!(again.ranges.iter().all(|r| r.start == r.end));
    assert_eq!(kafka.read_now(&raw).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_filter_is_exact_although_the_broker_cannot_answer_offsets_for_times() {
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 1), (&raw, 1)]);
    let producer = kafka.producer();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z")
        .unwrap()
        .timestamp_millis();
    let dls: Vec<DeadLetter> = (0..6)
        .map(|i| {
            let mut dl = DeadLetter::new(0, "not_found", &raw);
            dl.timestamp_ms = Some(t0 + i * 60_000);
            dl
        })
        .collect();
    write(&producer, &dlt, &dls).await;
    let config = config(&kafka, &dlt);
    let options = RedriveOptions {
        from: Some("2026-12-03T08:01:00Z".parse().unwrap()),
        to: Some("2026-12-03T08:04:00Z".parse().unwrap()),
        ..RedriveOptions::default()
    };
    let summary = run(&settings(&config, &options)).await;
    // The mock cluster answers offsets-for-times with -1: the whole partition is read.
    assert_eq!(summary.ranges[0].start, 0);
    assert_eq!(summary.redriven_total(), 3, "{}", summary.render());
    assert_eq!(summary.filtered_out_total(), 3);
    let out = by_key(kafka.read_now(&raw));
    let mut keys: Vec<&String> = out.keys().collect();
    keys.sort();
    let mut expected: Vec<&String> = dls[1..4].iter().map(|d| &d.key).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offset_filter_bounds_each_named_partition_and_leaves_the_others_whole() {
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 2), (&raw, 1)]);
    let producer = kafka.producer();
    let dls: Vec<DeadLetter> = (0..8)
        .map(|i| DeadLetter::new(i % 2, "retries_exhausted", &raw))
        .collect();
    let at = write(&producer, &dlt, &dls).await;
    let config = config(&kafka, &dlt);
    let options = RedriveOptions {
        from_offset: Some("0=1".parse().unwrap()),
        to_offset: Some("0=3".parse().unwrap()),
        ..RedriveOptions::default()
    };
    let summary = run(&settings(&config, &options)).await;
    assert_eq!(summary.redriven_total(), 6, "{}", summary.render());
    let out = by_key(kafka.read_now(&raw));
    let redriven: Vec<(i32, i64)> = {
        let mut v: Vec<(i32, i64)> = dls
            .iter()
            .zip(&at)
            .filter(|(dl, _)| out.contains_key(&dl.key))
            .map(|(_, at)| *at)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        redriven,
        [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)],
        "partition 0 from 1 up to 3 (exclusive); partition 1 whole"
    );
    // Partition 0 is committed up to its bound only: offset 3 is still to do for this group.
    assert_eq!(
        kafka.committed(&summary.group, &dlt, 2),
        HashMap::from([(0, 3), (1, 4)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_guard_refuses_a_record_at_the_limit_and_reports_it() {
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 1), (&raw, 1)]);
    let producer = kafka.producer();
    let mut at_limit = DeadLetter::new(0, "not_found", &raw);
    at_limit.redrive_count = Some("2");
    let mut below = DeadLetter::new(0, "not_found", &raw);
    below.redrive_count = Some("1");
    let dls = vec![at_limit, below];
    let at = write(&producer, &dlt, &dls).await;
    let config = config(&kafka, &dlt);
    let options = RedriveOptions {
        max_redrives: 2,
        ..RedriveOptions::default()
    };
    let summary = run(&settings(&config, &options)).await;
    assert_eq!(summary.refused.count, 1, "{}", summary.render());
    let refused = &summary.refused.lines[0];
    assert_eq!((refused.partition, refused.offset), at[0]);
    assert_eq!(refused.count, Some(2));
    assert_eq!(refused.key, dls[0].key);
    assert!(summary
        .render()
        .contains("refused by the loop guard (already redriven 2 times): 1"));
    assert_eq!(summary.redriven_total(), 1);
    let out = kafka.read_now(&raw);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.as_deref(), Some(dls[1].key.as_str()));
    assert_eq!(out[0].header(COUNT), "2");
    // A refused dead letter is done too: a second run does not report it again.
    assert_eq!(
        kafka.committed(&summary.group, &dlt, 1),
        HashMap::from([(0, 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_by_class_and_produces_and_commits_nothing() {
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 1), (&raw, 1)]);
    let producer = kafka.producer();
    let dls = vec![
        DeadLetter::new(0, "not_found", &raw),
        DeadLetter::new(0, "retries_exhausted", &raw),
        DeadLetter::new(0, "not_found", &raw),
    ];
    write(&producer, &dlt, &dls).await;
    let config = config(&kafka, &dlt);
    let dry = RedriveOptions {
        dry_run: true,
        ..RedriveOptions::default()
    };
    let summary = run(&settings(&config, &dry)).await;
    assert_eq!(summary.redriven_total(), 3);
    let listed: BTreeMap<&str, Vec<&str>> = summary
        .redriven
        .iter()
        .map(|(class, g)| {
            (
                class.as_str(),
                g.lines.iter().map(|l| l.key.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([
            ("not_found", vec![dls[0].key.as_str(), dls[2].key.as_str()]),
            ("retries_exhausted", vec![dls[1].key.as_str()]),
        ])
    );
    let text = summary.render();
    assert!(
        text.starts_with("dry run: nothing produced, nothing committed"),
        "{text}"
    );
    assert!(
        text.contains("would redrive: 3\n  not_found: 2\n"),
        "{text}"
    );
    assert_eq!(kafka.count(&raw), 0, "nothing produced");
    assert!(
        kafka.committed(&summary.group, &dlt, 1).is_empty(),
        "nothing committed"
    );
    // The same selection without --dry-run (same group) then redrives all of them.
    let live = run(&settings(&config, &RedriveOptions::default())).await;
    assert_eq!(live.group, summary.group);
    assert_eq!(live.redriven_total(), 3, "{}", live.render());
    assert_eq!(kafka.read_now(&raw).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_redrive_resumes_without_repeating_or_missing_one() {
    const N: usize = 400;
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 2), (&raw, 2)]);
    let producer = kafka.producer();
    let dls: Vec<DeadLetter> = (0..N)
        .map(|i| DeadLetter::new(i as i32 % 2, "not_found", &raw))
        .collect();
    write(&producer, &dlt, &dls).await;
    let config = config(&kafka, &dlt);
    let mut first = settings(&config, &RedriveOptions::default());
    // One republish at a time, so the interruption lands well before the end.
    first.max_in_flight = 1;
    let bootstrap = kafka.bootstrap.clone();
    let watched = raw.clone();
    let interrupt = async move {
        let consumer = support::inspector(&bootstrap, &support::unique("watch"));
        while support::record_count(&consumer, &[&watched]) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let interrupted =
        tokio::time::timeout(Duration::from_secs(60), redrive::run(&first, interrupt))
            .await
            .expect("an interrupted redrive stops")
            .expect("the redrive runs");
    assert!(interrupted.interrupted, "{}", interrupted.render());
    let done_first = interrupted.redriven_total() as usize;
    assert!(
        (3..N).contains(&done_first),
        "stopped part-way: {}",
        interrupted.render()
    );
    // What was acknowledged is committed, and only that.
    let committed = kafka.committed(&interrupted.group, &dlt, 2);
    assert_eq!(
        committed.values().sum::<i64>() as usize,
        done_first,
        "{committed:?}"
    );
    assert!(interrupted
        .render()
        .contains("run the same command again to resume"));

    let resumed = run(&settings(&config, &RedriveOptions::default())).await;
    assert_eq!(resumed.group, interrupted.group);
    assert_eq!(
        resumed.redriven_total() as usize,
        N - done_first,
        "{}",
        resumed.render()
    );
    let out = kafka.read_now(&raw);
    assert_eq!(out.len(), N, "nothing redriven twice");
    let keys: std::collections::HashSet<_> = out.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys.len(), N, "nothing missed, nothing twice");
    assert_eq!(
        kafka.committed(&resumed.group, &dlt, 2),
        HashMap::from([(0, (N / 2) as i64), (1, (N / 2) as i64)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_republish_is_not_committed_and_the_next_run_redrives_it() {
    use rdkafka::types::RDKafkaRespErr;
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let refused = support::unique("raw-refused");
    let kafka = Kafka::new(&[(&dlt, 1), (&raw, 1), (&refused, 1)]);
    let producer = kafka.producer();
    let dls = vec![
        DeadLetter::new(0, "not_found", &raw),
        DeadLetter::new(0, "not_found", &raw),
        DeadLetter::new(0, "not_found", &refused),
        DeadLetter::new(0, "not_found", &raw),
        DeadLetter::new(0, "not_found", &raw),
    ];
    write(&producer, &dlt, &dls).await;
    kafka
        .cluster
        .topic_error(
            &refused,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let mut config = config(&kafka, &dlt);
    config
        .kafka
        .producer
        .0
        .insert("message.timeout.ms".into(), "5000".into());
    let mut first = settings(&config, &RedriveOptions::default());
    first.max_in_flight = 1;
    let failed = run(&first).await;
    assert!(failed.failed(), "{}", failed.render());
    assert_eq!(failed.errors.count, 1);
    assert_eq!(failed.errors.lines[0].offset, 2);
    assert_eq!(failed.redriven_total(), 2);
    assert!(failed
        .render()
        .contains("stopped at the first failed republish"));
    assert_eq!(
        kafka.committed(&failed.group, &dlt, 1),
        HashMap::from([(0, 2)]),
        "nothing committed from the failed republish on"
    );

    kafka
        .cluster
        .topic_error(&refused, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let resumed = run(&settings(&config, &RedriveOptions::default())).await;
    assert!(!resumed.failed(), "{}", resumed.render());
    assert_eq!(resumed.redriven_total(), 3);
    assert_eq!(kafka.read_now(&raw).len(), 4, "nothing redriven twice");
    let moved = kafka.read_now(&refused);
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].key.as_deref(), Some(dls[2].key.as_str()));
    assert_eq!(
        kafka.committed(&resumed.group, &dlt, 1),
        HashMap::from([(0, 5)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_or_partition_is_an_error() {
    let dlt = support::unique("dlq");
    let kafka = Kafka::new(&[(&dlt, 1)]);
    let config = config(&kafka, &support::unique("absent"));
    let result = redrive::run(
        &settings(&config, &RedriveOptions::default()),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(result, Err(redrive::RedriveError::NoTopic { .. })),
        "{result:?}"
    );
    let config = self::config(&kafka, &dlt);
    let options = RedriveOptions {
        partitions: vec![3],
        ..RedriveOptions::default()
    };
    let result = redrive::run(&settings(&config, &options), std::future::pending()).await;
    assert!(
        matches!(
            result,
            Err(redrive::RedriveError::NoPartition { partition: 3, .. })
        ),
        "{result:?}"
    );
}

/// The README's worked example, end to end: the engine dead-letters a ClearSale webhook as
/// `not_found`; a redrive while the provider still does not know the id dead-letters it again,
/// and that dead letter keeps the redrive count (the engine keeps every original header); after
/// the provider is fixed, the same redrive command resumes, and the record is published with the
/// `event_id` it always had (pinned), though it now sits at another input offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_found_dead_letter_is_redriven_after_the_provider_fix_with_the_same_event_id() {
    const SUBJECT: &str = "5b0d6a52-3c4e-4f7a-9d21-8e6f1a2b3c4d";
    const EVENT_ID: &str = "bd0607e5-7624-525e-bd50-e0aa346e8709";
    let input = support::unique("raw");
    let kafka = Kafka::new(&[(&input, 1)]);
    let mut broken = webhook_enricher::simulator::SimulatorConfig::default();
    broken.faults.not_found_ids = vec![SUBJECT.parse().unwrap()];
    let sim = support::start_simulator(broken).await;
    let mut config = support::config(&kafka, &sim, &input);
    // The second engine joins the same group: the mock cluster lets it in once the first
    // member's session has expired.
    for (k, v) in [
        ("session.timeout.ms", "4000"),
        ("heartbeat.interval.ms", "300"),
    ] {
        config.kafka.consumer.0.insert(k.into(), v.into());
    }
    let dlt = config.output.dead_letter_topic.clone();
    kafka.cluster.create_topic(&dlt, 1, 1).unwrap();
    let webhook = support::clearsale(SUBJECT, "mfa", "2025-09-26T17:21:11.0367845Z");
    let producer = kafka.producer();
    kafka
        .produce(
            &producer,
            &input,
            Some(0),
            Some(SUBJECT),
            webhook.as_bytes(),
            &[("provider", "clearsale"), ("request-id", "req-1")],
        )
        .await;

    let engine = support::RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || kafka.count(&dlt) == 1).await,
        "dead-lettered"
    );
    let options = RedriveOptions {
        classes: vec![ErrorClass::NotFound],
        ..RedriveOptions::default()
    };
    // The provider is not fixed yet: redriven, it fails again, and its new dead letter carries
    // the count.
    let first = run(&settings(&config, &options)).await;
    assert_eq!(first.redriven_total(), 1, "{}", first.render());
    assert!(
        support::eventually(Duration::from_secs(30), || kafka.count(&dlt) == 2).await,
        "dead-lettered again"
    );
    engine.stop().await.expect("engine stops");
    let dead = kafka.read_now(&dlt);
    assert_eq!(dead[1].header("__connect.errors.class.name"), "not_found");
    assert_eq!(dead[1].header(COUNT), "1");
    assert_eq!(dead[1].header(FROM), format!("{dlt}/0/0"));
    assert_eq!(dead[1].header("__connect.errors.offset"), "1");
    assert_eq!(dead[1].header("request-id"), "req-1");

    // The provider fix, then the same command: it resumes after the first dead letter.
    let fixed =
        support::start_simulator(webhook_enricher::simulator::SimulatorConfig::default()).await;
    config.clearsale.base_url = fixed.base_url();
    let engine = support::RunningEngine::start(&config).await;
    let second = run(&settings(&config, &options)).await;
    assert_eq!(second.group, first.group);
    assert_eq!(second.redriven_total(), 1, "{}", second.render());
    assert_eq!(second.redriven["not_found"].lines[0].offset, 1);
    assert_eq!(second.redriven["not_found"].lines[0].count, Some(2));
    let published = kafka.read_all(&config.output.clearsale_topic, 1, Duration::from_secs(30));
    engine.stop().await.expect("engine stops");
    assert_eq!(published.len(), 1);
    let record = &published[0];
    assert_eq!(record.header("event_id"), EVENT_ID);
    assert_eq!(
        record.header("schema-name"),
        "io.webhookenricher.v1.EnrichedEvent"
    );
    assert_eq!(record.header("schema-version"), "1");
    let value = webhook_enricher::avro::to_json(
        &webhook_enricher::avro::decode(&record.value, webhook_enricher::avro::schema().unwrap())
            .unwrap()
            .value,
    );
    assert_eq!(value["event_id"].as_str(), Some(EVENT_ID));
    // Lineage names where this copy was read: the third record of the input.
    assert_eq!(value["lineage"]["offset"].as_i64(), Some(2));
    assert_eq!(kafka.count(&dlt), 2, "not dead-lettered a third time");
}

/// The built binary's exit status: 2 for bad arguments or configuration, 1 when the redrive
/// cannot run, with the reason on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_2_on_bad_arguments_and_1_when_the_redrive_cannot_run() {
    let kafka = Kafka::new(&[]);
    let absent = support::unique("absent-dlq");
    let status = |args: &[&str]| {
        let mut cmd = support::binary_command();
        cmd.args(["--log-level", "warn"])
            .args([
                "--set",
                &format!("kafka.bootstrap_servers={}", kafka.bootstrap),
            ])
            .args(["--set", &format!("output.dead_letter_topic={absent}")])
            .arg("redrive")
            .args(args);
        let out = support::blocking(|| cmd.output()).expect("run the binary");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = status(&["--class", "nope"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("not an error class; one of: malformed_payload"),
        "{stderr}"
    );
    let (code, stderr) = status(&["--from", "yesterday"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = status(&["--set", "kafka.group_id=", "--dry-run"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("kafka.group_id must not be empty"),
        "{stderr}"
    );
    let (code, stderr) = status(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the dead-letter topic {absent} does not exist")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_cannot_be_read_is_an_error() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let dlt = support::unique("dlq");
    let raw = support::unique("raw");
    let kafka = Kafka::new(&[(&dlt, 1), (&raw, 1)]);
    write(
        &kafka.producer(),
        &dlt,
        &[DeadLetter::new(0, "not_found", &raw)],
    )
    .await;
    kafka.cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
    );
    let config = config(&kafka, &dlt);
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        redrive::run(
            &settings(&config, &RedriveOptions::default()),
            std::future::pending(),
        ),
    )
    .await
    .expect("the redrive ends by itself");
    kafka.cluster.clear_request_errors(RDKafkaApiKey::Fetch);
    let error = result.expect_err("the topic cannot be read");
    assert!(
        error.to_string().contains("TopicAuthorizationFailed")
            || error.to_string().contains("Topic authorization failed"),
        "{error}"
    );
    assert_eq!(kafka.count(&raw), 0);
}

/// The built binary, stopped by signals while its republishes wait for the broker (which refuses
/// them, retriably, until the test lets them through).
mod signals {
    use super::*;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    struct Stuck {
        kafka: Kafka,
        dlt: String,
        raw: String,
        child: support::ChildGuard,
    }

    /// Three dead letters, the produce requests refused, and the binary running until it has
    /// read them all (their republishes are in flight).
    impl Stuck {
        /// Sends the first SIGINT and waits until the redrive says it is interrupted.
        async fn interrupt(&mut self) {
            self.child.signal("INT");
            assert!(
                self.child
                    .wait_for_log("redrive interrupted", Duration::from_secs(10))
                    .await,
                "{}",
                self.child.tail()
            );
        }
    }

    async fn stuck() -> Stuck {
        let dlt = support::unique("dlq");
        let raw = support::unique("raw");
        let kafka = Kafka::new(&[(&dlt, 1), (&raw, 1)]);
        let dls: Vec<DeadLetter> = (0..3)
            .map(|_| DeadLetter::new(0, "not_found", &raw))
            .collect();
        write(&kafka.producer(), &dlt, &dls).await;
        kafka.cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
        );
        let mut cmd = support::binary_command();
        cmd.args([
            "--log-format",
            "json",
            "--log-level",
            "info,webhook_enricher::telemetry::redrive=debug",
        ])
        .args([
            "--set",
            &format!("kafka.bootstrap_servers={}", kafka.bootstrap),
        ])
        .args([
            "--set",
            &format!("kafka.group_id={}", support::unique("group")),
        ])
        .args(["--set", &format!("output.dead_letter_topic={dlt}")])
        .arg("redrive");
        let log = support::log_dir().join(format!("{}.log", support::unique("redrive")));
        let mut child = support::ChildGuard::spawn(cmd, log);
        assert!(
            child
                .wait_for_log(
                    r#""message":"dead letter read","partition":0,"offset":2"#,
                    Duration::from_secs(30)
                )
                .await,
            "the three dead letters are read\n{}",
            child.tail()
        );
        Stuck {
            kafka,
            dlt,
            raw,
            child,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_signal_waits_for_the_acknowledgements_then_commits_them_and_exits_0() {
        let mut s = stuck().await;
        s.interrupt().await;
        // The broker accepts the writes again: the republishes in flight are acknowledged.
        s.kafka.cluster.clear_request_errors(RDKafkaApiKey::Produce);
        let status = s.child.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", s.child.tail());
        assert!(s.child.log_contains("redriven: 3\n"), "{}", s.child.tail());
        assert!(
            s.child
                .log_contains("interrupted: run the same command again to resume"),
            "{}",
            s.child.tail()
        );
        assert_eq!(s.kafka.read_now(&s.raw).len(), 3);
        let groups = std::fs::read_to_string(&s.child.log).unwrap_or_default();
        let group = groups
            .split("group ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .expect("the summary names the group")
            .to_string();
        assert_eq!(
            s.kafka.committed(&group, &s.dlt, 1),
            HashMap::from([(0, 3)])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_signal_exits_130_without_committing() {
        let mut s = stuck().await;
        s.interrupt().await;
        s.child.signal("INT");
        let status = s.child.wait_exit(Duration::from_secs(30)).await;
        s.kafka.cluster.clear_request_errors(RDKafkaApiKey::Produce);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(130),
            "{}",
            s.child.tail()
        );
        assert!(!s.child.log_contains("redriven:"), "{}", s.child.tail());
        let log = std::fs::read_to_string(&s.child.log).unwrap_or_default();
        let group = log
            .split(r#""group":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the log names the group")
            .to_string();
        assert!(
            s.kafka.committed(&group, &s.dlt, 1).is_empty(),
            "nothing committed"
        );
    }
}
