//! The `[order_download]` settings that shape an order, end to end: `take_order_lines_from`,
//! `notes_field`, `split_names` and `ship_method_selection` (with `shipping_accounts` and
//! `ship_code_attribute`). The real Order Download job runs against the DEAR simulator on
//! 127.0.0.1 with state in memory, and every delivered canonical order is checked against the sale
//! as the simulator holds it. The specification is `docs/canonical-order.md`: where it and the code
//! disagree, these tests follow the document.
//!
//! Each test adds its own sales to a small seeded account (two order lines of a FIFO product and a
//! batch-tracked one, at prices, discounts and taxes chosen so every derived amount is exact), takes
//! them through DEAR's pick and pack endpoints where DEAR can, and writes what the simulator has no
//! endpoint for (invoices, credit notes, memos, names) into its data as a DEAR user would in the UI.
//! Orders are fetched with `download_one` (no date window involved) or a backfill run from 2000.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dear_client::{DearClient, FulfilmentLine, PickPack, Sale, StageStatus};
use dear_sim::model::{
    Dataset, SimAddress, SimCharge, SimInvoice, SimLine, SimProduct, SimSale, Stage,
};
use dear_sim::seed::SeedSpec;
use dear_sim::{SaleEdit, SimConfig, SimServer};
use dearsync_core::state::{LedgerQuery, RecordState};
use dearsync_core::{Job, JobContext, MemoryStore, OffsetClock, TenantId, TenantSettings};
use dearsync_order_download::canonical::OrderLine;
use dearsync_order_download::{CanonicalOrder, OrderDownload, Outcome, RunOptions};
use rust_decimal::Decimal;
use uuid::Uuid;

const ACCOUNT: &str = dear_sim::DEFAULT_ACCOUNT_ID;
const MAIN: &str = "Main Warehouse";

fn dec(text: &str) -> Decimal {
    text.parse().expect("a decimal")
}

fn client(server: &SimServer) -> Arc<DearClient> {
    common::fast_client_with(server, Duration::from_millis(2_000), 4, 6)
}

use common::CollectingSink;

/// The simulated DEAR account, a client for it, and the two products the test sales order.
struct Dear {
    server: SimServer,
    client: Arc<DearClient>,
    /// A FIFO product.
    plain: SimProduct,
    /// A batch-tracked product (DEAR wants a BatchSN on its pick and pack lines).
    batched: SimProduct,
}

async fn dear() -> Dear {
    let spec = SeedSpec {
        seed: 7,
        sales: 12,
        products: 40,
        ..Default::default()
    };
    let config = SimConfig {
        rate_limit: 0,
        hang_ms: 2_000,
        retry_after_secs: Some(0),
        ..Default::default()
    };
    let server = dear_sim::start_seeded(config, &spec)
        .await
        .expect("simulator starts");
    let (plain, batched) = server
        .sim
        .with_data(ACCOUNT, |d| {
            let find = |batch: bool| {
                d.products
                    .values()
                    .find(|p| p.batch_tracked() == batch && p.product_type == "Stock")
                    .cloned()
                    .expect("the seeded catalogue has FIFO and batch-tracked products")
            };
            (find(false), find(true))
        })
        .unwrap();
    Dear {
        client: client(&server),
        server,
        plain,
        batched,
    }
}

/// An order or invoice line of `product`.
fn line(product: &SimProduct, quantity: &str, price: &str, discount: &str, tax: &str) -> SimLine {
    SimLine {
        product_id: product.id,
        sku: product.sku.clone(),
        name: product.name.clone(),
        quantity: dec(quantity),
        price: dec(price),
        discount: dec(discount),
        tax: dec(tax),
        backorder_quantity: Decimal::ZERO,
    }
}

/// A service line (e.g. shipping) with its revenue account.
fn charge(description: &str, price: &str, account: &str) -> SimCharge {
    SimCharge {
        description: description.to_owned(),
        price: dec(price),
        quantity: Decimal::ONE,
        account: account.to_owned(),
    }
}

fn invoice(status: Stage, memo: &str, lines: Vec<SimLine>, charges: Vec<SimCharge>) -> SimInvoice {
    SimInvoice {
        task_id: Uuid::new_v4(),
        number: format!("INV-T{}", &Uuid::new_v4().simple().to_string()[..6]),
        status,
        memo: memo.to_owned(),
        date: Utc::now().naive_utc(),
        lines,
        charges,
        paid: Decimal::ZERO,
    }
}

/// A pick or pack line at the Main Warehouse.
fn fline(
    product: &SimProduct,
    quantity: &str,
    batch: Option<&str>,
    r#box: Option<&str>,
) -> FulfilmentLine {
    FulfilmentLine {
        product_id: Some(product.id),
        sku: Some(product.sku.clone()),
        location: Some(MAIN.to_owned()),
        quantity: dec(quantity),
        batch_sn: batch.map(str::to_owned),
        r#box: r#box.map(str::to_owned),
        ..Default::default()
    }
}

