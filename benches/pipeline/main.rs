//! The pipeline benchmark: the release binary's `run` as its own process, against librdkafka's
//! mock cluster and the provider simulator hosted here, over a preloaded backlog.
//!
//! ```sh
//! cargo bench --bench pipeline                      # 200,000 events, every scenario
//! cargo bench --bench pipeline -- --events 2000     # the CI smoke run
//! cargo bench --bench pipeline -- --help
//! ```
//!
//! Per scenario it reports steady-state events/s (start-up and the group join apart), the
//! service's CPU µs per event (user + sys, from `/proc`), its peak RSS, the end-to-end latency
//! (input record timestamp to the output record's create time), and two baselines measured in
//! the same run: (a) a Kafka passthrough with the service's client settings and (b) the
//! simulator's raw request rate at the same concurrency. Then it checks that every unique valid
//! event was published exactly once, every malformed record was dead-lettered, and the group's
//! committed offsets reached the end offsets; a scenario that fails the check has no numbers
//! that count, and the harness exits non-zero.

mod child;
mod kafka;
mod measure;
mod report;
mod workload;

use clap::Parser;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use measure::{ProcStats, Progress};
use report::{Baselines, Check, ProviderRates, ScenarioResult};

/// The service's binary (built by cargo for benchmarks, in the bench profile).
const SERVICE: &str = env!("CARGO_BIN_EXE_webhook-enricher");

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pipeline",
    about = "Benchmark of the real pipeline (see benches/pipeline/main.rs)"
)]
struct Args {
    /// Raw events preloaded per scenario (the mixed scenario uses --mixed-events).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Scenarios to run, comma-separated: cpu (0 ms), latency (--latency-ms), mixed (Unico
    /// held to its default 10 requests/s), mixed-unlimited (the same workload with Unico
    /// unlimited: ClearSale's unimpeded rate, the reference of mixed's ClearSale rate).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cpu,latency,mixed-unlimited,mixed"
    )]
    scenarios: Vec<String>,
    /// Provider latency of the `latency` scenario, in ms.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Raw events of the `mixed` scenario (default: --events / 10, at least 2,000).
    #[arg(long)]
    mixed_events: Option<usize>,
    /// Share of unique events that are Unico's in the `mixed` scenario.
    #[arg(long, default_value_t = 0.03)]
    mixed_unico_share: f64,
    /// Share of unique events that are Unico's in the other scenarios.
    #[arg(long, default_value_t = 0.33)]
    unico_share: f64,
    /// Input partitions.
    #[arg(long, default_value_t = 16)]
    partitions: i32,
    /// Brokers of the mock cluster.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Extra service settings, as `--set key=value` of the service (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Skip the baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Do not create the wait topics, so the service runs without provider isolation
    /// (`engine.isolation.enabled = "auto"` finds none).
    #[arg(long)]
    no_isolation: bool,
    /// Talk HTTP/2 to the simulator (h2c prior knowledge), the service and the raw-rate baseline
    /// alike: what a provider reached over HTTPS with ALPN gets. Default: HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/pipeline.json")]
    json: PathBuf,
    /// Rewrite the results block of this README (between the bench markers).
    #[arg(long)]
    readme: Option<PathBuf>,
    /// The service binary to measure (default: the one cargo built for this benchmark); lets
    /// two builds be compared on the same harness.
    #[arg(long)]
    service_binary: Option<PathBuf>,
    /// Give up on a scenario after this long without progress, in seconds.
    #[arg(long, default_value_t = 120)]
    stall_timeout: u64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Internal: run as a baseline process.
    #[arg(long, hide = true)]
    child: Option<String>,
    #[arg(long, hide = true)]
    bootstrap: Option<String>,
    #[arg(long, hide = true)]
    input: Option<String>,
    #[arg(long, hide = true)]
    output: Option<String>,
    #[arg(long, hide = true)]
    group: Option<String>,
    #[arg(long, hide = true)]
    url: Option<String>,
    #[arg(long, hide = true)]
    count: Option<usize>,
    #[arg(long, hide = true)]
    concurrency: Option<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if let Some(kind) = args.child.clone() {
        let result = run_child(&kind, &args);
        if let Err(e) = result {
            eprintln!("baseline {kind}: {e}");
            std::process::exit(1);
        }
        return;
    }
    match run(&args) {
        Ok(all_ok) => std::process::exit(if all_ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("pipeline benchmark: {e}");
            std::process::exit(2);
        }
    }
}

