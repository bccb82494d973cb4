//! Wait-topic records: a diverted record keeps its key, value and headers unchanged and gains
//! headers saying where it came from, when it was first seen, how many provider attempts it had
//! and why it was diverted. Reading it back restores its origin, so the published record's
//! lineage and a later dead letter name the input record, not the wait topic. See the README,
//! "Wait topics".

use chrono::{DateTime, SecondsFormat, Utc};

/// Header names added to wait-topic records.
pub mod names {
    /// The input topic the record was read from.
    pub const TOPIC: &str = "webhook_enricher.wait.source.topic";
    /// Its input partition.
    pub const PARTITION: &str = "webhook_enricher.wait.source.partition";
    /// Its input offset.
    pub const OFFSET: &str = "webhook_enricher.wait.source.offset";
    /// Its input record timestamp (ms since the epoch), when it had one.
    pub const TIMESTAMP: &str = "webhook_enricher.wait.source.timestamp";
    /// When the service first read it, RFC 3339 UTC.
    pub const FIRST_SEEN: &str = "webhook_enricher.wait.first.seen";
    /// Provider attempts made before it was diverted.
    pub const ATTEMPTS: &str = "webhook_enricher.wait.attempts";
    /// Why it was diverted (`circuit_open`, `provider_slow`, `lane_diverted`,
    /// `retries_exhausted`).
    pub const REASON: &str = "webhook_enricher.wait.reason";
    /// The retry rounds it was given so far (`engine.isolation.retry_rounds`); only on a record
    /// diverted because its retries ran out.
    pub const ROUND: &str = "webhook_enricher.wait.round";
    /// Not to be tried again before this time, RFC 3339 UTC; only with [`ROUND`].
    pub const NOT_BEFORE: &str = "webhook_enricher.wait.not.before";

    /// Every name, to drop them from a record that is diverted again.
    pub const ALL: [&str; 9] = [
        TOPIC, PARTITION, OFFSET, TIMESTAMP, FIRST_SEEN, ATTEMPTS, REASON, ROUND, NOT_BEFORE,
    ];
}

/// Why a record was diverted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The provider's circuit is open (or probing).
    CircuitOpen,
    /// The provider is slower than its arrivals: its share of the budget stayed full for
    /// `divert_after`, or would take longer than that to drain at its measured pace.
    ProviderSlow,
    /// The lane was still diverted (catching up), so the record follows the ones before it.
    LaneDiverted,
    /// Its retries ran out while the provider answered other records (a poison record): it
    /// waits out a retry round before it is tried again, and is dead-lettered as
    /// `retries_exhausted` only after the last round.
    RetriesExhausted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CircuitOpen => "circuit_open",
            Reason::ProviderSlow => "provider_slow",
            Reason::LaneDiverted => "lane_diverted",
            Reason::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// Where a record read back from a wait topic came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub first_seen: Option<DateTime<Utc>>,
    pub attempts: u32,
    /// Retry rounds given so far (0 unless it was diverted because its retries ran out).
    pub round: u32,
    /// Not to be tried again before this time (the end of its current retry round).
    pub not_before: Option<DateTime<Utc>>,
}

impl Origin {
    /// It was diverted for a retry round (a poison record), not because its provider was
    /// blocked.
    pub fn in_retry_round(&self) -> bool {
        self.round > 0
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The headers a diverted record gains.
pub fn headers(
    origin: &Origin,
    reason: Reason,
    first_seen: DateTime<Utc>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (names::TOPIC, origin.topic.to_string()),
        (names::PARTITION, origin.partition.to_string()),
        (names::OFFSET, origin.offset.to_string()),
        (names::FIRST_SEEN, rfc3339(first_seen)),
        (names::ATTEMPTS, origin.attempts.to_string()),
        (names::REASON, reason.as_str().to_string()),
    ];
    if let Some(ts) = origin.timestamp_ms {
        h.push((names::TIMESTAMP, ts.to_string()));
    }
    if origin.round > 0 {
        h.push((names::ROUND, origin.round.to_string()));
        if let Some(t) = origin.not_before {
            h.push((names::NOT_BEFORE, rfc3339(t)));
        }
    }
    h
}

/// Reads the origin back from a wait-topic record's headers; `None` when they are missing or
/// unreadable (a record someone else wrote to the wait topic: it is then processed as found).
pub fn origin(headers: &[(String, Option<Vec<u8>>)]) -> Option<Origin> {
    let get = |name: &str| -> Option<&str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let time = |name: &str| {
        get(name)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let topic = get(names::TOPIC)?;
    if topic.is_empty() {
        return None;
    }
    Some(Origin {
        topic: std::sync::Arc::from(topic),
        partition: get(names::PARTITION)?.parse().ok()?,
        offset: get(names::OFFSET)?.parse().ok()?,
        timestamp_ms: get(names::TIMESTAMP).and_then(|t| t.parse().ok()),
        first_seen: time(names::FIRST_SEEN),
        attempts: get(names::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        round: get(names::ROUND).and_then(|r| r.parse().ok()).unwrap_or(0),
        not_before: time(names::NOT_BEFORE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let o = Origin {
            topic: "webhooks.raw".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_123),
            first_seen: None,
            attempts: 2,
            round: 0,
            not_before: None,
        };
        let seen = DateTime::parse_from_rfc3339("2026-12-03T08:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let hs: Vec<(String, Option<Vec<u8>>)> = headers(&o, Reason::CircuitOpen, seen)
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v.into_bytes())))
            .collect();
        let back = origin(&hs).unwrap();
        assert_eq!(back.topic.as_ref(), "webhooks.raw");
        assert_eq!((back.partition, back.offset, back.attempts), (3, 42, 2));
        assert_eq!(back.timestamp_ms, Some(1_700_000_000_123));
        assert_eq!(back.first_seen, Some(seen));
        let reason = hs.iter().find(|(k, _)| k == names::REASON).unwrap();
        assert_eq!(reason.1.as_deref(), Some(&b"circuit_open"[..]));
        assert!(!back.in_retry_round());
        assert!(hs
            .iter()
            .all(|(k, _)| k != names::ROUND && k != names::NOT_BEFORE));
    }

    #[test]
    fn a_retry_round_carries_its_round_and_due_time() {
        let due = DateTime::parse_from_rfc3339("2026-12-03T08:01:00.000Z")
            .unwrap()
            .with_timezone(&Utc);
        let o = Origin {
            topic: "webhooks.raw".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            first_seen: None,
            attempts: 9,
            round: 1,
            not_before: Some(due),
        };
        let hs: Vec<(String, Option<Vec<u8>>)> = headers(&o, Reason::RetriesExhausted, due)
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v.into_bytes())))
            .collect();
        let back = origin(&hs).unwrap();
        assert!(back.in_retry_round());
        assert_eq!((back.round, back.not_before), (1, Some(due)));
        let reason = hs.iter().find(|(k, _)| k == names::REASON).unwrap();
        assert_eq!(reason.1.as_deref(), Some(&b"retries_exhausted"[..]));
    }

    #[test]
    fn a_record_without_origin_headers_has_no_origin() {
        assert_eq!(origin(&[]), None);
        let bad = vec![
            (names::TOPIC.to_string(), Some(b"t".to_vec())),
            (names::PARTITION.to_string(), Some(b"x".to_vec())),
            (names::OFFSET.to_string(), Some(b"1".to_vec())),
        ];
        assert_eq!(origin(&bad), None);
    }
}
