//! A simulator of both providers' APIs, built from their documented contracts
//! (`docs/providers.md`), for the `simulate` command, the demo, benchmarks and tests.
//!
//! One axum router serves both providers on one listener:
//!
//! | route | provider |
//! |---|---|
//! | `POST /connect/v1/authenticate` | ClearSale: user/password => token + `expirationDate` |
//! | `GET /connect/v1/integration/analysis/{analysisId}` | ClearSale: bearer token |
//! | `POST /oauth2/token` | Unico: JWT-bearer grant (RS256 assertion) |
//! | `GET /processes/v1/{id}` | Unico: bearer token **and** `APIKEY` |
//! | `GET /_simulator/stats` | the counters as JSON |
//!
//! Result bodies are derived from a hash of the id and the seed ([`SimulatorConfig::seed`]), so
//! they are the same on every fetch and in every simulator with the same seed. Faults (errors,
//! outages, not-yet-visible ids, pending modules, gone ids, rate limit, latency) come from
//! [`config::FaultConfig`] and [`config::LatencyConfig`], and outages and token expiry can be
//! forced at run time through the [`SimulatorHandle`].
//!
//! Result endpoints check, in order: outage (503), rate limit (Unico 429), latency, token
//! (ClearSale 401, Unico 403; Unico also `APIKEY`), GUID (400), `not_found_ids` (404),
//! `gone_ids` (Unico 410), `error_rate` (500/503), `not_visible_for` (404), then 200 with the
//! body (ClearSale async modules `pending` for the first `pending_fetches` visible fetches).

mod calls;
mod clearsale;
pub mod config;
mod results;
mod state;
mod unico;

pub use calls::{CallRecord, Operation, ProviderStats, SimulatorStats, CLIENT_CLOSED};
pub use config::{
    ClearSaleConfig, FaultConfig, LatencyConfig, OutageWindow, SimulatorConfig, UnicoConfig,
};
pub use unico::{JWT_BEARER_GRANT, MAX_ASSERTION_LIFETIME_SECS};

use crate::provider::Provider;
use crate::secret::Secret;
use axum::extract::State as AxumState;
use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::{Json, Router};
use state::State;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the simulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid simulator configuration: {problems}")]
    InvalidConfig {
        /// The problems, separated by `; `.
        problems: String,
    },
    /// The listener's local address could not be read.
    #[error("simulator listener has no local address: {source}")]
    Listener {
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("simulator server failed: {source}")]
    Serve {
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server task panicked or was aborted.
    #[error("simulator server task ended abnormally: {message}")]
    Task {
        /// The join error, as text.
        message: String,
    },
    /// An RSA key pair could not be generated or encoded.
    #[error("RSA key generation ({bits} bits) failed: {message}")]
    KeyGeneration {
        /// The requested modulus size.
        bits: usize,
        /// The cause (never key material).
        message: String,
    },
}

/// A running simulator. Dropping the handle stops the server; [`SimulatorHandle::shutdown`]
/// stops it and waits for it.
pub struct SimulatorHandle {
    addr: SocketAddr,
    state: Arc<State>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), std::io::Error>>>,
}

impl std::fmt::Debug for SimulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimulatorHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the base URL for both providers' API and the Unico issuer.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The call log, oldest first (at most `call_log_capacity` records).
    pub fn calls(&self) -> Vec<CallRecord> {
        self.state.calls()
    }

    /// The counters since start.
    pub fn stats(&self) -> SimulatorStats {
        self.state.stats()
    }

    /// Forces an outage of `provider` on (`true`) or off. Configured outage windows still apply
    /// while the switch is off.
    pub fn set_outage(&self, provider: Provider, down: bool) {
        self.state.set_outage(provider, down);
    }

    /// Expires every token issued so far (both providers): the next API call with one answers
    /// 401 (ClearSale) or 403 (Unico) until the client authenticates again.
    pub fn expire_tokens(&self) {
        self.state.expire_tokens();
    }

    /// Stops the server (in-flight requests finish) and waits for it.
    pub async fn shutdown(mut self) -> Result<(), SimulatorError> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => join(task).await,
            None => Ok(()),
        }
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn join(task: JoinHandle<Result<(), std::io::Error>>) -> Result<(), SimulatorError> {
    task.await
        .map_err(|error| SimulatorError::Task {
            message: error.to_string(),
        })?
        .map_err(|source| SimulatorError::Serve { source })
}

