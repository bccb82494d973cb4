//! The webhook endpoints (axum): `POST <path>` per provider, answered 200 only once the raw
//! record is acknowledged by Kafka.
//!
//! A request goes through, in order: shutdown (503), the allowlist (403), authentication (401),
//! admission against `receive.max_in_flight` (503), the size limit (413, from `Content-Length`
//! or while reading), the body deadline (408), then the Kafka write: 200 on its acknowledgement,
//! 503 with `Retry-After` when it fails or is late. Nothing is read from a request that failed
//! the allowlist or authentication.

use super::allowlist::{client_ip, Allowlist, Networks};
use super::auth::Authenticator;
use super::kafka::RawWriter;
use super::raw::{self, Decoding, RequestMeta};
use super::settings::{parse_networks, ReceiveSettings};
use super::ReceiveError;
use crate::event::DecoderSettings;
use crate::provider::Provider;
use crate::telemetry::receive::{ReceiverEvents, RequestOutcome, WriteOutcome};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::{header, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The peer of a connection, attached to each of its requests by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// One provider's endpoint.
#[derive(Debug)]
struct Endpoint {
    auth: Authenticator,
    allow: Allowlist,
}

/// What every request needs, shared by the handlers.
pub struct Shared {
    endpoints: [Option<Endpoint>; 2],
    trusted_proxies: Networks,
    forward: Vec<HeaderName>,
    decoder: DecoderSettings,
    topic: String,
    max_body_bytes: usize,
    body_timeout: Duration,
    retry_after: HeaderValue,
    writer: RawWriter,
    events: Arc<ReceiverEvents>,
    admission: Semaphore,
    in_flight: AtomicUsize,
    /// Set once the listener closed: requests still arriving on open connections get 503.
    closing: AtomicBool,
}

impl Shared {
    /// Builds the endpoints from validated settings.
    pub fn new(
        settings: &ReceiveSettings,
        decoder: &DecoderSettings,
        writer: RawWriter,
        events: Arc<ReceiverEvents>,
    ) -> Result<Self, ReceiveError> {
        let invalid = |e: String| ReceiveError::Settings(e);
        let mut endpoints = [None, None];
        for provider in Provider::ALL {
            let e = settings.endpoint(provider);
            if e.enabled {
                endpoints[provider.index()] = Some(Endpoint {
                    auth: Authenticator::new(&e.auth).map_err(|e| invalid(e.to_string()))?,
                    allow: Allowlist::new(parse_networks(&e.allow_cidrs).map_err(invalid)?),
                });
            }
        }
        let forward = settings
            .forward_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| invalid(format!("bad header name {h:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            endpoints,
            trusted_proxies: Networks::new(
                parse_networks(&settings.trusted_proxies).map_err(invalid)?,
            ),
            forward,
            decoder: decoder.clone(),
            topic: settings.topic.clone(),
            max_body_bytes: settings.max_body_bytes,
            body_timeout: settings.body_timeout,
            retry_after: HeaderValue::from(settings.retry_after_secs()),
            writer,
            events,
            admission: Semaphore::new(settings.max_in_flight),
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
        })
    }

    /// The writer (for the final flush).
    pub fn writer(&self) -> &RawWriter {
        &self.writer
    }

    /// From now on, requests are answered 503 (the listener is closed).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn admitted(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.events.in_flight(now);
        InFlight(self)
    }
}

/// Counts a request in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self.0.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.events.in_flight(now);
    }
}

/// The routes: one `POST` per enabled provider; any other path is 404 (counted).
pub fn router(shared: Arc<Shared>, settings: &ReceiveSettings) -> Router {
    let mut router = Router::new();
    for provider in Provider::ALL {
        let e = settings.endpoint(provider);
        if e.enabled {
            router = router.route(
                &e.path,
                post(
                    move |State(s): State<Arc<Shared>>, request: Request| async move {
                        handle(s, provider, request).await
                    },
                ),
            );
        }
    }
    router
        .fallback(|State(s): State<Arc<Shared>>| async move {
            s.events.not_found();
            StatusCode::NOT_FOUND
        })
        .with_state(shared)
}

/// The answer to one request, before it becomes a response.
struct Answer {
    outcome: RequestOutcome,
    subject_id: Option<String>,
    detail: String,
    challenge: Option<&'static str>,
}

