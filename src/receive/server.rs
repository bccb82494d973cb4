//! The listener: accepts connections up to `receive.max_connections`, optionally over TLS
//! (rustls), and serves each with hyper's HTTP/1.1 connection and the axum router. On shutdown
//! it stops accepting, lets every connection finish its request in flight (graceful), and after
//! the drain deadline closes what is left.
//!
//! Memory stays bounded whatever the load: at most `max_connections` connections, each with a
//! read buffer of at most [`MAX_BUF`]; at most `max_in_flight` requests past authentication, each
//! holding at most `max_body_bytes`; and the producer's queue holds only writes of requests in
//! flight (see [`super::kafka`]).

use super::handler::Peer;
use super::settings::{ReceiveSettings, ReceiveTlsSettings};
use super::ReceiveError;
use crate::telemetry::receive::ReceiverEvents;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest read buffer of a connection (request line, headers, body chunks).
pub const MAX_BUF: usize = 64 * 1024;

/// Binds the webhook listener. Bind failures are startup errors.
pub async fn bind(settings: &ReceiveSettings) -> Result<TcpListener, ReceiveError> {
    TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| ReceiveError::Bind {
            addr: settings.listen.clone(),
            source,
        })
}

/// The TLS acceptor of `receive.tls`, or `None` for plain HTTP. Only HTTP/1.1 is offered.
pub fn tls_acceptor(settings: &ReceiveTlsSettings) -> Result<Option<TlsAcceptor>, ReceiveError> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let tls = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ReceiveError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| tls("certificate file", cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls("certificate file", cert_file, &e))?;
    if certs.is_empty() {
        return Err(tls("certificate file", cert_file, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| tls("key file", key_file, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ReceiveError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ReceiveError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The open connections and how to stop them.
pub struct Connections {
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
    slots: Arc<Semaphore>,
    open: AtomicUsize,
    tracker: TaskTracker,
    /// Asks every connection to finish its request in flight and close.
    graceful: CancellationToken,
    /// Closes every connection now.
    abort: CancellationToken,
    events: Arc<ReceiverEvents>,
}

impl Connections {
    pub fn new(
        settings: &ReceiveSettings,
        tls: Option<TlsAcceptor>,
        router: axum::Router,
        events: Arc<ReceiverEvents>,
    ) -> Arc<Self> {
        Arc::new(Self {
            router,
            tls,
            header_read_timeout: settings.header_read_timeout,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            open: AtomicUsize::new(0),
            tracker: TaskTracker::new(),
            graceful: CancellationToken::new(),
            abort: CancellationToken::new(),
            events,
        })
    }

    /// Accepts connections until `stop` is cancelled; the listener closes when this returns.
    pub async fn accept(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            // A slot first: at the limit, new connections wait in the kernel's backlog.
            let slot = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        self.events.accept_failed(&error);
                        // Out of file descriptors and the like: give it a moment.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            self.tracker
                .spawn(async move { this.connection(stream, peer, slot).await });
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, _slot: OwnedSemaphorePermit) {
        let _open = Open::new(self);
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.serve(stream, peer).await,
            Some(acceptor) => {
                let handshake = tokio::select! {
                    _ = self.abort.cancelled() => return,
                    _ = self.graceful.cancelled() => return,
                    handshake = tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream)) => handshake,
                };
                match handshake {
                    Ok(Ok(stream)) => self.serve(stream, peer).await,
                    Ok(Err(error)) => self.events.tls_handshake_failed(peer, &error.to_string()),
                    Err(_) => self.events.tls_handshake_failed(peer, "timed out"),
                }
            }
        }
    }

    async fn serve<I>(&self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tower = TowerToHyperService::new(self.router.clone());
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            hyper::service::Service::call(&tower, request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(MAX_BUF)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = self.graceful.cancelled() => {
                // Finish the request in flight (answered by its own outcome), then close.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = self.abort.cancelled() => {}
                }
            }
            _ = self.abort.cancelled() => {}
        }
    }

    /// Stops every connection: graceful first (each finishes its request in flight), then, past
    /// `deadline`, closed without an answer. Call once the accept loop returned. Returns the
    /// number of connections closed at the deadline.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.tracker.close();
        self.graceful.cancel();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.tracker.len();
        self.abort.cancel();
        self.tracker.wait().await;
        left
    }
}

/// Counts an open connection while it lives.
struct Open<'a>(&'a Connections);

impl<'a> Open<'a> {
    fn new(c: &'a Connections) -> Self {
        let now = c.open.fetch_add(1, Ordering::SeqCst) + 1;
        c.events.connections(now);
        Self(c)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let now = self.0.open.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.events.connections(now);
    }
}