/// Starts the simulator on `listener` in a background task and returns its handle.
pub async fn start(
    config: SimulatorConfig,
    listener: TcpListener,
) -> Result<SimulatorHandle, SimulatorError> {
    let (addr, state, router) = prepare(config, &listener)?;
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(SimulatorHandle {
        addr,
        state,
        cancel,
        task: Some(task),
    })
}

/// Runs the simulator on `listener` until `shutdown` completes (for the `simulate` command).
pub async fn serve(
    config: SimulatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimulatorError> {
    let (addr, _, router) = prepare(config, &listener)?;
    crate::telemetry::simulator_listening(addr);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| SimulatorError::Serve { source })
}

fn prepare(
    config: SimulatorConfig,
    listener: &TcpListener,
) -> Result<(SocketAddr, Arc<State>, Router), SimulatorError> {
    config.validate()?;
    let addr = listener
        .local_addr()
        .map_err(|source| SimulatorError::Listener { source })?;
    let unico_key = match &config.unico.public_key_pem {
        Some(pem) => Some(
            jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|error| {
                SimulatorError::InvalidConfig {
                    problems: format!("unico.public_key_pem is not an RSA public key: {error}"),
                }
            })?,
        ),
        None => None,
    };
    let audience = config
        .unico
        .issuer_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let state = Arc::new(State::new(config, audience, unico_key));
    Ok((addr, Arc::clone(&state), router(state)))
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/connect/v1/authenticate", post(clearsale::authenticate))
        .route(
            "/connect/v1/integration/analysis/{analysis_id}",
            get(clearsale::get_analysis),
        )
        .route("/oauth2/token", post(unico::token))
        .route("/processes/v1/{process_id}", get(unico::get_process))
        .route("/_simulator/stats", get(stats))
        .with_state(state)
}

/// `GET /_simulator/stats`.
async fn stats(AxumState(state): AxumState<Arc<State>>) -> Json<SimulatorStats> {
    Json(state.stats())
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An injected result-endpoint failure.
enum FaultAnswer {
    /// Answer 500.
    InternalError,
    /// Answer 503.
    Unavailable,
}

/// Rolls the `error_rate` dice: 500 and 503 with even odds.
fn fault_answer(state: &State) -> Option<FaultAnswer> {
    let rate = state.config.faults.error_rate;
    if rate <= 0.0 || state.roll() >= rate {
        return None;
    }
    Some(if state.roll() < 0.5 {
        FaultAnswer::InternalError
    } else {
        FaultAnswer::Unavailable
    })
}

/// Generates an RSA key pair: the private key as PKCS#8 PEM (a [`Secret`]) and the public key as
/// SPKI PEM. For the demo and tests (a Unico service account of the simulator); slow in debug
/// builds, so generate once per process.
pub fn generate_rsa_keypair(bits: usize) -> Result<(Secret, String), SimulatorError> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let failed = |message: String| SimulatorError::KeyGeneration { bits, message };
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|error| failed(error.to_string()))?;
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|error| failed(error.to_string()))?;
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|error| failed(error.to_string()))?;
    Ok((Secret::new(private_pem.as_str()), public_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_token_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn error_rate_one_always_fails_and_zero_never() {
        let mut config = SimulatorConfig::default();
        let never = State::new(config.clone(), String::new(), None);
        assert!((0..100).all(|_| fault_answer(&never).is_none()));
        config.faults.error_rate = 1.0;
        let always = State::new(config, String::new(), None);
        let answers: Vec<_> = (0..100).filter_map(|_| fault_answer(&always)).collect();
        assert_eq!(answers.len(), 100);
        assert!(answers
            .iter()
            .any(|a| matches!(a, FaultAnswer::InternalError)));
        assert!(answers
            .iter()
            .any(|a| matches!(a, FaultAnswer::Unavailable)));
    }
}
