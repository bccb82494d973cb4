//! A consumed record with its decoding, its ordering key and its lane: what the consumer thread
//! hands to the dispatcher.

use super::flow::Lane;
use super::input::InputRecord;
use super::wait::Origin;
use crate::event::{Decoded, DecoderSettings, RawEvent, Rejection};
use crate::provider::Provider;
use crate::telemetry::Source;
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
    /// A record read back from a wait topic: ordered with the other wait-topic records of its
    /// key (in the wait partition's order), not with the input's. A record from the input that
    /// is diverted does not wait for them: it lands behind them in the wait partition anyway,
    /// and a lane processes the input directly only once its wait records are all done.
    Waiting(Arc<OrderKey>),
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderKey::Subject(p, id) => write!(f, "{p}:{id}"),
            OrderKey::KafkaKey(k) => write!(f, "key:{}", String::from_utf8_lossy(k)),
            OrderKey::Partition(t, p) => write!(f, "partition:{t}:{p}"),
            OrderKey::Waiting(k) => write!(f, "wait:{k}"),
        }
    }
}

/// A record with its decoding.
#[derive(Debug)]
pub struct Job {
    /// The record as consumed (its topic, partition and offset are what is committed).
    pub record: InputRecord,
    pub decoded: Result<Decoded, Rejection>,
    pub key: OrderKey,
    pub lane: Lane,
    /// Set for a record read back from this provider's wait topic.
    pub wait: Option<Provider>,
    /// For a wait-topic record, the input record it was diverted from (from its headers).
    pub origin: Option<Origin>,
    /// A bounded run (`replay`): the record's timestamp is outside the time window, so it is
    /// finished at once as filtered (see `bounds.rs`).
    pub filtered: bool,
    /// A bounded run with `--renormalize`: the record is an enriched record to rebuild from its
    /// `raw_response` (see `crate::renormalize`), not a webhook.
    pub renormalize: bool,
}

impl Job {
    /// Decodes a record and derives its ordering key and lane.
    pub fn new(record: InputRecord, settings: &DecoderSettings) -> Self {
        Self::decode(record, None, None, settings)
    }

    /// A record read back from `provider`'s wait topic: decoded as its input record was (with
    /// its input topic), in the provider's catch-up lane.
    pub fn from_wait(record: InputRecord, provider: Provider, settings: &DecoderSettings) -> Self {
        let origin = super::wait::origin(&record.headers);
        Self::decode(record, Some(provider), origin, settings)
    }

    fn decode(
        record: InputRecord,
        wait: Option<Provider>,
        origin: Option<Origin>,
        settings: &DecoderSettings,
    ) -> Self {
        let topic: &str = origin.as_ref().map_or(&record.topic, |o| &o.topic);
        let decoded = crate::event::decode(
            RawEvent {
                topic,
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
        let lane = match (wait, lane) {
            (Some(p), Lane::Provider(_)) => Lane::CatchUp(p),
            (_, lane) => lane,
        };
        let key = match wait {
            Some(_) => OrderKey::Waiting(Arc::new(key)),
            None => key,
        };
        Self {
            record,
            decoded,
            key,
            lane,
            wait,
            origin,
            filtered: false,
            renormalize: false,
        }
    }

    /// This record, to be rebuilt from its `raw_response` rather than enriched: it calls no
    /// provider, so it takes no provider's place in the budget; it stays in its Kafka key's order.
    pub fn renormalizing(mut self) -> Self {
        self.renormalize = true;
        self.lane = Lane::Other;
        self
    }

    /// This record, finished as filtered out by time: it calls no provider, so it takes no
    /// provider's place in the budget.
    pub fn filtered_by_time(mut self) -> Self {
        self.filtered = true;
        self.lane = Lane::Other;
        self
    }

    /// The input record this job stands for (what lineage, dead letters and log lines name): its
    /// origin for a wait-topic record, else itself.
    pub fn source(&self) -> Source<'_> {
        match &self.origin {
            Some(o) => Source {
                topic: &o.topic,
                partition: o.partition,
                offset: o.offset,
                timestamp_ms: o.timestamp_ms,
            },
            None => Source {
                topic: &self.record.topic,
                partition: self.record.partition,
                offset: self.record.offset,
                timestamp_ms: self.record.timestamp_ms,
            },
        }
    }

    /// The provider this record will call, when it calls one.
    pub fn provider(&self) -> Option<Provider> {
        match &self.decoded {
            Ok(Decoded::Enrich(e)) => Some(e.provider),
            _ => None,
        }
    }

    /// The lane (provider, input partition number) of an input record that calls a provider.
    pub fn input_lane(&self) -> Option<(Provider, i32)> {
        match self.wait {
            None => self.provider().map(|p| (p, self.record.partition)),
            Some(_) => None,
        }
    }

    /// The lane an input record is charged to when nothing is diverted: its provider's, or
    /// `Other` for a record that calls no provider. (A record held while its provider was
    /// diverted may have been charged to `Other`; it is charged again when it is admitted.)
    pub fn lane_for_input(&self) -> Lane {
        match (self.wait, self.provider()) {
            (None, Some(p)) => Lane::Provider(p),
            _ => self.lane,
        }
    }

    /// The lane of a record read back from a wait topic.
    pub fn wait_lane(&self) -> Option<(Provider, i32)> {
        self.wait.map(|p| (p, self.record.partition))
    }

    /// A record read back from a wait topic for a retry round (a poison record).
    pub fn in_retry_round(&self) -> bool {
        self.wait.is_some() && self.origin.as_ref().is_some_and(|o| o.in_retry_round())
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
