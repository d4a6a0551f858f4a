//! DEAR-shaped JSON for the simulator's state (the reference's §3–§9 examples).

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::*;
use crate::rules;

/// A decimal as a JSON number (integers stay exact integers).
pub fn num(d: Decimal) -> Value {
    let text = d.normalize().to_string();
    text.parse::<serde_json::Number>()
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Bare ISO date-time, as DEAR writes most dates.
pub fn date(d: NaiveDateTime) -> Value {
    Value::String(d.format("%Y-%m-%dT%H:%M:%S").to_string())
}

/// Last-modified style: with a trimmed fraction and `Z`.
pub fn stamp(d: NaiveDateTime) -> Value {
    let mut s = d.format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
    while s.ends_with('0') {
        s.pop();
    }
    if s.ends_with('.') {
        s.pop();
    }
    s.push('Z');
    Value::String(s)
}

/// A DEAR date (`2017-11-30T00:00:00`), or null.
pub fn opt_date(d: Option<NaiveDateTime>) -> Value {
    d.map(date).unwrap_or(Value::Null)
}

fn address(a: &SimAddress, shipping: bool) -> Value {
    let [display1, display2] = a.display_lines.clone().unwrap_or_else(|| {
        [
            format!("{} {}", a.line1, a.line2).trim().to_string(),
            format!("{} {} {} {}", a.city, a.state, a.postcode, a.country)
                .trim()
                .to_string(),
        ]
    });
    let mut v = json!({
        "DisplayAddressLine1": display1,
        "DisplayAddressLine2": display2,
        "Line1": a.line1, "Line2": a.line2, "City": a.city, "State": a.state,
        "Postcode": a.postcode, "Country": a.country,
    });
    if shipping {
        v["Company"] = json!(a.company);
        v["Contact"] = json!(a.contact);
        v["ShipToOther"] = json!(false);
    }
    v
}

fn line(l: &SimLine, data: &Dataset, account: Option<&str>) -> Value {
    let avg = data
        .products
        .get(&l.product_id)
        .map(|p| p.average_cost)
        .unwrap_or_default();
    let mut v = json!({
        "ProductID": l.product_id, "SKU": l.sku, "Name": l.name,
        "Quantity": num(l.quantity), "Price": num(l.price), "Discount": num(l.discount),
        "Tax": num(l.tax), "AverageCost": num(avg), "TaxRule": "Tax on Sales", "Comment": "",
        "DropShip": false, "BackorderQuantity": num(l.backorder_quantity),
        "Backorder": l.backorder_quantity > Decimal::ZERO, "Total": num(l.total()),
    });
    if let Some(a) = account {
        v["Account"] = json!(a);
    }
    v
}

fn charge(c: &SimCharge, with_account: bool) -> Value {
    let mut v = json!({
        "Description": c.description, "Price": num(c.price), "Quantity": num(c.quantity),
        "Discount": 0, "Tax": 0, "Total": num(c.price * c.quantity), "TaxRule": "Tax on Sales",
        "Comment": "",
    });
    if with_account {
        v["Account"] = json!(c.account);
    }
    v
}

fn location_name(data: &Dataset, id: Uuid, bin: Option<&str>) -> String {
    let name = data
        .location(id)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    match bin {
        Some(b) => format!("{name}: {b}"),
        None => name,
    }
}

fn fulfil_line(l: &SimFulfilLine, data: &Dataset, pack: bool) -> Value {
    let p = data.products.get(&l.product_id);
    let mut v = json!({
        "ProductID": l.product_id,
        "SKU": p.map(|p| p.sku.clone()).unwrap_or_default(),
        "Name": p.map(|p| p.name.clone()).unwrap_or_default(),
        "Location": location_name(data, l.location_id, l.bin.as_deref()),
        "LocationID": l.location_id,
        "Quantity": num(l.quantity),
        "BatchSN": l.batch,
        "ExpiryDate": opt_date(l.expiry),
        "NonInventory": false,
    });
    if pack {
        v["Box"] = json!(l.r#box);
        v["WarrantyRegistrationNumber"] = Value::Null;
    }
    v
}

/// `{TaskID, Status, Lines}` of a pick or pack.
pub fn pick_pack(f: &SimFulfilment, data: &Dataset, pack: bool) -> Value {
    let (status, lines) = if pack {
        (f.pack_status, &f.pack)
    } else {
        (f.pick_status, &f.pick)
    };
    json!({
        "TaskID": f.task_id,
        "Status": status.as_str(),
        "Lines": lines.iter().map(|l| fulfil_line(l, data, pack)).collect::<Vec<_>>(),
    })
}

/// The ship stage.
pub fn ship(f: &SimFulfilment, sale: &SimSale) -> Value {
    json!({
        "TaskID": f.task_id,
        "Status": f.ship_status.as_str(),
        "RequireBy": opt_date(f.require_by),
        "ShippingAddress": address(&sale.shipping, true),
        "ShippingNotes": f.shipping_notes,
        "Lines": f.ship.iter().map(|s| json!({
            "ID": s.id, "ShipmentDate": date(s.date), "Carrier": s.carrier, "Boxes": s.r#box,
            "TrackingNumber": s.tracking_number, "TrackingURL": s.tracking_url,
            "IsShipped": s.is_shipped,
        })).collect::<Vec<_>>(),
    })
}

/// One fulfilment.
pub fn fulfilment(f: &SimFulfilment, sale: &SimSale, data: &Dataset) -> Value {
    let status = if f.pick_status == Stage::Voided {
        "VOIDED"
    } else if f.ship_status == Stage::Authorised {
        "FULFILLED"
    } else if f.ship_status == Stage::PartiallyAuthorised {
        "PARTIALLY FULFILLED"
    } else {
        "NOT FULFILLED"
    };
    let linked = sale
        .invoices
        .get((f.number as usize).saturating_sub(1))
        .map(|i| json!(i.number))
        .unwrap_or(Value::Null);
    json!({
        "TaskID": f.task_id, "FulfillmentNumber": f.number, "LinkedInvoiceNumber": linked,
        "FulFilmentStatus": status,
        "Pick": pick_pack(f, data, false), "Pack": pick_pack(f, data, true), "Ship": ship(f, sale),
    })
}

/// `{SaleID, Fulfilments}`.
pub fn fulfilments(sale: &SimSale, data: &Dataset, hide_untouched: bool) -> Value {
    json!({
        "SaleID": sale.id,
        "Fulfilments": listed(sale, hide_untouched).map(|f| fulfilment(f, sale, data)).collect::<Vec<_>>(),
    })
}

/// The fulfilments DEAR lists: all, or (one reading) none of a simple sale's before any work.
fn listed(sale: &SimSale, hide_untouched: bool) -> impl Iterator<Item = &SimFulfilment> {
    sale.fulfilments.iter().filter(move |f| {
        let untouched = f.pick_status == Stage::NotAvailable
            && f.pick.is_empty()
            && f.pack_status == Stage::NotAvailable
            && f.ship_status == Stage::NotAvailable;
        !(hide_untouched && !sale.advanced && f.task_id == sale.id && untouched)
    })
}

fn sale_type(sale: &SimSale) -> &'static str {
    if sale.advanced {
        "Advanced Sale"
    } else {
        "Simple Sale"
    }
}

/// One `saleList` row.
pub fn sale_list_row(sale: &SimSale, shipped: rules::ShippedSaleStatus) -> Value {
    let c = rules::combined_statuses(sale);
    let inv = sale.invoices.iter().find(|i| i.status.is_authorised());
    json!({
        "SaleID": sale.id, "OrderNumber": sale.order_number, "Status": rules::sale_status(sale, shipped),
        "OrderDate": date(sale.order_date),
        "InvoiceDate": inv.map(|i| date(i.date)).unwrap_or(Value::Null),
        "Customer": sale.customer, "CustomerID": sale.customer_id,
        "InvoiceNumber": inv.map(|i| json!(i.number)).unwrap_or(Value::Null),
        "CustomerReference": sale.customer_reference,
        "InvoiceAmount": num(rules::invoice_total(sale)),
        "PaidAmount": num(sale.invoices.iter().map(|i| i.paid).sum()),
        "InvoiceDueDate": Value::Null, "ShipBy": opt_date(sale.ship_by),
        "BaseCurrency": sale.currency, "CustomerCurrency": sale.currency,
        "CreditNoteNumber": Value::Null, "Updated": stamp(sale.updated),
        "QuoteStatus": sale.quote_status.as_str(), "OrderStatus": sale.order_status.as_str(),
        "CombinedPickingStatus": c.picking, "CombinedPaymentStatus": c.payment,
        "CombinedTrackingNumbers": c.tracking, "CombinedPackingStatus": c.packing,
        "CombinedShippingStatus": c.shipping, "CombinedInvoiceStatus": c.invoice,
        "CreditNoteStatus": sale.credit_note_status.as_str(), "FulFilmentStatus": c.fulfilment,
        "Type": sale_type(sale), "SourceChannel": sale.source_channel, "ExternalID": sale.external_id,
        "OrderLocationID": sale.location_id,
    })
}

/// The whole `GET sale` document.
pub fn sale(
    sale: &SimSale,
    data: &Dataset,
    shipped: rules::ShippedSaleStatus,
    hide_untouched: bool,
) -> Value {
    let c = rules::combined_statuses(sale);
    let order_total: Decimal = sale.lines.iter().map(SimLine::total).sum::<Decimal>()
        + sale
            .charges
            .iter()
            .map(|c| c.price * c.quantity)
            .sum::<Decimal>();
    let tax: Decimal = sale.lines.iter().map(|l| l.tax).sum();
    let lines: Vec<Value> = sale.lines.iter().map(|l| line(l, data, None)).collect();
    let charges: Vec<Value> = sale.charges.iter().map(|c| charge(c, false)).collect();
    let mut attrs = serde_json::Map::new();
    for (i, a) in sale.attributes.iter().enumerate() {
        attrs.insert(format!("AdditionalAttribute{}", i + 1), json!(a));
    }
    json!({
        "ID": sale.id, "Customer": sale.customer, "CustomerID": sale.customer_id,
        "Contact": sale.contact, "Phone": sale.phone, "Email": sale.email,
        "DefaultAccount": "200", "SkipQuote": sale.skip_quote,
        "BillingAddress": address(&sale.billing, false),
        "ShippingAddress": address(&sale.shipping, true),
        "ShippingNotes": "", "BaseCurrency": sale.currency, "CustomerCurrency": sale.currency,
        "TaxRule": "Tax on Sales", "TaxCalculation": "Exclusive", "Terms": "30 days",
        "PriceTier": sale.price_tier, "ShipBy": opt_date(sale.ship_by),
        "Location": location_name(data, sale.location_id, None),
        "SaleOrderDate": date(sale.order_date), "LastModifiedOn": stamp(sale.updated),
        "Note": sale.note, "CustomerReference": sale.customer_reference, "COGSAmount": 0,
        "Status": rules::sale_status(sale, shipped),
        "CombinedPickingStatus": c.picking, "CombinedPackingStatus": c.packing,
        "CombinedShippingStatus": c.shipping, "FulFilmentStatus": c.fulfilment,
        "CombinedInvoiceStatus": c.invoice, "CombinedPaymentStatus": c.payment,
        "CombinedTrackingNumbers": c.tracking, "Carrier": sale.carrier, "CurrencyRate": 1,
        "SalesRepresentative": sale.sales_representative, "ServiceOnly": false,
        "DefaultAccount": sale.default_account, "Type": sale_type(sale),
        "SourceChannel": sale.source_channel, "ExternalID": sale.external_id,
        "Quote": {
            "Memo": sale.quote_memo, "Status": sale.quote_status.as_str(),
            "Prepayments": [], "Lines": lines.clone(), "AdditionalCharges": charges.clone(),
            "TotalBeforeTax": num(order_total), "Tax": num(tax), "Total": num(order_total + tax),
        },
        "Order": {
            "SaleOrderNumber": sale.order_number, "Memo": sale.order_memo,
            "Status": sale.order_status.as_str(), "Lines": lines, "AdditionalCharges": charges,
            "TotalBeforeTax": num(order_total), "Tax": num(tax), "Total": num(order_total + tax),
        },
        "Fulfilments": listed(sale, hide_untouched).map(|f| fulfilment(f, sale, data)).collect::<Vec<_>>(),
        "Invoices": sale.invoices.iter().map(|i| {
            let total: Decimal = i.lines.iter().map(SimLine::total).sum::<Decimal>()
                + i.charges.iter().map(|c| c.price * c.quantity).sum::<Decimal>();
            json!({
                "TaskID": i.task_id, "InvoiceNumber": i.number, "Memo": i.memo,
                "Status": i.status.as_str(), "InvoiceDate": date(i.date), "InvoiceDueDate": date(i.date),
                "CurrencyConversionRate": 1,
                "Lines": i.lines.iter().map(|l| line(l, data, Some("200"))).collect::<Vec<_>>(),
                "AdditionalCharges": i.charges.iter().map(|c| charge(c, true)).collect::<Vec<_>>(),
                "Payments": [], "TotalBeforeTax": num(total), "Tax": 0, "Total": num(total),
                "Paid": num(i.paid),
            })
        }).collect::<Vec<_>>(),
        "CreditNotes": if sale.credit_note_status == Stage::NotAvailable { json!([]) } else {
            json!([{ "TaskID": Uuid::nil(), "CreditNoteNumber": "CR-00001", "Memo": sale.credit_note_memo,
                     "Status": sale.credit_note_status.as_str(), "Lines": [] }])
        },
        "ManualJournals": {"Status": "NOT AVAILABLE", "Lines": []},
        "AdditionalAttributes": attrs,
        "Attachments": [],
    })
}

/// A product.
pub fn product(p: &SimProduct, tier_names: &[String]) -> Value {
    let mut v = json!({
        "ID": p.id, "SKU": p.sku, "Name": p.name, "Category": p.category, "Brand": "",
        "Type": p.product_type, "CostingMethod": p.costing_method, "DefaultLocation": "",
        "UOM": "Item", "Barcode": p.barcode, "Status": "Active", "AverageCost": num(p.average_cost),
        "LastModifiedOn": stamp(p.last_modified),
    });
    let mut tiers = serde_json::Map::new();
    for (i, price) in p.price_tiers.iter().enumerate() {
        v[format!("PriceTier{}", i + 1)] = num(*price);
        let name = tier_names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("Tier {}", i + 1));
        tiers.insert(name, num(*price));
    }
    v["PriceTiers"] = Value::Object(tiers);
    v
}

