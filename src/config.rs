//! Layered configuration: documented defaults embedded in the binary, then a file (TOML or
//! YAML), then `WEBHOOK_ENRICHER_*` environment variables, then `--set key=value` flags.
//!
//! Unknown keys are errors, and every problem (unknown keys, a bad value, failed validation
//! rules) is reported at once in one [`ConfigError`].

use crate::enrich::EnrichSettings;
use crate::event::DecoderSettings;
pub use crate::kafka::{
    Compression, KafkaSettings, LibrdkafkaProperties, SaslMechanism, SaslSettings,
    SecurityProtocol, TlsSettings,
};
pub use crate::output::OutputSettings;
use crate::provider::settings::{ClearSaleSettings, UnicoSettings};
use crate::retry::BackoffPolicy;
use crate::secret::Secret;
use figment::providers::{Format, Toml, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable prefix; nesting uses a double underscore:
/// `WEBHOOK_ENRICHER_KAFKA__BOOTSTRAP_SERVERS` is `kafka.bootstrap_servers`.
pub const ENV_PREFIX: &str = "WEBHOOK_ENRICHER_";

/// Every problem found while loading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("\n  - "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub input: DecoderSettings,
    pub output: OutputSettings,
    pub clearsale: ClearSaleSettings,
    pub unico: UnicoSettings,
    pub enrich: EnrichSettings,
    pub engine: crate::engine::EngineSettings,
    pub admin: crate::admin::AdminSettings,
    pub receive: crate::receive::ReceiveSettings,
    /// The polling fallback (off by default).
    pub fallback: crate::engine::fallback::FallbackSettings,
}

/// The command a configuration is loaded for: each validates the sections it uses, so a receiver
/// needs no provider API credentials and an enricher no webhook credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// `webhook-enricher run`: Kafka, input, output, providers, enrich, engine, admin.
    #[default]
    Run,
    /// `webhook-enricher receive`: Kafka, `[receive]` (and `input.max_payload_bytes`), admin.
    Receive,
    /// `webhook-enricher redrive`: Kafka (`kafka.group_id` names its default group) and
    /// `output.dead_letter_topic`; no provider or webhook credentials.
    Redrive,
}

/// Where to read configuration from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// A TOML (`.toml`) or YAML (`.yaml`/`.yml`) file.
    pub file: Option<PathBuf>,
    /// Environment variables to read (normally `std::env::vars()`); only `WEBHOOK_ENRICHER_*`.
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides from the command line; values parse as TOML, else as strings.
    pub overrides: Vec<String>,
}

impl ConfigSources {
    /// The file (if any), the process environment, and overrides.
    pub fn from_process(file: Option<PathBuf>, overrides: Vec<String>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            overrides,
        }
    }
}

/// Environment variables that configure the CLI itself, not the [`Config`].
const CLI_ENV: [&str; 3] = ["config", "log_format", "log_level"];

impl Config {
    /// What the engine (`run`) reads from this configuration.
    pub fn engine_run_settings(&self) -> crate::engine::RunSettings {
        crate::engine::RunSettings {
            kafka: self.kafka.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            engine: self.engine.clone(),
            statistics_interval: self.admin.statistics_interval,
            fallback: self.fallback.clone(),
            provider_rates: crate::provider::Provider::ALL.map(|p| match p {
                crate::provider::Provider::ClearSale if self.clearsale.enabled => {
                    self.clearsale.limits.rate_per_second
                }
                crate::provider::Provider::Unico if self.unico.enabled => {
                    self.unico.limits.rate_per_second
                }
                _ => 0,
            }),
        }
    }

    /// What the receiver (`receive`) reads from this configuration.
    pub fn receive_serve_settings(&self) -> crate::receive::ServeSettings {
        crate::receive::ServeSettings {
            kafka: self.kafka.clone(),
            input: self.input.clone(),
            receive: self.receive.clone(),
            statistics_interval: self.admin.statistics_interval,
        }
    }

