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
    let Some(binary) = tansu_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tansu is not on PATH, but CI must run this test (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED end_to_end_against_a_real_tansu_broker: `tansu` is not on PATH \
             (install it with `cargo install tansu --features dynostore --locked`)"
        );
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

/// `redrive` as a user runs it (the built binary) against a real broker: a dry run, then the
/// redrive of the `not_found` dead letters of a time range, then the same command again. Tansu
/// answers offsets-for-times with offset 0 for a mid-log time: the client-side time filter
/// keeps the result exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_against_a_real_tansu_broker() {
    use crate::redrive::{write, DeadLetter};
    let Some(binary) = tansu_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tansu is not on PATH, but CI must run this test (.ci/run installs it)"
        );
        eprintln!("SKIPPED redrive_against_a_real_tansu_broker: `tansu` is not on PATH");
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
