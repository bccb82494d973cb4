//! End to end against a real Kafka-protocol broker: the built binary, a Tansu broker process
//! (in-memory storage) and the provider simulator. Tansu supports consumer groups and offset
//! commits, which is what the service needs; it has no transactions and no offsets by
//! timestamp, which the service does not use.
//!
//! `tansu` must be on `PATH` (CI installs it with `cargo install tansu --features dynostore`).
//! Without it the test fails when `CI` is set, and is skipped with a message otherwise.

use crate::support::{self, ChildGuard, Produced, Webhook};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use webhook_enricher::avro::{decode, schema, to_json};
use webhook_enricher::simulator::SimulatorConfig;

const INPUT_PARTITIONS: i32 = 3;

/// `tansu` from `PATH`.
fn tansu_binary() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("tansu"))
        .find(|path| path.is_file())
}

/// The `tansu` binary, or `None` (the test is skipped, saying so) outside CI; CI must have it.
fn tansu_or_skip(test: &str) -> Option<PathBuf> {
    let binary = tansu_binary();
    if binary.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tansu is not on PATH, but CI must run this test (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED {test}: `tansu` is not on PATH \
             (install it with `cargo install tansu --features dynostore --locked`)"
        );
    }
    binary
}

/// A Tansu broker on a free loopback port, killed when dropped.
struct Tansu {
    bootstrap: String,
    process: ChildGuard,
}

