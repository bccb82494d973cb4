//! What `redrive` does with one dead letter: the filters (error class, time, offsets), the
//! source topic, the loop guard, and the record to republish. Pure functions, no Kafka.

use crate::engine::dead_letter::names;
use crate::engine::input::InputRecord;
use crate::failure::ErrorClass;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Header names `redrive` writes on a republished record.
pub mod headers {
    /// How many times the record has been redriven, this time included (decimal). Kept by the
    /// engine like every original header, so a dead letter of a redriven record carries it.
    pub const COUNT: &str = "webhook_enricher.redrive.count";
    /// The dead letter it was redriven from: `<topic>/<partition>/<offset>`.
    pub const FROM: &str = "webhook_enricher.redrive.from";
}

/// Prefixes of the headers the service adds to a record (dead-letter and wait-topic headers);
/// a republished record has its original headers only.
const ADDED_PREFIXES: [&str; 2] = ["__connect.errors.", "webhook_enricher.wait."];

/// A command-line value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    /// Neither an RFC 3339 date-time nor `-<duration>`.
    #[error("{value:?} is neither an RFC 3339 date-time (2026-12-03T10:00:00Z) nor -<duration> (-6h, -30m)")]
    Time { value: String },
    /// Not an offset, nor a `partition=offset` list.
    #[error("{value:?} is neither an offset (120) nor a list of partition=offset (0=120,3=998)")]
    Offset { value: String },
    /// A partition named twice in a `partition=offset` list.
    #[error("partition {partition} is named twice in {value:?}")]
    RepeatedPartition { value: String, partition: i32 },
}

/// A time bound: an instant, or a duration before the start of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    At(DateTime<Utc>),
    Ago(Duration),
}

impl TimeBound {
    /// The instant, with `-<duration>` counted back from `now`.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            TimeBound::At(at) => at,
            TimeBound::Ago(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

impl FromStr for TimeBound {
    type Err = BoundError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let error = || BoundError::Time { value: s.into() };
        if let Some(ago) = s.strip_prefix('-') {
            return humantime_serde::re::humantime::parse_duration(ago)
                .map(TimeBound::Ago)
                .map_err(|_| error());
        }
        DateTime::parse_from_rfc3339(s)
            .map(|at| TimeBound::At(at.to_utc()))
            .map_err(|_| error())
    }
}

impl fmt::Display for TimeBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeBound::At(at) => {
                f.write_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
            TimeBound::Ago(d) => write!(
                f,
                "-{}",
                humantime_serde::re::humantime::format_duration(*d)
            ),
        }
    }
}

/// An offset bound of the dead-letter topic: one offset for every partition, or one per named
/// partition (a partition not named is unbounded on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetBound {
    All(i64),
    PerPartition(BTreeMap<i32, i64>),
}

impl OffsetBound {
    /// The bound for `partition`, if it has one.
    pub fn get(&self, partition: i32) -> Option<i64> {
        match self {
            OffsetBound::All(o) => Some(*o),
            OffsetBound::PerPartition(m) => m.get(&partition).copied(),
        }
    }
}

impl FromStr for OffsetBound {
    type Err = BoundError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let error = || BoundError::Offset { value: s.into() };
        let offset = |v: &str| v.trim().parse::<i64>().ok().filter(|o| *o >= 0);
        if !s.contains('=') {
            return offset(s).map(OffsetBound::All).ok_or_else(error);
        }
        let mut per = BTreeMap::new();
        for item in s.split(',') {
            let (p, o) = item.split_once('=').ok_or_else(error)?;
            let p: i32 = p
                .trim()
                .parse()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(error)?;
            let o = offset(o).ok_or_else(error)?;
            if per.insert(p, o).is_some() {
                return Err(BoundError::RepeatedPartition {
                    value: s.into(),
                    partition: p,
                });
            }
        }
        Ok(OffsetBound::PerPartition(per))
    }
}

