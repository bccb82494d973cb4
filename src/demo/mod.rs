//! `webhook-enricher demo`: the whole pipeline once, in one process, with no infrastructure.
//!
//! 1. librdkafka's mock cluster starts with the input, output, dead-letter and the two wait
//!    topics (each wait topic with as many partitions as the input) ([`kafka`]), and the
//!    provider simulator starts on `127.0.0.1:0` with an RSA key pair made now (the public half
//!    for the simulator, the private half for the Unico client), a little latency, one unknown
//!    Unico process (404) and one failed one (410).
//! 2. Deterministic sample webhooks of both providers are produced ([`samples`]): repeats, a
//!    status that is skipped, bad payloads.
//! 3. The real pipeline runs: [`crate::app::build_parts`] and [`crate::engine::run`], the code of
//!    `webhook-enricher run`, with quick retry settings and provider isolation on. ClearSale is
//!    down (503) from the start: its circuit opens and its records are diverted to its wait
//!    topic, while Unico's are published. Once every sample that calls ClearSale is in the wait
//!    topic and every other sample has its outcome, the output topics are counted (what they
//!    hold was published during the outage) and ClearSale comes back: the circuit closes, the
//!    wait topic is read back, and its records get their outcomes in per-key order, so the demo
//!    shows an outage that stops only ClearSale and dead-letters nothing.
//! 4. When every input has a final outcome (a diverted one counts once, by the outcome of its
//!    copy read back), one more Unico process is announced only by its expectation (the polling
//!    fallback is on): its webhook is withheld, so the fallback polls it `fallback.after` (1 s)
//!    past its creation and publishes its result. The simulator answers every poll.
//! 5. Then the shutdown future resolves: the engine drains, flushes and commits as on SIGTERM.
//!    The output and dead-letter topics are read back and printed ([`report`]); the polled record
//!    is listed apart, since it is no input's outcome.

mod kafka;
pub mod report;
pub mod samples;

pub use report::{DeadLetter, DemoReport, Outage, OutputFormat, PublishedRecord};

use crate::app::AppError;
use crate::avro::{DecodeError, SchemaError};
use crate::config::Config;
use crate::engine::dead_letter::names as dlq;
use crate::engine::settings::Toggle;
use crate::engine::stats::{EngineStats, StatsSnapshot};
use crate::engine::EngineError;
use crate::event::{Decoded, DecoderSettings, RawEvent};
use crate::provider::clearsale::ClearSaleClient;
use crate::provider::unico::{ProcessAnswer, UnicoClient};
use crate::provider::{Provider, ProviderError};
use crate::secret::Secret;
use crate::simulator::{SimulatorConfig, SimulatorError, SimulatorHandle};
use futures::future::join_all;
use kafka::{MockKafka, ReadRecord};
use report::{progress, Topics};
use samples::{Catalog, Expected, Modules, Sample};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The input topic (`run`'s default).
const INPUT_TOPIC: &str = "webhooks.raw";
/// Partitions of the input topic (and of each output topic).
const PARTITIONS: i32 = 3;
/// The longest the pipeline may take to finish every input.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(120);
/// The ClearSale outage ends at the latest this long after the first ClearSale record paused
/// behind its circuit, even if not all its records were diverted, or not all other inputs
/// finished, by then (the summary says so).
const MAX_OUTAGE_AFTER_PAUSE: Duration = Duration::from_secs(10);
/// How often the demo looks at the engine's counters.
const POLL: Duration = Duration::from_millis(20);
/// Size of the generated Unico service-account key.
const RSA_BITS: usize = 2048;
/// At most this many batches of candidate ids are looked up before giving up.
const CANDIDATE_ROUNDS: u32 = 10;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// How to print the results.
    pub format: OutputFormat,
    /// How many webhooks, clamped to [`samples::MIN_COUNT`]..=[`samples::MAX_COUNT`].
    pub count: usize,
    /// Seed of the sample ids and the simulator's answers: the same seed, the same run.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::Table,
            count: samples::DEFAULT_COUNT,
            seed: 4,
        }
    }
}

