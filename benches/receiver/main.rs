//! The receiver's load benchmark: the release binary's `receive` as its own process, against
//! librdkafka's mock cluster hosted here, driven over loopback by `--connections` keep-alive
//! HTTP/1.1 connections, each sending its next request as soon as the previous one is answered.
//!
//! ```sh
//! cargo bench --bench receiver                          # 200,000 requests on 500 connections
//! cargo bench --bench receiver -- --requests 20000      # shorter
//! cargo bench --bench receiver -- --help
//! ```
//!
//! It reports requests/s, the latency distribution as the clients see it (p50, p90, p99, max),
//! the service's CPU µs per request (user + sys from `/proc`) and its peak RSS, and checks that
//! every request answered 200 has its record on the raw topic (the topic's record count is at
//! least the number of 200s, and at most that plus the other answers). Half the requests are
//! ClearSale's (Basic), half Unico's (API key), 1% malformed. A benchmark, not a test: nothing
//! asserts a duration.

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The service's binary (built by cargo for benchmarks, in the bench profile).
const SERVICE: &str = env!("CARGO_BIN_EXE_webhook-enricher");
const TOPIC: &str = "webhooks.raw";
const CS_AUTH: &str = "Basic Y2xlYXJzYWxlOnBhOnNzOncwcmQ="; // clearsale:pa:ss:w0rd
const UNICO_KEY: &str = "bench-unico-key";

#[derive(Parser, Debug)]
#[command(
    name = "receiver",
    about = "Load benchmark of `webhook-enricher receive` (see benches/receiver/main.rs)"
)]
struct Args {
    /// Requests to send in all.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Concurrent keep-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 500)]
    connections: usize,
    /// Partitions of the raw topic.
    #[arg(long, default_value_t = 16)]
    partitions: i32,
    /// Extra service settings, as `--set key=value` of the service (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// The service binary to measure (default: the one cargo built for this benchmark).
    #[arg(long)]
    service_binary: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/receiver.json")]
    json: PathBuf,
    /// Rewrite the results block of this README (between the bench:receiver markers).
    #[arg(long)]
    readme: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("receiver benchmark: {e}");
            std::process::exit(2);
        }
    }
}

/// librdkafka's mock cluster on its own thread (it is not `Send`); dropped, it stops.
struct MockKafka {
    bootstrap: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockKafka {
    fn start(partitions: i32) -> Result<Self, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let cluster = match MockCluster::new(1) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("mock cluster: {e}")));
                    return;
                }
            };
            if let Err(e) = cluster.create_topic(TOPIC, partitions, 1) {
                let _ = ready_tx.send(Err(format!("create topic: {e}")));
                return;
            }
            if ready_tx.send(Ok(cluster.bootstrap_servers())).is_ok() {
                let _ = stopped.recv();
            }
        });
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| "the mock cluster thread ended".to_string())??;
        Ok(Self {
            bootstrap,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Records on the topic now (sum of high watermarks).
    fn count(&self, partitions: i32) -> Result<i64, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "bench-watermarks")
            .create()
            .map_err(|e| format!("consumer: {e}"))?;
        let mut total = 0;
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(30))
                .map_err(|e| format!("watermarks: {e}"))?;
            total += high;
        }
        Ok(total)
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

