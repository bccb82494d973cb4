//! The webhook receiver (`webhook-enricher receive`): authentication in every mode, the
//! allowlist behind and without a trusted proxy, the size and time limits, Kafka down or slow
//! (503, never a 200 without the write), one raw record per accepted request, TLS, end to end
//! through `run`, and the built binary's SIGTERM drain and `kill -9` under load.

use crate::support::{self, Kafka, OutRecord, RunningEngine};
use base64::Engine as _;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use webhook_enricher::config::{Config, Role};
use webhook_enricher::health::Health;
use webhook_enricher::provider::Provider;
use webhook_enricher::receive::settings::{AuthMode, AuthSettings};
use webhook_enricher::receive::ReceiveError;
use webhook_enricher::simulator::SimulatorConfig;
use webhook_enricher::telemetry::receive::ReceiveSummary;

const CS_USER: &str = "clearsale-hooks";
/// Basic passwords may contain ':' (only the user cannot).
const CS_PASSWORD: &str = "pa:ss:w0rd";
const UNICO_HEADER: &str = "x-api-key";
const UNICO_KEY: &str = "unico-key-7Hq2";
const DATE: &str = "2025-09-26T17:21:11.0367845Z";

/// A receiver configuration for one test: ClearSale with Basic, Unico with an API key in a
/// header, short deadlines.
fn config(kafka: &Kafka, topic: &str) -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap_servers = kafka.bootstrap.clone();
    c.admin.listen = "127.0.0.1:0".into();
    c.admin.statistics_interval = Duration::from_millis(200);
    let r = &mut c.receive;
    r.listen = "127.0.0.1:0".into();
    r.topic = topic.into();
    r.write_timeout = Duration::from_secs(2);
    r.body_timeout = Duration::from_secs(2);
    r.drain_timeout = Duration::from_secs(10);
    r.retry_after = Duration::from_secs(3);
    r.clearsale.auth = AuthSettings {
        mode: Some(AuthMode::Basic),
        username: CS_USER.into(),
        password: CS_PASSWORD.into(),
        ..Default::default()
    };
    r.unico.auth = AuthSettings {
        mode: Some(AuthMode::ApiKey),
        header: UNICO_HEADER.into(),
        api_key: UNICO_KEY.into(),
        ..Default::default()
    };
    c
}

/// The receiver running in-process, as `webhook-enricher receive` would.
struct Receiver {
    addr: SocketAddr,
    health: Arc<Health>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<ReceiveSummary, ReceiveError>>,
}