impl Tansu {
    /// Starts the broker and waits until it accepts connections. A port taken between choosing
    /// and binding it makes the broker exit; then another port is tried.
    async fn start(binary: &std::path::Path) -> Self {
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut cmd = std::process::Command::new(binary);
            cmd.args(["broker", "--storage-engine", "memory://tansu/"])
                .args(["--listener-url", &url, "--advertised-listener-url", &url]);
            let log = support::log_dir().join(format!("{}.log", support::unique("tansu")));
            let mut process = ChildGuard::spawn(cmd, log);
            let deadline = Instant::now() + Duration::from_secs(30);
            while process.try_status().is_none() && Instant::now() < deadline {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Self {
                        bootstrap: format!("127.0.0.1:{port}"),
                        process,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last_log = process.tail();
        }
        panic!("tansu did not start listening\n{last_log}");
    }

    async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .create()
                .expect("admin client");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .expect("create topics");
        for result in results {
            assert!(
                result.is_ok(),
                "create topic: {result:?}\n{}",
                self.process.tail()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_against_a_real_tansu_broker() {
    let Some(binary) = tansu_or_skip("end_to_end_against_a_real_tansu_broker") else {
        return;
    };
    let tansu = Tansu::start(&binary).await;

    let not_found = uuid::Uuid::new_v4();
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(10);
    sim_config.latency.jitter = Duration::from_millis(20);
    sim_config.faults.not_found_ids = vec![not_found];
    let sim = support::start_simulator(sim_config).await;

    let input = support::unique("tansu");
    let outputs = ["clearsale", "unico", "dlq"].map(|s| format!("{input}.{s}"));
    tansu
        .create_topics(&[
            (&input, INPUT_PARTITIONS),
            (&outputs[0], 2),
            (&outputs[1], 2),
            (&outputs[2], 1),
        ])
        .await;

    // Config: the simulator, the broker, the topics created above.
    let config = support::config_for(&tansu.bootstrap, &sim, &input);
    assert_eq!(
        [
            &config.output.clearsale_topic,
            &config.output.unico_topic,
            &config.output.dead_letter_topic,
        ],
        [&outputs[0], &outputs[1], &outputs[2]]
    );

    // A realistic mix: both providers, bad payloads, a skipped Unico status, an id the
    // provider does not know, and a redelivered webhook.
    let mut webhooks = support::webhook_mix(60, true);
    webhooks.push(Webhook {
        value: format!(
            r#"{{"analysisId":"{not_found}","date":"2025-09-26T17:21:11Z","type":"mfa"}}"#
        ),
        key: Some(not_found.to_string()),
        expected: support::Expected::DeadLettered,
    });
    let producer = support::producer_for(&tansu.bootstrap);
    let mut produced =
        support::produce_webhooks(&producer, &input, INPUT_PARTITIONS, webhooks).await;
    let repeat = produced[0].clone();
    let (partition, offset) = support::produce_to(
        &producer,
        &input,
        Some(repeat.partition),
        repeat.webhook.key.as_deref(),
        repeat.webhook.value.as_bytes(),
    )
    .await;
    produced.push(Produced {
        partition,
        offset,
        ..repeat
    });
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in &produced {
        let end = ends.entry(p.partition).or_default();
        *end = (*end).max(p.offset + 1);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = support::spawn_run(&config, dir.path(), "tansu-run");
    let watcher = support::inspector(&tansu.bootstrap, &config.kafka.group_id);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = support::committed_by(&watcher, &input, INPUT_PARTITIONS);
        if ends
            .iter()
            .all(|(p, end)| committed.get(p).is_some_and(|c| c >= end))
        {
            break;
        }
        assert!(
            child.try_status().is_none() && Instant::now() < deadline,
            "not every input was committed: committed {committed:?}, ends {ends:?}\n{}\n{}",
            child.tail(),
            tansu.process.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.signal("TERM");
    let status = child.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status {status:?}\n{}",
        child.tail()
    );
    assert_eq!(
        support::committed_by(&watcher, &input, INPUT_PARTITIONS),
        ends,
        "the final commit"
    );

    // Every input has exactly one outcome (one run, no crash: the redelivery is deduplicated).
    let mut published = support::read_to_end(&tansu.bootstrap, &outputs[0]).await;
    published.extend(support::read_to_end(&tansu.bootstrap, &outputs[1]).await);
    let dead_letters = support::read_to_end(&tansu.bootstrap, &outputs[2]).await;
    let counts = support::outcome_counts(&published, &dead_letters);
    for p in &produced {
        let seen = p.webhook.outcomes(&counts);
        assert_eq!(
            seen,
            usize::from(p.webhook.must_appear()),
            "input at {}:{} ({:?}) appears {seen} times\n{}",
            p.partition,
            p.offset,
            p.webhook.expected,
            child.tail()
        );
    }
    let distinct = produced.len() - 1;
    let must_appear = produced[..distinct]
        .iter()
        .filter(|p| p.webhook.must_appear())
        .count();
    assert_eq!(published.len() + dead_letters.len(), must_appear);

    // The enriched records are readable Avro, keyed and labelled consistently.
    for record in &published {
        let value = to_json(
            &decode(&record.value, schema().expect("schema"))
                .expect("output decodes")
                .value,
        );
        assert_eq!(value["subject_id"].as_str(), record.key.as_deref());
        assert_eq!(value["event_id"].as_str(), Some(record.header("event_id")));
        assert_eq!(
            value["provider"].as_str().map(str::to_ascii_lowercase),
            Some(record.header("provider").to_string())
        );
    }
    let class_of = |value: &str| {
        dead_letters
            .iter()
            .find(|r| r.value == value.as_bytes())
            .map(|r| r.header("__connect.errors.class.name").to_string())
    };
    assert_eq!(
        class_of(&produced[distinct - 1].webhook.value).as_deref(),
        Some("not_found")
    );
    let bad_json = produced
        .iter()
        .find(|p| p.webhook.value.starts_with("not json"))
        .expect("a bad payload");
    assert_eq!(
        class_of(&bad_json.webhook.value).as_deref(),
        Some("malformed_payload")
    );
}

/// Runs `webhook-enricher replay ARGS` (the built binary) with `config`; returns its exit code
/// and its output (stdout and stderr).
async fn replay_binary(
    config: &webhook_enricher::config::Config,
    args: &[&str],
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = support::write_config(config, dir.path());
    let mut cmd = support::binary_command();
    cmd.arg("--config")
        .arg(&file)
        .args(["--log-level", "warn", "replay"])
        .args(args)
        .envs(support::secret_env(config));
    let log = support::log_dir().join(format!("{}.log", support::unique("tansu-replay")));
    let mut child = ChildGuard::spawn(cmd, log.clone());
    let status = child.wait_exit(Duration::from_secs(120)).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    (status.and_then(|s| s.code()), output)
}

/// The count a replay summary line gives (`  published             6`).
fn summary_count(output: &str, label: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_ranges_by_offset_and_by_time_against_a_real_tansu_broker() {
    let Some(binary) =
        tansu_or_skip("replay_ranges_by_offset_and_by_time_against_a_real_tansu_broker")
    else {
        return;
    };
    let tansu = Tansu::start(&binary).await;
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let input = support::unique("tansu-replay");
    let config = support::config_for(&tansu.bootstrap, &sim, &input);
    let mut topics = vec![(input.clone(), 2)];
    for suffix in [
        "clearsale",
        "unico",
        "dlq",
        "clearsale.byoffset",
        "unico.byoffset",
        "clearsale.bytime",
        "unico.bytime",
    ] {
        topics.push((format!("{input}.{suffix}"), 1));
    }
    let refs: Vec<(&str, i32)> = topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    tansu.create_topics(&refs).await;

    // Ten Unico webhooks per partition, one minute apart, sent together so that Tansu stores
    // them in batches (and reports the high watermark behind the last record).
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer = support::producer_for(&tansu.bootstrap);
    let mut sends = Vec::new();
    for minute in 0..10i64 {
        for partition in 0..2 {
            let id = uuid::Uuid::new_v4().to_string();
            let payload = support::unico(&id, "3");
            let producer = producer.clone();
            let topic = input.clone();
            sends.push(async move {
                let record: rdkafka::producer::FutureRecord<'_, (), str> =
                    rdkafka::producer::FutureRecord::to(&topic)
                        .partition(partition)
                        .payload(payload.as_str())
                        .timestamp(base + minute * 60_000);
                let d = producer
                    .send(record, Duration::from_secs(20))
                    .await
                    .expect("produce");
                (d.partition, d.offset, minute, id)
            });
        }
    }
    let produced = futures::future::join_all(sends).await;
    let ids_where = |keep: &dyn Fn(i64, i64) -> bool| -> std::collections::BTreeSet<String> {
        produced
            .iter()
            .filter(|(_, offset, minute, _)| keep(*offset, *minute))
            .map(|(_, _, _, id)| id.clone())
            .collect()
    };
    let keys = |records: &[support::OutRecord]| -> std::collections::BTreeSet<String> {
        records.iter().filter_map(|r| r.key.clone()).collect()
    };

    // By offset: [2, 8) of both partitions, to shadow topics.
    let (code, output) = replay_binary(
        &config,
        &["--from", "2", "--to", "8", "--output-suffix", ".byoffset"],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("replay completed"), "{output}");
    assert_eq!(summary_count(&output, "published"), Some(12), "{output}");
    let by_offset =
        support::read_to_end(&tansu.bootstrap, &format!("{input}.unico.byoffset")).await;
    assert_eq!(by_offset.len(), 12);
    assert_eq!(
        keys(&by_offset),
        ids_where(&|offset, _| (2..8).contains(&offset))
    );

    // By time: minutes [3, 7). Tansu answers the start time with offset 0, so the range starts
    // at the beginning of each partition, and the client-side filter makes it exact.
    let at = |minute: i64| {
        chrono::DateTime::from_timestamp_millis(base + minute * 60_000)
            .expect("a time")
            .to_rfc3339()
    };
    let time_args = [
        "--from-timestamp".to_string(),
        at(3),
        "--to-timestamp".to_string(),
        at(7),
        "--output-suffix".to_string(),
        ".bytime".to_string(),
    ];
    let time_args: Vec<&str> = time_args.iter().map(String::as_str).collect();
    let mut dry = time_args.clone();
    dry.push("--dry-run");
    let (code, plan) = replay_binary(&config, &dry).await;
    assert_eq!(code, Some(0), "{plan}");
    let starts: Vec<&str> = plan
        .lines()
        .filter(|l| l.trim_start().starts_with(&input))
        .map(|l| l.split_whitespace().nth(2).unwrap_or_default())
        .collect();
    assert_eq!(starts, vec!["0", "0"], "Tansu's coarse answer: {plan}");
    let (code, output) = replay_binary(&config, &time_args).await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(summary_count(&output, "published"), Some(8), "{output}");
    assert_eq!(
        summary_count(&output, "filtered out by time"),
        Some(12),
        "{output}"
    );
    let by_time = support::read_to_end(&tansu.bootstrap, &format!("{input}.unico.bytime")).await;
    assert_eq!(
        keys(&by_time),
        ids_where(&|_, minute| (3..7).contains(&minute))
    );
    assert_eq!(by_time.len(), 8, "each record once");

    // The live output topic and the live group were never touched.
    assert!(
        support::read_to_end(&tansu.bootstrap, &config.output.unico_topic)
            .await
            .is_empty()
    );
    let live = support::inspector(&tansu.bootstrap, &config.kafka.group_id);
    assert!(support::committed_by(&live, &input, 2).is_empty());
}

/// `redrive` as a user runs it (the built binary) against a real broker: a dry run, then the
/// redrive of the `not_found` dead letters of a time range, then the same command again. Tansu
/// answers offsets-for-times with offset 0 for a mid-log time: the client-side time filter
/// keeps the result exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_against_a_real_tansu_broker() {
    use crate::redrive::{write, DeadLetter};
    let Some(binary) = tansu_or_skip("redrive_against_a_real_tansu_broker") else {
        return;
    };
    let tansu = Tansu::start(&binary).await;
    let dlt = support::unique("tansu-dlq");
    let raw = support::unique("tansu-raw");
    tansu.create_topics(&[(&dlt, 2), (&raw, 2)]).await;
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z")
        .expect("time")
        .timestamp_millis();
    let dls: Vec<DeadLetter> = (0..10)
        .map(|i| {
            let class = if i % 3 == 2 {
                "malformed_payload"
            } else {
                "not_found"
            };
            let mut dl = DeadLetter::new(i % 2, class, &raw);
            dl.timestamp_ms = Some(t0 + i64::from(i) * 60_000);
            dl
        })
        .collect();
    write(&support::producer_for(&tansu.bootstrap), &dlt, &dls).await;
    // From 08:02 (inclusive) to 08:08 (exclusive): i = 2..=7, of which 2 and 5 are malformed.
    let expected: std::collections::BTreeSet<String> = dls[2..8]
        .iter()
        .filter(|d| d.class == "not_found")
        .map(|d| d.key.clone())
        .collect();
    assert_eq!(expected.len(), 4);

    let group = support::unique("group");
    let redrive = |extra: &[&str]| {
        let mut cmd = support::binary_command();
        cmd.args(["--log-level", "warn", "--log-format", "text"])
            .args([
                "--set",
                &format!("kafka.bootstrap_servers={}", tansu.bootstrap),
            ])
            .args(["--set", &format!("kafka.group_id={group}")])
            .args(["--set", &format!("output.dead_letter_topic={dlt}")])
            .args(["redrive", "--class", "not_found"])
            .args([
                "--from",
                "2026-12-03T08:02:00Z",
                "--to",
                "2026-12-03T08:08:00Z",
            ])
            .args(extra);
        let out = support::blocking(|| cmd.output()).expect("run the binary");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = redrive(&["--dry-run"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("would redrive: 4\n  not_found: 4\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("filtered out: 6 (by class 3, time 3)"),
        "{stdout}"
    );
    for key in &expected {
        assert!(stdout.contains(key.as_str()), "{key} listed\n{stdout}");
    }
    let (code, stdout, stderr) = redrive(&[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("redriven: 4\n"), "{stdout}");
    // Reaching the end of a partition is how it stops, not a warning.
    assert!(!stderr.contains("PartitionEOF"), "{stderr}");
    let out = support::read_to_end(&tansu.bootstrap, &raw).await;
    let keys: std::collections::BTreeSet<String> =
        out.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(out.len(), 4, "{out:#?}");
    assert_eq!(keys, expected);
    assert!(out
        .iter()
        .all(|r| r.header("webhook_enricher.redrive.count") == "1"));
    // The same command again resumes after what it did: nothing redriven twice.
    let (code, stdout, stderr) = redrive(&[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("redriven: 0\n"), "{stdout}");
    assert_eq!(support::read_to_end(&tansu.bootstrap, &raw).await.len(), 4);
}

/// The polling fallback against a real broker (the built binary): the expectations topic is
/// checked and read by manual assignment next to the input, 20 % of the webhooks are withheld
/// and their results published by polls, every result once, and every expectation committed
/// in the expectations group only once resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_fallback_against_a_real_tansu_broker() {
    let Some(binary) = tansu_or_skip("polling_fallback_against_a_real_tansu_broker") else {
        return;
    };
    let tansu = Tansu::start(&binary).await;
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let input = support::unique("tansu-fb");
    let expectations = format!("{input}.expectations");
    let outputs = ["clearsale", "unico", "dlq"].map(|s| format!("{input}.{s}"));
    tansu
        .create_topics(&[
            (&input, 2),
            (&expectations, 2),
            (&outputs[0], 1),
            (&outputs[1], 1),
            (&outputs[2], 1),
        ])
        .await;
    let mut config = support::config_for(&tansu.bootstrap, &sim, &input);
    config.fallback.enabled = true;
    config.fallback.expectations_topic = expectations.clone();
    // Counted from the expectations' creation, before the service starts: long enough for it
    // to join the group and publish the webhooks first (a poll that wins that race would still
    // publish each result once, but the test checks which path published it).
    config.fallback.after = Duration::from_secs(20);
    config.fallback.poll_interval = Duration::from_millis(200);
    config.fallback.max_poll_interval = Duration::from_millis(500);

    let producer = support::producer_for(&tansu.bootstrap);
    let ids: Vec<String> = (0..10).map(|_| support::new_id()).collect();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let created = chrono::Utc::now().to_rfc3339();
    for (i, id) in ids.iter().enumerate() {
        let expectation = format!(
            r#"{{"provider":"unico","id":"{id}","created_at":"{created}","expect":[2,3,4,5]}}"#
        );
        let (p, o) = support::produce_to(
            &producer,
            &expectations,
            None,
            Some(id),
            expectation.as_bytes(),
        )
        .await;
        let end = ends.entry(p).or_default();
        *end = (*end).max(o + 1);
        if i % 5 != 0 {
            let webhook = support::unico(id, "3");
            support::produce_to(&producer, &input, None, Some(id), webhook.as_bytes()).await;
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = support::spawn_run(&config, dir.path(), "tansu-fallback");
    let group = config.fallback.expectations_group(&config.kafka.group_id);
    let watcher = support::inspector(&tansu.bootstrap, &group);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = support::committed_by(&watcher, &expectations, 2);
        if ends
            .iter()
            .all(|(p, end)| committed.get(p).is_some_and(|c| c >= end))
        {
            break;
        }
        assert!(
            child.try_status().is_none() && Instant::now() < deadline,
            "not every expectation was resolved: committed {committed:?}, ends {ends:?}\n{}",
            child.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.signal("TERM");
    let status = child.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", child.tail());

    let published = support::read_to_end(&tansu.bootstrap, &outputs[1]).await;
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for r in &published {
        by_id
            .entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.header("trigger_source").to_string());
    }
    assert_eq!(published.len(), ids.len(), "{by_id:?}");
    for (i, id) in ids.iter().enumerate() {
        let wanted = if i % 5 == 0 { "poll" } else { "webhook" };
        assert_eq!(by_id.get(id), Some(&vec![wanted.to_string()]), "{id}");
    }
    assert!(support::read_to_end(&tansu.bootstrap, &outputs[2])
        .await
        .is_empty());
}
