//! A consumed record with its decoding, its ordering key and its lane: what the consumer thread
//! hands to the dispatcher.

use super::flow::Lane;
use super::input::InputRecord;
use crate::event::{Decoded, DecoderSettings, RawEvent, Rejection};
use crate::provider::Provider;
use std::sync::Arc;

/// The ordering key: records with equal keys are processed one after another, in offset order.
///
/// The provider's id for a decoded event; for a record that could not be decoded, its Kafka key,
/// else its partition (so undecodable records without a key keep their partition's order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderKey {
    Subject(Provider, uuid::Uuid),
    KafkaKey(Arc<[u8]>),
    Partition(Arc<str>, i32),
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderKey::Subject(p, id) => write!(f, "{p}:{id}"),
            OrderKey::KafkaKey(k) => write!(f, "key:{}", String::from_utf8_lossy(k)),
            OrderKey::Partition(t, p) => write!(f, "partition:{t}:{p}"),
        }
    }
}

/// A record with its decoding.
#[derive(Debug)]
pub struct Job {
    pub record: InputRecord,
    pub decoded: Result<Decoded, Rejection>,
    pub key: OrderKey,
    pub lane: Lane,
}

impl Job {
    /// Decodes a record and derives its ordering key and lane.
    pub fn new(record: InputRecord, settings: &DecoderSettings) -> Self {
        let decoded = crate::event::decode(
            RawEvent {
                topic: &record.topic,
                payload: record.payload.as_deref(),
                provider_header: record.header("provider"),
            },
            settings,
        );
        let (key, lane) = match &decoded {
            Ok(Decoded::Enrich(e)) => (
                OrderKey::Subject(e.provider, e.subject_id),
                Lane::Provider(e.provider),
            ),
            Ok(Decoded::Skip(s)) => (OrderKey::Subject(s.provider, s.subject_id), Lane::Other),
            Err(_) => (
                match &record.key {
                    Some(k) => OrderKey::KafkaKey(Arc::from(k.as_slice())),
                    None => OrderKey::Partition(record.topic.clone(), record.partition),
                },
                Lane::Other,
            ),
        };
        Self {
            record,
            decoded,
            key,
            lane,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &str, key: Option<&str>) -> InputRecord {
        InputRecord {
            topic: Arc::from("in"),
            partition: 3,
            offset: 7,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn keys_and_lanes() {
        let s = DecoderSettings::default();
        let id = "8263a268-5388-492a-bca2-28e1ff4a69f0";
        let cs = Job::new(
            record(
                &format!(r#"{{"analysisId":"{id}","date":"2025-09-26T17:21:11Z","type":"mfa"}}"#),
                None,
            ),
            &s,
        );
        assert_eq!(cs.lane, Lane::Provider(Provider::ClearSale));
        assert_eq!(cs.key.to_string(), format!("clearsale:{id}"));
        let skipped = Job::new(record(&format!(r#"{{"id":"{id}","status":1}}"#), None), &s);
        assert_eq!(skipped.lane, Lane::Other);
        assert_eq!(
            skipped.key,
            OrderKey::Subject(Provider::Unico, id.parse().unwrap())
        );
        let bad_keyed = Job::new(record("{not json", Some("k1")), &s);
        assert_eq!(bad_keyed.key.to_string(), "key:k1");
        assert_eq!(bad_keyed.lane, Lane::Other);
        let bad = Job::new(record("{not json", None), &s);
        assert_eq!(bad.key.to_string(), "partition:in:3");
    }
}
