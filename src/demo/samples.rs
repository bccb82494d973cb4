//! The demo's sample webhooks: a fixed "story" that shows every path through the pipeline,
//! then ordinary webhooks of both providers up to the requested count. Everything is derived
//! from the seed, so the same seed produces the same inputs.
//!
//! The ids come from a [`Catalog`] of what the simulated providers hold, so each webhook says
//! what a real provider would: ClearSale only sends a webhook for a module the analysis has,
//! and a Unico webhook carries the process's status.

use crate::failure::ErrorClass;
use crate::provider::Provider;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::HashSet;
use uuid::Uuid;

/// The number of story samples: the smallest `--count`.
pub const MIN_COUNT: usize = 18;
/// The largest `--count`: every input stays within the engine's default in-flight limit, so
/// all of them run at once.
pub const MAX_COUNT: usize = 1000;
/// The default `--count`.
pub const DEFAULT_COUNT: usize = 40;

/// One raw webhook to produce on the input topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The Kafka key (the provider's id, as a webhook receiver would key it).
    pub key: Option<String>,
    /// The Kafka value.
    pub payload: Vec<u8>,
    /// Kafka headers.
    pub headers: Vec<(&'static str, String)>,
    /// What this sample shows, for the printed report.
    pub note: String,
    /// The outcome the pipeline should give it.
    pub expected: Expected,
}

/// The final outcome a sample should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Enriched and published on the provider's output topic.
    Published(Provider),
    /// An exact repeat of an earlier sample: dropped.
    Deduplicated,
    /// A valid event the pipeline does not enrich.
    Skipped,
    /// Written to the dead-letter topic with this class.
    DeadLettered(ErrorClass),
}

/// The asynchronous modules a ClearSale analysis has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modules {
    /// The analysis has an `mfa` module.
    pub mfa: bool,
    /// The analysis has a `biolink` module.
    pub biolink: bool,
}

/// Candidate ids with what the simulated providers hold for them, in candidate order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    clearsale: Vec<(Uuid, Modules)>,
    unico: Vec<(Uuid, u8)>,
}

impl Catalog {
    /// Adds a ClearSale analysis (those with no asynchronous module are never used).
    pub fn add_clearsale(&mut self, id: Uuid, modules: Modules) {
        if modules.mfa || modules.biolink {
            self.clearsale.push((id, modules));
        }
    }

    /// Adds a Unico process with its status (only 2, 3 and 4 are used).
    pub fn add_unico(&mut self, id: Uuid, status: u8) {
        if (2..=4).contains(&status) {
            self.unico.push((id, status));
        }
    }
}

/// Takes the first entry not in `used` whose value satisfies `wanted`.
fn take<T: Copy>(
    entries: &[(Uuid, T)],
    used: &mut HashSet<Uuid>,
    wanted: impl Fn(T) -> bool,
) -> Option<(Uuid, T)> {
    let entry = *entries
        .iter()
        .find(|(id, value)| wanted(*value) && !used.contains(id))?;
    used.insert(entry.0);
    Some(entry)
}

/// The `n`-th candidate ClearSale analysis id under `seed`.
pub fn clearsale_candidate(seed: u64, n: u32) -> Uuid {
    derived_id(seed, "clearsale", n)
}

/// The `n`-th candidate Unico process id under `seed`.
pub fn unico_candidate(seed: u64, n: u32) -> Uuid {
    derived_id(seed, "unico", n)
}

/// The Unico process id the simulator answers 404 for (dead-lettered as `not_found`).
pub fn unico_not_found_id(seed: u64) -> Uuid {
    derived_id(seed, "unico-not-found", 0)
}

/// The Unico process id the simulator answers 410 Gone for (published as `FAILED`).
pub fn unico_gone_id(seed: u64) -> Uuid {
    derived_id(seed, "unico-gone", 0)
}

fn derived_id(seed: u64, kind: &str, n: u32) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("webhook-enricher-demo/{seed}/{kind}/{n}").as_bytes(),
    )
}