    /// What `redrive` reads from this configuration (the Kafka connection, `kafka.group_id` for
    /// its default group, the dead-letter topic), with its command-line options.
    pub fn redrive_settings(
        &self,
        options: &crate::redrive::RedriveOptions,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::redrive::RedriveSettings {
        options.settings(&self.kafka, &self.output.dead_letter_topic, now)
    }

    /// Loads, merges and validates the configuration for `run`; every problem is reported at
    /// once.
    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
        Self::load_for(sources, Role::Run)
    }

    /// Loads, merges and validates the configuration for `role`.
    pub fn load_for(sources: &ConfigSources, role: Role) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut figment = Figment::new();
        if let Some(file) = &sources.file {
            if !file.is_file() {
                return Err(ConfigError {
                    problems: vec![format!("config file {} not found", file.display())],
                });
            }
            figment = match file.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => figment.merge(Yaml::file_exact(file)),
                _ => figment.merge(Toml::file_exact(file)),
            };
        }
        // Environment variables are taken from the given snapshot (not the live environment) so
        // tests can inject them. Environment and `--set` values are typed by the built-in
        // default at the same path (see `typed_value`).
        let defaults = default_values();
        let mut env: Vec<(String, &str)> = sources
            .env
            .iter()
            .filter_map(|(k, v)| {
                let path = k
                    .strip_prefix(ENV_PREFIX)?
                    .to_ascii_lowercase()
                    .replace("__", ".");
                (!CLI_ENV.contains(&path.as_str())).then_some((path, v.as_str()))
            })
            .collect();
        env.sort();
        for (path, value) in env {
            // librdkafka property names are dotted: `KAFKA__PRODUCER__LINGER_MS` is `linger.ms`.
            let path = match passthrough_property(&path) {
                Some((section, property)) => {
                    format!("kafka.{section}.{}", property.replace('_', "."))
                }
                None => path,
            };
            figment = merge_value(figment, &defaults, &path, value);
        }
        for item in &sources.overrides {
            match item.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    figment = merge_value(figment, &defaults, key.trim(), value);
                }
                _ => problems.push(format!("--set {item:?}: expected key.path=value")),
            }
        }

        let value: figment::value::Value = match figment.extract() {
            Ok(v) => v,
            Err(e) => {
                problems.extend(e.into_iter().map(|e| e.to_string()));
                return Err(ConfigError { problems });
            }
        };
        let mut unknown = Vec::new();
        let mut track = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let parsed: Result<Config, _> =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&value, &mut track));
        problems.extend(unknown.into_iter().map(|k| format!("unknown key `{k}`")));
        let mut config = match parsed {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{}: {}", e.path(), e.inner()));
                return Err(ConfigError { problems });
            }
        };
        config.receive.apply_default_paths();
        if role == Role::Run {
            config.resolve_files(&mut problems);
        }
        problems.extend(config.validate_for(role));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Reads secrets that are given as files.
    fn resolve_files(&mut self, problems: &mut Vec<String>) {
        if let (true, Some(path)) = (
            self.unico.private_key_pem.is_empty(),
            &self.unico.private_key_file,
        ) {
            match std::fs::read_to_string(path) {
                Ok(pem) => self.unico.private_key_pem = Secret::new(pem),
                Err(e) => problems.push(format!("unico.private_key_file {}: {e}", path.display())),
            }
        }
    }

    /// Every rule the types cannot express, for `run`. Returns one line per problem.
    pub fn validate(&self) -> Vec<String> {
        self.validate_for(Role::Run)
    }

    /// Every rule the types cannot express for the sections `role` uses.
    pub fn validate_for(&self, role: Role) -> Vec<String> {
        let mut p = Vec::new();
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            p.push("kafka.bootstrap_servers must not be empty".into());
        }
        p.extend(crate::kafka::client_config::guarded_overrides(k));
        if k.security_protocol.uses_sasl()
            && (k.sasl.username.is_empty() || k.sasl.password.is_empty())
        {
            p.push("kafka.sasl.username and kafka.sasl.password are required with a sasl_* security_protocol".into());
        }
        if self.input.max_payload_bytes == 0 {
            p.push("input.max_payload_bytes must be positive".into());
        }
        match role {
            Role::Run => self.validate_run(&mut p),
            Role::Receive => p.extend(self.receive.validate(self.input.max_payload_bytes)),
            Role::Redrive => self.validate_redrive(&mut p),
        }
        p
    }

    fn validate_redrive(&self, p: &mut Vec<String>) {
        if self.kafka.group_id.trim().is_empty() {
            p.push("kafka.group_id must not be empty".into());
        }
        if self.output.dead_letter_topic.trim().is_empty() {
            p.push("output.dead_letter_topic must not be empty".into());
        }
    }

    fn validate_run(&self, p: &mut Vec<String>) {
        let k = &self.kafka;
        if k.group_id.trim().is_empty() {
            p.push("kafka.group_id must not be empty".into());
        }
        if self.input.topics.is_empty() || self.input.topics.iter().any(|t| t.trim().is_empty()) {
            p.push("input.topics must list at least one non-empty topic".into());
        }
        if let Some(bad) = self
            .input
            .unico_statuses
            .iter()
            .find(|s| !(1..=5).contains(*s))
        {
            p.push(format!(
                "input.unico_statuses: {bad} is not a Unico status (1..=5)"
            ));
        }
        let o = &self.output;
        for (name, topic) in [
            ("output.clearsale_topic", &o.clearsale_topic),
            ("output.unico_topic", &o.unico_topic),
            ("output.dead_letter_topic", &o.dead_letter_topic),
        ] {
            if topic.trim().is_empty() {
                p.push(format!("{name} must not be empty"));
            }
            if self.input.topics.contains(topic) {
                p.push(format!("{name} {topic:?} is also an input topic"));
            }
        }
        let iso = &self.engine.isolation;
        if iso.enabled != crate::engine::settings::Toggle::Off {
            for provider in crate::provider::Provider::ALL {
                let wait = iso.wait_topic(provider);
                let clash = self.input.topics.iter().any(|t| t == wait)
                    || self.output.all_record_topics().iter().any(|t| t == wait)
                    || *wait == o.dead_letter_topic;
                if clash {
                    p.push(format!(
                        "engine.isolation: wait topic {wait:?} is also an input, output or dead-letter topic"
                    ));
                }
            }
        }
        let fb = &self.fallback;
        p.extend(fb.validate());
        if fb.enabled {
            let t = &fb.expectations_topic;
            let clash = self.input.topics.contains(t)
                || self.output.all_record_topics().iter().any(|o| o == t)
                || *t == o.dead_letter_topic
                || (iso.enabled != crate::engine::settings::Toggle::Off
                    && crate::provider::Provider::ALL
                        .iter()
                        .any(|p| iso.wait_topic(*p) == t.as_str()));
            if clash {
                p.push(format!(
                    "fallback.expectations_topic {t:?} is also an input, output, wait or dead-letter topic"
                ));
            }
            if self.unico.enabled
                && !self
                    .input
                    .unico_statuses
                    .iter()
                    .any(|s| crate::engine::fallback::expectation::UNICO_FINAL_STATUSES.contains(s))
            {
                p.push("fallback: input.unico_statuses holds no final status (3, 4, 5), so no Unico expectation could be resolved by a webhook".into());
            }
        }
        p.extend(
            self.output
                .encoding
                .validate()
                .into_iter()
                .map(|e| format!("output.{e}")),
        );
        if !self.clearsale.enabled && !self.unico.enabled {
            p.push("at least one of clearsale.enabled and unico.enabled must be true".into());
        }
        if self.clearsale.enabled {
            check_url(p, "clearsale.base_url", &self.clearsale.base_url);
            if self.clearsale.user.is_empty() || self.clearsale.password.is_empty() {
                p.push("clearsale.user and clearsale.password are required (or set clearsale.enabled = false)".into());
            }
            check_limits(p, "clearsale", &self.clearsale.limits);
        }
        if self.unico.enabled {
            let u = &self.unico;
            check_url(p, "unico.base_url", &u.base_url);
            check_url(p, "unico.issuer_url", &u.issuer_url);
            for (name, missing) in [
                ("unico.account", u.account.is_empty()),
                ("unico.tenant", u.tenant.is_empty()),
                ("unico.api_key", u.api_key.is_empty()),
                (
                    "unico.private_key_pem (or unico.private_key_file)",
                    u.private_key_pem.is_empty(),
                ),
            ] {
                if missing {
                    p.push(format!("{name} is required (or set unico.enabled = false)"));
                }
            }
            if u.assertion_lifetime > Duration::from_secs(3600) || u.assertion_lifetime.is_zero() {
                p.push("unico.assertion_lifetime must be between 1s and 1h".into());
            }
            check_limits(p, "unico", &u.limits);
        }
        check_backoff(p, "enrich.retry", &self.enrich.retry);
        check_backoff(p, "enrich.pending", &self.enrich.pending);
        let e = &self.engine;
        p.extend(e.validate());
        if e.revoke_drain_timeout >= Duration::from_secs(45)
            && !self.kafka.consumer.0.contains_key("session.timeout.ms")
        {
            p.push("engine.revoke_drain_timeout must stay below the group session timeout (45s by default)".into());
        }
        if let Some(ms) = self
            .kafka
            .consumer
            .0
            .get("session.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            if e.revoke_drain_timeout >= Duration::from_millis(ms) {
                p.push(format!(
                    "engine.revoke_drain_timeout must stay below session.timeout.ms ({ms} ms)"
                ));
            }
        }
        if let Some(ms) = self
            .kafka
            .producer
            .0
            .get("message.timeout.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if e.flush_timeout > Duration::from_millis(ms) {
                p.push(format!(
                    "engine.flush_timeout ({:?}) must not exceed kafka.producer.message.timeout.ms ({ms} ms): no write can be pending longer",
                    e.flush_timeout
                ));
            }
        }
        if self.enrich.not_found.attempts == 0 {
            p.push("enrich.not_found.attempts must be at least 1".into());
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError {
            problems: vec![format!("cannot print configuration: {e}")],
        })
    }
}

