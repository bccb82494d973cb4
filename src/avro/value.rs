//! [`EnrichedRecord`] to an Avro [`Value`] (built by hand, in the schema's field order, with the
//! logical-type variants), and any Avro [`Value`] to readable JSON.
//!
//! Every union in the schema is `["null", T]`: branch 0 is null, branch 1 the value.

use crate::provider::Provider;
use crate::record::{
    Biolink, ClearSaleDetails, Decision, EnrichedRecord, Insight, Insights, Lineage, Mfa,
    RecordTrigger, State, UnicoDetails,
};
use apache_avro::types::Value;
use chrono::{DateTime, SecondsFormat, Utc};

/// The Avro value of a record, for `io.webhookenricher.v1.EnrichedEvent`.
pub fn to_avro_value(r: &EnrichedRecord) -> Value {
    Value::Record(vec![
        field("event_id", Value::Uuid(r.event_id)),
        field("provider", provider(r.provider)),
        field("subject_id", Value::Uuid(r.subject_id)),
        field("transaction_id", opt_string(&r.transaction_id)),
        field("trigger", trigger(&r.trigger)),
        field("state", state(r.state)),
        field("clearsale", opt(r.clearsale.as_ref(), clearsale)),
        field("unico", opt(r.unico.as_ref(), unico)),
        field("raw_response", opt_string(&r.raw_response)),
        field("lineage", opt(r.lineage.as_ref(), lineage)),
        field("enriched_at", micros(&r.enriched_at)),
        field("schema_version", Value::Int(r.schema_version)),
    ])
}

/// Readable JSON of an Avro value: unions unwrapped, enums as their symbol, uuids as text,
/// timestamps as RFC 3339 UTC text. Used to print records (demo, tests); not a wire format.
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Int(n) => J::from(*n),
        Value::Long(n) => J::from(*n),
        Value::Float(f) => J::from(f64::from(*f)),
        Value::Double(f) => J::from(*f),
        Value::String(s) => J::String(s.clone()),
        Value::Enum(_, symbol) => J::String(symbol.clone()),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(map) => J::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Record(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Uuid(id) => J::String(id.to_string()),
        Value::TimestampMicros(us) => DateTime::from_timestamp_micros(*us)
            .map(|t| J::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)))
            .unwrap_or_else(|| J::from(*us)),
        Value::TimestampMillis(ms) => DateTime::from_timestamp_millis(*ms)
            .map(|t| J::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
            .unwrap_or_else(|| J::from(*ms)),
        // Types this schema does not use: apache-avro's own JSON conversion.
        other => J::try_from(other.clone()).unwrap_or(J::Null),
    }
}

fn field(name: &str, value: Value) -> (String, Value) {
    (name.to_string(), value)
}

fn opt<T>(value: Option<T>, to_value: impl FnOnce(T) -> Value) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(to_value(v))),
    }
}

fn opt_string(value: &Option<String>) -> Value {
    opt(value.as_ref(), |s| Value::String(s.clone()))
}

fn opt_int(value: Option<i32>) -> Value {
    opt(value, Value::Int)
}

fn opt_double(value: Option<f64>) -> Value {
    opt(value, Value::Double)
}

fn micros(t: &DateTime<Utc>) -> Value {
    Value::TimestampMicros(t.timestamp_micros())
}

fn provider(p: Provider) -> Value {
    match p {
        Provider::ClearSale => Value::Enum(0, "CLEARSALE".into()),
        Provider::Unico => Value::Enum(1, "UNICO".into()),
    }
}

fn state(s: State) -> Value {
    // The variants are declared in the order of the schema's symbols (checked by a test).
    Value::Enum(s as u32, s.symbol().into())
}

fn trigger(t: &RecordTrigger) -> Value {
    Value::Record(vec![
        field("type", opt_string(&t.kind)),
        field("status", opt_int(t.status)),
        field("date", opt(t.date.as_ref(), micros)),
    ])
}

fn clearsale(d: &ClearSaleDetails) -> Value {
    Value::Record(vec![
        field("decision", opt(d.decision.as_ref(), decision)),
        field("insights", opt(d.insights.as_ref(), insights)),
        field("mfa", opt(d.mfa.as_ref(), mfa)),
        field("biolink", opt(d.biolink.as_ref(), biolink)),
    ])
}

