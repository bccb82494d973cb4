//! The enriched record on the wire: normalization, round trips in both framings, golden bytes,
//! schema evolution and schema documentation.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashMap;
use webhook_enricher::avro::schema::{fingerprint, ENRICHED_EVENT_AVSC};
use webhook_enricher::avro::{decode, schema, to_json, RecordEncoder, WireFormat};
use webhook_enricher::event::{Trigger, WebhookEvent};
use webhook_enricher::provider::clearsale::model::Analysis;
use webhook_enricher::provider::unico::model::Process;
use webhook_enricher::provider::{Fetched, Provider};
use webhook_enricher::record::{
    normalize, Biolink, ClearSaleDetails, Decision, EnrichedRecord, Lineage, Mfa, RecordTrigger,
    State,
};

const SUBJECT: &str = "8263a268-5388-492a-bca2-28e1ff4a69f0";

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn enriched_at() -> DateTime<Utc> {
    ts("2025-09-26T17:22:00.123456Z")
}

fn clearsale_event(module_type: &str) -> WebhookEvent {
    WebhookEvent::new(
        Provider::ClearSale,
        SUBJECT.parse().unwrap(),
        Trigger::ClearSale {
            module_type: module_type.into(),
            date: ts("2025-09-26T17:21:11.0367845Z"),
        },
    )
}

fn unico_event(status: u8) -> WebhookEvent {
    WebhookEvent::new(
        Provider::Unico,
        SUBJECT.parse().unwrap(),
        Trigger::Unico { status },
    )
}

fn lineage() -> Lineage {
    Lineage {
        topic: "webhooks.raw".into(),
        partition: 3,
        offset: 1_234_567_890_123,
        timestamp: Some(ts("2025-09-26T17:21:12.345Z")),
    }
}

fn full_analysis_json() -> serde_json::Value {
    json!({
        "analysisId": SUBJECT,
        "transactionId": "tx-42",
        "decision": {"status": "approved", "score": 12.5, "result": "accept", "metadata": {"rule": "r1"}},
        "insights": {"status": "done", "result": [
            {"code": 7, "description": "device seen before", "type": "device", "category": "risk",
             "relevance": "high", "relatedTo": ["email", 3]}
        ]},
        "mfa": {"status": "answered", "option": "sms", "message": "ok",
                "repliedAt": "2025-09-26T17:21:30.5Z"},
        "biolink": {"status": "done", "identifierId": "bio-1", "score": 0.93},
        "futureModule": {"status": "x"}
    })
}

fn fetched_clearsale(raw: serde_json::Value) -> Fetched {
    Fetched::ClearSale {
        analysis: serde_json::from_value::<Analysis>(raw.clone()).unwrap(),
        raw: raw.to_string(),
        still_pending: false,
    }
}

fn fetched_unico(raw: serde_json::Value) -> Fetched {
    Fetched::Unico {
        process: serde_json::from_value::<Process>(raw.clone()).unwrap(),
        raw: raw.to_string(),
    }
}

fn clearsale_record() -> EnrichedRecord {
    normalize(
        &clearsale_event("mfa"),
        &fetched_clearsale(full_analysis_json()),
        Some(lineage()),
        true,
        enriched_at(),
    )
}

fn unico_raw() -> serde_json::Value {
    json!({"id": SUBJECT, "status": 3, "unicoId": {"result": "yes"},
           "identityFraudsters": {"result": "inconclusive"}, "government": {"serpro": 87},
           "liveness": 1, "score": -40})
}

fn unico_record() -> EnrichedRecord {
    normalize(
        &unico_event(3),
        &fetched_unico(unico_raw()),
        None,
        false,
        enriched_at(),
    )
}

fn encoders() -> Vec<RecordEncoder> {
    let ids = HashMap::from([("enriched".to_string(), 42u32)]);
    vec![
        RecordEncoder::single_object().unwrap(),
        RecordEncoder::confluent(ids).unwrap(),
    ]
}