impl fmt::Display for OffsetBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffsetBound::All(o) => write!(f, "{o}"),
            OffsetBound::PerPartition(m) => {
                let items: Vec<String> = m.iter().map(|(p, o)| format!("{p}={o}")).collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Error classes to redrive; every class when empty.
    pub classes: BTreeSet<ErrorClass>,
    /// Only dead letters at or after this instant (their timestamp, else `failed.at`).
    pub from: Option<DateTime<Utc>>,
    /// Only dead letters before this instant (end-exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Dead-letter offsets at or after these (per partition).
    pub from_offset: Option<OffsetBound>,
    /// Dead-letter offsets before these (end-exclusive, per partition).
    pub to_offset: Option<OffsetBound>,
}

/// Why a dead letter was left alone by the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FilteredBy {
    Class,
    Time,
    Offset,
}

impl FilteredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FilteredBy::Class => "class",
            FilteredBy::Time => "time",
            FilteredBy::Offset => "offset",
        }
    }
}

/// Why a dead letter that passed the filters has no source topic to go back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSource {
    /// No `__connect.errors.topic` header (not written by this service, or by hand).
    Missing,
    /// The header is empty or not UTF-8.
    Unreadable,
    /// The header names the dead-letter topic itself.
    IsDeadLetterTopic,
}

impl NoSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NoSource::Missing => "no __connect.errors.topic header",
            NoSource::Unreadable => "__connect.errors.topic is empty or not UTF-8",
            NoSource::IsDeadLetterTopic => "__connect.errors.topic names the dead-letter topic",
        }
    }
}

/// What to do with one dead letter.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Left alone: it does not match the filters.
    FilteredOut(FilteredBy),
    /// Reported: there is nowhere to send it back to (never guessed).
    NoSource(NoSource),
    /// Reported: the loop guard refuses it. `count` is what its header says (`None`: unreadable).
    Refused { count: Option<u32> },
    /// Republish `record` to `topic`.
    Redrive(Republish),
}

/// A record to write back to its source topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Republish {
    pub topic: String,
    /// The redrive count written (the previous one plus one).
    pub count: u32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The original headers, then [`headers::COUNT`] and [`headers::FROM`].
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The dead letter's error class as written in `__connect.errors.class.name` (`(none)` when
/// absent, `(unreadable)` when not UTF-8). An unknown name is kept as written.
pub fn class_name(record: &InputRecord) -> String {
    match record.header(names::CLASS) {
        None => "(none)".into(),
        Some(v) => std::str::from_utf8(v)
            .map(str::to_string)
            .unwrap_or_else(|_| "(unreadable)".into()),
    }
}

/// When the record was dead-lettered: its Kafka timestamp, else its `failed.at` header.
pub fn dead_lettered_at(record: &InputRecord) -> Option<DateTime<Utc>> {
    record
        .timestamp_ms
        .filter(|ms| *ms >= 0)
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .or_else(|| {
            let v = std::str::from_utf8(record.header(names::FAILED_AT)?).ok()?;
            DateTime::parse_from_rfc3339(v).ok().map(|t| t.to_utc())
        })
}

/// The redrive count a record carries: 0 without the header, `None` when it is unreadable.
pub fn redrive_count(record: &InputRecord) -> Option<u32> {
    match record.header(headers::COUNT) {
        None => Some(0),
        Some(v) => std::str::from_utf8(v).ok()?.trim().parse().ok(),
    }
}