fn check_url(p: &mut Vec<String>, name: &str, url: &str) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => p.push(format!("{name} {url:?} is not an http(s) URL")),
    }
}

fn check_limits(
    p: &mut Vec<String>,
    name: &str,
    limits: &crate::provider::settings::RequestLimits,
) {
    if limits.max_concurrent == 0 {
        p.push(format!("{name}.limits.max_concurrent must be at least 1"));
    }
}

fn check_backoff(p: &mut Vec<String>, name: &str, b: &BackoffPolicy) {
    if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
        p.push(format!("{name}.multiplier must be a number >= 1"));
    }
    if b.initial > b.max_delay {
        p.push(format!("{name}.initial must not exceed {name}.max_delay"));
    }
}

/// The built-in defaults as a value tree, to type environment and `--set` values.
fn default_values() -> figment::value::Value {
    Figment::from(figment::providers::Serialized::defaults(Config::default()))
        .extract()
        .unwrap_or_else(|_| figment::value::Value::from(figment::value::Dict::new()))
}

/// `kafka.consumer.<property>` / `kafka.producer.<property>`: the section and the raw property.
fn passthrough_property(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("kafka.")?;
    let (section, property) = rest.split_once('.')?;
    matches!(section, "consumer" | "producer").then_some((section, property))
}

