//! Black-box tests of the built `webhook-enricher` binary: its command line, its signals, and
//! what a crash (`kill -9`) followed by a restart leaves in Kafka. The binary runs as a child
//! process against the in-process mock cluster and provider simulator.

use crate::support::{self, ChildGuard, Kafka, OutRecord, Produced};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use webhook_enricher::config::{Config, ENV_PREFIX};
use webhook_enricher::provider::Provider;
use webhook_enricher::simulator::{SimulatorConfig, SimulatorHandle};

const INPUT_PARTITIONS: i32 = 3;

/// A mock cluster with the input and output topics, the simulator, and a configuration for
/// both.
struct Setup {
    kafka: Kafka,
    sim: SimulatorHandle,
    config: Config,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(sim_config: SimulatorConfig) -> Self {
        let input = support::unique("bin");
        let outputs = ["clearsale", "unico", "dlq"].map(|s| format!("{input}.{s}"));
        let kafka = Kafka::new(&[
            (&input, INPUT_PARTITIONS),
            (&outputs[0], 2),
            (&outputs[1], 2),
            (&outputs[2], 2),
        ]);
        let sim = support::start_simulator(sim_config).await;
        let config = support::config(&kafka, &sim, &input);
        assert_eq!(
            [
                &config.output.clearsale_topic,
                &config.output.unico_topic,
                &config.output.dead_letter_topic
            ],
            [&outputs[0], &outputs[1], &outputs[2]]
        );
        Self {
            kafka,
            sim,
            config,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn input(&self) -> &str {
        &self.config.input.topics[0]
    }

    fn output_topics(&self) -> [&str; 3] {
        let o = &self.config.output;
        [&o.clearsale_topic, &o.unico_topic, &o.dead_letter_topic]
    }

    /// Every enriched record and every dead letter now in the output topics.
    async fn read_outputs(&self) -> (Vec<OutRecord>, Vec<OutRecord>) {
        let [clearsale, unico, dlq] = self.output_topics();
        let mut published = support::read_to_end(&self.kafka.bootstrap, clearsale).await;
        published.extend(support::read_to_end(&self.kafka.bootstrap, unico).await);
        (
            published,
            support::read_to_end(&self.kafka.bootstrap, dlq).await,
        )
    }

    fn committed(&self) -> HashMap<i32, i64> {
        support::committed_offsets(
            &self.kafka.bootstrap,
            &self.config.kafka.group_id,
            self.input(),
            INPUT_PARTITIONS,
        )
    }
}

/// Polls `check` (given the child, e.g. to read its log) every 100 ms until it holds; panics
/// with the child's log tail if the child exits first or after `timeout`.
async fn wait_until(
    child: &mut ChildGuard,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut(&ChildGuard) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check(child) {
        if let Some(status) = child.try_status() {
            panic!(
                "the binary exited ({status}) while waiting for {what}\n{}",
                child.tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            child.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn exit_code(status: Option<std::process::ExitStatus>) -> Option<i32> {
    status.and_then(|s| s.code())
}

// ---------------------------------------------------------------------------------------------
// check-config

const CS_PASSWORD: &str = "cs-pass-Q7vX2";
const UNICO_KEY: &str = "unico-key-M4tR8";
const PEM_BODY: &str = "PEMBODYz9K3w";
const SASL_PASSWORD: &str = "sasl-pass-H5nB1";
const RAW_PASSWORD: &str = "raw-pass-J2cL6";

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("service.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[kafka]
bootstrap_servers = "from-file:9092"
group_id = "group-from-file"
security_protocol = "sasl_ssl"
[kafka.sasl]
mechanism = "SCRAM-SHA-256"
username = "svc"
[kafka.producer]
"linger.ms" = "7"
"sasl.password" = "{RAW_PASSWORD}"
[input]
topics = ["webhooks.raw"]
[clearsale]
user = "cs-user"
[unico]
account = "acct"
tenant = "tenant-1"
"#
        ),
    )
    .unwrap();
    let secrets = [
        ("CLEARSALE__PASSWORD", CS_PASSWORD.to_string()),
        ("UNICO__API_KEY", UNICO_KEY.to_string()),
        (
            "UNICO__PRIVATE_KEY_PEM",
            format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n"),
        ),
        ("KAFKA__SASL__PASSWORD", SASL_PASSWORD.to_string()),
        ("KAFKA__BOOTSTRAP_SERVERS", "from-env:9093".to_string()),
    ]
    .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v));
    let check = |config_file: &std::path::Path| {
        support::binary_command()
            .arg("--config")
            .arg(config_file)
            .args(["--set", "kafka.group_id=group-from-flag", "check-config"])
            .envs(secrets.clone())
            .output()
            .expect("run check-config")
    };

    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "check-config failed ({}):\n{stderr}",
        out.status
    );
    for secret in [
        CS_PASSWORD,
        UNICO_KEY,
        PEM_BODY,
        SASL_PASSWORD,
        RAW_PASSWORD,
    ] {
        assert!(
            !stdout.contains(secret),
            "{secret} leaked to stdout:\n{stdout}"
        );
        assert!(
            !stderr.contains(secret),
            "{secret} leaked to stderr:\n{stderr}"
        );
    }
    // The layers merged: file, then environment, then --set.
    let printed: toml::Table = toml::from_str(&stdout).expect("stdout is TOML");
    assert_eq!(
        printed["kafka"]["bootstrap_servers"].as_str(),
        Some("from-env:9093")
    );
    assert_eq!(
        printed["kafka"]["group_id"].as_str(),
        Some("group-from-flag")
    );
    assert_eq!(
        printed["kafka"]["producer"]["linger.ms"].as_str(),
        Some("7")
    );
    assert_eq!(printed["clearsale"]["user"].as_str(), Some("cs-user"));
    // Every secret that was set is shown as redacted, not dropped.
    assert_eq!(
        printed["clearsale"]["password"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(printed["unico"]["api_key"].as_str(), Some("[redacted]"));
    assert_eq!(
        printed["unico"]["private_key_pem"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(
        printed["kafka"]["sasl"]["password"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(
        printed["kafka"]["producer"]["sasl.password"].as_str(),
        Some("[redacted]")
    );

    // The printed configuration is itself a valid configuration file: with the secrets from the
    // environment again, it loads to the same effective configuration.
    let reprinted_file = dir.path().join("printed.toml");
    std::fs::write(&reprinted_file, &stdout).unwrap();
    let again = check(&reprinted_file);
    assert!(
        again.status.success(),
        "the printed configuration does not load:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
}

#[test]
fn an_invalid_configuration_fails_listing_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "bogus = 1\n[kafka]\nbootstrap_server = \"typo:9092\"\n[unico.limits]\nrps = 3\n",
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let out = support::binary_command()
            .arg("--config")
            .arg(&file)
            .args(["--set", "engine.max_in_flight=0", command])
            .env(format!("{ENV_PREFIX}ENRICH__RETRY__INITAL"), "1s")
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "`{command}` accepted an invalid configuration ({}):\n{stderr}",
            out.status
        );
        assert!(
            out.stdout.is_empty(),
            "`{command}` printed a configuration although it is invalid"
        );
        for problem in [
            "unknown key `bogus`",
            "unknown key `kafka.bootstrap_server`",
            "unknown key `unico.limits.rps`",
            "unknown key `enrich.retry.inital`",
            "clearsale.user and clearsale.password are required",
            "unico.account is required",
            "unico.tenant is required",
            "unico.api_key is required",
            "unico.private_key_pem (or unico.private_key_file) is required",
            "engine.max_in_flight must be at least 1",
        ] {
            assert!(
                stderr.contains(problem),
                "`{command}`: missing {problem:?} in stderr:\n{stderr}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signals

/// Where every input ended: `finished` inputs (offset below their partition's committed offset)
/// must appear exactly once (or never, if skipped), and the others not at all.
fn assert_committed_exactly_the_finished(
    produced: &[Produced],
    committed: &HashMap<i32, i64>,
    counts: &HashMap<String, usize>,
    log: &str,
) {
    for p in produced {
        let finished = p.offset < committed.get(&p.partition).copied().unwrap_or(0);
        let seen = p.webhook.outcomes(counts);
        let expected = usize::from(finished && p.webhook.must_appear());
        assert_eq!(
            seen, expected,
            "input at {}:{} (committed {committed:?}, {:?}) appears {seen} times, expected {expected}\n{log}",
            p.partition, p.offset, p.webhook.expected
        );
    }
}

/// The `in_flight` count the binary logged when the shutdown signal started the drain.
fn in_flight_at_signal(child: &ChildGuard) -> Option<u64> {
    let log = std::fs::read_to_string(&child.log).ok()?;
    let line = log
        .lines()
        .find(|l| l.contains("shutdown requested: draining"))?;
    serde_json::from_str::<serde_json::Value>(line).ok()?["in_flight"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_the_finished_records_and_exits_zero() {
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(50);
    let t = Setup::new(sim_config).await;
    // Unico is down: its records stay in flight (waiting for the circuit), so the signal is
    // sure to find records to drain; the outage ends once the drain has begun.
    t.sim.set_outage(Provider::Unico, true);
    let mut config = t.config.clone();
    // Few records at a time, so the signal usually comes before all the input was read.
    config.engine.max_in_flight = 20;
    config.engine.drain_timeout = Duration::from_secs(60);
    let total = 150;
    let producer = support::producer_for(&t.kafka.bootstrap);
    let produced = support::produce_webhooks(
        &producer,
        t.input(),
        INPUT_PARTITIONS,
        support::webhook_mix(total, true),
    )
    .await;

    let mut child = support::spawn_run(&config, t.dir.path(), "sigterm");
    let watcher = support::inspector(&t.kafka.bootstrap, &support::unique("watcher"));
    let outputs = t.output_topics();
    wait_until(
        &mut child,
        "ClearSale outputs and the Unico circuit open",
        Duration::from_secs(60),
        |child| {
            support::record_count(&watcher, &outputs) >= 5
                && child.log_contains("provider failing systemically")
        },
    )
    .await;
    child.signal("TERM");
    assert!(
        child
            .wait_for_log("shutdown requested: draining", Duration::from_secs(30))
            .await,
        "the signal did not start a drain\n{}",
        child.tail()
    );
    assert!(
        in_flight_at_signal(&child).is_some_and(|n| n > 0),
        "the drain should start with records in flight\n{}",
        child.tail()
    );
    t.sim.set_outage(Provider::Unico, false);
    let status = child.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(
        exit_code(status),
        Some(0),
        "exit status {status:?}\n{}",
        child.tail()
    );
    assert!(
        child.log_contains(r#""message":"drained""#),
        "the in-flight records were not drained\n{}",
        child.tail()
    );

    let committed = t.committed();
    let (published, dead_letters) = t.read_outputs().await;
    let counts = support::outcome_counts(&published, &dead_letters);
    let committed_total: i64 = committed.values().sum();
    assert!(
        committed_total > 0,
        "nothing was committed: {committed:?}\n{}",
        child.tail()
    );
    assert_committed_exactly_the_finished(&produced, &committed, &counts, &child.tail());
    let appear = produced
        .iter()
        .filter(|p| {
            p.webhook.must_appear() && p.offset < committed.get(&p.partition).copied().unwrap_or(0)
        })
        .count();
    assert_eq!(
        published.len() + dead_letters.len(),
        appear,
        "records in the outputs that match no committed input"
    );
    assert!(
        published.iter().any(|r| r.header("provider") == "unico"),
        "the Unico records held up at the signal were not published during the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_abandons_unfinished_records_at_the_drain_deadline_without_committing_them() {
    let t = Setup::new(SimulatorConfig::default()).await;
    // Unico stays down: its records can never finish.
    t.sim.set_outage(Provider::Unico, true);
    let mut config = t.config.clone();
    config.engine.max_in_flight = 20;
    config.engine.drain_timeout = Duration::from_secs(1);
    let total = 60;
    let producer = support::producer_for(&t.kafka.bootstrap);
    let produced = support::produce_webhooks(
        &producer,
        t.input(),
        INPUT_PARTITIONS,
        support::webhook_mix(total, false),
    )
    .await;

    let mut child = support::spawn_run(&config, t.dir.path(), "sigterm-abandon");
    let watcher = support::inspector(&t.kafka.bootstrap, &support::unique("watcher"));
    let outputs = t.output_topics();
    wait_until(
        &mut child,
        "ClearSale outputs and the Unico circuit open",
        Duration::from_secs(60),
        |child| {
            support::record_count(&watcher, &outputs) >= 5
                && child.log_contains("provider failing systemically")
        },
    )
    .await;
    child.signal("TERM");
    let status = child.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        exit_code(status),
        Some(0),
        "exit status {status:?}\n{}",
        child.tail()
    );
    assert!(
        child.log_contains("drain deadline passed"),
        "the drain should have been cut short by its deadline\n{}",
        child.tail()
    );

    let committed = t.committed();
    let (published, dead_letters) = t.read_outputs().await;
    assert!(
        published
            .iter()
            .all(|r| r.header("provider") == "clearsale"),
        "a Unico record was published during the outage"
    );
    let counts = support::outcome_counts(&published, &dead_letters);
    // Each partition's commit stops at its first unfinished (Unico) record; ClearSale records
    // finished after it are in the outputs but not committed, so they are redelivered later.
    for p in &produced {
        let seen = p.webhook.outcomes(&counts);
        if p.offset < committed.get(&p.partition).copied().unwrap_or(0) {
            assert_eq!(
                seen,
                1,
                "committed input at {}:{} has no outcome\n{}",
                p.partition,
                p.offset,
                child.tail()
            );
        }
    }
    for partition in 0..INPUT_PARTITIONS {
        let mine: Vec<&Produced> = produced
            .iter()
            .filter(|p| p.partition == partition)
            .collect();
        let first_without_outcome = mine
            .iter()
            .find(|p| p.webhook.outcomes(&counts) == 0)
            .map_or(mine.len() as i64, |p| p.offset);
        assert_eq!(
            committed.get(&partition).copied().unwrap_or(0),
            first_without_outcome,
            "partition {partition}: the commit must stop at the first unfinished record\n{}",
            child.tail()
        );
    }
    assert!(
        committed.values().sum::<i64>() > 0,
        "nothing was committed: {committed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_exit_130_while_draining_is_held_up() {
    let t = Setup::new(SimulatorConfig::default()).await;
    t.sim.set_outage(Provider::ClearSale, true);
    let mut config = t.config.clone();
    config.engine.drain_timeout = Duration::from_secs(600);
    let producer = support::producer_for(&t.kafka.bootstrap);
    let webhooks: Vec<_> = support::webhook_mix(10, false)
        .into_iter()
        .filter(|w| w.value.contains("analysisId"))
        .collect();
    assert_eq!(webhooks.len(), 5);
    support::produce_webhooks(&producer, t.input(), INPUT_PARTITIONS, webhooks).await;

    let mut child = support::spawn_run(&config, t.dir.path(), "second-signal");
    assert!(
        child
            .wait_for_log("provider failing systemically", Duration::from_secs(60))
            .await,
        "the ClearSale outage was not detected\n{}",
        child.tail()
    );
    child.signal("TERM");
    assert!(
        child
            .wait_for_log("shutdown signal received", Duration::from_secs(30))
            .await,
        "the first signal was not received\n{}",
        child.tail()
    );
    assert!(
        child.try_status().is_none(),
        "the first signal must start a drain, not end the process\n{}",
        child.tail()
    );
    child.signal("TERM");
    let status = child.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        exit_code(status),
        Some(130),
        "exit status {status:?}\n{}",
        child.tail()
    );

    // Nothing finished, so nothing was committed; the outage dead-lettered nothing.
    assert_eq!(t.committed(), HashMap::new(), "{}", child.tail());
    let (published, dead_letters) = t.read_outputs().await;
    assert!(published.is_empty() && dead_letters.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Crash and restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_loses_nothing_and_duplicates_only_after_the_last_commit() {
    let mut sim_config = SimulatorConfig::default();
    sim_config.latency.base = Duration::from_millis(60);
    sim_config.latency.jitter = Duration::from_millis(60);
    let t = Setup::new(sim_config).await;
    let mut config = t.config.clone();
    config.engine.max_in_flight = 40;
    // The killed member never leaves the group: a short session lets the restarted one take
    // its partitions soon.
    config
        .kafka
        .consumer
        .0
        .insert("session.timeout.ms".into(), "6000".into());
    config.engine.revoke_drain_timeout = Duration::from_secs(3);
    let total = 200;

    let mut first = support::spawn_run(&config, t.dir.path(), "kill9-first");
    assert!(
        first
            .wait_for_log("partitions assigned", Duration::from_secs(60))
            .await,
        "the first run got no partitions\n{}",
        first.tail()
    );
    // Feed the input while the service runs.
    let producer = support::producer_for(&t.kafka.bootstrap);
    let input = t.input().to_string();
    let feeding = tokio::spawn(async move {
        support::produce_webhooks(
            &producer,
            &input,
            INPUT_PARTITIONS,
            support::webhook_mix(total, true),
        )
        .await
    });

    let watcher = support::inspector(&t.kafka.bootstrap, &config.kafka.group_id);
    let outputs = t.output_topics();
    wait_until(
        &mut first,
        "outputs and a first commit",
        Duration::from_secs(60),
        |_| {
            support::record_count(&watcher, &outputs) >= 30
                && !support::committed_by(&watcher, t.input(), INPUT_PARTITIONS).is_empty()
        },
    )
    .await;
    // Then Unico goes down: its records stay in flight and hold each partition's commit back,
    // while later ClearSale records finish past it. The kill lands with all three kinds of
    // record: committed, finished but not committed, and unfinished.
    t.sim.set_outage(Provider::Unico, true);
    let before_outage = support::record_count(&watcher, &outputs);
    wait_until(
        &mut first,
        "the Unico circuit open and more ClearSale outputs",
        Duration::from_secs(60),
        |child| {
            child.log_contains("provider failing systemically")
                && support::record_count(&watcher, &outputs) >= before_outage + 10
        },
    )
    .await;
    first.kill_now();
    let at_kill = t.committed();
    let produced = feeding.await.expect("producer task");
    let at_kill_total: i64 = at_kill.values().sum();
    assert!(
        at_kill_total > 0 && at_kill_total < total as i64,
        "the kill should land midway: committed {at_kill:?} of {total}\n{}",
        first.tail()
    );
    let (published, dead_letters) = t.read_outputs().await;
    let counts_at_kill = support::outcome_counts(&published, &dead_letters);
    let finished_uncommitted = produced
        .iter()
        .filter(|p| {
            p.offset >= at_kill.get(&p.partition).copied().unwrap_or(0)
                && p.webhook.outcomes(&counts_at_kill) > 0
        })
        .count();
    assert!(
        finished_uncommitted > 0,
        "the kill should leave finished records past the commit\n{}",
        first.tail()
    );
    t.sim.set_outage(Provider::Unico, false);

    let mut second = support::spawn_run(&config, t.dir.path(), "kill9-second");
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in &produced {
        let end = ends.entry(p.partition).or_default();
        *end = (*end).max(p.offset + 1);
    }
    wait_until(
        &mut second,
        "every input committed",
        Duration::from_secs(120),
        |_| support::committed_by(&watcher, t.input(), INPUT_PARTITIONS) == ends,
    )
    .await;
    second.signal("TERM");
    let status = second.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        exit_code(status),
        Some(0),
        "exit status {status:?}\n{}",
        second.tail()
    );

    let (published, dead_letters) = t.read_outputs().await;
    let counts = support::outcome_counts(&published, &dead_letters);
    let logs = format!("{}\n{}", first.tail(), second.tail());
    let mut redelivered = 0;
    for p in &produced {
        let seen = p.webhook.outcomes(&counts);
        let before_commit = p.offset < at_kill.get(&p.partition).copied().unwrap_or(0);
        let ok = match (p.webhook.must_appear(), before_commit) {
            (false, _) => seen == 0,
            (true, true) => seen == 1,
            (true, false) => seen >= 1,
        };
        assert!(
            ok,
            "input at {}:{} ({:?}, committed at the kill {at_kill:?}) appears {seen} times\n{logs}",
            p.partition, p.offset, p.webhook.expected
        );
        redelivered += seen.saturating_sub(1);
    }
    eprintln!(
        "kill -9 at committed {at_kill_total}/{total} with {finished_uncommitted} finished past \
         the commit: {redelivered} duplicates"
    );
}