fn decision(d: &Decision) -> Value {
    Value::Record(vec![
        field("status", opt_string(&d.status)),
        field("score", opt_double(d.score)),
        field("result", opt_string(&d.result)),
        field("metadata", opt_string(&d.metadata)),
    ])
}

fn insights(i: &Insights) -> Value {
    Value::Record(vec![
        field("status", opt_string(&i.status)),
        field(
            "results",
            Value::Array(i.results.iter().map(insight).collect()),
        ),
    ])
}

fn insight(i: &Insight) -> Value {
    Value::Record(vec![
        field("code", opt_string(&i.code)),
        field("description", opt_string(&i.description)),
        field("type", opt_string(&i.kind)),
        field("category", opt_string(&i.category)),
        field("relevance", opt_string(&i.relevance)),
        field(
            "related_to",
            Value::Array(
                i.related_to
                    .iter()
                    .map(|s| Value::String(s.clone()))
                    .collect(),
            ),
        ),
    ])
}

fn mfa(m: &Mfa) -> Value {
    Value::Record(vec![
        field("status", opt_string(&m.status)),
        field("option", opt_string(&m.option)),
        field("message", opt_string(&m.message)),
        field("replied_at", opt(m.replied_at.as_ref(), micros)),
    ])
}

fn biolink(b: &Biolink) -> Value {
    Value::Record(vec![
        field("status", opt_string(&b.status)),
        field("identifier_id", opt_string(&b.identifier_id)),
        field("score", opt_double(b.score)),
    ])
}

fn unico(u: &UnicoDetails) -> Value {
    Value::Record(vec![
        field("process_status", opt_int(u.process_status)),
        field("unico_id", opt_string(&u.unico_id)),
        field("identity_fraudsters", opt_string(&u.identity_fraudsters)),
        field("serpro", opt_int(u.serpro)),
        field("liveness", opt_int(u.liveness)),
        field("score", opt_int(u.score)),
    ])
}

fn lineage(l: &Lineage) -> Value {
    Value::Record(vec![
        field("topic", Value::String(l.topic.clone())),
        field("partition", Value::Int(l.partition)),
        field("offset", Value::Long(l.offset)),
        field(
            "timestamp",
            opt(l.timestamp.as_ref(), |t| {
                Value::TimestampMillis(t.timestamp_millis())
            }),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;

    fn enum_symbols(schema: &Schema, name: &str) -> Vec<String> {
        let json: serde_json::Value = serde_json::to_value(schema).unwrap();
        fn find(v: &serde_json::Value, name: &str) -> Option<Vec<String>> {
            match v {
                serde_json::Value::Object(o) => {
                    if o.get("type").and_then(|t| t.as_str()) == Some("enum")
                        && o.get("name").and_then(|t| t.as_str()) == Some(name)
                    {
                        return serde_json::from_value(o["symbols"].clone()).ok();
                    }
                    o.values().find_map(|c| find(c, name))
                }
                serde_json::Value::Array(a) => a.iter().find_map(|c| find(c, name)),
                _ => None,
            }
        }
        find(&json, name).unwrap_or_else(|| panic!("enum {name} not in schema"))
    }

    #[test]
    fn enum_indexes_match_the_schema_symbols() {
        let schema = crate::avro::schema().unwrap();
        let states = enum_symbols(schema, "State");
        assert_eq!(states.len(), State::ALL.len());
        for s in State::ALL {
            let Value::Enum(i, sym) = state(s) else {
                panic!()
            };
            assert_eq!(states[i as usize], sym);
        }
        let providers = enum_symbols(schema, "Provider");
        for p in Provider::ALL {
            let Value::Enum(i, sym) = provider(p) else {
                panic!()
            };
            assert_eq!(providers[i as usize], sym);
        }
    }

    #[test]
    fn to_json_renders_logical_types_readably() {
        let v = Value::Record(vec![
            field("t", Value::TimestampMicros(1_758_907_271_036_784)),
            field("m", Value::TimestampMillis(1_758_907_271_036)),
            field("n", Value::Union(0, Box::new(Value::Null))),
            field("e", Value::Enum(1, "UNICO".into())),
        ]);
        assert_eq!(
            to_json(&v),
            serde_json::json!({
                "t": "2025-09-26T17:21:11.036784Z",
                "m": "2025-09-26T17:21:11.036Z",
                "n": null,
                "e": "UNICO"
            })
        );
    }
}