#[test]
fn clearsale_record_with_every_module_round_trips_in_both_formats() {
    let record = clearsale_record();
    let event_id = record.event_id.to_string();
    let raw_text = full_analysis_json().to_string();
    let expected = json!({
        "event_id": event_id,
        "provider": "CLEARSALE",
        "subject_id": SUBJECT,
        "transaction_id": "tx-42",
        "trigger": {"type": "mfa", "status": null, "date": "2025-09-26T17:21:11.036784Z"},
        "state": "COMPLETED",
        "clearsale": {
            "decision": {"status": "approved", "score": 12.5, "result": "accept",
                         "metadata": "{\"rule\":\"r1\"}"},
            "insights": {"status": "done", "results": [
                {"code": "7", "description": "device seen before", "type": "device",
                 "category": "risk", "relevance": "high", "related_to": ["email", "3"]}
            ]},
            "mfa": {"status": "answered", "option": "sms", "message": "ok",
                    "replied_at": "2025-09-26T17:21:30.500000Z"},
            "biolink": {"status": "done", "identifier_id": "bio-1", "score": 0.93}
        },
        "unico": null,
        "raw_response": raw_text,
        "lineage": {"topic": "webhooks.raw", "partition": 3, "offset": 1_234_567_890_123i64,
                    "timestamp": "2025-09-26T17:21:12.345Z"},
        "enriched_at": "2025-09-26T17:22:00.123456Z",
        "schema_version": 1
    });
    for encoder in encoders() {
        let bytes = encoder.encode("enriched", &record).unwrap();
        let decoded = decode(&bytes, schema().unwrap()).unwrap();
        assert_eq!(decoded.format, encoder.format());
        assert_eq!(to_json(&decoded.value), expected, "{:?}", encoder.format());
    }
    // The raw copy keeps what the schema does not model.
    assert!(record.raw_response.unwrap().contains("futureModule"));
}

#[test]
fn unico_record_round_trips_in_both_formats() {
    let record = unico_record();
    let expected = json!({
        "event_id": record.event_id.to_string(),
        "provider": "UNICO",
        "subject_id": SUBJECT,
        "transaction_id": null,
        "trigger": {"type": null, "status": 3, "date": null},
        "state": "COMPLETED",
        "clearsale": null,
        "unico": {"process_status": 3, "unico_id": "yes", "identity_fraudsters": "inconclusive",
                  "serpro": 87, "liveness": 1, "score": -40},
        "raw_response": null,
        "lineage": null,
        "enriched_at": "2025-09-26T17:22:00.123456Z",
        "schema_version": 1
    });
    for encoder in encoders() {
        let bytes = encoder.encode("enriched", &record).unwrap();
        let decoded = decode(&bytes, schema().unwrap()).unwrap();
        assert_eq!(to_json(&decoded.value), expected, "{:?}", encoder.format());
    }
}

#[test]
fn confluent_framing_carries_the_topic_schema_id_and_headers() {
    let ids = HashMap::from([("a".to_string(), 42u32), ("b".to_string(), 0x0102_0304)]);
    let encoder = RecordEncoder::confluent(ids).unwrap();
    let record = unico_record();
    let a = encoder.encode("a", &record).unwrap();
    let b = encoder.encode("b", &record).unwrap();
    assert_eq!(&a[..5], &[0, 0, 0, 0, 42]);
    assert_eq!(&b[..5], &[0, 1, 2, 3, 4]);
    assert_eq!(a[5..], b[5..]);
    assert_eq!(
        decode(&b, schema().unwrap()).unwrap().schema_id,
        Some(0x0102_0304)
    );
    assert!(matches!(
        encoder.encode("c", &record),
        Err(webhook_enricher::avro::EncodeError::UnknownTopic { .. })
    ));
    assert_eq!(
        encoder.content_headers("a"),
        vec![
            (
                "content-type",
                "application/vnd.webhook-enricher.enriched-event+avro".to_string()
            ),
            ("schema-id", "42".to_string()),
            (
                "schema-name",
                "io.webhookenricher.v1.EnrichedEvent".to_string()
            ),
            ("schema-version", "1".to_string()),
        ]
    );
}