impl Answer {
    fn of(outcome: RequestOutcome) -> Self {
        Self {
            outcome,
            subject_id: None,
            detail: String::new(),
            challenge: None,
        }
    }

    fn because(outcome: RequestOutcome, detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..Self::of(outcome)
        }
    }
}

async fn handle(shared: Arc<Shared>, provider: Provider, request: Request) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let answer = process(&shared, provider, &request_id, request).await;
    shared.events.answered(
        provider,
        answer.outcome,
        &request_id,
        answer.subject_id.as_deref(),
        &answer.detail,
        started.elapsed(),
    );
    respond(&shared, &answer, &request_id)
}

async fn process(
    shared: &Shared,
    provider: Provider,
    request_id: &str,
    request: Request,
) -> Answer {
    use RequestOutcome::*;
    let received_at = chrono::Utc::now();
    if shared.closing.load(Ordering::SeqCst) {
        return Answer::of(ShuttingDown);
    }
    let Some(endpoint) = &shared.endpoints[provider.index()] else {
        // Not routed: the router only has enabled endpoints.
        return Answer::of(Forbidden);
    };
    let (parts, body) = request.into_parts();
    let client = parts.extensions.get::<Peer>().and_then(|peer| {
        client_ip(
            peer.0.ip(),
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(HeaderValue::as_bytes),
            &shared.trusted_proxies,
        )
        .ok()
    });
    let client = match client {
        Some(ip) if endpoint.allow.permits(ip) => ip,
        other => {
            shared.events.forbidden(provider, other, request_id);
            return Answer::of(Forbidden);
        }
    };
    if let Err(failure) = endpoint.auth.verify(&parts.headers) {
        shared
            .events
            .auth_failed(provider, failure.as_str(), client, request_id);
        return Answer {
            challenge: endpoint.auth.challenge(),
            ..Answer::because(Unauthorized, failure.as_str())
        };
    }
    let Ok(_permit) = shared.admission.try_acquire() else {
        return Answer::because(Overloaded, "receive.max_in_flight requests in flight");
    };
    let _in_flight = shared.admitted();
    if let Some(length) = content_length(&parts.headers) {
        if length > shared.max_body_bytes as u64 {
            return Answer::because(TooLarge, format!("Content-Length {length}"));
        }
    }
    let limited = http_body_util::Limited::new(body, shared.max_body_bytes);
    let bytes = match tokio::time::timeout(shared.body_timeout, limited.collect()).await {
        Err(_) => return Answer::because(BodyTimeout, "body not received in time"),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Answer::because(TooLarge, "body over the limit")
        }
        Ok(Err(e)) => return Answer::because(BadRequest, format!("body: {e}")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let record = raw::build(
        RequestMeta {
            provider,
            request_id,
            received_at,
            client_ip: client,
        },
        bytes,
        &parts.headers,
        &shared.forward,
        &shared.decoder,
        &shared.topic,
    );
    let write_started = Instant::now();
    let written = shared.writer.write(&record).await;
    let write_outcome = match &written {
        Ok(_) => WriteOutcome::Ok,
        Err(e) => e.outcome(),
    };
    shared
        .events
        .write_finished(provider, write_outcome, write_started.elapsed());
    match written {
        Ok(_) => match record.decoding {
            Decoding::Valid => Answer {
                subject_id: record.key,
                ..Answer::of(Accepted)
            },
            Decoding::Refused(class) => Answer::because(AcceptedMalformed, class.as_str()),
        },
        Err(error) => Answer::because(KafkaUnavailable, error.to_string()),
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn respond(shared: &Shared, answer: &Answer, request_id: &str) -> Response {
    use RequestOutcome::*;
    let status = match answer.outcome {
        Accepted | AcceptedMalformed => StatusCode::OK,
        BadRequest => StatusCode::BAD_REQUEST,
        Unauthorized => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Overloaded | KafkaUnavailable | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    // The body names the outcome and the request id; never a reason that could help a guesser
    // (which credential part was wrong) or leak internals.
    let body = format!(
        "{{\"outcome\":\"{}\",\"request_id\":\"{request_id}\"}}",
        answer.outcome.as_str()
    );
    let mut response = (status, Body::from(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-request-id"), id);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, shared.retry_after.clone());
    }
    if let Some(challenge) = answer.challenge {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    // The rest of an unread body is still on the wire: start afresh on a new connection.
    if matches!(
        answer.outcome,
        TooLarge | BodyTimeout | BadRequest | ShuttingDown
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
