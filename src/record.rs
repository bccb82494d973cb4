//! The normalized, provider-neutral record published for every enriched webhook
//! ([`EnrichedRecord`]), and [`normalize`], which builds it from the webhook and the provider's
//! answer.
//!
//! The struct mirrors the Avro schema `io.webhookenricher.v1.EnrichedEvent`
//! (`avro/enriched_event.avsc`) field for field; [`crate::avro`] turns it into Avro.
//!
//! # State mapping
//!
//! | provider | input | [`State`] |
//! |---|---|---|
//! | ClearSale | the module named by the webhook `type` (`mfa`, `biolink`, `decision`/`score`, `insights`; case-insensitive) is absent from the analysis, or `type` names no known module | `UNKNOWN` |
//! | ClearSale | the fetcher gave up while the module still read pending (`still_pending`), or its status is `pending` / `processing` / `waiting` | `PENDING` |
//! | ClearSale | status `cancelled` / `canceled` | `CANCELLED` |
//! | ClearSale | status `error` / `failed` / `expired` | `FAILED` |
//! | ClearSale | any other non-empty status | `COMPLETED` |
//! | ClearSale | the module has no (or an empty) status | `UNKNOWN` |
//! | Unico | process status 1 (the API's; the webhook's when the API omits it) | `PENDING` |
//! | Unico | status 2 | `DIVERGENT` |
//! | Unico | status 3 | `COMPLETED` (the only decision-grade Unico state) |
//! | Unico | status 4 | `CANCELLED` |
//! | Unico | status 5, or the API answered `410 Gone` ([`Fetched::UnicoGone`]) | `FAILED` |
//! | Unico | any other status, or none | `UNKNOWN` |
//!
//! Statuses are compared case-insensitively, surrounding whitespace ignored.

use crate::datetime::parse_provider_datetime;
use crate::event::{Trigger, WebhookEvent};
use crate::provider::clearsale::model::{
    is_pending_status, Analysis, BiolinkModule, DecisionModule, InsightsModule, MfaModule,
};
use crate::provider::unico::model::Process;
use crate::provider::{Fetched, Provider};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The version written in `schema_version` by this build (the `v1` in the schema namespace).
pub const SCHEMA_VERSION: i32 = 1;

/// The record published on the output topic; mirrors `io.webhookenricher.v1.EnrichedEvent`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichedRecord {
    /// Stable id of the webhook event (the downstream idempotency key).
    pub event_id: Uuid,
    /// Which provider sent the webhook.
    pub provider: Provider,
    /// ClearSale analysisId or Unico process id.
    pub subject_id: Uuid,
    /// ClearSale transactionId; `None` for Unico.
    pub transaction_id: Option<String>,
    /// What the webhook said changed.
    pub trigger: RecordTrigger,
    /// Normalized state (see the module docs for the mapping).
    pub state: State,
    /// ClearSale modules; `None` for Unico.
    pub clearsale: Option<ClearSaleDetails>,
    /// Unico process details; `None` for ClearSale and for a `410 Gone` process.
    pub unico: Option<UnicoDetails>,
    /// The API response body as JSON text, when raw copies are enabled and there was a body.
    pub raw_response: Option<String>,
    /// Where the webhook was read from on Kafka.
    pub lineage: Option<Lineage>,
    /// When this record was built.
    pub enriched_at: DateTime<Utc>,
    /// The schema version written ([`SCHEMA_VERSION`]).
    pub schema_version: i32,
}

/// The webhook's trigger, in the record's shape (Avro record `Trigger`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordTrigger {
    /// ClearSale webhook `type`; `None` for Unico.
    pub kind: Option<String>,
    /// Unico webhook `status`; `None` for ClearSale.
    pub status: Option<i32>,
    /// ClearSale webhook `date`; `None` for Unico (its webhook has no date).
    pub date: Option<DateTime<Utc>>,
}

/// The normalized state of a result. The Avro symbols are the upper-case names; the variants are
/// declared in the order of the schema's symbols (the Avro enum index is `state as u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No result yet.
    Pending,
    /// A final result (for Unico: status 3, the only decision-grade state).
    Completed,
    /// Unico status 2: the identity data diverged.
    Divergent,
    /// Cancelled by the provider or the customer.
    Cancelled,
    /// The provider ended the analysis/process in error.
    Failed,
    /// The state could not be determined.
    Unknown,
}

