//! The preloaded input: raw webhooks of both providers with exact repeats and malformed records,
//! and what the service must make of them (decided by the service's own decoder, so the
//! expectation is exact).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;
use webhook_enricher::event::{self, Decoded, DecoderSettings, RawEvent};
use webhook_enricher::provider::Provider;

/// One raw record to produce.
pub struct RawRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// How the input is made.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Records in all.
    pub events: usize,
    /// Share of records that are exact repeats of an earlier record.
    pub duplicate_share: f64,
    /// Share of records that are malformed (dead-lettered).
    pub malformed_share: f64,
    /// Share of unique valid events that are Unico's (the rest are ClearSale's).
    pub unico_share: f64,
    pub seed: u64,
}

/// What the service must produce from the input.
#[derive(Default)]
pub struct Expected {
    /// `event_id`s that must appear exactly once on the ClearSale output topic.
    pub clearsale: HashSet<Uuid>,
    /// `event_id`s that must appear exactly once on the Unico output topic.
    pub unico: HashSet<Uuid>,
    /// Records that must be dead-lettered.
    pub dead_letters: usize,
    /// Exact repeats (dropped by dedupe).
    pub duplicates: usize,
    /// The index of each unique event's record in the input.
    pub first_index: HashMap<Uuid, usize>,
}

impl Expected {
    pub fn outputs(&self) -> usize {
        self.clearsale.len() + self.unico.len()
    }

    /// Every record that lands on an output or the dead-letter topic.
    pub fn landed(&self) -> usize {
        self.outputs() + self.dead_letters
    }
}

pub struct Workload {
    pub records: Vec<RawRecord>,
    pub expected: Expected,
}

const CLEARSALE_TYPES: [&str; 4] = ["mfa", "biolink", "decision", "insights"];

/// Builds the input. The decoder of the service decides what each record is.
pub fn generate(mix: Mix, input_topic: &str) -> Workload {
    let mut rng = StdRng::seed_from_u64(mix.seed);
    let decoder = DecoderSettings::default();
    let mut records: Vec<RawRecord> = Vec::with_capacity(mix.events);
    let mut uniques: Vec<usize> = Vec::new();
    let mut expected = Expected::default();
    for n in 0..mix.events {
        let roll: f64 = rng.random();
        let record = if roll < mix.malformed_share {
            malformed(&mut rng, n)
        } else if roll < mix.malformed_share + mix.duplicate_share && !uniques.is_empty() {
            let original = &records[uniques[rng.random_range(0..uniques.len())]];
            expected.duplicates += 1;
            records.push(RawRecord {
                key: original.key.clone(),
                value: original.value.clone(),
            });
            continue;
        } else {
            uniques.push(records.len());
            valid(&mut rng, mix.unico_share)
        };
        let raw = RawEvent {
            topic: input_topic,
            payload: Some(&record.value),
            provider_header: None,
        };
        match event::decode(raw, &decoder) {
            Ok(Decoded::Enrich(e)) => {
                let set = match e.provider {
                    Provider::ClearSale => &mut expected.clearsale,
                    Provider::Unico => &mut expected.unico,
                };
                assert!(set.insert(e.event_id), "generated the same event twice");
                expected.first_index.insert(e.event_id, records.len());
            }
            Ok(Decoded::Skip(_)) => unreachable!("the generator only makes enriched statuses"),
            Err(_) => expected.dead_letters += 1,
        }
        records.push(record);
    }
    Workload { records, expected }
}

fn random_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn valid(rng: &mut StdRng, unico_share: f64) -> RawRecord {
    let id = random_uuid(rng);
    let value = if rng.random::<f64>() < unico_share {
        let status = rng.random_range(2..=5);
        format!(r#"{{"id":"{id}","status":"{status}"}}"#)
    } else {
        let kind = CLEARSALE_TYPES[rng.random_range(0..CLEARSALE_TYPES.len())];
        let seconds = rng.random_range(0..86_400);
        format!(
            r#"{{"analysisId":"{id}","date":"2026-11-30T{:02}:{:02}:{:02}.0367845Z","type":"{kind}"}}"#,
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    };
    RawRecord {
        key: id.to_string().into_bytes(),
        value: value.into_bytes(),
    }
}

fn malformed(rng: &mut StdRng, n: usize) -> RawRecord {
    let value = match n % 4 {
        0 => "{not json".to_string(),
        1 => r#"{"analysisId":"not-a-guid","date":"2026-11-30T10:00:00Z","type":"mfa"}"#.into(),
        2 => format!(r#"{{"id":"{}","status":"nine"}}"#, random_uuid(rng)),
        _ => "{}".into(),
    };
    RawRecord {
        key: format!("malformed-{n}").into_bytes(),
        value: value.into_bytes(),
    }
}
