//! Decoding of raw webhook events: bytes on the input topic to a validated [`WebhookEvent`], a
//! [`Skipped`] event (a Unico status we do not enrich), or a classified [`Rejection`].
//!
//! Which provider sent an event is decided, in this order, by the Kafka header `provider`, the
//! per-topic mapping in the configuration, and the payload's shape.

use crate::datetime::{canonical, parse_provider_datetime};
use crate::failure::ErrorClass;
use crate::provider::Provider;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// The namespace of every `event_id` (UUID v5). Never change it: it would change every id.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b0e_4a57_4d1b_9f3e_8d2a_5c7b_e410);

/// The Unico statuses that exist (1 processing .. 5 error).
pub const UNICO_KNOWN_STATUSES: std::ops::RangeInclusive<u8> = 1..=5;

/// The `[input]` configuration section: what to consume and how to decode it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecoderSettings {
    /// Input topics with raw webhook events.
    pub topics: Vec<String>,
    /// Payloads larger than this are rejected as `malformed_payload`.
    pub max_payload_bytes: usize,
    /// Unico statuses that are enriched; other known statuses are skipped.
    pub unico_statuses: BTreeSet<u8>,
    /// Topic name to provider, used when a record has no `provider` header.
    pub topic_providers: BTreeMap<String, Provider>,
}

impl Default for DecoderSettings {
    fn default() -> Self {
        Self {
            topics: vec!["webhooks.raw".into()],
            max_payload_bytes: 64 * 1024,
            unico_statuses: [2, 3, 4, 5].into_iter().collect(),
            topic_providers: BTreeMap::new(),
        }
    }
}

/// What the decoder sees of a Kafka record.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    pub topic: &'a str,
    pub payload: Option<&'a [u8]>,
    /// The value of the `provider` header, if present.
    pub provider_header: Option<&'a [u8]>,
}

/// What triggered the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// ClearSale: the module that changed and when.
    ClearSale {
        module_type: String,
        date: DateTime<Utc>,
    },
    /// Unico: the process's new status.
    Unico { status: u8 },
}

/// A validated event, ready to enrich.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub provider: Provider,
    /// `analysisId` or process id, lowercase hyphenated.
    pub subject_id: Uuid,
    pub trigger: Trigger,
    /// Stable id derived from the event identity; the dedupe and downstream idempotency key.
    pub event_id: Uuid,
}

/// A valid event we deliberately do not enrich (counted, not dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub provider: Provider,
    pub subject_id: Uuid,
    pub reason: String,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Enrich(WebhookEvent),
    Skip(Skipped),
}

/// Why a record was refused; it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {reason}")]
pub struct Rejection {
    pub class: ErrorClass,
    /// A human reason. Never contains the payload (it may hold personal data).
    pub reason: String,
    /// The provider, when it was determined before the rejection.
    pub provider: Option<Provider>,
}

impl Rejection {
    pub(crate) fn new(
        class: ErrorClass,
        provider: Option<Provider>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            class,
            reason: reason.into(),
            provider,
        }
    }
}

impl WebhookEvent {
    /// Builds an event and derives its `event_id` from the identity:
    /// ClearSale `(analysisId, type, date)`, Unico `(id, status)`.
    pub fn new(provider: Provider, subject_id: Uuid, trigger: Trigger) -> Self {
        let event_id = event_id(provider, subject_id, &trigger);
        Self {
            provider,
            subject_id,
            trigger,
            event_id,
        }
    }

    /// The sub-route within the provider's output, when the provider has one (the ClearSale
    /// module type; see `output.clearsale_module_topics`). The engine routes by provider and
    /// this, without knowing any provider's trigger.
    pub fn route(&self) -> Option<&str> {
        match &self.trigger {
            Trigger::ClearSale { module_type, .. } => Some(module_type.as_str()),
            Trigger::Unico { .. } => None,
        }
    }

