//! Both providers' answers as the clients handle them, from bytes to the published record:
//! `clearsale::client::{analysis_from_reply, token_from_reply}` and
//! `unico::client::{process_from_reply, token_from_reply}` (status, JSON body, the response
//! models, the error detail), the `Retry-After` header, then `record::normalize` and the Avro
//! encoder, whose bytes must be exactly apache-avro's for the same record.
//!
//! Input layout (see `fuzz/make_seeds.py`): byte 0 selects the operation (mod 4: ClearSale
//! analysis, ClearSale authenticate, Unico process, Unico token) and, in its high bits, the
//! webhook that asked (module type or status); bytes 1-2 are the HTTP status (big endian, mapped
//! into 100..=599); byte 3 is the length of a `Retry-After` value that follows; the rest is the
//! body.

#![no_main]

use apache_avro::writer::datum::GenericDatumWriter;
use bytes::Bytes;
use chrono::TimeZone;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use webhook_enricher::avro::{schema, to_avro_value, RecordEncoder};
use webhook_enricher::event::{Trigger, WebhookEvent};
use webhook_enricher::provider::clearsale::client as clearsale;
use webhook_enricher::provider::http::{error_detail, Reply, MAX_DETAIL_CHARS};
use webhook_enricher::provider::unico::client::{self as unico, ProcessAnswer};
use webhook_enricher::provider::{Fetched, Provider};
use webhook_enricher::record::{normalize, Lineage};

const MODULES: [&str; 8] = [
    "mfa",
    "biolink",
    "decision",
    "score",
    "insights",
    "MFA",
    " mfa ",
    "newModule",
];
const MARGIN: Duration = Duration::from_secs(300);

fn encoder() -> &'static RecordEncoder {
    static ENCODER: OnceLock<RecordEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| RecordEncoder::single_object().expect("the embedded schema"))
}

/// The record for `fetched` encodes to exactly apache-avro's bytes, and reads back.
fn check_record(event: &WebhookEvent, fetched: &Fetched) {
    let at = chrono::Utc
        .with_ymd_and_hms(2025, 9, 26, 17, 21, 11)
        .unwrap();
    let lineage = Lineage {
        topic: "webhooks.raw".into(),
        partition: 1,
        offset: 42,
        timestamp: Some(at),
    };
    let record = normalize(event, fetched, Some(lineage), true, at);
    let bytes = encoder()
        .encode("out", &record)
        .expect("single-object encoding");
    let schema = schema().expect("schema");
    let reference = GenericDatumWriter::builder(schema)
        .build()
        .expect("writer")
        .write_value_to_vec(to_avro_value(&record))
        .expect("apache-avro writes the record");
    assert_eq!(
        &bytes[10..],
        &reference[..],
        "the encoder disagrees with apache-avro"
    );
    webhook_enricher::avro::decode(&bytes, schema).expect("the record reads back");
}

fn check_error(error: &webhook_enricher::provider::ProviderError) {
    // Errors reach logs and dead-letter headers: bounded (the provider's detail is truncated).
    let text = error.to_string();
    assert!(
        text.chars().count() <= MAX_DETAIL_CHARS + 200,
        "{} chars",
        text.len()
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let selector = data[0];
    let status = 100 + u16::from_be_bytes([data[1], data[2]]) % 500;
    let retry_len = usize::from(data[3]).min(data.len() - 4);
    let retry_after = String::from_utf8_lossy(&data[4..4 + retry_len]);
    let body = Bytes::copy_from_slice(&data[4 + retry_len..]);
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };

    let now = chrono::Utc::now();
    if let Some(delay) = webhook_enricher::retry::parse_retry_after(&retry_after, now) {
        // A delay the retry loop can add to an Instant.
        assert!(
            std::time::Instant::now().checked_add(delay).is_some(),
            "{delay:?}"
        );
    }
    let detail = error_detail(&body);
    assert!(detail.chars().count() <= MAX_DETAIL_CHARS + 1);

    let subject = uuid::Uuid::from_u128(0x8263_a268_5388_492a_bca2_28e1_ff4a_69f0);
    let pick = usize::from(selector >> 2);
    match selector % 4 {
        0 => {
            let reply = Reply::new(Provider::ClearSale, "get_analysis", status, body.clone());
            match clearsale::analysis_from_reply(reply) {
                Ok((analysis, raw)) => {
                    assert!(status.is_success());
                    assert_eq!(raw.as_bytes(), &body[..], "the raw body is kept whole");
                    let module_type = MODULES[pick % MODULES.len()];
                    let trigger = Trigger::ClearSale {
                        module_type: module_type.to_string(),
                        date: now,
                    };
                    let event = WebhookEvent::new(Provider::ClearSale, subject, trigger);
                    for still_pending in [false, true] {
                        let fetched = Fetched::ClearSale {
                            analysis: analysis.clone(),
                            raw: raw.clone(),
                            still_pending,
                        };
                        check_record(&event, &fetched);
                    }
                }
                Err(e) => check_error(&e),
            }
        }
        1 => {
            let reply = Reply::new(Provider::ClearSale, "authenticate", status, body);
            match clearsale::token_from_reply(reply, MARGIN) {
                Ok(token) => assert!(token.header().as_bytes().starts_with(b"Bearer ")),
                Err(e) => check_error(&e),
            }
        }
        2 => {
            let reply = Reply::new(Provider::Unico, "get_process", status, body.clone());
            let status_of_webhook = 2 + (pick % 4) as u8;
            let event = WebhookEvent::new(
                Provider::Unico,
                subject,
                Trigger::Unico {
                    status: status_of_webhook,
                },
            );
            match unico::process_from_reply(reply) {
                Ok(ProcessAnswer::Found { process, raw }) => {
                    assert_eq!(raw.as_bytes(), &body[..], "the raw body is kept whole");
                    check_record(&event, &Fetched::Unico { process, raw });
                }
                Ok(ProcessAnswer::Gone) => {
                    assert_eq!(status.as_u16(), 410);
                    check_record(&event, &Fetched::UnicoGone);
                }
                Err(e) => check_error(&e),
            }
        }
        _ => {
            let reply = Reply::new(Provider::Unico, "token", status, body);
            match unico::token_from_reply(reply, MARGIN) {
                Ok(token) => assert!(token.header().as_bytes().starts_with(b"Bearer ")),
                Err(e) => check_error(&e),
            }
        }
    }
});
