//! Tolerant (de)serialisation helpers for DEAR's JSON.
//!
//! DEAR sends money and quantities as JSON numbers with up to 4 decimal places. Going through `f64`
//! would round; these helpers read the number's exact text through [`serde_json::value::RawValue`]
//! and write a [`Decimal`] back as an exact JSON number. They therefore only work with `serde_json`,
//! which is the only format DEAR speaks. Numbers sent as strings (`"0"`, as some webhooks do) are
//! accepted too.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Parses the text of one JSON value as a decimal: a number, a string holding a number, or `null`.
fn parse_decimal_text(text: &str) -> Result<Option<Decimal>, String> {
    let text = text.trim();
    if text == "null" {
        return Ok(None);
    }
    let inner = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|e| e.to_string())?
    } else {
        text.to_owned()
    };
    let inner = inner.trim();
    if inner.is_empty() {
        return Ok(None);
    }
    let parsed = if inner.contains(['e', 'E']) {
        Decimal::from_scientific(inner)
    } else {
        Decimal::from_str_exact(inner).or_else(|_| Decimal::from_str(inner))
    };
    parsed
        .map(Some)
        .map_err(|e| format!("`{inner}` is not a decimal number: {e}"))
}

fn write_decimal<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let raw = RawValue::from_string(value.normalize().to_string()).map_err(S::Error::custom)?;
    raw.serialize(serializer)
}

/// `#[serde(with = "decimal")]` for a required decimal; `null` reads as zero.
pub mod decimal {
    use super::*;

    /// Writes the decimal as an exact JSON number.
    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        write_decimal(value, serializer)
    }

    /// Reads a JSON number (or numeric string) exactly; `null` or `""` is zero.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        let raw = <Box<RawValue>>::deserialize(deserializer)?;
        Ok(parse_decimal_text(raw.get())
            .map_err(D::Error::custom)?
            .unwrap_or_default())
    }
}

/// `#[serde(with = "opt_decimal")]` for an optional decimal.
pub mod opt_decimal {
    use super::*;

    /// Writes `Some` as an exact JSON number and `None` as `null`.
    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => write_decimal(v, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a JSON number, numeric string, `null` or `""`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        let raw = <Option<Box<RawValue>>>::deserialize(deserializer)?;
        match raw {
            None => Ok(None),
            Some(raw) => parse_decimal_text(raw.get()).map_err(D::Error::custom),
        }
    }
}

/// `#[serde(with = "decimal_map")]` for maps of name → decimal (e.g. a product's `PriceTiers`).
pub mod decimal_map {
    use super::*;
    use std::collections::BTreeMap;

    /// Writes each value as an exact JSON number.
    pub fn serialize<S: Serializer>(
        value: &BTreeMap<String, Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(value.len()))?;
        for (k, v) in value {
            let raw = RawValue::from_string(v.normalize().to_string())
                .map_err(serde::ser::Error::custom)?;
            map.serialize_entry(k, &raw)?;
        }
        map.end()
    }

    /// Reads a JSON object of numbers; `null` is an empty map, null values are skipped.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Decimal>, D::Error> {
        let raw = <Option<BTreeMap<String, Box<RawValue>>>>::deserialize(deserializer)?;
        let mut out = BTreeMap::new();
        for (k, v) in raw.unwrap_or_default() {
            if let Some(d) = parse_decimal_text(v.get()).map_err(D::Error::custom)? {
                out.insert(k, d);
            }
        }
        Ok(out)
    }
}

/// `#[serde(with = "opt_id")]` for optional GUIDs: `null` and `""` read as `None`; any case is accepted.
pub mod opt_id {
    use super::*;
    use uuid::Uuid;

    /// Writes the GUID in DEAR's lower-case hyphenated form.
    pub fn serialize<S: Serializer>(
        value: &Option<Uuid>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.serialize_str(&v.hyphenated().to_string()),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a GUID in any case; `null` and `""` are `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Uuid>, D::Error> {
        let text = <Option<String>>::deserialize(deserializer)?;
        match text.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => Uuid::parse_str(t)
                .map(Some)
                .map_err(|e| D::Error::custom(format!("`{t}` is not a GUID: {e}"))),
        }
    }
}

/// `#[serde(deserialize_with = "null_as_default")]`: `null` reads as the type's default (e.g. `""`).
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `#[serde(deserialize_with = "lenient_bool")]`: `true`/`false`, `"true"`/`"false"`, `0`/`1`, `null`.
pub fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flexible {
        Bool(bool),
        Int(i64),
        Text(String),
    }
    match Option::<Flexible>::deserialize(deserializer)? {
        None => Ok(false),
        Some(Flexible::Bool(b)) => Ok(b),
        Some(Flexible::Int(i)) => Ok(i != 0),
        Some(Flexible::Text(t)) => match t.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            other => Err(D::Error::custom(format!("`{other}` is not a boolean"))),
        },
    }
}

/// `#[serde(deserialize_with = "decimal_places")]`: a number of decimal places as a number (`4`)
/// or as a .NET format string (`"N2"`, as DEAR's reference shows for `GET me`); `null` is none.
pub fn decimal_places<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Places {
        Number(u32),
        Text(String),
    }
    match Option::<Places>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Places::Number(n)) => Ok(Some(n)),
        Some(Places::Text(t)) => {
            let digits = t.trim().trim_start_matches(['N', 'n']);
            digits.parse().map(Some).map_err(|_| {
                D::Error::custom(format!(
                    "`{t}` is not a number of decimal places (4 or \"N4\")"
                ))
            })
        }
    }
}

#[cfg(test)]
mod decimal_places_tests {
    #[derive(serde::Deserialize)]
    struct Me {
        #[serde(default, deserialize_with = "super::decimal_places")]
        places: Option<u32>,
    }

    fn places(json: &str) -> Result<Option<u32>, serde_json::Error> {
        serde_json::from_str::<Me>(json).map(|m| m.places)
    }

    #[test]
    fn both_readings_and_none_are_read_and_nonsense_is_named() {
        assert_eq!(places(r#"{"places": 4}"#).unwrap(), Some(4));
        assert_eq!(places(r#"{"places": "N2"}"#).unwrap(), Some(2));
        assert_eq!(places(r#"{"places": null}"#).unwrap(), None);
        assert_eq!(places("{}").unwrap(), None);
        let err = places(r#"{"places": "two"}"#).unwrap_err().to_string();
        assert!(
            err.contains("`two` is not a number of decimal places"),
            "{err}"
        );
    }
}
