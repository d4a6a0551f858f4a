//! DEAR's endpoints over one account's [`Dataset`]. Pure state transitions: no I/O here.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::body::{self, Query, required};
use crate::model::*;
use crate::render::{self, num};
use crate::rules::{self, ApiError};

/// The endpoints the simulator knows (lower case, relative to `/ExternalApi/v2/`).
pub const ROUTES: &[&str] = &[
    "me",
    "salelist",
    "sale",
    "sale/fulfilment",
    "sale/fulfilment/pick",
    "sale/fulfilment/pack",
    "sale/fulfilment/ship",
    "stockadjustment",
    "stockadjustmentlist",
    "ref/productavailability",
    "product",
    "ref/location",
    "ref/carrier",
    "ref/pricetier",
    "webhooks",
];

/// A webhook event to deliver once the state lock is released.
#[derive(Clone, Debug)]
pub struct Event {
    /// e.g. `Sale/ShipmentAuthorised`.
    pub event_type: String,
    /// The notification body.
    pub payload: Value,
}

/// Per-request context.
pub struct Ctx {
    /// The request time (UTC).
    pub now: NaiveDateTime,
    /// Shuffle `saleList` (in a stable, id-hashed order) instead of sorting by order number.
    pub shuffle: bool,
    /// Salt of the shuffle order.
    pub salt: u64,
    /// How a shipped, un-invoiced simple sale shows its `Status`.
    pub shipped_sale_status: rules::ShippedSaleStatus,
    /// `MaximumDecimalPlacesInQuantity` as `"N4"` rather than `4`.
    pub quantity_places_as_text: bool,
    /// `UnitCost` required on every stock adjustment line, not only for new stock.
    pub unit_cost_on_every_line: bool,
    /// A simple sale lists no fulfilment before any work.
    pub hide_untouched_simple_fulfilment: bool,
    /// An authorised pick opens a DRAFT pack with the picked lines.
    pub draft_pack_after_pick: bool,
    /// `PUT` of a pack is refused while the pack is NOT AVAILABLE (nothing to replace).
    pub put_needs_an_open_stage: bool,
    /// `ref/productavailability`'s `Bin: null` row holds the location's total (bins included),
    /// not only the stock outside bins.
    pub bin_null_row_is_total: bool,
}

fn method_not_allowed() -> ApiError {
    ApiError {
        status: 405,
        message: "The requested resource does not support this http method".into(),
    }
}

/// Dispatches one call. `route` is lower case; unknown routes are the caller's business.
pub fn handle(
    data: &mut Dataset,
    ctx: &Ctx,
    method: &str,
    route: &str,
    q: &Query,
    body: &Value,
    events: &mut Vec<Event>,
) -> Result<Value, ApiError> {
    match (route, method) {
        ("me", "GET") => Ok(json!({
            "Company": data.company, "Currency": "USD", "TimeZone": "UTC",
            "DefaultWeightUnits": "kg", "DefaultDimensionsUnits": "cm", "LockDate": Value::Null,
            "MaximumDecimalPlacesInQuantity": if ctx.quantity_places_as_text { json!("N4") } else { json!(4) },
            "TaxCalculationMethod": "Exclusive",
        })),
        ("salelist", "GET") => sale_list(data, ctx, q),
        ("sale", "GET") => {
            let id = q.guid("ID")?.ok_or_else(|| required("ID"))?;
            let sale = data
                .sales
                .get(&id)
                .ok_or_else(|| ApiError::bad(format!("Sale with ID {id} not found")))?;
            Ok(render::sale(
                sale,
                data,
                ctx.shipped_sale_status,
                ctx.hide_untouched_simple_fulfilment,
            ))
        }
        ("sale/fulfilment", "GET") => {
            let id = q.guid("SaleID")?.ok_or_else(|| required("SaleID"))?;
            let sale = data
                .sales
                .get(&id)
                .ok_or_else(|| ApiError::bad(format!("Sale with ID {id} not found")))?;
            Ok(render::fulfilments(
                sale,
                data,
                ctx.hide_untouched_simple_fulfilment,
            ))
        }
        ("sale/fulfilment", "POST") => new_fulfilment(data, ctx, body),
        ("sale/fulfilment", "DELETE") => delete_fulfilment(data, ctx, q),
        ("sale/fulfilment/pick" | "sale/fulfilment/pack" | "sale/fulfilment/ship", "GET") => {
            let task = q.guid("TaskID")?.ok_or_else(|| required("TaskID"))?;
            let (sale_id, idx) = find_task(data, task)?;
            let sale = &data.sales[&sale_id];
            let f = &sale.fulfilments[idx];
            Ok(match route {
                "sale/fulfilment/pick" => render::pick_pack(f, data, false),
                "sale/fulfilment/pack" => render::pick_pack(f, data, true),
                _ => render::ship(f, sale),
            })
        }
        ("sale/fulfilment/pick", "POST" | "PUT") => {
            write_pick(data, ctx, body, method == "PUT", events)
        }
        ("sale/fulfilment/pack", "POST" | "PUT") => {
            write_pack(data, ctx, body, method == "PUT", events)
        }
        ("sale/fulfilment/ship", "POST" | "PUT") => {
            write_ship(data, ctx, body, method == "PUT", events)
        }
        ("stockadjustment", "GET") => {
            let task = q.guid("TaskID")?.ok_or_else(|| required("TaskID"))?;
            let a = data
                .adjustments
                .get(&task)
                .ok_or_else(|| ApiError::bad(format!("Stock adjustment {task} not found")))?;
            Ok(render::adjustment(a, data))
        }
        ("stockadjustment", "POST") => write_adjustment(data, ctx, body, None),
        ("stockadjustment", "PUT") => {
            let task = body::guid(body, "TaskID")?.ok_or_else(|| required("TaskID"))?;
            write_adjustment(data, ctx, body, Some(task))
        }
        ("stockadjustment", "DELETE") => delete_adjustment(data, q),
        ("stockadjustmentlist", "GET") => {
            let status = q.get("Status").map(str::to_ascii_uppercase);
            let mut rows: Vec<&SimAdjustment> = data
                .adjustments
                .values()
                .filter(|a| status.as_ref().is_none_or(|s| a.status == *s))
                .collect();
            rows.sort_by(|a, b| a.number.cmp(&b.number));
            page(
                q,
                "StockAdjustmentList",
                rows.into_iter()
                    .map(|a| {
                        json!({
                            "TaskID": a.task_id, "EffectiveDate": render::date(a.effective_date),
                            "StocktakeNumber": a.number, "Status": a.status, "Account": a.account,
                            "Reference": a.reference,
                        })
                    })
                    .collect(),
            )
        }
        ("ref/productavailability", "GET") => availability(data, q, ctx.bin_null_row_is_total),
        ("product", "GET") => {
            let id = q.guid("ID")?;
            let name = q.get("Name").map(str::to_lowercase);
            let sku = q.get("Sku").map(str::to_lowercase);
            let since = q.date("ModifiedSince")?;
            let rows = data
                .products
                .values()
                .filter(|p| id.is_none_or(|i| p.id == i))
                .filter(|p| {
                    name.as_ref()
                        .is_none_or(|n| p.name.to_lowercase().contains(n))
                })
                .filter(|p| {
                    sku.as_ref()
                        .is_none_or(|s| p.sku.to_lowercase().contains(s))
                })
                .filter(|p| since.is_none_or(|s| p.last_modified > s));
            let mut rows: Vec<&SimProduct> = rows.collect();
            rows.sort_by(|a, b| a.sku.cmp(&b.sku));
            page(
                q,
                "Products",
                rows.into_iter()
                    .map(|p| render::product(p, &data.price_tier_names))
                    .collect(),
            )
        }
        ("ref/location", "GET") => {
            let id = q.guid("ID")?;
            let name = q.get("Name").map(str::to_lowercase);
            let rows = data
                .locations
                .iter()
                .filter(|l| id.is_none_or(|i| l.id == i))
                .filter(|l| {
                    name.as_ref()
                        .is_none_or(|n| l.name.to_lowercase().starts_with(n))
                })
                .map(render::location)
                .collect();
            page(q, "LocationList", rows)
        }
        ("ref/carrier", "GET") => {
            let id = q.guid("CarrierID")?;
            let desc = q.get("Description").map(str::to_lowercase);
            let rows = data
                .carriers
                .iter()
                .filter(|(i, _)| id.is_none_or(|x| *i == x))
                .filter(|(_, d)| desc.as_ref().is_none_or(|x| d.to_lowercase().contains(x)))
                .map(|(i, d)| json!({"CarrierID": i, "Description": d}))
                .collect();
            page(q, "CarrierList", rows)
        }
        ("ref/carrier", "POST") => {
            let desc = body::text(body, "Description").ok_or_else(|| required("Description"))?;
            if data
                .carriers
                .iter()
                .any(|(_, d)| d.eq_ignore_ascii_case(&desc))
            {
                return Err(ApiError::bad(format!("Carrier '{desc}' already exists")));
            }
            let id = Uuid::new_v4();
            data.carriers.push((id, desc.clone()));
            Ok(json!({"CarrierID": id, "Description": desc}))
        }
        ("ref/pricetier", "GET") => Ok(json!({
            "PriceTiers": data.price_tier_names.iter().enumerate()
                .map(|(i, n)| json!({"Code": i + 1, "Name": n})).collect::<Vec<_>>()
        })),
        ("webhooks", "GET") => {
            Ok(json!({"Webhooks": data.webhooks.iter().map(render::webhook).collect::<Vec<_>>()}))
        }
        ("webhooks", "POST" | "PUT") => write_webhook(data, body, method == "PUT"),
        ("webhooks", "DELETE") => {
            let id = q.guid("ID")?.ok_or_else(|| required("ID"))?;
            let before = data.webhooks.len();
            data.webhooks.retain(|w| w.id != id);
            if data.webhooks.len() == before {
                return Err(ApiError::bad(format!("Webhook {id} not found")));
            }
            Ok(json!({"Webhooks": []}))
        }
        _ => Err(method_not_allowed()),
    }
}

