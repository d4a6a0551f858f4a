//! Deterministic data sets: the same seed always gives the same products, stock and sales.

use chrono::{Duration, NaiveDateTime};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::*;
use crate::rules;

/// What to generate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedSpec {
    /// RNG seed.
    pub seed: u64,
    /// Number of products.
    pub products: usize,
    /// Number of sales.
    pub sales: usize,
    /// Latest order date; sales spread over the 60 days before it. Default: two hours ago (to the
    /// second; a sale's last change is up to an hour after its order date, and never in the
    /// future), so that a first Order Download run, which looks back 30 days, finds the recent half.
    pub base_time: NaiveDateTime,
}

impl Default for SeedSpec {
    fn default() -> Self {
        Self {
            seed: 1,
            products: 50,
            sales: 200,
            base_time: now_to_the_second() - Duration::hours(2),
        }
    }
}

fn now_to_the_second() -> NaiveDateTime {
    let now = chrono::Utc::now().naive_utc();
    now - Duration::nanoseconds(i64::from(now.and_utc().timestamp_subsec_nanos()))
}

/// The names of the seeded locations, default first.
pub const LOCATIONS: [&str; 3] = ["Main Warehouse", "East Warehouse", "West Warehouse"];

const CUSTOMERS: [(&str, &str, &str); 8] = [
    (
        "Hamilton Smith Pty",
        "Sheree Bond",
        "infodemo@hsmithdemo.co",
    ),
    (
        "Rock Star Transport",
        "Mick Jagged",
        "orders@rockstar.example",
    ),
    ("Blue Fin Retail", "Ana Ortega", "ana@bluefin.example"),
    ("Corner Bakery", "Tom O'Neil", "tom@cornerbakery.example"),
    ("Nordic Goods AB", "Sven Lund", "sven@nordic.example"),
    ("Acme Outdoor", "Wile Coyote", "wile@acme.example"),
    ("Green Leaf Co", "Priya Patel", "priya@greenleaf.example"),
    ("Harbour Books", "Li Wei", "li@harbour.example"),
];

const CITIES: [(&str, &str, &str, &str); 6] = [
    ("Melbourne", "VIC", "3000", "Australia"),
    ("Austin", "TX", "78701", "USA"),
    ("Toronto", "ON", "M5V 2T6", "Canada"),
    ("London", "", "SW1A 1AA", "United Kingdom"),
    ("Auckland", "", "1010", "New Zealand"),
    ("Seattle", "WA", "98101", "USA"),
];

const CATEGORIES: [&str; 4] = ["Bakery", "Apparel", "Outdoor", "Books"];
const CARRIERS: [&str; 4] = ["DEFAULT Carrier", "UPS", "FedEx", "USPS"];
const SHIP_METHODS: [&str; 4] = ["UPS Ground", "FedEx 2Day", "USPS Priority", "Will Call"];

struct Gen(fastrand::Rng);

impl Gen {
    fn id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.0.u128(..).to_le_bytes()).into_uuid()
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.0.usize(..items.len())]
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.0.u32(0..100) < percent
    }
    fn money(&mut self, lo: u32, hi: u32) -> Decimal {
        Decimal::new(i64::from(self.0.u32(lo * 100..=hi * 100)), 2)
    }
}

/// The stage a generated sale is taken to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Draft,
    Estimating,
    Estimated,
    Ordering,
    Ordered,
    Picking,
    Picked,
    Packing,
    Packed,
    Shipping,
    Shipped,
    Invoiced,
    Completed,
    Voided,
    AdvancedPartial,
    AdvancedPicked,
}

const TARGETS: [(Target, u32); 16] = [
    (Target::Draft, 2),
    (Target::Estimating, 3),
    (Target::Estimated, 3),
    (Target::Ordering, 4),
    (Target::Ordered, 22),
    (Target::Picking, 5),
    (Target::Picked, 16),
    (Target::Packing, 4),
    (Target::Packed, 10),
    (Target::Shipping, 4),
    (Target::Shipped, 4),
    (Target::Invoiced, 5),
    (Target::Completed, 5),
    (Target::Voided, 3),
    (Target::AdvancedPartial, 5),
    (Target::AdvancedPicked, 5),
];

