//! The simulator's own state: one [`Dataset`] per DEAR account. Serialisable, so a data set can be
//! loaded from JSON and inspected through the admin API.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Status of one stage (quote, order, invoice, pick, pack, ship, credit note).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    /// Not started.
    #[default]
    NotAvailable,
    /// Started.
    Draft,
    /// Authorised.
    Authorised,
    /// Ship only: some boxes shipped.
    PartiallyAuthorised,
    /// Voided.
    Voided,
    /// Order only: nothing more to fulfil.
    Fulfilled,
    /// Invoice only: paid.
    Paid,
}

impl Stage {
    /// DEAR's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::NotAvailable => "NOT AVAILABLE",
            Stage::Draft => "DRAFT",
            Stage::Authorised => "AUTHORISED",
            Stage::PartiallyAuthorised => "PARTIALLY AUTHORISED",
            Stage::Voided => "VOIDED",
            Stage::Fulfilled => "FULFILLED",
            Stage::Paid => "PAID",
        }
    }

    /// Parses DEAR's spelling (case-insensitive, `_` for space).
    pub fn parse(text: &str) -> Option<Stage> {
        let t = text.trim().replace('_', " ").to_ascii_uppercase();
        Some(match t.as_str() {
            "NOT AVAILABLE" => Stage::NotAvailable,
            "DRAFT" => Stage::Draft,
            "AUTHORISED" | "AUTHORIZED" => Stage::Authorised,
            "PARTIALLY AUTHORISED" => Stage::PartiallyAuthorised,
            "VOIDED" => Stage::Voided,
            "FULFILLED" => Stage::Fulfilled,
            "PAID" => Stage::Paid,
            _ => return None,
        })
    }

    /// Authorised, or beyond (fulfilled / paid).
    pub fn is_authorised(self) -> bool {
        matches!(self, Stage::Authorised | Stage::Fulfilled | Stage::Paid)
    }

    /// NOT AVAILABLE or DRAFT: still writable.
    pub fn is_open(self) -> bool {
        matches!(self, Stage::NotAvailable | Stage::Draft)
    }
}

/// A product.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimProduct {
    /// GUID.
    pub id: Uuid,
    /// SKU (unique, compared case-insensitively).
    pub sku: String,
    /// Name.
    pub name: String,
    /// Category.
    pub category: String,
    /// FIFO, `FIFO - Batch`, …
    pub costing_method: String,
    /// Average cost (0 for never-stocked products).
    pub average_cost: Decimal,
    /// PriceTier1..10.
    pub price_tiers: [Decimal; 10],
    /// Barcode.
    pub barcode: Option<String>,
    /// Stock or Service.
    pub product_type: String,
    /// Last change.
    pub last_modified: NaiveDateTime,
}

impl SimProduct {
    /// Batch or serial tracked (anything but plain FIFO).
    pub fn batch_tracked(&self) -> bool {
        !self.costing_method.eq_ignore_ascii_case("FIFO")
    }

    /// FEFO (`FEFO - Batch`, `FEFO - Serial Number`): every batch has an expiry date.
    pub fn expiry_dated(&self) -> bool {
        self.costing_method
            .get(..4)
            .is_some_and(|m| m.eq_ignore_ascii_case("FEFO"))
    }
}

/// A location with its bins.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimLocation {
    /// GUID.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The default location.
    pub is_default: bool,
    /// Bins: (GUID, name).
    pub bins: Vec<(Uuid, String)>,
}

/// A postal address.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimAddress {
    /// Line 1.
    pub line1: String,
    /// Line 2.
    pub line2: String,
    /// City.
    pub city: String,
    /// State.
    pub state: String,
    /// Postcode.
    pub postcode: String,
    /// Country name.
    pub country: String,
    /// Company (shipping only).
    pub company: String,
    /// Recipient (shipping only).
    pub contact: String,
    /// The display lines as an admin overwrote them on the order (DEAR then shows these while the
    /// fields keep the old address); `None`: made from the fields.
    #[serde(default)]
    pub display_lines: Option<[String; 2]>,
}

