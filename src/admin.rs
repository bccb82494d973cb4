//! The admin HTTP server: `GET /metrics` (Prometheus text), `GET /healthz` (liveness) and
//! `GET /readyz` (readiness), for Kubernetes probes and scraping. What the probes answer is
//! [`crate::health`]'s (the rules are listed there).

use crate::health::{Health, HealthSettings, ProbeReport};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The `[admin]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminSettings {
    /// Serve the admin endpoints.
    pub enabled: bool,
    /// Address of the admin server.
    pub listen: String,
    /// A provider circuit open for longer than this makes the service not ready.
    #[serde(with = "humantime_serde")]
    pub circuit_open_unready_after: Duration,
    /// The dispatcher not ticking for this long makes the service not live.
    #[serde(with = "humantime_serde")]
    pub liveness_stall_after: Duration,
    /// librdkafka statistics interval (feeds readiness and the lag gauges).
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "0.0.0.0:9090".into(),
            circuit_open_unready_after: Duration::from_secs(300),
            liveness_stall_after: Duration::from_secs(60),
            statistics_interval: Duration::from_secs(5),
        }
    }
}

impl From<AdminSettings> for HealthSettings {
    fn from(a: AdminSettings) -> Self {
        Self {
            circuit_open_unready_after: a.circuit_open_unready_after,
            liveness_stall_after: a.liveness_stall_after,
            statistics_interval: a.statistics_interval,
        }
    }
}

/// Errors starting the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(String),
}

/// The process-wide Prometheus recorder (installed once; later calls return the same handle).
pub fn prometheus() -> Result<PrometheusHandle, AdminError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .map_err(|e| AdminError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle.clone());
            crate::telemetry::describe_metrics();
            Ok(handle)
        }
        Err(_) => HANDLE
            .get()
            .cloned()
            .ok_or_else(|| AdminError::Recorder("another metrics recorder is installed".into())),
    }
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    prometheus: PrometheusHandle,
}

/// The admin routes.
pub fn router(health: Arc<Health>, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { health, prometheus })
}

/// Binds the admin server. Bind failures are startup errors.
pub async fn bind(settings: &AdminSettings) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| AdminError::Bind {
            addr: settings.listen.clone(),
            source,
        })
}

/// Serves until the task is aborted. The recorder's upkeep task (histogram buckets) belongs to
/// this future and stops with it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    prometheus: PrometheusHandle,
) {
    let upkeep = prometheus.clone();
    let _upkeep = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    }));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening (/metrics, /healthz, /readyz)");
    }
    if let Err(e) = axum::serve(listener, router(health, prometheus)).await {
        tracing::error!(error = %e, "admin server stopped");
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.prometheus.render() + &state.health.consumer_lag().render(),
    )
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    probe(state.health.liveness())
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    probe(state.health.readiness())
}

fn probe(report: ProbeReport) -> impl IntoResponse {
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect: the Prometheus upkeep task was detached and outlived the admin server.
    #[tokio::test]
    async fn stopping_the_admin_server_stops_its_upkeep_task() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let health = Arc::new(Health::new(AdminSettings::default()));
        let server = tokio::spawn(serve(listener, health, prometheus));
        for _ in 0..100 {
            if metrics.num_alive_tasks() == before + 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before + 2, "server and upkeep");
        server.abort();
        let _ = server.await;
        for _ in 0..100 {
            if metrics.num_alive_tasks() == before {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("tasks left running: {}", metrics.num_alive_tasks() - before);
    }

    #[test]
    fn the_probe_thresholds_are_the_admin_settings() {
        let a = AdminSettings {
            circuit_open_unready_after: Duration::from_secs(7),
            liveness_stall_after: Duration::from_secs(8),
            statistics_interval: Duration::from_secs(9),
            ..Default::default()
        };
        assert_eq!(
            HealthSettings::from(a),
            HealthSettings {
                circuit_open_unready_after: Duration::from_secs(7),
                liveness_stall_after: Duration::from_secs(8),
                statistics_interval: Duration::from_secs(9),
            }
        );
        let d = HealthSettings::from(AdminSettings::default());
        assert_eq!(d, HealthSettings::default());
    }
}
