//! The `webhook-enricher` binary: parse the command line, set up logging and the shutdown
//! signal, and call the library.
//!
//! `simulate` and `demo` exist only in a binary built with the `simulator` / `demo` cargo
//! features (the default); the production image is built without them, and asked for either it
//! says which feature it lacks (`parse_cli`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use webhook_enricher::config::{Config, ConfigSources, Role};
#[cfg(feature = "demo")]
use webhook_enricher::demo::{self, DemoOptions, OutputFormat};
use webhook_enricher::logging::{self, LogFormat};
use webhook_enricher::replay::progress::ProgressSettings;
use webhook_enricher::replay::range::{PartitionOffsets, Position, RangeSpec};
use webhook_enricher::replay::{OutputChoice, ReplayOptions};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns provider webhook notifications on Kafka into complete, decision-ready Avro records.
#[derive(Parser)]
#[command(name = "webhook-enricher", version, about)]
struct Cli {
    /// Configuration file (TOML, or YAML by extension).
    #[arg(long, short = 'c', global = true, env = "WEBHOOK_ENRICHER_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set kafka.bootstrap_servers=broker:9092` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, global = true, env = "WEBHOOK_ENRICHER_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log level or filter (`info`, `debug`, `webhook_enricher=debug,librdkafka=warn`).
    #[arg(long, global = true, env = "WEBHOOK_ENRICHER_LOG_LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the enrichment pipeline (the main job) until SIGTERM/SIGINT.
    Run,
    /// Serve the providers' webhooks: each accepted request is written to the raw topic and
    /// answered 200 once Kafka acknowledged it. Until SIGTERM/SIGINT (then drain and exit 0).
    Receive,
    /// Reprocess a range of the input topics through the same pipeline as `run`, with its own
    /// consumer group, then stop. Running the same command again resumes from its progress.
    ///
    /// The range is `--from` (or `--partition-offsets`) up to `--to` (end-exclusive; by default
    /// the end of each partition when the command starts). A time bound is exact: records are
    /// also filtered by their own timestamp. Ctrl-C drains like `run`.
    Replay(Box<ReplayArgs>),
    /// Write dead letters back to their source topic (`__connect.errors.topic`), with their
    /// original key, value and headers and a redrive count; then print a summary.
    ///
    /// Reads the dead-letter topic (`output.dead_letter_topic`) from the redrive group's
    /// committed offsets up to its end offsets at start, so it always ends by itself and the
    /// same command run again resumes. A dead letter is committed only once its republish is
    /// acknowledged. Exit status: 0 done (or stopped by a signal after committing what was
    /// acknowledged), 1 a republish or commit failed, 2 bad arguments or configuration, 130 a
    /// second signal.
    Redrive(webhook_enricher::redrive::RedriveOptions),
    /// Print the effective configuration (secrets redacted) and exit; non-zero if invalid.
    CheckConfig {
        /// Validate for this command: `run` (the enricher), `receive` (the webhook receiver) or
        /// `redrive`.
        #[arg(long = "for", value_enum, default_value_t = Role::Run)]
        role: Role,
    },
    /// Serve the provider simulator (both providers' auth and result endpoints).
    #[cfg(feature = "simulator")]
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Simulator configuration file (TOML); the defaults otherwise.
        #[arg(long)]
        simulator_config: Option<PathBuf>,
    },
    /// Run the whole pipeline once on sample webhooks, with nothing to install.
    ///
    /// Starts an in-process mock Kafka cluster and the provider simulator (with a ClearSale
    /// outage that diverts its records to a wait topic while Unico's are published), produces
    /// sample webhooks of both providers (repeats, a skipped status, bad
    /// payloads), runs the real pipeline until every input has a final outcome, then prints the
    /// enriched records, the dead letters and a summary on stdout. Logs go to stderr: warnings
    /// only, without the per-record events the demo prints itself, unless --log-level says
    /// otherwise (`--log-level info` shows everything). Needs no configuration: --config and
    /// --set are ignored.
    #[cfg(feature = "demo")]
    Demo {
        /// How to print the results.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// How many sample webhooks to produce (18 to 1000).
        #[arg(long, default_value_t = demo::samples::DEFAULT_COUNT as u16,
            value_parser = clap::value_parser!(u16).range(demo::samples::MIN_COUNT as i64..=demo::samples::MAX_COUNT as i64))]
        count: u16,
        /// Seed of the sample ids and the simulated answers (same seed, same records).
        #[arg(long, default_value_t = DemoOptions::default().seed)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Where the range starts: `earliest`, an offset, an RFC 3339 time or a duration ago (`-6h`).
    #[arg(long, value_name = "POSITION", allow_hyphen_values = true,
        required_unless_present_any = ["from_timestamp", "partition_offsets"])]
    from: Option<Position>,
    /// Where the range ends, exclusive: `latest` (the end when the command starts), an offset,
    /// an RFC 3339 time or a duration ago.
    #[arg(
        long,
        value_name = "POSITION",
        default_value = "latest",
        allow_hyphen_values = true
    )]
    to: Position,
    /// `--from` as a time: RFC 3339 or milliseconds since the epoch.
    #[arg(long, value_name = "TIME", conflicts_with = "from", value_parser = Position::parse_time)]
    from_timestamp: Option<Position>,
    /// `--to` as a time: RFC 3339 or milliseconds since the epoch.
    #[arg(long, value_name = "TIME", conflicts_with = "to", value_parser = Position::parse_time)]
    to_timestamp: Option<Position>,
    /// Per-partition start offsets, `PARTITION=OFFSET` (every input topic) or
    /// `TOPIC:PARTITION=OFFSET`, comma-separated: `0=120,3=998`. Without `--from`, only these
    /// partitions are replayed.
    #[arg(long, value_name = "LIST")]
    partition_offsets: Option<PartitionOffsets>,
    /// The replay's consumer group. Default: `<kafka.group_id>.replay.<hash of the range and
    /// topics>`, so the same command resumes and another replay starts afresh.
    #[arg(long)]
    group: Option<String>,
    /// Publish to shadow topics: this suffix is appended to every output record topic
    /// (`.backfill`); the topics must exist.
    #[arg(long, value_name = "SUFFIX")]
    output_suffix: Option<String>,
    /// Publish ClearSale records to this topic.
    #[arg(long, value_name = "TOPIC")]
    clearsale_topic: Option<String>,
    /// Publish Unico records to this topic.
    #[arg(long, value_name = "TOPIC")]
    unico_topic: Option<String>,
    /// Write dead letters to this topic.
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// At most this many provider requests per second, per provider (lowers the configured
    /// limit; keeps the live service's quota).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_provider_rps: Option<u32>,
    /// Drop repeats of events already published in this replay (`on`), or publish every record
    /// (`off`).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    dedupe: Switch,
    /// Rebuild the records of the output topics from their `raw_response` with the current
    /// normalizer and schema, and publish them again: no provider call.
    #[arg(long)]
    renormalize: bool,
    /// Print, per partition, the resolved start and end offsets and the number of records, and
    /// stop: no provider call, nothing produced.
    #[arg(long)]
    dry_run: bool,
    /// How progress is shown: `bars` on stderr (per partition and in total, with rate and
    /// ETA), `log` lines every --progress-interval, or `auto` (bars when stderr is a terminal).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// How often a progress line is logged (`--progress log`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    progress_interval: std::time::Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProgressMode {
    Auto,
    Bars,
    Log,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