/// CPU (user + sys) and peak RSS of a process, from `/proc`.
fn proc_stats(pid: u32) -> Option<(Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some((Duration::from_secs_f64(ticks / 100.0), rss))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// The i-th request: its path, auth header and body (unique ids; every 100th malformed).
fn request(i: usize) -> (&'static str, (&'static str, &'static str), String) {
    let id = uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i as u128);
    if i % 100 == 99 {
        return (
            "/webhooks/unico",
            ("x-api-key", UNICO_KEY),
            format!("not json {i}"),
        );
    }
    if i % 2 == 0 {
        (
            "/webhooks/clearsale",
            ("authorization", CS_AUTH),
            format!(
                r#"{{"analysisId":"{id}","date":"2025-09-26T17:21:11.0367845Z","type":"mfa"}}"#
            ),
        )
    } else {
        (
            "/webhooks/unico",
            ("x-api-key", UNICO_KEY),
            format!(r#"{{"id":"{id}","status":"3"}}"#),
        )
    }
}

/// What one connection saw.
#[derive(Default)]
struct ClientResult {
    latencies_us: Vec<u32>,
    ok: usize,
    other_status: usize,
    errors: usize,
}

async fn client(addr: std::net::SocketAddr, next: Arc<AtomicUsize>, total: usize) -> ClientResult {
    let mut out = ClientResult::default();
    let mut sender = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return out;
        }
        if sender.is_none() {
            match connect(addr).await {
                Some(s) => sender = Some(s),
                None => {
                    out.errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let (path, (name, value), body) = request(i);
        let req = hyper::Request::post(path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .header(name, value)
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else {
            out.errors += 1;
            continue;
        };
        let started = Instant::now();
        match s.send_request(req).await {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                out.latencies_us
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if status == 200 {
                    out.ok += 1;
                } else {
                    out.other_status += 1;
                }
            }
            Err(_) => {
                out.errors += 1;
                sender = None;
            }
        }
    }
}

async fn connect(
    addr: std::net::SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn run(args: &Args) -> Result<bool, String> {
    std::fs::create_dir_all("target/bench").map_err(|e| format!("target/bench: {e}"))?;
    let kafka = MockKafka::start(args.partitions)?;
    let port = free_port()?;
    let admin_port = free_port()?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let config = dir.path().join("receiver.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
[admin]
listen = "127.0.0.1:{admin_port}"
statistics_interval = "1s"
[receive]
listen = "127.0.0.1:{port}"
topic = "{TOPIC}"
[receive.clearsale.auth]
mode = "basic"
username = "clearsale"
[receive.unico.auth]
mode = "api_key"
header = "x-api-key"
"#,
            bootstrap = kafka.bootstrap
        ),
    )
    .map_err(|e| format!("config: {e}"))?;
    let binary = args
        .service_binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(SERVICE));
    let log = std::fs::File::create("target/bench/receiver-service.log")
        .map_err(|e| format!("log: {e}"))?;
    let mut cmd = Command::new(&binary);
    cmd.arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "--log-level", "warn"])
        .args(args.overrides.iter().flat_map(|o| ["--set", o.as_str()]))
        .arg("receive")
        .env(
            "WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__PASSWORD",
            "pa:ss:w0rd",
        )
        .env("WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__API_KEY", UNICO_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {binary:?}: {e}"))?;
    let result = measure(args, &kafka, &mut child, port, admin_port);
    let exit = terminate(&mut child);
    let mut report = result?;
    report.exit = exit;
    print_report(&report, args);
    let passed = report.check.is_empty() && report.exit == Some(0);
    write_outputs(&report, args)?;
    Ok(passed)
}

struct Report {
    requests: usize,
    connections: usize,
    ok: usize,
    other_status: usize,
    errors: usize,
    elapsed: Duration,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    cpu_us_per_request: f64,
    peak_rss_mib: f64,
    records: i64,
    check: Vec<String>,
    exit: Option<i32>,
}

fn measure(
    args: &Args,
    kafka: &MockKafka,
    child: &mut Child,
    port: u16,
    admin_port: u16,
) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // Ready: the producer is connected.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the service exited ({status}): see target/bench/receiver-service.log"
            ));
        }
        let ready = std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.starts_with("HTTP/1.1 200")
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err("the service never got ready".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = proc_stats(child.id()).ok_or("no /proc stats for the service")?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results: Vec<ClientResult> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(client(addr, next.clone(), args.requests)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    });
    let elapsed = started.elapsed();
    let after = proc_stats(child.id()).ok_or("no /proc stats for the service")?;
    let mut latencies: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let ok: usize = results.iter().map(|r| r.ok).sum();
    let other_status: usize = results.iter().map(|r| r.other_status).sum();
    let errors: usize = results.iter().map(|r| r.errors).sum();
    let records = kafka.count(args.partitions)?;
    let mut check = Vec::new();
    if records < ok as i64 {
        check.push(format!(
            "{ok} requests answered 200 but only {records} records on the topic"
        ));
    }
    if records > (ok + other_status + errors) as i64 {
        check.push(format!(
            "{records} records for {} requests",
            ok + other_status + errors
        ));
    }
    let answered = ok + other_status;
    Ok(Report {
        requests: args.requests,
        connections: args.connections,
        ok,
        other_status,
        errors,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p90: percentile(&latencies, 0.90),
        p99: percentile(&latencies, 0.99),
        max: percentile(&latencies, 1.0),
        cpu_us_per_request: (after.0.saturating_sub(before.0)).as_secs_f64() * 1e6
            / answered.max(1) as f64,
        peak_rss_mib: after.1 as f64 / 1024.0,
        records,
        check,
        exit: None,
    })
}