/// A product line of an order or invoice.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimLine {
    /// Product.
    pub product_id: Uuid,
    /// SKU at the time of sale.
    pub sku: String,
    /// Name.
    pub name: String,
    /// Quantity.
    pub quantity: Decimal,
    /// Unit price.
    pub price: Decimal,
    /// Discount percent.
    pub discount: Decimal,
    /// Tax amount.
    pub tax: Decimal,
    /// Backordered part (set when the order is authorised).
    pub backorder_quantity: Decimal,
}

impl SimLine {
    /// `Quantity * Price * (1 - Discount/100)`, ex tax, rounded to 4 dp.
    pub fn total(&self) -> Decimal {
        (self.quantity * self.price * (Decimal::ONE_HUNDRED - self.discount) / Decimal::ONE_HUNDRED)
            .round_dp(4)
    }
}

/// A service line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimCharge {
    /// Description (a service product's name).
    pub description: String,
    /// Unit price.
    pub price: Decimal,
    /// Quantity.
    pub quantity: Decimal,
    /// Revenue account (invoices).
    pub account: String,
}

/// An invoice.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimInvoice {
    /// Task GUID.
    pub task_id: Uuid,
    /// INV-nnnnn.
    pub number: String,
    /// Status (DRAFT, AUTHORISED, PAID).
    pub status: Stage,
    /// Memo.
    pub memo: String,
    /// Date.
    pub date: NaiveDateTime,
    /// Lines.
    pub lines: Vec<SimLine>,
    /// Service lines.
    pub charges: Vec<SimCharge>,
    /// Amount paid.
    pub paid: Decimal,
}

/// A pick or pack line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimFulfilLine {
    /// Product.
    pub product_id: Uuid,
    /// Quantity.
    pub quantity: Decimal,
    /// Location.
    pub location_id: Uuid,
    /// Bin within the location, if any.
    pub bin: Option<String>,
    /// Batch / serial number.
    pub batch: Option<String>,
    /// Expiry.
    pub expiry: Option<NaiveDateTime>,
    /// Pack only: box name.
    pub r#box: Option<String>,
}

/// A ship line: one box's carrier and tracking.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimShipLine {
    /// Server-assigned GUID.
    pub id: Uuid,
    /// Shipment date.
    pub date: NaiveDateTime,
    /// Carrier.
    pub carrier: String,
    /// Box shipped.
    pub r#box: String,
    /// Tracking number.
    pub tracking_number: String,
    /// Tracking URL.
    pub tracking_url: String,
    /// Shipped flag.
    pub is_shipped: bool,
}

/// One fulfilment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimFulfilment {
    /// Task GUID (a simple sale's first equals the SaleID).
    pub task_id: Uuid,
    /// 1-based.
    pub number: u32,
    /// Pick status.
    pub pick_status: Stage,
    /// Pick lines.
    pub pick: Vec<SimFulfilLine>,
    /// Pack status.
    pub pack_status: Stage,
    /// Pack lines.
    pub pack: Vec<SimFulfilLine>,
    /// Ship status.
    pub ship_status: Stage,
    /// Ship lines.
    pub ship: Vec<SimShipLine>,
    /// Ship "require by".
    pub require_by: Option<NaiveDateTime>,
    /// Ship notes.
    pub shipping_notes: String,
    /// Boxes whose stock was already consumed.
    pub consumed_boxes: Vec<String>,
}

impl SimFulfilment {
    /// A fresh fulfilment.
    pub fn new(task_id: Uuid, number: u32) -> Self {
        Self {
            task_id,
            number,
            pick_status: Stage::NotAvailable,
            pick: Vec::new(),
            pack_status: Stage::NotAvailable,
            pack: Vec::new(),
            ship_status: Stage::NotAvailable,
            ship: Vec::new(),
            require_by: None,
            shipping_notes: String::new(),
            consumed_boxes: Vec::new(),
        }
    }

    /// Voided fulfilments do not count.
    pub fn is_live(&self) -> bool {
        self.pick_status != Stage::Voided
    }
}