impl State {
    /// Every state, in the order of the Avro enum's symbols.
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Completed,
        State::Divergent,
        State::Cancelled,
        State::Failed,
        State::Unknown,
    ];

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Completed => "COMPLETED",
            State::Divergent => "DIVERGENT",
            State::Cancelled => "CANCELLED",
            State::Failed => "FAILED",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// Kafka coordinates of the raw webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Kafka timestamp of the input record (millisecond precision on the wire).
    pub timestamp: Option<DateTime<Utc>>,
}

/// The ClearSale modules present in the analysis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClearSaleDetails {
    /// Score / Decision module.
    pub decision: Option<Decision>,
    /// Insights module.
    pub insights: Option<Insights>,
    /// MFA module.
    pub mfa: Option<Mfa>,
    /// Biolink module.
    pub biolink: Option<Biolink>,
}

/// The Score / Decision module.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Status as sent.
    pub status: Option<String>,
    /// Score.
    pub score: Option<f64>,
    /// Decision result.
    pub result: Option<String>,
    /// Free-form metadata as JSON text.
    pub metadata: Option<String>,
}

/// The Insights module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Insights {
    /// Status as sent.
    pub status: Option<String>,
    /// The insights.
    pub results: Vec<Insight>,
}

/// One insight.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Insight {
    /// Code (numbers kept as text).
    pub code: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Insight `type`.
    pub kind: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Relevance.
    pub relevance: Option<String>,
    /// `relatedTo[]`; non-string items as JSON text.
    pub related_to: Vec<String>,
}

/// The MFA module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mfa {
    /// Status as sent.
    pub status: Option<String>,
    /// MFA option.
    pub option: Option<String>,
    /// MFA message.
    pub message: Option<String>,
    /// `repliedAt`, parsed; `None` when absent or unparseable.
    pub replied_at: Option<DateTime<Utc>>,
}

/// The Biolink module.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Biolink {
    /// Status as sent.
    pub status: Option<String>,
    /// `identifierId`.
    pub identifier_id: Option<String>,
    /// Score.
    pub score: Option<f64>,
}

/// The Unico process details.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnicoDetails {
    /// Process status from the API.
    pub process_status: Option<i32>,
    /// `unicoId.result`.
    pub unico_id: Option<String>,
    /// `identityFraudsters.result`.
    pub identity_fraudsters: Option<String>,
    /// `government.serpro`.
    pub serpro: Option<i32>,
    /// `liveness`.
    pub liveness: Option<i32>,
    /// `score`.
    pub score: Option<i32>,
}

/// Builds the record for one webhook and the provider's answer.
///
/// `include_raw` keeps the API response body as JSON text in `raw_response`. Never fails: fields
/// the provider omitted or sent in an unexpected form are `None`. If `fetched` is from the other
/// provider than `event` (a caller bug), no details are filled and the state is `UNKNOWN`.
pub fn normalize(
    event: &WebhookEvent,
    fetched: &Fetched,
    lineage: Option<Lineage>,
    include_raw: bool,
    enriched_at: DateTime<Utc>,
) -> EnrichedRecord {
    let trigger = match &event.trigger {
        Trigger::ClearSale { module_type, date } => RecordTrigger {
            kind: Some(module_type.clone()),
            status: None,
            date: Some(*date),
        },
        Trigger::Unico { status } => RecordTrigger {
            kind: None,
            status: Some(i32::from(*status)),
            date: None,
        },
    };
    let mut record = EnrichedRecord {
        event_id: event.event_id,
        provider: event.provider,
        subject_id: event.subject_id,
        transaction_id: None,
        trigger,
        state: State::Unknown,
        clearsale: None,
        unico: None,
        raw_response: None,
        lineage,
        enriched_at,
        schema_version: SCHEMA_VERSION,
    };
    let raw = match (event.provider, &event.trigger, fetched) {
        (
            Provider::ClearSale,
            Trigger::ClearSale { module_type, .. },
            Fetched::ClearSale {
                analysis,
                raw,
                still_pending,
            },
        ) => {
            record.transaction_id = analysis.transaction_id.clone();
            record.state = clearsale_state(analysis, module_type, *still_pending);
            record.clearsale = Some(clearsale_details(analysis));
            Some(raw)
        }
        (Provider::Unico, Trigger::Unico { status }, Fetched::Unico { process, raw }) => {
            record.state = unico_state(process.status.unwrap_or(i64::from(*status)));
            record.unico = Some(unico_details(process));
            Some(raw)
        }
        (Provider::Unico, _, Fetched::UnicoGone) => {
            record.state = State::Failed;
            None
        }
        _ => None,
    };
    if include_raw {
        record.raw_response = raw.cloned();
    }
    record
}