/// A list envelope for `rows` under `key`, paged by the query.
fn page(q: &Query, key: &str, rows: Vec<Value>) -> Result<Value, ApiError> {
    let (page, limit) = q.paging()?;
    let total = rows.len();
    let items: Vec<Value> = rows
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    let mut out = serde_json::Map::new();
    out.insert("Total".into(), json!(total));
    out.insert("Page".into(), json!(page));
    out.insert(key.into(), Value::Array(items));
    Ok(Value::Object(out))
}

fn eq(a: &str, b: &str) -> bool {
    a.trim().replace('_', " ").eq_ignore_ascii_case(b.trim())
}

fn sale_list(data: &Dataset, ctx: &Ctx, q: &Query) -> Result<Value, ApiError> {
    let status = q.get("Status");
    let updated_since = q.date("UpdatedSince")?;
    let updated_until = q.date("UpdatedUntil")?;
    let created_since = q.date("CreatedSince")?;
    let ship_by = q.date("ShipBy")?;
    let quote = q.get("QuoteStatus");
    let order = q.get("OrderStatus");
    let credit = q.get("CreditNoteStatus");
    // Current names, and the older ones of the help centre (PickStatus=DRAFT etc.).
    let pick = q.get("CombinedPickStatus").or(q.get("PickStatus"));
    let pack = q.get("CombinedPackStatus").or(q.get("PackStatus"));
    let ship = q.get("CombinedShippingStatus").or(q.get("ShipStatus"));
    let invoice = q.get("CombinedInvoiceStatus").or(q.get("InvoiceStatus"));
    let external = q.get("ExternalID");
    let ready = q.flag("ReadyForShipping");
    let location = q.guid("OrderLocationID")?;
    let search = q.get("Search").map(str::to_lowercase);

    let mut rows: Vec<&SimSale> = Vec::new();
    for s in data.sales.values() {
        if updated_since.is_some_and(|d| s.updated <= d)
            || updated_until.is_some_and(|d| s.updated >= d)
            || created_since.is_some_and(|d| s.created <= d)
            || location.is_some_and(|l| s.location_id != l)
            || external.is_some_and(|e| s.external_id.as_deref() != Some(e))
            || quote.is_some_and(|x| !eq(x, s.quote_status.as_str()))
            || order.is_some_and(|x| !eq(x, s.order_status.as_str()))
            || credit.is_some_and(|x| !eq(x, s.credit_note_status.as_str()))
        {
            continue;
        }
        if let Some(st) = status
            && !eq(st, rules::sale_status(s, ctx.shipped_sale_status))
        {
            continue;
        }
        if pick.is_some()
            || pack.is_some()
            || ship.is_some()
            || invoice.is_some()
            || ship_by.is_some()
        {
            let c = rules::combined_statuses(s);
            let first = s.fulfilments.iter().find(|f| f.is_live());
            let stage = |f: fn(&SimFulfilment) -> Stage| first.map(f).unwrap_or_default().as_str();
            if pick.is_some_and(|x| !eq(x, c.picking) && !eq(x, stage(|f| f.pick_status)))
                || pack.is_some_and(|x| !eq(x, c.packing) && !eq(x, stage(|f| f.pack_status)))
                || ship.is_some_and(|x| !eq(x, c.shipping) && !eq(x, stage(|f| f.ship_status)))
                || invoice.is_some_and(|x| !eq(x, c.invoice))
            {
                continue;
            }
            if let Some(d) = ship_by
                && (s.ship_by.is_none_or(|b| b > d) || c.shipping == "SHIPPED")
            {
                continue;
            }
        }
        if ready == Some(true)
            && !s.fulfilments.iter().any(|f| {
                f.is_live() && f.pack_status.is_authorised() && f.ship_status != Stage::Authorised
            })
        {
            continue;
        }
        if let Some(needle) = &search {
            let status = rules::sale_status(s, ctx.shipped_sale_status).to_lowercase();
            let hay = [
                s.order_number.to_lowercase(),
                status,
                s.customer.to_lowercase(),
                s.customer_reference.to_lowercase(),
                s.invoices
                    .iter()
                    .map(|i| i.number.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" "),
            ];
            if !hay.iter().any(|h| h.contains(needle.as_str())) {
                continue;
            }
        }
        rows.push(s);
    }
    if ctx.shuffle {
        // Not ordered by Updated (as DEAR), but stable across pages of one listing.
        rows.sort_by_key(|s| {
            let (hi, lo) = s.id.as_u64_pair();
            (hi ^ lo ^ ctx.salt).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        });
    } else {
        rows.sort_by(|a, b| a.order_number.cmp(&b.order_number));
    }
    page(
        q,
        "SaleList",
        rows.into_iter()
            .map(|s| render::sale_list_row(s, ctx.shipped_sale_status))
            .collect(),
    )
}

