//! Reference data: products, locations, carriers, price tiers, the account (`me`).
#![allow(missing_docs)] // field names are DEAR's; the reference (shared/dear-api.md) documents them

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::date::{DearDateTime, opt_date};
use crate::serde_util::{decimal_map, decimal_places, lenient_bool, opt_decimal, opt_id};

/// Filters of `GET product`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProductQuery {
    pub id: Option<Uuid>,
    /// Name contains.
    pub name: Option<String>,
    /// SKU contains.
    pub sku: Option<String>,
    pub modified_since: Option<DearDateTime>,
    pub include_deprecated: Option<bool>,
}

impl ProductQuery {
    /// The query parameters, in DEAR's names.
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(v) = self.id {
            p.push(("ID", v.to_string()));
        }
        if let Some(v) = &self.name {
            p.push(("Name", v.clone()));
        }
        if let Some(v) = &self.sku {
            p.push(("Sku", v.clone()));
        }
        if let Some(v) = self.modified_since {
            p.push(("ModifiedSince", v.to_string()));
        }
        if let Some(v) = self.include_deprecated {
            p.push(("IncludeDeprecated", v.to_string()));
        }
        p
    }
}

/// A product (the fields the jobs use).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Product {
    #[serde(rename = "ID")]
    pub id: Uuid,
    #[serde(rename = "SKU")]
    pub sku: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    /// Stock or Service.
    #[serde(rename = "Type")]
    pub product_type: Option<String>,
    /// FIFO, `FIFO - Batch`, `FEFO - Batch`, `Special - Batch`, … (serial variants too).
    pub costing_method: Option<String>,
    pub default_location: Option<String>,
    #[serde(rename = "UOM")]
    pub uom: Option<String>,
    pub barcode: Option<String>,
    /// Active or Deprecated.
    pub status: Option<String>,
    #[serde(with = "opt_decimal")]
    pub average_cost: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier1: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier2: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier3: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier4: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier5: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier6: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier7: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier8: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier9: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub price_tier10: Option<Decimal>,
    /// Tier prices keyed by the tier's (renameable) name.
    #[serde(with = "decimal_map")]
    pub price_tiers: BTreeMap<String, Decimal>,
    #[serde(with = "opt_date")]
    pub last_modified_on: Option<DearDateTime>,
}

impl Product {
    /// `PriceTier{code}` (1–10).
    pub fn price_tier(&self, code: u8) -> Option<Decimal> {
        match code {
            1 => self.price_tier1,
            2 => self.price_tier2,
            3 => self.price_tier3,
            4 => self.price_tier4,
            5 => self.price_tier5,
            6 => self.price_tier6,
            7 => self.price_tier7,
            8 => self.price_tier8,
            9 => self.price_tier9,
            10 => self.price_tier10,
            _ => None,
        }
    }

    /// True for batch- or serial-tracked costing methods (every method but plain FIFO).
    pub fn is_batch_tracked(&self) -> bool {
        self.costing_method
            .as_deref()
            .is_some_and(|m| !m.trim().eq_ignore_ascii_case("FIFO"))
    }

    /// FEFO (`FEFO - Batch`, `FEFO - Serial Number`): DEAR wants each batch's expiry date on
    /// stock adjustment lines.
    pub fn is_expiry_dated(&self) -> bool {
        self.costing_method
            .as_deref()
            .and_then(|m| m.trim().get(..4))
            .is_some_and(|m| m.eq_ignore_ascii_case("FEFO"))
    }
}

/// A bin inside a location.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Bin {
    #[serde(rename = "ID")]
    pub id: Uuid,
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub is_deprecated: bool,
    #[serde(deserialize_with = "lenient_bool")]
    pub is_staging: bool,
}

/// A location (warehouse) from `ref/location`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Location {
    #[serde(rename = "ID")]
    pub id: Uuid,
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub is_default: bool,
    #[serde(alias = "Deprecated", deserialize_with = "lenient_bool")]
    pub is_deprecated: bool,
    pub bins: Option<Vec<Bin>>,
    #[serde(rename = "ParentID", with = "opt_id")]
    pub parent_id: Option<Uuid>,
    pub parent_name: Option<String>,
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub address_city_suburb: Option<String>,
    pub address_state_province: Option<String>,
    pub address_zip_post_code: Option<String>,
    pub address_country: Option<String>,
}

/// A carrier from `ref/carrier`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Carrier {
    #[serde(rename = "CarrierID")]
    pub carrier_id: Uuid,
    pub description: Option<String>,
}

/// A sale price tier from `ref/priceTier`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PriceTier {
    /// 1–10: the N of the product's `PriceTierN`.
    pub code: u8,
    pub name: Option<String>,
}

/// `GET me`: the company behind the credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Me {
    pub company: Option<String>,
    pub currency: Option<String>,
    pub time_zone: Option<String>,
    pub default_weight_units: Option<String>,
    pub default_dimensions_units: Option<String>,
    #[serde(with = "opt_date")]
    pub lock_date: Option<DearDateTime>,
    /// A number (`4`, as the simulator sends by default) or a format string (`"N2"`, as DEAR's
    /// reference shows): both read as the number of places.
    #[serde(deserialize_with = "decimal_places")]
    pub maximum_decimal_places_in_quantity: Option<u32>,
}