/// Merges one environment or `--set` value at `path`. Passthrough librdkafka properties keep
/// their dotted names as one key.
fn merge_value(
    figment: Figment,
    defaults: &figment::value::Value,
    path: &str,
    raw: &str,
) -> Figment {
    match passthrough_property(path) {
        Some((section, property)) => {
            let mut props = BTreeMap::new();
            props.insert(property.to_string(), raw.to_string());
            let mut kafka = BTreeMap::new();
            kafka.insert(section.to_string(), props);
            let mut root = BTreeMap::new();
            root.insert("kafka".to_string(), kafka);
            figment.merge(figment::providers::Serialized::defaults(root))
        }
        None => figment.merge((path, typed_value(defaults, path, raw))),
    }
}

/// Types an environment or `--set` value by the built-in default at the same path, so nothing is
/// guessed from the text alone: where the default is a string (names, URLs, durations, every
/// secret) or there is no default, the value is taken verbatim (a password `123456` or `"x"`
/// stays exactly that); a number or boolean is parsed as TOML; a list takes `[a, b]` or `a,b`.
fn typed_value(defaults: &figment::value::Value, path: &str, raw: &str) -> figment::value::Value {
    use figment::value::Value;
    let verbatim = || Value::from(raw.to_string());
    match defaults.find_ref(path) {
        Some(Value::Num(..) | Value::Bool(..) | Value::Dict(..)) => {
            parse_toml(raw).unwrap_or_else(verbatim)
        }
        Some(Value::Array(_, items)) => {
            let trimmed = raw.trim();
            if trimmed.starts_with('[') {
                return parse_toml(trimmed).unwrap_or_else(verbatim);
            }
            let numeric = matches!(items.first(), Some(Value::Num(..)));
            let elements: Vec<Value> = trimmed
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| {
                    if numeric {
                        parse_toml(e).unwrap_or_else(|| Value::from(e.to_string()))
                    } else {
                        Value::from(e.to_string())
                    }
                })
                .collect();
            Value::from(elements)
        }
        _ => verbatim(),
    }
}

