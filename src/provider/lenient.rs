//! Tolerant field decoders for provider payloads whose types are not documented.

use serde::{Deserialize, Deserializer};

/// A string field that may arrive as a JSON string, number or boolean. Null and absent are `None`;
/// objects and arrays are kept as their JSON text. Scalars are read without an intermediate
/// `serde_json::Value` (this runs for every field of every provider answer).
pub fn opt_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_any(OptStringVisitor)
}

struct OptStringVisitor;

impl<'de> serde::de::Visitor<'de> for OptStringVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, number, boolean, null, object or array")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // The same text serde_json writes for the number.
        Ok(Some(serde_json::Value::from(v).to_string()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let v = serde_json::Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Some(v.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = serde_json::Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Some(v.to_string()))
    }
}

/// A number field that may arrive as a JSON number or a numeric string. Anything else is `None`.
pub fn opt_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }))
}

/// An integer field that may arrive as a JSON number or a numeric string.
pub fn opt_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_string")]
        v: Option<String>,
    }

    fn read(json: &str) -> Option<String> {
        serde_json::from_str::<T>(json).unwrap().v
    }

    #[test]
    fn opt_string_reads_every_json_kind() {
        assert_eq!(read(r#"{"v":"a"}"#).as_deref(), Some("a"));
        assert_eq!(read(r#"{"v":"a\"b"}"#).as_deref(), Some("a\"b"));
        assert_eq!(read(r#"{"v":7}"#).as_deref(), Some("7"));
        assert_eq!(read(r#"{"v":-7}"#).as_deref(), Some("-7"));
        assert_eq!(read(r#"{"v":1.5}"#).as_deref(), Some("1.5"));
        assert_eq!(read(r#"{"v":true}"#).as_deref(), Some("true"));
        assert_eq!(read(r#"{"v":null}"#), None);
        assert_eq!(read(r#"{}"#), None);
        assert_eq!(read(r#"{"v":[1,"x"]}"#).as_deref(), Some(r#"[1,"x"]"#));
        assert_eq!(
            read(r#"{"v":{"a":{"b":1}}}"#).as_deref(),
            Some(r#"{"a":{"b":1}}"#)
        );
    }
}