/// A location.
pub fn location(l: &SimLocation) -> Value {
    json!({
        "ID": l.id, "Name": l.name, "IsDefault": l.is_default, "IsDeprecated": false,
        "Bins": if l.bins.is_empty() { Value::Null } else {
            json!(l.bins.iter().map(|(id, name)| json!({"ID": id, "Name": name, "IsDeprecated": false, "IsStaging": false})).collect::<Vec<_>>())
        },
        "FixedAssetsLocation": false, "ParentID": Value::Null, "ParentName": Value::Null,
        "AddressLine1": "", "AddressLine2": "", "AddressCitySuburb": "", "AddressStateProvince": "",
        "AddressZipPostCode": "", "AddressCountry": "", "PickZones": "", "IsShopfloor": false,
        "IsCoMan": false, "IsStaging": false,
    })
}

/// A stock adjustment.
pub fn adjustment(a: &SimAdjustment, data: &Dataset) -> Value {
    let mut existing = Vec::new();
    let mut new = Vec::new();
    let mut transactions = Vec::new();
    for l in &a.lines {
        let p = data.products.get(&l.key.product_id);
        let sku = p.map(|p| p.sku.clone()).unwrap_or_default();
        let name = p.map(|p| p.name.clone()).unwrap_or_default();
        let loc = location_name(data, l.key.location_id, l.key.bin.as_deref());
        if l.on_hand_before > Decimal::ZERO {
            existing.push(json!({
                "ProductID": l.key.product_id, "SKU": sku, "ProductName": name,
                "QuantityOnHand": num(l.on_hand_before), "Available": num(l.available_before),
                "Adjustment": num(l.quantity), "LocationID": l.key.location_id, "Location": loc,
                "BatchSN": l.key.batch, "ExpiryDate": opt_date(l.expiry), "Comments": l.comments,
            }));
        } else {
            new.push(json!({
                "ProductID": l.key.product_id, "SKU": sku, "ProductName": name,
                "Quantity": num(l.quantity), "UnitCost": l.unit_cost.map(num).unwrap_or(Value::Null),
                "LocationID": l.key.location_id, "Location": loc, "BatchSN": l.key.batch,
                "ExpiryDate": opt_date(l.expiry), "ReceivedDate": opt_date(l.received),
                "Comments": l.comments,
            }));
        }
        if a.status == "COMPLETED"
            && let Some(applied) = l.applied_on_hand
        {
            let cost = l
                .unit_cost
                .or_else(|| p.map(|p| p.average_cost))
                .unwrap_or_default();
            let amount = (applied - l.on_hand_before) * cost;
            if !amount.is_zero() {
                transactions.push(json!({
                    "ID": Uuid::new_v5(&a.task_id, l.key.id().as_bytes()),
                    "Debit": "715: Inventory",
                    "Credit": format!("{}: Cost Of Goods Sold", if a.account.is_empty() { "403" } else { &a.account }),
                    "Amount": num(amount), "EffectiveDate": date(a.effective_date),
                }));
            }
        }
    }
    json!({
        "TaskID": a.task_id, "EffectiveDate": date(a.effective_date), "StocktakeNumber": a.number,
        "Status": a.status, "Account": a.account, "Reference": a.reference,
        "ExistingStockLines": existing, "NewStockLines": new, "Transactions": transactions,
    })
}

/// A webhook subscription.
pub fn webhook(w: &SimWebhook) -> Value {
    json!({
        "ID": w.id, "Type": w.event_type, "Name": webhook_name(&w.event_type), "IsActive": w.is_active,
        "ExternalURL": w.url, "ExternalAuthorizationType": w.auth_type,
        "ExternalUserName": w.user, "ExternalPassword": w.password,
        "ExternalBearerToken": w.token,
        "ExternalHeaders": w.headers.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    })
}

fn webhook_name(event: &str) -> String {
    match event.split_once('/') {
        Some((what, ev)) => format!("{what}: {ev}"),
        None => event.to_owned(),
    }
}
