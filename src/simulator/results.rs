//! Deterministic result bodies: everything about an id is derived from a hash of the id and the
//! configured seed, so the same id always reads the same (apart from the fault-driven pending
//! phase), in this process and in any other simulator with the same seed.

use crate::provider::Provider;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// A small deterministic random source (SplitMix64). Stable across platforms and crate versions,
/// unlike `StdRng`, so seeds reproduce bodies everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Dice {
    state: u64,
}

impl Dice {
    /// Dice for the given raw state.
    pub(crate) fn new(state: u64) -> Self {
        Self { state }
    }

    /// Dice for one id of one provider under `seed`: SHA-1 (UUID v5) of the id in a namespace
    /// named after the seed and provider.
    pub(crate) fn for_id(seed: u64, provider: Provider, id: &Uuid) -> Self {
        let namespace = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("webhook-enricher-simulator/{seed}/{provider}").as_bytes(),
        );
        let (high, low) = Uuid::new_v5(&namespace, id.as_bytes()).as_u64_pair();
        Self::new(high ^ low.rotate_left(32))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform integer in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        let span = hi.abs_diff(lo) + 1;
        lo + (self.next_u64() % span) as i64
    }

    /// One element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// A deterministic GUID.
    fn uuid(&mut self) -> Uuid {
        Uuid::from_u64_pair(self.next_u64(), self.next_u64())
    }
}

/// An instant formatted the .NET way: RFC 3339, UTC, 7 fractional digits, `Z`
/// (`2025-09-26T17:21:11.0367845Z`).
pub(crate) fn dotnet_datetime(dt: &DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        dt.format("%Y-%m-%dT%H:%M:%S"),
        dt.timestamp_subsec_nanos() / 100
    )
}

/// A deterministic instant in 2025.
fn instant_in_2025(dice: &mut Dice) -> String {
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).single();
    let offset = chrono::Duration::seconds(dice.between(0, 364 * 86_400))
        + chrono::Duration::nanoseconds(dice.between(0, 9_999_999) * 100);
    start
        .map(|s| dotnet_datetime(&(s + offset)))
        .unwrap_or_default()
}

const INSIGHTS: [(&str, &str, &str, &str); 5] = [
    ("EM01", "E-mail created recently", "risk", "email"),
    (
        "PH02",
        "Phone number linked to the document",
        "trust",
        "phone",
    ),
    (
        "DV03",
        "Device seen in several identities",
        "risk",
        "device",
    ),
    ("ID04", "Document holder confirmed", "trust", "identity"),
    (
        "AD05",
        "Address not matched to the document",
        "risk",
        "address",
    ),
];

/// The ClearSale analysis for `id`. The asynchronous modules (`mfa`, `biolink`) read `pending`
/// when `pending` is true, their final status otherwise; everything else is fixed per id.
pub(crate) fn clearsale_analysis(seed: u64, id: &Uuid, pending: bool) -> Value {
    let mut dice = Dice::for_id(seed, Provider::ClearSale, id);
    let mut body = Map::new();
    body.insert("analysisId".into(), json!(id.to_string()));
    body.insert("transactionId".into(), json!(dice.uuid().to_string()));

    let decision_roll = dice.unit();
    let with_insights = dice.chance(0.6);
    let with_mfa = dice.chance(0.5);
    let with_biolink = dice.chance(0.4);
    let score = (dice.between(0, 10_000) as f64) / 100.0;
    if decision_roll < 0.5 || !(with_insights || with_mfa || with_biolink) {
        // The Decision module.
        let mut decision = json!({
            "status": "completed",
            "score": score,
            "result": dice.pick(&["approved", "declined", "review"]),
        });
        if dice.chance(0.5) {
            decision["metadata"] = json!({ "policy": "default", "version": dice.between(1, 9) });
        }
        if dice.chance(0.1) {
            // A field no document mentions: clients must tolerate it.
            decision["reasonCodes"] = json!(["R01", "R17"]);
        }
        body.insert("decision".into(), decision);
    } else if decision_roll < 0.8 {
        // The Score module shares the `decision` key.
        body.insert(
            "decision".into(),
            json!({ "status": "completed", "score": score }),
        );
    }
    if with_insights {
        let count = dice.between(0, 3) as usize;
        let result: Vec<Value> = (0..count)
            .map(|_| {
                let (code, description, kind, category) = *dice.pick(&INSIGHTS);
                json!({
                    "code": code,
                    "description": description,
                    "type": kind,
                    "category": category,
                    "relevance": dice.pick(&["high", "medium", "low"]),
                    "relatedTo": [category],
                })
            })
            .collect();
        body.insert(
            "insights".into(),
            json!({ "status": "completed", "result": result }),
        );
    }
    if with_mfa {
        let status = *dice.pick(&["approved", "denied", "expired"]);
        let option = *dice.pick(&["sms", "email", "whatsapp"]);
        let replied_at = instant_in_2025(&mut dice);
        let with_message = dice.chance(0.5);
        let mfa = if pending {
            json!({ "status": "pending" })
        } else {
            let mut mfa = json!({ "status": status, "option": option, "repliedAt": replied_at });
            if with_message {
                mfa["message"] = json!("Customer answered the challenge");
            }
            mfa
        };
        body.insert("mfa".into(), mfa);
    }
    if with_biolink {
        let identifier = dice.uuid().to_string();
        let status = *dice.pick(&["approved", "denied"]);
        let biolink_score = (dice.between(0, 1000) as f64) / 1000.0;
        let biolink = if pending {
            json!({ "status": "pending", "identifierId": identifier })
        } else {
            json!({ "status": status, "identifierId": identifier, "score": biolink_score })
        };
        body.insert("biolink".into(), biolink);
    }
    if dice.chance(0.1) {
        // A module no document mentions: clients must tolerate (and keep) it.
        body.insert(
            "deviceIntelligence".into(),
            json!({ "status": "completed", "riskLevel": dice.pick(&["low", "medium", "high"]) }),
        );
    }
    Value::Object(body)
}

