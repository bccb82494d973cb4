//! The webhook decoder as the consumer thread runs it: a Kafka record (topic, key, headers,
//! value) becomes a decoded event or a rejection, with its ordering key and lane
//! (`engine::job::Job::new`, which calls `event::decode`).
//!
//! Input layout (see `fuzz/make_seeds.py`): byte 0 is flags (bits 0-1: the topic, plain or
//! mapped to a provider in `input.topic_providers`; bit 2: no value; bit 3: a Kafka key), byte 1
//! the number of headers (mod 4); each header is a name byte (an index into `HEADER_NAMES`) and a
//! length byte (255: a null value) followed by the value; with bit 3 a length byte and the key;
//! the rest is the value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use webhook_enricher::engine::flow::Lane;
use webhook_enricher::engine::input::InputRecord;
use webhook_enricher::engine::job::{Job, OrderKey};
use webhook_enricher::event::{event_id, Decoded, DecoderSettings, Trigger};
use webhook_enricher::provider::Provider;

const TOPICS: [&str; 4] = ["webhooks.raw", "unico-raw", "clearsale-raw", "other"];
const HEADER_NAMES: [&str; 4] = ["provider", "Provider", "PROVIDER", "content-type"];

fn settings() -> &'static DecoderSettings {
    static SETTINGS: OnceLock<DecoderSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let mut s = DecoderSettings::default();
        s.topic_providers.insert(TOPICS[1].into(), Provider::Unico);
        s.topic_providers
            .insert(TOPICS[2].into(), Provider::ClearSale);
        s
    })
}

/// Splits off `len` bytes (or what is left).
fn take<'a>(data: &mut &'a [u8], len: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(len.min(data.len()));
    *data = tail;
    head
}

fn byte(data: &mut &[u8]) -> Option<u8> {
    take(data, 1).first().copied()
}

fn record(mut data: &[u8]) -> Option<InputRecord> {
    let flags = byte(&mut data)?;
    let count = byte(&mut data)? % 4;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = HEADER_NAMES[usize::from(byte(&mut data)? % 4)];
        let value = match byte(&mut data)? {
            255 => None,
            len => Some(take(&mut data, usize::from(len)).to_vec()),
        };
        headers.push((name.to_string(), value));
    }
    let key = if flags & 8 != 0 {
        let len = byte(&mut data)?;
        Some(take(&mut data, usize::from(len)).to_vec())
    } else {
        None
    };
    let payload = (flags & 4 == 0).then(|| data.to_vec());
    Some(InputRecord {
        topic: Arc::from(TOPICS[usize::from(flags & 3)]),
        partition: 3,
        offset: 7,
        key,
        payload,
        headers,
        timestamp_ms: Some(1_700_000_000_000),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(record) = record(data) else {
        return;
    };
    let payload = record.payload.clone();
    let again = Job::new(record.clone(), settings());
    let job = Job::new(record, settings());
    assert_eq!(job.decoded, again.decoded, "decoding is deterministic");
    assert_eq!(job.key, again.key);
    match &job.decoded {
        Ok(Decoded::Enrich(e)) => {
            assert_eq!(e.event_id, event_id(e.provider, e.subject_id, &e.trigger));
            assert_eq!(job.key, OrderKey::Subject(e.provider, e.subject_id));
            assert_eq!(job.lane, Lane::Provider(e.provider));
            match &e.trigger {
                Trigger::ClearSale { module_type, .. } => {
                    assert_eq!(e.provider, Provider::ClearSale);
                    assert!(!module_type.is_empty() && module_type.len() <= 64);
                    assert_eq!(module_type.trim(), module_type);
                    assert_eq!(e.route(), Some(module_type.as_str()));
                }
                Trigger::Unico { status } => {
                    assert_eq!(e.provider, Provider::Unico);
                    assert!(settings().unico_statuses.contains(status));
                    assert_eq!(e.route(), None);
                }
            }
        }
        Ok(Decoded::Skip(s)) => {
            assert_eq!(s.provider, Provider::Unico);
            assert_eq!(job.key, OrderKey::Subject(s.provider, s.subject_id));
            assert_eq!(job.lane, Lane::Other);
        }
        Err(rejection) => {
            assert_eq!(job.lane, Lane::Other);
            assert!(!matches!(job.key, OrderKey::Subject(..)));
            // The reason becomes a dead-letter header and a log field: short, and never the
            // payload (it may hold personal data).
            let reason = &rejection.reason;
            assert!(reason.len() <= 512, "a {} byte reason", reason.len());
            if let Some(p) = payload.as_deref().filter(|p| p.len() >= 64) {
                let text = String::from_utf8_lossy(p);
                assert!(
                    !reason.contains(text.as_ref()),
                    "the payload is in the reason"
                );
            }
        }
    }
});
