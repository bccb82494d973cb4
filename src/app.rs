//! Wiring: from a validated [`Config`] to running commands. The binary's `main` only parses the
//! command line, sets up logging and the shutdown signal, and calls in here, so tests drive the
//! same code in-process.

use crate::avro::{EncoderInitError, RecordEncoder};
use crate::config::Config;
use crate::engine::stats::{EngineStats, StatsSnapshot};
use crate::engine::{EngineError, EngineParts};
use crate::enrich::Enricher;
use crate::health::Health;
use crate::provider::clearsale::ClearSaleClient;
use crate::provider::unico::UnicoClient;
use crate::provider::ProviderError;
use std::future::Future;
use std::sync::Arc;

/// Why a command could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("provider client: {0}")]
    Provider(#[from] ProviderError),
    #[error("output encoding: {0}")]
    Encoder(#[from] EncoderInitError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("output schema: {0}")]
    Schema(#[from] crate::avro::SchemaError),
    #[error("admin server: {0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("receiver: {0}")]
    Receive(#[from] crate::receive::ReceiveError),
}

/// Builds the enricher (one client per enabled provider).
pub fn build_enricher(config: &Config) -> Result<Enricher, ProviderError> {
    let clearsale = if config.clearsale.enabled {
        Some(Arc::new(ClearSaleClient::new(&config.clearsale)?))
    } else {
        None
    };
    let unico = if config.unico.enabled {
        Some(Arc::new(UnicoClient::new(&config.unico)?))
    } else {
        None
    };
    Ok(Enricher::new(clearsale, unico, config.enrich.clone()))
}

/// Builds everything the engine needs: validates the embedded schema, builds the clients and
/// resolves the output schema ids (Confluent format).
pub async fn build_parts(
    config: &Config,
    stats: Arc<EngineStats>,
) -> Result<EngineParts, AppError> {
    crate::avro::schema()?;
    let enricher = build_enricher(config)?;
    let topics = config.output.all_record_topics();
    let encoder = RecordEncoder::from_settings(&config.output.encoding, &topics).await?;
    let health = Arc::new(Health::new(config.admin.clone()));
    Ok(EngineParts {
        enricher,
        encoder: Arc::new(encoder),
        stats,
        health,
    })
}

/// `webhook-enricher run`: the main job, until `shutdown` resolves. Serves the admin endpoints
/// (`/metrics`, `/healthz`, `/readyz`) meanwhile.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<StatsSnapshot, AppError> {
    // The recorder first: the clients and the engine register their metric handles once, at
    // construction, with whatever recorder is installed then.
    let prometheus = if config.admin.enabled {
        Some(crate::admin::prometheus()?)
    } else {
        None
    };
    let stats = Arc::new(EngineStats::default());
    let parts = build_parts(config, stats).await?;
    let admin = if let Some(prometheus) = prometheus {
        let listener = crate::admin::bind(&config.admin).await?;
        Some(tokio::spawn(crate::admin::serve(
            listener,
            parts.health.clone(),
            prometheus,
        )))
    } else {
        None
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        topics = ?config.input.topics,
        group = %config.kafka.group_id,
        "webhook-enricher starting"
    );
    let result = crate::engine::run(&config.engine_run_settings(), parts, shutdown).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(result?)
}

/// `webhook-enricher receive`: the webhook receiver, until `shutdown` resolves. Serves the admin
/// endpoints meanwhile (readiness follows the producer).
pub async fn receive(
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<crate::telemetry::receive::ReceiveSummary, AppError> {
    let prometheus = if config.admin.enabled {
        Some(crate::admin::prometheus()?)
    } else {
        None
    };
    let health = Arc::new(Health::for_producer(config.admin.clone()));
    let listener = crate::receive::bind(&config.receive).await?;
    let admin = match prometheus {
        Some(prometheus) => {
            let listener = crate::admin::bind(&config.admin).await?;
            Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                crate::admin::serve(listener, health.clone(), prometheus),
            )))
        }
        None => None,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        topic = %config.receive.topic,
        "webhook receiver starting"
    );
    let result =
        crate::receive::serve(&config.receive_serve_settings(), listener, health, shutdown).await;
    drop(admin);
    Ok(result?)
}
