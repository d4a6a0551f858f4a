//! The canonical order: what the warehouse receives for a DEAR sale (schema: `docs/canonical-order.md`).
//!
//! Decimals are JSON **strings** holding the exact decimal DEAR sent (`"12.5"`), never floats.
//! Dates are DEAR's, unchanged: `order_date` is DEAR's local date-time without a zone
//! (`2026-11-03T00:00:00`); `updated` is UTC with milliseconds (`2026-11-03T10:04:05.120Z`).

use chrono::SecondsFormat;
use dear_client::{Address as DearAddress, Sale, SaleLine, StageStatus};
use dearsync_core::settings::{
    LineSource, NotesField, OrderDownloadSettings, OrderSource, ShipMethodSelection,
};
use dearsync_core::sku::sku_matches;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The schema identifier every order carries.
pub const SCHEMA: &str = "dear-sync.order/v1";

/// One order for the warehouse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanonicalOrder {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// DEAR's SaleID.
    pub sale_id: String,
    /// A hash of everything below except `status` and `updated`: a new version means the order
    /// itself changed.
    pub version: String,
    /// This delivery's id (the webhook's `Idempotency-Key`): `<sale_id>:<version>` for the first
    /// delivery of a sale, `<sale_id>:<version>:<n>` for its n-th content change, so content that
    /// goes A → B → A is a new delivery, not a repeat of the first.
    pub delivery_id: String,
    /// On an operator's resend only: the id of the delivery this one repeats (absent otherwise,
    /// and not part of the version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_of: Option<String>,
    /// DEAR's order number (`SO-00091`).
    pub order_number: String,
    /// DEAR's sale status when downloaded.
    pub status: String,
    /// The order date, as DEAR gives it (no zone).
    pub order_date: Option<String>,
    /// DEAR's ship-by date, if any (no zone).
    pub ship_by: Option<String>,
    /// The DEAR location the order ships from.
    pub location: Option<String>,
    /// Who bought.
    pub customer: Customer,
    /// Where it goes.
    pub ship_to: PostalAddress,
    /// Who pays.
    pub bill_to: PostalAddress,
    /// The product lines.
    pub lines: Vec<OrderLine>,
    /// The shipping method chosen by the `ship_method_selection` setting.
    pub shipping_method: Option<String>,
    /// The memo chosen by the `notes_field` setting.
    pub notes: Option<String>,
    /// DEAR's shipping notes.
    pub shipping_notes: Option<String>,
    /// The customer's currency.
    pub currency: Option<String>,
    /// The order total (tax included), a decimal string.
    #[serde(with = "decimal_string")]
    pub total: Decimal,
    /// The customer's reference (PO number).
    pub customer_reference: Option<String>,
    /// DEAR's source channel (e.g. `Amazon_US`).
    pub source_channel: Option<String>,
    /// When DEAR last changed the sale (UTC, milliseconds).
    pub updated: Option<String>,
}

/// The buyer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// DEAR's customer name.
    pub name: Option<String>,
    /// The contact's first name (when names are split).
    pub first_name: Option<String>,
    /// The contact's last name (when names are split).
    pub last_name: Option<String>,
    /// The company (DEAR's customer name when a contact person is named).
    pub company: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
}

/// A postal address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PostalAddress {
    /// The person.
    pub name: Option<String>,
    /// The person's first name (when names are split).
    pub first_name: Option<String>,
    /// The person's last name (when names are split).
    pub last_name: Option<String>,
    /// The company.
    pub company: Option<String>,
    /// First street line.
    pub line1: Option<String>,
    /// Second street line.
    pub line2: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// Country, as DEAR gives it (a name, e.g. `Australia`).
    pub country: Option<String>,
}

