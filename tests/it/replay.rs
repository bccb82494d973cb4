//! `webhook-enricher replay` against librdkafka's mock cluster and the provider simulator: the
//! end bound, the replay group (the live group untouched), shadow topics, dry-run counts,
//! resume after an interruption, the time filter where the broker answers offsets-for-times
//! with -1, and the refusals.

use crate::support::{self, Kafka};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use webhook_enricher::config::Config;
use webhook_enricher::replay::progress::ProgressSettings;
use webhook_enricher::replay::range::{PartitionOffsets, Position, RangeSpec};
use webhook_enricher::replay::{Ending, OutputChoice, ReplayError, ReplayOptions, ReplaySummary};
use webhook_enricher::simulator::SimulatorConfig;

const PARTITIONS: i32 = 2;

fn options(from: &str, to: &str) -> ReplayOptions {
    ReplayOptions {
        range: RangeSpec {
            from: Some(from.parse().expect("a position")),
            to: to.parse().expect("a position"),
            partition_offsets: PartitionOffsets::default(),
        },
        group: None,
        output: OutputChoice::default(),
        max_provider_rps: None,
        dedupe: true,
        renormalize: false,
        dry_run: false,
        progress: ProgressSettings::default(),
    }
}

async fn replay(
    config: &Config,
    options: &ReplayOptions,
) -> (Result<ReplaySummary, ReplayError>, String) {
    let mut out = Vec::new();
    let result =
        webhook_enricher::replay::run(config, options, std::future::pending(), &mut out).await;
    (result, String::from_utf8_lossy(&out).into_owned())
}

/// Unico webhooks with distinct ids (each one record published), `n` per partition, round
/// robin; returns the ids by (partition, offset).
async fn produce_unico(kafka: &Kafka, topic: &str, n: usize) -> HashMap<(i32, i64), String> {
    let producer = kafka.producer();
    let mut ids = HashMap::new();
    for i in 0..n * PARTITIONS as usize {
        let id = uuid::Uuid::new_v4().to_string();
        let at = kafka
            .produce(
                &producer,
                topic,
                Some(i as i32 % PARTITIONS),
                None,
                support::unico(&id, "3").as_bytes(),
                &[],
            )
            .await;
        ids.insert(at, id);
    }
    ids
}

/// Commits `offsets` (partition → next offset) for `group`, as a live instance would have.
fn commit(kafka: &Kafka, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    support::blocking(|| {
        let consumer = support::inspector(&kafka.bootstrap, group);
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .expect("offset");
        }
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    });
}

fn keys(records: &[support::OutRecord]) -> BTreeSet<String> {
    records.iter().filter_map(|r| r.key.clone()).collect()
}