/// Why the demo could not complete.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A background thread could not be started.
    #[error("cannot start a thread: {source}")]
    Thread {
        /// The OS error.
        source: std::io::Error,
    },
    /// A Kafka operation of the demo itself (mock cluster, samples, reading back) failed.
    #[error("Kafka: cannot {operation}: {message}")]
    Kafka {
        /// What the demo was doing.
        operation: &'static str,
        /// librdkafka's message.
        message: String,
    },
    /// The simulator's listener could not be bound.
    #[error("cannot bind the simulator to 127.0.0.1: {source}")]
    Bind {
        /// The OS error.
        source: std::io::Error,
    },
    /// The key pair or the simulator failed.
    #[error("provider simulator: {0}")]
    Simulator(#[from] SimulatorError),
    /// The demo's own configuration is invalid (a bug).
    #[error("invalid demo configuration: {problems}")]
    Config {
        /// The problems, separated by `; `.
        problems: String,
    },
    /// A simulated provider did not answer what it holds for a candidate id.
    #[error("looking up candidate id {id} in the simulator: {source}")]
    Catalog {
        /// The ClearSale analysis or Unico process id.
        id: Uuid,
        /// The client's error.
        source: ProviderError,
    },
    /// Too few candidate ids suit the samples (ClearSale analyses with an `mfa` or `biolink`
    /// module, finished Unico processes).
    #[error("too few suitable simulated analyses and processes among {candidates} candidates of each provider")]
    CatalogExhausted {
        /// How many candidates were looked at.
        candidates: u32,
    },
    /// The pipeline could not start.
    #[error(transparent)]
    App(#[from] AppError),
    /// The pipeline stopped with an error.
    #[error("the pipeline stopped: {0}")]
    Engine(#[from] EngineError),
    /// The pipeline task ended abnormally or before every input finished.
    #[error("the pipeline task ended abnormally: {message}")]
    Task {
        /// What happened.
        message: String,
    },
    /// Not every input had a final outcome in time.
    #[error("only {finished} of {inputs} inputs finished within {waited:?}")]
    Timeout {
        /// Inputs with a final outcome.
        finished: u64,
        /// Inputs produced.
        inputs: u64,
        /// How long the demo waited.
        waited: Duration,
    },
    /// The embedded output schema is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A record on an output topic does not decode.
    #[error("record {topic}/{partition}@{offset} does not decode: {source}")]
    Decode {
        /// The output topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// The decoder's error.
        source: DecodeError,
    },
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs the demo, printing to `out`, and returns what it observed.
pub async fn run(options: &DemoOptions, out: &mut impl Write) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let format = options.format;
    let count = options.count.clamp(samples::MIN_COUNT, samples::MAX_COUNT);
    let defaults = Config::default();
    let output = &defaults.output;
    let isolation = &defaults.engine.isolation;
    progress(
        out,
        format,
        &format!(
            "webhook-enricher demo: {count} sample webhooks through the real pipeline \
             (in-process mock Kafka and provider simulator; nothing to install)\n"
        ),
    )?;

    // Key generation is slow-ish CPU work: overlap it with the mock cluster's start.
    let keygen = tokio::task::spawn_blocking(|| crate::simulator::generate_rsa_keypair(RSA_BITS));
    let kafka = MockKafka::start(vec![
        (INPUT_TOPIC.to_string(), PARTITIONS),
        (output.clearsale_topic.clone(), PARTITIONS),
        (output.unico_topic.clone(), PARTITIONS),
        (output.dead_letter_topic.clone(), 1),
        (isolation.clearsale_wait_topic.clone(), PARTITIONS),
        (isolation.unico_wait_topic.clone(), PARTITIONS),
        (defaults.fallback.expectations_topic.clone(), PARTITIONS),
    ])
    .await?;
    let (private_key, public_key) = keygen.await.map_err(task_error)??;
    progress(
        out,
        format,
        &format!(
            "  ✓ mock Kafka cluster at {}: {INPUT_TOPIC} ({PARTITIONS} partitions) → {}, {}, {}; \
             wait topics {}, {} ({PARTITIONS} partitions each)",
            kafka.bootstrap(),
            output.clearsale_topic,
            output.unico_topic,
            output.dead_letter_topic,
            isolation.clearsale_wait_topic,
            isolation.unico_wait_topic
        ),
    )?;
    let sim = start_simulator(options.seed, public_key).await?;
    progress(
        out,
        format,
        &format!(
            "  ✓ provider simulator at {}: ClearSale and Unico (RSA service-account key made now), \
             10-40 ms latency, one unknown process (404), one failed process (410)",
            sim.base_url()
        ),
    )?;

    let config = demo_config(kafka.bootstrap(), &sim, private_key);
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(DemoError::Config {
            problems: problems.join("; "),
        });
    }
    let samples = build_samples(&config, options.seed, count).await?;
    let withheld = withheld_webhook(&config, options.seed).await?;
    let landed = kafka::produce(kafka.bootstrap(), INPUT_TOPIC, &samples).await?;
    let repeats = samples
        .iter()
        .filter(|s| s.expected == Expected::Deduplicated)
        .count();
    let bad = samples
        .iter()
        .filter(|s| matches!(s.expected, Expected::DeadLettered(_)))
        .count();
    progress(
        out,
        format,
        &format!(
            "  ✓ {} webhooks produced to {INPUT_TOPIC}: both providers, {repeats} exact repeats, \
             {bad} that cannot be enriched",
            samples.len()
        ),
    )?;

    let run = run_pipeline(&config, &sim, &samples, &withheld, format, out).await?;

    let at: HashMap<(i32, i64), usize> = landed
        .iter()
        .enumerate()
        .map(|(i, place)| (*place, i + 1))
        .collect();
    let mut records = Vec::new();
    let mut polled = Vec::new();
    for topic in [&output.clearsale_topic, &output.unico_topic] {
        for r in kafka::read_topic(kafka.bootstrap(), topic, PARTITIONS).await? {
            let record = published_record(topic, r, &at)?;
            // A record published by the fallback's poll names the expectation as its lineage.
            if record.record["lineage"]["topic"] == config.fallback.expectations_topic.as_str() {
                polled.push(record);
            } else {
                records.push(record);
            }
        }
    }
    records.sort_by_key(|r| r.input);
    let mut dead_letters: Vec<DeadLetter> =
        kafka::read_topic(kafka.bootstrap(), &output.dead_letter_topic, 1)
            .await?
            .into_iter()
            .map(|r| dead_letter(r, &at))
            .collect();
    dead_letters.sort_by_key(|d| d.input);

    let report = DemoReport {
        inputs: samples.len(),
        samples,
        records,
        polled,
        dead_letters,
        stats: run.stats,
        outage: run.outage,
        pipeline_time: run.time,
        total_time: started.elapsed(),
    };
    let topics = Topics {
        input: INPUT_TOPIC,
        records: vec![&output.clearsale_topic, &output.unico_topic],
        dead_letter: &output.dead_letter_topic,
        clearsale_wait: &isolation.clearsale_wait_topic,
    };
    report::write(out, format, &report, &topics)?;
    sim.shutdown().await?;
    Ok(report)
}

async fn start_simulator(seed: u64, public_key: String) -> Result<SimulatorHandle, DemoError> {
    let mut config = SimulatorConfig {
        seed,
        ..SimulatorConfig::default()
    };
    config.unico.public_key_pem = Some(public_key);
    config.latency.base = Duration::from_millis(10);
    config.latency.jitter = Duration::from_millis(30);
    config.faults.not_found_ids = vec![samples::unico_not_found_id(seed)];
    config.faults.gone_ids = vec![samples::unico_gone_id(seed)];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| DemoError::Bind { source })?;
    Ok(crate::simulator::start(config, listener).await?)
}

