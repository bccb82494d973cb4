//! The range vocabulary of `replay` (that of `kafka-consumer-groups --reset-offsets` and kcat's
//! `-o s@… -o e@…`) and its resolution against what the brokers say, as pure functions.
//!
//! - `--from earliest|<offset>|<RFC 3339 time>|-<duration>`, `--to latest|…` (end-exclusive);
//! - `--partition-offsets 0=120,3=998` (or `topic:0=120`): per-partition starts;
//! - `--from-timestamp` / `--to-timestamp`: a time only (RFC 3339, or milliseconds since the
//!   epoch).
//!
//! A time is resolved twice: the start offset comes from the broker's offsets-for-times answer,
//! and each record's own timestamp is checked against the window on the client, so the result is
//! exact even when the broker answers coarsely (Tansu answers offset 0 for a time in the middle
//! of the log, the mock cluster answers -1: then the start falls back to the earliest offset and
//! the filter does the rest). A time end is the end captured at start, with the same filter.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A position in a partition, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Earliest,
    Latest,
    Offset(i64),
    Time(DateTime<Utc>),
    /// This long before the moment the command started.
    Ago(Duration),
}

/// A position or partition list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{input:?} is not a position: use earliest, latest, an offset, an RFC 3339 time (2026-01-31T12:00:00Z) or a duration ago (-6h)")]
    Position { input: String },
    #[error("{input:?} is not a time: use RFC 3339 (2026-01-31T12:00:00Z) or milliseconds since the epoch")]
    Time { input: String },
    #[error("{input:?} is not a duration ago: {reason}")]
    Duration { input: String, reason: String },
    #[error("{input:?} is not a partition offset: use PARTITION=OFFSET or TOPIC:PARTITION=OFFSET, comma-separated (0=120,3=998)")]
    PartitionOffset { input: String },
    #[error("partition {partition} is given twice in --partition-offsets")]
    Repeated { partition: String },
}

impl FromStr for Position {
    type Err = RangeError;

    fn from_str(input: &str) -> Result<Self, RangeError> {
        let s = input.trim();
        match s.to_ascii_lowercase().as_str() {
            "earliest" | "beginning" => return Ok(Position::Earliest),
            "latest" | "end" => return Ok(Position::Latest),
            _ => {}
        }
        if let Some(ago) = s.strip_prefix('-') {
            if ago.starts_with(|c: char| c.is_ascii_digit())
                && !ago.chars().all(|c| c.is_ascii_digit())
            {
                return humantime::parse_duration(ago)
                    .map(Position::Ago)
                    .map_err(|e| RangeError::Duration {
                        input: input.to_string(),
                        reason: e.to_string(),
                    });
            }
        }
        if let Ok(offset) = s.parse::<i64>() {
            if offset >= 0 {
                return Ok(Position::Offset(offset));
            }
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Position::Time(t.with_timezone(&Utc)))
            .map_err(|_| RangeError::Position {
                input: input.to_string(),
            })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Earliest => f.write_str("earliest"),
            Position::Latest => f.write_str("latest"),
            Position::Offset(o) => write!(f, "{o}"),
            Position::Time(t) => {
                f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Position::Ago(d) => write!(f, "-{}", humantime::format_duration(*d)),
        }
    }
}

impl Position {
    /// A time given to `--from-timestamp` / `--to-timestamp`: RFC 3339, or milliseconds since
    /// the epoch.
    pub fn parse_time(input: &str) -> Result<Self, RangeError> {
        let s = input.trim();
        if let Ok(ms) = s.parse::<i64>() {
            return DateTime::from_timestamp_millis(ms)
                .map(Position::Time)
                .ok_or_else(|| RangeError::Time {
                    input: input.to_string(),
                });
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Position::Time(t.with_timezone(&Utc)))
            .map_err(|_| RangeError::Time {
                input: input.to_string(),
            })
    }

    /// The time this position stands for, if it is one (`now` is when the command started).
    pub fn time_ms(&self, now: DateTime<Utc>) -> Option<i64> {
        match self {
            Position::Time(t) => Some(t.timestamp_millis()),
            Position::Ago(d) => {
                let d = chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX);
                Some(
                    now.checked_sub_signed(d)
                        .map_or(i64::MIN, |t| t.timestamp_millis()),
                )
            }
            _ => None,
        }
    }
}