fn setup(input: &str, extra: &[&str]) -> Kafka {
    let mut topics: Vec<(String, i32)> = vec![(input.to_string(), PARTITIONS)];
    for suffix in ["clearsale", "unico", "dlq"] {
        topics.push((format!("{input}.{suffix}"), 1));
    }
    for t in extra {
        topics.push((t.to_string(), 1));
    }
    let refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    Kafka::new(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_range_goes_to_shadow_topics_with_its_own_group_and_stops_at_its_end() {
    let input = support::unique("replay");
    let shadow = format!("{input}.unico.backfill");
    let kafka = setup(&input, &[&shadow, &format!("{input}.clearsale.backfill")]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    let ids = produce_unico(&kafka, &input, 6).await;
    // The live service is somewhere in the topic.
    commit(&kafka, &config.kafka.group_id, &input, &[(0, 5), (1, 2)]);

    let mut opts = options("1", "4");
    opts.output.suffix = Some(".backfill".into());
    let (result, report) = replay(&config, &opts).await;
    let summary = result.expect("the replay runs");
    assert_eq!(summary.ending, Ending::Completed, "{report}");
    // Offsets 1, 2 and 3 of both partitions: six records, each published once.
    assert_eq!(summary.stats.published, 6, "{report}");
    assert_eq!(
        summary.stats.consumed, 6,
        "nothing at or past the end is read in: {report}"
    );
    assert!(report.contains("replay completed"), "{report}");

    let published = kafka.read_now(&shadow);
    let expected: BTreeSet<String> = ids
        .iter()
        .filter(|((_, o), _)| (1..4).contains(o))
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(
        keys(&published),
        expected,
        "exactly the range, on the shadow topic"
    );
    assert_eq!(
        kafka.count(&config.output.unico_topic),
        0,
        "nothing reaches the live topic"
    );

    assert!(
        summary
            .group
            .starts_with(&format!("{}.replay.", config.kafka.group_id)),
        "{}",
        summary.group
    );
    let replay_committed = kafka.committed(&summary.group, &input, PARTITIONS);
    assert_eq!(replay_committed, HashMap::from([(0, 4), (1, 4)]));
    let live = kafka.committed(&config.kafka.group_id, &input, PARTITIONS);
    assert_eq!(
        live,
        HashMap::from([(0, 5), (1, 2)]),
        "the live group is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_per_partition_and_calls_and_produces_nothing() {
    let input = support::unique("replay-dry");
    let kafka = setup(&input, &[]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    produce_unico(&kafka, &input, 5).await;

    let mut opts = options("earliest", "latest");
    opts.range.partition_offsets = "1=3".parse().expect("offsets");
    opts.dry_run = true;
    let (result, report) = replay(&config, &opts).await;
    let summary = result.expect("the dry run");
    assert_eq!(summary.ending, Ending::DryRun);
    let ranges: Vec<(i32, i64, i64, i64)> = summary
        .partitions
        .iter()
        .map(|p| (p.partition, p.range.start, p.range.end, p.range.remaining()))
        .collect();
    assert_eq!(ranges, vec![(0, 0, 5, 5), (1, 3, 5, 2)]);
    assert!(report.contains("(dry run)"), "{report}");
    let total_line = report.lines().last().unwrap_or_default();
    assert!(
        total_line.contains("total") && total_line.ends_with(" 7"),
        "{report}"
    );

    assert_eq!(sim.stats().total_calls, 0, "no provider call");
    assert_eq!(summary.stats.consumed, 0);
    assert_eq!(
        kafka.count(&config.output.unico_topic),
        0,
        "nothing produced"
    );
    assert!(
        kafka
            .committed(&summary.group, &input, PARTITIONS)
            .is_empty(),
        "a dry run commits nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_from_its_progress_when_run_again() {
    let input = support::unique("replay-resume");
    let kafka = setup(&input, &[]);
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(30);
    let sim = support::start_simulator(sim_config).await;
    let mut config = support::config(&kafka, &sim, &input);
    // One record at a time, so the interruption lands in the middle.
    config.engine.max_in_flight = 1;
    let ids = produce_unico(&kafka, &input, 10).await;
    let opts = options("earliest", "latest");

    // First run: interrupted once some records are published.
    let (first, first_report) = {
        let mut out = Vec::new();
        let config = config.clone();
        let opts = opts.clone();
        let unico_topic = config.output.unico_topic.clone();
        let bootstrap = kafka.bootstrap.clone();
        let shutdown = async move {
            loop {
                let n = support::blocking(|| {
                    let c = support::inspector(&bootstrap, &support::unique("count"));
                    support::record_count(&c, &[unico_topic.as_str()])
                });
                if n >= 6 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let result = webhook_enricher::replay::run(&config, &opts, shutdown, &mut out).await;
        (result, String::from_utf8_lossy(&out).into_owned())
    };
    let first = first.expect("the first run");
    assert_eq!(first.ending, Ending::Interrupted, "{first_report}");
    assert!(
        first_report.contains("run the same command again"),
        "{first_report}"
    );
    let committed = kafka.committed(&first.group, &input, PARTITIONS);
    let done_first: i64 = committed.values().sum();
    assert!(
        (1..20).contains(&done_first),
        "the first run stopped in the middle: {committed:?}"
    );

    // Second run, the same command: resumes, and finishes the range.
    let (second, second_report) = replay(&config, &opts).await;
    let second = second.expect("the second run");
    assert_eq!(second.ending, Ending::Completed, "{second_report}");
    assert_eq!(
        second.group, first.group,
        "the same command, the same group"
    );
    for p in &second.partitions {
        assert_eq!(p.range.start, 0);
        assert_eq!(
            p.range.resume_at,
            committed.get(&p.partition).copied().unwrap_or(0),
            "partition {} resumes at its committed progress",
            p.partition
        );
    }
    assert_eq!(
        second.stats.consumed as i64,
        20 - done_first,
        "the second run reads only what was not done: {second_report}"
    );
    let published = kafka.read_now(&config.output.unico_topic);
    let all: BTreeSet<String> = ids.values().cloned().collect();
    assert_eq!(
        keys(&published),
        all,
        "every record of the range is published"
    );
    assert_eq!(
        kafka.committed(&second.group, &input, PARTITIONS),
        HashMap::from([(0, 10), (1, 10)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_range_is_exact_though_the_broker_answers_offsets_for_times_with_minus_one() {
    let input = support::unique("replay-time");
    let kafka = setup(&input, &[]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    // Ten records per partition, one minute apart, from this base time.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer = kafka.producer();
    let mut by_minute: HashMap<i64, Vec<String>> = HashMap::new();
    for minute in 0..10i64 {
        for p in 0..PARTITIONS {
            let id = uuid::Uuid::new_v4().to_string();
            let payload = support::unico(&id, "3");
            let record: FutureRecord<'_, (), str> = FutureRecord::to(&input)
                .partition(p)
                .payload(payload.as_str())
                .timestamp(base + minute * 60_000);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("produce");
            by_minute.entry(minute).or_default().push(id);
        }
    }
    let at = |minute: i64| {
        chrono::DateTime::from_timestamp_millis(base + minute * 60_000)
            .expect("a time")
            .to_rfc3339()
    };
    let mut opts = options("earliest", "latest");
    opts.range.from = Some(Position::parse_time(&at(3)).expect("a time"));
    opts.range.to = Position::parse_time(&at(7)).expect("a time");
    let (result, report) = replay(&config, &opts).await;
    let summary = result.expect("the replay");
    assert_eq!(summary.ending, Ending::Completed, "{report}");
    // The mock cluster answered -1: each partition was read from its start.
    for p in &summary.partitions {
        assert_eq!((p.range.start, p.range.end), (0, 10), "{report}");
    }
    // Minutes 3, 4, 5 and 6 (the end is exclusive), on both partitions.
    let expected: BTreeSet<String> = (3..7).flat_map(|m| by_minute[&m].clone()).collect();
    assert_eq!(summary.stats.published, 8, "{report}");
    assert_eq!(summary.stats.filtered_by_time, 12, "{report}");
    assert!(report.contains("filtered out by time  12"), "{report}");
    assert_eq!(keys(&kafka.read_now(&config.output.unico_topic)), expected);
    assert_eq!(
        kafka.committed(&summary.group, &input, PARTITIONS),
        HashMap::from([(0, 10), (1, 10)]),
        "filtered records are committed as done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_does_not_answer_is_an_error_naming_what_was_asked() {
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let mut config = support::config_for("127.0.0.1:1", &sim, "webhooks.raw");
    config.kafka.group_id = support::unique("group");
    let (result, report) = replay(&config, &options("earliest", "latest")).await;
    match result {
        Err(e @ ReplayError::Broker { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("metadata") && message.contains("webhooks.raw"),
                "{message}"
            );
        }
        other => panic!("expected a broker error, got {other:?}"),
    }
    assert!(report.is_empty(), "no plan without the broker: {report}");
    assert_eq!(sim.stats().total_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_missing_shadow_topics_and_foreign_partition_offsets_before_processing() {
    let input = support::unique("replay-refuse");
    let kafka = setup(&input, &[]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    produce_unico(&kafka, &input, 2).await;

    let mut opts = options("earliest", "latest");
    opts.output.suffix = Some(".backfill".into());
    let (result, _) = replay(&config, &opts).await;
    match result {
        Err(ReplayError::OutputTopicsMissing { topics }) => assert_eq!(
            topics,
            vec![
                format!("{input}.clearsale.backfill"),
                format!("{input}.unico.backfill")
            ]
        ),
        other => panic!("expected missing output topics, got {other:?}"),
    }

    let mut opts = options("earliest", "latest");
    opts.range.partition_offsets = "elsewhere:0=1".parse().expect("offsets");
    let (result, _) = replay(&config, &opts).await;
    assert!(
        matches!(&result, Err(ReplayError::PartitionOffsetsTopic { topic }) if topic == "elsewhere"),
        "{result:?}"
    );

    let mut missing_input = config.clone();
    missing_input.input.topics = vec![support::unique("absent")];
    let (result, _) = replay(&missing_input, &options("earliest", "latest")).await;
    assert!(
        matches!(&result, Err(ReplayError::TopicMissing { .. })),
        "{result:?}"
    );
    assert_eq!(sim.stats().total_calls, 0, "no provider call");
    assert_eq!(
        kafka.count(&config.output.unico_topic),
        0,
        "nothing produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renormalize_rebuilds_the_output_records_with_no_provider_call() {
    let input = support::unique("replay-renorm");
    let shadow = [format!("{input}.clearsale.v2"), format!("{input}.unico.v2")];
    let kafka = setup(&input, &[&shadow[0], &shadow[1]]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let config = support::config(&kafka, &sim, &input);
    // The live service enriched four webhooks (with raw_response, the default).
    let producer = kafka.producer();
    let cs = uuid::Uuid::new_v4().to_string();
    let webhooks = [
        support::clearsale(&cs, "mfa", "2025-09-26T17:21:11Z"),
        support::unico(&uuid::Uuid::new_v4().to_string(), "3"),
        support::unico(&uuid::Uuid::new_v4().to_string(), "2"),
        support::unico(&uuid::Uuid::new_v4().to_string(), "4"),
    ];
    kafka
        .produce_spread(&producer, &input, PARTITIONS, &webhooks)
        .await;
    let live = support::RunningEngine::start(&config).await;
    assert!(
        support::eventually(Duration::from_secs(30), || live.snapshot().published == 4).await,
        "{:?}",
        live.snapshot()
    );
    live.stop().await.expect("the live run");
    // Also on the Unico output topic: a record written without raw_response, and one that is
    // not an enriched record at all.
    let subject = uuid::Uuid::new_v4();
    let trigger = webhook_enricher::event::Trigger::Unico { status: 3 };
    let event = webhook_enricher::event::WebhookEvent {
        provider: webhook_enricher::provider::Provider::Unico,
        subject_id: subject,
        event_id: webhook_enricher::event::event_id(
            webhook_enricher::provider::Provider::Unico,
            subject,
            &trigger,
        ),
        trigger,
    };
    let bare = webhook_enricher::record::normalize(
        &event,
        &webhook_enricher::provider::Fetched::UnicoGone,
        None,
        true,
        chrono::Utc::now(),
    );
    let encoder = webhook_enricher::avro::RecordEncoder::single_object().expect("encoder");
    let value = encoder.encode("any", &bare).expect("encodes");
    let unico_topic = config.output.unico_topic.clone();
    kafka
        .produce(
            &producer,
            &unico_topic,
            None,
            Some(&subject.to_string()),
            &value,
            &[],
        )
        .await;
    kafka
        .produce(
            &producer,
            &unico_topic,
            None,
            Some("junk"),
            b"not avro",
            &[],
        )
        .await;
    let calls_before = sim.stats().total_calls;
    let originals: HashMap<String, String> = kafka
        .read_now(&config.output.clearsale_topic)
        .into_iter()
        .chain(kafka.read_now(&unico_topic))
        .filter(|r| r.key.as_deref() != Some("junk") && r.key != Some(subject.to_string()))
        .map(|r| {
            (
                r.header("event_id").to_string(),
                r.header("state").to_string(),
            )
        })
        .collect();
    assert_eq!(originals.len(), 4);

    let mut opts = options("earliest", "latest");
    opts.renormalize = true;
    opts.output.suffix = Some(".v2".into());
    let (result, report) = replay(&config, &opts).await;
    let summary = result.expect("the replay");
    assert_eq!(summary.ending, Ending::Completed, "{report}");
    assert_eq!(
        sim.stats().total_calls,
        calls_before,
        "no provider call (the simulator's call log)"
    );
    assert_eq!(summary.stats.published, 4, "{report}");
    assert_eq!(summary.stats.without_raw_response, 1, "{report}");
    assert!(report.contains("without raw_response  1"), "{report}");
    assert_eq!(summary.stats.dead_lettered_total(), 1, "{report}");

    let rebuilt: HashMap<String, String> = kafka
        .read_now(&shadow[0])
        .into_iter()
        .chain(kafka.read_now(&shadow[1]))
        .map(|r| {
            (
                r.header("event_id").to_string(),
                r.header("state").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rebuilt, originals,
        "the same events, the same states, event_id kept"
    );
    let dlq = kafka.read_now(&config.output.dead_letter_topic);
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value, b"not avro");
    assert_eq!(dlq[0].header("__connect.errors.topic"), unico_topic);
}

/// A replay never runs the polling fallback, whatever the configuration says: its own group
/// would read every expectation ever written and poll them all.
#[test]
fn a_replay_runs_without_the_polling_fallback_and_isolation() {
    let mut config = Config::default();
    config.fallback.enabled = true;
    let effective =
        webhook_enricher::replay::replay_config(&config, &options("earliest", "latest"));
    assert!(!effective.fallback.enabled);
    assert_eq!(
        effective.engine.isolation.enabled,
        webhook_enricher::engine::settings::Toggle::Off
    );
    assert_ne!(effective.kafka.group_id, config.kafka.group_id);
}
