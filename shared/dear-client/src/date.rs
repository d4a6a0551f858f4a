//! DEAR's date-times: UTC, written in several shapes.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant as DEAR writes it.
///
/// Reads every shape DEAR is known to send: `2017-11-22T00:00:00`, with a `Z` and a trimmed .NET
/// fraction (`…49.75Z`, `…21.8882229Z`), with an offset, date-only `2025-10-27`, and the webhooks'
/// `05/06/2018` (day first: DEAR is an Australasian product). Writes `yyyy-MM-ddTHH:mm:ss[.fff]`,
/// without a zone, which is DEAR's documented parameter format (UTC is implied).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DearDateTime(pub NaiveDateTime);

impl DearDateTime {
    /// Now, in UTC, truncated to milliseconds (DEAR's precision for parameters).
    pub fn now() -> Self {
        Self::from_utc(Utc::now())
    }

    /// From a UTC `DateTime`, truncated to milliseconds.
    pub fn from_utc(at: DateTime<Utc>) -> Self {
        let naive = at.naive_utc();
        let millis = naive.and_utc().timestamp_subsec_millis();
        let truncated = naive.with_nanosecond(millis * 1_000_000).unwrap_or(naive);
        Self(truncated)
    }

    /// Midnight UTC of a date (DEAR returns date-only fields that way).
    pub fn from_date(date: NaiveDate) -> Self {
        Self(date.and_time(NaiveTime::MIN))
    }

    /// As a UTC `DateTime`.
    pub fn to_utc(self) -> DateTime<Utc> {
        self.0.and_utc()
    }

    /// The calendar date.
    pub fn date(self) -> NaiveDate {
        self.0.date()
    }

    /// Parses any of the shapes described on the type.
    pub fn parse(text: &str) -> Result<Self, DateParseError> {
        let t = text.trim();
        let err = || DateParseError(t.to_owned());
        if t.is_empty() {
            return Err(err());
        }
        if t.contains('/') {
            return NaiveDate::parse_from_str(t, "%d/%m/%Y")
                .map(Self::from_date)
                .map_err(|_| err());
        }
        if !t.contains(['T', 't', ' ']) {
            return NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map(Self::from_date)
                .map_err(|_| err());
        }
        let bare = t
            .strip_suffix('Z')
            .or_else(|| t.strip_suffix('z'))
            .unwrap_or(t);
        for fmt in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ] {
            if let Ok(n) = NaiveDateTime::parse_from_str(bare, fmt) {
                return Ok(Self(n));
            }
        }
        DateTime::parse_from_rfc3339(t)
            .map(|d| Self(d.naive_utc()))
            .map_err(|_| err())
    }
}

use chrono::Timelike as _;

impl fmt::Display for DearDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.nanosecond() == 0 {
            write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S"))
        } else {
            write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S%.3f"))
        }
    }
}

impl fmt::Debug for DearDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}Z")
    }
}

impl std::str::FromStr for DearDateTime {
    type Err = DateParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<DateTime<Utc>> for DearDateTime {
    fn from(value: DateTime<Utc>) -> Self {
        Self::from_utc(value)
    }
}

/// A date-time DEAR sent that matches none of its known shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a date-time in any shape DEAR uses (e.g. 2017-11-22T10:10:49.75Z)")]
pub struct DateParseError(pub String);

impl Serialize for DearDateTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DearDateTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "opt_date")]`: `null` and `""` read as `None`.
pub mod opt_date {
    use super::*;

    /// Writes `Some` as DEAR's date-time text, `None` as `null`.
    pub fn serialize<S: Serializer>(
        value: &Option<DearDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => v.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads any shape of [`DearDateTime`]; `null` and `""` are `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DearDateTime>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(t) if t.trim().is_empty() => Ok(None),
            Some(t) => DearDateTime::parse(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_known_shape() {
        let cases = [
            ("2017-11-22T00:00:00", "2017-11-22T00:00:00"),
            ("2017-11-22T10:10:49.75Z", "2017-11-22T10:10:49.750"),
            ("2017-09-29T03:00:48.043Z", "2017-09-29T03:00:48.043"),
            ("2021-01-01T01:02:21.8882229Z", "2021-01-01T01:02:21.888"),
            ("2025-10-27", "2025-10-27T00:00:00"),
            ("05/06/2018", "2018-06-05T00:00:00"),
            ("2017-11-22T12:00:00+02:00", "2017-11-22T10:00:00"),
            ("2012-11-14T13:28:33.363", "2012-11-14T13:28:33.363"),
        ];
        for (input, want) in cases {
            let got = DearDateTime::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), want, "{input}");
        }
    }

    #[test]
    fn rejects_garbage_naming_it() {
        let err = DearDateTime::parse("yesterday").unwrap_err();
        assert!(err.to_string().contains("yesterday"));
    }
}
