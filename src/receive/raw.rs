//! What an accepted webhook becomes on the raw topic: the body's bytes unchanged, keyed by the
//! provider's id, with headers saying who sent it, when, and under which request id.
//!
//! The key comes from the engine's own decoder ([`crate::event::decode`]), so the receiver and
//! the engine agree on it: `analysisId` for ClearSale, the process id for Unico, lowercase
//! hyphenated. A body the decoder refuses is written all the same, without a key (see the
//! README, "Malformed bodies"): the engine dead-letters it with its reason, and the evidence is
//! kept.

use crate::event::{self, Decoded, DecoderSettings, RawEvent};
use crate::failure::ErrorClass;
use crate::provider::Provider;
use bytes::Bytes;
use http::HeaderMap;
use std::net::IpAddr;

/// Names of the headers the receiver writes.
pub mod headers {
    /// `clearsale` / `unico`: the endpoint that received it (the engine routes on it).
    pub const PROVIDER: &str = "provider";
    /// When the request was received, RFC 3339 UTC with milliseconds.
    pub const RECEIVED_AT: &str = "received-at";
    /// The request id, also in the `X-Request-Id` response header and the logs.
    pub const REQUEST_ID: &str = "request-id";
    /// The request's `Content-Type`, when it had one.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The client address (after trusted proxies).
    pub const CLIENT_IP: &str = "client-ip";
    /// Prefix of the request headers copied by `receive.forward_headers`.
    pub const FORWARDED_PREFIX: &str = "http.";
}

/// What the decoder made of the body (for the response metrics and the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// A webhook the engine will enrich or skip; keyed by its id.
    Valid,
    /// A body the engine will dead-letter with this class; written without a key.
    Refused(ErrorClass),
}

/// One record for the raw topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The provider's id, when the body decodes.
    pub key: Option<String>,
    /// The request body, byte for byte.
    pub payload: Bytes,
    /// Kafka headers, in order (a forwarded header may repeat).
    pub headers: Vec<(String, Vec<u8>)>,
    pub decoding: Decoding,
}

/// Facts about the request that are not in its headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta<'a> {
    pub provider: Provider,
    pub request_id: &'a str,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub client_ip: IpAddr,
}