fn parse_toml(value: &str) -> Option<figment::value::Value> {
    #[derive(Deserialize)]
    struct Wrapper {
        v: figment::value::Value,
    }
    toml::from_str::<Wrapper>(&format!("v = {value}"))
        .ok()
        .map(|w| w.v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Provider;
    use std::io::Write;

    const VALID: &str = r#"
[clearsale]
user = "cs-user"
password = "cs-password-123"
[unico]
account = "acct"
tenant = "tenant-1"
api_key = "unico-api-key-456"
private_key_pem = "-----BEGIN PRIVATE KEY-----\nMIIfake\n-----END PRIVATE KEY-----"
"#;

    fn file(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(text: &str, env: &[(&str, &str)], overrides: &[&str]) -> Result<Config, ConfigError> {
        let f = file(".toml", text);
        Config::load(&ConfigSources {
            file: Some(f.path().to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn a_minimal_file_is_valid_and_defaults_apply() {
        let c = load(VALID, &[], &[]).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "localhost:9092");
        assert_eq!(c.input.max_payload_bytes, 65_536);
        assert_eq!(
            c.input.unico_statuses.iter().copied().collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(c.unico.limits.rate_per_second, 10);
        assert_eq!(c.enrich.not_found.attempts, 3);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            "[input]\ntopics = []\n[enrich.retry]\nmultiplier = 0.5\n",
            &[],
            &[],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "input.topics",
            "clearsale.user",
            "unico.account",
            "unico.api_key",
            "unico.private_key_pem",
            "enrich.retry.multiplier",
        ] {
            assert!(all.contains(expected), "missing {expected} in:\n{all}");
        }
        assert!(err.problems.len() >= 6);
    }

    #[test]
    fn unknown_keys_are_errors_all_of_them() {
        let text = format!(
            "bogus = 1\n{VALID}\n[kafka]\nbootstrap_server = \"typo\"\n[unico.limits]\nrps = 3\n"
        );
        let err = load(
            &text,
            &[("WEBHOOK_ENRICHER_ENRICH__RETRY__INITAL", "1s")],
            &[],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for key in [
            "bogus",
            "kafka.bootstrap_server",
            "unico.limits.rps",
            "enrich.retry.inital",
        ] {
            assert!(
                all.contains(&format!("unknown key `{key}`")),
                "missing {key} in:\n{all}"
            );
        }
    }

    #[test]
    fn the_fallback_section_loads_and_is_validated_with_the_rest() {
        let c = load(VALID, &[], &[]).unwrap();
        assert!(!c.fallback.enabled, "off by default");
        let settings = c.engine_run_settings();
        assert_eq!(settings.fallback, c.fallback);
        assert_eq!(settings.provider_rates, [50, 10], "ClearSale, Unico");

        let text = format!(
            "{VALID}\n[fallback]\nenabled = true\nafter = \"30s\"\npoll_share = 2.0\nexpectations_topic = \"webhooks.raw\"\ntypo = 1\n"
        );
        let err = load(&text, &[], &["input.unico_statuses=[2]"]).unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "unknown key `fallback.typo`",
            "fallback.poll_share must be in (0, 1]",
            "fallback.expectations_topic \"webhooks.raw\" is also an input",
            "input.unico_statuses holds no final status",
        ] {
            assert!(all.contains(expected), "missing {expected} in:\n{all}");
        }
        let on = load(
            &format!("{VALID}\n[fallback]\nenabled = true\nmax_wait = \"5m\"\n"),
            &[],
            &["clearsale.enabled=false"],
        )
        .unwrap();
        assert!(on.fallback.enabled);
        assert_eq!(on.fallback.max_wait, std::time::Duration::from_secs(300));
        assert_eq!(
            on.engine_run_settings().provider_rates,
            [0, 10],
            "a disabled provider"
        );
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let text = format!("{VALID}\n[kafka]\nbootstrap_servers = \"file:9092\"\ngroup_id = \"from-file\"\nclient_id = \"file-client\"\n");
        let env = [
            ("WEBHOOK_ENRICHER_KAFKA__BOOTSTRAP_SERVERS", "env:9092"),
            ("WEBHOOK_ENRICHER_KAFKA__GROUP_ID", "from-env"),
            ("WEBHOOK_ENRICHER_INPUT__MAX_PAYLOAD_BYTES", "1024"),
            ("WEBHOOK_ENRICHER_INPUT__UNICO_STATUSES", "[3]"),
            ("WEBHOOK_ENRICHER_ENRICH__RETRY__MAX_ELAPSED", "2m"),
            ("WEBHOOK_ENRICHER_CONFIG", "ignored.toml"),
            ("OTHER_VAR", "ignored"),
        ];
        let c = load(
            &text,
            &env,
            &[
                "kafka.group_id=from-flag",
                "enrich.include_raw_response=false",
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.client_id, "file-client");
        assert_eq!(c.kafka.bootstrap_servers, "env:9092");
        assert_eq!(c.kafka.group_id, "from-flag");
        assert_eq!(c.input.max_payload_bytes, 1024);
        assert_eq!(
            c.input.unico_statuses.iter().copied().collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(c.enrich.retry.max_elapsed, Duration::from_secs(120));
        assert!(!c.enrich.include_raw_response);
    }

    #[test]
    fn environment_values_are_typed_by_the_default_so_secrets_stay_verbatim() {
        let env = [
            ("WEBHOOK_ENRICHER_CLEARSALE__PASSWORD", "123456"),
            ("WEBHOOK_ENRICHER_UNICO__API_KEY", "\"quoted\""),
            ("WEBHOOK_ENRICHER_KAFKA__SASL__PASSWORD", "1e5"),
            ("WEBHOOK_ENRICHER_KAFKA__SASL__USERNAME", "true"),
            ("WEBHOOK_ENRICHER_KAFKA__GROUP_ID", "2024-01-01"),
            ("WEBHOOK_ENRICHER_ENGINE__MAX_IN_FLIGHT", "64"),
            ("WEBHOOK_ENRICHER_INPUT__TOPICS", "a.raw,b.raw"),
            ("WEBHOOK_ENRICHER_INPUT__UNICO_STATUSES", "3,4"),
            ("WEBHOOK_ENRICHER_KAFKA__PRODUCER__LINGER_MS", "5"),
            ("WEBHOOK_ENRICHER_ADMIN__ENABLED", "false"),
        ];
        let c = load(
            VALID,
            &env,
            &[
                "kafka.consumer.fetch.wait.max.ms=50",
                "input.topics=[\"x\"]",
            ],
        )
        .unwrap();
        assert_eq!(c.clearsale.password.expose(), "123456");
        assert_eq!(c.unico.api_key.expose(), "\"quoted\"");
        assert_eq!(c.kafka.sasl.password.expose(), "1e5");
        assert_eq!(c.kafka.sasl.username, "true");
        assert_eq!(c.kafka.group_id, "2024-01-01");
        assert_eq!(c.engine.max_in_flight, 64);
        assert_eq!(c.input.topics, vec!["x"]);
        assert_eq!(
            c.input.unico_statuses.iter().copied().collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(
            c.kafka.producer.0.get("linger.ms").map(String::as_str),
            Some("5")
        );
        assert_eq!(
            c.kafka
                .consumer
                .0
                .get("fetch.wait.max.ms")
                .map(String::as_str),
            Some("50")
        );
        assert!(!c.admin.enabled);
        let c = load(
            VALID,
            &[("WEBHOOK_ENRICHER_INPUT__TOPICS", "only.one")],
            &[],
        )
        .unwrap();
        assert_eq!(c.input.topics, vec!["only.one"]);
    }

    #[test]
    fn yaml_files_work() {
        let f = file(
            ".yaml",
            "clearsale:\n  user: u\n  password: p\nunico:\n  enabled: false\ninput:\n  topics: [a, b]\n",
        );
        let c = Config::load(&ConfigSources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.input.topics, vec!["a", "b"]);
        assert!(!c.unico.enabled);
    }

    #[test]
    fn redacted_output_hides_every_secret() {
        let text = format!("{VALID}\n[kafka]\nsecurity_protocol = \"sasl_ssl\"\n[kafka.sasl]\nusername = \"k\"\npassword = \"kafka-pass-789\"\n[kafka.producer]\n\"sasl.password\" = \"raw-pass-000\"\n\"linger.ms\" = \"5\"\n");
        let c = load(&text, &[], &[]).unwrap();
        let printed = c.to_redacted_toml().unwrap();
        for secret in [
            "cs-password-123",
            "unico-api-key-456",
            "MIIfake",
            "kafka-pass-789",
            "raw-pass-000",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
            assert!(
                !format!("{c:?}").contains(secret),
                "{secret} leaked in Debug"
            );
        }
        assert!(printed.contains("linger.ms"));
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn private_key_file_is_read() {
        let key = file(
            ".pem",
            "-----BEGIN PRIVATE KEY-----\nFROMFILE\n-----END PRIVATE KEY-----\n",
        );
        let text = VALID.replace(
            "private_key_pem = \"-----BEGIN PRIVATE KEY-----\\nMIIfake\\n-----END PRIVATE KEY-----\"",
            &format!("private_key_file = {:?}", key.path().display().to_string()),
        );
        let c = load(&text, &[], &[]).unwrap();
        assert!(c.unico.private_key_pem.expose().contains("FROMFILE"));
        let missing = VALID.replace("private_key_pem = \"-----BEGIN PRIVATE KEY-----\\nMIIfake\\n-----END PRIVATE KEY-----\"", "private_key_file = \"/nonexistent/key.pem\"");
        assert!(load(&missing, &[], &[])
            .unwrap_err()
            .problems
            .iter()
            .any(|p| p.contains("/nonexistent/key.pem")));
    }

    #[test]
    fn overrides_that_would_void_at_least_once_are_refused() {
        let err = load(
            VALID,
            &[],
            &[
                "kafka.consumer.enable.auto.offset.store=true",
                "kafka.producer.acks=1",
                "kafka.consumer.fetch.wait.max.ms=50",
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("kafka.consumer.enable.auto.offset.store cannot be overridden"),
            "{all}"
        );
        assert!(
            all.contains("kafka.producer.acks cannot be overridden"),
            "{all}"
        );
        assert!(!all.contains("fetch.wait.max.ms"), "{all}");
    }

    #[test]
    fn shutdown_timings_are_checked_against_each_other() {
        let err = load(
            VALID,
            &[],
            &[
                "engine.flush_timeout=20s",
                "kafka.producer.message.timeout.ms=15000",
            ],
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("engine.flush_timeout (20s) must not exceed kafka.producer.message.timeout.ms (15000 ms)"),
            "{all}"
        );
        assert!(load(
            VALID,
            &[],
            &[
                "engine.flush_timeout=15s",
                "kafka.producer.message.timeout.ms=15000"
            ]
        )
        .is_ok());
    }

    #[test]
    fn bad_values_are_reported_with_their_key() {
        let err = load(
            &format!("{VALID}\n[input]\nmax_payload_bytes = \"lots\"\n"),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("input.max_payload_bytes: invalid type"),
            "{err}"
        );
        let err = load(VALID, &[], &["nonsense"]).unwrap_err();
        assert!(err.problems[0].contains("key.path=value"));
    }

    #[test]
    fn each_role_validates_only_the_sections_it_uses() {
        let receiver = "[receive.clearsale.auth]\nmode = \"basic\"\nusername = \"cs\"\n[receive.unico.auth]\nmode = \"api_key\"\nheader = \"x-api-key\"\n";
        let f = file(".toml", receiver);
        let sources = |env: &[(&str, &str)]| ConfigSources {
            file: Some(f.path().to_path_buf()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: vec![],
        };
        // No provider API credentials needed to receive, but the webhook secrets are.
        let err = Config::load_for(&sources(&[]), Role::Receive).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("receive.clearsale.auth.password is required with mode basic"),
            "{all}"
        );
        assert!(
            all.contains("receive.unico.auth.api_key is required with mode api_key"),
            "{all}"
        );
        assert!(!all.contains("clearsale.user"), "{all}");
        let env = [
            (
                "WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__PASSWORD",
                "12:34",
            ),
            ("WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__API_KEY", "0042"),
            ("WEBHOOK_ENRICHER_RECEIVE__MAX_IN_FLIGHT", "64"),
        ];
        let c = Config::load_for(&sources(&env), Role::Receive).unwrap();
        assert_eq!(c.receive.clearsale.auth.password.expose(), "12:34");
        assert_eq!(c.receive.unico.auth.api_key.expose(), "0042");
        assert_eq!(c.receive.max_in_flight, 64);
        // A partial endpoint section keeps its provider's path.
        assert_eq!(c.receive.clearsale.path, "/webhooks/clearsale");
        assert_eq!(c.receive.unico.path, "/webhooks/unico");
        let printed = c.to_redacted_toml().unwrap();
        assert!(
            !printed.contains("12:34") && !printed.contains("0042"),
            "{printed}"
        );
        // The same file is not enough to run the enricher.
        let err = Config::load_for(&sources(&env), Role::Run).unwrap_err();
        assert!(err.problems.join("\n").contains("clearsale.user"), "{err}");
        // And the enricher does not check the webhook settings.
        assert!(load(VALID, &[], &[]).is_ok());
    }

    #[test]
    fn redrive_needs_kafka_and_the_dead_letter_topic_only() {
        let empty = ConfigSources::default();
        // Neither provider API credentials nor webhook credentials.
        let c = Config::load_for(&empty, Role::Redrive).unwrap();
        assert_eq!(c.output.dead_letter_topic, "webhooks.dead-letter");
        let blank = ConfigSources {
            overrides: vec![
                "output.dead_letter_topic= ".into(),
                "kafka.group_id=".into(),
            ],
            ..ConfigSources::default()
        };
        let err = Config::load_for(&blank, Role::Redrive).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("output.dead_letter_topic must not be empty"),
            "{all}"
        );
        assert!(all.contains("kafka.group_id must not be empty"), "{all}");
        assert!(!all.contains("clearsale.user"), "{all}");
    }

    #[test]
    fn routing_by_provider_and_module() {
        let mut o = OutputSettings::default();
        o.clearsale_module_topics
            .insert("mfa".into(), "cs.mfa".into());
        assert_eq!(o.topic_for(Provider::ClearSale, Some("MFA")), "cs.mfa");
        assert_eq!(
            o.topic_for(Provider::ClearSale, Some("biolink")),
            "clearsale.analysis.enriched"
        );
        assert_eq!(o.topic_for(Provider::Unico, None), "unico.process.enriched");
        assert_eq!(o.all_record_topics().len(), 3);
    }
}