/// The configuration of `run` (its defaults: topics, encoding, dedupe, in-flight limit) pointed
/// at the mock cluster and the simulator, with retry, not-found grace and breaker timings
/// shortened from production's seconds to the demo's milliseconds, and provider isolation on.
fn demo_config(bootstrap: &str, sim: &SimulatorHandle, private_key: Secret) -> Config {
    let credentials = SimulatorConfig::default();
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap.to_string();
    c.kafka.group_id = "webhook-enricher-demo".into();
    c.input.topics = vec![INPUT_TOPIC.to_string()];
    c.clearsale.base_url = sim.base_url();
    c.clearsale.user = credentials.clearsale.user;
    c.clearsale.password = credentials.clearsale.password;
    c.unico.base_url = sim.base_url();
    c.unico.issuer_url = sim.base_url();
    c.unico.account = credentials.unico.account;
    c.unico.tenant = credentials.unico.tenant;
    c.unico.api_key = credentials.unico.api_key;
    c.unico.private_key_pem = private_key;
    // No request-rate limits: the simulator has none, and the demo should not wait on them.
    c.clearsale.limits.rate_per_second = 0;
    c.unico.limits.rate_per_second = 0;
    c.enrich.retry.initial = Duration::from_millis(20);
    c.enrich.retry.max_delay = Duration::from_millis(100);
    c.enrich.retry.max_elapsed = Duration::from_millis(600);
    c.enrich.not_found.delay = Duration::from_millis(100);
    c.engine.commit_interval = Duration::from_millis(200);
    c.engine.breaker.open_for = Duration::from_millis(500);
    c.engine.breaker.max_open_for = Duration::from_secs(2);
    // Provider isolation on (the wait topics exist): a provider that cannot be served is
    // diverted to its wait topic at once (open circuit) or after `divert_after` (its share of
    // the budget full); the catch-up after recovery ramps from 4 records, doubling every 100 ms.
    let iso = &mut c.engine.isolation;
    iso.enabled = Toggle::On;
    // Also how long a lane may hold records before its wait partition's end is seen (about
    // 1.5 s on the mock cluster): shorter would divert Unico as well at the start.
    iso.divert_after = Duration::from_secs(5);
    iso.catch_up_initial = 4;
    iso.catch_up_ramp_every = Duration::from_millis(100);
    // The polling fallback on: one Unico webhook is withheld after the others are done, and its
    // expectation is polled 1 s after its creation (10 s in production).
    let fb = &mut c.fallback;
    fb.enabled = true;
    fb.after = Duration::from_secs(1);
    fb.poll_interval = Duration::from_millis(200);
    fb.max_poll_interval = Duration::from_secs(1);
    fb.max_wait = Duration::from_secs(60);
    c
}

