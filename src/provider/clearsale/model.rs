//! ClearSale Connect response models: authentication and
//! `GET /connect/v1/integration/analysis/{analysisId}`.
//!
//! Every module is optional (a customer only gets the modules it contracted) and statuses are
//! open strings (no enum is documented). Unknown fields and modules are not modelled here; they
//! stay in the raw JSON copy kept beside the typed view.

use crate::provider::lenient;
use serde::{Deserialize, Serialize};

/// `POST /connect/v1/authenticate` request body.
#[derive(Serialize)]
pub struct AuthenticateRequest<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// `POST /connect/v1/authenticate` 200 body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticateResponse {
    pub token: String,
    /// RFC 3339, up to 7 fractional digits, offset optional.
    pub expiration_date: String,
}

/// The typed view of an analysis result.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub analysis_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub transaction_id: Option<String>,
    /// Score or Decision module (same key).
    #[serde(default)]
    pub decision: Option<DecisionModule>,
    #[serde(default)]
    pub insights: Option<InsightsModule>,
    #[serde(default)]
    pub mfa: Option<MfaModule>,
    #[serde(default)]
    pub biolink: Option<BiolinkModule>,
}

/// The Score / Decision module.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct DecisionModule {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub score: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub result: Option<String>,
    /// Free-form; kept as JSON text.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// The Insights module.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct InsightsModule {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub status: Option<String>,
    #[serde(default)]
    pub result: Vec<Insight>,
}

/// One insight.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Insight {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub description: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "lenient::opt_string")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub category: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub relevance: Option<String>,
    #[serde(default)]
    pub related_to: Vec<serde_json::Value>,
}

/// The MFA module (asynchronous).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MfaModule {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub option: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub message: Option<String>,
    /// Date-time text as sent; parsed during normalization.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub replied_at: Option<String>,
}

/// The Biolink module (asynchronous).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BiolinkModule {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub identifier_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub score: Option<f64>,
}

/// An RFC 7807 problem object (error bodies). A 401 from authenticate may instead be a bare JSON
/// string; callers fall back to that.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub detail: Option<String>,
}

impl Analysis {
    /// The status of the module a webhook `type` names (`mfa`, `biolink`, `decision`, `score`,
    /// `insights`; case-insensitive), when that module is present.
    pub fn module_status(&self, module_type: &str) -> Option<&str> {
        let status = match module_type.trim().to_ascii_lowercase().as_str() {
            "mfa" => self.mfa.as_ref()?.status.as_deref(),
            "biolink" => self.biolink.as_ref()?.status.as_deref(),
            "decision" | "score" => self.decision.as_ref()?.status.as_deref(),
            "insights" => self.insights.as_ref()?.status.as_deref(),
            _ => None,
        };
        status
    }
}

/// True when a module status means "no result yet".
pub fn is_pending_status(status: &str) -> bool {
    matches!(
        status.trim().to_ascii_lowercase().as_str(),
        "pending" | "processing" | "waiting"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_modules_and_tolerates_unknown_fields() {
        let body = serde_json::json!({
            "analysisId": "8263a268-5388-492a-bca2-28e1ff4a69f0",
            "transactionId": "tx-1",
            "decision": {"status": "approved", "score": 12.5, "result": "accept", "metadata": {"a": 1}},
            "insights": {"status": "done", "result": [{"code": 7, "description": "d", "type": "t",
                 "category": "c", "relevance": "high", "relatedTo": ["x"]}]},
            "mfa": {"status": "pending"},
            "biolink": {"status": "done", "identifierId": "b-1", "score": "0.9"},
            "newModule": {"status": "x"},
            "extra": 1
        });
        let a: Analysis = serde_json::from_value(body).unwrap();
        assert_eq!(a.transaction_id.as_deref(), Some("tx-1"));
        assert_eq!(a.decision.as_ref().unwrap().score, Some(12.5));
        assert_eq!(
            a.insights.as_ref().unwrap().result[0].code.as_deref(),
            Some("7")
        );
        assert_eq!(a.biolink.as_ref().unwrap().score, Some(0.9));
        assert_eq!(a.module_status("MFA"), Some("pending"));
        assert_eq!(a.module_status("unknown"), None);
    }

    #[test]
    fn empty_analysis_is_valid() {
        let a: Analysis = serde_json::from_str("{}").unwrap();
        assert_eq!(a, Analysis::default());
    }

    #[test]
    fn pending_statuses() {
        assert!(is_pending_status("Pending"));
        assert!(!is_pending_status("approved"));
    }
}
