//! Where records go: the `[output]` section (the output topics by provider and ClearSale
//! module, the dead-letter topic, the wire format).

use crate::provider::Provider;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[output]` section: where records go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputSettings {
    /// Topic for enriched ClearSale records.
    pub clearsale_topic: String,
    /// Topic for enriched Unico records.
    pub unico_topic: String,
    /// Optional per-module topics for ClearSale, by webhook `type` (lowercase), e.g.
    /// `{ mfa = "clearsale.mfa.enriched" }`; other types go to `clearsale_topic`.
    pub clearsale_module_topics: BTreeMap<String, String>,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// The wire format of output values and the Schema Registry.
    pub encoding: crate::avro::EncodingSettings,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            clearsale_topic: "clearsale.analysis.enriched".into(),
            unico_topic: "unico.process.enriched".into(),
            clearsale_module_topics: BTreeMap::new(),
            dead_letter_topic: "webhooks.dead-letter".into(),
            encoding: crate::avro::EncodingSettings::default(),
        }
    }
}

impl OutputSettings {
    /// The output topic of an enriched event.
    pub fn topic_for(&self, provider: Provider, clearsale_type: Option<&str>) -> &str {
        match provider {
            Provider::Unico => &self.unico_topic,
            Provider::ClearSale => clearsale_type
                .and_then(|t| {
                    self.clearsale_module_topics
                        .get(&t.trim().to_ascii_lowercase())
                })
                .unwrap_or(&self.clearsale_topic),
        }
    }

    /// Every topic a record may be published to (for schema registration at startup).
    pub fn all_record_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = [self.clearsale_topic.clone(), self.unico_topic.clone()]
            .into_iter()
            .chain(self.clearsale_module_topics.values().cloned())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}