/// A record with every value fixed (ids, instants), built without `normalize`.
fn golden_record() -> EnrichedRecord {
    EnrichedRecord {
        event_id: "0b8f3a52-6d1e-5c4a-9f00-1a2b3c4d5e6f".parse().unwrap(),
        provider: Provider::ClearSale,
        subject_id: SUBJECT.parse().unwrap(),
        transaction_id: Some("tx-1".into()),
        trigger: RecordTrigger {
            kind: Some("mfa".into()),
            status: None,
            date: Some(ts("2025-09-26T17:21:11.036784Z")),
        },
        state: State::Pending,
        clearsale: Some(ClearSaleDetails {
            decision: Some(Decision {
                status: Some("approved".into()),
                score: Some(12.5),
                result: None,
                metadata: None,
            }),
            insights: None,
            mfa: Some(Mfa {
                status: Some("pending".into()),
                option: None,
                message: None,
                replied_at: None,
            }),
            biolink: Some(Biolink {
                status: Some("done".into()),
                identifier_id: Some("b".into()),
                score: Some(0.5),
            }),
        }),
        unico: None,
        raw_response: None,
        lineage: Some(Lineage {
            topic: "raw".into(),
            partition: 1,
            offset: 2,
            timestamp: Some(ts("2025-09-26T17:21:12.345Z")),
        }),
        enriched_at: ts("2025-09-26T17:22:00Z"),
        schema_version: 1,
    }
}

/// The v1 schema's CRC-64-AVRO fingerprint (little-endian hex), computed independently of this
/// crate from the specification's parsing canonical form (logical types reduce to their
/// primitive). It changes whenever the schema's binary shape changes, which must be a deliberate
/// new schema version.
const V1_FINGERPRINT: &str = "e989d61025fed526";