impl ReplayArgs {
    fn options(self) -> ReplayOptions {
        ReplayOptions {
            range: RangeSpec {
                from: self.from.or(self.from_timestamp),
                to: self.to_timestamp.unwrap_or(self.to),
                partition_offsets: self.partition_offsets.unwrap_or_default(),
            },
            group: self.group,
            output: OutputChoice {
                suffix: self.output_suffix,
                clearsale_topic: self.clearsale_topic,
                unico_topic: self.unico_topic,
                dead_letter_topic: self.dead_letter_topic,
            },
            max_provider_rps: self.max_provider_rps,
            dedupe: self.dedupe == Switch::On,
            renormalize: self.renormalize,
            dry_run: self.dry_run,
            progress: ProgressSettings {
                interval: self.progress_interval,
                bars: match self.progress {
                    ProgressMode::Bars => true,
                    ProgressMode::Log => false,
                    ProgressMode::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
                },
            },
        }
    }
}

/// Exit status for an invalid configuration (a usage error, like clap's).
const EXIT_CONFIG: i32 = 2;
/// Exit status when the service stopped on an error.
const EXIT_FAILURE: i32 = 1;

/// The subcommands of the cargo features a binary may be built without: the command, the feature
/// it needs, and whether this binary has it.
const FEATURE_SUBCOMMANDS: [(&str, &str, bool); 2] = [
    ("demo", "demo", cfg!(feature = "demo")),
    ("simulate", "simulator", cfg!(feature = "simulator")),
];

