//! Sales: `saleList` rows, the `sale` document, its lines, addresses, fulfilments and invoices.
#![allow(missing_docs)] // field names are DEAR's; the reference (shared/dear-api.md) documents them

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::status::{SaleStatus, SaleType, StageStatus};
use crate::date::{DearDateTime, opt_date};
use crate::serde_util::{decimal, lenient_bool, opt_decimal, opt_id};

/// Filters of `GET saleList`. Every field is optional; unset fields are not sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaleListQuery {
    /// Substring over order number, status, customer, invoice number, customer reference.
    pub search: Option<String>,
    /// Created after.
    pub created_since: Option<DearDateTime>,
    /// Changed after (strictly).
    pub updated_since: Option<DearDateTime>,
    /// Changed before (2025 reference).
    pub updated_until: Option<DearDateTime>,
    /// Ship By on or before, shipment not authorised.
    pub ship_by: Option<DearDateTime>,
    /// Exact quote stage status.
    pub quote_status: Option<StageStatus>,
    /// Exact order stage status.
    pub order_status: Option<StageStatus>,
    /// Exact credit note status.
    pub credit_note_status: Option<StageStatus>,
    /// `CombinedPickingStatus` value (e.g. PICKED).
    pub combined_pick_status: Option<String>,
    /// `CombinedPackingStatus` value.
    pub combined_pack_status: Option<String>,
    /// `CombinedShippingStatus` value.
    pub combined_shipping_status: Option<String>,
    /// `CombinedInvoiceStatus` value.
    pub combined_invoice_status: Option<String>,
    /// Exact External ID.
    pub external_id: Option<String>,
    /// The sale `Status`.
    pub status: Option<SaleStatus>,
    /// Pack authorised and shipping not authorised.
    pub ready_for_shipping: Option<bool>,
    /// The order location's GUID.
    pub order_location_id: Option<Uuid>,
}

impl SaleListQuery {
    /// The query parameters, in DEAR's names.
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                p.push((k, v));
            }
        };
        put("Search", self.search.clone());
        put("CreatedSince", self.created_since.map(|d| d.to_string()));
        put("UpdatedSince", self.updated_since.map(|d| d.to_string()));
        put("UpdatedUntil", self.updated_until.map(|d| d.to_string()));
        put("ShipBy", self.ship_by.map(|d| d.to_string()));
        put(
            "QuoteStatus",
            self.quote_status.as_ref().map(|s| s.to_string()),
        );
        put(
            "OrderStatus",
            self.order_status.as_ref().map(|s| s.to_string()),
        );
        put(
            "CreditNoteStatus",
            self.credit_note_status.as_ref().map(|s| s.to_string()),
        );
        put("CombinedPickStatus", self.combined_pick_status.clone());
        put("CombinedPackStatus", self.combined_pack_status.clone());
        put(
            "CombinedShippingStatus",
            self.combined_shipping_status.clone(),
        );
        put(
            "CombinedInvoiceStatus",
            self.combined_invoice_status.clone(),
        );
        put("ExternalID", self.external_id.clone());
        put("Status", self.status.as_ref().map(|s| s.to_string()));
        put(
            "ReadyForShipping",
            self.ready_for_shipping.map(|b| b.to_string()),
        );
        put(
            "OrderLocationID",
            self.order_location_id.map(|g| g.to_string()),
        );
        p
    }
}

/// One row of `saleList`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleListItem {
    #[serde(rename = "SaleID")]
    pub sale_id: Uuid,
    pub order_number: Option<String>,
    pub status: SaleStatus,
    #[serde(with = "opt_date")]
    pub order_date: Option<DearDateTime>,
    #[serde(with = "opt_date")]
    pub invoice_date: Option<DearDateTime>,
    pub customer: Option<String>,
    #[serde(rename = "CustomerID", with = "opt_id")]
    pub customer_id: Option<Uuid>,
    pub invoice_number: Option<String>,
    pub customer_reference: Option<String>,
    #[serde(with = "opt_decimal")]
    pub invoice_amount: Option<Decimal>,
    #[serde(with = "opt_decimal")]
    pub paid_amount: Option<Decimal>,
    #[serde(with = "opt_date")]
    pub invoice_due_date: Option<DearDateTime>,
    #[serde(with = "opt_date")]
    pub ship_by: Option<DearDateTime>,
    pub base_currency: Option<String>,
    pub customer_currency: Option<String>,
    pub credit_note_number: Option<String>,
    /// Last change; the order-download cursor is built on it.
    #[serde(with = "opt_date")]
    pub updated: Option<DearDateTime>,
    pub quote_status: StageStatus,
    pub order_status: StageStatus,
    pub combined_picking_status: Option<String>,
    pub combined_packing_status: Option<String>,
    pub combined_shipping_status: Option<String>,
    pub combined_invoice_status: Option<String>,
    pub combined_payment_status: Option<String>,
    pub combined_tracking_numbers: Option<String>,
    pub credit_note_status: StageStatus,
    #[serde(rename = "FulFilmentStatus")]
    pub fulfilment_status: Option<String>,
    #[serde(rename = "Type")]
    pub sale_type: SaleType,
    pub source_channel: Option<String>,
    #[serde(rename = "ExternalID")]
    pub external_id: Option<String>,
    #[serde(rename = "OrderLocationID", with = "opt_id")]
    pub order_location_id: Option<Uuid>,
}

