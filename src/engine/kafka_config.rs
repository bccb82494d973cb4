//! librdkafka client configuration from the `[kafka]` settings: connection, TLS, SASL, the
//! at-least-once consumer properties and the idempotent producer, then the raw passthrough.

use crate::config::KafkaSettings;
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
    if let Some(p) = &tls.ca_location {
        c.set("ssl.ca.location", p.display().to_string());
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
    c.set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            commit_interval.as_millis().max(1).to_string(),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (k, v) in &settings.consumer.0 {
        c.set(k, v);
    }
    c
}

/// The producer: idempotent, `acks=all`, retried by librdkafka until `message.timeout.ms`.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = base(settings);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in &settings.producer.0 {
        c.set(k, v);
    }
    c
}