/// The samples for `count` inputs (clamped to [`MIN_COUNT`]..=[`MAX_COUNT`]), or `None` when
/// `catalog` has too few suitable ids (look up more candidates and try again).
pub fn build(seed: u64, count: usize, catalog: &Catalog) -> Option<Vec<Sample>> {
    let count = count.clamp(MIN_COUNT, MAX_COUNT);
    let mut used = HashSet::new();
    let mut analysis =
        |wanted: fn(Modules) -> bool| take(&catalog.clearsale, &mut used, wanted).map(|(id, _)| id);
    let a = analysis(|m| m.mfa)?;
    let b = analysis(|m| m.biolink)?;
    let c = analysis(|m| m.mfa && m.biolink)?;
    let d = analysis(|m| m.mfa)?;
    let mut finished = || take(&catalog.unico, &mut used, |s| s == 3).map(|(id, _)| id);
    let [u1, u2, u3, u4] = [finished()?, finished()?, finished()?, finished()?];
    let base = base_date(seed);
    let minutes = |n: i64| base + chrono::Duration::minutes(n);

    let first = clearsale(
        a,
        "mfa",
        &dotnet(&minutes(0)),
        ".NET date, 7 fractional digits",
    );
    let second = unico_text(u1, "\"3\"", "status as a string");
    let mut samples = vec![
        first.clone(),
        second.clone(),
        clearsale(
            b,
            "biolink",
            &minutes(1).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "biolink module",
        ),
        unico_text(u2, "3", "status as a number"),
        repeat(&first, 1),
        sample(
            Some(u3.to_string()),
            format!(r#"{{"processId":"{u3}","status":"3"}}"#),
            "`processId` instead of `id`",
            Expected::Published(Provider::Unico),
        ),
        clearsale(
            c,
            "mfa",
            &dotnet(&minutes(2)),
            "mfa of an analysis with two modules",
        ),
        clearsale(
            c,
            "biolink",
            &dotnet(&minutes(3)),
            "biolink of the same analysis: a second event",
        ),
        sample(
            Some(u4.to_string()),
            format!(r#"{{"id":"{u4}","status":"1"}}"#),
            "status 1 (processing): skipped",
            Expected::Skipped,
        ),
        unico_text(u4, "\"3\"", "the same process, finished"),
        sample(
            None,
            "{not json".to_string(),
            "not JSON",
            Expected::DeadLettered(ErrorClass::MalformedPayload),
        ),
        unico_text(
            unico_gone_id(seed),
            "\"5\"",
            "process ended in error: 410 Gone",
        ),
        sample(
            Some("A-1029".to_string()),
            format!(
                r#"{{"analysisId":"A-1029","date":"{}","type":"mfa"}}"#,
                dotnet(&minutes(4))
            ),
            "analysisId is not a GUID",
            Expected::DeadLettered(ErrorClass::InvalidId),
        ),
        repeat(&second, 2),
        Sample {
            headers: vec![("provider", "acme".to_string())],
            ..sample(
                Some(u1.to_string()),
                format!(r#"{{"id":"{u1}","status":"3"}}"#),
                "unknown `provider` header",
                Expected::DeadLettered(ErrorClass::UnsupportedEvent),
            )
        },
        Sample {
            expected: Expected::DeadLettered(ErrorClass::NotFound),
            ..unico_text(
                unico_not_found_id(seed),
                "\"3\"",
                "unknown process: 404 after the grace",
            )
        },
        clearsale(
            d,
            "mfa",
            &minutes(5).format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
            "date without offset",
        ),
        Sample {
            expected: Expected::DeadLettered(ErrorClass::UnsupportedEvent),
            ..unico_text(u2, "7", "unknown Unico status 7")
        },
    ];
    debug_assert_eq!(samples.len(), MIN_COUNT);

    for n in 0..count - MIN_COUNT {
        let previous = samples.len();
        let next = match filler(n) {
            Filler::Repeat => repeat(&samples[previous - 1], previous),
            Filler::ClearSale => {
                let (id, modules) = take(&catalog.clearsale, &mut used, |_| true)?;
                let kind = if modules.mfa && (!modules.biolink || n % 4 == 0) {
                    "mfa"
                } else {
                    "biolink"
                };
                clearsale(id, kind, &dotnet(&minutes(10 + n as i64)), "")
            }
            Filler::Unico => {
                let (id, status) = take(&catalog.unico, &mut used, |_| true)?;
                let status = if n % 4 == 1 {
                    status.to_string()
                } else {
                    format!("\"{status}\"")
                };
                unico_text(id, &status, "")
            }
        };
        samples.push(next);
    }
    Some(samples)
}

/// What the `n`-th sample after the story is.
enum Filler {
    ClearSale,
    Unico,
    /// An exact repeat of the sample before.
    Repeat,
}

fn filler(n: usize) -> Filler {
    match (n % 8, n % 2) {
        (7, _) => Filler::Repeat,
        (_, 0) => Filler::ClearSale,
        _ => Filler::Unico,
    }
}

/// How many ClearSale analyses and Unico processes [`build`] takes from the catalog for `count`.
pub fn ids_needed(count: usize) -> (usize, usize) {
    let fillers = count.clamp(MIN_COUNT, MAX_COUNT) - MIN_COUNT;
    let of = |kind: fn(&Filler) -> bool| 4 + (0..fillers).filter(|n| kind(&filler(*n))).count();
    (
        of(|f| matches!(f, Filler::ClearSale)),
        of(|f| matches!(f, Filler::Unico)),
    )
}

fn sample(key: Option<String>, payload: String, note: &str, expected: Expected) -> Sample {
    Sample {
        key,
        payload: payload.into_bytes(),
        headers: Vec::new(),
        note: note.to_string(),
        expected,
    }
}

fn clearsale(id: Uuid, kind: &str, date: &str, note: &str) -> Sample {
    sample(
        Some(id.to_string()),
        format!(r#"{{"analysisId":"{id}","date":"{date}","type":"{kind}"}}"#),
        note,
        Expected::Published(Provider::ClearSale),
    )
}

/// A Unico webhook; `status` is JSON (`"3"` a string, `3` a number).
fn unico_text(id: Uuid, status: &str, note: &str) -> Sample {
    sample(
        Some(id.to_string()),
        format!(r#"{{"id":"{id}","status":{status}}}"#),
        note,
        Expected::Published(Provider::Unico),
    )
}

/// An exact repeat of `original`, which is input number `number` (1-based).
fn repeat(original: &Sample, number: usize) -> Sample {
    Sample {
        note: format!("exact repeat of #{number}"),
        expected: Expected::Deduplicated,
        ..original.clone()
    }
}

/// A webhook date in September 2025, varied by the seed.
fn base_date(seed: u64) -> DateTime<Utc> {
    let start = Utc
        .with_ymd_and_hms(2025, 9, 26, 17, 21, 11)
        .single()
        .unwrap_or_default();
    start
        + chrono::Duration::seconds((seed % 86_400) as i64)
        + chrono::Duration::nanoseconds(36_784_500)
}

/// The .NET way: 7 fractional digits and `Z` (`2025-09-26T17:21:11.0367845Z`).
fn dotnet(date: &DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        date.format("%Y-%m-%dT%H:%M:%S"),
        date.timestamp_subsec_nanos() / 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, DecoderSettings, RawEvent};

    fn catalog(seed: u64, n: u32) -> Catalog {
        let mut catalog = Catalog::default();
        for i in 0..n {
            let modules = Modules {
                mfa: i % 3 != 2,
                biolink: i % 2 == 0,
            };
            catalog.add_clearsale(clearsale_candidate(seed, i), modules);
            catalog.add_unico(unico_candidate(seed, i), [3, 3, 2, 4, 3][i as usize % 5]);
        }
        catalog
    }

    #[test]
    fn same_seed_same_samples_and_the_seed_matters() {
        let a = build(1, 40, &catalog(1, 60)).unwrap();
        assert_eq!(a, build(1, 40, &catalog(1, 60)).unwrap());
        assert_eq!(a.len(), 40);
        assert_ne!(a, build(2, 40, &catalog(2, 60)).unwrap());
    }

    #[test]
    fn count_is_clamped_and_a_small_catalog_is_reported() {
        assert_eq!(build(0, 3, &catalog(0, 60)).unwrap().len(), MIN_COUNT);
        assert_eq!(build(0, 5000, &catalog(0, 2000)).unwrap().len(), MAX_COUNT);
        assert!(build(0, 40, &catalog(0, 3)).is_none());

        let (clearsale, unico) = ids_needed(40);
        let exact = |clearsale: usize, unico: usize| {
            let mut catalog = Catalog::default();
            for i in 0..clearsale as u32 {
                let both = Modules {
                    mfa: true,
                    biolink: true,
                };
                catalog.add_clearsale(clearsale_candidate(0, i), both);
            }
            for i in 0..unico as u32 {
                catalog.add_unico(unico_candidate(0, i), 3);
            }
            catalog
        };
        assert_eq!(build(0, 40, &exact(clearsale, unico)).unwrap().len(), 40);
        assert!(build(0, 40, &exact(clearsale - 1, unico)).is_none());
        assert!(build(0, 40, &exact(clearsale, unico - 1)).is_none());
    }

    #[test]
    fn webhooks_say_what_the_provider_holds() {
        let mut catalog = Catalog::default();
        let mfa_only = Modules {
            mfa: true,
            biolink: false,
        };
        let biolink_only = Modules {
            mfa: false,
            biolink: true,
        };
        for i in 0..100 {
            let modules = if i % 2 == 0 { mfa_only } else { biolink_only };
            catalog.add_clearsale(clearsale_candidate(0, i), modules);
            catalog.add_unico(unico_candidate(0, i), if i < 4 { 3 } else { 4 });
        }
        let both = Modules {
            mfa: true,
            biolink: true,
        };
        catalog.add_clearsale(clearsale_candidate(0, 100), both);
        catalog.add_clearsale(clearsale_candidate(0, 101), Modules::default());
        catalog.add_unico(unico_candidate(0, 101), 1);
        let samples = build(0, 60, &catalog).unwrap();
        for i in 0..100 {
            let id = clearsale_candidate(0, i).to_string();
            let kind = if i % 2 == 0 { "mfa" } else { "biolink" };
            for s in samples
                .iter()
                .filter(|s| s.key.as_deref() == Some(id.as_str()))
            {
                let text = String::from_utf8(s.payload.clone()).unwrap();
                assert!(text.contains(&format!(r#""type":"{kind}""#)), "{text}");
            }
        }
        let unused = [clearsale_candidate(0, 101), unico_candidate(0, 101)];
        assert!(samples
            .iter()
            .all(|s| unused.iter().all(|id| s.key != Some(id.to_string()))));
        // Fillers carry the process's status, as a string or a number.
        let fillers = &samples[MIN_COUNT..];
        assert!(fillers
            .iter()
            .any(|s| s.payload.ends_with(br#""status":"4"}"#)));
        assert!(fillers
            .iter()
            .any(|s| s.payload.ends_with(br#""status":4}"#)));
    }

    #[test]
    fn decoding_agrees_with_every_expectation() {
        let settings = DecoderSettings::default();
        for sample in build(7, 120, &catalog(7, 200)).unwrap() {
            let provider_header = sample
                .headers
                .iter()
                .find(|(k, _)| *k == "provider")
                .map(|(_, v)| v.as_bytes());
            let decoded = decode(
                RawEvent {
                    topic: "webhooks.raw",
                    payload: Some(&sample.payload),
                    provider_header,
                },
                &settings,
            );
            match (sample.expected, decoded) {
                (Expected::Published(p), Ok(crate::event::Decoded::Enrich(e))) => {
                    assert_eq!(e.provider, p, "{}", sample.note);
                    assert_eq!(sample.key, Some(e.subject_id.to_string()));
                }
                (Expected::Deduplicated, Ok(crate::event::Decoded::Enrich(_))) => {}
                (Expected::Skipped, Ok(crate::event::Decoded::Skip(_))) => {}
                (Expected::DeadLettered(class), Err(rejection))
                    if class != ErrorClass::NotFound =>
                {
                    assert_eq!(rejection.class, class, "{}", sample.note);
                }
                (Expected::DeadLettered(ErrorClass::NotFound), Ok(_)) => {}
                (expected, decoded) => panic!("{}: {expected:?} vs {decoded:?}", sample.note),
            }
        }
    }

    #[test]
    fn repeats_are_byte_for_byte_copies_of_an_earlier_sample() {
        let samples = build(3, 200, &catalog(3, 300)).unwrap();
        let repeats = samples
            .iter()
            .enumerate()
            .filter(|(_, s)| s.expected == Expected::Deduplicated);
        let mut n = 0;
        for (i, repeat) in repeats {
            n += 1;
            assert!(samples[..i].iter().any(|s| s.payload == repeat.payload
                && s.key == repeat.key
                && matches!(s.expected, Expected::Published(_))));
        }
        assert_eq!(n, 2 + (200 - MIN_COUNT) / 8);
    }

    #[test]
    fn dotnet_dates_have_seven_digits() {
        let date = base_date(0);
        assert_eq!(dotnet(&date), "2025-09-26T17:21:11.0367845Z");
    }
}
