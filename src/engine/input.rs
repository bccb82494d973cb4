//! An input record, detached from librdkafka's buffers so it can cross threads.

use super::offsets::TopicPartition;
use std::sync::Arc;

/// One consumed record.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRecord {
    /// Shared by every record of the topic (see [`InputRecord::from_message`]).
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Headers in order; values may be null.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record timestamp (create or log-append time), ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl InputRecord {
    /// The record's partition.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }

    /// Detaches a librdkafka message. `topic` is the topic's name, shared (the caller keeps one
    /// per topic so records do not each allocate it).
    pub fn from_message<M: rdkafka::Message>(m: &M, topic: Arc<str>) -> Self {
        use rdkafka::message::Headers;
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}
