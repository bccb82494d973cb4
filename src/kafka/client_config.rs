//! librdkafka client configuration from the `[kafka]` settings: connection, TLS, SASL, the
//! at-least-once consumer properties and the idempotent producer, then the raw passthrough.

use super::KafkaSettings;
use rdkafka::ClientConfig;
use std::time::Duration;

fn base(settings: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", &settings.client_id)
        .set(
            "security.protocol",
            settings.security_protocol.as_librdkafka(),
        );
    let tls = &settings.tls;
    match &tls.ca_location {
        Some(p) => {
            c.set("ssl.ca.location", p.display().to_string());
        }
        // OpenSSL is built into the binary (rdkafka's `ssl-vendored`), and its default CA path
        // is that build's directory (/usr/local/ssl), not the system's: `probe` makes librdkafka
        // look for the system's CA bundle in the usual places (/etc/ssl/certs/... and others).
        None => {
            c.set("ssl.ca.location", "probe");
        }
    }
    if let Some(p) = &tls.certificate_location {
        c.set("ssl.certificate.location", p.display().to_string());
    }
    if let Some(p) = &tls.key_location {
        c.set("ssl.key.location", p.display().to_string());
    }
    if !tls.key_password.is_empty() {
        c.set("ssl.key.password", tls.key_password.expose());
    }
    let sasl = &settings.sasl;
    if !sasl.username.is_empty() {
        c.set("sasl.mechanism", sasl.mechanism.as_librdkafka())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    c
}

/// Consumer properties the delivery guarantees depend on (or that have a setting of their own),
/// with why an override is refused.
pub const GUARDED_CONSUMER: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "the engine stores an offset only once its record is finished; librdkafka storing it at delivery would commit records still in flight, and a crash would lose them",
    ),
    (
        "enable.auto.commit",
        "the stored offsets are committed by librdkafka's auto-commit (tune engine.commit_interval instead); turning it off would never commit",
    ),
    (
        "auto.commit.enable",
        "an alias of enable.auto.commit (tune engine.commit_interval instead)",
    ),
    ("group.id", "set kafka.group_id instead"),
    (
        "isolation.level",
        "read_committed keeps aborted transactional writes out of the pipeline",
    ),
    (
        "partition.assignment.strategy",
        "the revocation handling is built and tested for eager rebalancing; cooperative (incremental) assignment is not supported",
    ),
];

/// Producer properties the delivery guarantees depend on (or that have a setting of their own),
/// with why an override is refused.
pub const GUARDED_PRODUCER: &[(&str, &str)] = &[
    (
        "enable.idempotence",
        "the idempotent producer keeps retried writes from duplicating or reordering records",
    ),
    (
        "acks",
        "acks=all is what makes an acknowledged write durable before its input offset is committed",
    ),
    (
        "request.required.acks",
        "an alias of acks; acks=all is what makes an acknowledged write durable",
    ),
    ("compression.type", "set kafka.compression instead"),
    (
        "compression.codec",
        "an alias of compression.type; set kafka.compression instead",
    ),
];

/// One problem line for every raw `kafka.consumer.*` / `kafka.producer.*` property that would
/// override a guarded one (names compared as librdkafka does: exact, after trimming).
pub fn guarded_overrides(settings: &KafkaSettings) -> Vec<String> {
    let mut problems = Vec::new();
    for (section, raw, guarded) in [
        ("consumer", &settings.consumer.0, GUARDED_CONSUMER),
        ("producer", &settings.producer.0, GUARDED_PRODUCER),
    ] {
        for key in raw.keys() {
            let name = key.trim();
            if let Some((_, why)) = guarded.iter().find(|(g, _)| name.eq_ignore_ascii_case(g)) {
                problems.push(format!(
                    "kafka.{section}.{name} cannot be overridden: {why}"
                ));
            }
        }
    }
    problems
}

/// The consumer: offsets are stored by the engine only for finished records
/// (`enable.auto.offset.store=false`) and committed by librdkafka's auto-commit every
/// `commit_interval`, plus explicitly on revoke and shutdown.
pub fn consumer_config(
    settings: &KafkaSettings,
    group_id: &str,
    commit_interval: Duration,
    statistics_interval: Duration,
) -> ClientConfig {
    let mut c = base(settings);
    // Statistics feed readiness (broker and group state) and the consumer-lag gauges.
    c.set(
        "statistics.interval.ms",
        statistics_interval.as_millis().max(100).to_string(),
    );
    c.set(
        "auto.commit.interval.ms",
        commit_interval.as_millis().max(1).to_string(),
    )
    .set("auto.offset.reset", "earliest")
    .set("enable.partition.eof", "false")
    // librdkafka's own prefetch is part of the memory bound. It fetches ahead until the
    // local queue holds `queued.min.messages` records or `queued.max.messages.kbytes`
    // (64 MiB by default), then backs off for `fetch.queue.backoff.ms` (1 s by default)
    // before looking again. A bounded queue that is refilled within 20 ms of having room
    // keeps the next records local while the engine's budget is full, at a quarter of the
    // default memory: 16 MiB holds more than a second of work at any rate reached here.
    .set("queued.max.messages.kbytes", "16384")
    .set("queued.min.messages", "20000")
    .set("fetch.queue.backoff.ms", "20");
    for (k, v) in &settings.consumer.0 {
        c.set(k, v);
    }
    // The guarded properties go last: validation refuses overrides of them, and even an
    // unvalidated configuration cannot switch them off.
    c.set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range,roundrobin");
    c
}

