//! DEAR's business rules as the simulator plays them: derived sale statuses, allocation, the
//! fulfilment state machine and stock movements. Every rejection is an [`ApiError`] (a 400 with
//! DEAR's Error Model).

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::*;

/// A rejection DEAR would answer with its Error Model.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status (and ErrorCode).
    pub status: u16,
    /// Exception text.
    pub message: String,
}

impl ApiError {
    /// A 400 "bad request" with DEAR-like text.
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

/// Quantity per product.
pub type Qty = BTreeMap<Uuid, Decimal>;

fn add(map: &mut Qty, product: Uuid, q: Decimal) {
    *map.entry(product).or_default() += q;
}

/// Ordered quantity per product.
pub fn ordered(sale: &SimSale) -> Qty {
    let mut m = Qty::new();
    for l in &sale.lines {
        add(&mut m, l.product_id, l.quantity);
    }
    m
}

/// Quantity in authorised picks, per product (live fulfilments).
pub fn picked(sale: &SimSale) -> Qty {
    let mut m = Qty::new();
    for f in sale
        .fulfilments
        .iter()
        .filter(|f| f.is_live() && f.pick_status.is_authorised())
    {
        for l in &f.pick {
            add(&mut m, l.product_id, l.quantity);
        }
    }
    m
}

/// Quantity on any non-voided pick (draft or authorised): what is no longer free to pick.
pub fn committed_to_picks(sale: &SimSale, except_task: Option<Uuid>) -> Qty {
    let mut m = Qty::new();
    for f in sale
        .fulfilments
        .iter()
        .filter(|f| f.is_live() && Some(f.task_id) != except_task)
    {
        for l in &f.pick {
            add(&mut m, l.product_id, l.quantity);
        }
    }
    m
}

/// Quantity in authorised packs.
pub fn packed(sale: &SimSale) -> Qty {
    let mut m = Qty::new();
    for f in sale
        .fulfilments
        .iter()
        .filter(|f| f.is_live() && f.pack_status.is_authorised())
    {
        for l in &f.pack {
            add(&mut m, l.product_id, l.quantity);
        }
    }
    m
}

/// Quantity in shipped boxes (authorised or partially authorised ships).
pub fn shipped(sale: &SimSale) -> Qty {
    let mut m = Qty::new();
    for f in sale.fulfilments.iter().filter(|f| f.is_live()) {
        if !matches!(
            f.ship_status,
            Stage::Authorised | Stage::PartiallyAuthorised
        ) {
            continue;
        }
        for l in &f.pack {
            if let Some(b) = &l.r#box
                && f.ship.iter().any(|s| s.r#box.eq_ignore_ascii_case(b))
            {
                add(&mut m, l.product_id, l.quantity);
            }
        }
    }
    m
}

fn covers(done: &Qty, want: &Qty) -> bool {
    want.iter()
        .all(|(p, q)| done.get(p).copied().unwrap_or_default() >= *q)
}

fn any(q: &Qty) -> bool {
    q.values().any(|v| *v > Decimal::ZERO)
}

/// `Combined{Picking,Packing,Shipping}Status`: (full, partial, in-progress, none) words.
fn combined(sale: &SimSale, done: &Qty, drafting: bool, words: [&'static str; 4]) -> &'static str {
    if sale.voided {
        return "VOIDED";
    }
    if !sale.order_status.is_authorised() {
        return "NOT AVAILABLE";
    }
    let want = ordered(sale);
    if any(&want) && covers(done, &want) {
        words[0]
    } else if any(done) {
        words[1]
    } else if drafting {
        words[2]
    } else {
        words[3]
    }
}

/// The sale's derived combined statuses.
pub struct Combined {
    /// CombinedPickingStatus.
    pub picking: &'static str,
    /// CombinedPackingStatus.
    pub packing: &'static str,
    /// CombinedShippingStatus.
    pub shipping: &'static str,
    /// CombinedInvoiceStatus.
    pub invoice: &'static str,
    /// CombinedPaymentStatus.
    pub payment: &'static str,
    /// FulFilmentStatus.
    pub fulfilment: &'static str,
    /// CombinedTrackingNumbers.
    pub tracking: String,
}

/// Derives the `Combined*` fields.
pub fn combined_statuses(sale: &SimSale) -> Combined {
    let live = || sale.fulfilments.iter().filter(|f| f.is_live());
    let picking = combined(
        sale,
        &picked(sale),
        live().any(|f| f.pick_status == Stage::Draft),
        ["PICKED", "PARTIALLY PICKED", "PICKING", "NOT PICKED"],
    );
    let packing = combined(
        sale,
        &packed(sale),
        live().any(|f| f.pack_status == Stage::Draft),
        ["PACKED", "PARTIALLY PACKED", "PACKING", "NOT PACKED"],
    );
    let shipped_q = shipped(sale);
    let shipping = combined(
        sale,
        &shipped_q,
        live().any(|f| f.ship_status == Stage::Draft),
        ["SHIPPED", "PARTIALLY SHIPPED", "SHIPPING", "NOT SHIPPED"],
    );
    let fulfilment = if sale.voided {
        "VOIDED"
    } else if !sale.order_status.is_authorised() {
        "NOT AVAILABLE"
    } else if covers(&shipped_q, &ordered(sale)) && any(&ordered(sale)) {
        "FULFILLED"
    } else if any(&shipped_q) {
        "PARTIALLY FULFILLED"
    } else {
        "NOT FULFILLED"
    };
    let authorised_invoices = sale
        .invoices
        .iter()
        .filter(|i| i.status.is_authorised())
        .count();
    let invoice = if sale.voided {
        "VOIDED"
    } else if !sale.order_status.is_authorised() {
        "NOT AVAILABLE"
    } else if authorised_invoices == 0 {
        "NOT INVOICED"
    } else if sale.credit_note_status.is_authorised() {
        "INVOICED / CREDITED"
    } else {
        "INVOICED"
    };
    let total = invoice_total(sale);
    let paid: Decimal = sale.invoices.iter().map(|i| i.paid).sum();
    let payment = if sale.voided {
        "VOIDED"
    } else if paid.is_zero() {
        "UNPAID"
    } else if paid < total {
        "PARTIALLY PAID"
    } else {
        "PAID"
    };
    let tracking = live()
        .flat_map(|f| f.ship.iter())
        .filter(|s| !s.tracking_number.is_empty())
        .map(|s| s.tracking_number.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Combined {
        picking,
        packing,
        shipping,
        invoice,
        payment,
        fulfilment,
        tracking,
    }
}

/// Sum of authorised invoices (lines and charges, ex tax).
pub fn invoice_total(sale: &SimSale) -> Decimal {
    sale.invoices
        .iter()
        .filter(|i| i.status.is_authorised())
        .map(|i| {
            i.lines.iter().map(SimLine::total).sum::<Decimal>()
                + i.charges
                    .iter()
                    .map(|c| c.price * c.quantity)
                    .sum::<Decimal>()
        })
        .sum()
}

/// The sale `Status` per the reference's §2.1: the furthest stage reached. `when_shipped` is how
/// a shipped simple sale without an authorised invoice shows (the list has no status for it).
pub fn sale_status(sale: &SimSale, when_shipped: ShippedSaleStatus) -> &'static str {
    if sale.voided {
        return "VOIDED";
    }
    let simple = !sale.advanced;
    let first = sale.fulfilments.iter().find(|f| f.is_live());
    let ship_done = first.is_some_and(|f| f.ship_status == Stage::Authorised);
    let authorised_invoice = sale.invoices.iter().any(|i| i.status.is_authorised());
    if authorised_invoice {
        let total = invoice_total(sale);
        let paid: Decimal = sale.invoices.iter().map(|i| i.paid).sum();
        let fully_shipped = covers(&shipped(sale), &ordered(sale));
        if paid >= total && fully_shipped {
            return "COMPLETED";
        }
        if simple {
            return if sale.credit_note_status.is_authorised() {
                "CREDITED"
            } else {
                "INVOICED"
            };
        }
    }
    match sale.order_status {
        Stage::NotAvailable => {
            return match sale.quote_status {
                Stage::Draft => "ESTIMATING",
                Stage::Authorised => "ESTIMATED",
                _ if sale.skip_quote => "ESTIMATED",
                _ => "DRAFT",
            };
        }
        Stage::Draft => return "ORDERING",
        _ => {}
    }
    if simple && sale.invoices.iter().any(|i| i.status == Stage::Draft) && ship_done {
        return "INVOICING";
    }
    if simple && let Some(f) = first {
        if f.ship_status == Stage::Draft {
            return "SHIPPING";
        }
        // PACKED means ShipStatus NOT AVAILABLE; once shipped, the list has no status of its own.
        if f.ship_status.is_authorised() {
            return when_shipped.as_str();
        }
        if f.pack_status.is_authorised() {
            return "PACKED";
        }
        if f.pack_status == Stage::Draft {
            return "PACKING";
        }
        if f.pick_status.is_authorised() {
            return "PICKED";
        }
        if f.pick_status == Stage::Draft {
            return "PICKING";
        }
    }
    if sale
        .lines
        .iter()
        .any(|l| l.backorder_quantity > Decimal::ZERO)
    {
        "BACKORDERED"
    } else {
        "ORDERED"
    }
}

/// Allocated quantity per (product, location): what authorised, unvoided sales still have to ship.
pub fn allocations(data: &Dataset) -> HashMap<(Uuid, Uuid), Decimal> {
    let mut out: HashMap<(Uuid, Uuid), Decimal> = HashMap::new();
    for sale in data.sales.values() {
        if sale.voided || !sale.order_status.is_authorised() {
            continue;
        }
        let shipped = shipped(sale);
        for (product, want) in ordered(sale) {
            let backordered: Decimal = sale
                .lines
                .iter()
                .filter(|l| l.product_id == product)
                .map(|l| l.backorder_quantity)
                .sum();
            let open = want - backordered - shipped.get(&product).copied().unwrap_or_default();
            if open > Decimal::ZERO {
                *out.entry((product, sale.location_id)).or_default() += open;
            }
        }
    }
    out
}

/// Authorises a sale's order: allocates stock (or marks lines backordered).
pub fn authorise_order(
    data: &mut Dataset,
    sale_id: Uuid,
    now: NaiveDateTime,
) -> Result<(), ApiError> {
    let alloc = allocations(data);
    let sale = data
        .sales
        .get(&sale_id)
        .ok_or_else(|| ApiError::bad("Sale not found"))?;
    if sale.order_status.is_authorised() {
        return Err(ApiError::bad("Order status is AUTHORISED already"));
    }
    let location = sale.location_id;
    let mut free: HashMap<Uuid, Decimal> = HashMap::new();
    for l in &sale.lines {
        free.entry(l.product_id).or_insert_with(|| {
            data.on_hand_at(l.product_id, location)
                - alloc
                    .get(&(l.product_id, location))
                    .copied()
                    .unwrap_or_default()
        });
    }
    let sale = data.sales.get_mut(&sale_id).expect("checked above");
    for l in &mut sale.lines {
        let f = free.entry(l.product_id).or_default();
        let take = (*f).max(Decimal::ZERO).min(l.quantity);
        *f -= take;
        l.backorder_quantity = l.quantity - take;
    }
    sale.order_status = Stage::Authorised;
    if sale.quote_status != Stage::Authorised && !sale.skip_quote {
        sale.quote_status = Stage::Authorised;
    }
    if sale.fulfilments.is_empty() {
        sale.fulfilments.push(SimFulfilment::new(sale.id, 1));
    }
    sale.updated = now;
    Ok(())
}

/// After a ship changes: consume stock of newly shipped boxes, and mark the order FULFILLED when
/// every ordered unit has shipped.
pub fn after_ship(data: &mut Dataset, sale_id: Uuid, task_id: Uuid) {
    let Some(sale) = data.sales.get_mut(&sale_id) else {
        return;
    };
    let Some(f) = sale.fulfilments.iter_mut().find(|f| f.task_id == task_id) else {
        return;
    };
    let mut consume = Vec::new();
    if matches!(
        f.ship_status,
        Stage::Authorised | Stage::PartiallyAuthorised
    ) {
        for s in &f.ship {
            if f.consumed_boxes
                .iter()
                .any(|b| b.eq_ignore_ascii_case(&s.r#box))
            {
                continue;
            }
            f.consumed_boxes.push(s.r#box.clone());
            for l in f.pack.iter().filter(|l| {
                l.r#box
                    .as_deref()
                    .is_some_and(|b| b.eq_ignore_ascii_case(&s.r#box))
            }) {
                consume.push((
                    StockKey {
                        product_id: l.product_id,
                        location_id: l.location_id,
                        bin: l.bin.clone(),
                        batch: l.batch.clone(),
                    },
                    l.quantity,
                ));
            }
        }
    }
    let done = covers(&shipped(sale), &ordered(sale));
    if done && sale.order_status == Stage::Authorised {
        sale.order_status = Stage::Fulfilled;
    }
    for (key, q) in consume {
        let now = data.on_hand(&key);
        data.set_on_hand(key, now - q);
    }
}

/// How a shipped simple sale with no authorised invoice shows its `Status`: DEAR's status list
/// (`../shared/dear-api.md` §2.1) has no status for it, so both readings are playable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShippedSaleStatus {
    /// It moves on to INVOICING (default): the list's PACKED requires ShipStatus NOT AVAILABLE,
    /// and INVOICING is the next stage, which [CR1]'s copy conditions on ShipStatus AUTHORISED.
    #[default]
    Invoicing,
    /// It stays PACKED until invoiced (an inference some integrations make).
    Packed,
}

impl ShippedSaleStatus {
    /// The `Status` text it shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ShippedSaleStatus::Invoicing => "INVOICING",
            ShippedSaleStatus::Packed => "PACKED",
        }
    }
}