/// The exact Confluent bytes of [`golden_record`] with schema id 42, field by field.
const GOLDEN_CONFLUENT_HEX: &str = concat!(
    "00",       // magic byte
    "0000002a", // schema id 42, big-endian
    // event_id: string of 36 bytes (zigzag 72 = 0x48)
    "48",
    "30623866336135322d366431652d356334612d396630302d316132623363346435653666",
    "00", // provider: enum index 0 (CLEARSALE)
    // subject_id
    "48",
    "38323633613236382d353338382d343932612d626361322d323865316666346136396630",
    "020874782d31", // transaction_id: union branch 1, "tx-1"
    // trigger: type "mfa", status null, date 2025-09-26T17:21:11.036784Z in micros
    "02066d6661",
    "00",
    "02e0fda9b1f0ed9f06",
    "00", // state: PENDING
    "02", // clearsale present
    // decision: status "approved", score 12.5 (LE double), result null, metadata null
    "02",
    "0210617070726f766564",
    "020000000000002940",
    "00",
    "00",
    "00", // insights null
    // mfa: status "pending", option/message/replied_at null
    "02",
    "020e70656e64696e67",
    "00",
    "00",
    "00",
    // biolink: status "done", identifier_id "b", score 0.5
    "02",
    "0208646f6e65",
    "020262",
    "02000000000000e03f",
    "00", // unico null
    "00", // raw_response null
    // lineage: topic "raw", partition 1, offset 2, timestamp 2025-09-26T17:21:12.345Z in millis
    "02",
    "06726177",
    "02",
    "04",
    "02b2b2d8f0b066",
    "80f882e0f0ed9f06", // enriched_at 2025-09-26T17:22:00Z in micros
    "02",               // schema_version 1
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn golden_bytes() {
    let record = golden_record();
    let ids = HashMap::from([("enriched".to_string(), 42u32)]);
    let confluent = RecordEncoder::confluent(ids)
        .unwrap()
        .encode("enriched", &record)
        .unwrap();
    assert_eq!(&confluent[..5], &[0, 0, 0, 0, 42]);
    assert_eq!(hex(&confluent), GOLDEN_CONFLUENT_HEX);

    let single = RecordEncoder::single_object()
        .unwrap()
        .encode("enriched", &record)
        .unwrap();
    assert_eq!(&single[..2], &[0xC3, 0x01]);
    assert_eq!(hex(&single[2..10]), V1_FINGERPRINT);
    assert_eq!(
        hex(&fingerprint(schema().unwrap()).unwrap()),
        V1_FINGERPRINT
    );
    // Same datum after either header.
    assert_eq!(single[10..], confluent[5..]);
    assert_eq!(
        RecordEncoder::single_object()
            .unwrap()
            .content_headers("enriched")[1],
        ("schema-fingerprint", V1_FINGERPRINT.to_string())
    );
    // Every record names its schema and version, whatever the wire format.
    assert_eq!(
        RecordEncoder::single_object()
            .unwrap()
            .content_headers("enriched")[2..],
        [
            (
                "schema-name",
                "io.webhookenricher.v1.EnrichedEvent".to_string()
            ),
            ("schema-version", "1".to_string()),
        ]
    );
}

/// The v1 schema as JSON with one more top-level field appended.
fn v1_plus_field(field: serde_json::Value) -> Schema {
    let mut v2: serde_json::Value = serde_json::from_str(ENRICHED_EVENT_AVSC).unwrap();
    v2["fields"].as_array_mut().unwrap().push(field);
    Schema::parse_str(&v2.to_string()).unwrap()
}

fn read_with(writer: &Schema, reader: &Schema, datum: &[u8]) -> Result<Value, apache_avro::Error> {
    GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()?
        .read_value(&mut &datum[..])
}

fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    let Value::Record(fields) = value else {
        panic!("not a record: {value:?}")
    };
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn adding_an_optional_field_with_a_default_stays_backward_compatible() {
    let v1 = schema().unwrap();
    let v2 = v1_plus_field(json!({
        "name": "risk_band", "type": ["null", "string"], "default": null,
        "doc": "Added in v2."
    }));
    SchemaCompatibility::can_read(v1, &v2).expect("v2 must read v1 data");

    let bytes = RecordEncoder::single_object()
        .unwrap()
        .encode("t", &clearsale_record())
        .unwrap();
    let value = read_with(v1, &v2, &bytes[10..]).expect("v1 bytes decode with the v2 reader");
    assert_eq!(
        field(&value, "risk_band"),
        &Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(
        field(&value, "transaction_id"),
        &Value::Union(1, Box::new(Value::String("tx-42".into())))
    );
}

#[test]
fn adding_a_required_field_without_default_is_not_backward_compatible() {
    let v1 = schema().unwrap();
    let v2 = v1_plus_field(json!({"name": "risk_band", "type": "string", "doc": "Required."}));
    assert!(SchemaCompatibility::can_read(v1, &v2).is_err());
    let bytes = RecordEncoder::single_object()
        .unwrap()
        .encode("t", &unico_record())
        .unwrap();
    assert!(read_with(v1, &v2, &bytes[10..]).is_err());
}

/// Which modules are present, as a bit set: decision 1, insights 2, mfa 4, biolink 8.
fn analysis_with(modules: u8) -> serde_json::Value {
    let mut a = json!({"analysisId": SUBJECT, "transactionId": "tx"});
    if modules & 1 != 0 {
        a["decision"] = json!({"status": "approved", "score": 1.0});
    }
    if modules & 2 != 0 {
        a["insights"] = json!({"status": "done", "result": []});
    }
    if modules & 4 != 0 {
        a["mfa"] = json!({"status": "pending"});
    }
    if modules & 8 != 0 {
        a["biolink"] = json!({"status": "Canceled"});
    }
    a
}

#[test]
fn clearsale_every_module_combination() {
    for modules in 0u8..16 {
        for (module_type, bit, state_when_present) in [
            ("mfa", 4u8, State::Pending),
            ("BioLink", 8, State::Cancelled),
        ] {
            let raw = analysis_with(modules);
            for include_raw in [false, true] {
                let r = normalize(
                    &clearsale_event(module_type),
                    &fetched_clearsale(raw.clone()),
                    None,
                    include_raw,
                    enriched_at(),
                );
                let ctx = format!("modules {modules:04b}, type {module_type}, raw {include_raw}");
                let expected = if modules & bit != 0 {
                    state_when_present
                } else {
                    State::Unknown
                };
                assert_eq!(r.state, expected, "{ctx}");
                let cs = r.clearsale.as_ref().expect("clearsale details");
                assert_eq!(cs.decision.is_some(), modules & 1 != 0, "{ctx}");
                assert_eq!(cs.insights.is_some(), modules & 2 != 0, "{ctx}");
                assert_eq!(cs.mfa.is_some(), modules & 4 != 0, "{ctx}");
                assert_eq!(cs.biolink.is_some(), modules & 8 != 0, "{ctx}");
                assert!(r.unico.is_none(), "{ctx}");
                assert_eq!(r.transaction_id.as_deref(), Some("tx"), "{ctx}");
                assert_eq!(
                    r.raw_response,
                    include_raw.then(|| raw.to_string()),
                    "{ctx}"
                );
                // Every combination encodes.
                RecordEncoder::single_object()
                    .unwrap()
                    .encode("t", &r)
                    .unwrap();
            }
        }
    }
}

#[test]
fn clearsale_decision_score_and_insights_types() {
    let raw = analysis_with(1 | 2);
    for (t, state) in [
        ("decision", State::Completed),
        ("Score", State::Completed),
        ("insights", State::Completed),
        ("mfa", State::Unknown),
    ] {
        let r = normalize(
            &clearsale_event(t),
            &fetched_clearsale(raw.clone()),
            None,
            false,
            enriched_at(),
        );
        assert_eq!(r.state, state, "{t}");
    }
}

#[test]
fn clearsale_still_pending_is_pending() {
    // The fetcher's verdict wins even when the last read status is not a pending word.
    let raw = json!({"mfa": {"status": "in_review"}});
    let f = Fetched::ClearSale {
        analysis: serde_json::from_value(raw.clone()).unwrap(),
        raw: raw.to_string(),
        still_pending: true,
    };
    let r = normalize(&clearsale_event("mfa"), &f, None, false, enriched_at());
    assert_eq!(r.state, State::Pending);
}

#[test]
fn unico_every_status_gone_and_unknown() {
    for (status, state) in [
        (1u8, State::Pending),
        (2, State::Divergent),
        (3, State::Completed),
        (4, State::Cancelled),
        (5, State::Failed),
    ] {
        let raw = json!({"id": SUBJECT, "status": status.to_string()});
        let r = normalize(
            &unico_event(status),
            &fetched_unico(raw.clone()),
            None,
            false,
            enriched_at(),
        );
        assert_eq!(r.state, state, "status {status}");
        assert_eq!(
            r.unico.as_ref().unwrap().process_status,
            Some(i32::from(status))
        );
        assert_eq!(r.trigger.status, Some(i32::from(status)));
        assert_eq!(r.trigger.date, None);
        assert!(r.clearsale.is_none() && r.transaction_id.is_none());
        assert_eq!(r.raw_response, None, "include_raw false");
    }
    // The fetched process status wins over the webhook's.
    let r = normalize(
        &unico_event(2),
        &fetched_unico(json!({"status": 3})),
        None,
        true,
        enriched_at(),
    );
    assert_eq!(r.state, State::Completed);
    assert_eq!(r.raw_response.as_deref(), Some(r#"{"status":3}"#));

    let gone = normalize(
        &unico_event(5),
        &Fetched::UnicoGone,
        None,
        true,
        enriched_at(),
    );
    assert_eq!(gone.state, State::Failed);
    assert!(gone.unico.is_none());
    assert_eq!(gone.raw_response, None, "410 has no body");

    let unknown = normalize(
        &unico_event(3),
        &fetched_unico(json!({"status": 7})),
        None,
        false,
        enriched_at(),
    );
    assert_eq!(unknown.state, State::Unknown);
    assert_eq!(unknown.unico.unwrap().process_status, Some(7));
    // Both encode.
    let enc = RecordEncoder::single_object().unwrap();
    enc.encode("t", &gone).unwrap();
    assert_eq!(enc.format(), WireFormat::SingleObject);
}

#[test]
fn every_schema_field_and_type_has_a_doc() {
    fn walk(v: &serde_json::Value, path: &str, missing: &mut Vec<String>, fields: &mut usize) {
        match v {
            serde_json::Value::Object(o) => {
                let is_named = matches!(
                    o.get("type").and_then(|t| t.as_str()),
                    Some("record" | "enum" | "fixed")
                );
                let is_field = o.contains_key("name") && !is_named;
                let name = o.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                let here = format!("{path}/{name}");
                if is_named || is_field {
                    *fields += usize::from(is_field);
                    let doc = o.get("doc").and_then(|d| d.as_str()).unwrap_or("");
                    if doc.trim().is_empty() {
                        missing.push(here.clone());
                    }
                }
                for child in o.values() {
                    walk(child, &here, missing, fields);
                }
            }
            serde_json::Value::Array(a) => {
                for child in a {
                    walk(child, path, missing, fields);
                }
            }
            _ => {}
        }
    }
    let json: serde_json::Value = serde_json::from_str(ENRICHED_EVENT_AVSC).unwrap();
    let (mut missing, mut fields) = (Vec::new(), 0);
    walk(&json, "", &mut missing, &mut fields);
    assert!(missing.is_empty(), "no doc: {missing:?}");
    assert!(fields >= 40, "walked only {fields} fields");
}