/// Finds the sale and index of a fulfilment task.
pub fn find_task(data: &Dataset, task: Uuid) -> Result<(Uuid, usize), ApiError> {
    for s in data.sales.values() {
        if let Some(i) = s.fulfilments.iter().position(|f| f.task_id == task) {
            return Ok((s.id, i));
        }
    }
    Err(ApiError::bad(format!("Task with TaskID {task} not found")))
}

fn new_fulfilment(data: &mut Dataset, ctx: &Ctx, body: &Value) -> Result<Value, ApiError> {
    let id = body::guid(body, "SaleID")?.ok_or_else(|| required("SaleID"))?;
    let sale = data
        .sales
        .get_mut(&id)
        .ok_or_else(|| ApiError::bad(format!("Sale with ID {id} not found")))?;
    if sale.voided || sale.order_status != Stage::Authorised {
        return Err(ApiError::bad(format!(
            "Cannot create fulfilment: Order status is {}, not AUTHORISED",
            if sale.voided {
                "VOIDED"
            } else {
                sale.order_status.as_str()
            }
        )));
    }
    if sale
        .fulfilments
        .iter()
        .any(|f| f.is_live() && !f.pick_status.is_authorised())
    {
        return Err(ApiError::bad(
            "Cannot create fulfilment: there is a fulfilment task with non AUTHORISED Pick status",
        ));
    }
    let number = sale.fulfilments.iter().map(|f| f.number).max().unwrap_or(0) + 1;
    sale.fulfilments
        .push(SimFulfilment::new(Uuid::new_v4(), number));
    sale.advanced = true;
    sale.updated = ctx.now;
    let sale = &data.sales[&id];
    Ok(render::fulfilments(
        sale,
        data,
        ctx.hide_untouched_simple_fulfilment,
    ))
}

fn delete_fulfilment(data: &mut Dataset, ctx: &Ctx, q: &Query) -> Result<Value, ApiError> {
    let task = q.guid("TaskID")?.ok_or_else(|| required("TaskID"))?;
    let void = q.flag("Void").unwrap_or(false);
    let (sale_id, idx) = find_task(data, task)?;
    let sale = data.sales.get_mut(&sale_id).expect("found above");
    if !sale.advanced {
        return Err(ApiError::bad(
            "Fulfilments can be deleted for Advanced Sales only",
        ));
    }
    let f = &mut sale.fulfilments[idx];
    // Live DEAR: on an AUTHORISED fulfilment this is a no-op that answers 200.
    let authorised = f.pick_status.is_authorised()
        || f.pack_status.is_authorised()
        || matches!(
            f.ship_status,
            Stage::Authorised | Stage::PartiallyAuthorised
        );
    if !authorised {
        if void {
            f.pick_status = Stage::Voided;
            f.pack_status = Stage::Voided;
            f.ship_status = Stage::Voided;
        } else {
            f.pick_status = Stage::NotAvailable;
            f.pack_status = Stage::NotAvailable;
            f.ship_status = Stage::NotAvailable;
            f.pick.clear();
            f.pack.clear();
            f.ship.clear();
        }
        sale.updated = ctx.now;
    }
    let sale = &data.sales[&sale_id];
    Ok(render::fulfilments(
        sale,
        data,
        ctx.hide_untouched_simple_fulfilment,
    ))
}