/// Parses the command line, or exits with clap's usage error (status 2). A subcommand this build
/// left out (the production image has neither `demo` nor `simulate`) gets a note saying which
/// cargo feature it needs, rather than only clap's "unrecognized subcommand".
fn parse_cli() -> Cli {
    Cli::try_parse().unwrap_or_else(|error| {
        if let Some(note) = left_out_subcommand(&error) {
            // Printing to stderr can only fail if stderr is gone; the exit status still says it.
            let _ = error.print();
            eprintln!("{note}");
            std::process::exit(error.exit_code());
        }
        error.exit()
    })
}

/// The note for a parse error on a subcommand whose cargo feature this binary was built without.
fn left_out_subcommand(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::InvalidSubcommand {
        return None;
    }
    let Some(ContextValue::String(name)) = error.get(ContextKind::InvalidSubcommand) else {
        return None;
    };
    let (_, feature, built_in) = FEATURE_SUBCOMMANDS
        .iter()
        .find(|(command, _, _)| command == name)?;
    (!built_in).then(|| {
        format!(
            "note: this webhook-enricher was built without the `{feature}` cargo feature (as the \
             production image is), so it has no `{name}` command; build with the default features \
             (`cargo build`) to get it"
        )
    })
}

fn main() {
    let cli = parse_cli();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(async_main(cli)));
    if let Err(error) = result {
        // `{:#}` prints the chain of causes; no backtrace for an operator.
        eprintln!("error: {error:#}");
        let code = if error
            .downcast_ref::<webhook_enricher::config::ConfigError>()
            .is_some()
        {
            EXIT_CONFIG
        } else {
            EXIT_FAILURE
        };
        std::process::exit(code);
    }
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    let load = |role: Role| {
        Config::load_for(
            &ConfigSources::from_process(cli.config.clone(), cli.overrides.clone()),
            role,
        )
    };
    match cli.command {
        Command::Run => {
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Auto),
                cli.log_level.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let config = load(Role::Run)?;
            let summary =
                webhook_enricher::app::run(&config, webhook_enricher::shutdown::signal()).await?;
            tracing::info!(summary = ?summary, "webhook-enricher stopped");
            Ok(())
        }
        Command::Receive => {
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Auto),
                cli.log_level.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let config = load(Role::Receive)?;
            let summary =
                webhook_enricher::app::receive(&config, webhook_enricher::shutdown::signal())
                    .await?;
            tracing::info!(summary = ?summary, "webhook receiver stopped");
            Ok(())
        }
        Command::Replay(args) => {
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Auto),
                cli.log_level.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let config = load(Role::Run)?;
            let options = args.options();
            let mut stdout = std::io::stdout();
            webhook_enricher::replay::run(
                &config,
                &options,
                webhook_enricher::shutdown::signal(),
                &mut stdout,
            )
            .await?;
            Ok(())
        }
        Command::Redrive(options) => {
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Auto),
                cli.log_level.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let config = load(Role::Redrive)?;
            let settings = config.redrive_settings(&options, chrono::Utc::now());
            let summary =
                webhook_enricher::redrive::run(&settings, webhook_enricher::shutdown::signal())
                    .await?;
            print!("{}", summary.render());
            if summary.failed() {
                anyhow::bail!(
                    "the redrive did not finish (see the summary above): {} republish(es) failed{}{}",
                    summary.errors.count,
                    if summary.read_error.is_some() {
                        ", the dead-letter topic could not be read"
                    } else {
                        ""
                    },
                    if summary.commit_error.is_some() {
                        ", its progress could not be committed"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Command::CheckConfig { role } => {
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Text),
                cli.log_level.as_deref().or(Some("warn")),
            )
            .map_err(anyhow::Error::msg)?;
            let config = load(role)?;
            print!("{}", config.to_redacted_toml()?);
            Ok(())
        }
        #[cfg(feature = "simulator")]
        Command::Simulate {
            listen,
            simulator_config,
        } => {
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Auto),
                cli.log_level.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let sim_config = match simulator_config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                }
                None => webhook_enricher::simulator::SimulatorConfig::default(),
            };
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            webhook_enricher::simulator::serve(
                sim_config,
                listener,
                webhook_enricher::shutdown::signal(),
            )
            .await?;
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            format,
            count,
            seed,
        } => {
            // The per-record events (`webhook_enricher::telemetry`) are what the demo prints on
            // stdout; on stderr they would only repeat it, and bury any real warning.
            logging::init(
                cli.log_format.unwrap_or(LogFormat::Text),
                cli.log_level
                    .as_deref()
                    .or(Some("warn,webhook_enricher::telemetry=off")),
            )
            .map_err(anyhow::Error::msg)?;
            let options = DemoOptions {
                format,
                count: count.into(),
                seed,
            };
            demo::run(&options, &mut std::io::stdout()).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_and_simulate_commands_exist_exactly_with_their_features() {
        for (command, args, built_in) in [
            (
                "demo",
                &["webhook-enricher", "demo", "--count", "18"][..],
                cfg!(feature = "demo"),
            ),
            (
                "simulate",
                &["webhook-enricher", "simulate"][..],
                cfg!(feature = "simulator"),
            ),
        ] {
            match Cli::try_parse_from(args) {
                Ok(_) => assert!(built_in, "{command} parsed without its feature"),
                Err(error) => {
                    assert!(!built_in, "{command}: {error}");
                    let note = left_out_subcommand(&error).expect("a note");
                    assert!(note.contains("cargo feature"), "{note}");
                    assert!(note.contains(command), "{note}");
                }
            }
        }
    }

    #[test]
    fn other_usage_errors_get_no_feature_note() {
        let error = Cli::try_parse_from(["webhook-enricher", "nonsense"])
            .err()
            .expect("an unknown subcommand is an error");
        assert_eq!(left_out_subcommand(&error), None);
        let error = Cli::try_parse_from(["webhook-enricher", "run", "--bogus"])
            .err()
            .expect("an unknown flag is an error");
        assert_eq!(left_out_subcommand(&error), None);
    }

    #[test]
    fn replay_takes_durations_ago_and_time_aliases() {
        let parse = |args: &[&str]| {
            let mut all = vec!["webhook-enricher", "replay"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Replay(args)) => Ok(args.options()),
                Ok(_) => panic!("not replay"),
                Err(e) => Err(e.kind()),
            }
        };
        let o = parse(&["--from", "-6h", "--to", "-1h"]).expect("durations ago");
        assert_eq!(
            o.range.from,
            Some(Position::Ago(std::time::Duration::from_secs(6 * 3600)))
        );
        assert_eq!(
            o.range.to,
            Position::Ago(std::time::Duration::from_secs(3600))
        );
        let o = parse(&[
            "--from-timestamp",
            "0",
            "--to-timestamp",
            "1970-01-01T00:00:01Z",
        ])
        .expect("timestamps");
        assert_eq!(
            o.range.from.map(|p| p.to_string()).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(o.range.to.to_string(), "1970-01-01T00:00:01Z");
        let o = parse(&["--partition-offsets", "0=5"]).expect("partition offsets alone");
        assert_eq!((o.range.from, o.range.to), (None, Position::Latest));
        assert!(o.dedupe && !o.dry_run);
        use clap::error::ErrorKind;
        assert_eq!(parse(&[]).err(), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            parse(&["--from", "1", "--from-timestamp", "0"]).err(),
            Some(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            parse(&["--from", "soon"]).err(),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&["--from", "0", "--max-provider-rps", "0"]).err(),
            Some(ErrorKind::ValueValidation)
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
