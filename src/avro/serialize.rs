//! [`EnrichedRecord`] written straight to Avro binary, in the order of
//! `avro/enriched_event.avsc`, with no intermediate `Value` tree and no walk of the schema per
//! record.
//!
//! Every enriched event is encoded once, and going through apache-avro's generic writers cost
//! more than any other step of the service but the HTTP call (the `Value` tree: field names,
//! boxes and clones per record; the schema-aware serde writer: a schema lookup per field).
//! apache-avro stays the authority: it parses the schema, computes its fingerprint, decodes,
//! and the tests below check this writer byte for byte against apache-avro's own encoding of the
//! same record as a `Value` ([`super::value::to_avro_value`]), for fixed and for randomly built
//! records. A schema change that this writer does not follow fails those tests.
//!
//! The binary encoding (Avro 1.11 specification, "Binary Encoding"): `int` and `long` as
//! zig-zag varints; `string` as its byte length then the UTF-8 bytes; `double` as 8 bytes
//! little-endian; an enum as the index of its symbol; a union as the index of its branch then
//! the value; a record as its fields in order; an array as one block (item count, items) and a
//! zero count ending it.

use crate::provider::Provider;
use crate::record::{
    Biolink, ClearSaleDetails, Decision, EnrichedRecord, Insight, Insights, Lineage, Mfa,
    RecordTrigger, UnicoDetails,
};
use chrono::{DateTime, Utc};

/// Appends the Avro binary datum of `r` to `out`.
pub(super) fn write_record(r: &EnrichedRecord, out: &mut Vec<u8>) {
    uuid(out, &r.event_id);
    long(
        out,
        match r.provider {
            Provider::ClearSale => 0,
            Provider::Unico => 1,
        },
    );
    uuid(out, &r.subject_id);
    opt_str(out, r.transaction_id.as_deref());
    trigger(out, &r.trigger);
    // The variants are declared in the order of the schema's symbols (checked by a test).
    long(out, r.state as i64);
    opt(out, r.clearsale.as_ref(), clearsale);
    opt(out, r.unico.as_ref(), unico);
    opt_str(out, r.raw_response.as_deref());
    opt(out, r.lineage.as_ref(), lineage);
    long(out, r.enriched_at.timestamp_micros());
    long(out, i64::from(r.schema_version));
}

fn trigger(out: &mut Vec<u8>, t: &RecordTrigger) {
    opt_str(out, t.kind.as_deref());
    opt_int(out, t.status);
    opt_long(out, t.date.as_ref().map(micros));
}

fn clearsale(out: &mut Vec<u8>, d: &ClearSaleDetails) {
    opt(out, d.decision.as_ref(), decision);
    opt(out, d.insights.as_ref(), insights);
    opt(out, d.mfa.as_ref(), mfa);
    opt(out, d.biolink.as_ref(), biolink);
}

fn decision(out: &mut Vec<u8>, d: &Decision) {
    opt_str(out, d.status.as_deref());
    opt_double(out, d.score);
    opt_str(out, d.result.as_deref());
    opt_str(out, d.metadata.as_deref());
}

fn insights(out: &mut Vec<u8>, i: &Insights) {
    opt_str(out, i.status.as_deref());
    array(out, &i.results, insight);
}

fn insight(out: &mut Vec<u8>, i: &Insight) {
    opt_str(out, i.code.as_deref());
    opt_str(out, i.description.as_deref());
    opt_str(out, i.kind.as_deref());
    opt_str(out, i.category.as_deref());
    opt_str(out, i.relevance.as_deref());
    array(out, &i.related_to, |out, s| string(out, s));
}

fn mfa(out: &mut Vec<u8>, m: &Mfa) {
    opt_str(out, m.status.as_deref());
    opt_str(out, m.option.as_deref());
    opt_str(out, m.message.as_deref());
    opt_long(out, m.replied_at.as_ref().map(micros));
}

fn biolink(out: &mut Vec<u8>, b: &Biolink) {
    opt_str(out, b.status.as_deref());
    opt_str(out, b.identifier_id.as_deref());
    opt_double(out, b.score);
}

fn unico(out: &mut Vec<u8>, u: &UnicoDetails) {
    opt_int(out, u.process_status);
    opt_str(out, u.unico_id.as_deref());
    opt_str(out, u.identity_fraudsters.as_deref());
    opt_int(out, u.serpro);
    opt_int(out, u.liveness);
    opt_int(out, u.score);
}

fn lineage(out: &mut Vec<u8>, l: &Lineage) {
    string(out, &l.topic);
    long(out, i64::from(l.partition));
    long(out, l.offset);
    opt_long(out, l.timestamp.map(|t| t.timestamp_millis()));
}

fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A zig-zag varint (`int` and `long` alike: an `int`'s encoding is its `long`'s).
fn long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// The uuid logical type: the hyphenated lowercase text.
fn uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    string(out, id.hyphenated().encode_lower(&mut buf));
}

