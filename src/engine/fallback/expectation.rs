//! The expectations contract and the pure rules of the fallback: decoding an expectation,
//! which webhook result resolves it, whether a polled answer is final, and the result identity
//! shared by a polled result and the webhook of the same result.
//!
//! An expectation is a JSON object on the expectations topic, keyed like the raw webhooks:
//!
//! ```json
//! {"provider": "clearsale", "id": "<analysisId>", "created_at": "2026-01-01T12:00:00Z",
//!  "deadline": "2026-01-01T12:10:00Z", "expect": "mfa"}
//! {"provider": "unico", "id": "<processId>", "created_at": "2026-01-01T12:00:00Z",
//!  "expect": [3, 4, 5]}
//! ```

use crate::event::{Rejection, Trigger, WebhookEvent};
use crate::failure::ErrorClass;
use crate::provider::clearsale::model::is_pending_status;
use crate::provider::{Fetched, Provider};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use uuid::Uuid;

/// The namespace of every `result_id` (UUID v5). Never change it: it would change every id.
pub const RESULT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3b7e_91d4_0c2a_4f6e_8a51_7d90_c4e2_b613);

/// The Unico statuses that end a process (3 finished, 4 cancelled, 5 error).
pub const UNICO_FINAL_STATUSES: [u8; 3] = [3, 4, 5];

/// Largest expectation accepted, in bytes (it is a handful of short fields).
pub const MAX_EXPECTATION_BYTES: usize = 4096;

/// What an expectation waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// ClearSale: the asynchronous module (the webhook `type`, e.g. `mfa`), compared
    /// case-insensitively.
    ClearSaleModule(String),
    /// Unico: the statuses any of which ends the wait.
    UnicoStatuses(BTreeSet<u8>),
}

/// A decoded expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub provider: Provider,
    /// `analysisId` or process id.
    pub subject_id: Uuid,
    /// When the analysis or process was created (the base of `fallback.after`).
    pub created_at: DateTime<Utc>,
    /// When to give up, if the producer says so (else `created_at + fallback.max_wait`).
    pub deadline: Option<DateTime<Utc>>,
    pub expect: Expect,
}

/// A result the webhook path published, as the fallback matches it against expectations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SeenResult {
    /// A ClearSale module (lowercase type) that no longer reads pending.
    ClearSaleModule(String),
    /// A Unico status.
    UnicoStatus(u8),
}

impl Expectation {
    /// True when a published webhook result for this subject ends the wait.
    pub fn matched_by(&self, seen: &SeenResult) -> bool {
        match (&self.expect, seen) {
            (Expect::ClearSaleModule(m), SeenResult::ClearSaleModule(s)) => {
                m.eq_ignore_ascii_case(s)
            }
            (Expect::UnicoStatuses(set), SeenResult::UnicoStatus(s)) => set.contains(s),
            _ => false,
        }
    }

    /// The results that would end the wait (the keys of the recently-seen cache).
    pub fn awaited(&self) -> Vec<SeenResult> {
        match &self.expect {
            Expect::ClearSaleModule(m) => vec![SeenResult::ClearSaleModule(m.to_ascii_lowercase())],
            Expect::UnicoStatuses(set) => set.iter().map(|s| SeenResult::UnicoStatus(*s)).collect(),
        }
    }

    /// What the poll asks the provider about, as the enricher takes it: a webhook event of the
    /// expected trigger (its identity is replaced by [`verdict`] when the answer is final).
    pub fn poll_event(&self, now: DateTime<Utc>) -> WebhookEvent {
        let trigger = match &self.expect {
            Expect::ClearSaleModule(m) => Trigger::ClearSale {
                module_type: m.clone(),
                date: now,
            },
            Expect::UnicoStatuses(set) => Trigger::Unico {
                status: set.iter().next_back().copied().unwrap_or(3),
            },
        };
        WebhookEvent::new(self.provider, self.subject_id, trigger)
    }
}