/// Generates a data set.
pub fn generate(spec: &SeedSpec) -> Dataset {
    let mut g = Gen(fastrand::Rng::with_seed(spec.seed));
    let mut data = Dataset {
        company: format!("Simulated Company (seed {})", spec.seed),
        price_tier_names: (1..=10)
            .map(|i| match i {
                2 => "Wholesale".to_owned(),
                3 => "Cost Price".to_owned(),
                n => format!("Tier {n}"),
            })
            .collect(),
        ..Default::default()
    };
    for (i, name) in LOCATIONS.iter().enumerate() {
        let bins = if i == 0 {
            vec![(g.id(), "A-01".to_owned()), (g.id(), "A-02".to_owned())]
        } else {
            Vec::new()
        };
        data.locations.push(SimLocation {
            id: g.id(),
            name: (*name).to_owned(),
            is_default: i == 0,
            bins,
        });
    }
    for c in CARRIERS {
        let id = g.id();
        data.carriers.push((id, c.to_owned()));
    }
    let location_ids: Vec<Uuid> = data.locations.iter().map(|l| l.id).collect();
    for n in 1..=spec.products {
        let price = g.money(5, 200);
        let batch = g.chance(10);
        let never_stocked = g.chance(5);
        let cost = if never_stocked {
            Decimal::ZERO
        } else {
            (price * Decimal::new(5, 1)).round_dp(4)
        };
        let mut tiers = [Decimal::ZERO; 10];
        tiers[0] = price;
        tiers[1] = (price * Decimal::new(6, 1)).round_dp(2);
        tiers[2] = (price * Decimal::new(45, 2)).round_dp(2);
        let p = SimProduct {
            id: g.id(),
            sku: format!("SKU-{n:05}"),
            name: format!("{} item {n}", g.pick(&CATEGORIES)),
            category: g.pick(&CATEGORIES).to_owned(),
            costing_method: if batch {
                "FIFO - Batch".into()
            } else {
                "FIFO".into()
            },
            average_cost: cost,
            price_tiers: tiers,
            barcode: Some(format!("93{:011}", n)),
            product_type: "Stock".into(),
            last_modified: spec.base_time - Duration::days(90),
        };
        if !never_stocked {
            for (li, loc) in location_ids.iter().enumerate() {
                if g.chance([90, 50, 30][li]) {
                    let qty = Decimal::from(g.0.u32(0..=400));
                    if qty.is_zero() {
                        continue;
                    }
                    let key = StockKey {
                        product_id: p.id,
                        location_id: *loc,
                        bin: None,
                        batch: batch.then(|| format!("B-{n:05}-1")),
                    };
                    data.set_on_hand(key, qty);
                }
            }
        }
        data.products.insert(p.id, p);
    }
    let products: Vec<Uuid> = data.products.keys().copied().collect();
    let total_weight: u32 = TARGETS.iter().map(|(_, w)| w).sum();
    for n in 1..=spec.sales {
        let mut roll = g.0.u32(0..total_weight);
        let target = TARGETS
            .iter()
            .find(|(_, w)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map(|(t, _)| *t)
            .unwrap_or(Target::Ordered);
        let sale = new_sale(&mut g, &data, spec, n, &products, &location_ids);
        let id = sale.id;
        data.next_order_number = n as u32;
        data.sales.insert(id, sale);
        advance(&mut g, &mut data, id, target);
    }
    data
}

fn new_sale(
    g: &mut Gen,
    data: &Dataset,
    spec: &SeedSpec,
    n: usize,
    products: &[Uuid],
    locations: &[Uuid],
) -> SimSale {
    let (customer, contact, email) = g.pick(&CUSTOMERS);
    let (city, state, postcode, country) = g.pick(&CITIES);
    let order_date = spec.base_time - Duration::minutes(i64::from(g.0.u32(0..60 * 24 * 60)));
    let updated = order_date + Duration::milliseconds(i64::from(g.0.u32(1..3_600_000)));
    let mut address = SimAddress {
        line1: format!("{} Park Street", g.0.u32(1..500)),
        line2: if g.chance(30) {
            format!("Unit {}", g.0.u32(1..50))
        } else {
            String::new()
        },
        city: city.into(),
        state: state.into(),
        postcode: postcode.into(),
        country: country.into(),
        company: customer.into(),
        contact: contact.into(),
        display_lines: None,
    };
    // A few incomplete ship-to addresses, as real data has.
    if g.chance(2) {
        address.postcode.clear();
    }
    let location_id = match g.0.u32(0..10) {
        0..=6 => locations[0],
        7 | 8 => locations[1],
        _ => locations[2],
    };
    let mut lines: Vec<SimLine> = Vec::new();
    for _ in 0..g.0.usize(1..=4) {
        let pid = g.pick(products);
        if lines.iter().any(|l| l.product_id == pid) {
            continue;
        }
        let p = &data.products[&pid];
        lines.push(SimLine {
            product_id: pid,
            sku: p.sku.clone(),
            name: p.name.clone(),
            quantity: Decimal::from(g.0.u32(1..=5)),
            price: p.price_tiers[0],
            discount: if g.chance(20) {
                Decimal::from(10)
            } else {
                Decimal::ZERO
            },
            tax: Decimal::ZERO,
            backorder_quantity: Decimal::ZERO,
        });
    }
    let charges = if g.chance(60) {
        vec![SimCharge {
            description: g.pick(&SHIP_METHODS).into(),
            price: g.money(5, 25),
            quantity: Decimal::ONE,
            account: if g.chance(80) {
                "2095".into()
            } else {
                "2096".into()
            },
        }]
    } else {
        Vec::new()
    };
    let mut attributes: [String; 10] = Default::default();
    attributes[0] = g.pick(&SHIP_METHODS).to_owned();
    attributes[1] = if g.chance(50) {
        "wholesale".into()
    } else {
        "retail".into()
    };
    SimSale {
        id: g.id(),
        order_number: format!("SO-{n:05}"),
        customer: customer.into(),
        customer_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, customer.as_bytes()),
        contact: contact.into(),
        phone: format!("+1 555 01{:02}", g.0.u32(0..100)),
        email: email.into(),
        billing: SimAddress {
            company: String::new(),
            contact: String::new(),
            ..address.clone()
        },
        shipping: address,
        location_id,
        currency: "USD".into(),
        price_tier: "Tier 1".into(),
        customer_reference: format!("PO-{}", g.0.u32(10_000..99_999)),
        source_channel: if g.chance(40) {
            Some("Shopify".into())
        } else {
            None
        },
        sales_representative: "DEFAULT billing contact".into(),
        default_account: "200".into(),
        external_id: None,
        carrier: g.pick(&SHIP_METHODS).into(),
        ship_by: Some(order_date + Duration::days(3)),
        order_date,
        created: order_date,
        updated,
        skip_quote: g.chance(70),
        quote_status: Stage::NotAvailable,
        quote_memo: String::new(),
        order_status: Stage::NotAvailable,
        order_memo: if g.chance(30) {
            "Leave at the back door".into()
        } else {
            String::new()
        },
        lines,
        charges,
        advanced: false,
        fulfilments: Vec::new(),
        invoices: Vec::new(),
        credit_note_status: Stage::NotAvailable,
        credit_note_memo: String::new(),
        voided: false,
        attributes,
        note: String::new(),
    }
}