/// A billing or shipping address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Address {
    #[serde(
        rename = "ID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<Uuid>,
    pub display_address_line1: Option<String>,
    pub display_address_line2: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postcode: Option<String>,
    pub country: Option<String>,
    /// Shipping addresses only.
    pub company: Option<String>,
    /// Shipping addresses only: the recipient.
    pub contact: Option<String>,
    /// Shipping addresses only.
    #[serde(deserialize_with = "lenient_bool")]
    pub ship_to_other: bool,
}

/// A product line of a quote, order, invoice or credit note.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleLine {
    #[serde(rename = "ProductID", with = "opt_id")]
    pub product_id: Option<Uuid>,
    #[serde(rename = "SKU")]
    pub sku: Option<String>,
    pub name: Option<String>,
    #[serde(with = "decimal")]
    pub quantity: Decimal,
    /// Unit price, customer currency.
    #[serde(with = "decimal")]
    pub price: Decimal,
    /// Percent, 0–100.
    #[serde(with = "decimal")]
    pub discount: Decimal,
    /// Tax amount.
    #[serde(with = "decimal")]
    pub tax: Decimal,
    #[serde(with = "opt_decimal")]
    pub average_cost: Option<Decimal>,
    pub tax_rule: Option<String>,
    pub comment: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub drop_ship: bool,
    #[serde(with = "opt_decimal")]
    pub backorder_quantity: Option<Decimal>,
    /// Line total ("for validation").
    #[serde(with = "decimal")]
    pub total: Decimal,
    /// Invoices only: the revenue account.
    pub account: Option<String>,
}

/// A service line (shipping, fees).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AdditionalCharge {
    pub description: Option<String>,
    #[serde(with = "decimal")]
    pub price: Decimal,
    #[serde(with = "decimal")]
    pub quantity: Decimal,
    #[serde(with = "decimal")]
    pub discount: Decimal,
    #[serde(with = "decimal")]
    pub tax: Decimal,
    #[serde(with = "decimal")]
    pub total: Decimal,
    pub tax_rule: Option<String>,
    pub comment: Option<String>,
    /// Invoices only: the revenue account (CartRover's "Shipping Account" matches it).
    pub account: Option<String>,
}

/// The quote stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleQuote {
    pub memo: Option<String>,
    pub status: StageStatus,
    pub lines: Vec<SaleLine>,
    pub additional_charges: Vec<AdditionalCharge>,
    #[serde(with = "decimal")]
    pub total_before_tax: Decimal,
    #[serde(with = "decimal")]
    pub tax: Decimal,
    #[serde(with = "decimal")]
    pub total: Decimal,
}

/// The order stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleOrder {
    /// The order number (the sale has no top-level one).
    pub sale_order_number: Option<String>,
    pub memo: Option<String>,
    pub status: StageStatus,
    pub lines: Vec<SaleLine>,
    pub additional_charges: Vec<AdditionalCharge>,
    #[serde(with = "decimal")]
    pub total_before_tax: Decimal,
    #[serde(with = "decimal")]
    pub tax: Decimal,
    #[serde(with = "decimal")]
    pub total: Decimal,
}