impl Dear {
    /// Adds a sale to the account and authorises its order, as a DEAR user would. It starts as a
    /// copy of a seeded sale with everything these tests look at set: customer Blue Fin Retail,
    /// contact and ship-to recipient Ana Ortega, a complete address, the Main Warehouse, carrier
    /// "Will Call", no memos or attributes, and two order lines — 5 × plain at 12.5 less 10 %
    /// (tax 5.625) and 3 × batched at 40 (tax 12). `edit` changes it before it is authorised.
    fn add_sale(&self, edit: impl FnOnce(&mut SimSale)) -> Uuid {
        let id = Uuid::new_v4();
        let now = Utc::now().naive_utc();
        let lines = vec![
            line(&self.plain, "5", "12.5", "10", "5.625"),
            line(&self.batched, "3", "40", "0", "12"),
        ];
        self.server
            .sim
            .with_data_mut(ACCOUNT, |d| {
                let location = d
                    .locations
                    .iter()
                    .find(|l| l.name == MAIN)
                    .expect("the Main Warehouse")
                    .id;
                d.next_order_number += 1;
                let mut s = d.sales.values().next().expect("a seeded sale").clone();
                s.id = id;
                s.order_number = format!("SO-{:05}", d.next_order_number);
                s.customer = "Blue Fin Retail".into();
                s.contact = "Ana Ortega".into();
                s.email = "ana@bluefin.example".into();
                s.phone = "+44 20 7946 0018".into();
                s.shipping = SimAddress {
                    line1: "391 Park Street".into(),
                    line2: String::new(),
                    city: "London".into(),
                    state: "Greater London".into(),
                    postcode: "SW1A 1AA".into(),
                    country: "United Kingdom".into(),
                    company: "Blue Fin Retail".into(),
                    contact: "Ana Ortega".into(),
                    display_lines: None,
                };
                s.billing = SimAddress {
                    company: String::new(),
                    contact: String::new(),
                    ..s.shipping.clone()
                };
                s.location_id = location;
                s.currency = "GBP".into();
                s.customer_reference = format!("PO-{}", d.next_order_number);
                s.carrier = "Will Call".into();
                s.order_date = now - chrono::Duration::days(1);
                s.created = s.order_date;
                s.ship_by = Some(now + chrono::Duration::days(3));
                s.updated = now;
                s.skip_quote = true;
                s.quote_status = Stage::NotAvailable;
                s.quote_memo = String::new();
                s.order_status = Stage::NotAvailable;
                s.order_memo = String::new();
                s.lines = lines;
                s.charges = Vec::new();
                s.advanced = false;
                s.fulfilments = Vec::new();
                s.invoices = Vec::new();
                s.credit_note_status = Stage::NotAvailable;
                s.credit_note_memo = String::new();
                s.voided = false;
                s.attributes = Default::default();
                s.note = String::new();
                edit(&mut s);
                d.sales.insert(id, s);
            })
            .unwrap();
        self.server
            .sim
            .edit_sale(
                ACCOUNT,
                id,
                &SaleEdit {
                    authorise_order: true,
                    ..Default::default()
                },
            )
            .expect("the order authorises");
        id
    }

    /// Changes a sale where DEAR's API has no endpoint the simulator plays (invoices, credit
    /// notes, memos), as a user would in DEAR's UI; `Updated` moves.
    fn edit(&self, id: Uuid, f: impl FnOnce(&mut SimSale)) {
        self.server
            .sim
            .with_data_mut(ACCOUNT, |d| {
                let s = d.sales.get_mut(&id).expect("the sale");
                f(s);
                s.updated = Utc::now().naive_utc();
            })
            .unwrap();
    }

    /// The sale as the simulator holds it.
    fn sim_sale(&self, id: Uuid) -> SimSale {
        self.server
            .sim
            .with_data(ACCOUNT, |d| d.sales[&id].clone())
            .unwrap()
    }

    /// `POST sale/fulfilment/pick` through the DEAR client.
    async fn pick(&self, task: Uuid, status: StageStatus, lines: Vec<FulfilmentLine>) {
        let pick = PickPack {
            task_id: Some(task),
            status,
            auto_pick_mode: None,
            lines,
        };
        self.client
            .write_pick(&pick, false)
            .await
            .expect("DEAR accepts the pick");
    }

    /// `POST sale/fulfilment/pick` with `AutoPickMode: AUTOPICK`: everything, authorised.
    async fn autopick(&self, task: Uuid) {
        let pick = PickPack {
            task_id: Some(task),
            auto_pick_mode: Some("AUTOPICK".into()),
            ..Default::default()
        };
        self.client
            .write_pick(&pick, false)
            .await
            .expect("DEAR accepts the autopick");
    }

    /// `POST sale/fulfilment/pack` through the DEAR client.
    async fn pack(&self, task: Uuid, status: StageStatus, lines: Vec<FulfilmentLine>) {
        let pack = PickPack {
            task_id: Some(task),
            status,
            auto_pick_mode: None,
            lines,
        };
        self.client
            .write_pack(&pack, false)
            .await
            .expect("DEAR accepts the pack");
    }

    /// `POST sale/fulfilment`: the new fulfilment's TaskID.
    async fn new_fulfilment(&self, sale: Uuid) -> Uuid {
        let all = self
            .client
            .create_fulfilment(sale)
            .await
            .expect("DEAR opens another fulfilment");
        all.fulfilments
            .iter()
            .max_by_key(|f| f.fulfillment_number)
            .expect("a fulfilment")
            .task_id
    }

    /// The job for `toml` (the `[order_download]` keys under test only), fresh state.
    fn job(&self, toml: &str) -> (OrderDownload, Arc<CollectingSink>) {
        let settings = TenantSettings::from_toml(&format!("[order_download]\n{toml}"))
            .unwrap_or_else(|e| panic!("{toml:?}: {e}"))
            .order_download;
        let clock = Arc::new(OffsetClock::default());
        let sink = Arc::new(CollectingSink::default());
        let job = OrderDownload {
            ctx: JobContext::new(
                TenantId::new("acme").unwrap(),
                self.client.clone(),
                Arc::new(MemoryStore::new(clock.clone())),
                clock,
            ),
            settings,
            sink: sink.clone(),
        };
        (job, sink)
    }

    /// Downloads one sale with these settings (as the webhook path does) and returns its order.
    async fn download(&self, toml: &str, sale: Uuid) -> CanonicalOrder {
        let (job, sink) = self.job(toml);
        let s = job.download_one(sale).await;
        assert_eq!(
            (&s.outcome, s.delivered, s.failed),
            (&Outcome::Completed, 1, 0),
            "{toml:?}: {s:?}"
        );
        let orders = sink.orders.lock().unwrap().clone();
        assert_eq!(orders.len(), 1, "{toml:?}");
        let order = orders.into_iter().next().unwrap();
        assert_eq!(order.sale_id, sale.to_string());
        order
    }

    /// A backfill run from 2000 with these settings: every order delivered.
    async fn backfill(&self, toml: &str) -> Vec<CanonicalOrder> {
        // DEAR's UpdatedUntil is the run's start: let the sales' last change fall before it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (job, sink) = self.job(toml);
        let s = job
            .run(&RunOptions {
                since: Some("2000-01-01T00:00:00Z".parse().unwrap()),
                ..Default::default()
            })
            .await;
        assert_eq!((&s.outcome, s.failed), (&Outcome::Completed, 0), "{s:?}");
        sink.orders.lock().unwrap().clone()
    }