/// Builds the record of an accepted request. `forward` are lowercase header names.
pub fn build(
    meta: RequestMeta<'_>,
    body: Bytes,
    request_headers: &HeaderMap,
    forward: &[http::HeaderName],
    decoder: &DecoderSettings,
    topic: &str,
) -> RawRecord {
    let decoded = event::decode(
        RawEvent {
            topic,
            payload: Some(&body),
            provider_header: Some(meta.provider.as_str().as_bytes()),
        },
        decoder,
    );
    let (key, decoding) = match decoded {
        Ok(Decoded::Enrich(e)) => (Some(e.subject_id.to_string()), Decoding::Valid),
        Ok(Decoded::Skip(s)) => (Some(s.subject_id.to_string()), Decoding::Valid),
        Err(rejection) => (None, Decoding::Refused(rejection.class)),
    };
    let mut out: Vec<(String, Vec<u8>)> = vec![
        (headers::PROVIDER.into(), meta.provider.as_str().into()),
        (
            headers::RECEIVED_AT.into(),
            meta.received_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into_bytes(),
        ),
        (
            headers::REQUEST_ID.into(),
            meta.request_id.as_bytes().to_vec(),
        ),
        (
            headers::CLIENT_IP.into(),
            meta.client_ip.to_string().into_bytes(),
        ),
    ];
    if let Some(ct) = request_headers.get(http::header::CONTENT_TYPE) {
        out.push((headers::CONTENT_TYPE.into(), ct.as_bytes().to_vec()));
    }
    for name in forward {
        for value in request_headers.get_all(name) {
            out.push((
                format!("{}{}", headers::FORWARDED_PREFIX, name.as_str()),
                value.as_bytes().to_vec(),
            ));
        }
    }
    RawRecord {
        key,
        payload: body,
        headers: out,
        decoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    const ID: &str = "8263a268-5388-492a-bca2-28e1ff4a69f0";

    fn meta(provider: Provider) -> RequestMeta<'static> {
        RequestMeta {
            provider,
            request_id: "req-1",
            received_at: chrono::DateTime::parse_from_rfc3339("2025-09-26T17:21:11.036Z")
                .unwrap()
                .into(),
            client_ip: "198.51.100.7".parse().unwrap(),
        }
    }

    fn request_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("authorization", HeaderValue::from_static("Basic c2VjcmV0"));
        h.append("x-trace", HeaderValue::from_static("a"));
        h.append("x-trace", HeaderValue::from_static("b"));
        h.insert(
            "user-agent",
            HeaderValue::from_static("ClearSale-Webhook/1.0"),
        );
        h
    }

    fn header<'a>(r: &'a RawRecord, name: &str) -> Vec<&'a [u8]> {
        r.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn a_valid_webhook_is_keyed_by_its_id_and_keeps_its_bytes() {
        let body = format!(
            "{{ \"analysisId\": \"{}\", \"date\": \"2025-09-26T17:21:11.0367845Z\", \"type\": \"mfa\" }}\n",
            ID.to_uppercase()
        );
        let r = build(
            meta(Provider::ClearSale),
            Bytes::from(body.clone()),
            &request_headers(),
            &[
                HeaderName::from_static("x-trace"),
                HeaderName::from_static("x-absent"),
            ],
            &DecoderSettings::default(),
            "raw",
        );
        assert_eq!(r.key.as_deref(), Some(ID), "lowercase hyphenated");
        assert_eq!(
            r.payload,
            body.as_bytes(),
            "unchanged, spaces and case kept"
        );
        assert_eq!(r.decoding, Decoding::Valid);
        assert_eq!(header(&r, "provider"), [b"clearsale"]);
        assert_eq!(header(&r, "received-at"), [b"2025-09-26T17:21:11.036Z"]);
        assert_eq!(header(&r, "request-id"), [b"req-1"]);
        assert_eq!(header(&r, "client-ip"), [b"198.51.100.7"]);
        assert_eq!(header(&r, "content-type"), [b"application/json"]);
        assert_eq!(header(&r, "http.x-trace"), [b"a", b"b"]);
        assert!(
            !r.headers
                .iter()
                .any(|(k, v)| k.contains("authorization") || v == b"Basic c2VjcmV0"),
            "credentials never reach Kafka"
        );
        assert!(header(&r, "http.user-agent").is_empty(), "not allowlisted");
    }

    #[test]
    fn skipped_statuses_are_keyed_and_refused_bodies_are_not() {
        let skipped = build(
            meta(Provider::Unico),
            Bytes::from(format!(r#"{{"id":"{ID}","status":1}}"#)),
            &HeaderMap::new(),
            &[],
            &DecoderSettings::default(),
            "raw",
        );
        assert_eq!(skipped.key.as_deref(), Some(ID));
        assert_eq!(skipped.decoding, Decoding::Valid);
        assert!(header(&skipped, "content-type").is_empty());

        for (body, class) in [
            ("not json", ErrorClass::MalformedPayload),
            (r#"{"id":"nope","status":"3"}"#, ErrorClass::InvalidId),
            (
                // ClearSale's shape at the Unico endpoint: the endpoint decides the provider.
                r#"{"analysisId":"8263a268-5388-492a-bca2-28e1ff4a69f0","date":"2025-09-26T17:21:11Z","type":"mfa"}"#,
                ErrorClass::MalformedPayload,
            ),
            ("", ErrorClass::MalformedPayload),
        ] {
            let r = build(
                meta(Provider::Unico),
                Bytes::from(body),
                &HeaderMap::new(),
                &[],
                &DecoderSettings::default(),
                "raw",
            );
            assert_eq!(r.key, None, "{body}");
            assert_eq!(r.decoding, Decoding::Refused(class), "{body}");
            assert_eq!(r.payload, body.as_bytes());
            assert_eq!(header(&r, "provider"), [b"unico"]);
        }
    }
}