fn run_child(kind: &str, a: &Args) -> Result<(), String> {
    let need = |v: &Option<String>, name: &str| v.clone().ok_or(format!("--{name} is required"));
    match kind {
        "passthrough" => child::passthrough(
            &need(&a.bootstrap, "bootstrap")?,
            &need(&a.group, "group")?,
            &need(&a.input, "input")?,
            &need(&a.output, "output")?,
            a.count.ok_or("--count is required")?,
        ),
        "http" => child::http(
            &need(&a.url, "url")?,
            a.count.ok_or("--count is required")?,
            a.concurrency.ok_or("--concurrency is required")?,
            a.http2,
        ),
        other => Err(format!("unknown child {other}")),
    }
}

/// One scenario's parameters.
struct Scenario {
    name: &'static str,
    latency: Duration,
    events: usize,
    unico_share: f64,
    /// Unico held to the service's default limits (10 requests/s).
    unico_limited: bool,
}

fn run(args: &Args) -> Result<bool, String> {
    let out_dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("creating {out_dir:?}: {e}"))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let key_dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let key_file = key_dir.path().join("unico.pem");
    let (private_pem, _public) = webhook_enricher::simulator::generate_rsa_keypair(2048)
        .map_err(|e| format!("rsa key: {e}"))?;
    std::fs::write(&key_file, private_pem.expose()).map_err(|e| format!("key file: {e}"))?;

    let mut results = Vec::new();
    for name in &args.scenarios {
        let scenario = match name.as_str() {
            "cpu" => Scenario {
                name: "cpu",
                latency: Duration::ZERO,
                events: args.events,
                unico_share: args.unico_share,
                unico_limited: false,
            },
            "latency" => Scenario {
                name: "latency",
                latency: Duration::from_millis(args.latency_ms),
                events: args.events,
                unico_share: args.unico_share,
                unico_limited: false,
            },
            "mixed" | "mixed-unlimited" => Scenario {
                name: if name == "mixed" {
                    "mixed"
                } else {
                    "mixed-unlimited"
                },
                latency: Duration::ZERO,
                events: args
                    .mixed_events
                    .unwrap_or((args.events / 10).max(2_000).min(args.events)),
                unico_share: args.mixed_unico_share,
                unico_limited: name == "mixed",
            },
            other => {
                return Err(format!(
                    "unknown scenario {other:?} (cpu, latency, mixed, mixed-unlimited)"
                ))
            }
        };
        eprintln!(
            "\n== scenario {} ({} events, latency {:?})",
            scenario.name, scenario.events, scenario.latency
        );
        let result = run_scenario(args, &scenario, &runtime, &key_file, &out_dir)?;
        report::print_one(&result);
        results.push(result);
    }
    let machine = report::Machine::read();
    report::print_table(&results, &machine);
    report::write_json(
        &args.json,
        &results,
        &machine,
        &std::env::args().collect::<Vec<_>>(),
    )?;
    eprintln!("results written to {}", args.json.display());
    if let Some(readme) = &args.readme {
        let block = if args.http2 {
            "pipeline-http2"
        } else {
            "pipeline"
        };
        report::update_readme(readme, block, &results, &machine, &command_line(args))?;
        eprintln!("README results block updated: {}", readme.display());
    }
    Ok(results.iter().all(|r| r.check.passed()))
}

fn command_line(args: &Args) -> String {
    let mut parts = vec!["cargo bench --bench pipeline --".to_string()];
    parts.push(format!("--events {}", args.events));
    if args.http2 {
        parts.push("--http2".into());
    }
    for o in &args.overrides {
        parts.push(format!("--set {o}"));
    }
    parts.join(" ")
}

