//! `webhook-enricher replay`: reprocesses a bounded range of the input topics through the same
//! pipeline as `run` (dedupe, enrich, publish, dead-letter, offsets), then stops by itself.
//!
//! 1. The range ([`range`]) is resolved per partition against the brokers ([`plan`]): the
//!    watermarks, offsets-for-times for a time start, and the replay group's committed offsets
//!    (a re-run of the same command resumes from them).
//! 2. `--dry-run` prints the plan and stops.
//! 3. The replay group (its own, never the live group) is given each partition's starting point
//!    as a commit; the engine's consumer then joins that group and starts exactly there.
//! 4. The engine runs bounded ([`crate::engine::bounds`]): nothing at or past a partition's end
//!    is processed, records outside the time window are finished as "filtered out by time", and
//!    the run drains and stops when every partition's committed progress reached its end.
//!    Provider isolation and the polling fallback are off (a backfill has no live traffic to
//!    protect from itself, and expects no webhook); the
//!    provider rate limit can be lowered (`--max-provider-rps`) to keep the live service's quota.
//! 5. A summary is printed; an interrupted run says how to resume.

pub mod plan;
pub mod progress;
pub mod range;

use crate::config::Config;
pub use crate::engine::bounds::TimeWindow;
use crate::engine::bounds::{Bounds, PartitionRange};
use crate::engine::offsets::TopicPartition;
use crate::engine::stats::{EngineStats, StatsSnapshot};
use plan::PlannedPartition;
use range::RangeSpec;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot create a Kafka client for the replay: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("cannot read {what} of topic {topic:?}: {source}")]
    Broker {
        what: &'static str,
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "cannot find the end of partitions {partitions:?} of topic {topic:?}: no answer in time"
    )]
    LogEnd { topic: String, partitions: Vec<i32> },
    #[error("input topic {topic:?} does not exist")]
    TopicMissing { topic: String },
    #[error(
        "--partition-offsets names topic {topic:?}, which is not an input topic of this replay"
    )]
    PartitionOffsetsTopic { topic: String },
    #[error("output topic{} {} do{} not exist: create {} first (a replay never creates topics)",
        if topics.len() == 1 { "" } else { "s" }, topics.join(", "),
        if topics.len() == 1 { "es" } else { "" }, if topics.len() == 1 { "it" } else { "them" })]
    OutputTopicsMissing { topics: Vec<String> },
    #[error("cannot commit the starting offsets of the replay group: {0}")]
    Seed(#[source] rdkafka::error::KafkaError),
    #[error("{0}")]
    Setup(#[from] crate::app::AppError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("cannot write the replay's report: {0}")]
    Report(#[source] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where the replayed records go, besides the configured output topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputChoice {
    /// Appended to every record topic (`.backfill`): shadow topics.
    pub suffix: Option<String>,
    pub clearsale_topic: Option<String>,
    pub unico_topic: Option<String>,
    pub dead_letter_topic: Option<String>,
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub range: RangeSpec,
    /// The replay group; derived from the live group and the range when `None`.
    pub group: Option<String>,
    pub output: OutputChoice,
    /// Most provider requests per second, per provider (lowers the configured limit).
    pub max_provider_rps: Option<u32>,
    pub dedupe: bool,
    /// Rebuild the output topics' records from their `raw_response` instead of enriching the
    /// input topics' webhooks (no provider call).
    pub renormalize: bool,
    pub dry_run: bool,
    pub progress: progress::ProgressSettings,
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// `--dry-run`: nothing was processed.
    DryRun,
    /// Every partition reached the end of its range.
    Completed,
    /// Stopped by a signal: running the same command again resumes.
    Interrupted,
    /// Stopped on an error (the error is returned after the summary is printed): running the
    /// same command again resumes once the cause is fixed.
    Failed,
}

/// The result of a replay.
#[derive(Debug, Clone)]
pub struct ReplaySummary {
    pub group: String,
    pub partitions: Vec<PlannedPartition>,
    pub window: TimeWindow,
    pub stats: StatsSnapshot,
    pub ending: Ending,
    /// `--renormalize`: the records were rebuilt from the output topics.
    pub renormalize: bool,
}

/// The configuration a replay runs with: the replay group, the chosen output topics, the rate
/// limit, dedupe on or off, provider isolation off, and the polling fallback off (a replay reads
/// a range of the input; with the fallback on, its new group would read every expectation ever
/// written and poll them all).
pub fn replay_config(config: &Config, options: &ReplayOptions) -> Config {
    let mut c = config.clone();
    if options.renormalize {
        c.input.topics = config.output.all_record_topics();
    }
    let out = &mut c.output;
    if let Some(suffix) = &options.output.suffix {
        out.clearsale_topic.push_str(suffix);
        out.unico_topic.push_str(suffix);
        for t in out.clearsale_module_topics.values_mut() {
            t.push_str(suffix);
        }
    }
    if let Some(t) = &options.output.clearsale_topic {
        out.clearsale_topic = t.clone();
    }
    if let Some(t) = &options.output.unico_topic {
        out.unico_topic = t.clone();
    }
    if let Some(t) = &options.output.dead_letter_topic {
        out.dead_letter_topic = t.clone();
    }
    if let Some(rps) = options.max_provider_rps {
        for limits in [&mut c.clearsale.limits, &mut c.unico.limits] {
            limits.rate_per_second = match limits.rate_per_second {
                0 => rps,
                configured => configured.min(rps),
            };
            let burst = if limits.burst == 0 {
                limits.rate_per_second
            } else {
                limits.burst
            };
            limits.burst = burst.min(limits.rate_per_second);
        }
    }
    if !options.dedupe {
        c.engine.dedupe.max_entries = 0;
    }
    c.engine.isolation.enabled = crate::engine::settings::Toggle::Off;
    c.fallback.enabled = false;
    c.kafka.group_id = options
        .group
        .clone()
        .unwrap_or_else(|| default_group(config, &c, options));
    c
}

/// `<live group>.replay.<8 hex digits>`: the digits are a hash of what defines the replay (the
/// input topics, the range as given, the output topics), so running the same command again
/// finds its progress, and a different replay never inherits another's.
fn default_group(live: &Config, replay: &Config, options: &ReplayOptions) -> String {
    let spec = &options.range;
    let identity = [
        replay.input.topics.join(","),
        options.renormalize.to_string(),
        spec.from
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        spec.to.to_string(),
        spec.partition_offsets.to_string(),
        replay.output.all_record_topics().join(","),
        replay.output.dead_letter_topic.clone(),
    ]
    .join("\n");
    format!(
        "{}.replay.{:08x}",
        live.kafka.group_id,
        fnv1a(identity.as_bytes()) as u32
    )
}

/// FNV-1a, 64 bits: stable across builds (unlike std's hasher), which a group name must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplayError> + Send + 'static,
) -> Result<T, ReplayError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplayError::Internal(format!("a broker query failed: {e}")))?
}

