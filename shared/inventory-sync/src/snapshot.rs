//! The warehouse's inventory snapshot (schema: `docs/inventory-snapshot.md`), as JSON or CSV.

use std::io::BufRead;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

/// Stock levels at one warehouse at one moment.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The warehouse's id for it: the idempotency key.
    pub snapshot_id: String,
    /// When the levels were true (RFC 3339, or a date = midnight UTC).
    #[serde(deserialize_with = "instant")]
    pub as_of: DateTime<Utc>,
    /// The DEAR location they are for (else the setting's).
    #[serde(default)]
    pub location: Option<String>,
    /// One line per SKU (and batch).
    pub lines: Vec<SnapshotLine>,
}

/// One SKU's level.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLine {
    /// The SKU.
    pub sku: String,
    /// The quantity (≥ 0; a JSON number or a decimal string).
    #[serde(deserialize_with = "quantity")]
    pub quantity: Decimal,
    /// Batch or serial number.
    #[serde(default)]
    pub batch: Option<String>,
}

/// A snapshot that cannot be used: where and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SnapshotError {
    /// The field (`lines[12].quantity`) or CSV position (`line 13, quantity`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SnapshotError {
    SnapshotError {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads `2026-11-20T06:00:00Z` or `2026-11-20` (midnight UTC), as the settings' dates are read.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    dearsync_core::settings::SettingInstant::parse(text).map(|i| i.0)
}

fn instant<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    parse_instant(&text).map_err(serde::de::Error::custom)
}

/// Reads a quantity's exact text.
pub fn parse_quantity(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    let q = t
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(t))
        .map_err(|_| format!("{t:?} is not a number"))?;
    if q.is_sign_negative() && !q.is_zero() {
        return Err(format!("{t} is negative"));
    }
    Ok(q)
}

fn quantity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let text = match &v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a number, got {other}"
            )));
        }
    };
    parse_quantity(&text).map_err(serde::de::Error::custom)
}

impl Snapshot {
    /// Reads a JSON snapshot from a reader (streamed, not loaded as text first).
    pub fn from_json_reader(reader: impl std::io::Read) -> Result<Snapshot, SnapshotError> {
        let de = &mut serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
        let s: Snapshot = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." {
                    "(snapshot)".to_owned()
                } else {
                    path
                },
                e.inner().to_string(),
            )
        })?;
        s.check()?;
        Ok(s)
    }

    /// Reads a CSV snapshot: header `sku,quantity` with optional `batch` and `location` columns
    /// (a location column must hold one location); id, time and location come from the caller.
    pub fn from_csv_reader(
        reader: impl std::io::Read,
        snapshot_id: &str,
        as_of: DateTime<Utc>,
        location: Option<&str>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut lines = std::io::BufReader::new(reader).lines();
        let header = lines
            .next()
            .ok_or_else(|| {
                err(
                    "line 1",
                    "the file is empty; expected a header sku,quantity",
                )
            })?
            .map_err(|e| err("line 1", e.to_string()))?;
        let cols: Vec<String> = header
            .split(',')
            .map(|c| c.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        let col = |name: &str| cols.iter().position(|c| c == name);
        let (Some(sku_col), Some(qty_col)) = (col("sku"), col("quantity")) else {
            return Err(err(
                "line 1",
                format!("the header {header:?} must name sku and quantity columns"),
            ));
        };
        if let Some(unknown) = cols
            .iter()
            .find(|c| !["sku", "quantity", "batch", "location"].contains(&c.as_str()))
        {
            return Err(err(
                "line 1",
                format!("unknown column {unknown:?} (known: sku, quantity, batch, location)"),
            ));
        }
        let (batch_col, loc_col) = (col("batch"), col("location"));
        let mut out = Vec::new();
        let mut file_location: Option<String> = location.map(str::to_owned);
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let line = line.map_err(|e| err(format!("line {n}"), e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != cols.len() {
                return Err(err(
                    format!("line {n}"),
                    format!("{} fields, the header has {}", fields.len(), cols.len()),
                ));
            }
            let quantity = parse_quantity(fields[qty_col])
                .map_err(|m| err(format!("line {n}, quantity"), m))?;
            if let Some(c) = loc_col {
                let here = fields[c];
                match &file_location {
                    Some(l) if !l.eq_ignore_ascii_case(here) => {
                        return Err(err(
                            format!("line {n}, location"),
                            format!("{here:?} differs from {l:?}: one snapshot is one location"),
                        ));
                    }
                    None => file_location = Some(here.to_owned()),
                    _ => {}
                }
            }
            out.push(SnapshotLine {
                sku: fields[sku_col].to_owned(),
                quantity,
                batch: batch_col
                    .map(|c| fields[c].to_owned())
                    .filter(|b| !b.is_empty()),
            });
        }
        let s = Snapshot {
            snapshot_id: snapshot_id.to_owned(),
            as_of,
            location: file_location,
            lines: out,
        };
        s.check()?;
        Ok(s)
    }

    /// Checks ids, SKUs and duplicates.
    pub fn check(&self) -> Result<(), SnapshotError> {
        if self.snapshot_id.trim().is_empty() {
            return Err(err("snapshot_id", "must not be empty"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.lines.iter().enumerate() {
            if l.sku.trim().is_empty() {
                return Err(err(format!("lines[{i}].sku"), "must not be empty"));
            }
            let key = (
                l.sku.trim().to_ascii_lowercase(),
                l.batch.as_deref().map(str::trim).unwrap_or("").to_owned(),
            );
            if !seen.insert(key) {
                return Err(err(
                    format!("lines[{i}].sku"),
                    format!("{:?} (batch {:?}) is listed twice", l.sku, l.batch),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_csv_read_the_same_snapshot() {
        let json = r#"{"snapshot_id":"S1","as_of":"2026-11-20T06:00:00Z","location":"Main Warehouse",
            "lines":[{"sku":"AF308","quantity":600,"batch":null},{"sku":"B","quantity":"2.5","batch":"L1"}]}"#;
        let a = Snapshot::from_json_reader(json.as_bytes()).unwrap();
        let csv = "sku,quantity,batch\nAF308,600,\nB,2.5,L1\n";
        let b = Snapshot::from_csv_reader(
            csv.as_bytes(),
            "S1",
            parse_instant("2026-11-20T06:00:00Z").unwrap(),
            Some("Main Warehouse"),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_snapshots_name_the_place() {
        let e = Snapshot::from_json_reader(
            r#"{"snapshot_id":"S","as_of":"2026-11-20","lines":[{"sku":"A","quantity":-1}]}"#
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field, "lines[0].quantity", "{e}");
        let e = Snapshot::from_json_reader(
            r#"{"snapshot_id":"S","as_of":"soon","lines":[]}"#.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field, "as_of");
        let e = Snapshot::from_json_reader(r#"{"snapshot_id":"S","as_of":"2026-11-20","lines":[{"sku":"A","quantity":1},{"sku":"a","quantity":2}]}"#.as_bytes()).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        let at = parse_instant("2026-11-20").unwrap();
        let e = Snapshot::from_csv_reader("sku,qty\n".as_bytes(), "S", at, None).unwrap_err();
        assert!(e.message.contains("sku and quantity"), "{e}");
        let e =
            Snapshot::from_csv_reader("sku,quantity\nA,x\n".as_bytes(), "S", at, None).unwrap_err();
        assert_eq!(e.field, "line 2, quantity");
        let e = Snapshot::from_csv_reader(
            "sku,quantity,location\nA,1,Main\nB,2,East\n".as_bytes(),
            "S",
            at,
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "line 3, location");
    }
}
