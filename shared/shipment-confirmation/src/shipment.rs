//! The canonical shipment a warehouse sends (schema: `docs/canonical-shipment.md`), read strictly:
//! an unknown key, a missing field or a bad value is an error naming it.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One physical shipment from the warehouse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shipment {
    /// The warehouse's id: the idempotency key.
    pub shipment_id: String,
    /// DEAR's SaleID (this or `order_number`).
    #[serde(default)]
    pub sale_id: Option<String>,
    /// DEAR's order number (this or `sale_id`).
    #[serde(default)]
    pub order_number: Option<String>,
    /// `2026-11-20` or an RFC 3339 date-time.
    pub ship_date: String,
    /// The DEAR location it shipped from (overrides the setting).
    #[serde(default)]
    pub location: Option<String>,
    /// The warehouse's carrier.
    pub carrier: String,
    /// The carrier's service.
    #[serde(default)]
    pub service: Option<String>,
    /// The boxes.
    pub packages: Vec<Package>,
}

/// One box (carton).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// The box's name, unique in the shipment.
    #[serde(rename = "box")]
    pub r#box: String,
    /// Its tracking number.
    #[serde(default)]
    pub tracking_number: Option<String>,
    /// Its tracking URL.
    #[serde(default)]
    pub tracking_url: Option<String>,
    /// What is in it.
    pub lines: Vec<PackageLine>,
}

/// A SKU in a box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageLine {
    /// The SKU.
    pub sku: String,
    /// How many (a JSON number or a decimal string).
    #[serde(with = "quantity")]
    pub quantity: Decimal,
    /// Batch or serial number.
    #[serde(default)]
    pub batch: Option<String>,
}

mod quantity {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&v.normalize())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        // Read the number's own text (serde_json's arbitrary precision is not on): through
        // serde_json::Number, whose Display is the shortest exact text for what was sent.
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.trim().to_owned(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a number, got {other}"
                )));
            }
        };
        text.parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&text))
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a decimal number")))
    }
}

/// A shipment that cannot be applied: the field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, dotted (`packages[1].lines[0].quantity`).
    pub field: String,
    /// What is wrong, with the value.
    pub message: String,
}

