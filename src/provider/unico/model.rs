//! Unico IDUnico response models: the OAuth2 token and `GET /processes/v1/{id}`.

use crate::provider::lenient;
use serde::Deserialize;

/// `POST /oauth2/token` 200 body.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Seconds; 3600 when absent.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// The typed view of a process.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub id: Option<String>,
    /// 1 processing, 2 divergence, 3 finished, 4 cancelled, 5 error.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub status: Option<i64>,
    #[serde(default)]
    pub unico_id: Option<ResultField>,
    #[serde(default)]
    pub identity_fraudsters: Option<ResultField>,
    #[serde(default)]
    pub government: Option<Government>,
    /// 1 passed, 2 failed.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub liveness: Option<i64>,
    /// -90..95, only when the result is inconclusive and risk scoring is on.
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub score: Option<i64>,
}

/// `{"result": "yes" | "no" | "inconclusive"}`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ResultField {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub result: Option<String>,
}

/// `{"serpro": 0..100 | -1 | -2}`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Government {
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    pub serpro: Option<i64>,
}

/// `{"Error": {"code": "40004", "description": "..."}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "Error", default)]
    pub error: Option<ErrorDetail>,
}

/// The inner error object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorDetail {
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_example() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "id": "80371b2a-3ac7-432e-866d-57fe37896ac6", "status": 3,
            "unicoId": {"result": "yes"}, "identityFraudsters": {"result": "inconclusive"},
            "government": {"serpro": 87}, "liveness": 1, "future": true
        }))
        .unwrap();
        assert_eq!(p.status, Some(3));
        assert_eq!(p.unico_id.unwrap().result.as_deref(), Some("yes"));
        assert_eq!(p.government.unwrap().serpro, Some(87));
        assert_eq!(p.score, None);
    }

    #[test]
    fn status_may_be_a_string() {
        let p: Process = serde_json::from_str(r#"{"status":"2"}"#).unwrap();
        assert_eq!(p.status, Some(2));
    }
}