/// One invoice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleInvoice {
    #[serde(rename = "TaskID", with = "opt_id")]
    pub task_id: Option<Uuid>,
    pub invoice_number: Option<String>,
    pub memo: Option<String>,
    pub status: StageStatus,
    #[serde(with = "opt_date")]
    pub invoice_date: Option<DearDateTime>,
    #[serde(with = "opt_date")]
    pub invoice_due_date: Option<DearDateTime>,
    pub lines: Vec<SaleLine>,
    pub additional_charges: Vec<AdditionalCharge>,
    #[serde(with = "decimal")]
    pub total_before_tax: Decimal,
    #[serde(with = "decimal")]
    pub tax: Decimal,
    #[serde(with = "decimal")]
    pub total: Decimal,
    #[serde(with = "decimal")]
    pub paid: Decimal,
}

/// One credit note (only what the jobs read).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleCreditNote {
    #[serde(rename = "TaskID", with = "opt_id")]
    pub task_id: Option<Uuid>,
    pub credit_note_number: Option<String>,
    pub memo: Option<String>,
    pub status: StageStatus,
    pub lines: Vec<SaleLine>,
}

/// `AdditionalAttribute1` … `AdditionalAttribute10`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct AdditionalAttributes {
    #[serde(rename = "AdditionalAttribute1")]
    pub a1: Option<String>,
    #[serde(rename = "AdditionalAttribute2")]
    pub a2: Option<String>,
    #[serde(rename = "AdditionalAttribute3")]
    pub a3: Option<String>,
    #[serde(rename = "AdditionalAttribute4")]
    pub a4: Option<String>,
    #[serde(rename = "AdditionalAttribute5")]
    pub a5: Option<String>,
    #[serde(rename = "AdditionalAttribute6")]
    pub a6: Option<String>,
    #[serde(rename = "AdditionalAttribute7")]
    pub a7: Option<String>,
    #[serde(rename = "AdditionalAttribute8")]
    pub a8: Option<String>,
    #[serde(rename = "AdditionalAttribute9")]
    pub a9: Option<String>,
    #[serde(rename = "AdditionalAttribute10")]
    pub a10: Option<String>,
}

impl AdditionalAttributes {
    /// Attribute `n` (1–10); `None` when out of range, missing or blank.
    pub fn get(&self, n: u8) -> Option<&str> {
        let v = match n {
            1 => &self.a1,
            2 => &self.a2,
            3 => &self.a3,
            4 => &self.a4,
            5 => &self.a5,
            6 => &self.a6,
            7 => &self.a7,
            8 => &self.a8,
            9 => &self.a9,
            10 => &self.a10,
            _ => return None,
        };
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
}

/// `GET sale?ID=`: the whole sale.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Sale {
    #[serde(rename = "ID")]
    pub id: Uuid,
    pub customer: Option<String>,
    #[serde(rename = "CustomerID", with = "opt_id")]
    pub customer_id: Option<Uuid>,
    pub contact: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub default_account: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub skip_quote: bool,
    pub billing_address: Option<Address>,
    pub shipping_address: Option<Address>,
    pub shipping_notes: Option<String>,
    pub base_currency: Option<String>,
    pub customer_currency: Option<String>,
    pub tax_rule: Option<String>,
    pub tax_calculation: Option<String>,
    pub terms: Option<String>,
    pub price_tier: Option<String>,
    #[serde(with = "opt_date")]
    pub ship_by: Option<DearDateTime>,
    /// Default pick location name.
    pub location: Option<String>,
    #[serde(with = "opt_date")]
    pub sale_order_date: Option<DearDateTime>,
    #[serde(with = "opt_date")]
    pub last_modified_on: Option<DearDateTime>,
    pub note: Option<String>,
    pub customer_reference: Option<String>,
    #[serde(rename = "COGSAmount", with = "opt_decimal")]
    pub cogs_amount: Option<Decimal>,
    pub status: SaleStatus,
    pub combined_picking_status: Option<String>,
    pub combined_packing_status: Option<String>,
    pub combined_shipping_status: Option<String>,
    #[serde(rename = "FulFilmentStatus")]
    pub fulfilment_status: Option<String>,
    pub combined_invoice_status: Option<String>,
    pub combined_payment_status: Option<String>,
    pub combined_tracking_numbers: Option<String>,
    /// "Name of Carrier/shipping method" of the sale (not a ship line's carrier).
    pub carrier: Option<String>,
    #[serde(with = "opt_decimal")]
    pub currency_rate: Option<Decimal>,
    pub sales_representative: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub service_only: bool,
    #[serde(rename = "Type")]
    pub sale_type: SaleType,
    pub source_channel: Option<String>,
    #[serde(rename = "ExternalID")]
    pub external_id: Option<String>,
    pub quote: Option<SaleQuote>,
    pub order: Option<SaleOrder>,
    pub fulfilments: Vec<Fulfilment>,
    pub invoices: Vec<SaleInvoice>,
    pub credit_notes: Vec<SaleCreditNote>,
    pub additional_attributes: Option<AdditionalAttributes>,
}