    /// What `docs/canonical-order.md` says the pick (or pack) source gives for the sale as the
    /// simulator holds it: the lines of every fulfilment whose pick (pack) is DRAFT or AUTHORISED,
    /// summed per SKU and batch; price, discount, name (and comment, which the simulator never
    /// sets) from the order line of the same product; tax in proportion to the quantity;
    /// `total = quantity × unit_price × (1 − discount/100)`.
    fn expected_fulfilment_lines(&self, id: Uuid, pack: bool) -> Vec<OrderLine> {
        self.server
            .sim
            .with_data(ACCOUNT, |d| fulfilment_oracle(d, &d.sales[&id], pack))
            .unwrap()
    }
}

/// A DEAR order or invoice line as the canonical order carries it.
fn expected_line(l: &SimLine) -> OrderLine {
    OrderLine {
        sku: l.sku.clone(),
        name: Some(l.name.clone()),
        product_id: Some(l.product_id.to_string()),
        quantity: l.quantity,
        unit_price: l.price,
        discount_percent: l.discount,
        tax: l.tax,
        total: l.total(),
        batch: None,
        comment: None,
    }
}

fn fulfilment_oracle(d: &Dataset, s: &SimSale, pack: bool) -> Vec<OrderLine> {
    let mut out: Vec<OrderLine> = Vec::new();
    for f in &s.fulfilments {
        let (status, lines) = if pack {
            (f.pack_status, &f.pack)
        } else {
            (f.pick_status, &f.pick)
        };
        if !(status == Stage::Draft || status.is_authorised()) {
            continue;
        }
        for l in lines {
            let sku = d.products[&l.product_id].sku.clone();
            match out.iter_mut().find(|o| o.sku == sku && o.batch == l.batch) {
                Some(same) => same.quantity += l.quantity,
                None => out.push(OrderLine {
                    sku,
                    name: None,
                    product_id: Some(l.product_id.to_string()),
                    quantity: l.quantity,
                    unit_price: Decimal::ZERO,
                    discount_percent: Decimal::ZERO,
                    tax: Decimal::ZERO,
                    total: Decimal::ZERO,
                    batch: l.batch.clone(),
                    comment: None,
                }),
            }
        }
    }
    for o in &mut out {
        let ordered = s
            .lines
            .iter()
            .find(|l| Some(l.product_id.to_string()) == o.product_id)
            .expect("picked products are on the order");
        o.name = Some(ordered.name.clone());
        o.unit_price = ordered.price;
        o.discount_percent = ordered.discount;
        o.tax = (ordered.tax * o.quantity / ordered.quantity).round_dp(4);
        o.total = (o.quantity * ordered.price * (Decimal::ONE_HUNDRED - ordered.discount)
            / Decimal::ONE_HUNDRED)
            .round_dp(4);
    }
    sorted(out)
}

fn sorted(mut lines: Vec<OrderLine>) -> Vec<OrderLine> {
    lines.sort_by(|a, b| (&a.sku, &a.batch, a.quantity).cmp(&(&b.sku, &b.batch, b.quantity)));
    lines
}

fn order_lines_of(s: &SimSale) -> Vec<OrderLine> {
    sorted(s.lines.iter().map(expected_line).collect())
}

fn quantity_of(lines: &[OrderLine], sku: &str, batch: Option<&str>) -> Option<Decimal> {
    lines
        .iter()
        .find(|l| l.sku == sku && l.batch.as_deref() == batch)
        .map(|l| l.quantity)
}