/// The ClearSale row of the state table (see the module docs).
fn clearsale_state(analysis: &Analysis, module_type: &str, still_pending: bool) -> State {
    if !module_present(analysis, module_type) {
        return State::Unknown;
    }
    let status = analysis
        .module_status(module_type)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if still_pending || status.is_some_and(is_pending_status) {
        return State::Pending;
    }
    match status.map(str::to_ascii_lowercase).as_deref() {
        None => State::Unknown,
        Some("cancelled" | "canceled") => State::Cancelled,
        Some("error" | "failed" | "expired") => State::Failed,
        Some(_) => State::Completed,
    }
}

/// Whether the module a webhook `type` names is in the analysis (same names as
/// [`Analysis::module_status`]).
fn module_present(analysis: &Analysis, module_type: &str) -> bool {
    match module_type.trim().to_ascii_lowercase().as_str() {
        "mfa" => analysis.mfa.is_some(),
        "biolink" => analysis.biolink.is_some(),
        "decision" | "score" => analysis.decision.is_some(),
        "insights" => analysis.insights.is_some(),
        _ => false,
    }
}

/// The Unico row of the state table (see the module docs).
fn unico_state(status: i64) -> State {
    match status {
        1 => State::Pending,
        2 => State::Divergent,
        3 => State::Completed,
        4 => State::Cancelled,
        5 => State::Failed,
        _ => State::Unknown,
    }
}

fn clearsale_details(analysis: &Analysis) -> ClearSaleDetails {
    ClearSaleDetails {
        decision: analysis.decision.as_ref().map(decision),
        insights: analysis.insights.as_ref().map(insights),
        mfa: analysis.mfa.as_ref().map(mfa),
        biolink: analysis.biolink.as_ref().map(biolink),
    }
}

fn decision(m: &DecisionModule) -> Decision {
    Decision {
        status: m.status.clone(),
        score: m.score,
        result: m.result.clone(),
        metadata: m
            .metadata
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| v.to_string()),
    }
}

