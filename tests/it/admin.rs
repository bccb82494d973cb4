//! The built binary's admin endpoints and logs: `/metrics`, `/healthz` and `/readyz` scraped
//! from a real `run`, readiness following a provider circuit and input that cannot be decoded,
//! and secrets and payload bodies absent from the logs at every level.

use crate::support::{self, ChildGuard, Kafka};
use std::time::{Duration, Instant};
use webhook_enricher::config::Config;
use webhook_enricher::provider::Provider;
use webhook_enricher::simulator::SimulatorConfig;

struct Running {
    kafka: Kafka,
    sim: webhook_enricher::simulator::SimulatorHandle,
    config: Config,
    child: ChildGuard,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start(log_level: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let input = support::unique("admin");
    let kafka = Kafka::new(&[(&input, 2)]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let mut config = support::config(&kafka, &sim, &input);
    let port = support::free_port();
    config.admin.listen = format!("127.0.0.1:{port}");
    config.admin.statistics_interval = Duration::from_millis(500);
    tweak(&mut config);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = support::write_config(&config, dir.path());
    let mut cmd = support::binary_command();
    cmd.arg("--config")
        .arg(&file)
        .args(["--log-format", "json", "--log-level", log_level, "run"]);
    cmd.envs(support::secret_env(&config));
    let log = support::log_dir().join(format!("{}.log", support::unique("admin-run")));
    let child = ChildGuard::spawn(cmd, log);
    Running {
        kafka,
        sim,
        config,
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// Polls `url` until it answers `status`, returning the body.
async fn wait_for(run: &mut Running, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        assert!(
            run.child.try_status().is_none(),
            "the binary exited:\n{}",
            run.child.tail()
        );
        if let Some((s, body)) = get(&format!("{}{path}", run.base)).await {
            if s == status {
                return body;
            }
            last = Some((s, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} never answered {status}; last {last:?}\n{}",
        run.child.tail()
    );
}

async fn produce(run: &Running, values: &[String]) {
    let producer = run.kafka.producer();
    for v in values {
        run.kafka
            .produce(
                &producer,
                &run.config.input.topics[0],
                None,
                None,
                v.as_bytes(),
                &[],
            )
            .await;
    }
}

fn webhooks() -> Vec<String> {
    vec![
        format!(
            r#"{{"analysisId":"{}","date":"2025-09-26T17:21:11.0367845Z","type":"mfa"}}"#,
            uuid::Uuid::new_v4()
        ),
        format!(r#"{{"id":"{}","status":"3"}}"#, uuid::Uuid::new_v4()),
        "not json".to_string(),
    ]
}

/// The value of the first series `name{...labels...}` containing every label fragment.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|frag| l.contains(frag)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes `/metrics` until `done` holds for a scrape, and returns that scrape.
async fn metrics_until(run: &mut Running, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = get(&format!("{}/metrics", run.base))
            .await
            .expect("metrics");
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened:\n{m}\n{}",
            run.child.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The enrichable [`webhooks`] were published (one per provider).
fn both_published(m: &str) -> bool {
    ["clearsale", "unico"].iter().all(|p| {
        series(
            m,
            "webhook_enricher_records_published_total",
            &[&format!("provider=\"{p}\"")],
        ) == Some(1.0)
    })
}

/// Sends SIGTERM and waits for the exit status.
async fn terminate(run: &mut Running) -> std::process::ExitStatus {
    run.child.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = run.child.try_status() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM\n{}",
            run.child.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_binary_serves_metrics_health_and_readiness() {
    let mut run = start("info,librdkafka=warn", |_| {}).await;
    let health = wait_for(&mut run, "/healthz", 200).await;
    assert!(health.contains("\"ok\":true"), "{health}");
    let ready = wait_for(&mut run, "/readyz", 200).await;
    assert!(ready.contains("\"ok\":true"), "{ready}");

    produce(&run, &webhooks()).await;
    let metrics = metrics_until(&mut run, "publishing and dead-lettering", |m| {
        both_published(m)
            && series(
                m,
                "webhook_enricher_records_dead_lettered_total",
                &["class=\"malformed_payload\""],
            ) == Some(1.0)
    })
    .await;
    let input = &run.config.input.topics[0];
    for (name, labels) in [
        ("webhook_enricher_records_consumed_total", vec![]),
        (
            "webhook_enricher_provider_requests_total",
            vec![
                "provider=\"clearsale\"",
                "operation=\"get_analysis\"",
                "outcome=\"ok\"",
                "status_class=\"2xx\"",
            ],
        ),
        (
            "webhook_enricher_provider_requests_total",
            vec!["provider=\"unico\"", "operation=\"token\""],
        ),
        (
            "webhook_enricher_provider_request_duration_seconds_bucket",
            vec!["provider=\"unico\"", "operation=\"get_process\""],
        ),
        (
            "webhook_enricher_token_refreshes_total",
            vec!["provider=\"clearsale\"", "outcome=\"ok\""],
        ),
        (
            "webhook_enricher_end_to_end_latency_seconds_count",
            vec!["provider=\"clearsale\""],
        ),
        ("webhook_enricher_circuit_state", vec!["provider=\"unico\""]),
        ("webhook_enricher_records_in_flight", vec![]),
    ] {
        assert!(
            series(&metrics, name, &labels).is_some(),
            "missing {name}{labels:?} in:\n{metrics}"
        );
    }
    assert_eq!(
        series(&metrics, "webhook_enricher_records_consumed_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        series(
            &metrics,
            "webhook_enricher_circuit_state",
            &["provider=\"clearsale\""]
        ),
        Some(0.0)
    );
    // Lag per partition, from librdkafka's statistics (they arrive every 500 ms here).
    let lag_series = [format!("topic=\"{input}\""), "basis=\"stored\"".to_string()];
    metrics_until(&mut run, "a lag series reaching 0", |m| {
        series(
            m,
            "webhook_enricher_consumer_lag",
            &[&lag_series[0], &lag_series[1]],
        ) == Some(0.0)
    })
    .await;
    // No ids in labels.
    let uuid_like = regex_lite_uuid(&metrics);
    assert!(
        uuid_like.is_none(),
        "an id leaked into a label: {uuid_like:?}"
    );

    let status = terminate(&mut run).await;
    assert_eq!(status.code(), Some(0), "{}", run.child.tail());
}

/// A hyphenated UUID anywhere in the text.
fn regex_lite_uuid(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|w| w.len() == 36 && uuid::Uuid::try_parse(w).is_ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_a_provider_circuit_stays_open_and_recovers() {
    let mut run = start("info,librdkafka=warn", |c| {
        c.admin.circuit_open_unready_after = Duration::from_millis(500);
        c.engine.breaker.open_for = Duration::from_millis(300);
        c.engine.breaker.max_open_for = Duration::from_millis(300);
    })
    .await;
    wait_for(&mut run, "/readyz", 200).await;
    run.sim.set_outage(Provider::ClearSale, true);
    produce(&run, &webhooks()[..1]).await;
    let body = wait_for(&mut run, "/readyz", 503).await;
    assert!(body.contains("clearsale circuit open"), "{body}");
    let (status, _) = get(&format!("{}/healthz", run.base))
        .await
        .expect("healthz");
    assert_eq!(
        status, 200,
        "an outage must not fail liveness (restarting would not help)"
    );
    run.sim.set_outage(Provider::ClearSale, false);
    wait_for(&mut run, "/readyz", 200).await;
    run.child.signal("TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_secrets_or_payload_bodies_at_any_level() {
    let mut run = start("trace", |_| {}).await;
    wait_for(&mut run, "/readyz", 200).await;
    // Force token refreshes too, so the token paths are logged.
    run.sim.expire_tokens();
    produce(&run, &webhooks()).await;
    metrics_until(&mut run, "publishing", both_published).await;
    terminate(&mut run).await;
    let log = std::fs::read_to_string(&run.child.log).expect("log");
    assert!(
        log.lines().count() > 100,
        "trace logging produced too little to prove anything"
    );
    let key = run.config.unico.private_key_pem.expose().to_string();
    let key_body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut secrets = vec![
        run.config.clearsale.password.expose().to_string(),
        run.config.unico.api_key.expose().to_string(),
    ];
    secrets.extend(key_body.iter().map(|l| l.to_string()));
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret appeared in the logs: {}…",
            &secret[..secret.len().min(6)]
        );
    }
    // Tokens the simulator issued are secrets too; bodies hold personal data.
    for needle in [
        "Bearer ",
        "access_token",
        "\"token\":",
        "expirationDate",
        "\"analysisId\"",
        "unicoId",
        "identityFraudsters",
        "not json",
    ] {
        assert!(!log.contains(needle), "{needle:?} appeared in the logs");
    }
}

/// Defect: a topic written with a codec the build lacked (zstd) was consumed by nobody, with only
/// a WARN line per fetch. Every codec is built in now; a batch librdkafka still cannot decode (a
/// codec Kafka does not define, a body the codec cannot decompress) stalls its partition (never
/// skipped), and that is an ERROR log line, a metric and a readiness failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_batch_that_cannot_be_decoded_is_an_error_a_metric_and_unreadiness() {
    let mut run = start("info,librdkafka=warn", |_| {}).await;
    wait_for(&mut run, "/readyz", 200).await;
    let input = run.config.input.topics[0].clone();
    let producer = run.kafka.producer();
    let good = webhooks();
    run.kafka
        .produce(&producer, &input, Some(0), None, good[0].as_bytes(), &[])
        .await;
    let bootstrap = run.kafka.bootstrap.clone();
    let (unknown_codec, corrupt_zstd) = support::blocking(|| {
        (
            // Attribute bits 0-2 = 5: a codec Kafka does not define.
            support::produce_raw_batch(&bootstrap, &input, 0, 5, b"whatever codec 5 is"),
            // zstd, but the body is not a zstd frame.
            support::produce_raw_batch(&bootstrap, &input, 1, 4, b"not a zstd frame at all"),
        )
    });
    assert_eq!((unknown_codec, corrupt_zstd), (1, 0));
    // Behind the bad batch: never reached.
    run.kafka
        .produce(&producer, &input, Some(0), None, good[1].as_bytes(), &[])
        .await;

    let body = wait_for(&mut run, "/readyz", 503).await;
    assert!(
        body.contains("an input record batch cannot be decoded"),
        "{body}"
    );
    let undecodable = "webhook_enricher_input_undecodable_total";
    // Wait for the record before the bad batch too: it may still be in flight when the
    // undecodable batches are first counted (seen on a loaded machine).
    let metrics = metrics_until(
        &mut run,
        "both undecodable batches counted and the record before them published",
        |m| {
            series(m, undecodable, &["reason=\"unsupported_compression\""])
                .is_some_and(|n| n >= 1.0)
                && series(m, undecodable, &["reason=\"corrupt_compression\""])
                    .is_some_and(|n| n >= 1.0)
                && series(
                    m,
                    "webhook_enricher_records_published_total",
                    &["provider=\"clearsale\""],
                )
                .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(
        series(
            &metrics,
            "webhook_enricher_records_published_total",
            &["provider=\"clearsale\""]
        ),
        Some(1.0),
        "the record before the bad batch is processed"
    );
    assert_eq!(
        series(
            &metrics,
            "webhook_enricher_records_published_total",
            &["provider=\"unico\""]
        )
        .unwrap_or(0.0),
        0.0,
        "the record behind the bad batch is not reached"
    );
    // The partition does not advance past the bad batch, and liveness holds (a restart would
    // not help).
    let (status, _) = get(&format!("{}/healthz", run.base))
        .await
        .expect("healthz");
    assert_eq!(status, 200);
    let exit = terminate(&mut run).await;
    assert_eq!(exit.code(), Some(0), "{}", run.child.tail());
    let committed = run.kafka.committed(&run.config.kafka.group_id, &input, 2);
    assert_eq!(support::committed_of(&committed, 0), 1, "{committed:?}");
    assert_eq!(support::committed_of(&committed, 1), 0, "{committed:?}");

    let log = std::fs::read_to_string(&run.child.log).expect("log");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("cannot be decoded"))
        .collect();
    for reason in ["unsupported_compression", "corrupt_compression"] {
        assert!(
            errors.iter().any(|l| l.contains(reason)),
            "no ERROR line for {reason}:\n{}",
            run.child.tail()
        );
    }
    // One line per distinct error, then at most one every 30 s: the fetch retries do not flood.
    assert!(errors.len() <= 4, "{errors:#?}");
}