/// The consumer that reads the wait topics back (provider isolation): the engine's consumer
/// settings in the wait group, plus end-of-partition events (a lane returns to direct only once
/// its wait partition was read to the end) and a smaller prefetch (catching up is ramped).
/// It is assigned partitions by the engine and never joins its group.
pub fn wait_consumer_config(
    settings: &KafkaSettings,
    wait_group_id: &str,
    commit_interval: Duration,
    statistics_interval: Duration,
) -> ClientConfig {
    let mut c = consumer_config(
        settings,
        wait_group_id,
        commit_interval,
        statistics_interval,
    );
    // A new owner holds a lane's input records until its wait partition's end is seen, so the
    // (usually empty) wait partitions' first fetch must answer quickly: a broker holds a fetch
    // of an empty partition for fetch.wait.max.ms (500 ms by default).
    c.set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "1000")
        .set("fetch.wait.max.ms", "100");
    c
}

/// The consumer of `redrive`: reads the dead-letter topic by assignment (it never joins its
/// group) and commits its progress itself, only for dead letters that are done
/// (`enable.auto.commit=false`); end-of-partition events tell it where a partition ends.
pub fn redrive_consumer_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut c = base(settings);
    c.set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", "4096");
    for (k, v) in &settings.consumer.0 {
        c.set(k, v);
    }
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    c
}

/// The producer: idempotent, `acks=all`, retried by librdkafka until `message.timeout.ms`.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    producer_config_with(settings, &[])
}

