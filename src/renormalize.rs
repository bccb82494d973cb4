//! Re-normalization (`replay --renormalize`): an enriched record read back from an output topic
//! is rebuilt from the provider answer it carries (`raw_response`) with the current normalizer
//! and schema, without calling the provider. This is how a schema or mapping change is
//! backfilled without spending a provider quota.
//!
//! The event keeps its identity (`event_id`, provider, subject, trigger) and its lineage (the raw
//! webhook it came from); everything derived from the answer (state, details) is derived again.
//! A record without `raw_response` (written with `enrich.include_raw_response = false`, or a
//! Unico `410 Gone`) cannot be rebuilt: the caller counts and reports it.

use crate::event::{Trigger, WebhookEvent};
use crate::provider::clearsale::model::Analysis;
use crate::provider::unico::model::Process;
use crate::provider::{Fetched, Provider};
use crate::record::{normalize, EnrichedRecord, Lineage};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Why an output record cannot be rebuilt (it is dead-lettered with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenormalizeError {
    #[error("the record is not an enriched event in a known framing: {0}")]
    Decode(String),
    #[error("the record's field {field} is missing or invalid")]
    Field { field: &'static str },
    #[error("the record's raw_response does not parse as a {provider} answer: {message}")]
    RawResponse { provider: Provider, message: String },
}

/// What an output record rebuilds to.
#[derive(Debug, Clone)]
pub enum Rebuilt {
    /// The record built again, and the event it is about.
    Record {
        event: WebhookEvent,
        record: Box<EnrichedRecord>,
    },
    /// The record has no `raw_response`: nothing to rebuild from.
    NoRawResponse {
        provider: Provider,
        event_id: uuid::Uuid,
    },
}

/// Rebuilds an output record's value (either framing, written with the current schema).
pub fn rebuild(
    value: &[u8],
    include_raw: bool,
    now: DateTime<Utc>,
) -> Result<Rebuilt, RenormalizeError> {
    let schema = crate::avro::schema().map_err(|e| RenormalizeError::Decode(e.to_string()))?;
    let decoded =
        crate::avro::decode(value, schema).map_err(|e| RenormalizeError::Decode(e.to_string()))?;
    let json = crate::avro::to_json(&decoded.value);
    let uuid = |field: &'static str| {
        json[field]
            .as_str()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .ok_or(RenormalizeError::Field { field })
    };
    let event_id = uuid("event_id")?;
    let subject_id = uuid("subject_id")?;
    let provider = match json["provider"].as_str() {
        Some("CLEARSALE") => Provider::ClearSale,
        Some("UNICO") => Provider::Unico,
        _ => return Err(RenormalizeError::Field { field: "provider" }),
    };
    let trigger = &json["trigger"];
    let trigger = match provider {
        Provider::ClearSale => Trigger::ClearSale {
            module_type: trigger["type"]
                .as_str()
                .ok_or(RenormalizeError::Field {
                    field: "trigger.type",
                })?
                .to_string(),
            date: trigger["date"]
                .as_str()
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc))
                .ok_or(RenormalizeError::Field {
                    field: "trigger.date",
                })?,
        },
        Provider::Unico => Trigger::Unico {
            status: trigger["status"]
                .as_u64()
                .and_then(|s| u8::try_from(s).ok())
                .ok_or(RenormalizeError::Field {
                    field: "trigger.status",
                })?,
        },
    };
    let event = WebhookEvent {
        provider,
        subject_id,
        trigger,
        event_id,
    };
    let Some(raw) = json["raw_response"].as_str() else {
        return Ok(Rebuilt::NoRawResponse { provider, event_id });
    };
    let bad = |e: serde_json::Error| RenormalizeError::RawResponse {
        provider,
        message: e.to_string(),
    };
    let fetched = match provider {
        Provider::ClearSale => Fetched::ClearSale {
            analysis: serde_json::from_str::<Analysis>(raw).map_err(bad)?,
            raw: raw.to_string(),
            // The state comes from the module's status in the answer (pending reads PENDING).
            still_pending: false,
        },
        Provider::Unico => Fetched::Unico {
            process: serde_json::from_str::<Process>(raw).map_err(bad)?,
            raw: raw.to_string(),
        },
    };
    let record = normalize(
        &event,
        &fetched,
        lineage(&json["lineage"]),
        include_raw,
        now,
    );
    Ok(Rebuilt::Record {
        event,
        record: Box::new(record),
    })
}