/// The identity of one result, shared by the webhook and the poll that return it: UUID v5 of
/// the provider, the subject and the result (ClearSale: module type and its status, lowercase;
/// Unico: the process status). Never derived from a date, a topic or an offset.
pub fn result_id(provider: Provider, subject_id: Uuid, seen: &SeenResult, status: &str) -> Uuid {
    let name = match seen {
        SeenResult::ClearSaleModule(m) => format!(
            "{}|{}|{}|{}",
            provider.as_str(),
            subject_id,
            m.to_ascii_lowercase(),
            status.trim().to_ascii_lowercase()
        ),
        SeenResult::UnicoStatus(s) => format!("{}|{}|{}", provider.as_str(), subject_id, s),
    };
    Uuid::new_v5(&RESULT_ID_NAMESPACE, name.as_bytes())
}

/// A final result read from a provider's answer for `event`: what it resolves and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalResult {
    pub seen: SeenResult,
    pub result_id: Uuid,
}

/// The final result a webhook's (or a poll's) answer carries, if it is final: ClearSale, the
/// module named by the trigger present and no longer pending; Unico, the status the answer
/// reports (410 Gone is status 5), or the webhook's status when the answer has none.
pub fn final_result(event: &WebhookEvent, fetched: &Fetched) -> Option<FinalResult> {
    match (&event.trigger, fetched) {
        (Trigger::ClearSale { module_type, .. }, Fetched::ClearSale { analysis, .. }) => {
            let status = analysis.module_status(module_type)?;
            if is_pending_status(status) || status.trim().is_empty() {
                return None;
            }
            let seen = SeenResult::ClearSaleModule(module_type.trim().to_ascii_lowercase());
            Some(FinalResult {
                result_id: result_id(event.provider, event.subject_id, &seen, status),
                seen,
            })
        }
        (Trigger::Unico { status }, Fetched::Unico { process, .. }) => {
            let status = match process.status {
                Some(s) => u8::try_from(s).ok()?,
                None => *status,
            };
            unico_final(event, status)
        }
        (Trigger::Unico { .. }, Fetched::UnicoGone) => unico_final(event, 5),
        _ => None,
    }
}

fn unico_final(event: &WebhookEvent, status: u8) -> Option<FinalResult> {
    if status == 1 {
        return None;
    }
    let seen = SeenResult::UnicoStatus(status);
    Some(FinalResult {
        result_id: result_id(event.provider, event.subject_id, &seen, ""),
        seen,
    })
}

/// What a poll's answer means for its expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish: the event to publish it as (trigger from the answer, `event_id` = the result's
    /// identity for ClearSale, whose webhook identity holds a date a poll cannot know; for
    /// Unico the webhook's own `event_id` of that status) and the result.
    Final {
        event: WebhookEvent,
        result: FinalResult,
    },
    /// Poll again later (the module still pending, a status not yet expected, ...).
    NotFinal,
}

/// Decides whether a polled answer ends the expectation.
pub fn verdict(expectation: &Expectation, fetched: &Fetched, now: DateTime<Utc>) -> Verdict {
    let probe = expectation.poll_event(now);
    let Some(result) = final_result(&probe, fetched) else {
        return Verdict::NotFinal;
    };
    if !expectation.matched_by(&result.seen) {
        return Verdict::NotFinal;
    }
    let event = match &result.seen {
        SeenResult::UnicoStatus(s) => WebhookEvent::new(
            expectation.provider,
            expectation.subject_id,
            Trigger::Unico { status: *s },
        ),
        SeenResult::ClearSaleModule(_) => WebhookEvent {
            event_id: result.result_id,
            ..probe
        },
    };
    Verdict::Final { event, result }
}