impl Sale {
    /// `Order.SaleOrderNumber`.
    pub fn order_number(&self) -> Option<&str> {
        self.order.as_ref()?.sale_order_number.as_deref()
    }

    /// The order stage's status (NOT AVAILABLE when there is no order).
    pub fn order_status(&self) -> StageStatus {
        self.order
            .as_ref()
            .map(|o| o.status.clone())
            .unwrap_or(StageStatus::NotAvailable)
    }

    /// Additional attribute `n` (1–10).
    pub fn additional_attribute(&self, n: u8) -> Option<&str> {
        self.additional_attributes.as_ref()?.get(n)
    }
}

/// One pick or pack line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FulfilmentLine {
    #[serde(
        rename = "ProductID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub product_id: Option<Uuid>,
    #[serde(rename = "SKU")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Location name, or `"Location: Bin"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(
        rename = "LocationID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub location_id: Option<Uuid>,
    #[serde(with = "decimal")]
    pub quantity: Decimal,
    #[serde(rename = "BatchSN", skip_serializing_if = "Option::is_none")]
    pub batch_sn: Option<String>,
    #[serde(with = "opt_date", skip_serializing_if = "Option::is_none")]
    pub expiry_date: Option<DearDateTime>,
    /// Pack lines only: the box (carton) name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#box: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warranty_registration_number: Option<String>,
    #[serde(deserialize_with = "lenient_bool", skip_serializing)]
    pub non_inventory: bool,
}

/// A pick or pack stage: `GET`/`POST`/`PUT sale/fulfilment/pick|pack` (read and write).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PickPack {
    #[serde(
        rename = "TaskID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub task_id: Option<Uuid>,
    pub status: StageStatus,
    /// Write only: `"AUTOPICK"` authorises the whole pick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_pick_mode: Option<String>,
    pub lines: Vec<FulfilmentLine>,
}

/// One ship line: one box's carrier and tracking. DEAR reads `Box`, writes back `Boxes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ShipLine {
    #[serde(
        rename = "ID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<Uuid>,
    #[serde(with = "opt_date")]
    pub shipment_date: Option<DearDateTime>,
    pub carrier: Option<String>,
    /// The packed box this line ships (`Box` when writing, `Boxes` in responses).
    #[serde(rename = "Box", alias = "Boxes")]
    pub r#box: Option<String>,
    pub tracking_number: Option<String>,
    #[serde(rename = "TrackingURL", alias = "TrackingUrl")]
    pub tracking_url: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub is_shipped: bool,
}

/// The ship stage: `GET`/`POST`/`PUT sale/fulfilment/ship` (read and write).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ship {
    #[serde(
        rename = "TaskID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub task_id: Option<Uuid>,
    pub status: StageStatus,
    #[serde(with = "opt_date", skip_serializing_if = "Option::is_none")]
    pub require_by: Option<DearDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping_notes: Option<String>,
    /// Write only (`PUT`): edit tracking numbers or carrier of an authorised shipment.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub add_tracking_numbers: Option<bool>,
    pub lines: Vec<ShipLine>,
}

/// One fulfilment: pick, pack and ship of some of a sale's lines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Fulfilment {
    /// The key of the `sale/fulfilment/*` calls.
    #[serde(rename = "TaskID")]
    pub task_id: Uuid,
    #[serde(alias = "FulFilmentNumber")]
    pub fulfillment_number: Option<i64>,
    pub linked_invoice_number: Option<String>,
    #[serde(rename = "FulFilmentStatus", alias = "FulfillmentStatus")]
    pub fulfilment_status: Option<String>,
    pub pick: PickPack,
    pub pack: PickPack,
    pub ship: Ship,
}

/// `GET`/`POST sale/fulfilment`: all fulfilments of a sale.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SaleFulfilments {
    #[serde(rename = "SaleID")]
    pub sale_id: Uuid,
    pub fulfilments: Vec<Fulfilment>,
}