/// Runs a replay: plans it, prints the plan on `out`, and (unless `--dry-run`) processes the
/// range until it is done or `shutdown` resolves (then drains like `run`). The summary is
/// printed on `out` and returned.
pub async fn run(
    config: &Config,
    options: &ReplayOptions,
    shutdown: impl Future<Output = ()>,
    out: &mut (dyn Write + Send),
) -> Result<ReplaySummary, ReplayError> {
    let now = chrono::Utc::now();
    let effective = replay_config(config, options);
    let settings = effective.engine_run_settings();
    let group = effective.kafka.group_id.clone();
    let client = crate::kafka::client_config::consumer_config(
        &settings.kafka,
        &group,
        settings.engine.commit_interval,
        settings.statistics_interval,
    );
    let window = range::window(&options.range, now);
    let partitions = {
        let (client, topics, spec) = (
            client.clone(),
            effective.input.topics.clone(),
            options.range.clone(),
        );
        blocking(move || plan::resolve(&client, &topics, &spec, window.from_ms)).await?
    };
    let mut summary = ReplaySummary {
        group: group.clone(),
        partitions,
        window,
        stats: StatsSnapshot::default(),
        ending: Ending::DryRun,
        renormalize: options.renormalize,
    };
    write_plan(out, &summary, &effective, options.dry_run).map_err(ReplayError::Report)?;
    tracing::info!(
        group = %group,
        partitions = summary.partitions.len(),
        records = summary.partitions.iter().map(|p| p.range.remaining()).sum::<i64>(),
        dry_run = options.dry_run,
        "replay planned"
    );
    if options.dry_run {
        return Ok(summary);
    }
    let mut outputs = effective.output.all_record_topics();
    outputs.push(effective.output.dead_letter_topic.clone());
    let missing = {
        let client = client.clone();
        blocking(move || plan::missing_topics(&client, &outputs)).await?
    };
    if !missing.is_empty() {
        return Err(ReplayError::OutputTopicsMissing { topics: missing });
    }
    summary.partitions = {
        let (client, mut partitions) = (client.clone(), std::mem::take(&mut summary.partitions));
        blocking(move || {
            for (topic, partition) in plan::fetch_starts(&client, &mut partitions)? {
                tracing::warn!(topic, partition,
                    "the broker does not return the record at this partition's start offset (Tansu cannot fetch from inside a stored batch; or compaction removed it): reading from the earliest offset and skipping the records before the start");
            }
            Ok(partitions)
        })
        .await?
    };
    {
        let (client, partitions) = (client.clone(), summary.partitions.clone());
        let seeded = blocking(move || plan::seed(&client, &partitions)).await?;
        tracing::info!(group = %group, partitions = seeded, "replay group positioned");
    }
    let ranges: Vec<PartitionRange> = summary
        .partitions
        .iter()
        .map(|p| PartitionRange {
            tp: TopicPartition::new(p.topic.as_str(), p.partition),
            start: p.range.resume_at,
            end: p.range.end,
        })
        .collect();
    let mut bounds = Bounds::new(&ranges, window);
    if options.renormalize {
        bounds = bounds.renormalizing();
    }
    let bounds = Arc::new(bounds);
    if bounds.is_finished() {
        summary.ending = Ending::Completed;
        write_summary(out, &summary).map_err(ReplayError::Report)?;
        return Ok(summary);
    }
    let stats = Arc::new(EngineStats::default());
    let parts = crate::app::build_parts(&effective, stats.clone()).await?;
    let reporter = progress::start(options.progress.clone(), bounds.clone(), stats.clone());
    let result = crate::engine::run_bounded(&settings, parts, bounds.clone(), shutdown).await;
    reporter.finish();
    match result {
        Ok(stats) => {
            summary.stats = stats;
            summary.ending = if bounds.is_finished() {
                Ending::Completed
            } else {
                Ending::Interrupted
            };
            write_summary(out, &summary).map_err(ReplayError::Report)?;
            Ok(summary)
        }
        Err(e) => {
            summary.stats = stats.snapshot();
            summary.ending = Ending::Failed;
            // The error matters more than the report: it is returned even if printing fails.
            let _ = write_summary(out, &summary);
            Err(e.into())
        }
    }
}