fn lineage(json: &Value) -> Option<Lineage> {
    Some(Lineage {
        topic: json["topic"].as_str()?.to_string(),
        partition: i32::try_from(json["partition"].as_i64()?).ok()?,
        offset: json["offset"].as_i64()?,
        timestamp: json["timestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::RecordEncoder;

    fn unico_record(raw: Option<&str>) -> (WebhookEvent, Vec<u8>) {
        let subject_id = uuid::Uuid::new_v4();
        let trigger = Trigger::Unico { status: 3 };
        let event = WebhookEvent {
            provider: Provider::Unico,
            subject_id,
            event_id: crate::event::event_id(Provider::Unico, subject_id, &trigger),
            trigger,
        };
        let process = r#"{"id":"x","status":3}"#;
        let parsed = raw
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_else(|| serde_json::from_str(process).expect("a process"));
        let fetched = Fetched::Unico {
            process: parsed,
            raw: raw.unwrap_or(process).to_string(),
        };
        let lineage = Lineage {
            topic: "webhooks.raw".into(),
            partition: 2,
            offset: 41,
            timestamp: DateTime::from_timestamp_millis(1_700_000_000_123),
        };
        let mut record = normalize(&event, &fetched, Some(lineage), true, Utc::now());
        if raw.is_none() {
            record.raw_response = None;
        }
        let encoder = RecordEncoder::single_object().expect("encoder");
        let bytes = encoder.encode("out", &record).expect("encodes");
        (event, bytes)
    }

    #[test]
    fn a_record_is_rebuilt_from_its_raw_response_with_its_identity_and_lineage() {
        let raw = r#"{"id":"p","status":2}"#;
        let (event, bytes) = unico_record(Some(raw));
        let now = Utc::now();
        let Rebuilt::Record { event: e, record } = rebuild(&bytes, true, now).expect("rebuilds")
        else {
            panic!("a record")
        };
        assert_eq!(e, event);
        assert_eq!(record.event_id, event.event_id, "event_id is stable");
        assert_eq!(
            record.state.symbol(),
            "DIVERGENT",
            "derived from the answer"
        );
        assert_eq!(record.raw_response.as_deref(), Some(raw));
        let lineage = record.lineage.expect("lineage kept");
        assert_eq!((lineage.partition, lineage.offset), (2, 41));
        assert_eq!(
            lineage.timestamp.map(|t| t.timestamp_millis()),
            Some(1_700_000_000_123)
        );
        assert_eq!(record.enriched_at, now);
    }

    #[test]
    fn a_record_without_raw_response_is_reported_not_rebuilt() {
        let (event, bytes) = unico_record(None);
        match rebuild(&bytes, true, Utc::now()) {
            Ok(Rebuilt::NoRawResponse { provider, event_id }) => {
                assert_eq!((provider, event_id), (Provider::Unico, event.event_id));
            }
            other => panic!("expected NoRawResponse, got {other:?}"),
        }
    }

    #[test]
    fn what_is_not_an_enriched_record_is_refused_with_the_reason() {
        assert!(matches!(
            rebuild(b"{\"id\":\"not avro\"}", true, Utc::now()),
            Err(RenormalizeError::Decode(_))
        ));
        // A record whose raw_response is not a Unico process.
        let (_, framed) = unico_record(Some("not json"));
        assert!(matches!(
            rebuild(&framed, true, Utc::now()),
            Err(RenormalizeError::RawResponse {
                provider: Provider::Unico,
                ..
            })
        ));
    }
}