/// The producer of [`producer_config`] with more defaults of the caller's (the receiver's
/// statistics and write deadline), applied before the `kafka.producer` passthrough, so the
/// operator's properties still win and the guarded ones are still forced last.
pub fn producer_config_with(settings: &KafkaSettings, defaults: &[(&str, String)]) -> ClientConfig {
    let mut c = base(settings);
    c.set("linger.ms", "5")
        .set("compression.type", settings.compression.as_librdkafka());
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in &settings.producer.0 {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{SaslMechanism, SecurityProtocol};

    #[test]
    fn consumer_stores_offsets_only_when_told_and_applies_security_and_passthrough() {
        let mut s = KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            ..Default::default()
        };
        s.sasl.mechanism = SaslMechanism::ScramSha256;
        s.sasl.username = "svc".into();
        s.sasl.password = "pw".into();
        s.tls.ca_location = Some("/etc/ca.pem".into());
        s.consumer
            .0
            .insert("fetch.max.bytes".into(), "1048576".into());
        s.consumer
            .0
            .insert("enable.auto.offset.store".into(), "true".into());
        let c = consumer_config(&s, "g", Duration::from_secs(5), Duration::from_secs(5));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.commit"), Some("true"));
        assert_eq!(c.get("auto.commit.interval.ms"), Some("5000"));
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.username"), Some("svc"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
        // Defect: the passthrough used to be applied last, so it could switch at-least-once off.
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn overrides_of_the_guarantees_are_refused_with_a_reason() {
        let mut s = KafkaSettings::default();
        for key in [
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
            "isolation.level",
            "partition.assignment.strategy",
        ] {
            s.consumer.0.insert(key.into(), "x".into());
        }
        s.consumer.0.insert("fetch.max.bytes".into(), "1".into());
        s.producer.0.insert("acks".into(), "1".into());
        s.producer
            .0
            .insert("enable.idempotence".into(), "false".into());
        s.producer.0.insert("linger.ms".into(), "1".into());
        let problems = guarded_overrides(&s);
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with(
            "kafka.consumer.enable.auto.offset.store cannot be overridden: the engine stores"
        )));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("kafka.producer.acks cannot be overridden")));
        assert!(!problems
            .iter()
            .any(|p| p.contains("fetch.max.bytes") || p.contains("linger.ms")));
        let p = producer_config(&s);
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("linger.ms"), Some("1"));
    }

    #[test]
    fn caller_defaults_yield_to_the_passthrough_and_never_to_the_guarantees() {
        let mut s = KafkaSettings::default();
        s.producer
            .0
            .insert("message.timeout.ms".into(), "9000".into());
        let p = producer_config_with(
            &s,
            &[
                ("message.timeout.ms", "5000".into()),
                ("statistics.interval.ms", "1000".into()),
                ("acks", "1".into()),
            ],
        );
        assert_eq!(p.get("message.timeout.ms"), Some("9000"));
        assert_eq!(p.get("statistics.interval.ms"), Some("1000"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn the_redrive_consumer_commits_only_by_itself_in_its_own_group() {
        let mut s = KafkaSettings::default();
        s.consumer
            .0
            .insert("enable.auto.commit".into(), "true".into());
        s.consumer
            .0
            .insert("fetch.max.bytes".into(), "1048576".into());
        let c = redrive_consumer_config(&s, "enricher.redrive.0a1b2c3d");
        assert_eq!(c.get("group.id"), Some("enricher.redrive.0a1b2c3d"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("enable.partition.eof"), Some("true"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
    }

    #[test]
    fn producer_is_idempotent_with_acks_all() {
        let p = producer_config(&KafkaSettings::default());
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("security.protocol"), Some("plaintext"));
        assert_eq!(p.get("sasl.username"), None);
    }

    #[test]
    fn output_compression_is_a_setting_and_every_codec_is_built_in() {
        assert_eq!(
            producer_config(&KafkaSettings::default()).get("compression.type"),
            Some("lz4")
        );
        for codec in crate::kafka::Compression::ALL {
            let s = KafkaSettings {
                bootstrap_servers: "127.0.0.1:1".into(),
                compression: codec,
                ..Default::default()
            };
            let c = producer_config(&s);
            assert_eq!(c.get("compression.type"), Some(codec.as_librdkafka()));
            // librdkafka refuses a codec it was built without ("libzstd not available at build
            // time"); a consumer of such a build cannot decompress that codec either.
            let created: Result<rdkafka::producer::BaseProducer, _> = c.create();
            assert!(created.is_ok(), "{codec:?}: {:?}", created.err());
        }
        let mut s = KafkaSettings::default();
        s.producer
            .0
            .insert("compression.type".into(), "gzip".into());
        s.producer
            .0
            .insert("compression.codec".into(), "gzip".into());
        let problems = guarded_overrides(&s);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems
            .iter()
            .all(|p| p.contains("set kafka.compression instead")));
    }

    #[test]
    fn the_system_ca_bundle_is_probed_unless_one_is_given() {
        let c = producer_config(&KafkaSettings::default());
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        let mut s = KafkaSettings::default();
        s.tls.ca_location = Some("/etc/kafka/ca.pem".into());
        let c = consumer_config(&s, "g", Duration::from_secs(5), Duration::from_secs(5));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));

        /// Keeps librdkafka's log lines.
        struct Logs(std::sync::Mutex<Vec<String>>);
        impl rdkafka::ClientContext for Logs {
            fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, message: &str) {
                self.0.lock().unwrap().push(message.to_string());
            }
        }
        impl rdkafka::producer::ProducerContext for Logs {
            type DeliveryOpaque = ();
            fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
        }
        let s = KafkaSettings {
            bootstrap_servers: "127.0.0.1:1".into(),
            security_protocol: SecurityProtocol::Ssl,
            ..Default::default()
        };
        let mut c = producer_config(&s);
        c.set("debug", "security")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        let producer: rdkafka::producer::BaseProducer<Logs> = c
            .create_with_context(Logs(Default::default()))
            .expect("a TLS client");
        // librdkafka's log lines reach the context through the client's queue: serve it.
        producer.poll(Duration::from_millis(200));
        let logs = rdkafka::producer::Producer::context(&producer)
            .0
            .lock()
            .unwrap()
            .clone();
        // Debian's bundle (ca-certificates); other systems have theirs in other probed places.
        let debian = "/etc/ssl/certs/ca-certificates.crt";
        if std::path::Path::new(debian).exists() {
            assert!(
                logs.iter()
                    .any(|l| l.contains("CA certificate location") && l.contains(debian)),
                "the system CA bundle was not found: {logs:#?}"
            );
        }
    }

    #[test]
    fn librdkafka_has_ssl_and_sasl_scram_built_in() {
        let (_, features) = rdkafka::util::get_rdkafka_version();
        let mut c = ClientConfig::new();
        c.set("security.protocol", "sasl_ssl")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "u")
            .set("sasl.password", "p")
            .set("bootstrap.servers", "127.0.0.1:1");
        let created: Result<rdkafka::producer::BaseProducer, _> = c.create();
        assert!(
            created.is_ok(),
            "librdkafka {features} lacks SSL/SASL: {:?}",
            created.err()
        );
    }
}
