//! [`EnrichedRecord`] as a `serde::Serialize` view in the schema's shape, for apache-avro's
//! schema-aware serializer ([`apache_avro::GenericDatumWriter::write_ser`]): the record is
//! written straight to bytes, without building an Avro `Value` tree (field names, boxes and
//! clones per record) and validating it.
//!
//! The view borrows the record. Field order and names follow `avro/enriched_event.avsc`; the
//! `["null", T]` unions are `Option`s; enums are written by their symbol index. The test below
//! checks the bytes against the `Value` path ([`super::value::to_avro_value`]).

use crate::provider::Provider;
use crate::record::{
    Biolink, ClearSaleDetails, Decision, EnrichedRecord, Insight, Insights, Lineage, Mfa,
    RecordTrigger, State, UnicoDetails,
};
use chrono::{DateTime, Utc};
use serde::ser::{Serialize, Serializer};

/// The record, in the schema's shape.
#[derive(serde::Serialize)]
pub(super) struct EnrichedEventView<'a> {
    event_id: UuidText,
    provider: ProviderSymbol,
    subject_id: UuidText,
    transaction_id: Option<&'a str>,
    trigger: TriggerView<'a>,
    state: StateSymbol,
    clearsale: Option<ClearSaleView<'a>>,
    unico: Option<UnicoView<'a>>,
    raw_response: Option<&'a str>,
    lineage: Option<LineageView<'a>>,
    enriched_at: i64,
    schema_version: i32,
}

impl<'a> EnrichedEventView<'a> {
    pub(super) fn new(r: &'a EnrichedRecord) -> Self {
        Self {
            event_id: UuidText(r.event_id),
            provider: ProviderSymbol(r.provider),
            subject_id: UuidText(r.subject_id),
            transaction_id: r.transaction_id.as_deref(),
            trigger: TriggerView::new(&r.trigger),
            state: StateSymbol(r.state),
            clearsale: r.clearsale.as_ref().map(ClearSaleView::new),
            unico: r.unico.as_ref().map(UnicoView::new),
            raw_response: r.raw_response.as_deref(),
            lineage: r.lineage.as_ref().map(LineageView::new),
            enriched_at: r.enriched_at.timestamp_micros(),
            schema_version: r.schema_version,
        }
    }
}

/// A uuid logical type: the hyphenated lowercase text, formatted on the stack.
struct UuidText(uuid::Uuid);

impl Serialize for UuidText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

struct ProviderSymbol(Provider);

impl Serialize for ProviderSymbol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (index, symbol) = match self.0 {
            Provider::ClearSale => (0, "CLEARSALE"),
            Provider::Unico => (1, "UNICO"),
        };
        s.serialize_unit_variant("Provider", index, symbol)
    }
}

struct StateSymbol(State);

impl Serialize for StateSymbol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The variants are declared in the order of the schema's symbols (checked by a test).
        s.serialize_unit_variant("State", self.0 as u32, self.0.symbol())
    }
}

fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

#[derive(serde::Serialize)]
struct TriggerView<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    status: Option<i32>,
    date: Option<i64>,
}

impl<'a> TriggerView<'a> {
    fn new(t: &'a RecordTrigger) -> Self {
        Self {
            kind: t.kind.as_deref(),
            status: t.status,
            date: t.date.as_ref().map(micros),
        }
    }
}

#[derive(serde::Serialize)]
struct ClearSaleView<'a> {
    decision: Option<DecisionView<'a>>,
    insights: Option<InsightsView<'a>>,
    mfa: Option<MfaView<'a>>,
    biolink: Option<BiolinkView<'a>>,
}

impl<'a> ClearSaleView<'a> {
    fn new(d: &'a ClearSaleDetails) -> Self {
        Self {
            decision: d.decision.as_ref().map(DecisionView::new),
            insights: d.insights.as_ref().map(InsightsView::new),
            mfa: d.mfa.as_ref().map(MfaView::new),
            biolink: d.biolink.as_ref().map(BiolinkView::new),
        }
    }
}

#[derive(serde::Serialize)]
struct DecisionView<'a> {
    status: Option<&'a str>,
    score: Option<f64>,
    result: Option<&'a str>,
    metadata: Option<&'a str>,
}

impl<'a> DecisionView<'a> {
    fn new(d: &'a Decision) -> Self {
        Self {
            status: d.status.as_deref(),
            score: d.score,
            result: d.result.as_deref(),
            metadata: d.metadata.as_deref(),
        }
    }
}

#[derive(serde::Serialize)]
struct InsightsView<'a> {
    status: Option<&'a str>,
    results: Vec<InsightView<'a>>,
}

impl<'a> InsightsView<'a> {
    fn new(i: &'a Insights) -> Self {
        Self {
            status: i.status.as_deref(),
            results: i.results.iter().map(InsightView::new).collect(),
        }
    }
}

#[derive(serde::Serialize)]
struct InsightView<'a> {
    code: Option<&'a str>,
    description: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    category: Option<&'a str>,
    relevance: Option<&'a str>,
    related_to: &'a [String],
}

impl<'a> InsightView<'a> {
    fn new(i: &'a Insight) -> Self {
        Self {
            code: i.code.as_deref(),
            description: i.description.as_deref(),
            kind: i.kind.as_deref(),
            category: i.category.as_deref(),
            relevance: i.relevance.as_deref(),
            related_to: &i.related_to,
        }
    }
}

#[derive(serde::Serialize)]
struct MfaView<'a> {
    status: Option<&'a str>,
    option: Option<&'a str>,
    message: Option<&'a str>,
    replied_at: Option<i64>,
}

impl<'a> MfaView<'a> {
    fn new(m: &'a Mfa) -> Self {
        Self {
            status: m.status.as_deref(),
            option: m.option.as_deref(),
            message: m.message.as_deref(),
            replied_at: m.replied_at.as_ref().map(micros),
        }
    }
}

#[derive(serde::Serialize)]
struct BiolinkView<'a> {
    status: Option<&'a str>,
    identifier_id: Option<&'a str>,
    score: Option<f64>,
}

impl<'a> BiolinkView<'a> {
    fn new(b: &'a Biolink) -> Self {
        Self {
            status: b.status.as_deref(),
            identifier_id: b.identifier_id.as_deref(),
            score: b.score,
        }
    }
}

#[derive(serde::Serialize)]
struct UnicoView<'a> {
    process_status: Option<i32>,
    unico_id: Option<&'a str>,
    identity_fraudsters: Option<&'a str>,
    serpro: Option<i32>,
    liveness: Option<i32>,
    score: Option<i32>,
}

impl<'a> UnicoView<'a> {
    fn new(u: &'a UnicoDetails) -> Self {
        Self {
            process_status: u.process_status,
            unico_id: u.unico_id.as_deref(),
            identity_fraudsters: u.identity_fraudsters.as_deref(),
            serpro: u.serpro,
            liveness: u.liveness,
            score: u.score,
        }
    }
}

#[derive(serde::Serialize)]
struct LineageView<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
}

impl<'a> LineageView<'a> {
    fn new(l: &'a Lineage) -> Self {
        Self {
            topic: &l.topic,
            partition: l.partition,
            offset: l.offset,
            timestamp: l.timestamp.map(|t| t.timestamp_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::schema::schema;
    use crate::avro::value::to_avro_value;
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
        let by_ser = w.write_ser_to_vec(&EnrichedEventView::new(r)).unwrap();
        (by_value, by_ser)
    }

    #[test]
    fn the_serde_view_writes_the_same_bytes_as_the_value_tree() {
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
}