fn write_plan(
    out: &mut (dyn Write + Send),
    summary: &ReplaySummary,
    config: &Config,
    dry_run: bool,
) -> std::io::Result<()> {
    writeln!(
        out,
        "replay{}{}: group {}, input {}",
        if summary.renormalize {
            " --renormalize"
        } else {
            ""
        },
        if dry_run { " (dry run)" } else { "" },
        summary.group,
        config.input.topics.join(", ")
    )?;
    writeln!(
        out,
        "  output: {} (dead letters: {})",
        config.output.all_record_topics().join(", "),
        config.output.dead_letter_topic
    )?;
    let time = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    if !summary.window.is_unbounded() {
        writeln!(
            out,
            "  time window: {} to {} (records outside it are filtered out; the counts below are offsets, so at most)",
            time(summary.window.from_ms).unwrap_or_else(|| "the start".into()),
            time(summary.window.to_ms).unwrap_or_else(|| "the end".into()),
        )?;
    }
    writeln!(
        out,
        "  {:<32} {:>9} {:>12} {:>12} {:>12} {:>10}",
        "TOPIC", "PARTITION", "START", "RESUME AT", "END", "RECORDS"
    )?;
    let mut total = 0;
    for p in &summary.partitions {
        total += p.range.remaining();
        writeln!(
            out,
            "  {:<32} {:>9} {:>12} {:>12} {:>12} {:>10}",
            p.topic,
            p.partition,
            p.range.start,
            if p.range.resumed() {
                p.range.resume_at.to_string()
            } else {
                "-".into()
            },
            p.range.end,
            p.range.remaining()
        )?;
    }
    writeln!(out, "  {:<32} {:>60}", "total", total)?;
    Ok(())
}

fn write_summary(out: &mut (dyn Write + Send), summary: &ReplaySummary) -> std::io::Result<()> {
    let s = &summary.stats;
    let ending = match summary.ending {
        Ending::DryRun => "dry run",
        Ending::Completed => "completed",
        Ending::Interrupted => {
            "interrupted (run the same command again to resume from the committed progress)"
        }
        Ending::Failed => "stopped on an error (the same command resumes once it is fixed)",
    };
    writeln!(out, "replay {ending}: group {}", summary.group)?;
    writeln!(out, "  consumed              {}", s.consumed)?;
    writeln!(out, "  published             {}", s.published)?;
    writeln!(out, "  deduplicated          {}", s.deduplicated)?;
    writeln!(out, "  skipped               {}", s.skipped)?;
    writeln!(out, "  filtered out by time  {}", s.filtered_by_time)?;
    if summary.renormalize {
        writeln!(
            out,
            "  without raw_response  {} (not re-normalized: each is logged with its offset)",
            s.without_raw_response
        )?;
    }
    writeln!(out, "  dead-lettered         {}", s.dead_lettered_total())?;
    for (class, n) in &s.dead_lettered {
        writeln!(out, "    {:<20}{n}", class.as_str())?;
    }
    if s.abandoned > 0 {
        writeln!(out, "  abandoned (read again on resume)  {}", s.abandoned)?;
    }
    Ok(())
}
