//! Tolerant decoders for answer fields whose shape varies between cloud versions.
//!
//! A field the client does not strictly need must never make a whole answer unreadable.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `null` or absent → the type's default.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A string map where `null` means empty and a non-string value keeps its JSON text.
pub fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// A boolean that may also come as `"true"`/`"false"` or `null` (→ `false`).
pub fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    })
}

/// A number that may also come as a numeric string (SFS-style `"500.00"` is truncated).
pub fn flexible_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
            .unwrap_or(0),
        _ => 0,
    })
}

/// Parses the cloud's timestamps: RFC 3339, or `2016-05-25T02:42:10.856332` (UTC, no zone).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = s.trim_end_matches('Z');
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|t| t.and_utc())
}

/// A timestamp field; unreadable or missing values become `None` rather than an error.
pub fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => parse_timestamp(&s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "string_map")]
        map: BTreeMap<String, String>,
        #[serde(default, deserialize_with = "flexible_bool")]
        flag: bool,
        #[serde(default, deserialize_with = "flexible_u64")]
        size: u64,
        #[serde(default, deserialize_with = "timestamp")]
        at: Option<DateTime<Utc>>,
    }

    #[test]
    fn tolerant_fields() {
        let p: Probe = serde_json::from_str(
            r#"{"map":{"a":"x","b":1,"c":true},"flag":"true","size":"500.00","at":"2016-05-25T02:42:10.856332"}"#,
        )
        .unwrap();
        assert_eq!(p.map["a"], "x");
        assert_eq!(p.map["b"], "1");
        assert_eq!(p.map["c"], "true");
        assert!(p.flag);
        assert_eq!(p.size, 500);
        assert_eq!(
            p.at.unwrap().to_rfc3339(),
            "2016-05-25T02:42:10.856332+00:00"
        );

        let p: Probe =
            serde_json::from_str(r#"{"map":null,"flag":null,"size":null,"at":"garbage"}"#).unwrap();
        assert!(p.map.is_empty() && !p.flag && p.size == 0 && p.at.is_none());
        let p: Probe = serde_json::from_str("{}").unwrap();
        assert!(p.map.is_empty() && p.at.is_none());
    }

    #[test]
    fn timestamps_in_every_seen_form() {
        for s in [
            "2016-05-25T02:42:10.856332",
            "2016-05-25T02:42:10.856332Z",
            "2016-05-25T02:42:10.856332+00:00",
            "2016-05-25 02:42:10.856332",
        ] {
            assert_eq!(
                parse_timestamp(s).map(|t| t.timestamp()),
                Some(1_464_144_130),
                "{s}"
            );
        }
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