/// The webhook the demo withholds: a Unico process whose webhook never comes, announced only by
/// its expectation. The simulator is asked for its status, which the expectation expects.
struct Withheld {
    id: Uuid,
    status: u8,
}

impl Withheld {
    fn expectation(&self) -> String {
        format!(
            r#"{{"provider":"unico","id":"{}","created_at":"{}","expect":[{}]}}"#,
            self.id,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.status
        )
    }
}

async fn withheld_webhook(config: &Config, seed: u64) -> Result<Withheld, DemoError> {
    let unico = UnicoClient::new(&config.unico).map_err(AppError::from)?;
    let id = Uuid::new_v5(
        &crate::event::EVENT_ID_NAMESPACE,
        format!("demo-withheld-webhook-{seed}").as_bytes(),
    );
    let answer = unico
        .get_process(id)
        .await
        .map_err(|source| DemoError::Catalog { id, source })?;
    let status = match answer {
        ProcessAnswer::Found { process, .. } => process
            .status
            .and_then(|s| u8::try_from(s).ok())
            .filter(|s| (2..=5).contains(s))
            .unwrap_or(3),
        ProcessAnswer::Gone => 5,
    };
    Ok(Withheld { id, status })
}

/// Builds the samples, first asking the simulated providers (with the clients the pipeline
/// uses) what they hold for candidate ids: the modules of each ClearSale analysis and the
/// status of each Unico process, so each webhook says what a real provider would send.
async fn build_samples(config: &Config, seed: u64, count: usize) -> Result<Vec<Sample>, DemoError> {
    let clearsale = ClearSaleClient::new(&config.clearsale).map_err(AppError::from)?;
    let unico = UnicoClient::new(&config.unico).map_err(AppError::from)?;
    let (clearsale_needed, unico_needed) = samples::ids_needed(count);
    let batch = 2 * clearsale_needed.max(unico_needed) as u32;
    let limit = batch * CANDIDATE_ROUNDS;
    let mut catalog = Catalog::default();
    let mut next = 0;
    loop {
        if let Some(samples) = samples::build(seed, count, &catalog) {
            return Ok(samples);
        }
        if next >= limit {
            return Err(DemoError::CatalogExhausted { candidates: next });
        }
        let range = next..next + batch;
        next += batch;
        let analyses: Vec<Uuid> = range
            .clone()
            .map(|n| samples::clearsale_candidate(seed, n))
            .collect();
        let processes: Vec<Uuid> = range.map(|n| samples::unico_candidate(seed, n)).collect();
        let (analysis_answers, process_answers) = futures::join!(
            join_all(analyses.iter().map(|id| clearsale.get_analysis(*id))),
            join_all(processes.iter().map(|id| unico.get_process(*id))),
        );
        for (id, answer) in analyses.into_iter().zip(analysis_answers) {
            let (analysis, _) = answer.map_err(|source| DemoError::Catalog { id, source })?;
            let modules = Modules {
                mfa: analysis.mfa.is_some(),
                biolink: analysis.biolink.is_some(),
            };
            catalog.add_clearsale(id, modules);
        }
        for (id, answer) in processes.into_iter().zip(process_answers) {
            let answer = answer.map_err(|source| DemoError::Catalog { id, source })?;
            if let ProcessAnswer::Found { process, .. } = answer {
                if let Some(status) = process.status.and_then(|s| u8::try_from(s).ok()) {
                    catalog.add_unico(id, status);
                }
            }
        }
    }
}