fn run_scenario(
    args: &Args,
    s: &Scenario,
    runtime: &tokio::runtime::Runtime,
    key_file: &std::path::Path,
    out_dir: &std::path::Path,
) -> Result<ScenarioResult, String> {
    let partitions = args.partitions;
    let (input, cs_out, unico_out, dlq, passthrough_out) = (
        "bench.raw",
        "bench.clearsale.enriched",
        "bench.unico.enriched",
        "bench.dead-letter",
        "bench.passthrough",
    );
    let out_partitions = 16;
    let dlq_partitions = 4;
    // Provider isolation's wait topics: as many partitions as the input.
    let (wait_cs, wait_unico) = ("bench.wait.clearsale", "bench.wait.unico");
    let mut topics = vec![
        (input.to_string(), partitions),
        (cs_out.to_string(), out_partitions),
        (unico_out.to_string(), out_partitions),
        (dlq.to_string(), dlq_partitions),
        (passthrough_out.to_string(), partitions),
    ];
    if !args.no_isolation {
        topics.push((wait_cs.to_string(), partitions));
        topics.push((wait_unico.to_string(), partitions));
    }
    let kafka = kafka::MockKafka::start(args.brokers, &topics)?;
    let sim_config = webhook_enricher::simulator::SimulatorConfig {
        seed: args.seed,
        call_log_capacity: 1_000,
        latency: webhook_enricher::simulator::LatencyConfig {
            base: s.latency,
            ..Default::default()
        },
        ..Default::default()
    };
    let simulator = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("simulator listener: {e}"))?;
        webhook_enricher::simulator::start(sim_config, listener)
            .await
            .map_err(|e| format!("simulator: {e}"))
    })?;
    let sim_url = simulator.base_url();

    let work = workload::generate(
        workload::Mix {
            events: s.events,
            duplicate_share: 0.10,
            malformed_share: 0.01,
            unico_share: s.unico_share,
            seed: args.seed,
        },
        input,
    );
    let started = Instant::now();
    let timestamps = kafka::preload(&kafka.bootstrap, input, &work.records)?;
    eprintln!(
        "preloaded {} records in {:.1}s ({} unique ClearSale, {} unique Unico, {} repeats, {} malformed)",
        work.records.len(),
        started.elapsed().as_secs_f64(),
        work.expected.clearsale.len(),
        work.expected.unico.len(),
        work.expected.duplicates,
        work.expected.dead_letters
    );
    let inspector = kafka::Inspector::new(&kafka.bootstrap, "bench-inspector")?;
    let max_in_flight = setting_usize(&args.overrides, "engine.max_in_flight")
        .unwrap_or(webhook_enricher::engine::EngineSettings::default().max_in_flight);

    let baselines = if args.no_baselines || s.name.starts_with("mixed") {
        None
    } else {
        Some(run_baselines(
            &kafka,
            &inspector,
            &sim_url,
            input,
            passthrough_out,
            partitions,
            s.events,
            max_in_flight,
            args.stall_timeout,
            args.http2,
        )?)
    };

    // The service.
    let group = format!("bench-{}", s.name);
    let admin_port = free_port()?;
    let config_path = out_dir.join(format!("{}.toml", s.name));
    let unico_limits = if s.unico_limited {
        String::new()
    } else {
        format!("limits = {{ rate_per_second = 0, max_concurrent = {max_in_flight} }}")
    };
    let isolation = if args.no_isolation {
        String::new()
    } else {
        format!(
            "[engine.isolation]\nclearsale_wait_topic = \"{wait_cs}\"\nunico_wait_topic = \"{wait_unico}\"\n"
        )
    };
    let config = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"

[input]
topics = ["{input}"]

[output]
clearsale_topic = "{cs_out}"
unico_topic = "{unico_out}"
dead_letter_topic = "{dlq}"

[clearsale]
base_url = "{sim_url}"
user = "demo"
password = "demo-password"
limits = {{ rate_per_second = 0, max_concurrent = {max_in_flight} }}

[unico]
base_url = "{sim_url}"
issuer_url = "{sim_url}"
account = "demo-account"
tenant = "demo-tenant"
api_key = "demo-api-key"
private_key_file = "{key}"
{unico_limits}