/// `--partition-offsets`: per-partition start offsets, for every input topic (`0=120`) or one
/// (`topic:0=120`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOffsets(BTreeMap<(Option<String>, i32), i64>);

impl FromStr for PartitionOffsets {
    type Err = RangeError;

    fn from_str(input: &str) -> Result<Self, RangeError> {
        let mut map = BTreeMap::new();
        for item in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || RangeError::PartitionOffset {
                input: item.to_string(),
            };
            let (target, offset) = item.split_once('=').ok_or_else(bad)?;
            let (topic, partition) = match target.rsplit_once(':') {
                Some((t, p)) if !t.is_empty() => (Some(t.trim().to_string()), p),
                Some(_) => return Err(bad()),
                None => (None, target),
            };
            let partition: i32 = partition.trim().parse().map_err(|_| bad())?;
            let offset: i64 = offset.trim().parse().map_err(|_| bad())?;
            if partition < 0 || offset < 0 {
                return Err(bad());
            }
            if map.insert((topic, partition), offset).is_some() {
                return Err(RangeError::Repeated {
                    partition: target.trim().to_string(),
                });
            }
        }
        if map.is_empty() {
            return Err(RangeError::PartitionOffset {
                input: input.to_string(),
            });
        }
        Ok(Self(map))
    }
}

impl fmt::Display for PartitionOffsets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|((t, p), o)| match t {
                Some(t) => format!("{t}:{p}={o}"),
                None => format!("{p}={o}"),
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

impl PartitionOffsets {
    /// The start given for `partition` of `topic` (a topic-specific entry wins).
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0
            .get(&(Some(topic.to_string()), partition))
            .or_else(|| self.0.get(&(None, partition)))
            .copied()
    }

    /// The entries naming a topic, for the check that every topic named is an input topic.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.0.keys().filter_map(|(t, _)| t.as_deref())
    }
}

/// The range as given: where to start and where to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSpec {
    /// `None` with `partition_offsets`: only the partitions listed there are replayed.
    pub from: Option<Position>,
    pub to: Position,
    pub partition_offsets: PartitionOffsets,
}

/// What the broker said about one partition at the start of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The earliest offset still in the log.
    pub low: i64,
    /// The end of the log (the next offset to be written).
    pub high: i64,
    /// The offsets-for-times answer for the start time, when the start is a time: the first
    /// offset at or after it, or `None` when the broker answered -1 or nothing.
    pub start_for_time: Option<i64>,
    /// The replay group's committed offset, if any.
    pub committed: Option<i64>,
}

/// One partition's resolved range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Where the range starts (before resuming).
    pub start: i64,
    /// Where this run starts: `start`, or the replay group's progress within the range.
    pub resume_at: i64,
    /// The end, exclusive.
    pub end: i64,
}

impl Resolved {
    /// Offsets left to read in this run (records, on a log without gaps).
    pub fn remaining(&self) -> i64 {
        (self.end - self.resume_at).max(0)
    }

    /// True when this run resumes committed progress.
    pub fn resumed(&self) -> bool {
        self.resume_at != self.start
    }
}

/// The time window the records must fall in: from a time start, to a time end.
pub fn window(spec: &RangeSpec, now: DateTime<Utc>) -> super::TimeWindow {
    super::TimeWindow {
        from_ms: spec.from.as_ref().and_then(|p| p.time_ms(now)),
        to_ms: spec.to.time_ms(now),
    }
}