/// The Unico process for `id`: status mostly 3 (finished), sometimes 2 (divergence) or 4
/// (cancelled); finished processes carry the checks, and `score` only when `unicoId` is
/// inconclusive.
pub(crate) fn unico_process(seed: u64, id: &Uuid) -> Value {
    let mut dice = Dice::for_id(seed, Provider::Unico, id);
    let status_roll = dice.unit();
    let status = if status_roll < 0.8 {
        3
    } else if status_roll < 0.9 {
        2
    } else {
        4
    };
    let mut body = json!({ "id": id.to_string(), "status": status });
    if status != 3 {
        return body;
    }
    let unico_id = *dice.pick(&["yes", "yes", "yes", "no", "inconclusive"]);
    let fraudsters = if dice.chance(0.1) {
        "yes"
    } else {
        "inconclusive"
    };
    let serpro = if dice.chance(0.1) {
        *dice.pick(&[-1, -2])
    } else {
        dice.between(0, 100)
    };
    let liveness = if dice.chance(0.9) { 1 } else { 2 };
    body["unicoId"] = json!({ "result": unico_id });
    body["identityFraudsters"] = json!({ "result": fraudsters });
    body["government"] = json!({ "serpro": serpro });
    body["liveness"] = json!(liveness);
    if unico_id == "inconclusive" {
        body["score"] = json!(dice.between(-90, 95));
    }
    if dice.chance(0.1) {
        // A field no document mentions: clients must tolerate it.
        body["createdAt"] = json!(instant_in_2025(&mut dice));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> impl Iterator<Item = Uuid> {
        (0..n).map(|i| Uuid::new_v5(&Uuid::NAMESPACE_URL, &i.to_be_bytes()))
    }

    #[test]
    fn dice_is_a_pure_function_of_its_state() {
        let a: Vec<u64> = {
            let mut d = Dice::new(42);
            (0..4).map(|_| d.next_u64()).collect()
        };
        let mut d = Dice::new(42);
        assert_eq!(a, (0..4).map(|_| d.next_u64()).collect::<Vec<_>>());
        assert_ne!(Dice::new(43).next_u64(), a[0]);
        for _ in 0..1000 {
            let x = d.between(-90, 95);
            assert!((-90..=95).contains(&x));
            assert!((0.0..1.0).contains(&d.unit()));
        }
    }

    #[test]
    fn dotnet_format_has_seven_digits_and_z() {
        let dt = Utc.timestamp_opt(1_758_907_271, 36_784_500).unwrap();
        assert_eq!(dotnet_datetime(&dt), "2025-09-26T17:21:11.0367845Z");
    }

    #[test]
    fn bodies_depend_on_id_and_seed_only() {
        let id = Uuid::new_v4();
        assert_eq!(
            clearsale_analysis(1, &id, false),
            clearsale_analysis(1, &id, false)
        );
        assert_eq!(unico_process(1, &id), unico_process(1, &id));
        let differs = ids(20)
            .any(|id| clearsale_analysis(1, &id, false) != clearsale_analysis(2, &id, false));
        assert!(differs, "the seed must change bodies");
    }

    #[test]
    fn clearsale_bodies_follow_the_contract() {
        let mut seen_modules = std::collections::BTreeSet::new();
        for id in ids(300) {
            let body = clearsale_analysis(0, &id, false);
            assert_eq!(body["analysisId"], json!(id.to_string()));
            assert!(body["transactionId"].is_string());
            let known = ["decision", "insights", "mfa", "biolink"];
            assert!(known.iter().any(|m| body.get(m).is_some()), "{body}");
            for module in body.as_object().unwrap().keys() {
                seen_modules.insert(module.clone());
            }
            if let Some(mfa) = body.get("mfa") {
                assert_ne!(mfa["status"], json!("pending"));
                let pending = clearsale_analysis(0, &id, true);
                assert_eq!(pending["mfa"], json!({ "status": "pending" }));
            }
            if let Some(insights) = body.get("insights") {
                for item in insights["result"].as_array().unwrap() {
                    for field in ["code", "description", "type", "category", "relevance"] {
                        assert!(item[field].is_string(), "{item}");
                    }
                    assert!(item["relatedTo"].is_array());
                }
            }
        }
        for module in [
            "decision",
            "insights",
            "mfa",
            "biolink",
            "deviceIntelligence",
        ] {
            assert!(seen_modules.contains(module), "{module} never generated");
        }
    }

    #[test]
    fn unico_bodies_follow_the_contract() {
        let mut statuses = std::collections::BTreeSet::new();
        let mut with_score = 0;
        for id in ids(300) {
            let body = unico_process(0, &id);
            let status = body["status"].as_i64().unwrap();
            statuses.insert(status);
            if status != 3 {
                continue;
            }
            let serpro = body["government"]["serpro"].as_i64().unwrap();
            assert!((-2..=100).contains(&serpro));
            assert!([1, 2].contains(&body["liveness"].as_i64().unwrap()));
            match body.get("score") {
                Some(score) => {
                    with_score += 1;
                    assert_eq!(body["unicoId"]["result"], json!("inconclusive"));
                    assert!((-90..=95).contains(&score.as_i64().unwrap()));
                }
                None => assert_ne!(body["unicoId"]["result"], json!("inconclusive")),
            }
        }
        assert_eq!(statuses, [2, 3, 4].into_iter().collect());
        assert!(with_score > 0);
    }
}