/// One product line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product's SKU.
    pub sku: String,
    /// The product's name.
    pub name: Option<String>,
    /// DEAR's ProductID.
    pub product_id: Option<String>,
    /// Quantity (decimal string).
    #[serde(with = "decimal_string")]
    pub quantity: Decimal,
    /// Unit price before discount and tax (decimal string).
    #[serde(with = "decimal_string")]
    pub unit_price: Decimal,
    /// Discount percent, 0–100 (decimal string).
    #[serde(with = "decimal_string")]
    pub discount_percent: Decimal,
    /// Tax amount of the line (decimal string).
    #[serde(with = "decimal_string")]
    pub tax: Decimal,
    /// Line total before tax (decimal string).
    #[serde(with = "decimal_string")]
    pub total: Decimal,
    /// Batch or serial number, from pick or pack lines.
    pub batch: Option<String>,
    /// DEAR's line comment.
    pub comment: Option<String>,
}

mod decimal_string {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&v.normalize())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn clean(text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Splits a single name field: the first word is the first name, the rest the last name.
pub fn split_name(name: &str) -> (Option<String>, Option<String>) {
    let name = name.trim();
    match name.split_once(char::is_whitespace) {
        Some((first, rest)) => (clean(Some(first)), clean(Some(rest))),
        None => (clean(Some(name)), None),
    }
}

fn address(
    a: Option<&DearAddress>,
    name: Option<String>,
    company: Option<String>,
    split: bool,
) -> PostalAddress {
    let a = a.cloned().unwrap_or_default();
    let (first_name, last_name) = match (&name, split) {
        (Some(n), true) => split_name(n),
        _ => (None, None),
    };
    PostalAddress {
        name,
        first_name,
        last_name,
        company,
        line1: clean(a.line1.as_deref()),
        line2: clean(a.line2.as_deref()),
        city: clean(a.city.as_deref()),
        state: clean(a.state.as_deref()),
        postcode: clean(a.postcode.as_deref()),
        country: clean(a.country.as_deref()),
    }
}

/// Finds the order line a pick/pack line belongs to (for its price): same ProductID, else same SKU.
fn order_line_for<'a>(
    sale: &'a Sale,
    product_id: Option<uuid::Uuid>,
    sku: Option<&str>,
) -> Option<&'a SaleLine> {
    let lines = sale
        .order
        .as_ref()
        .map(|o| o.lines.as_slice())
        .unwrap_or_default();
    lines
        .iter()
        .find(|l| product_id.is_some() && l.product_id == product_id)
        .or_else(|| {
            lines
                .iter()
                .find(|l| sku.is_some() && l.sku.as_deref() == sku)
        })
}

fn from_sale_line(l: &SaleLine) -> OrderLine {
    OrderLine {
        sku: l.sku.clone().unwrap_or_default().trim().to_owned(),
        name: clean(l.name.as_deref()),
        product_id: l.product_id.map(|p| p.to_string()),
        quantity: l.quantity,
        unit_price: l.price,
        discount_percent: l.discount,
        tax: l.tax,
        total: l.total,
        batch: None,
        comment: clean(l.comment.as_deref()),
    }
}

/// Lines from authorised or draft pick/pack lines of every live fulfilment, priced from the order.
fn fulfilment_lines(sale: &Sale, pack: bool) -> Vec<OrderLine> {
    let mut lines: Vec<OrderLine> = Vec::new();
    for f in &sale.fulfilments {
        let stage = if pack { &f.pack } else { &f.pick };
        // Draft or authorised only: DEAR lists lines in a NOT AVAILABLE stage too (§4's example).
        if !(stage.status.is_authorised() || stage.status == StageStatus::Draft) {
            continue;
        }
        for l in &stage.lines {
            let priced = order_line_for(sale, l.product_id, l.sku.as_deref());
            let price = priced.map(|p| p.price).unwrap_or_default();
            let discount = priced.map(|p| p.discount).unwrap_or_default();
            // The order line's tax, in proportion to the quantity taken from it.
            let tax = priced
                .filter(|p| !p.quantity.is_zero())
                .map(|p| (p.tax * l.quantity / p.quantity).round_dp(4))
                .unwrap_or_default();
            let total = (l.quantity * price * (Decimal::ONE_HUNDRED - discount)
                / Decimal::ONE_HUNDRED)
                .round_dp(4);
            let batch = clean(l.batch_sn.as_deref());
            let sku = l.sku.clone().unwrap_or_default().trim().to_owned();
            // One line per SKU and batch across fulfilments and boxes.
            if let Some(same) = lines.iter_mut().find(|x| x.sku == sku && x.batch == batch) {
                same.quantity += l.quantity;
                same.tax += tax;
                same.total += total;
                continue;
            }
            lines.push(OrderLine {
                sku,
                // The order line's name (a merchant may rename it there), else the stage's.
                name: priced
                    .and_then(|p| clean(p.name.as_deref()))
                    .or_else(|| clean(l.name.as_deref())),
                product_id: l.product_id.map(|p| p.to_string()),
                quantity: l.quantity,
                unit_price: price,
                discount_percent: discount,
                tax,
                total,
                batch,
                comment: priced.and_then(|p| clean(p.comment.as_deref())),
            });
        }
    }
    lines
}