fn stage_status(body: &Value, allowed: &[Stage]) -> Result<Stage, ApiError> {
    let t = body::text(body, "Status").ok_or_else(|| required("Status"))?;
    Stage::parse(&t)
        .filter(|s| allowed.contains(s))
        .ok_or_else(|| {
            ApiError::bad(format!(
                "Status '{t}' is not valid here; allowed: {}",
                allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// A line's location: `LocationID`, or `Location` as `"Name"` or `"Name: Bin"` (the bin is kept
/// when both are given).
fn line_location(data: &Dataset, l: &Value, n: usize) -> Result<(Uuid, Option<String>), ApiError> {
    let name = body::text(l, "Location");
    match (body::guid(l, "LocationID")?, name) {
        (Some(id), name) if data.location(id).is_some() => Ok((
            id,
            name.and_then(|n| data.location_by_name(&n).and_then(|(_, b)| b)),
        )),
        (_, Some(name)) => {
            let (loc, bin) = data
                .location_by_name(&name)
                .ok_or_else(|| ApiError::bad(format!("Line {n}: Location '{name}' not found")))?;
            Ok((loc.id, bin))
        }
        (Some(id), None) => Err(ApiError::bad(format!("Line {n}: Location {id} not found"))),
        (None, None) => Err(ApiError::bad(format!(
            "Line {n}: Required attribute Location is not provided."
        ))),
    }
}

/// Reads pick/pack lines: product by ProductID or SKU, location by LocationID or name.
fn fulfil_lines(data: &Dataset, body: &Value, pack: bool) -> Result<Vec<SimFulfilLine>, ApiError> {
    let mut out = Vec::new();
    for (i, l) in body::list(body, "Lines").iter().enumerate() {
        let n = i + 1;
        let product = match body::guid(l, "ProductID")? {
            Some(id) => data.products.get(&id),
            None => match body::text(l, "SKU") {
                Some(sku) => data.product_by_sku(&sku),
                None => {
                    return Err(ApiError::bad(format!(
                        "Line {n}: Required attribute SKU is not provided."
                    )));
                }
            },
        }
        .ok_or_else(|| {
            ApiError::bad(format!(
                "Line {n}: Product not found: {}",
                body::text(l, "SKU")
                    .or(body::text(l, "ProductID"))
                    .unwrap_or_default()
            ))
        })?;
        let (location_id, bin) = line_location(data, l, n)?;
        let quantity = body::decimal(l, "Quantity")?.ok_or_else(|| {
            ApiError::bad(format!(
                "Line {n}: Required attribute Quantity is not provided."
            ))
        })?;
        if quantity <= Decimal::ZERO {
            return Err(ApiError::bad(format!(
                "Line {n}: Quantity must be greater than 0"
            )));
        }
        let batch = body::text(l, "BatchSN");
        if product.batch_tracked() && batch.is_none() {
            return Err(ApiError::bad(format!(
                "Line {n}: BatchSN is required for product {} ({})",
                product.sku, product.costing_method
            )));
        }
        let r#box = if pack {
            Some(body::text(l, "Box").unwrap_or_else(|| "Box 1".to_owned()))
        } else {
            None
        };
        out.push(SimFulfilLine {
            product_id: product.id,
            quantity,
            location_id,
            bin,
            batch,
            expiry: body::date(l, "ExpiryDate")?,
            r#box,
        });
    }
    Ok(out)
}

fn sku(data: &Dataset, id: Uuid) -> String {
    data.products
        .get(&id)
        .map(|p| p.sku.clone())
        .unwrap_or_else(|| id.to_string())
}

/// The body's `TaskID`, its sale and fulfilment index, refused for `stage` when the sale or the
/// fulfilment is voided.
fn live_task(data: &Dataset, body: &Value, stage: &str) -> Result<(Uuid, Uuid, usize), ApiError> {
    let task = body::guid(body, "TaskID")?.ok_or_else(|| required("TaskID"))?;
    let (sale_id, idx) = find_task(data, task)?;
    let sale = &data.sales[&sale_id];
    if sale.voided || !sale.fulfilments[idx].is_live() {
        return Err(ApiError::bad(format!(
            "{stage} is not allowed: the sale or fulfilment is VOIDED"
        )));
    }
    Ok((task, sale_id, idx))
}

fn write_pick(
    data: &mut Dataset,
    ctx: &Ctx,
    body: &Value,
    replace: bool,
    events: &mut Vec<Event>,
) -> Result<Value, ApiError> {
    let task = body::guid(body, "TaskID")?.ok_or_else(|| required("TaskID"))?;
    let (sale_id, idx) = find_task(data, task)?;
    let sale = &data.sales[&sale_id];
    if sale.voided || sale.order_status != Stage::Authorised {
        return Err(ApiError::bad(format!(
            "Pick is not allowed: Order status is {}, not AUTHORISED",
            if sale.voided {
                "VOIDED"
            } else {
                sale.order_status.as_str()
            }
        )));
    }
    let f = &sale.fulfilments[idx];
    if !f.pick_status.is_open() {
        return Err(ApiError::bad(format!(
            "Pick is not allowed: Pick status is {}, not DRAFT or NOT AVAILABLE",
            f.pick_status.as_str()
        )));
    }
    let others = rules::committed_to_picks(sale, Some(task));
    let ordered = rules::ordered(sale);
    let (status, mut lines) =
        if body::text(body, "AutoPickMode").is_some_and(|m| m.eq_ignore_ascii_case("AUTOPICK")) {
            let mut lines = Vec::new();
            for (product, want) in &ordered {
                let left = *want - others.get(product).copied().unwrap_or_default();
                if left > Decimal::ZERO {
                    lines.push(SimFulfilLine {
                        product_id: *product,
                        quantity: left,
                        location_id: sale.location_id,
                        bin: None,
                        batch: None,
                        expiry: None,
                        r#box: None,
                    });
                }
            }
            (Stage::Authorised, lines)
        } else {
            (
                stage_status(body, &[Stage::Draft, Stage::Authorised])?,
                fulfil_lines(data, body, false)?,
            )
        };
    if !replace && f.pick_status == Stage::Draft {
        let mut all = f.pick.clone();
        all.append(&mut lines);
        lines = all;
    }
    if lines.is_empty() && status == Stage::Authorised {
        return Err(ApiError::bad("Nothing to pick: no lines"));
    }
    let mut this = rules::Qty::new();
    for l in &lines {
        if !ordered.contains_key(&l.product_id) {
            return Err(ApiError::bad(format!(
                "Product {} is not on the sale order",
                sku(data, l.product_id)
            )));
        }
        *this.entry(l.product_id).or_default() += l.quantity;
    }
    for (p, q) in &this {
        let left = ordered[p] - others.get(p).copied().unwrap_or_default();
        if *q > left {
            return Err(ApiError::bad(format!(
                "Quantity to pick for {} ({q}) exceeds the quantity left to pick ({left})",
                sku(data, *p)
            )));
        }
    }
    let sale = data.sales.get_mut(&sale_id).expect("found above");
    let f = &mut sale.fulfilments[idx];
    f.pick = lines;
    f.pick_status = status;
    if status == Stage::Authorised
        && ctx.draft_pack_after_pick
        && f.pack_status == Stage::NotAvailable
    {
        f.pack = f.pick.clone();
        f.pack_status = Stage::Draft;
    }
    sale.updated = ctx.now;
    if status == Stage::Authorised {
        events.push(sale_event(sale, Some(task), "Sale/PickAuthorised"));
    }
    let sale = &data.sales[&sale_id];
    Ok(render::pick_pack(&sale.fulfilments[idx], data, false))
}

fn write_pack(
    data: &mut Dataset,
    ctx: &Ctx,
    body: &Value,
    replace: bool,
    events: &mut Vec<Event>,
) -> Result<Value, ApiError> {
    let (task, sale_id, idx) = live_task(data, body, "Pack")?;
    let sale = &data.sales[&sale_id];
    let f = &sale.fulfilments[idx];
    if !f.pick_status.is_authorised() {
        return Err(ApiError::bad(format!(
            "Pack is not allowed: Pick status is {}",
            f.pick_status.as_str()
        )));
    }
    if !f.pack_status.is_open() {
        return Err(ApiError::bad(format!(
            "Pack is not allowed: Pack status is {}, not DRAFT or NOT AVAILABLE",
            f.pack_status.as_str()
        )));
    }
    if replace && ctx.put_needs_an_open_stage && f.pack_status == Stage::NotAvailable {
        return Err(ApiError::bad(
            "Pack is not allowed: there is no pack to replace (Pack status is NOT AVAILABLE)",
        ));
    }
    let status = stage_status(body, &[Stage::Draft, Stage::Authorised])?;
    let mut lines = fulfil_lines(data, body, true)?;
    if !replace && f.pack_status == Stage::Draft {
        let mut all = f.pack.clone();
        all.append(&mut lines);
        lines = all;
    }
    if lines.is_empty() && status == Stage::Authorised {
        return Err(ApiError::bad("Nothing to pack: no lines"));
    }
    let mut picked = rules::Qty::new();
    for l in &f.pick {
        *picked.entry(l.product_id).or_default() += l.quantity;
    }
    let mut this = rules::Qty::new();
    for l in &lines {
        *this.entry(l.product_id).or_default() += l.quantity;
    }
    for (p, q) in &this {
        let have = picked.get(p).copied().unwrap_or_default();
        if *q > have {
            return Err(ApiError::bad(format!(
                "Quantity to pack for {} ({q}) exceeds the picked quantity ({have})",
                sku(data, *p)
            )));
        }
    }
    let sale = data.sales.get_mut(&sale_id).expect("found above");
    let f = &mut sale.fulfilments[idx];
    f.pack = lines;
    f.pack_status = status;
    sale.updated = ctx.now;
    if status == Stage::Authorised {
        events.push(sale_event(sale, Some(task), "Sale/PackAuthorised"));
    }
    let sale = &data.sales[&sale_id];
    Ok(render::pick_pack(&sale.fulfilments[idx], data, true))
}

fn ship_lines(body: &Value, packed_boxes: &[String]) -> Result<Vec<SimShipLine>, ApiError> {
    let mut out: Vec<SimShipLine> = Vec::new();
    for (i, l) in body::list(body, "Lines").iter().enumerate() {
        let n = i + 1;
        let date = body::date(l, "ShipmentDate")?.ok_or_else(|| {
            ApiError::bad(format!(
                "Line {n}: Required attribute ShipmentDate is not provided."
            ))
        })?;
        let b = body::text(l, "Box")
            .or(body::text(l, "Boxes"))
            .ok_or_else(|| {
                ApiError::bad(format!("Line {n}: Required attribute Box is not provided."))
            })?;
        if !packed_boxes.iter().any(|p| p.eq_ignore_ascii_case(&b)) {
            return Err(ApiError::bad(format!(
                "Line {n}: Box '{b}' is not packed (packed boxes: {})",
                packed_boxes.join(", ")
            )));
        }
        if out.iter().any(|o| o.r#box.eq_ignore_ascii_case(&b)) {
            return Err(ApiError::bad(format!(
                "Line {n}: Box '{b}' is listed twice"
            )));
        }
        out.push(SimShipLine {
            id: body::guid(l, "ID")?.unwrap_or_else(Uuid::new_v4),
            date,
            carrier: body::text(l, "Carrier").unwrap_or_default(),
            r#box: b,
            tracking_number: body::text(l, "TrackingNumber").unwrap_or_default(),
            tracking_url: body::text(l, "TrackingURL").unwrap_or_default(),
            is_shipped: body::field(l, "IsShipped").is_none() || body::flag(l, "IsShipped"),
        });
    }
    Ok(out)
}

fn write_ship(
    data: &mut Dataset,
    ctx: &Ctx,
    body: &Value,
    replace: bool,
    events: &mut Vec<Event>,
) -> Result<Value, ApiError> {
    let (task, sale_id, idx) = live_task(data, body, "Ship")?;
    let sale = &data.sales[&sale_id];
    let f = &sale.fulfilments[idx];
    let shipped_already = matches!(
        f.ship_status,
        Stage::Authorised | Stage::PartiallyAuthorised
    );
    if replace && body::flag(body, "AddTrackingNumbers") && shipped_already {
        return edit_tracking(data, ctx, sale_id, idx, body, events);
    }
    if !f.pack_status.is_authorised() {
        return Err(ApiError::bad(format!(
            "Ship is not allowed: PackStatus status is {}, not AUTHORISED",
            f.pack_status.as_str()
        )));
    }
    if shipped_already {
        return Err(ApiError::bad(format!(
            "Ship is not allowed: ShipmentStatus status is {}",
            f.ship_status.as_str()
        )));
    }
    let requested = stage_status(
        body,
        &[Stage::Draft, Stage::PartiallyAuthorised, Stage::Authorised],
    )?;
    let mut boxes: Vec<String> = Vec::new();
    for l in &f.pack {
        if let Some(b) = &l.r#box
            && !boxes.iter().any(|x| x.eq_ignore_ascii_case(b))
        {
            boxes.push(b.clone());
        }
    }
    let mut lines = ship_lines(body, &boxes)?;
    if !replace {
        let mut all = f.ship.clone();
        for l in lines {
            if all.iter().any(|o| o.r#box.eq_ignore_ascii_case(&l.r#box)) {
                return Err(ApiError::bad(format!(
                    "Box '{}' already has a ship line",
                    l.r#box
                )));
            }
            all.push(l);
        }
        lines = all;
    }
    let status = if requested == Stage::Draft {
        Stage::Draft
    } else if lines.is_empty() {
        return Err(ApiError::bad("Nothing to ship: no lines"));
    } else if boxes
        .iter()
        .all(|b| lines.iter().any(|l| l.r#box.eq_ignore_ascii_case(b)))
    {
        Stage::Authorised
    } else {
        Stage::PartiallyAuthorised
    };
    let sale = data.sales.get_mut(&sale_id).expect("found above");
    let f = &mut sale.fulfilments[idx];
    f.ship = lines;
    f.ship_status = status;
    if let Some(d) = body::date(body, "RequireBy")? {
        f.require_by = Some(d);
    }
    if let Some(n) = body::text(body, "ShippingNotes") {
        f.shipping_notes = n;
    }
    sale.updated = ctx.now;
    if status != Stage::Draft {
        let mut e = sale_event(sale, None, "Sale/ShipmentAuthorised");
        // This event names the sale SaleTaskID / OrderNumber (the reference's §9).
        e.payload = json!({
            "SaleTaskID": sale.id.to_string().to_uppercase(), "TenantID": Uuid::nil(),
            "OrderNumber": sale.order_number, "CustomerName": sale.customer,
            "CustomerContactName": sale.contact, "CustomerContactEmail": sale.email,
            "EventType": "Sale/ShipmentAuthorised",
        });
        events.push(e);
    }
    rules::after_ship(data, sale_id, task);
    let sale = &data.sales[&sale_id];
    Ok(render::ship(&sale.fulfilments[idx], sale))
}

/// `PUT …/ship` with `AddTrackingNumbers: true` on an authorised shipment: only carrier and
/// tracking of already shipped boxes change.
fn edit_tracking(
    data: &mut Dataset,
    ctx: &Ctx,
    sale_id: Uuid,
    idx: usize,
    body: &Value,
    events: &mut Vec<Event>,
) -> Result<Value, ApiError> {
    let sale = data.sales.get_mut(&sale_id).expect("caller found it");
    let f = &mut sale.fulfilments[idx];
    let mut edits = Vec::new();
    for (i, l) in body::list(body, "Lines").iter().enumerate() {
        let n = i + 1;
        let id = body::guid(l, "ID")?;
        let b = body::text(l, "Box").or(body::text(l, "Boxes"));
        let pos = f
            .ship
            .iter()
            .position(|s| Some(s.id) == id || b.as_ref().is_some_and(|b| s.r#box.eq_ignore_ascii_case(b)))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "Line {n}: no shipped box '{}' to update; AddTrackingNumbers only edits tracking numbers or carrier",
                    b.clone().unwrap_or_default()
                ))
            })?;
        edits.push((
            pos,
            body::text(l, "Carrier"),
            body::text(l, "TrackingNumber"),
            body::text(l, "TrackingURL"),
        ));
    }
    let mut changed = false;
    for (pos, carrier, tracking, url) in edits {
        let s = &mut f.ship[pos];
        for (slot, new) in [
            (&mut s.carrier, carrier),
            (&mut s.tracking_number, tracking),
            (&mut s.tracking_url, url),
        ] {
            if let Some(v) = new
                && *slot != v
            {
                *slot = v;
                changed = true;
            }
        }
    }
    if changed {
        sale.updated = ctx.now;
        let f = &sale.fulfilments[idx];
        events.push(Event {
            event_type: "Sale/ShipmentTrackingNumberChanged".into(),
            payload: json!({
                "SaleID": sale.id, "TaskID": f.task_id, "SaleOrderNumber": sale.order_number,
                "SaleOrderDate": sale.order_date.format("%d/%m/%Y").to_string(),
                "CustomerContact": sale.contact, "CustomerEmail": sale.email,
                "CustomerName": sale.customer, "TaskTypeSign": 0,
                "Shipments": f.ship.iter().map(|s| json!({
                    "ShipmentDate": s.date.format("%d/%m/%Y").to_string(),
                    "TrackingNumber": s.tracking_number, "TrackingUrl": s.tracking_url, "Carrier": s.carrier,
                })).collect::<Vec<_>>(),
                "EventType": "Sale/ShipmentTrackingNumberChanged",
            }),
        });
    }
    let sale = &data.sales[&sale_id];
    Ok(render::ship(&sale.fulfilments[idx], sale))
}

/// A sale notification in the shape of `Sale/OrderAuthorised` and friends.
pub fn sale_event(sale: &SimSale, task: Option<Uuid>, event_type: &str) -> Event {
    let mut payload = json!({
        "SaleID": sale.id.to_string().to_uppercase(), "SaleOrderNumber": sale.order_number,
        "EventType": event_type,
    });
    if let Some(t) = task {
        payload["TaskID"] = json!(t);
        payload["CustomerName"] = json!(sale.customer);
        payload["CustomerContactName"] = json!(sale.contact);
        payload["CustomerContactEmail"] = json!(sale.email);
    }
    Event {
        event_type: event_type.into(),
        payload,
    }
}

// ---- stock -------------------------------------------------------------------------------------

/// (SKU, location name, bin, batch, product, location, on hand, allocated).
type AvailabilityRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Uuid,
    Uuid,
    Decimal,
    Decimal,
);

/// The reading where the `Bin: null` row of a product × location × batch is its total: bin rows'
/// stock is added to it (a row is made where there was only binned stock).
fn add_bins_to_the_null_rows(rows: &mut Vec<AvailabilityRow>) {
    let mut binned: Vec<AvailabilityRow> = Vec::new();
    for r in rows.iter().filter(|r| r.2.is_some()) {
        match binned
            .iter_mut()
            .find(|t| (t.4, t.5, &t.3) == (r.4, r.5, &r.3))
        {
            Some(t) => t.6 += r.6,
            None => binned.push((
                r.0.clone(),
                r.1.clone(),
                None,
                r.3.clone(),
                r.4,
                r.5,
                r.6,
                r.7,
            )),
        }
    }
    for b in binned {
        match rows
            .iter_mut()
            .find(|t| t.2.is_none() && (t.4, t.5, &t.3) == (b.4, b.5, &b.3))
        {
            Some(t) => t.6 += b.6,
            None => rows.push(b),
        }
    }
}

fn availability(data: &Dataset, q: &Query, null_row_is_total: bool) -> Result<Value, ApiError> {
    let id = q.guid("ID")?;
    let name = q.get("Name").map(str::to_lowercase);
    let sku = q.get("Sku").map(str::to_lowercase);
    let location = q.get("Location");
    let batch = q.get("Batch");
    let category = q.get("Category");
    let alloc = rules::allocations(data);
    // Allocation is per product × location; it is shown on that pair's first row.
    let mut rows: Vec<AvailabilityRow> = Vec::new();
    let mut seen: HashMap<(Uuid, Uuid), usize> = HashMap::new();
    for (key, on_hand) in data.stock.values() {
        let Some(p) = data.products.get(&key.product_id) else {
            continue;
        };
        let loc = data
            .location(key.location_id)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        rows.push((
            p.sku.clone(),
            loc,
            key.bin.clone(),
            key.batch.clone(),
            p.id,
            key.location_id,
            *on_hand,
            Decimal::ZERO,
        ));
    }
    if null_row_is_total {
        add_bins_to_the_null_rows(&mut rows);
    }
    let stocked: std::collections::HashSet<(Uuid, Uuid)> =
        rows.iter().map(|r| (r.4, r.5)).collect();
    for ((product, loc_id), a) in &alloc {
        if !stocked.contains(&(*product, *loc_id))
            && let Some(p) = data.products.get(product)
        {
            let loc = data
                .location(*loc_id)
                .map(|l| l.name.clone())
                .unwrap_or_default();
            rows.push((
                p.sku.clone(),
                loc,
                None,
                None,
                *product,
                *loc_id,
                Decimal::ZERO,
                *a,
            ));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.1, &a.2, &a.3).cmp(&(&b.0, &b.1, &b.2, &b.3)));
    for (i, r) in rows.iter_mut().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(e) = seen.entry((r.4, r.5)) {
            e.insert(i);
            r.7 = alloc.get(&(r.4, r.5)).copied().unwrap_or_default();
        }
    }
    let out: Vec<Value> = rows
        .into_iter()
        .filter(|r| !(r.6.is_zero() && r.7.is_zero()))
        .filter(|r| id.is_none_or(|i| r.4 == i))
        .filter(|r| sku.as_ref().is_none_or(|s| r.0.to_lowercase().contains(s)))
        .filter(|r| location.is_none_or(|l| r.1.eq_ignore_ascii_case(l)))
        .filter(|r| batch.is_none_or(|b| r.3.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(b))))
        .filter_map(|r| {
            let p = data.products.get(&r.4)?;
            if name
                .as_ref()
                .is_some_and(|n| !p.name.to_lowercase().contains(n))
                || category.is_some_and(|c| !p.category.eq_ignore_ascii_case(c))
            {
                return None;
            }
            Some(json!({
                "ID": p.id, "SKU": p.sku, "Name": p.name, "Barcode": p.barcode, "Location": r.1,
                "Bin": r.2, "Batch": r.3,
                "ExpiryDate": render::opt_date(data.expiry_of(p.id, r.3.as_deref())),
                "Category": p.category,
                "OnHand": num(r.6), "Allocated": num(r.7), "Available": num(r.6 - r.7),
                "OnOrder": 0, "StockOnHand": num(r.6 * p.average_cost), "InTransit": 0,
            }))
        })
        .collect();
    page(q, "ProductAvailabilityList", out)
}

type FirstCells = HashMap<(Uuid, Uuid), (Option<String>, Option<String>)>;

/// The first cell (bin, batch) of each product × location: it carries the allocation.
fn first_cells(data: &Dataset) -> FirstCells {
    let mut out: FirstCells = HashMap::new();
    for (k, _) in data.stock.values() {
        let cell = (k.bin.clone(), k.batch.clone());
        out.entry((k.product_id, k.location_id))
            .and_modify(|c| {
                if cell < *c {
                    *c = cell.clone();
                }
            })
            .or_insert(cell);
    }
    out
}

/// Allocated quantity shown on a cell (the product × location's first cell carries it all).
fn allocated_on(
    key: &StockKey,
    alloc: &HashMap<(Uuid, Uuid), Decimal>,
    first: &FirstCells,
) -> Decimal {
    let is_first = first
        .get(&(key.product_id, key.location_id))
        .is_none_or(|(b, t)| *b == key.bin && *t == key.batch);
    if is_first {
        alloc
            .get(&(key.product_id, key.location_id))
            .copied()
            .unwrap_or_default()
    } else {
        Decimal::ZERO
    }
}

fn write_adjustment(
    data: &mut Dataset,
    ctx: &Ctx,
    body: &Value,
    task: Option<Uuid>,
) -> Result<Value, ApiError> {
    if let Some(t) = task {
        let existing = data
            .adjustments
            .get(&t)
            .ok_or_else(|| ApiError::bad(format!("Stock adjustment {t} not found")))?;
        if existing.status != "DRAFT" {
            return Err(ApiError::bad(format!(
                "Stock adjustment {} is {} and cannot be changed",
                existing.number, existing.status
            )));
        }
    }
    let effective = body::date(body, "EffectiveDate")?.ok_or_else(|| required("EffectiveDate"))?;
    let status = body::text(body, "Status")
        .ok_or_else(|| required("Status"))?
        .to_ascii_uppercase();
    if status != "DRAFT" && status != "COMPLETED" {
        return Err(ApiError::bad(format!(
            "Status '{status}' is not valid; use DRAFT or COMPLETED"
        )));
    }
    let raw_lines = body::list(body, "Lines");
    if raw_lines.is_empty() {
        return Err(required("Lines"));
    }
    let update_on_hand = body::flag(body, "UpdateOnHand");
    let alloc = rules::allocations(data);
    let first = first_cells(data);
    let by_sku: HashMap<String, Uuid> = data
        .products
        .values()
        .map(|p| (p.sku.to_lowercase(), p.id))
        .collect();
    let mut lines = Vec::new();
    let mut cells = std::collections::HashSet::new();
    for (i, l) in raw_lines.iter().enumerate() {
        let n = i + 1;
        let product = match body::guid(l, "ProductID")? {
            Some(id) => data.products.get(&id),
            None => body::text(l, "SKU")
                .and_then(|s| by_sku.get(&s.to_lowercase()))
                .and_then(|id| data.products.get(id)),
        }
        .ok_or_else(
            || match body::text(l, "SKU").or(body::text(l, "ProductID")) {
                Some(x) => ApiError::bad(format!("Line {n}: Product not found: {x}")),
                None => ApiError::bad(format!(
                    "Line {n}: Required attribute ProductID or SKU is not provided."
                )),
            },
        )?;
        let (location_id, bin) = line_location(data, l, n)?;
        let quantity = body::decimal(l, "Quantity")?.ok_or_else(|| {
            ApiError::bad(format!(
                "Line {n}: Required attribute Quantity is not provided."
            ))
        })?;
        if quantity < Decimal::ZERO {
            return Err(ApiError::bad(format!(
                "Line {n}: Quantity cannot be negative"
            )));
        }
        let batch = body::text(l, "BatchSN");
        if product.batch_tracked() && batch.is_none() {
            return Err(ApiError::bad(format!(
                "Line {n}: BatchSN is required for product {} (costing method {})",
                product.sku, product.costing_method
            )));
        }
        let expiry = body::date(l, "ExpiryDate")?;
        if product.expiry_dated() && expiry.is_none() {
            return Err(ApiError::bad(format!(
                "Line {n}: ExpiryDate is required for product {} (costing method {})",
                product.sku, product.costing_method
            )));
        }
        let key = StockKey {
            product_id: product.id,
            location_id,
            bin,
            batch,
        };
        if !cells.insert(key.id()) {
            return Err(ApiError::bad(format!(
                "Line {n}: product {} appears twice for the same location and batch",
                product.sku
            )));
        }
        let on_hand = data.on_hand(&key);
        let unit_cost = body::decimal(l, "UnitCost")?;
        if unit_cost.is_none() && ctx.unit_cost_on_every_line {
            return Err(ApiError::bad(format!(
                "Line {n}: 'UnitCost' attribute is required."
            )));
        }
        if on_hand <= Decimal::ZERO && unit_cost.is_none() {
            return Err(ApiError::bad(format!(
                "Line {n}: Required attribute UnitCost is not provided. Product {} has no stock in this location",
                product.sku
            )));
        }
        let allocated = allocated_on(&key, &alloc, &first);
        lines.push(SimAdjLine {
            key,
            quantity,
            unit_cost,
            expiry,
            received: body::date(l, "ReceivedDate")?,
            comments: body::text(l, "Comments").unwrap_or_default(),
            on_hand_before: on_hand,
            available_before: on_hand - allocated,
            applied_on_hand: None,
        });
    }
    let task_id = task.unwrap_or_else(Uuid::new_v4);
    let number = match task {
        Some(t) => data.adjustments[&t].number.clone(),
        None => {
            data.next_stocktake_number += 1;
            format!("ST-{:05}", data.next_stocktake_number)
        }
    };
    let mut adj = SimAdjustment {
        task_id,
        number,
        status: status.clone(),
        effective_date: effective,
        account: body::text(body, "Account").unwrap_or_default(),
        reference: body::text(body, "Reference").unwrap_or_default(),
        update_on_hand,
        lines,
    };
    if status == "COMPLETED" {
        for l in &mut adj.lines {
            // On-hand target, or an available target: on hand = target + allocated.
            let allocated = allocated_on(&l.key, &alloc, &first);
            let target = if update_on_hand {
                l.quantity
            } else {
                l.quantity + allocated
            };
            data.set_on_hand(l.key.clone(), target);
            l.applied_on_hand = Some(target);
            // A batch's expiry is set when it is first received; later lines do not change it.
            if let (Some(batch), Some(expiry)) = (&l.key.batch, l.expiry) {
                data.batch_expiry
                    .entry(Dataset::batch_key(l.key.product_id, batch))
                    .or_insert(expiry);
            }
        }
    }
    let _ = ctx;
    data.adjustments.insert(task_id, adj);
    Ok(render::adjustment(&data.adjustments[&task_id], data))
}

fn delete_adjustment(data: &mut Dataset, q: &Query) -> Result<Value, ApiError> {
    let id = q
        .guid("ID")?
        .or(q.guid("TaskID")?)
        .ok_or_else(|| required("ID"))?;
    let void = q.flag("Void").unwrap_or(false);
    let adj = data
        .adjustments
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::bad(format!("Stock adjustment {id} not found")))?;
    if adj.status == "VOIDED" {
        return Err(ApiError::bad(format!(
            "Stock adjustment {} is already VOIDED",
            adj.number
        )));
    }
    if adj.status == "COMPLETED" {
        for l in &adj.lines {
            if let Some(applied) = l.applied_on_hand {
                // Reverse the change, keeping whatever moved since.
                let now = data.on_hand(&l.key);
                data.set_on_hand(l.key.clone(), now - (applied - l.on_hand_before));
            }
        }
    }
    let a = data.adjustments.get_mut(&id).expect("present");
    for l in &mut a.lines {
        l.applied_on_hand = None;
    }
    a.status = if void {
        "VOIDED".into()
    } else {
        "DRAFT".into()
    };
    Ok(render::adjustment(&data.adjustments[&id], data))
}