/// A sale.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimSale {
    /// GUID.
    pub id: Uuid,
    /// SO-nnnnn.
    pub order_number: String,
    /// Customer name.
    pub customer: String,
    /// Customer GUID.
    pub customer_id: Uuid,
    /// Contact name.
    pub contact: String,
    /// Phone.
    pub phone: String,
    /// Email.
    pub email: String,
    /// Billing address.
    pub billing: SimAddress,
    /// Shipping address.
    pub shipping: SimAddress,
    /// Order location.
    pub location_id: Uuid,
    /// Currency.
    pub currency: String,
    /// Price tier name.
    pub price_tier: String,
    /// Customer PO.
    pub customer_reference: String,
    /// Sales channel.
    pub source_channel: Option<String>,
    /// The sale's sales representative (a contact name).
    #[serde(default)]
    pub sales_representative: String,
    /// The sale's default revenue account code.
    #[serde(default)]
    pub default_account: String,
    /// External ID.
    pub external_id: Option<String>,
    /// Carrier / shipping method name.
    pub carrier: String,
    /// Ship by.
    pub ship_by: Option<NaiveDateTime>,
    /// Order date.
    pub order_date: NaiveDateTime,
    /// Created.
    pub created: NaiveDateTime,
    /// Last change.
    pub updated: NaiveDateTime,
    /// Skip the quote stage.
    pub skip_quote: bool,
    /// Quote status.
    pub quote_status: Stage,
    /// Quote memo.
    pub quote_memo: String,
    /// Order status.
    pub order_status: Stage,
    /// Order memo.
    pub order_memo: String,
    /// Order lines.
    pub lines: Vec<SimLine>,
    /// Order service lines.
    pub charges: Vec<SimCharge>,
    /// Advanced sale (irreversible).
    pub advanced: bool,
    /// Fulfilments.
    pub fulfilments: Vec<SimFulfilment>,
    /// Invoices.
    pub invoices: Vec<SimInvoice>,
    /// Credit note status.
    pub credit_note_status: Stage,
    /// Credit note memo.
    pub credit_note_memo: String,
    /// Voided.
    pub voided: bool,
    /// AdditionalAttribute1..10.
    pub attributes: [String; 10],
    /// Notes.
    pub note: String,
}

/// One stock cell: product × location × bin × batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StockKey {
    /// Product.
    pub product_id: Uuid,
    /// Location.
    pub location_id: Uuid,
    /// Bin name.
    pub bin: Option<String>,
    /// Batch / serial.
    pub batch: Option<String>,
}

/// A stock adjustment line as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimAdjLine {
    /// Cell.
    pub key: StockKey,
    /// New absolute quantity.
    pub quantity: Decimal,
    /// Unit cost.
    pub unit_cost: Option<Decimal>,
    /// Expiry.
    pub expiry: Option<NaiveDateTime>,
    /// Received date.
    pub received: Option<NaiveDateTime>,
    /// Comments.
    pub comments: String,
    /// On hand in the cell when the line was written (decides Existing vs New).
    pub on_hand_before: Decimal,
    /// Available in the cell when the line was written.
    pub available_before: Decimal,
    /// On hand set by completion (for undo/void).
    pub applied_on_hand: Option<Decimal>,
}

/// A stock adjustment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimAdjustment {
    /// Task GUID.
    pub task_id: Uuid,
    /// ST-nnnnn.
    pub number: String,
    /// DRAFT, COMPLETED (as Authorised) or VOIDED.
    pub status: String,
    /// Effective date.
    pub effective_date: NaiveDateTime,
    /// Expense account.
    pub account: String,
    /// Reference text.
    pub reference: String,
    /// Target on hand (true) or available (false).
    pub update_on_hand: bool,
    /// Lines.
    pub lines: Vec<SimAdjLine>,
}

/// A webhook subscription.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimWebhook {
    /// GUID.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Active.
    pub is_active: bool,
    /// Target URL.
    pub url: String,
    /// noauth | basicauth | bearerauth.
    pub auth_type: String,
    /// Basic user.
    pub user: Option<String>,
    /// Basic password.
    pub password: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