/// Resolves one partition's range from what the broker said.
///
/// - start: `earliest` is the low watermark, `latest` the end, an offset is clamped into the
///   log, a time is the offsets-for-times answer (clamped), or the earliest offset when the
///   broker answered -1 (the time filter makes it exact); a `--partition-offsets` entry wins;
///   without `--from`, a partition not listed there has an empty range;
/// - end: `latest` (the default) and a time are the end captured now (a time end is exact by
///   the filter), an offset is clamped, `earliest` is the low watermark;
/// - resume: the replay group's committed offset when it lies inside the range.
pub fn resolve(spec: &RangeSpec, topic: &str, partition: i32, seen: Observed) -> Resolved {
    let clamp = |o: i64| o.clamp(seen.low, seen.high.max(seen.low));
    let end = match &spec.to {
        Position::Earliest => seen.low,
        Position::Latest | Position::Time(_) | Position::Ago(_) => seen.high,
        Position::Offset(o) => clamp(*o),
    };
    let start = match spec.partition_offsets.get(topic, partition) {
        Some(o) => clamp(o),
        None => match &spec.from {
            None => end,
            Some(Position::Earliest) => seen.low,
            Some(Position::Latest) => seen.high,
            Some(Position::Offset(o)) => clamp(*o),
            Some(Position::Time(_) | Position::Ago(_)) => seen
                .start_for_time
                .filter(|o| *o >= 0)
                .map_or(seen.low, clamp),
        },
    };
    let start = start.min(end);
    let resume_at = match seen.committed {
        Some(c) if c > start => c.min(end),
        _ => start,
    };
    Resolved {
        start,
        resume_at,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn positions_parse_in_every_form() {
        assert_eq!("earliest".parse(), Ok(Position::Earliest));
        assert_eq!(" LATEST ".parse(), Ok(Position::Latest));
        assert_eq!("120".parse(), Ok(Position::Offset(120)));
        assert_eq!("0".parse(), Ok(Position::Offset(0)));
        assert_eq!(
            "-6h".parse(),
            Ok(Position::Ago(Duration::from_secs(6 * 3600)))
        );
        assert_eq!(
            "-1h30m".parse(),
            Ok(Position::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            "2026-01-31T12:00:00-03:00".parse(),
            Ok(Position::Time(t("2026-01-31T15:00:00Z")))
        );
    }

    #[test]
    fn bad_positions_are_refused_with_what_is_accepted() {
        for bad in ["", "soon", "-5", "2026-01-31", "1.5", "-6 parsecs"] {
            let e = bad.parse::<Position>().expect_err(bad);
            assert!(
                e.to_string().contains(&format!("{bad:?}")),
                "{bad}: the error names the input: {e}"
            );
        }
        assert!(matches!(
            "-6 parsecs".parse::<Position>(),
            Err(RangeError::Duration { .. })
        ));
    }

    #[test]
    fn timestamps_are_rfc3339_or_epoch_milliseconds() {
        assert_eq!(
            Position::parse_time("1767225600000"),
            Ok(Position::Time(t("2026-01-01T00:00:00Z")))
        );
        assert_eq!(
            Position::parse_time("2026-01-01T00:00:00Z"),
            Ok(Position::Time(t("2026-01-01T00:00:00Z")))
        );
        assert!(matches!(
            Position::parse_time("earliest"),
            Err(RangeError::Time { .. })
        ));
    }

    #[test]
    fn positions_print_as_they_parse() {
        for s in ["earliest", "latest", "42", "-6h", "2026-01-31T12:00:00Z"] {
            let p: Position = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        }
    }

    #[test]
    fn partition_offsets_parse_for_every_topic_or_one() {
        let p: PartitionOffsets = "0=120, 3=998,audit:3=5".parse().unwrap();
        assert_eq!(p.get("in", 0), Some(120));
        assert_eq!(p.get("in", 3), Some(998));
        assert_eq!(p.get("audit", 3), Some(5), "a topic-specific entry wins");
        assert_eq!(p.get("in", 1), None);
        assert_eq!(p.topics().collect::<Vec<_>>(), vec!["audit"]);
        assert_eq!(p.to_string(), "0=120,3=998,audit:3=5");
        for bad in ["", "0", "x=1", "0=x", "-1=3", "0=-3", ":0=1"] {
            assert!(bad.parse::<PartitionOffsets>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "0=1,0=2".parse::<PartitionOffsets>(),
            Err(RangeError::Repeated {
                partition: "0".into()
            })
        );
    }

    fn spec(from: Option<&str>, to: &str) -> RangeSpec {
        RangeSpec {
            from: from.map(|f| f.parse().unwrap()),
            to: to.parse().unwrap(),
            partition_offsets: PartitionOffsets::default(),
        }
    }

    const SEEN: Observed = Observed {
        low: 10,
        high: 100,
        start_for_time: None,
        committed: None,
    };

    fn range(r: Resolved) -> (i64, i64, i64) {
        (r.start, r.resume_at, r.end)
    }

    #[test]
    fn offsets_are_clamped_into_the_log() {
        assert_eq!(
            range(resolve(&spec(Some("earliest"), "latest"), "in", 0, SEEN)),
            (10, 10, 100)
        );
        assert_eq!(
            range(resolve(&spec(Some("20"), "50"), "in", 0, SEEN)),
            (20, 20, 50)
        );
        assert_eq!(
            range(resolve(&spec(Some("0"), "500"), "in", 0, SEEN)),
            (10, 10, 100)
        );
        assert_eq!(
            range(resolve(&spec(Some("latest"), "latest"), "in", 0, SEEN)),
            (100, 100, 100)
        );
        // A start past the end is an empty range at the end.
        assert_eq!(
            range(resolve(&spec(Some("60"), "50"), "in", 0, SEEN)),
            (50, 50, 50)
        );
        assert_eq!(
            range(resolve(&spec(Some("20"), "earliest"), "in", 0, SEEN)),
            (10, 10, 10)
        );
    }

    #[test]
    fn a_time_start_uses_the_broker_answer_or_falls_back_to_earliest() {
        let s = spec(Some("2026-01-01T00:00:00Z"), "latest");
        let answered = Observed {
            start_for_time: Some(42),
            ..SEEN
        };
        assert_eq!(range(resolve(&s, "in", 0, answered)), (42, 42, 100));
        // The mock cluster's -1 (and no answer): from the earliest offset, the filter decides.
        assert_eq!(range(resolve(&s, "in", 0, SEEN)), (10, 10, 100));
        let minus_one = Observed {
            start_for_time: Some(-1),
            ..SEEN
        };
        assert_eq!(range(resolve(&s, "in", 0, minus_one)), (10, 10, 100));
        // Tansu's 0 for a mid-log time is too early: clamped into the log, the filter decides.
        let zero = Observed {
            start_for_time: Some(0),
            ..SEEN
        };
        assert_eq!(range(resolve(&s, "in", 0, zero)), (10, 10, 100));
        // A time end is the end captured now; the filter makes it exact.
        assert_eq!(
            range(resolve(&spec(Some("20"), "-1h"), "in", 0, SEEN)),
            (20, 20, 100)
        );
    }

    #[test]
    fn the_time_window_comes_from_time_positions_only() {
        let now = t("2026-01-01T06:00:00Z");
        let w = window(&spec(Some("-6h"), "2026-01-01T05:00:00Z"), now);
        assert_eq!(
            w.from_ms,
            Some(t("2026-01-01T00:00:00Z").timestamp_millis())
        );
        assert_eq!(w.to_ms, Some(t("2026-01-01T05:00:00Z").timestamp_millis()));
        assert!(window(&spec(Some("5"), "latest"), now).is_unbounded());
    }

    #[test]
    fn partition_offsets_set_the_start_of_the_partitions_they_name() {
        let mut s = spec(None, "latest");
        s.partition_offsets = "0=20,in:1=30".parse().unwrap();
        assert_eq!(range(resolve(&s, "in", 0, SEEN)), (20, 20, 100));
        assert_eq!(range(resolve(&s, "in", 1, SEEN)), (30, 30, 100));
        // Without --from, an unlisted partition is not replayed.
        assert_eq!(range(resolve(&s, "in", 2, SEEN)), (100, 100, 100));
        // With --from, it starts there.
        s.from = Some(Position::Earliest);
        assert_eq!(range(resolve(&s, "in", 2, SEEN)), (10, 10, 100));
    }

    #[test]
    fn committed_progress_inside_the_range_is_resumed() {
        let s = spec(Some("20"), "50");
        let at = |c: i64| {
            resolve(
                &s,
                "in",
                0,
                Observed {
                    committed: Some(c),
                    ..SEEN
                },
            )
        };
        assert_eq!(range(at(35)), (20, 35, 50));
        assert!(at(35).resumed());
        assert_eq!(at(35).remaining(), 15);
        // Progress of an earlier, lower range does not skip this one.
        assert_eq!(range(at(5)), (20, 20, 50));
        assert!(!at(5).resumed());
        // Progress past the end: nothing left.
        assert_eq!(range(at(80)), (20, 50, 50));
        assert_eq!(at(80).remaining(), 0);
    }
}