/// Pick lines for `lines` at the sale's location, batch-tracked products with their batch.
fn pick_lines(data: &Dataset, sale: &SimSale, lines: &[(Uuid, Decimal)]) -> Vec<SimFulfilLine> {
    lines
        .iter()
        .map(|(pid, q)| {
            let batch = data
                .stock
                .values()
                .find(|(k, _)| {
                    k.product_id == *pid && k.location_id == sale.location_id && k.batch.is_some()
                })
                .and_then(|(k, _)| k.batch.clone())
                .or_else(|| {
                    data.products[pid]
                        .batch_tracked()
                        .then(|| format!("B-{}-0", data.products[pid].sku))
                });
            SimFulfilLine {
                product_id: *pid,
                quantity: *q,
                location_id: sale.location_id,
                bin: None,
                batch,
                expiry: None,
                r#box: None,
            }
        })
        .collect()
}

fn advance(g: &mut Gen, data: &mut Dataset, id: Uuid, target: Target) {
    use Target::*;
    let now = data.sales[&id].updated;
    {
        let s = data.sales.get_mut(&id).expect("just inserted");
        match target {
            Draft => return,
            Estimating => {
                s.skip_quote = false;
                s.quote_status = Stage::Draft;
                return;
            }
            Estimated => {
                s.skip_quote = false;
                s.quote_status = Stage::Authorised;
                return;
            }
            Ordering => {
                s.order_status = Stage::Draft;
                return;
            }
            Voided => {
                s.voided = true;
                s.order_status = Stage::Voided;
                return;
            }
            _ => {}
        }
    }
    if rules::authorise_order(data, id, now).is_err() {
        return;
    }
    if target == Ordered {
        return;
    }
    let sale = data.sales[&id].clone();
    let all: Vec<(Uuid, Decimal)> = sale
        .lines
        .iter()
        .map(|l| (l.product_id, l.quantity))
        .collect();
    let (first, rest): (Vec<_>, Vec<_>) =
        if matches!(target, AdvancedPartial | AdvancedPicked) && all.len() > 1 {
            (all[..1].to_vec(), all[1..].to_vec())
        } else if matches!(target, AdvancedPartial | AdvancedPicked) {
            let (p, q) = all[0];
            if q > Decimal::ONE {
                (vec![(p, Decimal::ONE)], vec![(p, q - Decimal::ONE)])
            } else {
                (all.clone(), Vec::new())
            }
        } else {
            (all.clone(), Vec::new())
        };
    let picks = pick_lines(data, &sale, &first);
    let carrier = g.pick(&CARRIERS[1..]).to_owned();
    let tracking = format!("1Z{:016}", g.0.u64(..10_000_000_000_000_000));
    let s = data.sales.get_mut(&id).expect("present");
    let f = &mut s.fulfilments[0];
    f.pick = picks.clone();
    f.pick_status = if target == Picking {
        Stage::Draft
    } else {
        Stage::Authorised
    };
    if matches!(target, Picking | Picked) {
        return;
    }
    f.pack = picks
        .iter()
        .enumerate()
        .map(|(i, l)| SimFulfilLine {
            r#box: Some(format!("Box {}", 1 + i % 2)),
            ..l.clone()
        })
        .collect();
    f.pack_status = if target == Packing {
        Stage::Draft
    } else {
        Stage::Authorised
    };
    if matches!(target, Packing | Packed) {
        return;
    }
    let mut boxes: Vec<String> = f.pack.iter().filter_map(|l| l.r#box.clone()).collect();
    boxes.dedup();
    f.ship = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| SimShipLine {
            id: Uuid::new_v5(&f.task_id, b.as_bytes()),
            date: now,
            carrier: carrier.clone(),
            r#box: b.clone(),
            tracking_number: format!("{tracking}{i}"),
            tracking_url: String::new(),
            is_shipped: true,
        })
        .collect();
    f.ship_status = if target == Shipping {
        Stage::Draft
    } else {
        Stage::Authorised
    };
    let task = f.task_id;
    rules::after_ship(data, id, task);
    if matches!(target, AdvancedPartial | AdvancedPicked) && !rest.is_empty() {
        let s = data.sales.get_mut(&id).expect("present");
        s.advanced = true;
        let mut f2 = SimFulfilment::new(Uuid::new_v5(&s.id, b"fulfilment-2"), 2);
        if target == AdvancedPicked {
            let sale = s.clone();
            f2.pick = pick_lines(data, &sale, &rest);
            f2.pick_status = Stage::Authorised;
        }
        data.sales
            .get_mut(&id)
            .expect("present")
            .fulfilments
            .push(f2);
    }
    if matches!(target, Invoiced | Completed) {
        data.next_invoice_number += 1;
        let number = format!("INV-{:05}", data.next_invoice_number);
        let s = data.sales.get_mut(&id).expect("present");
        let mut inv = SimInvoice {
            task_id: s.id,
            number,
            status: Stage::Authorised,
            memo: String::new(),
            date: now,
            lines: s.lines.clone(),
            charges: s.charges.clone(),
            paid: Decimal::ZERO,
        };
        if target == Completed {
            inv.paid = inv.lines.iter().map(SimLine::total).sum::<Decimal>()
                + inv
                    .charges
                    .iter()
                    .map(|c| c.price * c.quantity)
                    .sum::<Decimal>();
            inv.status = Stage::Paid;
        }
        s.invoices.push(inv);
    }
}