/// The lines the `take_order_lines_from` setting picks, falling back to the order's.
pub fn order_lines(sale: &Sale, source: LineSource) -> Vec<OrderLine> {
    let chosen = match source {
        LineSource::Order => Vec::new(),
        LineSource::Pick => fulfilment_lines(sale, false),
        LineSource::Pack => fulfilment_lines(sale, true),
        LineSource::Invoice => sale
            .invoices
            .iter()
            .filter(|i| i.status.is_authorised() || i.status == StageStatus::Draft)
            .flat_map(|i| i.lines.iter().map(from_sale_line))
            .collect(),
    };
    if !chosen.is_empty() {
        return chosen;
    }
    sale.order
        .as_ref()
        .map(|o| o.lines.iter().map(from_sale_line).collect())
        .unwrap_or_default()
}

/// The shipping method the `ship_method_selection` setting picks.
pub fn shipping_method(sale: &Sale, settings: &OrderDownloadSettings) -> Option<String> {
    match settings.ship_method_selection {
        ShipMethodSelection::None => None,
        ShipMethodSelection::AdditionalAttribute => {
            clean(sale.additional_attribute(settings.ship_code_attribute))
        }
        ShipMethodSelection::ShippingAccount => {
            let from_invoice =
                sale.invoices
                    .iter()
                    .flat_map(|i| i.additional_charges.iter())
                    .find(|c| {
                        c.account.as_deref().map(str::trim).is_some_and(|a| {
                            settings.shipping_accounts.iter().any(|s| s.trim() == a)
                        })
                    })
                    .and_then(|c| clean(c.description.as_deref()));
            // Before invoicing there is no invoice charge: DEAR's own Carrier field is the best hint.
            from_invoice.or_else(|| clean(sale.carrier.as_deref()))
        }
    }
}