/// A `["null", T]` union.
fn opt<T: ?Sized>(out: &mut Vec<u8>, value: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(2); // branch 1, zig-zag encoded
            write(out, v);
        }
    }
}

fn opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    opt(out, value, string);
}

fn opt_int(out: &mut Vec<u8>, value: Option<i32>) {
    opt(out, value.as_ref(), |out, n| long(out, i64::from(*n)));
}

fn opt_long(out: &mut Vec<u8>, value: Option<i64>) {
    opt(out, value.as_ref(), |out, n| long(out, *n));
}

fn opt_double(out: &mut Vec<u8>, value: Option<f64>) {
    opt(out, value.as_ref(), |out, d| {
        out.extend_from_slice(&d.to_le_bytes())
    });
}

/// An array as one block, then the zero count that ends it.
fn array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        long(out, items.len() as i64);
        for item in items {
            write(out, item);
        }
    }
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::schema::schema;
    use crate::avro::value::to_avro_value;
    use crate::record::State;
    use apache_avro::writer::datum::GenericDatumWriter;
    use chrono::TimeZone;

    fn full() -> EnrichedRecord {
        let at = Utc.with_ymd_and_hms(2025, 9, 26, 17, 21, 11).unwrap();
        EnrichedRecord {
            event_id: uuid::Uuid::from_u128(0x1234),
            provider: Provider::ClearSale,
            subject_id: uuid::Uuid::from_u128(0xabcdef),
            transaction_id: Some("tx-1".into()),
            trigger: RecordTrigger {
                kind: Some("mfa".into()),
                status: None,
                date: Some(at),
            },
            state: State::Completed,
            clearsale: Some(ClearSaleDetails {
                decision: Some(Decision {
                    status: Some("APA".into()),
                    score: Some(12.5),
                    result: None,
                    metadata: Some("{\"k\":1}".into()),
                }),
                insights: Some(Insights {
                    status: None,
                    results: vec![Insight {
                        code: Some("7".into()),
                        kind: Some("risk".into()),
                        related_to: vec!["a".into(), "b".into()],
                        ..Default::default()
                    }],
                }),
                mfa: Some(Mfa {
                    status: Some("done".into()),
                    replied_at: Some(at),
                    ..Default::default()
                }),
                biolink: Some(Biolink {
                    status: Some("ok".into()),
                    identifier_id: Some("id".into()),
                    score: Some(0.9),
                }),
            }),
            unico: None,
            raw_response: Some("{\"analysisId\":\"x\"}".into()),
            lineage: Some(Lineage {
                topic: "webhooks.raw".into(),
                partition: 3,
                offset: 99,
                timestamp: Some(at),
            }),
            enriched_at: at,
            schema_version: 1,
        }
    }

    fn both_ways(r: &EnrichedRecord) -> (Vec<u8>, Vec<u8>) {
        let w = GenericDatumWriter::builder(schema().unwrap())
            .build()
            .unwrap();
        let by_value = w.write_value_to_vec(to_avro_value(r)).unwrap();
        let mut direct = Vec::new();
        write_record(r, &mut direct);
        (by_value, direct)
    }

    #[test]
    fn the_writer_writes_apache_avros_bytes_for_the_same_record() {
        let mut unico = full();
        unico.provider = Provider::Unico;
        unico.state = State::Divergent;
        unico.clearsale = None;
        unico.transaction_id = None;
        unico.trigger = RecordTrigger {
            kind: None,
            status: Some(2),
            date: None,
        };
        unico.unico = Some(UnicoDetails {
            process_status: Some(2),
            unico_id: Some("yes".into()),
            serpro: Some(-1),
            ..Default::default()
        });
        unico.raw_response = None;
        unico.lineage = None;
        let mut empty_modules = full();
        empty_modules.clearsale = Some(ClearSaleDetails::default());
        for state in State::ALL {
            let mut r = full();
            r.state = state;
            let (a, b) = both_ways(&r);
            assert_eq!(a, b, "state {state:?}");
        }
        for r in [full(), unico, empty_modules] {
            let (a, b) = both_ways(&r);
            assert_eq!(a, b);
        }
    }

    /// Records with every optional part present or absent at random, strings of every length
    /// class (varint boundaries) and non-ASCII text, numbers across the varint and sign ranges,
    /// arrays empty and long: the same bytes as apache-avro, and apache-avro reads them back.
    #[test]
    fn random_records_match_apache_avro_byte_for_byte() {
        use rand::SeedableRng;
        let mut g = Gen(rand::rngs::StdRng::seed_from_u64(7));
        let schema = schema().unwrap();
        for round in 0..500 {
            let r = g.record();
            let (a, b) = both_ways(&r);
            assert_eq!(a, b, "round {round}: {r:?}");
            // Deprecated in apache-avro 0.22 for `GenericDatumReader`; the plain reader is what
            // this test means: apache-avro's own decoding of our bytes.
            #[allow(deprecated)]
            let read = apache_avro::from_avro_datum(schema, &mut b.as_slice(), None).unwrap();
            assert_eq!(read, to_avro_value(&r), "round {round}");
        }
    }

    struct Gen(rand::rngs::StdRng);

    impl Gen {
        fn some(&mut self) -> bool {
            use rand::Rng;
            self.0.random_bool(0.5)
        }

        fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            if self.some() {
                Some(f(self))
            } else {
                None
            }
        }

        fn text(&mut self) -> String {
            use rand::Rng;
            let len = match self.0.random_range(0..4) {
                0 => 0,
                1 => self.0.random_range(1..64),
                2 => self.0.random_range(64..200),
                _ => self.0.random_range(8_000..20_000),
            };
            (0..len)
                .map(|_| match self.0.random_range(0..10) {
                    0 => 'é',
                    1 => '"',
                    2 => '€',
                    _ => char::from(self.0.random_range(b'a'..=b'z')),
                })
                .collect()
        }

        fn int(&mut self) -> i32 {
            use rand::Rng;
            match self.0.random_range(0..3) {
                0 => self.0.random_range(-70..70),
                1 => self.0.random(),
                _ => [i32::MIN, i32::MAX, -1, 0, 63, 64, -65][self.0.random_range(0..7)],
            }
        }

        fn long(&mut self) -> i64 {
            use rand::Rng;
            match self.0.random_range(0..3) {
                0 => self.0.random_range(-70..70),
                1 => self.0.random(),
                _ => [i64::MIN, i64::MAX, -1, 0, 8191, 8192, -8193][self.0.random_range(0..7)],
            }
        }

        fn at(&mut self) -> DateTime<Utc> {
            use rand::Rng;
            let micros = self
                .0
                .random_range(-2_000_000_000_000_000i64..4_000_000_000_000_000);
            DateTime::from_timestamp_micros(micros).unwrap()
        }

        fn double(&mut self) -> f64 {
            use rand::Rng;
            self.0.random_range(-1e9..1e9)
        }

        fn record(&mut self) -> EnrichedRecord {
            use rand::Rng;
            let clearsale = self.maybe(|g| ClearSaleDetails {
                decision: g.maybe(|g| Decision {
                    status: g.maybe(Gen::text),
                    score: g.maybe(Gen::double),
                    result: g.maybe(Gen::text),
                    metadata: g.maybe(Gen::text),
                }),
                insights: g.maybe(|g| Insights {
                    status: g.maybe(Gen::text),
                    results: (0..g.0.random_range(0..4))
                        .map(|_| Insight {
                            code: g.maybe(Gen::text),
                            description: g.maybe(Gen::text),
                            kind: g.maybe(Gen::text),
                            category: g.maybe(Gen::text),
                            relevance: g.maybe(Gen::text),
                            related_to: (0..g.0.random_range(0..3)).map(|_| g.text()).collect(),
                        })
                        .collect(),
                }),
                mfa: g.maybe(|g| Mfa {
                    status: g.maybe(Gen::text),
                    option: g.maybe(Gen::text),
                    message: g.maybe(Gen::text),
                    replied_at: g.maybe(Gen::at),
                }),
                biolink: g.maybe(|g| Biolink {
                    status: g.maybe(Gen::text),
                    identifier_id: g.maybe(Gen::text),
                    score: g.maybe(Gen::double),
                }),
            });
            EnrichedRecord {
                event_id: uuid::Uuid::from_u128(self.0.random()),
                provider: if self.some() {
                    Provider::ClearSale
                } else {
                    Provider::Unico
                },
                subject_id: uuid::Uuid::from_u128(self.0.random()),
                transaction_id: self.maybe(Gen::text),
                trigger: RecordTrigger {
                    kind: self.maybe(Gen::text),
                    status: self.maybe(Gen::int),
                    date: self.maybe(Gen::at),
                },
                state: State::ALL[self.0.random_range(0..State::ALL.len())],
                clearsale,
                unico: self.maybe(|g| UnicoDetails {
                    process_status: g.maybe(Gen::int),
                    unico_id: g.maybe(Gen::text),
                    identity_fraudsters: g.maybe(Gen::text),
                    serpro: g.maybe(Gen::int),
                    liveness: g.maybe(Gen::int),
                    score: g.maybe(Gen::int),
                }),
                raw_response: self.maybe(Gen::text),
                lineage: self.maybe(|g| Lineage {
                    topic: g.text(),
                    partition: g.int(),
                    offset: g.long(),
                    timestamp: g.maybe(|g| {
                        DateTime::from_timestamp_millis(g.at().timestamp_millis()).unwrap()
                    }),
                }),
                enriched_at: self.at(),
                schema_version: self.int(),
            }
        }
    }
}
