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
    /// Why it was diverted (`circuit_open`, `provider_slow`, `lane_diverted`).
    pub const REASON: &str = "webhook_enricher.wait.reason";

    /// Every name, to drop them from a record that is diverted again.
    pub const ALL: [&str; 7] = [
        TOPIC, PARTITION, OFFSET, TIMESTAMP, FIRST_SEEN, ATTEMPTS, REASON,
    ];
}

/// Why a record was diverted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The provider's circuit is open (or probing).
    CircuitOpen,
    /// The provider's share of the budget stayed full for `divert_after`.
    ProviderSlow,
    /// The lane was still diverted (catching up), so the record follows the ones before it.
    LaneDiverted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CircuitOpen => "circuit_open",
            Reason::ProviderSlow => "provider_slow",
            Reason::LaneDiverted => "lane_diverted",
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
        (
            names::FIRST_SEEN,
            first_seen.to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
        (names::ATTEMPTS, origin.attempts.to_string()),
        (names::REASON, reason.as_str().to_string()),
    ];
    if let Some(ts) = origin.timestamp_ms {
        h.push((names::TIMESTAMP, ts.to_string()));
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
    let topic = get(names::TOPIC)?;
    if topic.is_empty() {
        return None;
    }
    Some(Origin {
        topic: std::sync::Arc::from(topic),
        partition: get(names::PARTITION)?.parse().ok()?,
        offset: get(names::OFFSET)?.parse().ok()?,
        timestamp_ms: get(names::TIMESTAMP).and_then(|t| t.parse().ok()),
        first_seen: get(names::FIRST_SEEN)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        attempts: get(names::ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
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