fn insights(m: &InsightsModule) -> Insights {
    Insights {
        status: m.status.clone(),
        results: m
            .result
            .iter()
            .map(|i| Insight {
                code: i.code.clone(),
                description: i.description.clone(),
                kind: i.kind.clone(),
                category: i.category.clone(),
                relevance: i.relevance.clone(),
                related_to: i
                    .related_to
                    .iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn mfa(m: &MfaModule) -> Mfa {
    Mfa {
        status: m.status.clone(),
        option: m.option.clone(),
        message: m.message.clone(),
        replied_at: m
            .replied_at
            .as_deref()
            .and_then(|t| parse_provider_datetime(t).ok()),
    }
}

fn biolink(m: &BiolinkModule) -> Biolink {
    Biolink {
        status: m.status.clone(),
        identifier_id: m.identifier_id.clone(),
        score: m.score,
    }
}

fn unico_details(p: &Process) -> UnicoDetails {
    let int = |v: Option<i64>| v.and_then(|n| i32::try_from(n).ok());
    UnicoDetails {
        process_status: int(p.status),
        unico_id: p.unico_id.as_ref().and_then(|r| r.result.clone()),
        identity_fraudsters: p
            .identity_fraudsters
            .as_ref()
            .and_then(|r| r.result.clone()),
        serpro: int(p.government.as_ref().and_then(|g| g.serpro)),
        liveness: int(p.liveness),
        score: int(p.score),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 9, 26, 17, 22, 0).unwrap()
    }

    fn clearsale_event(module_type: &str) -> WebhookEvent {
        WebhookEvent::new(
            Provider::ClearSale,
            "8263a268-5388-492a-bca2-28e1ff4a69f0".parse().unwrap(),
            Trigger::ClearSale {
                module_type: module_type.into(),
                date: Utc.with_ymd_and_hms(2025, 9, 26, 17, 21, 11).unwrap(),
            },
        )
    }

    fn with_mfa_status(status: Option<&str>) -> Fetched {
        let analysis = Analysis {
            mfa: Some(MfaModule {
                status: status.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        };
        Fetched::ClearSale {
            analysis,
            raw: serde_json::json!({}).to_string(),
            still_pending: false,
        }
    }

    #[test]
    fn clearsale_status_words() {
        let e = clearsale_event("MFA");
        let state = |s: Option<&str>| normalize(&e, &with_mfa_status(s), None, false, at()).state;
        assert_eq!(state(Some("Pending")), State::Pending);
        assert_eq!(state(Some("processing")), State::Pending);
        assert_eq!(state(Some("waiting")), State::Pending);
        assert_eq!(state(Some("canceled")), State::Cancelled);
        assert_eq!(state(Some(" Cancelled ")), State::Cancelled);
        assert_eq!(state(Some("ERROR")), State::Failed);
        assert_eq!(state(Some("failed")), State::Failed);
        assert_eq!(state(Some("expired")), State::Failed);
        assert_eq!(state(Some("approved")), State::Completed);
        assert_eq!(state(Some("  ")), State::Unknown);
        assert_eq!(state(None), State::Unknown);
    }

    #[test]
    fn still_pending_wins_over_the_status() {
        let e = clearsale_event("mfa");
        let Fetched::ClearSale { analysis, raw, .. } = with_mfa_status(None) else {
            unreachable!()
        };
        let f = Fetched::ClearSale {
            analysis,
            raw,
            still_pending: true,
        };
        assert_eq!(normalize(&e, &f, None, false, at()).state, State::Pending);
    }

    #[test]
    fn unknown_module_type_is_unknown() {
        let e = clearsale_event("facematch");
        let r = normalize(&e, &with_mfa_status(Some("done")), None, false, at());
        assert_eq!(r.state, State::Unknown);
        assert!(r.clearsale.unwrap().mfa.is_some());
    }

    #[test]
    fn unparseable_replied_at_is_null_not_an_error() {
        let analysis = Analysis {
            mfa: Some(MfaModule {
                status: Some("done".into()),
                replied_at: Some("yesterday".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = Fetched::ClearSale {
            analysis,
            raw: serde_json::json!({}).to_string(),
            still_pending: false,
        };
        let r = normalize(&clearsale_event("mfa"), &f, None, false, at());
        let mfa = r.clearsale.unwrap().mfa.unwrap();
        assert_eq!(mfa.status.as_deref(), Some("done"));
        assert_eq!(mfa.replied_at, None);
    }

    #[test]
    fn mismatched_provider_fills_nothing() {
        let f = Fetched::Unico {
            process: Process::default(),
            raw: serde_json::json!({"status": 3}).to_string(),
        };
        let r = normalize(&clearsale_event("mfa"), &f, None, true, at());
        assert_eq!(r.state, State::Unknown);
        assert!(r.clearsale.is_none() && r.unico.is_none() && r.raw_response.is_none());
    }

    #[test]
    fn unico_falls_back_to_the_webhook_status() {
        let e = WebhookEvent::new(
            Provider::Unico,
            "8263a268-5388-492a-bca2-28e1ff4a69f0".parse().unwrap(),
            Trigger::Unico { status: 2 },
        );
        let f = Fetched::Unico {
            process: Process::default(),
            raw: serde_json::json!({}).to_string(),
        };
        let r = normalize(&e, &f, None, false, at());
        assert_eq!(r.state, State::Divergent);
        assert_eq!(r.unico.unwrap().process_status, None);
        assert_eq!(r.trigger.status, Some(2));
    }
}
