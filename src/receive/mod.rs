//! `webhook-enricher receive`: the HTTP endpoint the providers call. Each accepted webhook is
//! written, body unchanged, to the raw topic the engine consumes, and answered 200 only once
//! Kafka acknowledged that write. See `docs/DESIGN.md` ("The receiver").
//!
//! Files by responsibility: [`settings`] (the `[receive]` section), [`auth`] (credentials,
//! constant-time), [`allowlist`] (client address and CIDRs), [`handler`] (the endpoints),
//! [`raw`] (what goes to Kafka), [`kafka`] (the writer), [`server`] (listener, TLS, connection
//! limits, graceful shutdown). Its metrics and logs are in [`crate::telemetry::receive`].

pub mod allowlist;
pub mod auth;
pub mod handler;
pub mod kafka;
pub mod raw;
pub mod server;
pub mod settings;

pub use settings::{ReceiveSettings, ServeSettings};

use crate::health::Health;
use crate::provider::Provider;
use crate::telemetry::receive::{ReceiveSummary, ReceiverEvents};
use settings::AuthMode;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the receiver could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The webhook listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("receive.tls: {0}")]
    Tls(String),
    /// Settings that validation should have refused.
    #[error("receive settings: {0}")]
    Settings(String),
    /// The Kafka producer could not be created.
    #[error("cannot create the Kafka producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    /// The idempotent producer raised a fatal error: the receiver drained and stopped.
    #[error("fatal producer error: the receiver stopped ({0})")]
    FatalProducer(String),
}

pub use server::bind;

/// How often the receiver's heartbeat ticks (liveness).
const HEARTBEAT: Duration = Duration::from_millis(250);

/// Serves webhooks on `listener` until `shutdown` resolves (or the producer fails fatally), then
/// drains: `/readyz` fails at once, requests are still served for `receive.shutdown_delay`, then
/// the listener closes, requests in flight finish (each answered by its write's outcome) within
/// `receive.drain_timeout`, and queued writes are flushed.
pub async fn serve(
    config: &ServeSettings,
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<ReceiveSummary, ReceiveError> {
    let settings = &config.receive;
    let tls = server::tls_acceptor(&settings.tls)?;
    let events = Arc::new(ReceiverEvents::new());
    let fatal = CancellationToken::new();
    let writer = kafka::RawWriter::new(config, health.clone(), fatal.clone())
        .map_err(ReceiveError::Producer)?;
    let shared = Arc::new(handler::Shared::new(
        settings,
        &config.input,
        writer,
        events.clone(),
    )?);
    let router = handler::router(shared.clone(), settings);
    let mut paths = Vec::new();
    for provider in Provider::ALL {
        let endpoint = settings.endpoint(provider);
        if endpoint.enabled {
            paths.push((provider, endpoint.path.as_str()));
            if endpoint.auth.mode == Some(AuthMode::None) {
                events.unauthenticated_endpoint(provider);
            }
        }
    }
    if let Ok(addr) = listener.local_addr() {
        events.listening(addr, tls.is_some(), &settings.topic, &paths);
    }
    let heartbeat_health = health.clone();
    let heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT);
        loop {
            every.tick().await;
            heartbeat_health.heartbeat();
        }
    }));
    health.heartbeat();

    let connections = server::Connections::new(settings, tls, router, events.clone());
    let stop_accepting = CancellationToken::new();
    let accepting = tokio::spawn(connections.clone().accept(listener, stop_accepting.clone()));

    let failed = tokio::select! {
        _ = shutdown => false,
        _ = fatal.cancelled() => true,
    };
    health.set_shutting_down();
    if failed {
        tracing::error!("fatal producer error: the receiver stops accepting webhooks and drains");
    } else {
        tracing::info!(
            in_flight = shared.in_flight(),
            delay_ms = settings.shutdown_delay.as_millis() as u64,
            "shutdown requested: not ready; serving until the delay passes, then draining"
        );
        tokio::select! {
            _ = tokio::time::sleep(settings.shutdown_delay) => {}
            _ = fatal.cancelled() => {}
        }
    }
    stop_accepting.cancel();
    let _ = accepting.await;
    shared.close();
    tracing::info!(
        in_flight = shared.in_flight(),
        "listener closed: draining the requests in flight"
    );
    let aborted = connections.drain(settings.drain_timeout).await;
    events.aborted_at_deadline(aborted);
    if !shared.writer().flush(settings.write_timeout).await {
        tracing::warn!("producer flush did not complete (writes already answered 503)");
    }
    drop(heartbeat);
    let summary = events.summary();
    tracing::info!(summary = ?summary, "receiver drained");
    if fatal.is_cancelled() {
        return Err(ReceiveError::FatalProducer(
            shared
                .writer()
                .fatal_error()
                .unwrap_or_else(|| "unknown".into()),
        ));
    }
    Ok(summary)
}
