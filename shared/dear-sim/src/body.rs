//! Reading request bodies and queries the way DEAR does: property names case-insensitively,
//! numbers or numeric strings, GUIDs in any case, dates in any of DEAR's shapes.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::NaiveDateTime;
use dear_client::DearDateTime;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use crate::rules::ApiError;

/// A property, by case-insensitive name.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// A non-blank string property.
pub fn text(v: &Value, key: &str) -> Option<String> {
    match field(v, key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A decimal property; a non-number is a 400 naming it.
pub fn decimal(v: &Value, key: &str) -> Result<Option<Decimal>, ApiError> {
    let bad = || ApiError::bad(format!("Property '{key}' has an invalid value"));
    match field(v, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let t = n.to_string();
            Decimal::from_str(&t)
                .or_else(|_| Decimal::from_scientific(&t))
                .map(Some)
                .map_err(|_| bad())
        }
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Decimal::from_str(s.trim()).map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// A GUID property; a malformed one is a 400 naming it.
pub fn guid(v: &Value, key: &str) -> Result<Option<Uuid>, ApiError> {
    match text(v, key) {
        None => Ok(None),
        Some(t) => Uuid::parse_str(&t)
            .map(Some)
            .map_err(|_| ApiError::bad(format!("Property '{key}' is not a valid GUID: {t}"))),
    }
}

/// A date property; a malformed one is a 400 naming it.
pub fn date(v: &Value, key: &str) -> Result<Option<NaiveDateTime>, ApiError> {
    match text(v, key) {
        None => Ok(None),
        Some(t) => DearDateTime::parse(&t)
            .map(|d| Some(d.0))
            .map_err(|_| ApiError::bad(format!("Property '{key}' is not a valid date: {t}"))),
    }
}

/// A boolean property (`true`, `"true"`, `1`).
pub fn flag(v: &Value, key: &str) -> bool {
    match field(v, key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true") || s == "1",
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// An array property (missing = empty).
pub fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    field(v, key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// "Required attribute X is not provided." — DEAR's wording.
pub fn required(key: &str) -> ApiError {
    ApiError::bad(format!("Required attribute {key} is not provided."))
}

/// Query parameters with lower-cased keys (DEAR accepts `Page` and `page`).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        if let Some(raw) = raw {
            for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
                map.insert(k.to_ascii_lowercase(), v.into_owned());
            }
        }
        Self(map)
    }

    /// A non-blank parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(&key.to_ascii_lowercase())
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// A GUID parameter.
    pub fn guid(&self, key: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(key)
            .map(|t| {
                Uuid::parse_str(t).map_err(|_| {
                    ApiError::bad(format!("Parameter '{key}' is not a valid GUID: {t}"))
                })
            })
            .transpose()
    }

    /// A date parameter.
    pub fn date(&self, key: &str) -> Result<Option<NaiveDateTime>, ApiError> {
        self.get(key)
            .map(|t| {
                DearDateTime::parse(t).map(|d| d.0).map_err(|_| {
                    ApiError::bad(format!("Parameter '{key}' is not a valid date: {t}"))
                })
            })
            .transpose()
    }

    /// A boolean parameter.
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|t| t.eq_ignore_ascii_case("true") || t == "1")
    }

    /// Page and Limit: Page ≥ 1 (default 1), Limit 1–1000 (default 100).
    pub fn paging(&self) -> Result<(usize, usize), ApiError> {
        let page = match self.get("page") {
            None => 1,
            Some(t) => t
                .parse::<usize>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| ApiError::bad(format!("Page must be a number from 1: {t}")))?,
        };
        let limit = match self.get("limit") {
            None => 100,
            Some(t) => t
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=1000).contains(l))
                .ok_or_else(|| ApiError::bad(format!("Limit must be between 1 and 1000: {t}")))?,
        };
        Ok((page, limit))
    }
}
