//! Dropping repeats of an event: both providers deliver at least once and retry for hours.
//!
//! An in-memory moka cache of `event_id`s, bounded in entries and time-to-live. An event is marked
//! seen only after its output is acknowledged by Kafka, so a first delivery is never lost: a
//! repeat that arrives while the original is in flight waits behind it in its key's queue (same
//! event, same key) and is checked only when the original has finished; if the original failed,
//! the repeat is processed as if it were first.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// The `[dedupe]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DedupeSettings {
    /// Most event ids remembered (least recently used are evicted first). 0 disables dedupe.
    pub max_entries: u64,
    /// How long an event id is remembered after it was published.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The seen-events cache.
///
/// Least-recently-used eviction, not moka's default TinyLFU: TinyLFU admits a new key only when
/// it looks more frequent than the one it would evict, and every event id is inserted exactly
/// once, so a full TinyLFU cache may refuse the newest ids, the very ones whose repeats are
/// coming.
#[derive(Clone)]
pub struct Dedupe {
    cache: Option<moka::sync::Cache<Uuid, ()>>,
}

impl Dedupe {
    pub fn new(settings: DedupeSettings) -> Self {
        let cache = (settings.max_entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build()
        });
        Self { cache }
    }

    /// True when the event was already published (and is still remembered).
    pub fn is_duplicate(&self, event_id: &Uuid) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.contains_key(event_id))
    }

    /// Remembers an event whose output Kafka acknowledged.
    pub fn mark_published(&self, event_id: Uuid) {
        if let Some(c) = &self.cache {
            c.insert(event_id, ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_after_marking() {
        let d = Dedupe::new(DedupeSettings::default());
        let id = Uuid::new_v4();
        assert!(!d.is_duplicate(&id));
        d.mark_published(id);
        assert!(d.is_duplicate(&id));
    }

    #[test]
    fn disabled_never_drops() {
        let d = Dedupe::new(DedupeSettings {
            max_entries: 0,
            ..Default::default()
        });
        let id = Uuid::new_v4();
        d.mark_published(id);
        assert!(!d.is_duplicate(&id));
    }

    #[test]
    fn a_full_cache_remembers_the_newest_ids() {
        let d = Dedupe::new(DedupeSettings {
            max_entries: 100,
            ttl: Duration::from_secs(3600),
        });
        let ids: Vec<Uuid> = (0..1_000).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            d.mark_published(*id);
            if let Some(c) = &d.cache {
                c.run_pending_tasks();
            }
        }
        let newest = ids.last().unwrap();
        assert!(d.is_duplicate(newest), "the newest id was refused");
        let recent = ids[900..].iter().filter(|id| d.is_duplicate(id)).count();
        assert!(recent >= 90, "only {recent} of the last 100 ids remembered");
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let d = Dedupe::new(DedupeSettings {
            max_entries: 10,
            ttl: Duration::from_millis(50),
        });
        let id = Uuid::new_v4();
        d.mark_published(id);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while d.is_duplicate(&id) {
            assert!(std::time::Instant::now() < deadline, "entry never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