/// Decides what to do with `record`, read from `dead_letter_topic`.
pub fn decide(
    record: &InputRecord,
    filter: &Filter,
    max_redrives: u32,
    dead_letter_topic: &str,
) -> Decision {
    if !filter.classes.is_empty() {
        let class = class_name(record);
        if !filter.classes.iter().any(|c| c.as_str() == class) {
            return Decision::FilteredOut(FilteredBy::Class);
        }
    }
    let below = |bound: &Option<OffsetBound>| {
        bound
            .as_ref()
            .and_then(|b| b.get(record.partition))
            .is_some_and(|o| record.offset < o)
    };
    let at_or_above = |bound: &Option<OffsetBound>| {
        bound
            .as_ref()
            .and_then(|b| b.get(record.partition))
            .is_some_and(|o| record.offset >= o)
    };
    if below(&filter.from_offset) || at_or_above(&filter.to_offset) {
        return Decision::FilteredOut(FilteredBy::Offset);
    }
    if filter.from.is_some() || filter.to.is_some() {
        // A dead letter with no time at all cannot be placed in a time range: filtered out.
        let in_range = dead_lettered_at(record).is_some_and(|at| {
            filter.from.is_none_or(|from| at >= from) && filter.to.is_none_or(|to| at < to)
        });
        if !in_range {
            return Decision::FilteredOut(FilteredBy::Time);
        }
    }
    let topic = match record.header(names::TOPIC) {
        None => return Decision::NoSource(NoSource::Missing),
        Some(v) => match std::str::from_utf8(v).map(str::trim) {
            Ok(t) if !t.is_empty() => t.to_string(),
            _ => return Decision::NoSource(NoSource::Unreadable),
        },
    };
    if topic == dead_letter_topic {
        return Decision::NoSource(NoSource::IsDeadLetterTopic);
    }
    let count = match redrive_count(record) {
        Some(c) if c < max_redrives => c,
        count => return Decision::Refused { count },
    };
    let count = count + 1;
    let mut headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .filter(|(k, _)| {
            !ADDED_PREFIXES.iter().any(|p| k.starts_with(p))
                && k != headers::COUNT
                && k != headers::FROM
        })
        .cloned()
        .collect();
    headers.push((headers::COUNT.into(), Some(count.to_string().into_bytes())));
    headers.push((
        headers::FROM.into(),
        Some(format!("{dead_letter_topic}/{}/{}", record.partition, record.offset).into_bytes()),
    ));
    Decision::Redrive(Republish {
        topic,
        count,
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DLT: &str = "webhooks.dead-letter";

    fn dead_letter(class: &str, extra: &[(&str, &str)]) -> InputRecord {
        let mut headers = vec![
            ("provider".to_string(), Some(b"clearsale".to_vec())),
            ("request-id".to_string(), Some(b"r-1".to_vec())),
            ("http.x-null".to_string(), None),
            (names::TOPIC.to_string(), Some(b"webhooks.raw".to_vec())),
            (names::PARTITION.to_string(), Some(b"2".to_vec())),
            (names::OFFSET.to_string(), Some(b"41".to_vec())),
            (names::CLASS.to_string(), Some(class.as_bytes().to_vec())),
            (
                names::FAILED_AT.to_string(),
                Some(b"2026-12-03T10:00:00.000Z".to_vec()),
            ),
        ];
        for (k, v) in extra {
            headers.retain(|(name, _)| name != k);
            headers.push((k.to_string(), Some(v.as_bytes().to_vec())));
        }
        InputRecord {
            topic: DLT.into(),
            partition: 1,
            offset: 7,
            key: Some(b"8c6b0ac3-6c0f-4ba5-9e32-0d6a7f1e2b3c".to_vec()),
            payload: Some(b"{\"analysisId\":\"x\"}".to_vec()),
            headers,
            timestamp_ms: None,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn republish(d: Decision) -> Republish {
        match d {
            Decision::Redrive(r) => r,
            other => panic!("expected a redrive, got {other:?}"),
        }
    }

    #[test]
    fn republishes_key_value_and_original_headers_with_the_count_and_origin() {
        let mut dl = dead_letter(
            "not_found",
            &[("webhook_enricher.wait.reason", "circuit_open")],
        );
        dl.headers
            .push((names::STAGE.into(), Some(b"enrich".to_vec())));
        let r = republish(decide(&dl, &Filter::default(), 3, DLT));
        assert_eq!(r.topic, "webhooks.raw");
        assert_eq!(r.count, 1);
        assert_eq!(r.key, dl.key);
        assert_eq!(r.payload, dl.payload);
        let expected: Vec<(String, Option<Vec<u8>>)> = vec![
            ("provider".into(), Some(b"clearsale".to_vec())),
            ("request-id".into(), Some(b"r-1".to_vec())),
            ("http.x-null".into(), None),
            (headers::COUNT.into(), Some(b"1".to_vec())),
            (
                headers::FROM.into(),
                Some(format!("{DLT}/1/7").into_bytes()),
            ),
        ];
        assert_eq!(r.headers, expected);
    }

    #[test]
    fn the_count_increments_from_the_one_the_record_carries_and_is_not_repeated() {
        let dl = dead_letter(
            "not_found",
            &[(headers::COUNT, "2"), (headers::FROM, "old/0/1")],
        );
        let r = republish(decide(&dl, &Filter::default(), 3, DLT));
        assert_eq!(r.count, 3);
        let counts: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| k == headers::COUNT)
            .collect();
        assert_eq!(counts, [&(headers::COUNT.to_string(), Some(b"3".to_vec()))]);
        assert_eq!(
            r.headers.iter().filter(|(k, _)| k == headers::FROM).count(),
            1
        );
    }

    #[test]
    fn the_loop_guard_refuses_a_record_at_the_limit_or_with_an_unreadable_count() {
        let at_limit = dead_letter("not_found", &[(headers::COUNT, "3")]);
        assert_eq!(
            decide(&at_limit, &Filter::default(), 3, DLT),
            Decision::Refused { count: Some(3) }
        );
        // A higher limit lets it through once more.
        assert_eq!(
            republish(decide(&at_limit, &Filter::default(), 4, DLT)).count,
            4
        );
        let garbled = dead_letter("not_found", &[(headers::COUNT, "many")]);
        assert_eq!(
            decide(&garbled, &Filter::default(), 3, DLT),
            Decision::Refused { count: None }
        );
        // --max-redrives 0 redrives nothing.
        let fresh = dead_letter("not_found", &[]);
        assert_eq!(
            decide(&fresh, &Filter::default(), 0, DLT),
            Decision::Refused { count: Some(0) }
        );
    }

    #[test]
    fn a_dead_letter_without_a_usable_source_topic_is_reported_not_guessed() {
        let mut dl = dead_letter("not_found", &[]);
        dl.headers.retain(|(k, _)| k != names::TOPIC);
        assert_eq!(
            decide(&dl, &Filter::default(), 3, DLT),
            Decision::NoSource(NoSource::Missing)
        );
        let empty = dead_letter("not_found", &[(names::TOPIC, " ")]);
        assert_eq!(
            decide(&empty, &Filter::default(), 3, DLT),
            Decision::NoSource(NoSource::Unreadable)
        );
        let itself = dead_letter("not_found", &[(names::TOPIC, DLT)]);
        assert_eq!(
            decide(&itself, &Filter::default(), 3, DLT),
            Decision::NoSource(NoSource::IsDeadLetterTopic)
        );
    }

    #[test]
    fn the_class_filter_keeps_only_the_named_classes() {
        let filter = Filter {
            classes: [ErrorClass::NotFound, ErrorClass::RetriesExhausted].into(),
            ..Filter::default()
        };
        assert!(matches!(
            decide(&dead_letter("not_found", &[]), &filter, 3, DLT),
            Decision::Redrive(_)
        ));
        assert!(matches!(
            decide(&dead_letter("retries_exhausted", &[]), &filter, 3, DLT),
            Decision::Redrive(_)
        ));
        assert_eq!(
            decide(&dead_letter("malformed_payload", &[]), &filter, 3, DLT),
            Decision::FilteredOut(FilteredBy::Class)
        );
        let mut no_class = dead_letter("x", &[]);
        no_class.headers.retain(|(k, _)| k != names::CLASS);
        assert_eq!(
            decide(&no_class, &filter, 3, DLT),
            Decision::FilteredOut(FilteredBy::Class)
        );
        assert_eq!(class_name(&no_class), "(none)");
    }

    #[test]
    fn the_time_filter_uses_the_timestamp_else_failed_at_and_is_end_exclusive() {
        let filter = Filter {
            from: Some(at("2026-12-03T09:00:00Z")),
            to: Some(at("2026-12-03T10:00:00Z")),
            ..Filter::default()
        };
        // failed.at 10:00:00 (no timestamp): at the exclusive end.
        assert_eq!(
            decide(&dead_letter("not_found", &[]), &filter, 3, DLT),
            Decision::FilteredOut(FilteredBy::Time)
        );
        let mut inside = dead_letter("not_found", &[]);
        inside.timestamp_ms = Some(at("2026-12-03T09:00:00Z").timestamp_millis());
        assert!(matches!(
            decide(&inside, &filter, 3, DLT),
            Decision::Redrive(_)
        ));
        let mut before = dead_letter("not_found", &[]);
        before.timestamp_ms = Some(at("2026-12-03T08:59:59.999Z").timestamp_millis());
        assert_eq!(
            decide(&before, &filter, 3, DLT),
            Decision::FilteredOut(FilteredBy::Time)
        );
        let mut timeless = dead_letter("not_found", &[]);
        timeless.headers.retain(|(k, _)| k != names::FAILED_AT);
        assert_eq!(
            decide(&timeless, &filter, 3, DLT),
            Decision::FilteredOut(FilteredBy::Time)
        );
        // Without a time filter, a timeless dead letter is redriven.
        assert!(matches!(
            decide(&timeless, &Filter::default(), 3, DLT),
            Decision::Redrive(_)
        ));
    }

    #[test]
    fn the_offset_filter_is_per_partition_and_end_exclusive() {
        let dl = dead_letter("not_found", &[]); // partition 1, offset 7
        let with = |from: &str, to: &str| Filter {
            from_offset: (!from.is_empty()).then(|| from.parse().unwrap()),
            to_offset: (!to.is_empty()).then(|| to.parse().unwrap()),
            ..Filter::default()
        };
        for (from, to, redriven) in [
            ("7", "8", true),
            ("8", "", false),
            ("", "7", false),
            ("0=100", "", true), // partition 1 not named: unbounded
            ("1=7", "1=8", true),
            ("1=8", "", false),
            ("", "0=1,1=7", false),
        ] {
            let decision = decide(&dl, &with(from, to), 3, DLT);
            assert_eq!(
                matches!(decision, Decision::Redrive(_)),
                redriven,
                "from {from:?} to {to:?}: {decision:?}"
            );
        }
    }

    #[test]
    fn bounds_parse_and_refuse_what_they_cannot_read() {
        assert_eq!(
            "2026-12-03T10:00:00+01:00".parse::<TimeBound>(),
            Ok(TimeBound::At(at("2026-12-03T09:00:00Z")))
        );
        assert_eq!(
            "-6h".parse::<TimeBound>(),
            Ok(TimeBound::Ago(Duration::from_secs(6 * 3600)))
        );
        let now = at("2026-12-03T12:00:00Z");
        assert_eq!(
            TimeBound::Ago(Duration::from_secs(1800)).resolve(now),
            at("2026-12-03T11:30:00Z")
        );
        for bad in ["yesterday", "6h", "-", "-6 parsecs", "2026-12-03"] {
            assert!(
                matches!(bad.parse::<TimeBound>(), Err(BoundError::Time { .. })),
                "{bad}"
            );
        }
        assert_eq!("120".parse::<OffsetBound>(), Ok(OffsetBound::All(120)));
        assert_eq!(
            "0=120, 3=998".parse::<OffsetBound>(),
            Ok(OffsetBound::PerPartition([(0, 120), (3, 998)].into()))
        );
        for bad in ["-1", "x", "0=", "=5", "0=1,", "a=1", "0=-3"] {
            assert!(
                matches!(bad.parse::<OffsetBound>(), Err(BoundError::Offset { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            "0=1,0=2".parse::<OffsetBound>(),
            Err(BoundError::RepeatedPartition {
                value: "0=1,0=2".into(),
                partition: 0
            })
        );
        assert_eq!(
            OffsetBound::PerPartition([(0, 1), (2, 3)].into()).to_string(),
            "0=1,2=3"
        );
        assert_eq!(
            TimeBound::Ago(Duration::from_secs(21600)).to_string(),
            "-6h"
        );
    }
}