impl Receiver {
    /// Starts it on a loopback port and waits until its producer is connected.
    async fn start(config: &Config) -> Self {
        assert_eq!(config.validate_for(Role::Receive), Vec::<String>::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(Health::for_producer(config.admin.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let (config, h) = (config.receive_serve_settings(), health.clone());
        let task = tokio::spawn(async move {
            webhook_enricher::receive::serve(&config, listener, h, async {
                let _ = stopped.await;
            })
            .await
        });
        let receiver = Self {
            addr,
            health,
            stop: Some(stop),
            task,
        };
        assert!(
            support::eventually(Duration::from_secs(20), || receiver.health.readiness().ok).await,
            "the receiver never got ready: {:?}",
            receiver.health.readiness()
        );
        receiver
    }

    fn url(&self, provider: Provider) -> String {
        format!("http://{}/webhooks/{provider}", self.addr)
    }

    /// Resolves the shutdown future (what SIGTERM does) and waits for the drain.
    async fn stop(mut self) -> ReceiveSummary {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the receiver stops within a minute")
            .expect("the receiver task does not panic")
            .expect("the receiver stops cleanly")
    }
}

/// One answer: status, headers, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn request_id(&self) -> String {
        self.header("x-request-id").to_string()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn outcome(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["outcome"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, String)],
) -> Answer {
    let mut request = client.post(url).body(body);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    let response = request.send().await.expect("request");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap_or_default(),
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn cs_auth() -> Vec<(&'static str, String)> {
    vec![("authorization", basic(CS_USER, CS_PASSWORD))]
}

fn unico_auth() -> Vec<(&'static str, String)> {
    vec![(UNICO_HEADER, UNICO_KEY.to_string())]
}

fn by_request_id(records: &[OutRecord]) -> HashMap<String, &OutRecord> {
    records
        .iter()
        .map(|r| (r.header("request-id").to_string(), r))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authentication_mode_accepts_right_credentials_and_refuses_wrong_ones() {
    let topic = support::unique("recv-auth");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let client = reqwest::Client::new();
    struct Case {
        name: &'static str,
        auth: AuthSettings,
        right: Vec<(&'static str, String)>,
        wrong: Vec<Vec<(&'static str, String)>>,
        challenge: &'static str,
    }
    let settings = |mode, f: &dyn Fn(&mut AuthSettings)| {
        let mut a = AuthSettings {
            mode: Some(mode),
            ..Default::default()
        };
        f(&mut a);
        a
    };
    let cases = vec![
        Case {
            name: "basic, password with ':'",
            auth: settings(AuthMode::Basic, &|a| {
                a.username = CS_USER.into();
                a.password = CS_PASSWORD.into();
            }),
            right: cs_auth(),
            wrong: vec![
                vec![("authorization", basic(CS_USER, "pa:ss"))],
                vec![("authorization", basic(CS_USER, "pa:ss:w0rd:"))],
                vec![("authorization", basic("clearsale", CS_PASSWORD))],
                vec![("authorization", format!("Bearer {CS_PASSWORD}"))],
                vec![("authorization", "Basic !!!".into())],
                vec![],
            ],
            challenge: "Basic",
        },
        Case {
            name: "bearer",
            auth: settings(AuthMode::Bearer, &|a| {
                a.token = "eyJhbGciOi.static.jwt".into()
            }),
            right: vec![("authorization", "Bearer eyJhbGciOi.static.jwt".into())],
            wrong: vec![
                vec![("authorization", "Bearer eyJhbGciOi.static.jwX".into())],
                vec![("authorization", "eyJhbGciOi.static.jwt".into())],
                vec![("authorization", basic("u", "eyJhbGciOi.static.jwt"))],
                vec![],
            ],
            challenge: "Bearer",
        },
        Case {
            name: "api key in a named header",
            auth: settings(AuthMode::ApiKey, &|a| {
                a.header = "X-Webhook-Key".into();
                a.api_key = "k3y-value".into();
            }),
            right: vec![("x-webhook-key", "k3y-value".into())],
            wrong: vec![
                vec![("x-webhook-key", "k3y-valuE".into())],
                vec![("authorization", "k3y-value".into())],
                vec![],
            ],
            challenge: "",
        },
        Case {
            name: "api key as the bare Authorization value",
            auth: settings(AuthMode::ApiKey, &|a| a.api_key = "bare-value-1".into()),
            right: vec![("authorization", "bare-value-1".into())],
            wrong: vec![
                vec![("authorization", "Bearer bare-value-1".into())],
                vec![("x-api-key", "bare-value-1".into())],
                vec![],
            ],
            challenge: "",
        },
        Case {
            name: "none (explicit opt-in)",
            auth: settings(AuthMode::None, &|_| {}),
            right: vec![("authorization", basic("any", "thing"))],
            wrong: vec![],
            challenge: "",
        },
    ];
    let mut accepted_ids = Vec::new();
    let mut refused_ids = Vec::new();
    for case in cases {
        let mut config = config(&kafka, &topic);
        config.receive.clearsale.auth = case.auth;
        config.receive.unico.enabled = false;
        let receiver = Receiver::start(&config).await;
        let url = receiver.url(Provider::ClearSale);
        let body = support::clearsale(&support::new_id(), "mfa", DATE);
        for wrong in &case.wrong {
            let a = post(&client, &url, body.clone(), wrong).await;
            assert_eq!(
                a.status, 401,
                "{}: {wrong:?} must be refused: {a:?}",
                case.name
            );
            assert_eq!(a.outcome(), "unauthorized");
            assert!(
                a.header("www-authenticate").starts_with(case.challenge),
                "{}: challenge {:?}",
                case.name,
                a.header("www-authenticate")
            );
            refused_ids.push(a.request_id());
        }
        let a = post(&client, &url, body.clone(), &case.right).await;
        assert_eq!(a.status, 200, "{}: the right credentials: {a:?}", case.name);
        assert_eq!(a.outcome(), "accepted");
        accepted_ids.push(a.request_id());
        // The Unico endpoint is off: its path is not served.
        let off = post(&client, &receiver.url(Provider::Unico), "{}", &unico_auth()).await;
        assert_eq!(off.status, 404);
        // Only POST is served on a webhook path.
        let get = client.get(&url).send().await.expect("request");
        assert_eq!(get.status().as_u16(), 405);
        let summary = receiver.stop().await;
        assert_eq!(summary.accepted, 1, "{}: {summary:?}", case.name);
        assert_eq!(
            summary.refused,
            case.wrong.len() as u64,
            "{}: {summary:?}",
            case.name
        );
    }
    // One record per accepted request, none for a refused one.
    let records = kafka.read_now(&topic);
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.header("request-id").to_string())
        .collect();
    assert_eq!(ids.len(), accepted_ids.len(), "{ids:?}");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        accepted_ids.iter().collect::<HashSet<_>>()
    );
    assert!(refused_ids.iter().all(|id| !ids.contains(id)));
}

// ---------------------------------------------------------------------------------------------
// Allowlist

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_reads_x_forwarded_for_only_from_trusted_proxies() {
    let topic = support::unique("recv-allow");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let client = reqwest::Client::new();
    let xff = |v: &str| {
        let mut h = unico_auth();
        h.push(("x-forwarded-for", v.to_string()));
        h
    };
    let body = || support::unico(&support::new_id(), "3");

    // Direct exposure: the peer (127.0.0.1) is the client, whatever the header claims.
    let mut direct = config(&kafka, &topic);
    direct.receive.unico.allow_cidrs = vec!["198.51.100.0/24".into()];
    let receiver = Receiver::start(&direct).await;
    let url = receiver.url(Provider::Unico);
    let a = post(&client, &url, body(), &xff("198.51.100.7")).await;
    assert_eq!(
        a.status, 403,
        "a forged X-Forwarded-For must not help: {a:?}"
    );
    assert_eq!(a.outcome(), "forbidden");
    // The allowlist is checked before the credentials (wrong ones still get 403).
    let a = post(&client, &url, body(), &[(UNICO_HEADER, "wrong".into())]).await;
    assert_eq!(a.status, 403);
    // ClearSale has no allowlist.
    let a = post(
        &client,
        &receiver.url(Provider::ClearSale),
        support::clearsale(&support::new_id(), "mfa", DATE),
        &cs_auth(),
    )
    .await;
    assert_eq!(a.status, 200);
    let summary = receiver.stop().await;
    assert_eq!((summary.accepted, summary.refused), (1, 2), "{summary:?}");

    // Behind a trusted proxy (the test client plays it): the rightmost untrusted entry counts.
    let mut proxied = direct.clone();
    proxied.receive.trusted_proxies = vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()];
    let receiver = Receiver::start(&proxied).await;
    let url = receiver.url(Provider::Unico);
    let mut allowed = Vec::new();
    for (header, status) in [
        ("198.51.100.7", 200),
        ("203.0.113.1, 198.51.100.8", 200),
        ("198.51.100.9, 10.1.2.3", 200),
        ("198.51.100.7, 203.0.113.1", 403),
        ("198.51.100.7, not-an-ip", 403),
        ("10.9.9.9", 403),
    ] {
        let a = post(&client, &url, body(), &xff(header)).await;
        assert_eq!(a.status, status, "X-Forwarded-For: {header}: {a:?}");
        if status == 200 {
            allowed.push((a.request_id(), header));
        }
    }
    let a = post(&client, &url, body(), &unico_auth()).await;
    assert_eq!(a.status, 403, "no header: the proxy itself is the client");
    receiver.stop().await;

    // The record names the client the allowlist saw.
    let records = kafka.read_now(&topic);
    let by_id = by_request_id(&records);
    for (id, header) in allowed {
        let expected = match header {
            "203.0.113.1, 198.51.100.8" => "198.51.100.8",
            "198.51.100.9, 10.1.2.3" => "198.51.100.9",
            other => other,
        };
        assert_eq!(by_id[&id].header("client-ip"), expected);
    }
    assert_eq!(records.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Limits

/// Sends raw bytes on a new connection and returns everything the server answers until it
/// closes or `timeout` passes.
async fn raw_exchange(
    addr: SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
    timeout: Duration,
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_slow_ones_408_broken_ones_400_and_nothing_is_written() {
    let topic = support::unique("recv-limits");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let client = reqwest::Client::new();
    let mut config = config(&kafka, &topic);
    config.receive.max_body_bytes = 1024;
    config.receive.body_timeout = Duration::from_millis(500);
    let receiver = Receiver::start(&config).await;
    let url = receiver.url(Provider::Unico);

    // Exactly at the limit: accepted (a valid webhook padded with spaces).
    let id = support::new_id();
    let mut at_limit = support::unico(&id, "3");
    at_limit.push_str(&" ".repeat(1024 - at_limit.len()));
    let a = post(&client, &url, at_limit.clone(), &unico_auth()).await;
    assert_eq!((a.status, a.outcome().as_str()), (200, "accepted"), "{a:?}");

    // One byte over, announced by Content-Length: refused before reading.
    let a = post(&client, &url, format!("{at_limit} "), &unico_auth()).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.outcome(), "too_large");
    assert_eq!(a.header("connection"), "close");

    // Over the limit without Content-Length (chunked): refused while reading.
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    let head = format!(
        "POST /webhooks/unico HTTP/1.1\r\nhost: x\r\n{UNICO_HEADER}: {UNICO_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let answer = raw_exchange(
        receiver.addr,
        &[
            head.as_bytes(),
            chunk.as_bytes(),
            chunk.as_bytes(),
            b"0\r\n\r\n",
        ],
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A body that does not arrive within receive.body_timeout.
    let head = format!(
        "POST /webhooks/unico HTTP/1.1\r\nhost: x\r\n{UNICO_HEADER}: {UNICO_KEY}\r\ncontent-length: 100\r\n\r\n{{\"id\":"
    );
    let started = Instant::now();
    let answer = raw_exchange(
        receiver.addr,
        &[head.as_bytes()],
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // Broken framing (a chunk size that is not hex): 400, nothing written, connection closed.
    let head = format!(
        "POST /webhooks/unico HTTP/1.1\r\nhost: x\r\n{UNICO_HEADER}: {UNICO_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let answer = raw_exchange(
        receiver.addr,
        &[head.as_bytes(), b"zz\r\n{\"id\":\r\n0\r\n\r\n"],
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_request"), "{answer}");

    // Unauthenticated: 401 whatever the size, and the body is not read.
    let a = post(&client, &url, "x".repeat(4096), &[]).await;
    assert_eq!(a.status, 401);

    let summary = receiver.stop().await;
    assert_eq!((summary.accepted, summary.refused), (1, 5), "{summary:?}");
    let records = kafka.read_now(&topic);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, at_limit.as_bytes());
    assert_eq!(records[0].key.as_deref(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_past_the_limit_wait_in_the_backlog() {
    let topic = support::unique("recv-conns");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let mut config = config(&kafka, &topic);
    config.receive.header_read_timeout = Duration::from_secs(1);
    config.receive.max_connections = 1;
    let receiver = Receiver::start(&config).await;

    // A client that never finishes its headers holds the only connection slot...
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(receiver.addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /webhooks/unico HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    // ...so a second connection waits in the listen backlog, unanswered.
    let body = support::unico(&support::new_id(), "3");
    let request = format!(
        "POST /webhooks/unico HTTP/1.1\r\nhost: x\r\n{UNICO_HEADER}: {UNICO_KEY}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut waiting = tokio::net::TcpStream::connect(receiver.addr)
        .await
        .expect("connect (the backlog takes it)");
    waiting.write_all(request.as_bytes()).await.expect("write");
    let mut early = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut early))
            .await
            .is_err(),
        "served past receive.max_connections"
    );

    // receive.header_read_timeout closes the slow one (no request, no answer worth a retry)...
    let mut cut = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut cut))
        .await
        .expect("the slow connection is closed");
    let cut_after = started.elapsed();
    assert!(
        cut_after >= Duration::from_millis(900) && cut_after < Duration::from_secs(5),
        "closed after {cut_after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&cut).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&cut)
    );
    // ...which frees the slot: the waiting request is served.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let summary = receiver.stop().await;
    assert_eq!((summary.accepted, summary.refused), (1, 0), "{summary:?}");
    let records = kafka.read_now(&topic);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Kafka down or slow

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_answers_503_with_retry_after_and_writes_nothing() {
    let topic = support::unique("recv-down");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let client = reqwest::Client::new();
    let mut config = config(&kafka, &topic);
    config.receive.write_timeout = Duration::from_secs(1);
    let receiver = Receiver::start(&config).await;
    let url = receiver.url(Provider::Unico);

    kafka.cluster.broker_down(1).expect("broker down");
    assert!(
        support::eventually(Duration::from_secs(20), || !receiver.health.readiness().ok).await,
        "readiness must follow the brokers"
    );
    let lost = support::unico(&support::new_id(), "3");
    let started = Instant::now();
    let a = post(&client, &url, lost.clone(), &unico_auth()).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.outcome(), "kafka_unavailable");
    assert_eq!(a.header("retry-after"), "3");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at the write deadline, not later: {:?}",
        started.elapsed()
    );

    kafka.cluster.broker_up(1).expect("broker up");
    assert!(
        support::eventually(Duration::from_secs(30), || receiver.health.readiness().ok).await,
        "{:?}",
        receiver.health.readiness()
    );
    let kept = support::unico(&support::new_id(), "3");
    let a = post(&client, &url, kept.clone(), &unico_auth()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let summary = receiver.stop().await;
    assert_eq!(
        (summary.accepted, summary.unavailable),
        (1, 1),
        "{summary:?}"
    );
    // The 503 left nothing behind: the one record is the later request's (an earlier write
    // would come first: the idempotent producer keeps the order).
    let records = kafka.read_now(&topic);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value, kept.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_kafka_and_a_full_house_answer_503_never_4xx() {
    let topic = support::unique("recv-slow");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let client = reqwest::Client::new();
    let mut config = config(&kafka, &topic);
    config.receive.write_timeout = Duration::from_secs(1);
    config.receive.max_in_flight = 1;
    // The holder below keeps its slot until it is done, however slow the machine.
    config.receive.body_timeout = Duration::from_secs(20);
    config.receive.drain_timeout = Duration::from_secs(30);
    let receiver = Receiver::start(&config).await;
    let url = receiver.url(Provider::Unico);

    // Slower than the write deadline: 503.
    kafka
        .cluster
        .broker_round_trip_time(1, Duration::from_millis(2500))
        .expect("rtt");
    let a = post(
        &client,
        &url,
        support::unico(&support::new_id(), "3"),
        &unico_auth(),
    )
    .await;
    assert_eq!(
        (a.status, a.outcome().as_str()),
        (503, "kafka_unavailable"),
        "{a:?}"
    );
    assert_eq!(a.header("retry-after"), "3");

    kafka
        .cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("rtt");

    // receive.max_in_flight = 1: a request admitted and still sending its body holds the only
    // slot; others are answered 503 at once meanwhile, and it is answered when it is done.
    let body = support::unico(&support::new_id(), "3");
    let (head, tail) = body.split_at(10);
    let holder_head = format!(
        "POST /webhooks/unico HTTP/1.1\r\nhost: x\r\n{UNICO_HEADER}: {UNICO_KEY}\r\ncontent-length: {}\r\n\r\n{head}",
        body.len()
    );
    let start_holder = || async {
        let mut holder = tokio::net::TcpStream::connect(receiver.addr)
            .await
            .expect("connect");
        holder
            .write_all(holder_head.as_bytes())
            .await
            .expect("write");
        holder
    };
    let mut holder = start_holder().await;
    let (mut polls_accepted, mut holder_overloaded) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let overloaded = loop {
        let a = post(
            &client,
            &url,
            support::unico(&support::new_id(), "3"),
            &unico_auth(),
        )
        .await;
        // The polls are sequential: a 503 means the holder has the slot.
        if a.status == 503 {
            break a;
        }
        // Sent before the holder was admitted: served normally.
        assert_eq!(a.status, 200, "{a:?}");
        polls_accepted += 1;
        // The holder may have come in while a poll had the slot: then it was answered 503
        // itself. Start it again.
        let mut early = [0u8; 1024];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(1), holder.read(&mut early)).await
        {
            let n = read.expect("read");
            let answer = String::from_utf8_lossy(&early[..n]);
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            holder_overloaded += 1;
            holder = start_holder().await;
        }
        assert!(Instant::now() < deadline, "never overloaded");
    };
    assert_eq!(overloaded.outcome(), "overloaded", "{overloaded:?}");
    assert_eq!(overloaded.header("retry-after"), "3");
    holder.write_all(tail.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), holder.read(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(holder);
    let summary = receiver.stop().await;
    assert_eq!(
        (summary.accepted, summary.unavailable, summary.refused),
        (1 + polls_accepted, 2 + holder_overloaded, 0),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_answers_503_and_stops_the_receiver_with_an_error() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let topic = support::unique("recv-fatal");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let client = reqwest::Client::new();
    let mut config = config(&kafka, &topic);
    // With the gapless guarantee, a sequence error is fatal for the idempotent producer.
    config
        .kafka
        .producer
        .0
        .insert("enable.gapless.guarantee".into(), "true".into());
    let mut receiver = Receiver::start(&config).await;
    let url = receiver.url(Provider::Unico);
    let kept = support::unico(&support::new_id(), "3");
    let a = post(&client, &url, kept.clone(), &unico_auth()).await;
    assert_eq!(a.status, 200, "{a:?}");

    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 4],
    );
    let a = post(
        &client,
        &url,
        support::unico(&support::new_id(), "3"),
        &unico_auth(),
    )
    .await;
    assert_eq!(
        (a.status, a.outcome().as_str()),
        (503, "kafka_unavailable"),
        "{a:?}"
    );
    assert_eq!(a.header("retry-after"), "3");
    // The receiver drains and stops by itself, with the producer's error.
    let stopped = tokio::time::timeout(Duration::from_secs(60), &mut receiver.task)
        .await
        .expect("the receiver stops by itself")
        .expect("the receiver task does not panic");
    match stopped {
        Err(ReceiveError::FatalProducer(_)) => {}
        other => panic!("expected a fatal producer error, got {other:?}"),
    }
    assert!(!receiver.health.readiness().ok, "not ready once stopped");
    assert!(
        client.post(&url).body("{}").send().await.is_err(),
        "the listener is closed"
    );
    kafka.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let records = kafka.read_now(&topic);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value, kept.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// What lands on the raw topic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_accepted_request_is_one_raw_record_with_its_key_bytes_and_headers() {
    let topic = support::unique("recv-records");
    let kafka = Kafka::new(&[(&topic, 3)]);
    let client = reqwest::Client::new();
    let mut config = config(&kafka, &topic);
    config.receive.forward_headers = vec!["user-agent".into(), "X-Trace-Id".into()];
    let receiver = Receiver::start(&config).await;

    struct Sent {
        body: String,
        key: Option<String>,
        provider: &'static str,
        request_id: String,
        trace: String,
        outcome: &'static str,
    }
    let mut sent = Vec::new();
    let started = chrono::Utc::now();
    for i in 0..24 {
        let id = support::new_id();
        let (provider, body, key, outcome) = match i % 6 {
            // Bytes are kept as sent: spacing, key order, upper-case ids, a trailing newline.
            0 => (
                Provider::ClearSale,
                format!(
                    "{{ \"type\": \"mfa\", \"date\": \"{DATE}\",\n \"analysisId\": \"{}\" }}\n",
                    id.to_uppercase()
                ),
                Some(id.clone()),
                "accepted",
            ),
            1 => (
                Provider::ClearSale,
                support::clearsale(&id, "biolink", DATE),
                Some(id.clone()),
                "accepted",
            ),
            2 => (
                Provider::Unico,
                format!(r#"{{"processId":"{id}","status":3}}"#),
                Some(id.clone()),
                "accepted",
            ),
            // A status the engine skips is still a valid webhook, keyed.
            3 => (
                Provider::Unico,
                support::unico(&id, "1"),
                Some(id.clone()),
                "accepted",
            ),
            // Malformed bodies are accepted without a key, for the engine to dead-letter.
            4 => (
                Provider::Unico,
                format!("not json {i}"),
                None,
                "accepted_malformed",
            ),
            _ => (
                Provider::ClearSale,
                format!(r#"{{"analysisId":"nope-{i}","date":"{DATE}","type":"mfa"}}"#),
                None,
                "accepted_malformed",
            ),
        };
        let trace = format!("trace-{i}");
        let mut headers = match provider {
            Provider::ClearSale => cs_auth(),
            Provider::Unico => unico_auth(),
        };
        headers.push(("content-type", "application/json; charset=utf-8".into()));
        headers.push(("user-agent", "provider-webhooks/1.0".into()));
        headers.push(("x-trace-id", trace.clone()));
        headers.push(("x-not-forwarded", "nope".into()));
        let a = post(&client, &receiver.url(provider), body.clone(), &headers).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.outcome(), outcome);
        assert_eq!(a.header("content-type"), "application/json");
        sent.push(Sent {
            body,
            key,
            provider: provider.as_str(),
            request_id: a.request_id(),
            trace,
            outcome,
        });
    }
    let summary = receiver.stop().await;
    assert_eq!(
        (summary.accepted, summary.accepted_malformed),
        (24, 8),
        "{summary:?}"
    );

    let records = kafka.read_now(&topic);
    assert_eq!(records.len(), sent.len(), "one record per accepted request");
    let by_id = by_request_id(&records);
    for s in &sent {
        let r = by_id
            .get(&s.request_id)
            .unwrap_or_else(|| panic!("no record for request {}", s.request_id));
        assert_eq!(r.value, s.body.as_bytes(), "the body, byte for byte");
        assert_eq!(r.key, s.key, "{} ({})", s.body, s.outcome);
        assert_eq!(r.header("provider"), s.provider);
        assert_eq!(r.header("content-type"), "application/json; charset=utf-8");
        assert_eq!(r.header("client-ip"), "127.0.0.1");
        assert_eq!(r.header("http.x-trace-id"), s.trace);
        assert_eq!(r.header("http.user-agent"), "provider-webhooks/1.0");
        let received = chrono::DateTime::parse_from_rfc3339(r.header("received-at"))
            .expect("received-at is RFC 3339");
        assert!(received >= started - chrono::Duration::seconds(1));
        let names: HashSet<&str> = r.header_list.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            HashSet::from([
                "provider",
                "received-at",
                "request-id",
                "client-ip",
                "content-type",
                "http.user-agent",
                "http.x-trace-id"
            ]),
            "no credentials, nothing outside the allowlist"
        );
        assert!(
            !r.header_list.iter().any(|(_, v)| v
                .as_deref()
                .is_some_and(|v| v.contains(UNICO_KEY) || v.contains("Basic "))),
            "credentials never reach Kafka"
        );
    }
    // Records of the same id share a partition (the key decides it).
    let keyed: Vec<&OutRecord> = records.iter().filter(|r| r.key.is_some()).collect();
    assert_eq!(keyed.len(), 16);
}

// ---------------------------------------------------------------------------------------------
// TLS

async fn tls_post(addr: SocketAddr, request: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/receiver-tls");
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(fixtures.join("cert.pem")).expect("cert")
    {
        roots.add(cert.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_configuration() {
    let topic = support::unique("recv-tls");
    let kafka = Kafka::new(&[(&topic, 1)]);
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/receiver-tls");
    let mut config = config(&kafka, &topic);
    config.receive.tls.cert_file = Some(fixtures.join("cert.pem"));
    config.receive.tls.key_file = Some(fixtures.join("key.pem"));
    let receiver = Receiver::start(&config).await;
    let body = support::unico(&support::new_id(), "3");
    let request = format!(
        "POST /webhooks/unico HTTP/1.1\r\nhost: localhost\r\n{UNICO_HEADER}: {UNICO_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = tls_post(receiver.addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = raw_exchange(
        receiver.addr,
        &[request.as_bytes()],
        Duration::ZERO,
        Duration::from_secs(5),
    )
    .await;
    assert!(!plain.contains("200"), "{plain}");
    receiver.stop().await;
    let records = kafka.read_now(&topic);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, body.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// End to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_receive_then_run_publishes_every_accepted_webhook() {
    let raw = support::unique("recv-e2e");
    let kafka = Kafka::new(&[
        (&raw, 3),
        (&format!("{raw}.clearsale"), 2),
        (&format!("{raw}.unico"), 2),
        (&format!("{raw}.dlq"), 1),
    ]);
    let sim = support::start_simulator(SimulatorConfig::default()).await;
    let mut config = support::config(&kafka, &sim, &raw);
    let receive = self::config(&kafka, &raw).receive;
    config.receive = receive;
    config.admin.statistics_interval = Duration::from_millis(200);
    let engine = RunningEngine::start(&config).await;
    let receiver = Receiver::start(&config).await;
    let client = reqwest::Client::new();

    let clearsale_ids: Vec<String> = (0..4).map(|_| support::new_id()).collect();
    let unico_ids: Vec<String> = (0..4).map(|_| support::new_id()).collect();
    for id in &clearsale_ids {
        let a = post(
            &client,
            &receiver.url(Provider::ClearSale),
            support::clearsale(id, "mfa", DATE),
            &cs_auth(),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    for (i, id) in unico_ids.iter().enumerate() {
        let body = if i % 2 == 0 {
            support::unico(id, "3")
        } else {
            format!(r#"{{"id":"{id}","status":{}}}"#, 2 + i)
        };
        let a = post(&client, &receiver.url(Provider::Unico), body, &unico_auth()).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let malformed = post(
        &client,
        &receiver.url(Provider::Unico),
        "{\"id\": oops",
        &unico_auth(),
    )
    .await;
    assert_eq!(malformed.outcome(), "accepted_malformed");

    let published_cs = kafka.read_all(&config.output.clearsale_topic, 4, Duration::from_secs(60));
    let published_unico = kafka.read_all(&config.output.unico_topic, 4, Duration::from_secs(60));
    let dead = kafka.read_all(&config.output.dead_letter_topic, 1, Duration::from_secs(60));
    let keys = |records: &[OutRecord]| {
        records
            .iter()
            .filter_map(|r| r.key.clone())
            .collect::<HashSet<_>>()
    };
    assert_eq!(keys(&published_cs), clearsale_ids.iter().cloned().collect());
    assert_eq!(keys(&published_unico), unico_ids.iter().cloned().collect());
    assert!(published_cs
        .iter()
        .all(|r| r.header("provider") == "clearsale"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, b"{\"id\": oops");
    assert_eq!(
        dead[0].header("request-id"),
        malformed.request_id(),
        "the evidence is kept"
    );
    assert_eq!(
        dead[0].header("__connect.errors.class.name"),
        "malformed_payload"
    );
    receiver.stop().await;
    let summary = engine.stop().await.expect("engine");
    assert_eq!(summary.published, 8, "{summary:?}");
}

// ---------------------------------------------------------------------------------------------
// The built binary

/// A receiver binary with its admin port, against a mock cluster.
struct Binary {
    child: support::ChildGuard,
    base: String,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn spawn_binary(config: &mut Config, name: &str) -> Binary {
    let port = support::free_port();
    let admin_port = support::free_port();
    config.receive.listen = format!("127.0.0.1:{port}");
    config.admin.listen = format!("127.0.0.1:{admin_port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = support::spawn_receive(config, dir.path(), name);
    let mut b = Binary {
        child,
        base: format!("http://127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            b.child.try_status().is_none(),
            "the receiver exited\n{}",
            b.child.tail()
        );
        assert!(Instant::now() < deadline, "never ready\n{}", b.child.tail());
        if let Ok(r) = reqwest::get(format!("{}/readyz", b.admin)).await {
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.child.log_contains("webhook receiver listening"),
        "{}",
        b.child.tail()
    );
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_requests_in_flight_by_their_writes_then_exits_zero() {
    let topic = support::unique("recv-term");
    let kafka = Kafka::new(&[(&topic, 2)]);
    let mut config = config(&kafka, &topic);
    config.receive.write_timeout = Duration::from_secs(5);
    config.receive.shutdown_delay = Duration::from_millis(500);
    let mut b = spawn_binary(&mut config, "recv-sigterm").await;
    // Writes take a while, so the signal finds them in flight.
    kafka
        .cluster
        .broker_round_trip_time(1, Duration::from_millis(1500))
        .expect("rtt");
    let client = reqwest::Client::new();
    let bodies: Vec<String> = (0..20)
        .map(|_| support::unico(&support::new_id(), "3"))
        .collect();
    let url = format!("{}/webhooks/unico", b.base);
    let requests: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move { post(&client, &url, body, &unico_auth()).await })
        })
        .collect();
    // Wait until all of them are in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", b.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        if metrics.contains("webhook_enricher_receiver_requests_in_flight 20") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests not in flight:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.child.signal("TERM");
    // Not ready at once, while the requests are still in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = reqwest::get(format!("{}/readyz", b.admin))
            .await
            .expect("readyz");
        if ready.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        requests.iter().all(|r| !r.is_finished()),
        "the requests should still be in flight when readiness drops"
    );
    for request in requests {
        let a = request.await.expect("request");
        assert_eq!(
            a.status, 200,
            "each request in flight is answered by its write: {a:?}"
        );
    }
    let status = b.child.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", b.child.tail());
    assert!(
        b.child.log_contains("receiver drained"),
        "{}",
        b.child.tail()
    );
    assert!(
        reqwest::Client::new()
            .post(&url)
            .body("{}")
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
    kafka
        .cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .expect("rtt");
    let records = kafka.read_now(&topic);
    let values: HashSet<Vec<u8>> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(records.len(), 20);
    assert!(bodies.iter().all(|b| values.contains(b.as_bytes())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_every_request_answered_200_is_on_the_raw_topic() {
    let topic = support::unique("recv-kill9");
    let kafka = Kafka::new(&[(&topic, 3)]);
    let mut config = config(&kafka, &topic);
    config.receive.write_timeout = Duration::from_secs(5);
    let mut b = spawn_binary(&mut config, "recv-kill9").await;

    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/webhooks/unico", b.base);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let workers: Vec<_> = (0..48)
        .map(|_| {
            let (client, url, accepted, failed, stop) = (
                client.clone(),
                url.clone(),
                accepted.clone(),
                failed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let body = support::unico(&support::new_id(), "3");
                    let mut request = client.post(&url).body(body.clone());
                    for (k, v) in unico_auth() {
                        request = request.header(k, v);
                    }
                    match request.send().await {
                        Ok(r) if r.status() == 200 => accepted.lock().expect("lock").push(body),
                        // A 503 (a write slower than its deadline on a busy machine) is a
                        // retry for the provider, not a loss: only 200s make a promise.
                        Ok(r) => assert_eq!(r.status(), 503, "never a 4xx"),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().expect("lock").len() < 1500 {
        assert!(b.child.try_status().is_none(), "{}", b.child.tail());
        assert!(
            Instant::now() < deadline,
            "the load did not get going\n{}",
            b.child.tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.child.kill_now();
    let accepted_at_kill = accepted.lock().expect("lock").len();
    // Keep the load on a little: every attempt now fails.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    let accepted = accepted.lock().expect("lock").clone();
    let records = support::read_to_end(&kafka.bootstrap, &topic).await;
    let written: HashSet<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|b| !written.contains(b.as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} requests answered 200 have no record: {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(3)]
    );
    eprintln!(
        "kill -9 under load: {} answered 200 ({accepted_at_kill} when killed), {} failed, {} records",
        accepted.len(),
        failed.load(Ordering::SeqCst),
        records.len()
    );
    assert!(
        failed.load(Ordering::SeqCst) > 0,
        "the kill landed while requests were sent"
    );
}

#[test]
fn check_config_for_receive_needs_webhook_credentials_not_provider_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receiver.toml");
    std::fs::write(
        &file,
        "[receive.clearsale.auth]\nmode = \"basic\"\nusername = \"cs\"\n[receive.unico]\nenabled = false\n",
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        support::binary_command()
            .arg("--config")
            .arg(&file)
            .args(["check-config", "--for", "receive"])
            .envs(
                env.iter()
                    .map(|(k, v)| (format!("WEBHOOK_ENRICHER_{k}"), v.to_string())),
            )
            .output()
            .expect("run check-config")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("receive.clearsale.auth.password is required with mode basic"),
        "{stderr}"
    );
    assert!(!stderr.contains("clearsale.user"), "{stderr}");
    let out = run(&[("RECEIVE__CLEARSALE__AUTH__PASSWORD", "s3cr:et-Zq9")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("s3cr:et-Zq9"), "{stdout}");
    let printed: toml::Table = toml::from_str(&stdout).expect("TOML");
    assert_eq!(
        printed["receive"]["clearsale"]["auth"]["password"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(
        printed["receive"]["clearsale"]["auth"]["mode"].as_str(),
        Some("basic")
    );
}