/// The warehouse's code for DEAR's shipping `method`, by `ship_method_map` (keys compared without
/// case or surrounding spaces), else `ship_method_default`. Without a map or a default, the
/// method goes to the warehouse as DEAR has it. `Err` names a method the map does not take (an
/// order without one included): the order is skipped rather than sent with a carrier the
/// warehouse would have to guess.
pub fn ship_method_code(
    method: Option<&str>,
    settings: &OrderDownloadSettings,
) -> Result<Option<String>, SkipReason> {
    if settings.ship_method_map.is_empty() && settings.ship_method_default.is_none() {
        return Ok(method.map(str::to_owned));
    }
    let mapped = method.and_then(|m| {
        settings
            .ship_method_map
            .iter()
            .find(|(from, _)| from.trim().eq_ignore_ascii_case(m.trim()))
            .map(|(_, to)| to.clone())
    });
    match mapped.or_else(|| settings.ship_method_default.clone()) {
        Some(code) => Ok(Some(code)),
        None => Err(SkipReason {
            category: "unmapped_ship_method",
            detail: format!(
                "the ship method {} is not in order_download.ship_method_map (it maps {}) and no \
                 ship_method_default is set: add it, then backfill",
                method.map_or_else(|| "(none)".to_owned(), |m| format!("{m:?}")),
                settings
                    .ship_method_map
                    .keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

fn notes(sale: &Sale, field: NotesField) -> Option<String> {
    match field {
        NotesField::Order => sale.order.as_ref().and_then(|o| clean(o.memo.as_deref())),
        NotesField::Quote => sale.quote.as_ref().and_then(|q| clean(q.memo.as_deref())),
        NotesField::Invoice => sale.invoices.iter().find_map(|i| clean(i.memo.as_deref())),
        NotesField::CreditNote => sale
            .credit_notes
            .iter()
            .find_map(|c| clean(c.memo.as_deref())),
    }
}

/// Maps a DEAR sale to the canonical order. `listed_updated` is the `Updated` saleList gave, used
/// when the sale detail lacks `LastModifiedOn`.
pub fn map_sale(
    sale: &Sale,
    settings: &OrderDownloadSettings,
    listed_updated: Option<chrono::DateTime<chrono::Utc>>,
) -> CanonicalOrder {
    let split = settings.split_names;
    let contact = clean(sale.contact.as_deref()).filter(|c| !c.eq_ignore_ascii_case("no name"));
    let customer_name = clean(sale.customer.as_deref());
    let (first_name, last_name) = match (&contact, split) {
        (Some(c), true) => split_name(c),
        _ => (None, None),
    };
    let shipping = sale.shipping_address.as_ref();
    let ship_name = shipping
        .and_then(|a| clean(a.contact.as_deref()))
        .or_else(|| contact.clone())
        .or_else(|| customer_name.clone());
    let ship_company = shipping.and_then(|a| clean(a.company.as_deref()));
    let bill_name = contact.clone().or_else(|| customer_name.clone());
    let mut order = CanonicalOrder {
        schema: SCHEMA.to_owned(),
        sale_id: sale.id.to_string(),
        version: String::new(),
        delivery_id: String::new(),
        resend_of: None,
        order_number: sale.order_number().unwrap_or_default().to_owned(),
        status: sale.status.as_str().to_owned(),
        order_date: sale.sale_order_date.map(|d| d.to_string()),
        ship_by: sale.ship_by.map(|d| d.to_string()),
        location: clean(sale.location.as_deref()),
        customer: Customer {
            name: customer_name.clone(),
            first_name,
            last_name,
            company: if contact.is_some() {
                customer_name.clone()
            } else {
                None
            },
            email: clean(sale.email.as_deref()),
            phone: clean(sale.phone.as_deref()),
        },
        ship_to: address(shipping, ship_name, ship_company, split),
        bill_to: address(
            sale.billing_address.as_ref(),
            bill_name,
            customer_name,
            split,
        ),
        lines: order_lines(sale, settings.take_order_lines_from),
        // An unmapped method stays DEAR's here; the job skips such an order (`ship_method_code`).
        shipping_method: {
            let method = shipping_method(sale, settings);
            ship_method_code(method.as_deref(), settings).unwrap_or(method)
        },
        notes: notes(sale, settings.notes_field),
        shipping_notes: clean(sale.shipping_notes.as_deref()),
        currency: clean(sale.customer_currency.as_deref()),
        total: sale.order.as_ref().map(|o| o.total).unwrap_or_default(),
        customer_reference: clean(sale.customer_reference.as_deref()),
        source_channel: clean(match settings.order_source {
            OrderSource::SourceChannel => sale.source_channel.as_deref(),
            OrderSource::Account => sale.default_account.as_deref(),
            OrderSource::SalesRep => sale.sales_representative.as_deref(),
        }),
        updated: sale
            .last_modified_on
            .map(|d| d.to_utc())
            .or(listed_updated)
            .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true)),
    };
    order.version = content_version(&order);
    order.delivery_id = delivery_id_for(&order.sale_id, &order.version, 1);
    order
}

/// The id of a sale's `sequence`-th delivered content (1 for the first).
pub fn delivery_id_for(sale_id: &str, version: &str, sequence: u32) -> String {
    if sequence <= 1 {
        format!("{sale_id}:{version}")
    } else {
        format!("{sale_id}:{version}:{sequence}")
    }
}

/// Applies `include_skus` / `exclude_skus` (matched on DEAR's SKUs) and then the tenant's SKU
/// aliases (DEAR → warehouse) to the order's lines, and versions the result. `Err` when the rules
/// leave no line: nothing of the sale is the warehouse's to ship.
pub fn apply_sku_rules(
    order: &mut CanonicalOrder,
    settings: &OrderDownloadSettings,
) -> Result<(), SkipReason> {
    let (include, exclude) = (&settings.include_skus, &settings.exclude_skus);
    if include.is_empty() && exclude.is_empty() && settings.sku_aliases.is_empty() {
        return Ok(());
    }
    let before = order.lines.len();
    order.lines.retain(|l| {
        (include.is_empty() || include.iter().any(|p| sku_matches(p, &l.sku)))
            && !exclude.iter().any(|p| sku_matches(p, &l.sku))
    });
    if order.lines.is_empty() && before > 0 {
        return Err(SkipReason {
            category: "no_lines_after_rules",
            detail: format!(
                "include_skus {include:?} / exclude_skus {exclude:?} leave none of its {before} lines"
            ),
        });
    }
    for line in &mut order.lines {
        line.sku = settings.sku_aliases.to_warehouse(&line.sku).to_owned();
    }
    order.version = content_version(order);
    Ok(())
}

/// The order's version: a hash of its content without `status`, `updated` and `version`.
pub fn content_version(order: &CanonicalOrder) -> String {
    let mut content = order.clone();
    content.status.clear();
    content.updated = None;
    content.version.clear();
    content.delivery_id.clear();
    content.resend_of = None;
    let bytes = serde_json::to_vec(&content).unwrap_or_default();
    dearsync_core::sha256_hex(&bytes)[..16].to_owned()
}

/// Why an order is not delivered: a short category (for counts) and the whole reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkipReason {
    /// `incomplete_ship_to`, `no_lines`, `line_without_sku`, `not_a_product`, `bad_quantity`,
    /// `no_order_number`, `attribute_filter`, `already_shipped`, `unmapped_ship_method`,
    /// `address_mismatch`, `no_lines_after_rules`.
    pub category: &'static str,
    /// What exactly is wrong, for the operator.
    pub detail: String,
}

/// Checks an order is complete enough for a warehouse to ship it.
pub fn validate(order: &CanonicalOrder) -> Result<(), SkipReason> {
    let missing: Vec<&str> = [
        ("line1", &order.ship_to.line1),
        ("city", &order.ship_to.city),
        ("postcode", &order.ship_to.postcode),
        ("country", &order.ship_to.country),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_none())
    .map(|(k, _)| k)
    .collect();
    if !missing.is_empty() {
        return Err(SkipReason {
            category: "incomplete_ship_to",
            detail: format!("the ship-to address has no {}", missing.join(", ")),
        });
    }
    if order.order_number.trim().is_empty() {
        return Err(SkipReason {
            category: "no_order_number",
            detail: "the sale has no order number (its order stage is empty)".to_owned(),
        });
    }
    if order.lines.is_empty() {
        return Err(SkipReason {
            category: "no_lines",
            detail: "the order has no product lines".to_owned(),
        });
    }
    for (i, line) in order.lines.iter().enumerate() {
        let n = i + 1;
        let label = line.name.as_deref().unwrap_or("(no name)");
        if line.sku.is_empty() {
            return Err(SkipReason {
                category: "line_without_sku",
                detail: format!("line {n} ({label}) has no SKU"),
            });
        }
        if line.product_id.is_none() {
            return Err(SkipReason {
                category: "not_a_product",
                detail: format!(
                    "line {n} (SKU {}) is not a DEAR product (no ProductID)",
                    line.sku
                ),
            });
        }
        if line.quantity <= Decimal::ZERO {
            return Err(SkipReason {
                category: "bad_quantity",
                detail: format!("line {n} (SKU {}) has quantity {}", line.sku, line.quantity),
            });
        }
    }
    Ok(())
}