fn text(v: &str) -> Option<String> {
    Some(v.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The fields no setting under test touches, against the sale as DEAR's API gives it.
fn assert_header(order: &CanonicalOrder, sale: &Sale) {
    let blank = |v: &Option<String>| v.as_deref().and_then(text);
    assert_eq!(order.sale_id, sale.id.to_string());
    assert_eq!(Some(order.order_number.as_str()), sale.order_number());
    assert_eq!(order.status, sale.status.as_str());
    assert_eq!(order.location, blank(&sale.location));
    assert_eq!(order.customer.name, blank(&sale.customer));
    assert_eq!(order.customer.email, blank(&sale.email));
    assert_eq!(order.customer.phone, blank(&sale.phone));
    let ship = sale.shipping_address.as_ref().expect("a shipping address");
    assert_eq!(order.ship_to.line1, blank(&ship.line1));
    assert_eq!(order.ship_to.city, blank(&ship.city));
    assert_eq!(order.ship_to.state, blank(&ship.state));
    assert_eq!(order.ship_to.postcode, blank(&ship.postcode));
    assert_eq!(order.ship_to.country, blank(&ship.country));
    assert_eq!(order.ship_to.company, blank(&ship.company));
    assert_eq!(order.currency, blank(&sale.customer_currency));
    assert_eq!(order.customer_reference, blank(&sale.customer_reference));
    assert_eq!(
        order.total,
        sale.order.as_ref().expect("an order stage").total,
        "the total is always Order.Total, whatever the lines' source"
    );
}

// ---- take_order_lines_from ---------------------------------------------------------------------

#[tokio::test]
async fn each_line_source_gives_its_own_lines() {
    let dear = dear().await;
    let (plain, batched) = (&dear.plain, &dear.batched);
    let id = dear.add_sale(|_| {});
    // A partial pick (3 of 5 plain; the 3 batched in two batches), a pack of fewer units across
    // two boxes, and an invoice at other quantities and prices.
    dear.pick(
        id,
        StageStatus::Authorised,
        vec![
            fline(plain, "3", None, None),
            fline(batched, "2", Some("LOT-A"), None),
            fline(batched, "1", Some("LOT-B"), None),
        ],
    )
    .await;
    dear.pack(
        id,
        StageStatus::Authorised,
        vec![
            fline(plain, "1", None, Some("Box 1")),
            fline(plain, "1", None, Some("Box 2")),
            fline(batched, "1", Some("LOT-A"), Some("Box 1")),
        ],
    )
    .await;
    dear.edit(id, |s| {
        s.invoices.push(invoice(
            Stage::Authorised,
            "",
            vec![
                line(plain, "4", "11", "0", "4.4"),
                line(batched, "3", "38", "5", "10.83"),
            ],
            vec![],
        ))
    });

    let sim = dear.sim_sale(id);
    let want_order = order_lines_of(&sim);
    let want_pick = dear.expected_fulfilment_lines(id, false);
    let want_pack = dear.expected_fulfilment_lines(id, true);
    let want_invoice = sorted(sim.invoices[0].lines.iter().map(expected_line).collect());
    // The four sources differ, so each source's assertion can pass only from that source.
    let all = [&want_order, &want_pick, &want_pack, &want_invoice];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(quantity_of(&want_pick, &plain.sku, None), Some(dec("3")));
    assert_eq!(quantity_of(&want_pack, &plain.sku, None), Some(dec("2")));
    assert_eq!(quantity_of(&want_pack, &batched.sku, Some("LOT-B")), None);
    let picked_plain = want_pick.iter().find(|l| l.sku == plain.sku).unwrap();
    assert_eq!(
        (picked_plain.tax, picked_plain.total),
        (dec("3.375"), dec("33.75")),
        "3/5 of the order line's tax; 3 × 12.5 less 10 %"
    );

    let sale = dear.client.sale(id).await.unwrap();
    for (setting, want) in [
        ("", &want_order),
        ("take_order_lines_from = \"order\"\n", &want_order),
        ("take_order_lines_from = \"pick\"\n", &want_pick),
        ("take_order_lines_from = \"pack\"\n", &want_pack),
        ("take_order_lines_from = \"invoice\"\n", &want_invoice),
    ] {
        let order = dear
            .download(&format!("sale_status = \"Any\"\n{setting}"), id)
            .await;
        assert_header(&order, &sale);
        assert_eq!(&sorted(order.lines.clone()), want, "{setting:?}");
    }
}

#[tokio::test]
async fn a_source_without_lines_falls_back_to_the_order_lines() {
    let dear = dear().await;
    let (plain, batched) = (&dear.plain, &dear.batched);
    let any = "sale_status = \"Any\"\n";

    // Ordered only: no pick, pack or invoice yet.
    let ordered = dear.add_sale(|_| {});
    let want = order_lines_of(&dear.sim_sale(ordered));
    for source in ["pick", "pack", "invoice"] {
        let order = dear
            .download(
                &format!("{any}take_order_lines_from = \"{source}\"\n"),
                ordered,
            )
            .await;
        assert_eq!(sorted(order.lines), want, "{source} on an ORDERED sale");
    }

    // Partly picked, nothing packed: pack falls back to the order, not to the pick.
    let picked = dear.add_sale(|_| {});
    dear.pick(
        picked,
        StageStatus::Authorised,
        vec![
            fline(plain, "2", None, None),
            fline(batched, "1", Some("LOT-A"), None),
        ],
    )
    .await;
    let want_order = order_lines_of(&dear.sim_sale(picked));
    let want_pick = dear.expected_fulfilment_lines(picked, false);
    assert_ne!(want_pick, want_order);
    let order = dear
        .download(&format!("{any}take_order_lines_from = \"pick\"\n"), picked)
        .await;
    assert_eq!(order.status, "PICKED");
    assert_eq!(sorted(order.lines), want_pick);
    for source in ["pack", "invoice"] {
        let order = dear
            .download(
                &format!("{any}take_order_lines_from = \"{source}\"\n"),
                picked,
            )
            .await;
        assert_eq!(sorted(order.lines), want_order, "{source} on a PICKED sale");
    }

    // Its only invoice voided: the invoice source falls back to the order.
    let voided = dear.add_sale(|_| {});
    dear.edit(voided, |s| {
        s.invoices.push(invoice(
            Stage::Voided,
            "",
            vec![line(plain, "1", "99", "0", "0")],
            vec![],
        ))
    });
    let order = dear
        .download(
            &format!("{any}take_order_lines_from = \"invoice\"\n"),
            voided,
        )
        .await;
    assert_eq!(sorted(order.lines), order_lines_of(&dear.sim_sale(voided)));
}

#[tokio::test]
async fn pick_lines_are_summed_over_every_draft_or_authorised_fulfilment_and_voided_ones_left_out()
{
    let dear = dear().await;
    let (plain, batched) = (&dear.plain, &dear.batched);
    let id = dear.add_sale(|_| {});
    // Fulfilment 1 (a simple sale's TaskID is its SaleID): authorised.
    dear.pick(
        id,
        StageStatus::Authorised,
        vec![
            fline(plain, "2", None, None),
            fline(batched, "1", Some("LOT-A"), None),
        ],
    )
    .await;
    // Fulfilment 2 (the sale becomes an Advanced Sale): authorised.
    let second = dear.new_fulfilment(id).await;
    dear.pick(
        second,
        StageStatus::Authorised,
        vec![fline(plain, "1", None, None)],
    )
    .await;
    // Fulfilment 3: a draft pick, then the fulfilment is voided.
    let third = dear.new_fulfilment(id).await;
    dear.pick(
        third,
        StageStatus::Draft,
        vec![fline(plain, "1", None, None)],
    )
    .await;
    dear.client
        .delete_fulfilment(third, true)
        .await
        .expect("DEAR voids the fulfilment");
    // Fulfilment 4: a draft pick.
    let fourth = dear.new_fulfilment(id).await;
    dear.pick(
        fourth,
        StageStatus::Draft,
        vec![fline(batched, "1", Some("LOT-B"), None)],
    )
    .await;

    let sim = dear.sim_sale(id);
    assert!(sim.advanced);
    assert_eq!(sim.fulfilments.len(), 4);
    assert_eq!(sim.fulfilments[2].pick_status, Stage::Voided);
    assert!(
        !sim.fulfilments[2].pick.is_empty(),
        "the voided pick keeps its line"
    );
    let want = dear.expected_fulfilment_lines(id, false);
    assert_eq!(
        quantity_of(&want, &plain.sku, None),
        Some(dec("3")),
        "2 + 1, not the voided 1"
    );
    assert_eq!(
        quantity_of(&want, &batched.sku, Some("LOT-A")),
        Some(dec("1"))
    );
    assert_eq!(
        quantity_of(&want, &batched.sku, Some("LOT-B")),
        Some(dec("1"))
    );

    let sale = dear.client.sale(id).await.unwrap();
    let order = dear
        .download(
            "sale_status = \"Any\"\ntake_order_lines_from = \"pick\"\n",
            id,
        )
        .await;
    assert_header(&order, &sale);
    assert_eq!(sorted(order.lines), want);
    // Nothing packed in any fulfilment: the order's lines.
    let order = dear
        .download(
            "sale_status = \"Any\"\ntake_order_lines_from = \"pack\"\n",
            id,
        )
        .await;
    assert_eq!(sorted(order.lines), order_lines_of(&sim));
}

#[tokio::test]
async fn invoice_lines_come_from_every_draft_or_authorised_invoice() {
    let dear = dear().await;
    let (plain, batched) = (&dear.plain, &dear.batched);
    let id = dear.add_sale(|s| s.advanced = true);
    dear.edit(id, |s| {
        s.invoices = vec![
            invoice(
                Stage::Authorised,
                "",
                vec![line(plain, "2", "11", "0", "2.2")],
                vec![],
            ),
            invoice(
                Stage::Voided,
                "",
                vec![line(plain, "5", "99", "0", "0")],
                vec![],
            ),
            invoice(
                Stage::Draft,
                "",
                vec![line(batched, "1", "38", "5", "3.61")],
                vec![],
            ),
        ]
    });
    let sim = dear.sim_sale(id);
    let want = sorted(
        [&sim.invoices[0], &sim.invoices[2]]
            .iter()
            .flat_map(|i| i.lines.iter().map(expected_line))
            .collect(),
    );
    assert_eq!(want.len(), 2);
    assert!(want.iter().all(|l| l.unit_price != dec("99")));

    let sale = dear.client.sale(id).await.unwrap();
    let order = dear
        .download(
            "sale_status = \"Any\"\ntake_order_lines_from = \"invoice\"\n",
            id,
        )
        .await;
    assert_header(&order, &sale);
    assert_eq!(sorted(order.lines), want);
}

/// docs/canonical-order.md: pick / pack lines come from fulfilments whose pick / pack is draft or
/// authorised. DEAR lists lines in a pack that is still NOT AVAILABLE (shared/dear-api.md §4's
/// example: `"Pick":{"Status":"DRAFT","Lines":[…]}, "Pack":{"Status":"NOT AVAILABLE","Lines":[…]}`);
/// such a pack has not started, so the pack source falls back to the order's lines.
#[tokio::test]
async fn a_pack_that_is_not_available_is_no_source_even_when_dear_lists_lines_in_it() {
    let dear = dear().await;
    let (plain, batched) = (&dear.plain, &dear.batched);
    let id = dear.add_sale(|_| {});
    dear.pick(
        id,
        StageStatus::Draft,
        vec![
            fline(plain, "5", None, None),
            fline(batched, "3", Some("LOT-A"), None),
        ],
    )
    .await;
    dear.server
        .sim
        .with_data_mut(ACCOUNT, |d| {
            let s = d.sales.get_mut(&id).unwrap();
            let f = &mut s.fulfilments[0];
            f.pack = f
                .pick
                .iter()
                .map(|l| dear_sim::model::SimFulfilLine {
                    r#box: Some("Box 1".into()),
                    ..l.clone()
                })
                .collect();
            assert_eq!(f.pack_status, Stage::NotAvailable);
        })
        .unwrap();
    let sale = dear.client.sale(id).await.unwrap();
    assert_eq!(sale.fulfilments[0].pack.status, StageStatus::NotAvailable);
    assert!(!sale.fulfilments[0].pack.lines.is_empty());

    // The draft pick is a source (its lines differ from the order's: batch LOT-A).
    let order = dear
        .download(
            "sale_status = \"Any\"\ntake_order_lines_from = \"pick\"\n",
            id,
        )
        .await;
    assert_eq!(order.status, "PICKING");
    assert_eq!(
        sorted(order.lines),
        dear.expected_fulfilment_lines(id, false)
    );
    // The not-available pack is not.
    let order = dear
        .download(
            "sale_status = \"Any\"\ntake_order_lines_from = \"pack\"\n",
            id,
        )
        .await;
    assert_eq!(
        sorted(order.lines),
        order_lines_of(&dear.sim_sale(id)),
        "a NOT AVAILABLE pack gives no lines: the order's are used"
    );
}

/// docs/canonical-order.md: for pick / pack lines, "price, discount, name and comment come from
/// the matching order line". A DEAR user may rename an order line (the product's name stays on
/// the pick line DEAR returns).
#[tokio::test]
async fn pick_lines_take_their_name_from_the_order_line() {
    let dear = dear().await;
    let plain = &dear.plain;
    let id = dear.add_sale(|s| s.lines[0].name = format!("{} (gift-wrapped)", s.lines[0].name));
    dear.pick(
        id,
        StageStatus::Authorised,
        vec![
            fline(plain, "3", None, None),
            fline(&dear.batched, "3", Some("LOT-A"), None),
        ],
    )
    .await;
    let sale = dear.client.sale(id).await.unwrap();
    let picked = &sale.fulfilments[0].pick.lines;
    let ordered = sale.order.as_ref().unwrap().lines[0].name.clone();
    assert_ne!(
        picked
            .iter()
            .find(|l| l.product_id == Some(plain.id))
            .unwrap()
            .name,
        ordered
    );

    let order = dear
        .download(
            "sale_status = \"Any\"\ntake_order_lines_from = \"pick\"\n",
            id,
        )
        .await;
    let line = order.lines.iter().find(|l| l.sku == plain.sku).unwrap();
    assert_eq!(line.name, ordered, "the order line's name");
    assert_eq!(
        sorted(order.lines),
        dear.expected_fulfilment_lines(id, false)
    );
}

// ---- notes_field -------------------------------------------------------------------------------

#[tokio::test]
async fn notes_come_from_the_memo_the_setting_names() {
    let dear = dear().await;
    let plain = &dear.plain;
    let id = dear.add_sale(|s| {
        s.skip_quote = false;
        s.quote_memo = "Quote: gift wrap both loaves".into();
        s.order_memo = "Order: leave at the back door".into();
        s.advanced = true;
    });
    dear.edit(id, |s| {
        s.invoices = vec![
            invoice(
                Stage::Authorised,
                "Invoice: net 30 days",
                vec![line(plain, "5", "12.5", "10", "5.625")],
                vec![],
            ),
            invoice(
                Stage::Authorised,
                "Invoice 2: the batched loaves",
                vec![line(&dear.batched, "3", "40", "0", "12")],
                vec![],
            ),
        ];
        s.credit_note_status = Stage::Authorised;
        s.credit_note_memo = "Credit note: one loaf returned stale".into();
    });
    let sim = dear.sim_sale(id);
    let memos = [
        &sim.order_memo,
        &sim.quote_memo,
        &sim.invoices[0].memo,
        &sim.invoices[1].memo,
        &sim.credit_note_memo,
    ];
    for (i, a) in memos.iter().enumerate() {
        assert!(!a.is_empty());
        assert!(memos[i + 1..].iter().all(|b| b != a), "distinct memos");
    }

    let sale = dear.client.sale(id).await.unwrap();
    let mut versions = Vec::new();
    for (setting, memo) in [
        ("", &sim.order_memo),
        ("notes_field = \"order\"\n", &sim.order_memo),
        ("notes_field = \"quote\"\n", &sim.quote_memo),
        // The first invoice's memo.
        ("notes_field = \"invoice\"\n", &sim.invoices[0].memo),
        ("notes_field = \"credit_note\"\n", &sim.credit_note_memo),
    ] {
        let order = dear
            .download(&format!("sale_status = \"Any\"\n{setting}"), id)
            .await;
        assert_header(&order, &sale);
        assert_eq!(order.notes, text(memo), "{setting:?}");
        versions.push((order.notes.clone(), order.version.clone()));
    }
    // The notes are part of the order's content: another memo is another version.
    assert_eq!(versions[0], versions[1]);
    for (i, a) in versions[1..].iter().enumerate() {
        assert!(versions[i + 2..].iter().all(|b| b.1 != a.1), "{versions:?}");
    }

    // A sale with an order memo only: the other settings give no notes, not the order memo.
    let bare = dear.add_sale(|s| s.order_memo = "  Ring the bell  ".into());
    let order = dear.download("sale_status = \"Any\"\n", bare).await;
    assert_eq!(order.notes.as_deref(), Some("Ring the bell"));
    for field in ["quote", "invoice", "credit_note"] {
        let order = dear
            .download(
                &format!("sale_status = \"Any\"\nnotes_field = \"{field}\"\n"),
                bare,
            )
            .await;
        assert_eq!(order.notes, None, "{field}");
    }
}

// ---- order_source ------------------------------------------------------------------------------

#[tokio::test]
async fn the_order_source_comes_from_the_field_the_setting_names() {
    let dear = dear().await;
    let id = dear.add_sale(|s| {
        s.source_channel = Some("Shopify".into());
        s.default_account = "4000".into();
        s.sales_representative = "  Ann Rep ".into();
    });
    let mut versions = Vec::new();
    for (setting, want) in [
        ("", Some("Shopify")),
        ("order_source = \"source_channel\"\n", Some("Shopify")),
        ("order_source = \"account\"\n", Some("4000")),
        ("order_source = \"sales_rep\"\n", Some("Ann Rep")),
    ] {
        let order = dear
            .download(&format!("sale_status = \"Any\"\n{setting}"), id)
            .await;
        assert_eq!(order.source_channel.as_deref(), want, "{setting:?}");
        versions.push(order.version);
    }
    assert_eq!(
        versions[0], versions[1],
        "the default is DEAR's source channel"
    );
    // A sale without the chosen field has no source rather than another field's.
    let bare = dear.add_sale(|s| {
        s.source_channel = Some("Shopify".into());
        s.sales_representative = String::new();
    });
    let order = dear
        .download(
            "sale_status = \"Any\"\norder_source = \"sales_rep\"\n",
            bare,
        )
        .await;
    assert_eq!(order.source_channel, None);
    let refused = TenantSettings::from_toml("[order_download]\norder_source = \"channel\"\n")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("order_source"), "{refused}");
}

// ---- ship_method_map ---------------------------------------------------------------------------

#[tokio::test]
async fn ship_methods_are_mapped_to_the_warehouses_codes_and_an_unmapped_one_is_held_back() {
    let dear = dear().await;
    let ground = dear.add_sale(|s| s.carrier = "Ground".into());
    let overnight = dear.add_sale(|s| s.carrier = "Overnight Air".into());
    let map =
        "sale_status = \"Any\"\n[order_download.ship_method_map]\n\" ground \" = \"UPS_GND\"\n";
    // Without a map the method goes as DEAR has it.
    let order = dear.download("sale_status = \"Any\"\n", ground).await;
    assert_eq!(order.shipping_method.as_deref(), Some("Ground"));
    let order = dear.download(map, ground).await;
    assert_eq!(
        order.shipping_method.as_deref(),
        Some("UPS_GND"),
        "keys without case or spaces"
    );
    // A method the map lacks is skipped, naming it and what the map has.
    let (job, sink) = dear.job(map);
    let s = job.download_one(overnight).await;
    assert_eq!(
        (s.delivered, s.skipped.get("unmapped_ship_method")),
        (0, Some(&1)),
        "{s:?}"
    );
    assert!(sink.orders.lock().unwrap().is_empty());
    let emf: serde_json::Value = serde_json::from_str(&s.emf(0)).unwrap();
    assert_eq!(emf["UnmappedShipMethods"], 1, "alarmed: {emf}");
    let records = job
        .ctx
        .store
        .list(&LedgerQuery::new(
            &TenantId::new("acme").unwrap(),
            Job::OrderDownload,
            RecordState::Skipped,
        ))
        .await
        .unwrap()
        .records;
    let reason = records[0].reason.clone().unwrap();
    assert!(
        reason.contains("\"Overnight Air\"") && reason.contains("\" ground \""),
        "{reason}"
    );
    // With a default it goes under the default's code.
    let order = dear
        .download(
            &format!("ship_method_default = \"UPS_STD\"\n{map}"),
            overnight,
        )
        .await;
    assert_eq!(order.shipping_method.as_deref(), Some("UPS_STD"));
    let blank = TenantSettings::from_toml("[order_download.ship_method_map]\n\"Ground\" = \" \"\n")
        .unwrap_err()
        .to_string();
    assert!(blank.contains("ship_method_map"), "{blank}");
}

// ---- address_mismatch --------------------------------------------------------------------------

#[tokio::test]
async fn an_address_typed_over_on_the_order_is_held_until_it_is_fixed_in_dear() {
    let dear = dear().await;
    let id = dear.add_sale(|_| {});
    // An admin types a new address over the order's display lines only (the address trap).
    let typed_over = |lines: [&str; 2]| {
        dear.server
            .sim
            .edit_sale(
                ACCOUNT,
                id,
                &dear_sim::SaleEdit {
                    shipping_display_lines: Some(lines.map(str::to_owned)),
                    ..Default::default()
                },
            )
            .unwrap()
    };
    typed_over(["12 New Road", "Leeds LS1 4AP United Kingdom"]);
    let (job, sink) = dear.job("sale_status = \"Any\"\n");
    let s = job.download_one(id).await;
    assert_eq!(
        (s.delivered, s.skipped.get("address_mismatch")),
        (0, Some(&1)),
        "{s:?}"
    );
    assert!(
        sink.orders.lock().unwrap().is_empty(),
        "not sent to the old address"
    );
    let reason = job
        .ctx
        .store
        .record(&dearsync_core::state::RecordKey::new(
            &TenantId::new("acme").unwrap(),
            Job::OrderDownload,
            id.to_string(),
        ))
        .await
        .unwrap()
        .unwrap()
        .reason
        .unwrap();
    assert!(
        reason.contains("12 New Road") && reason.contains("391 Park Street"),
        "both versions named: {reason}"
    );
    // A merchant who only wants a warning gets the order sent as the fields say.
    let order = dear
        .download("sale_status = \"Any\"\naddress_mismatch = \"warn\"\n", id)
        .await;
    assert_eq!(order.ship_to.line1.as_deref(), Some("391 Park Street"));
    // Fixed in DEAR (display and fields agree again): the held sale is sent by the next look.
    typed_over(["391 Park Street", "London, Greater London SW1A 1AA"]);
    let s = job.download_one(id).await;
    assert_eq!(s.delivered, 1, "{s:?}");
}

// ---- split_names -------------------------------------------------------------------------------

/// The documented split: the first word is the first name, the rest the last name.
fn split(name: &str) -> (Option<String>, Option<String>) {
    match name.trim().split_once(' ') {
        Some((first, rest)) => (text(first), text(rest)),
        None => (text(name), None),
    }
}

#[tokio::test]
async fn split_names_splits_every_name_at_its_first_space_or_keeps_it_whole() {
    let dear = dear().await;
    // A one-word recipient; a three-word recipient other than the contact; no recipient (the
    // ship-to name is then the sale's contact).
    let names = [
        ("Cher", "Cher"),
        ("Peter Parker", "Mary Jane Watson"),
        ("Li Wei", ""),
    ];
    let mut ids = Vec::new();
    for (contact, recipient) in names {
        let id = dear.add_sale(|s| {
            s.contact = contact.into();
            s.shipping.contact = recipient.into();
        });
        // PICKED, the default sale status.
        dear.autopick(id).await;
        ids.push(id);
    }

    for (setting, splits) in [
        ("", true),
        ("split_names = true\n", true),
        ("split_names = false\n", false),
    ] {
        let orders = dear.backfill(setting).await;
        for id in &ids {
            let mine: Vec<&CanonicalOrder> = orders
                .iter()
                .filter(|o| o.sale_id == id.to_string())
                .collect();
            assert_eq!(mine.len(), 1, "{setting:?}: sale {id} delivered once");
            let order = mine[0];
            let sim = dear.sim_sale(*id);
            let ship_name = text(&sim.shipping.contact).or_else(|| text(&sim.contact));
            assert_eq!(order.status, "PICKED");
            // The names themselves are whole either way.
            assert_eq!(order.ship_to.name, ship_name, "{setting:?}");
            assert_eq!(order.bill_to.name, text(&sim.contact), "{setting:?}");
            assert_eq!(order.ship_to.company, text(&sim.shipping.company));
            assert_eq!(order.customer.name, text(&sim.customer));
            let (none, ship, bill) = (
                (None, None),
                split(ship_name.as_deref().unwrap()),
                split(&sim.contact),
            );
            let got = |a: &Option<String>, b: &Option<String>| (a.clone(), b.clone());
            let want = |s: (Option<String>, Option<String>)| if splits { s } else { none.clone() };
            assert_eq!(
                got(&order.ship_to.first_name, &order.ship_to.last_name),
                want(ship),
                "{setting:?} ship_to"
            );
            assert_eq!(
                got(&order.bill_to.first_name, &order.bill_to.last_name),
                want(bill.clone()),
                "{setting:?} bill_to"
            );
            assert_eq!(
                got(&order.customer.first_name, &order.customer.last_name),
                want(bill),
                "{setting:?} customer"
            );
        }
        // The cases themselves, spelled out.
        let ship_of = |i: usize| {
            let o = orders
                .iter()
                .find(|o| o.sale_id == ids[i].to_string())
                .unwrap();
            (
                o.ship_to.first_name.as_deref().map(str::to_owned),
                o.ship_to.last_name.as_deref().map(str::to_owned),
            )
        };
        if splits {
            assert_eq!(ship_of(0), (Some("Cher".into()), None));
            assert_eq!(
                ship_of(1),
                (Some("Mary".into()), Some("Jane Watson".into()))
            );
            assert_eq!(ship_of(2), (Some("Li".into()), Some("Wei".into())));
        } else {
            for i in 0..3 {
                assert_eq!(ship_of(i), (None, None));
            }
        }
    }
}

// ---- ship_method_selection ---------------------------------------------------------------------

/// The documented `shipping_account` rule: the Description of the first invoice additional
/// charge whose Account is listed, else (not invoiced: no such charge) DEAR's Carrier.
fn by_shipping_account(s: &SimSale, accounts: &[&str]) -> Option<String> {
    s.invoices
        .iter()
        .flat_map(|i| i.charges.iter())
        .find(|c| accounts.contains(&c.account.trim()))
        .and_then(|c| text(&c.description))
        .or_else(|| text(&s.carrier))
}

#[tokio::test]
async fn shipping_account_takes_the_invoice_charge_on_a_listed_account() {
    let dear = dear().await;
    // Invoiced, with a charge on an account that is no shipping account before two that are.
    let invoiced = dear.add_sale(|_| {});
    dear.edit(invoiced, |s| {
        s.invoices.push(invoice(
            Stage::Authorised,
            "",
            s.lines.clone(),
            vec![
                charge("Gift wrap", "4", "200"),
                charge("UPS Ground", "9.5", "2095"),
                charge("FedEx 2Day", "19", "2096"),
            ],
        ))
    });
    // Invoiced, its only charge on an account that is not listed.
    let unlisted = dear.add_sale(|_| {});
    dear.edit(unlisted, |s| {
        s.invoices.push(invoice(
            Stage::Authorised,
            "",
            s.lines.clone(),
            vec![charge("Gift wrap", "4", "200")],
        ))
    });
    // Not invoiced: a shipping charge on the order only (orders carry no Account).
    let uninvoiced = dear.add_sale(|s| {
        s.charges = vec![charge("UPS Ground", "9.5", "2095")];
        s.carrier = "USPS Priority".into();
    });

    for (id, setting, accounts, literal) in [
        // The first charge in the invoice's order whose account is listed, whatever the list's order.
        (
            invoiced,
            "shipping_accounts = [\"2096\", \"2095\"]\n",
            vec!["2096", "2095"],
            "UPS Ground",
        ),
        (
            invoiced,
            "ship_method_selection = \"shipping_account\"\nshipping_accounts = [\"2096\"]\n",
            vec!["2096"],
            "FedEx 2Day",
        ),
        // No account listed (the default): no charge gives the method; DEAR's Carrier does.
        (invoiced, "", vec![], "Will Call"),
        // A charge on an unlisted account gives nothing.
        (
            unlisted,
            "shipping_accounts = [\"2095\"]\n",
            vec!["2095"],
            "Will Call",
        ),
        (
            uninvoiced,
            "shipping_accounts = [\"2095\"]\n",
            vec!["2095"],
            "USPS Priority",
        ),
    ] {
        let sim = dear.sim_sale(id);
        let order = dear
            .download(&format!("sale_status = \"Any\"\n{setting}"), id)
            .await;
        assert_eq!(
            order.shipping_method,
            by_shipping_account(&sim, &accounts),
            "{setting:?}"
        );
        assert_eq!(
            order.shipping_method.as_deref(),
            Some(literal),
            "{setting:?}"
        );
        assert_ne!(order.shipping_method.as_deref(), Some("Gift wrap"));
        assert_header(&order, &dear.client.sale(id).await.unwrap());
    }
}

#[tokio::test]
async fn additional_attribute_takes_the_ship_code_from_attribute_n() {
    let dear = dear().await;
    let id = dear.add_sale(|s| {
        s.attributes[0] = "UPS Ground".into();
        s.attributes[2] = " FedEx Overnight ".into();
        s.attributes[9] = "DHL Express".into();
        s.carrier = "Will Call".into();
    });
    dear.edit(id, |s| {
        s.invoices.push(invoice(
            Stage::Authorised,
            "",
            s.lines.clone(),
            vec![charge("USPS Priority", "7", "2095")],
        ))
    });
    let sim = dear.sim_sale(id);
    let sale = dear.client.sale(id).await.unwrap();
    for (extra, n) in [
        // ship_code_attribute defaults to 1.
        ("", 1usize),
        ("ship_code_attribute = 1\n", 1),
        ("ship_code_attribute = 3\n", 3),
        ("ship_code_attribute = 10\n", 10),
        // A blank attribute: no ship method (neither another attribute nor the Carrier).
        (
            "ship_code_attribute = 5\nshipping_accounts = [\"2095\"]\n",
            5,
        ),
    ] {
        let setting = format!("ship_method_selection = \"additional_attribute\"\n{extra}");
        let order = dear
            .download(&format!("sale_status = \"Any\"\n{setting}"), id)
            .await;
        assert_header(&order, &sale);
        assert_eq!(
            order.shipping_method,
            text(&sim.attributes[n - 1]),
            "{setting:?}: Additional Attribute {n}"
        );
        assert_eq!(
            order.shipping_method.as_deref(),
            [
                "UPS Ground",
                "",
                "FedEx Overnight",
                "",
                "",
                "",
                "",
                "",
                "",
                "DHL Express"
            ]
            .get(n - 1)
            .filter(|v| !v.is_empty())
            .copied(),
            "{setting:?}"
        );
    }
}

#[tokio::test]
async fn none_gives_no_ship_method_whatever_the_sale_holds() {
    let dear = dear().await;
    let id = dear.add_sale(|s| {
        s.attributes[0] = "UPS Ground".into();
        s.carrier = "Will Call".into();
    });
    dear.edit(id, |s| {
        s.invoices.push(invoice(
            Stage::Authorised,
            "",
            s.lines.clone(),
            vec![charge("FedEx 2Day", "19", "2095")],
        ))
    });
    // The same sale gives a method under the other selections.
    let by_account = dear
        .download(
            "sale_status = \"Any\"\nshipping_accounts = [\"2095\"]\n",
            id,
        )
        .await;
    assert_eq!(by_account.shipping_method.as_deref(), Some("FedEx 2Day"));
    let by_attribute = dear
        .download(
            "sale_status = \"Any\"\nship_method_selection = \"additional_attribute\"\n",
            id,
        )
        .await;
    assert_eq!(by_attribute.shipping_method.as_deref(), Some("UPS Ground"));

    let order = dear
        .download(
            "sale_status = \"Any\"\nship_method_selection = \"none\"\nshipping_accounts = [\"2095\"]\nship_code_attribute = 1\n",
            id,
        )
        .await;
    assert_eq!(order.shipping_method, None);
    assert_header(&order, &dear.client.sale(id).await.unwrap());
    assert_ne!(order.version, by_account.version, "the method is content");
}