/// What [`run_pipeline`] observed.
struct PipelineRun {
    /// The engine's counters at the end.
    stats: StatsSnapshot,
    /// From the engine's start to the last final outcome.
    time: Duration,
    /// The ClearSale outage (`None` when no sample calls ClearSale).
    outage: Option<Outage>,
}

/// Runs the engine until every sample has a final outcome, with the ClearSale outage, then
/// resolves the shutdown future and waits for the drain.
///
/// ClearSale is down from the start until every sample that calls it was diverted to its wait
/// topic and every other sample has its outcome (at most [`MAX_OUTAGE_AFTER_PAUSE`] after its
/// circuit first opened). Just before it comes back, the output topics are counted: what they
/// hold then was published during the outage.
async fn run_pipeline(
    config: &Config,
    sim: &SimulatorHandle,
    samples: &[Sample],
    withheld: &Withheld,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<PipelineRun, DemoError> {
    let inputs = samples.len() as u64;
    let clearsale_records = clearsale_records(&config.input, samples) as u64;
    let others = inputs - clearsale_records;
    let wait_topic = config.engine.isolation.clearsale_wait_topic.as_str();
    let stats = Arc::new(EngineStats::default());
    let parts = crate::app::build_parts(config, stats.clone()).await?;
    let mut down = clearsale_records > 0;
    let mut outage = None;
    if down {
        sim.set_outage(Provider::ClearSale, true);
        progress(
            out,
            format,
            &format!(
                "  ! ClearSale outage: it answers 503 until all {clearsale_records} of its records \
                 are in {wait_topic} and the {others} other inputs have their outcomes"
            ),
        )?;
    }
    progress(
        out,
        format,
        "  … pipeline running (joining the consumer group takes a few seconds)",
    )?;

    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine_config = config.engine_run_settings();
    let mut engine = tokio::spawn(async move {
        crate::engine::run(&engine_config, parts, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut first_pause: Option<Instant> = None;
    // When the withheld webhook's expectation was written.
    let mut expectation: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut engine => {
                return Err(match ended {
                    Ok(Err(error)) => error.into(),
                    Ok(Ok(_)) => DemoError::Task { message: "the engine stopped before every input finished".into() },
                    Err(error) => task_error(error),
                });
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = stats.snapshot();
        if down {
            if now.systemic_pauses > 0 {
                first_pause.get_or_insert_with(Instant::now);
            }
            // Wait-topic records are never diverted again, so `diverted` counts inputs; and no
            // ClearSale record can have an outcome while every ClearSale call fails, so the
            // outcomes so far are the other inputs'.
            let all_diverted = now.diverted >= clearsale_records;
            let others_done = report::accounted(&now) >= others;
            let too_long = first_pause.is_some_and(|t| t.elapsed() >= MAX_OUTAGE_AFTER_PAUSE);
            if (all_diverted && others_done) || too_long {
                // Counted while ClearSale still answers 503.
                let output = &config.output;
                let counts = kafka::record_counts(
                    &config.kafka.bootstrap_servers,
                    &[&output.clearsale_topic, &output.unico_topic],
                    PARTITIONS,
                )
                .await?;
                sim.set_outage(Provider::ClearSale, false);
                down = false;
                let o = Outage {
                    ended_after: started.elapsed(),
                    clearsale_records,
                    diverted: now.diverted,
                    other_inputs: others,
                    finished: report::accounted(&now),
                    clearsale_published: counts[0],
                    unico_published: counts[1],
                };
                let cut_short = if all_diverted && others_done {
                    String::new()
                } else {
                    format!(
                        " (cut short {MAX_OUTAGE_AFTER_PAUSE:?} after the circuit opened: \
                         {} of {clearsale_records} ClearSale records diverted, {} of {others} \
                         other inputs finished)",
                        o.diverted, o.finished
                    )
                };
                progress(
                    out,
                    format,
                    &format!(
                        "  ✓ ClearSale outage over at {:.1}s{cut_short}: {} records in {wait_topic}, \
                         {} Unico records published meanwhile; ClearSale is back",
                        o.ended_after.as_secs_f64(),
                        o.diverted,
                        o.unico_published
                    ),
                )?;
                outage = Some(o);
            }
        }
        if report::accounted(&now) >= inputs && expectation.is_none() {
            // Every input has its outcome. Now the withheld webhook: only its expectation is
            // written; the fallback polls it `fallback.after` past its creation.
            let key = withheld.id.to_string();
            kafka::produce_one(
                &config.kafka.bootstrap_servers,
                &config.fallback.expectations_topic,
                &key,
                withheld.expectation().as_bytes(),
            )
            .await?;
            expectation = Some(Instant::now());
            progress(
                out,
                format,
                &format!(
                    "  ! one Unico webhook withheld (process {}): only its expectation is on {}; \
                     the fallback polls it {:?} after its creation",
                    &key[..8],
                    config.fallback.expectations_topic,
                    config.fallback.after
                ),
            )?;
        }
        if let Some(written) = expectation {
            if now.resolved_by_poll >= 1 {
                progress(
                    out,
                    format,
                    &format!(
                        "  ✓ its result recovered by polling {:.1}s after the expectation was written",
                        written.elapsed().as_secs_f64()
                    ),
                )?;
                break;
            }
        }
        if started.elapsed() >= PIPELINE_TIMEOUT {
            let _ = stop.send(());
            let _ = engine.await;
            return Err(DemoError::Timeout {
                finished: report::accounted(&now),
                inputs,
                waited: PIPELINE_TIMEOUT,
            });
        }
    }
    let time = started.elapsed();
    progress(
        out,
        format,
        &format!(
            "  ✓ all {inputs} inputs have a final outcome after {:.1}s; draining and committing offsets",
            time.as_secs_f64()
        ),
    )?;
    let _ = stop.send(());
    let stats = engine.await.map_err(task_error)??;
    Ok(PipelineRun {
        stats,
        time,
        outage,
    })
}

/// How many samples call ClearSale: each should be diverted to its wait topic during the
/// outage (the repeats too: they are deduplicated only once read back).
fn clearsale_records(settings: &DecoderSettings, samples: &[Sample]) -> usize {
    let topic = settings.topics.first().map_or("", String::as_str);
    samples
        .iter()
        .filter(|s| {
            let provider_header = s
                .headers
                .iter()
                .find(|(k, _)| *k == "provider")
                .map(|(_, v)| v.as_bytes());
            let raw = RawEvent {
                topic,
                payload: Some(&s.payload),
                provider_header,
            };
            matches!(
                crate::event::decode(raw, settings),
                Ok(Decoded::Enrich(e)) if e.provider == Provider::ClearSale
            )
        })
        .count()
}

fn published_record(
    topic: &str,
    r: ReadRecord,
    at: &HashMap<(i32, i64), usize>,
) -> Result<PublishedRecord, DemoError> {
    let decoded = crate::avro::decode(&r.value, crate::avro::schema()?).map_err(|source| {
        DemoError::Decode {
            topic: topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            source,
        }
    })?;
    let record = crate::avro::to_json(&decoded.value);
    let lineage = &record["lineage"];
    let input = (lineage["topic"] == INPUT_TOPIC)
        .then(|| {
            let partition = i32::try_from(lineage["partition"].as_i64()?).ok()?;
            at.get(&(partition, lineage["offset"].as_i64()?)).copied()
        })
        .flatten();
    Ok(PublishedRecord {
        input,
        topic: topic.to_string(),
        partition: r.partition,
        offset: r.offset,
        key: r.key,
        record,
    })
}

fn dead_letter(r: ReadRecord, at: &HashMap<(i32, i64), usize>) -> DeadLetter {
    let source_partition = r.header(dlq::PARTITION).parse().unwrap_or(-1);
    let source_offset = r.header(dlq::OFFSET).parse().unwrap_or(-1);
    DeadLetter {
        input: at.get(&(source_partition, source_offset)).copied(),
        class: r.header(dlq::CLASS).to_string(),
        stage: r.header(dlq::STAGE).to_string(),
        message: r.header(dlq::MESSAGE).to_string(),
        source_partition,
        source_offset,
        key: r.key,
    }
}

fn task_error(error: tokio::task::JoinError) -> DemoError {
    DemoError::Task {
        message: error.to_string(),
    }
}