    /// The trigger's label: the ClearSale module type or the Unico status.
    pub fn trigger_label(&self) -> String {
        match &self.trigger {
            Trigger::ClearSale { module_type, .. } => module_type.clone(),
            Trigger::Unico { status } => status.to_string(),
        }
    }
}

/// The stable id of an event identity (UUID v5 over a canonical text form).
///
/// The date is normalized to UTC nanoseconds, so `...Z` and the same instant without offset give
/// the same id; the ClearSale type is compared as sent (it is an open string).
pub fn event_id(provider: Provider, subject_id: Uuid, trigger: &Trigger) -> Uuid {
    let name = match trigger {
        Trigger::ClearSale { module_type, date } => {
            format!(
                "{}|{}|{}|{}",
                provider.as_str(),
                subject_id,
                module_type,
                canonical(date)
            )
        }
        Trigger::Unico { status } => format!("{}|{}|{}", provider.as_str(), subject_id, status),
    };
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// Decodes one raw record.
pub fn decode(raw: RawEvent<'_>, settings: &DecoderSettings) -> Result<Decoded, Rejection> {
    use ErrorClass::*;
    let header_provider = match raw.provider_header {
        Some(bytes) => {
            let text = std::str::from_utf8(bytes).unwrap_or("");
            match Provider::parse(text) {
                Some(p) => Some(p),
                None => {
                    return Err(Rejection::new(
                        UnsupportedEvent,
                        None,
                        format!("unknown provider header {:?}", truncate(text, 32)),
                    ))
                }
            }
        }
        None => None,
    };
    let hinted = header_provider.or_else(|| settings.topic_providers.get(raw.topic).copied());

    let payload = match raw.payload {
        Some(p) if !p.is_empty() => p,
        _ => return Err(Rejection::new(MalformedPayload, hinted, "empty payload")),
    };
    if payload.len() > settings.max_payload_bytes {
        return Err(Rejection::new(
            MalformedPayload,
            hinted,
            format!(
                "payload of {} bytes exceeds the {} byte limit",
                payload.len(),
                settings.max_payload_bytes
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        Rejection::new(
            MalformedPayload,
            hinted,
            format!(
                "not JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    let serde_json::Value::Object(object) = value else {
        return Err(Rejection::new(
            MalformedPayload,
            hinted,
            "payload is not a JSON object",
        ));
    };

    let provider = match hinted {
        Some(p) => p,
        None => shape_provider(&object).ok_or_else(|| {
            Rejection::new(
                MalformedPayload,
                None,
                "payload matches neither webhook shape ({analysisId,date,type} or {id,status})",
            )
        })?,
    };
    match provider {
        Provider::ClearSale => decode_clearsale(&object).map(Decoded::Enrich),
        Provider::Unico => decode_unico(&object, settings),
    }
}

fn shape_provider(object: &serde_json::Map<String, serde_json::Value>) -> Option<Provider> {
    if object.contains_key("analysisId") {
        Some(Provider::ClearSale)
    } else if (object.contains_key("id") || object.contains_key("processId"))
        && object.contains_key("status")
    {
        Some(Provider::Unico)
    } else {
        None
    }
}

fn decode_clearsale(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<WebhookEvent, Rejection> {
    use ErrorClass::*;
    let p = Some(Provider::ClearSale);
    let id = required_str(object, "analysisId", p)?;
    let subject_id = parse_guid(id, "analysisId", p)?;
    let date_text = required_str(object, "date", p)?;
    let date = parse_provider_datetime(date_text)
        .map_err(|e| Rejection::new(MalformedPayload, p, format!("field `date`: {e}")))?;
    let module_type = required_str(object, "type", p)?.trim();
    if module_type.is_empty() || module_type.len() > 64 {
        return Err(Rejection::new(
            MalformedPayload,
            p,
            "field `type` must be 1 to 64 characters",
        ));
    }
    Ok(WebhookEvent::new(
        Provider::ClearSale,
        subject_id,
        Trigger::ClearSale {
            module_type: module_type.to_string(),
            date,
        },
    ))
}

fn decode_unico(
    object: &serde_json::Map<String, serde_json::Value>,
    settings: &DecoderSettings,
) -> Result<Decoded, Rejection> {
    use ErrorClass::*;
    let p = Some(Provider::Unico);
    let id = match (object.get("id"), object.get("processId")) {
        (Some(a), Some(b)) if a != b => {
            return Err(Rejection::new(
                MalformedPayload,
                p,
                "fields `id` and `processId` disagree",
            ))
        }
        (Some(_), _) => required_str(object, "id", p)?,
        (None, Some(_)) => required_str(object, "processId", p)?,
        (None, None) => {
            return Err(Rejection::new(
                MalformedPayload,
                p,
                "missing field `id` (or `processId`)",
            ))
        }
    };
    let subject_id = parse_guid(id, "id", p)?;
    let status: i64 = match object.get("status") {
        Some(serde_json::Value::Number(n)) => n.as_i64().ok_or_else(|| {
            Rejection::new(MalformedPayload, p, "field `status` is not an integer")
        })?,
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| Rejection::new(MalformedPayload, p, "field `status` is not an integer"))?,
        Some(_) => {
            return Err(Rejection::new(
                MalformedPayload,
                p,
                "field `status` must be a string or number",
            ))
        }
        None => {
            return Err(Rejection::new(
                MalformedPayload,
                p,
                "missing field `status`",
            ))
        }
    };
    let status = u8::try_from(status)
        .ok()
        .filter(|s| UNICO_KNOWN_STATUSES.contains(s))
        .ok_or_else(|| {
            Rejection::new(
                UnsupportedEvent,
                p,
                format!("unknown Unico status {status}"),
            )
        })?;
    if !settings.unico_statuses.contains(&status) {
        return Ok(Decoded::Skip(Skipped {
            provider: Provider::Unico,
            subject_id,
            reason: format!("Unico status {status} is not in the enriched set"),
        }));
    }
    Ok(Decoded::Enrich(WebhookEvent::new(
        Provider::Unico,
        subject_id,
        Trigger::Unico { status },
    )))
}

/// A required string field of a JSON object, or the rejection that names it.
pub(crate) fn required_str<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
    provider: Option<Provider>,
) -> Result<&'a str, Rejection> {
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(Rejection::new(
            ErrorClass::MalformedPayload,
            provider,
            format!("field `{field}` must be a string"),
        )),
        None => Err(Rejection::new(
            ErrorClass::MalformedPayload,
            provider,
            format!("missing field `{field}`"),
        )),
    }
}

/// Parses a GUID (hyphenated, braced or 32 hex digits).
pub fn parse_guid(text: &str, field: &str, provider: Option<Provider>) -> Result<Uuid, Rejection> {
    let t = text.trim();
    let ok_form = matches!(t.len(), 32 | 36 | 38);
    match Uuid::try_parse(t) {
        Ok(id) if ok_form => Ok(id),
        _ => Err(Rejection::new(
            ErrorClass::InvalidId,
            provider,
            format!("field `{field}` is not a GUID ({:?})", truncate(t, 40)),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8263a268-5388-492a-bca2-28e1ff4a69f0";

    fn dec(payload: &str) -> Result<Decoded, Rejection> {
        decode_with(payload, None, "webhooks")
    }

    fn decode_with(payload: &str, header: Option<&str>, topic: &str) -> Result<Decoded, Rejection> {
        let mut settings = DecoderSettings::default();
        settings
            .topic_providers
            .insert("unico-raw".into(), Provider::Unico);
        decode(
            RawEvent {
                topic,
                payload: Some(payload.as_bytes()),
                provider_header: header.map(str::as_bytes),
            },
            &settings,
        )
    }

    fn event(d: Result<Decoded, Rejection>) -> WebhookEvent {
        match d {
            Ok(Decoded::Enrich(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn class(d: Result<Decoded, Rejection>) -> ErrorClass {
        d.expect_err("expected a rejection").class
    }

    #[test]
    fn clearsale_event() {
        let e = event(dec(&format!(
            r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11.0367845Z","type":"mfa"}}"#
        )));
        assert_eq!(e.provider, Provider::ClearSale);
        assert_eq!(e.subject_id.to_string(), ID);
        assert_eq!(e.trigger_label(), "mfa");
    }

    #[test]
    fn unico_string_and_number_status_are_the_same_event() {
        let a = event(dec(&format!(r#"{{"id":"{ID}","status":"3"}}"#)));
        let b = event(dec(&format!(r#"{{"id":"{ID}","status":3}}"#)));
        assert_eq!(a, b);
        assert_eq!(a.trigger, Trigger::Unico { status: 3 });
    }

    #[test]
    fn unico_process_id_alias() {
        let a = event(dec(&format!(r#"{{"processId":"{ID}","status":3}}"#)));
        let b = event(dec(&format!(r#"{{"id":"{ID}","status":3}}"#)));
        assert_eq!(a.event_id, b.event_id);
        assert_eq!(
            class(dec(&format!(
                r#"{{"id":"{ID}","processId":"1263a268-5388-492a-bca2-28e1ff4a69f0","status":3}}"#
            ))),
            ErrorClass::MalformedPayload
        );
    }

    #[test]
    fn unico_status_outside_the_set_is_skipped_not_rejected() {
        match dec(&format!(r#"{{"id":"{ID}","status":"1"}}"#)) {
            Ok(Decoded::Skip(s)) => assert_eq!(s.provider, Provider::Unico),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejection_malformed_payload() {
        use ErrorClass::MalformedPayload as M;
        assert_eq!(class(dec("not json")), M);
        assert_eq!(class(dec("[1,2]")), M);
        assert_eq!(class(dec("{}")), M);
        assert_eq!(class(dec("")), M);
        assert_eq!(
            class(dec(&format!(r#"{{"analysisId":"{ID}","type":"mfa"}}"#))),
            M
        );
        assert_eq!(
            class(dec(&format!(
                r#"{{"analysisId":"{ID}","date":"nope","type":"mfa"}}"#
            ))),
            M
        );
        assert_eq!(
            class(dec(&format!(
                r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11Z","type":""}}"#
            ))),
            M
        );
        assert_eq!(
            class(dec(&format!(
                r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11Z","type":7}}"#
            ))),
            M
        );
        assert_eq!(
            class(dec(&format!(r#"{{"id":"{ID}","status":"three"}}"#))),
            M
        );
        assert_eq!(class(dec(&format!(r#"{{"id":"{ID}","status":true}}"#))), M);
        // Header says Unico, payload is a ClearSale webhook: wrong shape.
        assert_eq!(
            class(decode_with(
                &format!(r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11Z","type":"mfa"}}"#),
                Some("unico"),
                "t"
            )),
            M
        );
    }

    #[test]
    fn rejection_over_size_limit() {
        let settings = DecoderSettings {
            max_payload_bytes: 16,
            ..Default::default()
        };
        let payload = format!(r#"{{"id":"{ID}","status":3}}"#);
        let r = decode(
            RawEvent {
                topic: "t",
                payload: Some(payload.as_bytes()),
                provider_header: None,
            },
            &settings,
        )
        .unwrap_err();
        assert_eq!(r.class, ErrorClass::MalformedPayload);
        assert!(r.reason.contains("limit"), "{}", r.reason);
    }

    #[test]
    fn rejection_invalid_id() {
        assert_eq!(
            class(dec(r#"{"id":"123","status":3}"#)),
            ErrorClass::InvalidId
        );
        assert_eq!(
            class(dec(
                r#"{"analysisId":"not-a-guid","date":"2025-09-26T17:21:11Z","type":"mfa"}"#
            )),
            ErrorClass::InvalidId
        );
        assert_eq!(
            class(dec(
                r#"{"id":"urn:uuid:8263a268-5388-492a-bca2-28e1ff4a69f0","status":3}"#
            )),
            ErrorClass::InvalidId
        );
    }

    #[test]
    fn rejection_unsupported_event() {
        assert_eq!(
            class(dec(&format!(r#"{{"id":"{ID}","status":9}}"#))),
            ErrorClass::UnsupportedEvent
        );
        assert_eq!(
            class(decode_with(
                &format!(r#"{{"id":"{ID}","status":3}}"#),
                Some("serasa"),
                "t"
            )),
            ErrorClass::UnsupportedEvent
        );
    }

    #[test]
    fn provider_resolution_order_header_then_topic_then_shape() {
        // Topic mapping says Unico: a ClearSale-shaped payload is then malformed for Unico.
        let cs = format!(r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11Z","type":"mfa"}}"#);
        assert_eq!(
            class(decode_with(&cs, None, "unico-raw")),
            ErrorClass::MalformedPayload
        );
        // ...but the header wins over the topic mapping.
        assert_eq!(
            event(decode_with(&cs, Some("clearsale"), "unico-raw")).provider,
            Provider::ClearSale
        );
        // Shape decides when nothing else does.
        assert_eq!(
            event(decode_with(&cs, None, "other")).provider,
            Provider::ClearSale
        );
    }

    #[test]
    fn identity_and_event_id() {
        let a = event(dec(&format!(
            r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11.0367845Z","type":"mfa"}}"#
        )));
        let same_instant = event(dec(&format!(
            r#"{{"analysisId":"{}","date":"2025-09-26T14:21:11.0367845-03:00","type":"mfa"}}"#,
            ID.to_uppercase()
        )));
        assert_eq!(a.event_id, same_instant.event_id);
        let other_type = event(dec(&format!(
            r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:11.0367845Z","type":"biolink"}}"#
        )));
        let other_date = event(dec(&format!(
            r#"{{"analysisId":"{ID}","date":"2025-09-26T17:21:12Z","type":"mfa"}}"#
        )));
        assert_ne!(a.event_id, other_type.event_id);
        assert_ne!(a.event_id, other_date.event_id);
        let u3 = event(dec(&format!(r#"{{"id":"{ID}","status":3}}"#)));
        let u4 = event(dec(&format!(r#"{{"id":"{ID}","status":4}}"#)));
        assert_ne!(u3.event_id, u4.event_id);
        // Pinned: the id must never change across versions (downstream idempotency key).
        assert_eq!(
            u3.event_id,
            event_id(
                Provider::Unico,
                ID.parse().unwrap(),
                &Trigger::Unico { status: 3 }
            )
        );
        assert_eq!(u3.event_id.get_version_num(), 5);
    }

    /// `event_id` is the downstream idempotency key: the same webhook gives the same id on every
    /// reprocessing (a restart, a redrive, a replay), whatever offset it is read at, and in every
    /// version of the service. The expected values were computed independently (Python's
    /// `uuid.uuid5` over the documented name `provider|subject|type|date` or
    /// `provider|subject|status`); a change here breaks every consumer's deduplication.
    #[test]
    fn event_ids_are_pinned_to_fixed_values() {
        const SUBJECT: &str = "5b0d6a52-3c4e-4f7a-9d21-8e6f1a2b3c4d";
        let clearsale = event(dec(
            r#"{"analysisId":"5B0D6A52-3C4E-4F7A-9D21-8E6F1A2B3C4D","date":"2025-09-26T14:21:11.0367845-03:00","type":"mfa"}"#,
        ));
        assert_eq!(
            clearsale.event_id.to_string(),
            "bd0607e5-7624-525e-bd50-e0aa346e8709"
        );
        let unico = event(dec(&format!(r#"{{"processId":"{SUBJECT}","status":"3"}}"#)));
        assert_eq!(
            unico.event_id.to_string(),
            "ce149d7b-38ba-5bcf-be34-3c43ba05b01b"
        );
        assert_eq!(
            EVENT_ID_NAMESPACE.to_string(),
            "6f1c2b0e-4a57-4d1b-9f3e-8d2a5c7be410"
        );
    }
}