// ---- webhooks ----------------------------------------------------------------------------------

fn write_webhook(data: &mut Dataset, body: &Value, replace: bool) -> Result<Value, ApiError> {
    let event_type = body::text(body, "Type").ok_or_else(|| required("Type"))?;
    if !event_type.contains('/') {
        return Err(ApiError::bad(format!(
            "Type '{event_type}' is not a webhook type"
        )));
    }
    let url = body::text(body, "ExternalURL").ok_or_else(|| required("ExternalURL"))?;
    let auth = body::text(body, "ExternalAuthorizationType")
        .unwrap_or_else(|| "noauth".into())
        .to_lowercase();
    if !["noauth", "basicauth", "bearerauth"].contains(&auth.as_str()) {
        return Err(ApiError::bad(format!(
            "ExternalAuthorizationType '{auth}' is not one of noauth, basicauth, bearerauth"
        )));
    }
    let headers = body::list(body, "ExternalHeaders")
        .iter()
        .filter_map(|h| {
            Some((
                body::text(h, "Key")?,
                body::text(h, "Value").unwrap_or_default(),
            ))
        })
        .collect();
    let id = if replace {
        body::guid(body, "ID")?.ok_or_else(|| required("ID"))?
    } else {
        Uuid::new_v4()
    };
    let same_type = data
        .webhooks
        .iter()
        .filter(|w| w.event_type.eq_ignore_ascii_case(&event_type) && w.id != id)
        .count();
    if same_type >= 5 {
        return Err(ApiError::bad(format!(
            "Maximum of 5 webhooks of type {event_type} reached"
        )));
    }
    let hook = SimWebhook {
        id,
        event_type,
        is_active: body::field(body, "IsActive").is_none() || body::flag(body, "IsActive"),
        url,
        auth_type: auth,
        user: body::text(body, "ExternalUserName"),
        password: body::text(body, "ExternalPassword"),
        token: body::text(body, "ExternalBearerToken"),
        headers,
    };
    if replace {
        let slot = data
            .webhooks
            .iter_mut()
            .find(|w| w.id == id)
            .ok_or_else(|| ApiError::bad(format!("Webhook {id} not found")))?;
        *slot = hook.clone();
    } else {
        data.webhooks.push(hook.clone());
    }
    Ok(json!({"Webhooks": [render::webhook(&hook)]}))
}