/// Everything one DEAR account holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Dataset {
    /// Company name (`me`).
    pub company: String,
    /// Products by GUID.
    pub products: BTreeMap<Uuid, SimProduct>,
    /// Locations.
    pub locations: Vec<SimLocation>,
    /// Carriers: (GUID, description).
    pub carriers: Vec<(Uuid, String)>,
    /// Price tier names, code 1..10.
    pub price_tier_names: Vec<String>,
    /// Sales by GUID.
    pub sales: BTreeMap<Uuid, SimSale>,
    /// On hand per cell.
    pub stock: BTreeMap<String, (StockKey, Decimal)>,
    /// Stock adjustments by GUID.
    pub adjustments: BTreeMap<Uuid, SimAdjustment>,
    /// Next ST- number.
    pub next_stocktake_number: u32,
    /// Next SO- number.
    pub next_order_number: u32,
    /// Next INV- number.
    pub next_invoice_number: u32,
    /// Webhooks.
    pub webhooks: Vec<SimWebhook>,
    /// Expiry date of each batch of an expiry-dated (FEFO) product, by [`Dataset::batch_key`].
    #[serde(default)]
    pub batch_expiry: BTreeMap<String, NaiveDateTime>,
}

impl StockKey {
    /// The map key of the cell (JSON maps need string keys).
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.product_id,
            self.location_id,
            self.bin.as_deref().unwrap_or(""),
            self.batch.as_deref().unwrap_or("")
        )
    }
}

impl Dataset {
    /// The SaleIDs of simple sales whose products carry no batches: the ones a warehouse ships
    /// without naming batches (the demo's and the tests' shipments).
    pub fn plain_sale_ids(&self) -> std::collections::BTreeSet<String> {
        let batched: std::collections::BTreeSet<&str> = self
            .products
            .values()
            .filter(|p| p.batch_tracked())
            .map(|p| p.sku.as_str())
            .collect();
        self.sales
            .values()
            .filter(|s| !s.advanced && s.lines.iter().all(|l| !batched.contains(l.sku.as_str())))
            .map(|s| s.id.to_string())
            .collect()
    }

    /// The key of a product's batch in [`Dataset::batch_expiry`].
    pub fn batch_key(product_id: Uuid, batch: &str) -> String {
        format!("{product_id}/{}", batch.trim().to_lowercase())
    }

    /// The expiry date DEAR holds for a product's batch.
    pub fn expiry_of(&self, product_id: Uuid, batch: Option<&str>) -> Option<NaiveDateTime> {
        batch.and_then(|b| {
            self.batch_expiry
                .get(&Self::batch_key(product_id, b))
                .copied()
        })
    }

    /// A product by SKU, case-insensitively.
    pub fn product_by_sku(&self, sku: &str) -> Option<&SimProduct> {
        let sku = sku.trim();
        self.products
            .values()
            .find(|p| p.sku.eq_ignore_ascii_case(sku))
    }

    /// A location by GUID.
    pub fn location(&self, id: Uuid) -> Option<&SimLocation> {
        self.locations.iter().find(|l| l.id == id)
    }

    /// A location (and bin) by `"Name"` or `"Name: Bin"`, case-insensitively.
    pub fn location_by_name(&self, name: &str) -> Option<(&SimLocation, Option<String>)> {
        let name = name.trim();
        if let Some(l) = self
            .locations
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
        {
            return Some((l, None));
        }
        let (loc, bin) = name.split_once(':')?;
        let l = self
            .locations
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(loc.trim()))?;
        let b = l
            .bins
            .iter()
            .find(|(_, b)| b.eq_ignore_ascii_case(bin.trim()))?;
        Some((l, Some(b.1.clone())))
    }

    /// On hand in one cell.
    pub fn on_hand(&self, key: &StockKey) -> Decimal {
        self.stock
            .get(&key.id())
            .map(|(_, q)| *q)
            .unwrap_or_default()
    }

    /// Sets on hand in one cell.
    pub fn set_on_hand(&mut self, key: StockKey, qty: Decimal) {
        self.stock.insert(key.id(), (key, qty));
    }

    /// On hand of a product at a location, all bins and batches.
    pub fn on_hand_at(&self, product_id: Uuid, location_id: Uuid) -> Decimal {
        self.stock
            .values()
            .filter(|(k, _)| k.product_id == product_id && k.location_id == location_id)
            .map(|(_, q)| *q)
            .sum()
    }
}