impl Invalid {
    /// A new error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Shipment {
    /// Reads a shipment from JSON, naming the first bad field.
    pub fn from_json(text: &str) -> Result<Shipment, Invalid> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let shipment: Shipment = serde_path_to_error(de)?;
        shipment.check()?;
        Ok(shipment)
    }

    /// The ship date as DEAR's date-time (midnight for a bare date).
    pub fn ship_date_time(&self) -> Result<NaiveDateTime, Invalid> {
        let t = self.ship_date.trim();
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(d.and_time(chrono::NaiveTime::MIN));
        }
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return Ok(dt.naive_utc());
        }
        Err(Invalid::new(
            "ship_date",
            format!("{t:?} is not a date (2026-11-20) or an RFC 3339 date-time"),
        ))
    }

    /// Structural checks that need no DEAR data.
    pub fn check(&self) -> Result<(), Invalid> {
        self.validate().map(|_| ())
    }

    /// Checks the shipment once and computes what confirming it needs: its id, date and hashes.
    pub fn checked(&self) -> Result<Checked, Invalid> {
        let date = self.validate()?;
        let shipment = self.trimmed();
        Ok(Checked {
            id: shipment.shipment_id.clone(),
            date,
            payload_hash: self.payload_hash(),
            contents_hash: self.contents_hash(),
            shipment,
        })
    }

    /// [`Shipment::check`], answering the ship date it read.
    fn validate(&self) -> Result<NaiveDateTime, Invalid> {
        if self.shipment_id.trim().is_empty() {
            return Err(Invalid::new("shipment_id", "must not be empty"));
        }
        let sale_id = self
            .sale_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let order_number = self
            .order_number
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(id) = sale_id
            && id.parse::<uuid::Uuid>().is_err()
        {
            return Err(Invalid::new(
                "sale_id",
                format!("{id:?} is not a DEAR SaleID (a GUID)"),
            ));
        }
        if sale_id.is_none() && order_number.is_none() {
            return Err(Invalid::new(
                "sale_id",
                "give sale_id or order_number to identify the sale",
            ));
        }
        let date = self.ship_date_time()?;
        if self.carrier.trim().is_empty() {
            return Err(Invalid::new("carrier", "must not be empty"));
        }
        if self.packages.is_empty() {
            return Err(Invalid::new(
                "packages",
                "a shipment needs at least one package",
            ));
        }
        let mut boxes = HashSet::new();
        for (i, p) in self.packages.iter().enumerate() {
            let name = p.r#box.trim();
            if name.is_empty() {
                return Err(Invalid::new(
                    format!("packages[{i}].box"),
                    "must not be empty",
                ));
            }
            if !boxes.insert(name.to_ascii_lowercase()) {
                return Err(Invalid::new(
                    format!("packages[{i}].box"),
                    format!("{name:?} appears twice"),
                ));
            }
            if p.lines.is_empty() {
                return Err(Invalid::new(
                    format!("packages[{i}].lines"),
                    "a package needs at least one line",
                ));
            }
            for (j, l) in p.lines.iter().enumerate() {
                if l.sku.trim().is_empty() {
                    return Err(Invalid::new(
                        format!("packages[{i}].lines[{j}].sku"),
                        "must not be empty",
                    ));
                }
                if l.quantity <= Decimal::ZERO {
                    return Err(Invalid::new(
                        format!("packages[{i}].lines[{j}].quantity"),
                        format!("must be above 0, got {}", l.quantity),
                    ));
                }
            }
        }
        Ok(date)
    }

    /// The shipped quantity per (SKU, batch), summed over packages.
    pub fn quantities(&self) -> BTreeMap<(String, Option<String>), Decimal> {
        let mut q = BTreeMap::new();
        for p in &self.packages {
            for l in &p.lines {
                *q.entry((l.sku.trim().to_owned(), clean(l.batch.as_deref())))
                    .or_default() += l.quantity;
            }
        }
        q
    }

    /// A hash of the whole shipment (the idempotency payload hash).
    pub fn payload_hash(&self) -> String {
        dearsync_core::sha256_hex(&serde_json::to_vec(&self.normalized()).unwrap_or_default())
    }

    /// A hash of what was shipped, without carrier and tracking: equal hashes differ at most in
    /// what a late-tracking update may change.
    pub fn contents_hash(&self) -> String {
        let mut s = self.normalized();
        s.carrier.clear();
        s.service = None;
        for p in &mut s.packages {
            p.tracking_number = None;
            p.tracking_url = None;
        }
        dearsync_core::sha256_hex(&serde_json::to_vec(&s).unwrap_or_default())
    }

    /// What is hashed: the text as [`Shipment::trimmed`] leaves it, the sale id in lower case
    /// and quantities without trailing zeros, so equal shipments hash alike however written.
    fn normalized(&self) -> Shipment {
        let mut s = self.trimmed();
        s.sale_id = s.sale_id.map(|x| x.to_ascii_lowercase());
        for p in &mut s.packages {
            for l in &mut p.lines {
                l.quantity = l.quantity.normalize();
            }
        }
        s
    }

    /// Renames warehouse SKUs to DEAR's by the tenant's alias table.
    pub fn use_dear_skus(&mut self, aliases: &dearsync_core::sku::SkuAliases) {
        if aliases.is_empty() {
            return;
        }
        for line in self.packages.iter_mut().flat_map(|p| p.lines.iter_mut()) {
            line.sku = aliases.to_dear(&line.sku).to_owned();
        }
    }

    /// The shipment as it is confirmed: every text trimmed once here, at the edge, and empty
    /// optional text read as absent, so the confirmation compares SKUs and boxes as they are.
    pub fn trimmed(&self) -> Shipment {
        let mut s = self.clone();
        s.shipment_id = s.shipment_id.trim().to_owned();
        s.carrier = s.carrier.trim().to_owned();
        s.sale_id = clean(s.sale_id.as_deref());
        s.order_number = clean(s.order_number.as_deref());
        s.location = clean(s.location.as_deref());
        s.service = clean(s.service.as_deref());
        for p in &mut s.packages {
            p.r#box = p.r#box.trim().to_owned();
            p.tracking_number = clean(p.tracking_number.as_deref());
            p.tracking_url = clean(p.tracking_url.as_deref());
            for l in &mut p.lines {
                l.sku = l.sku.trim().to_owned();
                l.batch = clean(l.batch.as_deref());
            }
        }
        s
    }
}

fn clean(text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn serde_path_to_error<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Shipment, Invalid> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Invalid::new(
            if path == "." {
                "(shipment)".to_owned()
            } else {
                path
            },
            e.inner().to_string(),
        )
    })
}

