//! Configuration loading as `run` and `check-config` do it (`config::Config::load`): a TOML file,
//! then `WEBHOOK_ENRICHER_*` environment variables, then `--set` overrides, then validation. It
//! must never panic, and no secret may reach an error, `Debug` or the printed configuration.
//!
//! Input layout (see `fuzz/make_seeds.py`): UTF-8 (lossy) text in up to three parts separated by
//! NUL bytes: the TOML file, environment lines `NAME=value` (the `WEBHOOK_ENRICHER_` prefix is
//! added when missing), `--set` lines `key.path=value`. The target then sets every secret with
//! `--set` (last, so they win) to a value derived from the input, which the input cannot contain.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::OnceLock;
use webhook_enricher::config::{Config, ConfigSources, ENV_PREFIX};

const SECRETS: [&str; 7] = [
    "clearsale.password",
    "unico.api_key",
    "unico.private_key_pem",
    "kafka.sasl.password",
    "kafka.tls.key_password",
    "output.encoding.registry.password",
    "kafka.consumer.sasl.password",
];

/// The configuration file this process writes and loads (one per fuzzing process).
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("webhook-enricher-fuzz-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Files named by the configuration are read at load time: a fuzzer must not read the
    // machine's files (or block on a FIFO), so such inputs are left out.
    if text.contains("_file") || text.contains("_FILE") {
        return;
    }
    let mut parts = text.splitn(3, '\0');
    let toml = parts.next().unwrap_or_default();
    let env: Vec<(String, String)> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            let name = if name.starts_with(ENV_PREFIX) {
                name.to_string()
            } else {
                format!("{ENV_PREFIX}{name}")
            };
            (name, value.to_string())
        })
        .collect();
    let mut overrides: Vec<String> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut hasher);
    let secret = format!("S3cret{:016x}", hasher.finish());
    overrides.extend(SECRETS.iter().map(|key| format!("{key}={secret}")));

    if std::fs::write(file(), toml.as_bytes()).is_err() {
        return;
    }
    let sources = ConfigSources {
        file: Some(file().clone()),
        env,
        overrides,
    };
    match Config::load(&sources) {
        Ok(config) => {
            let debug = format!("{config:?}");
            assert!(!debug.contains(&secret), "a secret in Debug: {debug}");
            let printed = config
                .to_redacted_toml()
                .expect("a loaded configuration prints");
            assert!(!printed.contains(&secret), "a secret printed: {printed}");
            // What check-config prints loads again to the same configuration.
            std::fs::write(file(), printed.as_bytes()).expect("rewrite");
            let reloaded = Config::load(&ConfigSources {
                file: Some(file().clone()),
                env: Vec::new(),
                overrides: SECRETS
                    .iter()
                    .map(|key| format!("{key}={secret}"))
                    .collect(),
            });
            assert!(
                reloaded.is_ok(),
                "the printed configuration does not load: {reloaded:?}"
            );
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                !message.contains(&secret),
                "a secret in an error: {message}"
            );
        }
    }
});