/// Checks that an expectation's Kafka key is its id as the receiver keys the webhooks
/// (lowercase hyphenated): the key decides the partition, and only the instance that reads the
/// webhooks' partition can match them. A wrong key is refused (dead-lettered), never guessed.
pub fn check_key(key: Option<&[u8]>, e: &Expectation) -> Result<(), Rejection> {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let wanted = e.subject_id.hyphenated().encode_lower(&mut buf);
    if key == Some(wanted.as_bytes()) {
        return Ok(());
    }
    Err(Rejection::new(
        ErrorClass::MalformedPayload,
        Some(e.provider),
        "the record key must be the expectation's id, lowercase hyphenated (the key of its webhooks, so both land in partitions of the same number)",
    ))
}

/// Decodes an expectation. `unico_default` is the set used when a Unico expectation has no
/// `expect` (the final statuses the decoder enriches). Every refusal is a [`Rejection`] with a
/// dead-letter class; the payload is never quoted.
pub fn decode(
    payload: Option<&[u8]>,
    unico_default: &BTreeSet<u8>,
) -> Result<Expectation, Rejection> {
    use ErrorClass::*;
    let payload = match payload {
        Some(p) if !p.is_empty() => p,
        _ => return Err(Rejection::new(MalformedPayload, None, "empty expectation")),
    };
    if payload.len() > MAX_EXPECTATION_BYTES {
        return Err(Rejection::new(
            MalformedPayload,
            None,
            format!(
                "expectation of {} bytes exceeds the {MAX_EXPECTATION_BYTES} byte limit",
                payload.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        Rejection::new(
            MalformedPayload,
            None,
            format!("expectation is not JSON ({:?} error)", e.classify()),
        )
    })?;
    let serde_json::Value::Object(o) = value else {
        return Err(Rejection::new(
            MalformedPayload,
            None,
            "expectation is not a JSON object",
        ));
    };
    let provider_text = crate::event::required_str(&o, "provider", None)?;
    let provider = Provider::parse(provider_text).ok_or_else(|| {
        Rejection::new(
            UnsupportedEvent,
            None,
            "field `provider` must be \"clearsale\" or \"unico\"",
        )
    })?;
    let p = Some(provider);
    let id = crate::event::required_str(&o, "id", p)?;
    let subject_id = crate::event::parse_guid(id, "id", p)?;
    let created_at = time_field(&o, "created_at", p)?
        .ok_or_else(|| Rejection::new(MalformedPayload, p, "missing field `created_at`"))?;
    let deadline = time_field(&o, "deadline", p)?;
    if deadline.is_some_and(|d| d < created_at) {
        return Err(Rejection::new(
            MalformedPayload,
            p,
            "field `deadline` is before `created_at`",
        ));
    }
    let expect = match provider {
        Provider::ClearSale => match o.get("expect") {
            Some(serde_json::Value::String(m)) if !m.trim().is_empty() && m.len() <= 64 => {
                Expect::ClearSaleModule(m.trim().to_ascii_lowercase())
            }
            Some(_) => {
                return Err(Rejection::new(
                    MalformedPayload,
                    p,
                    "field `expect` must be the module type (1 to 64 characters)",
                ))
            }
            None => return Err(Rejection::new(
                MalformedPayload,
                p,
                "a ClearSale expectation needs `expect` (the asynchronous module, e.g. \"mfa\")",
            )),
        },
        Provider::Unico => match o.get("expect") {
            None | Some(serde_json::Value::Null) => Expect::UnicoStatuses(unico_default.clone()),
            Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                let mut set = BTreeSet::new();
                for item in items {
                    set.insert(unico_status(item)?);
                }
                Expect::UnicoStatuses(set)
            }
            Some(_) => {
                return Err(Rejection::new(
                    MalformedPayload,
                    p,
                    "field `expect` must be a non-empty list of Unico statuses",
                ))
            }
        },
    };
    Ok(Expectation {
        provider,
        subject_id,
        created_at,
        deadline,
        expect,
    })
}

fn unico_status(item: &serde_json::Value) -> Result<u8, Rejection> {
    let p = Some(Provider::Unico);
    let n: Option<i64> = match item {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let n = n.ok_or_else(|| {
        Rejection::new(
            ErrorClass::MalformedPayload,
            p,
            "field `expect` holds a value that is not a status",
        )
    })?;
    u8::try_from(n)
        .ok()
        .filter(|s| (2..=5).contains(s))
        .ok_or_else(|| {
            Rejection::new(
                ErrorClass::UnsupportedEvent,
                p,
                format!("Unico status {n} cannot be expected (2..=5)"),
            )
        })
}

fn time_field(
    o: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    provider: Option<Provider>,
) -> Result<Option<DateTime<Utc>>, Rejection> {
    match o.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
            .map(|d| Some(d.with_timezone(&Utc)))
            .map_err(|_| {
                Rejection::new(
                    ErrorClass::MalformedPayload,
                    provider,
                    format!("field `{field}` is not an RFC 3339 date-time"),
                )
            }),
        Some(_) => Err(Rejection::new(
            ErrorClass::MalformedPayload,
            provider,
            format!("field `{field}` must be an RFC 3339 string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::event_id;
    use crate::provider::clearsale::model::{Analysis, MfaModule};
    use crate::provider::unico::model::Process;

    const ID: &str = "8263a268-5388-492a-bca2-28e1ff4a69f0";

    fn default_unico() -> BTreeSet<u8> {
        [3, 4, 5].into_iter().collect()
    }

    fn dec(json: &str) -> Result<Expectation, Rejection> {
        decode(Some(json.as_bytes()), &default_unico())
    }

    fn subject() -> Uuid {
        Uuid::parse_str(ID).unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn mfa(status: Option<&str>) -> Fetched {
        Fetched::ClearSale {
            analysis: Analysis {
                mfa: Some(MfaModule {
                    status: status.map(str::to_string),
                    ..MfaModule::default()
                }),
                ..Analysis::default()
            },
            raw: "{}".into(),
            still_pending: false,
        }
    }

    fn unico_process(status: Option<i64>) -> Fetched {
        Fetched::Unico {
            process: Process {
                status,
                ..Process::default()
            },
            raw: "{}".into(),
        }
    }

    #[test]
    fn both_providers_decode() {
        let e = dec(&format!(
            r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z","deadline":"2026-01-01T12:10:00+00:00","expect":"MFA"}}"#
        ))
        .unwrap();
        assert_eq!(e.provider, Provider::ClearSale);
        assert_eq!(e.subject_id, subject());
        assert_eq!(e.expect, Expect::ClearSaleModule("mfa".into()));
        assert_eq!(
            e.deadline.unwrap() - e.created_at,
            chrono::Duration::minutes(10)
        );
        let u = dec(&format!(
            r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00-03:00","expect":["3",4]}}"#
        ))
        .unwrap();
        assert_eq!(
            u.expect,
            Expect::UnicoStatuses([3, 4].into_iter().collect())
        );
        assert_eq!(u.created_at.to_rfc3339(), "2026-01-01T15:00:00+00:00");
        let d = dec(&format!(
            r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00Z"}}"#
        ))
        .unwrap();
        assert_eq!(
            d.expect,
            Expect::UnicoStatuses(default_unico()),
            "default set"
        );
    }

    #[test]
    fn malformed_expectations_are_refused_with_a_class() {
        use ErrorClass::*;
        let cases: Vec<(String, ErrorClass, &str)> = vec![
            ("".into(), MalformedPayload, "empty"),
            ("[1]".into(), MalformedPayload, "not a JSON object"),
            ("{".into(), MalformedPayload, "not JSON"),
            (
                format!(
                    r#"{{"provider":"stripe","id":"{ID}","created_at":"2026-01-01T12:00:00Z"}}"#
                ),
                UnsupportedEvent,
                "`provider`",
            ),
            (
                r#"{"provider":"unico","id":"42","created_at":"2026-01-01T12:00:00Z"}"#.into(),
                InvalidId,
                "not a GUID",
            ),
            (
                format!(r#"{{"provider":"unico","id":"{ID}"}}"#),
                MalformedPayload,
                "missing field `created_at`",
            ),
            (
                format!(r#"{{"provider":"unico","id":"{ID}","created_at":"yesterday"}}"#),
                MalformedPayload,
                "RFC 3339",
            ),
            (
                format!(
                    r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00Z","deadline":"2025-01-01T12:00:00Z"}}"#
                ),
                MalformedPayload,
                "before `created_at`",
            ),
            (
                format!(
                    r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z"}}"#
                ),
                MalformedPayload,
                "needs `expect`",
            ),
            (
                format!(
                    r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":["mfa"]}}"#
                ),
                MalformedPayload,
                "module type",
            ),
            (
                format!(
                    r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":[]}}"#
                ),
                MalformedPayload,
                "non-empty list",
            ),
            (
                format!(
                    r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":[1]}}"#
                ),
                UnsupportedEvent,
                "cannot be expected",
            ),
            (
                format!(
                    r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":[true]}}"#
                ),
                MalformedPayload,
                "not a status",
            ),
        ];
        for (json, class, needle) in cases {
            let r = dec(&json).expect_err(&json);
            assert_eq!(r.class, class, "{json}: {r}");
            assert!(r.reason.contains(needle), "{json}: {}", r.reason);
        }
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_EXPECTATION_BYTES));
        assert_eq!(dec(&big).unwrap_err().class, MalformedPayload);
        assert_eq!(
            decode(None, &default_unico()).unwrap_err().class,
            MalformedPayload
        );
        // Field values are never quoted in a reason (only a bad id is, truncated, as the webhook
        // decoder does).
        for json in [
            format!(r#"{{"provider":"unico","id":"{ID}","created_at":"cpf-123"}}"#),
            format!(r#"{{"provider":"cpf-123","id":"{ID}","created_at":"2026-01-01T12:00:00Z"}}"#),
            format!(
                r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":"{}"}}"#,
                "cpf".repeat(30)
            ),
        ] {
            assert!(!dec(&json).unwrap_err().reason.contains("cpf"), "{json}");
        }
    }

    #[test]
    fn finality_clearsale_module_named_by_expect() {
        let e = dec(&format!(
            r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":"mfa"}}"#
        ))
        .unwrap();
        assert_eq!(verdict(&e, &mfa(Some("pending")), now()), Verdict::NotFinal);
        assert_eq!(
            verdict(&e, &mfa(None), now()),
            Verdict::NotFinal,
            "no status yet"
        );
        let absent = Fetched::ClearSale {
            analysis: Analysis::default(),
            raw: "{}".into(),
            still_pending: false,
        };
        assert_eq!(
            verdict(&e, &absent, now()),
            Verdict::NotFinal,
            "module absent"
        );
        let Verdict::Final { event, result } = verdict(&e, &mfa(Some("Approved")), now()) else {
            panic!("final")
        };
        assert_eq!(result.seen, SeenResult::ClearSaleModule("mfa".into()));
        assert_eq!(
            event.event_id, result.result_id,
            "a polled ClearSale record's event_id"
        );
        assert_eq!(event.route(), Some("mfa"));
    }

    #[test]
    fn finality_unico_status_in_the_expected_set() {
        let e = dec(&format!(
            r#"{{"provider":"unico","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":[3,5]}}"#
        ))
        .unwrap();
        assert_eq!(
            verdict(&e, &unico_process(Some(1)), now()),
            Verdict::NotFinal
        );
        assert_eq!(
            verdict(&e, &unico_process(Some(4)), now()),
            Verdict::NotFinal,
            "not expected"
        );
        let Verdict::Final { event, result } = verdict(&e, &unico_process(Some(3)), now()) else {
            panic!("final")
        };
        // A polled Unico result keeps the webhook's own event_id of that status.
        assert_eq!(
            event.event_id,
            event_id(Provider::Unico, subject(), &Trigger::Unico { status: 3 })
        );
        assert_eq!(result.seen, SeenResult::UnicoStatus(3));
        let Verdict::Final { result: gone, .. } = verdict(&e, &Fetched::UnicoGone, now()) else {
            panic!("410 Gone is status 5")
        };
        assert_eq!(gone.seen, SeenResult::UnicoStatus(5));
    }

    /// The identity shared by a poll and a webhook of one result. Pinned: changing it would
    /// make consumers see a second decision for results published before the change.
    #[test]
    fn result_identity_is_pinned_and_shared_by_poll_and_webhook() {
        let cs = result_id(
            Provider::ClearSale,
            subject(),
            &SeenResult::ClearSaleModule("mfa".into()),
            "approved",
        );
        let un = result_id(Provider::Unico, subject(), &SeenResult::UnicoStatus(3), "");
        assert_eq!(cs.to_string(), PINNED_CLEARSALE);
        assert_eq!(un.to_string(), PINNED_UNICO);

        // The webhook's answer and the poll's answer of the same result give the same identity,
        // whatever the webhook's date and the case of its type.
        let webhook = WebhookEvent::new(
            Provider::ClearSale,
            subject(),
            Trigger::ClearSale {
                module_type: "MFA".into(),
                date: now() - chrono::Duration::hours(1),
            },
        );
        let from_webhook = final_result(&webhook, &mfa(Some("APPROVED"))).unwrap();
        let e = dec(&format!(
            r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":"mfa"}}"#
        ))
        .unwrap();
        let Verdict::Final {
            result: from_poll, ..
        } = verdict(&e, &mfa(Some("approved")), now())
        else {
            panic!("final")
        };
        assert_eq!(from_webhook, from_poll);
        assert_eq!(from_poll.result_id, cs);
        // A different final status of the module is a different result.
        assert_ne!(
            final_result(&webhook, &mfa(Some("denied")))
                .unwrap()
                .result_id,
            cs
        );
        // A pending module has no result identity.
        assert_eq!(final_result(&webhook, &mfa(Some("pending"))), None);

        let unico_webhook =
            WebhookEvent::new(Provider::Unico, subject(), Trigger::Unico { status: 3 });
        assert_eq!(
            final_result(&unico_webhook, &unico_process(Some(3)))
                .unwrap()
                .result_id,
            un
        );
        assert_eq!(final_result(&unico_webhook, &unico_process(Some(1))), None);
    }

    // Computed independently (Python `uuid.uuid5` over the same names and namespace).
    const PINNED_CLEARSALE: &str = "4ab9cb29-bab0-5086-88b0-bf824afb48af";
    const PINNED_UNICO: &str = "44069714-da8b-5228-9026-8829b8412026";

    #[test]
    fn the_key_must_be_the_id_as_the_webhooks_are_keyed() {
        let e = dec(&format!(
            r#"{{"provider":"unico","id":"{}","created_at":"2026-01-01T12:00:00Z"}}"#,
            ID.to_uppercase()
        ))
        .unwrap();
        assert_eq!(check_key(Some(ID.as_bytes()), &e), Ok(()));
        for bad in [
            None,
            Some(ID.to_uppercase().into_bytes()),
            Some(ID.replace('-', "").into_bytes()),
            Some(b"order-42".to_vec()),
        ] {
            let r = check_key(bad.as_deref(), &e).unwrap_err();
            assert_eq!(r.class, ErrorClass::MalformedPayload);
            assert!(r.reason.contains("record key"), "{r}");
        }
    }

    #[test]
    fn a_webhook_result_matches_only_its_expectation() {
        let e = dec(&format!(
            r#"{{"provider":"clearsale","id":"{ID}","created_at":"2026-01-01T12:00:00Z","expect":"biolink"}}"#
        ))
        .unwrap();
        assert!(e.matched_by(&SeenResult::ClearSaleModule("biolink".into())));
        assert!(!e.matched_by(&SeenResult::ClearSaleModule("mfa".into())));
        assert!(!e.matched_by(&SeenResult::UnicoStatus(3)));
        assert_eq!(
            e.awaited(),
            vec![SeenResult::ClearSaleModule("biolink".into())]
        );
    }
}