/// A checked shipment's facts, computed once: what the confirmation compares and writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// The shipment, [`Shipment::trimmed`]: what the confirmation works on.
    pub shipment: Shipment,
    /// The shipment id, trimmed.
    pub id: String,
    /// The ship date (a date alone is midnight).
    pub date: NaiveDateTime,
    /// [`Shipment::payload_hash`].
    pub payload_hash: String,
    /// [`Shipment::contents_hash`].
    pub contents_hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"shipment_id":"WMS-SHP-1001","sale_id":"a6558396-8893-479b-bca9-f89ea3e54633",
        "order_number":"SO-00091","ship_date":"2026-11-20","location":"Main Warehouse","carrier":"UPS",
        "service":"Ground","packages":[{"box":"CTN-1","tracking_number":"1Z999AA10123456784",
        "tracking_url":"https://example.com/t","lines":[{"sku":"Bread","quantity":2,"batch":null}]},
        {"box":"CTN-2","tracking_number":"1Z2","lines":[{"sku":"Bread","quantity":"0.5"}]}]}"#;

    #[test]
    fn a_checked_shipment_carries_its_id_date_and_hashes_computed_once() {
        let mut s = Shipment::from_json(GOOD).unwrap();
        s.shipment_id = " WMS-SHP-1001 ".into();
        let facts = s.checked().unwrap();
        assert_eq!(facts.id, "WMS-SHP-1001");
        assert_eq!(facts.date, s.ship_date_time().unwrap());
        assert_eq!(
            (facts.payload_hash.as_str(), facts.contents_hash.as_str()),
            (s.payload_hash().as_str(), s.contents_hash().as_str())
        );
        s.ship_date = "soon".into();
        assert_eq!(s.checked().unwrap_err().field, "ship_date");
    }

    #[test]
    fn a_padded_shipment_is_confirmed_trimmed_and_hashes_like_the_clean_one() {
        let clean = Shipment::from_json(GOOD).unwrap();
        let mut padded = clean.clone();
        padded.carrier = " UPS ".into();
        padded.packages[0].r#box = " CTN-1\t".into();
        padded.packages[0].lines[0].sku = " Bread ".into();
        padded.packages[1].lines[0].batch = Some("  ".into());
        let facts = padded.checked().unwrap();
        assert_eq!(facts.shipment, clean.checked().unwrap().shipment);
        assert_eq!(facts.shipment.packages[0].r#box, "CTN-1");
        assert_eq!(facts.shipment.packages[1].lines[0].batch, None);
        assert_eq!(facts.payload_hash, clean.payload_hash());
    }

    #[test]
    fn a_good_shipment_is_read_with_exact_quantities() {
        let s = Shipment::from_json(GOOD).unwrap();
        let q = s.quantities();
        assert_eq!(
            q[&("Bread".to_owned(), None)],
            "2.5".parse::<Decimal>().unwrap()
        );
        assert_eq!(
            s.ship_date_time().unwrap().to_string(),
            "2026-11-20 00:00:00"
        );
    }

    #[test]
    fn bad_shipments_name_the_field() {
        let cases = [
            (
                GOOD.replace("\"packages\"", "\"packges\""),
                "packges",
                "unknown field",
            ),
            (
                GOOD.replace("\"quantity\":2", "\"quantity\":0"),
                "packages[0].lines[0].quantity",
                "above 0",
            ),
            (
                GOOD.replace("\"quantity\":2", "\"quantity\":\"two\""),
                "packages[0].lines[0].quantity",
                "two",
            ),
            (
                GOOD.replace("2026-11-20", "20/11/2026"),
                "ship_date",
                "20/11/2026",
            ),
            (
                GOOD.replace("\"CTN-2\"", "\"ctn-1\""),
                "packages[1].box",
                "twice",
            ),
            (
                GOOD.replace("a6558396-8893-479b-bca9-f89ea3e54633", "nope"),
                "sale_id",
                "GUID",
            ),
            (GOOD.replace("\"UPS\"", "\"\""), "carrier", "empty"),
            (
                GOOD.replace(
                    "\"sku\":\"Bread\",\"quantity\":2",
                    "\"sku\":\" \",\"quantity\":2",
                ),
                "packages[0].lines[0].sku",
                "empty",
            ),
        ];
        for (text, field, needle) in cases {
            let e = Shipment::from_json(&text).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
        let e = Shipment::from_json(
            r#"{"shipment_id":"x","ship_date":"2026-11-20","carrier":"UPS","packages":[]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "sale_id");
    }

    #[test]
    fn tracking_changes_keep_the_contents_hash() {
        let a = Shipment::from_json(GOOD).unwrap();
        let mut b = a.clone();
        b.packages[0].tracking_number = Some("NEW".into());
        b.carrier = "FedEx".into();
        assert_ne!(a.payload_hash(), b.payload_hash());
        assert_eq!(a.contents_hash(), b.contents_hash());
        let mut c = a.clone();
        c.packages[0].lines[0].quantity = Decimal::ONE;
        assert_ne!(a.contents_hash(), c.contents_hash());
    }
}
