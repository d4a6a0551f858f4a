//! Stock: `stockadjustment` and `ref/productavailability`.
#![allow(missing_docs)] // field names are DEAR's; the reference (shared/dear-api.md) documents them

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::status::AdjustmentStatus;
use crate::date::{DearDateTime, opt_date};
use crate::serde_util::{decimal, opt_decimal, opt_id};

/// `POST`/`PUT stockadjustment` body.
///
/// Each line's `Quantity` is the **new absolute** quantity (on hand when `UpdateOnHand` is true,
/// available otherwise), not a delta.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StockAdjustmentWrite {
    /// PUT only.
    #[serde(
        rename = "TaskID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub task_id: Option<Uuid>,
    pub effective_date: Option<DearDateTime>,
    pub status: AdjustmentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_on_hand: Option<bool>,
    pub lines: Vec<StockAdjustmentLineWrite>,
}

/// One line of a stock adjustment write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StockAdjustmentLineWrite {
    #[serde(
        rename = "ProductID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub product_id: Option<Uuid>,
    #[serde(rename = "SKU", skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// New absolute quantity.
    #[serde(with = "decimal")]
    pub quantity: Decimal,
    /// Cost of one unit; required for lines of products with no stock.
    #[serde(with = "opt_decimal", skip_serializing_if = "Option::is_none")]
    pub unit_cost: Option<Decimal>,
    #[serde(
        rename = "LocationID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub location_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(rename = "BatchSN", skip_serializing_if = "Option::is_none")]
    pub batch_sn: Option<String>,
    #[serde(with = "opt_date", skip_serializing_if = "Option::is_none")]
    pub expiry_date: Option<DearDateTime>,
    #[serde(with = "opt_date", skip_serializing_if = "Option::is_none")]
    pub received_date: Option<DearDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

/// A line DEAR classified as a change of non-zero stock.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExistingStockLine {
    #[serde(rename = "ProductID", with = "opt_id")]
    pub product_id: Option<Uuid>,
    #[serde(rename = "SKU")]
    pub sku: Option<String>,
    pub product_name: Option<String>,
    #[serde(with = "decimal")]
    pub quantity_on_hand: Decimal,
    #[serde(with = "decimal")]
    pub available: Decimal,
    /// The posted new quantity.
    #[serde(with = "decimal")]
    pub adjustment: Decimal,
    #[serde(rename = "LocationID", with = "opt_id")]
    pub location_id: Option<Uuid>,
    pub location: Option<String>,
    #[serde(rename = "BatchSN")]
    pub batch_sn: Option<String>,
    #[serde(with = "opt_date")]
    pub expiry_date: Option<DearDateTime>,
    pub comments: Option<String>,
}

/// A line DEAR classified as new stock (the product had none there).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NewStockLine {
    #[serde(rename = "ProductID", with = "opt_id")]
    pub product_id: Option<Uuid>,
    #[serde(rename = "SKU")]
    pub sku: Option<String>,
    pub product_name: Option<String>,
    #[serde(with = "decimal")]
    pub quantity: Decimal,
    #[serde(with = "opt_decimal")]
    pub unit_cost: Option<Decimal>,
    #[serde(rename = "LocationID", with = "opt_id")]
    pub location_id: Option<Uuid>,
    pub location: Option<String>,
    #[serde(rename = "BatchSN")]
    pub batch_sn: Option<String>,
    #[serde(with = "opt_date")]
    pub expiry_date: Option<DearDateTime>,
    #[serde(with = "opt_date")]
    pub received_date: Option<DearDateTime>,
    pub comments: Option<String>,
}

/// A journal transaction of a completed adjustment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StockTransaction {
    #[serde(rename = "ID", with = "opt_id")]
    pub id: Option<Uuid>,
    pub debit: Option<String>,
    pub credit: Option<String>,
    #[serde(with = "decimal")]
    pub amount: Decimal,
    #[serde(with = "opt_date")]
    pub effective_date: Option<DearDateTime>,
}

/// `GET stockadjustment?TaskID=` and the answer to POST/PUT.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StockAdjustment {
    #[serde(rename = "TaskID")]
    pub task_id: Uuid,
    #[serde(with = "opt_date")]
    pub effective_date: Option<DearDateTime>,
    pub stocktake_number: Option<String>,
    pub status: AdjustmentStatus,
    pub account: Option<String>,
    pub reference: Option<String>,
    pub existing_stock_lines: Vec<ExistingStockLine>,
    pub new_stock_lines: Vec<NewStockLine>,
    pub transactions: Vec<StockTransaction>,
}

/// One row of `stockadjustmentList`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StockAdjustmentListItem {
    #[serde(rename = "TaskID")]
    pub task_id: Uuid,
    #[serde(with = "opt_date")]
    pub effective_date: Option<DearDateTime>,
    pub stocktake_number: Option<String>,
    pub status: AdjustmentStatus,
    pub account: Option<String>,
    pub reference: Option<String>,
}

/// Filters of `GET ref/productavailability`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AvailabilityQuery {
    /// Product GUID.
    pub id: Option<Uuid>,
    /// Name contains.
    pub name: Option<String>,
    /// SKU contains.
    pub sku: Option<String>,
    /// Location name.
    pub location: Option<String>,
    /// Batch / serial number.
    pub batch: Option<String>,
    /// Category.
    pub category: Option<String>,
}

impl AvailabilityQuery {
    /// The query parameters, in DEAR's names.
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(v) = self.id {
            p.push(("ID", v.to_string()));
        }
        for (k, v) in [
            ("Name", &self.name),
            ("Sku", &self.sku),
            ("Location", &self.location),
            ("Batch", &self.batch),
            ("Category", &self.category),
        ] {
            if let Some(v) = v {
                p.push((k, v.clone()));
            }
        }
        p
    }
}

/// One row of `ref/productavailability`: a product × location × bin × batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProductAvailability {
    #[serde(rename = "ID")]
    pub id: Uuid,
    #[serde(rename = "SKU")]
    pub sku: Option<String>,
    pub name: Option<String>,
    pub barcode: Option<String>,
    pub location: Option<String>,
    pub bin: Option<String>,
    pub batch: Option<String>,
    #[serde(with = "opt_date")]
    pub expiry_date: Option<DearDateTime>,
    pub category: Option<String>,
    #[serde(with = "decimal")]
    pub on_hand: Decimal,
    #[serde(with = "decimal")]
    pub allocated: Decimal,
    #[serde(with = "decimal")]
    pub available: Decimal,
    #[serde(with = "decimal")]
    pub on_order: Decimal,
    /// The stock's value, not a quantity.
    #[serde(with = "decimal")]
    pub stock_on_hand: Decimal,
    #[serde(with = "decimal")]
    pub in_transit: Decimal,
}