{isolation}
[admin]
listen = "127.0.0.1:{admin_port}"
"#,
        bootstrap = kafka.bootstrap,
        key = key_file.display(),
    );
    std::fs::write(&config_path, config).map_err(|e| format!("writing the config: {e}"))?;
    let log_path = out_dir.join(format!("{}.log", s.name));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
    let binary = args
        .service_binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(SERVICE));
    let mut command = Command::new(&binary);
    command.arg("--config").arg(&config_path);
    for o in &args.overrides {
        command.arg("--set").arg(o);
    }
    if args.http2 {
        for p in ["clearsale", "unico"] {
            command
                .arg("--set")
                .arg(format!("{p}.http.http2_prior_knowledge=true"));
        }
    }
    command
        .args(["--log-format", "json", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let spawned = Instant::now();
    let mut service = command
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let pid = service.id();

    // The outputs are read as they are written: the mock cluster keeps at most 5 MiB per
    // partition and drops older records.
    let reader = kafka::LiveReader::start(
        &kafka.bootstrap,
        &[
            (cs_out, out_partitions),
            (unico_out, out_partitions),
            (dlq, dlq_partitions),
        ],
    )?;
    let expected = &work.expected;
    let mut progress = Progress::new(spawned);
    let mut last_change = Instant::now();
    let mut last_total = -1;
    let mut stats = ProcStats::default();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = service.try_wait() {
            return Err(format!(
                "the service exited early ({status}); see {}",
                log_path.display()
            ));
        }
        let (cs, un, dl) = (reader.count(0), reader.count(1), reader.count(2));
        if let Some(now) = ProcStats::read(pid) {
            stats = now;
        }
        progress.sample(cs, un, dl);
        let total = cs + un + dl;
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
        }
        if total >= expected.landed() as i64 {
            break;
        }
        if last_change.elapsed() > Duration::from_secs(args.stall_timeout) {
            let _ = service.kill();
            return Err(format!(
                "no progress for {}s at {total} of {} outputs; see {}",
                args.stall_timeout,
                expected.landed(),
                log_path.display()
            ));
        }
    }
    let done_at = Instant::now();
    // Let any excess record (a duplicate) land before the check reads the topics.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(now) = ProcStats::read(pid) {
        stats = now;
    }
    let status = measure::terminate(&mut service, Duration::from_secs(60))?;

    // The check.
    let mut check = Check::default();
    if status != Some(0) {
        check.fail(format!("the service exited with {status:?} after SIGTERM"));
    }
    let mut read = reader.finish()?.into_iter();
    let (cs_records, unico_records, dead) = (
        read.next().unwrap_or_default(),
        read.next().unwrap_or_default(),
        read.next().unwrap_or_default(),
    );
    for (topic, partitions, n) in [
        (cs_out, out_partitions, cs_records.len()),
        (unico_out, out_partitions, unico_records.len()),
        (dlq, dlq_partitions, dead.len()),
    ] {
        let written = inspector.count(topic, partitions)?;
        if written != n as i64 {
            check.fail(format!("{topic}: {written} records written, {n} read back"));
        }
    }
    exactly_once(&mut check, "ClearSale", &cs_records, &expected.clearsale);
    exactly_once(&mut check, "Unico", &unico_records, &expected.unico);
    if dead.len() != expected.dead_letters {
        check.fail(format!(
            "{} dead letters, expected {} (the malformed records)",
            dead.len(),
            expected.dead_letters
        ));
    }
    let ends = inspector.high_watermarks(input, partitions)?;
    let committed = inspector.committed(&group, input, partitions)?;
    let behind: Vec<String> = ends
        .iter()
        .zip(&committed)
        .enumerate()
        .filter(|(_, (end, c))| c != end)
        .map(|(p, (end, c))| format!("partition {p}: committed {c}, end {end}"))
        .collect();
    if !behind.is_empty() {
        check.fail(format!(
            "committed offsets short of the end: {}",
            behind.join("; ")
        ));
    }

    // End-to-end latency: input create time to the output's create time.
    let input_ts: HashMap<String, i64> = expected
        .first_index
        .iter()
        .map(|(id, index)| (id.to_string(), timestamps[*index]))
        .collect();
    let mut latencies: Vec<i64> = cs_records
        .iter()
        .chain(&unico_records)
        .filter_map(|r| {
            let input = input_ts.get(r.event_id.as_deref()?)?;
            Some(r.timestamp_ms? - input)
        })
        .collect();
    latencies.sort_unstable();

    let diverted = if args.no_isolation {
        None
    } else {
        Some([
            inspector.count(wait_cs, partitions)?,
            inspector.count(wait_unico, partitions)?,
        ])
    };
    let unico_rates = s.name.starts_with("mixed").then(|| ProviderRates {
        clearsale_eps: progress.rate_of(|p| p.clearsale, expected.clearsale.len()),
        unico_eps: progress.rate_of(|p| p.unico, expected.unico.len()),
    });
    drop(simulator);
    let result = ScenarioResult {
        name: s.name,
        latency_ms: s.latency.as_millis() as u64,
        events: s.events,
        unique_clearsale: expected.clearsale.len(),
        unique_unico: expected.unico.len(),
        duplicates: expected.duplicates,
        malformed: expected.dead_letters,
        max_in_flight,
        startup_s: progress.first_output().map(|t| t.as_secs_f64()),
        run_s: (done_at - spawned).as_secs_f64(),
        steady_eps: progress.steady_rate(expected.landed(), s.events),
        whole_eps: s.events as f64 / (done_at - spawned).as_secs_f64(),
        cpu_us_per_event: stats.cpu.as_secs_f64() * 1e6 / s.events as f64,
        peak_rss_mib: stats.peak_rss_kib as f64 / 1024.0,
        latency_p50_ms: percentile(&latencies, 0.50),
        latency_p99_ms: percentile(&latencies, 0.99),
        providers: unico_rates,
        diverted,
        baselines,
        check,
        log: log_path.display().to_string(),
        progress: progress.series(),
    };
    drop(kafka);
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn run_baselines(
    kafka: &kafka::MockKafka,
    inspector: &kafka::Inspector,
    sim_url: &str,
    input: &str,
    output: &str,
    partitions: i32,
    events: usize,
    concurrency: usize,
    stall_timeout: u64,
    http2: bool,
) -> Result<Baselines, String> {
    let me = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    // (a) Kafka passthrough.
    let spawned = Instant::now();
    let mut child = Command::new(&me)
        .args(["--child", "passthrough", "--bootstrap", &kafka.bootstrap])
        .args(["--group", "bench-passthrough", "--input", input])
        .args(["--output", output, "--count", &events.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("passthrough baseline: {e}"))?;
    let mut progress = Progress::new(spawned);
    let mut stats = ProcStats::default();
    let mut last = (Instant::now(), -1);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let n = inspector.count(output, partitions)?;
        if let Some(now) = ProcStats::read(child.id()) {
            stats = now;
        }
        progress.sample(n, 0, 0);
        if n >= events as i64 {
            break;
        }
        if n != last.1 {
            last = (Instant::now(), n);
        } else if last.0.elapsed() > Duration::from_secs(stall_timeout) {
            let _ = child.kill();
            return Err(format!("passthrough baseline stalled at {n} of {events}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                return Err(format!("passthrough baseline failed: {status}"));
            }
        }
    }
    let _ = child.wait();
    let passthrough_eps = progress.steady_rate(events, events);
    let passthrough_cpu_us = stats.cpu.as_secs_f64() * 1e6 / events as f64;

    // (b) The simulator's raw request rate at the same concurrency.
    let requests = events.min(100_000);
    let mut http = Command::new(&me);
    if http2 {
        http.arg("--http2");
    }
    let out = http
        .args(["--child", "http", "--url", sim_url])
        .args(["--count", &requests.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("http baseline: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "http baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("http baseline output: {e}"))?;
    let elapsed = answer["elapsed_s"].as_f64().unwrap_or(f64::NAN);
    let ok = answer["ok"].as_u64().unwrap_or(0) as f64;
    Ok(Baselines {
        passthrough_eps,
        passthrough_cpu_us,
        simulator_rps: ok / elapsed,
        simulator_requests: requests,
    })
}

fn exactly_once(
    check: &mut Check,
    what: &str,
    records: &[kafka::OutRecord],
    expected: &HashSet<uuid::Uuid>,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in records {
        match &r.event_id {
            Some(id) => *seen.entry(id.clone()).or_default() += 1,
            None => check.fail(format!("a {what} record has no event_id header")),
        }
    }
    let repeated = seen.values().filter(|n| **n > 1).count();
    let unexpected = seen
        .keys()
        .filter(|id| {
            id.parse::<uuid::Uuid>()
                .map_or(true, |id| !expected.contains(&id))
        })
        .count();
    let missing = expected
        .iter()
        .filter(|id| !seen.contains_key(&id.to_string()))
        .count();
    if repeated + unexpected + missing > 0 {
        check.fail(format!(
            "{what}: {missing} missing, {repeated} published more than once, {unexpected} unexpected"
        ));
    }
}

fn percentile(sorted: &[i64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i] as f64)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn setting_usize(overrides: &[String], key: &str) -> Option<usize> {
    overrides.iter().rev().find_map(|o| {
        let (k, v) = o.split_once('=')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}