/// SIGTERM, then the exit code (`None` if it had to be killed).
fn terminate(child: &mut Child) -> Option<i32> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn machine() -> (usize, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu,
    )
}

fn table(r: &Report) -> String {
    let rate = r.ok as f64 / r.elapsed.as_secs_f64();
    let check = if r.check.is_empty() && r.exit == Some(0) {
        "passed".to_string()
    } else {
        format!("FAILED: {}; exit {:?}", r.check.join("; "), r.exit)
    };
    format!(
        "| connections | requests | 200 | other answers | connection errors | requests/s | p50 / p90 / p99 / max ms | CPU µs/request | peak RSS MiB | records on the topic | check |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {} | {} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {:.0} | {:.0} | {} | {} |\n",
        r.connections,
        r.requests,
        r.ok,
        r.other_status,
        r.errors,
        rate,
        r.p50,
        r.p90,
        r.p99,
        r.max,
        r.cpu_us_per_request,
        r.peak_rss_mib,
        r.records,
        check
    )
}

fn command_line(args: &Args) -> String {
    let mut s = format!(
        "cargo bench --bench receiver -- --requests {} --connections {}",
        args.requests, args.connections
    );
    for o in &args.overrides {
        s.push_str(&format!(" --set {o}"));
    }
    s
}

fn print_report(r: &Report, args: &Args) {
    let (cores, cpu) = machine();
    println!(
        "\nreceiver benchmark — {cores} cores ({cpu})\n`{}`\n",
        command_line(args)
    );
    println!("{}", table(r));
}

fn write_outputs(r: &Report, args: &Args) -> Result<(), String> {
    let (cores, cpu) = machine();
    let json = serde_json::json!({
        "command": command_line(args),
        "cores": cores,
        "cpu": cpu,
        "requests": r.requests,
        "connections": r.connections,
        "ok": r.ok,
        "other_status": r.other_status,
        "connection_errors": r.errors,
        "seconds": r.elapsed.as_secs_f64(),
        "requests_per_second": r.ok as f64 / r.elapsed.as_secs_f64(),
        "latency_ms": {"p50": r.p50, "p90": r.p90, "p99": r.p99, "max": r.max},
        "cpu_us_per_request": r.cpu_us_per_request,
        "peak_rss_mib": r.peak_rss_mib,
        "records": r.records,
        "check": r.check,
        "exit": r.exit,
    });
    std::fs::write(&args.json, format!("{json:#}\n"))
        .map_err(|e| format!("{:?}: {e}", args.json))?;
    if let Some(readme) = &args.readme {
        let text = std::fs::read_to_string(readme).map_err(|e| format!("{readme:?}: {e}"))?;
        let (start, end) = (
            "<!-- bench:receiver:start -->",
            "<!-- bench:receiver:end -->",
        );
        let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
            return Err(format!("{readme:?} has no {start} ... {end} block"));
        };
        let block = format!(
            "{start}\nMeasured with `{}` on {} ({cores} cores, {cpu}), written by the harness:\n\n{}",
            command_line(args),
            chrono::Utc::now().format("%Y-%m-%d"),
            table(r)
        );
        let updated = format!("{}{}{}", &text[..a], block, &text[b..]);
        std::fs::write(readme, updated).map_err(|e| format!("{readme:?}: {e}"))?;
    }
    Ok(())
}
