//! `dearsync demo`: the whole integration on one machine, with no AWS account and no DEAR account.
//!
//! It starts the DEAR simulator with a seeded account, runs an Order Download into an NDJSON file
//! (the "warehouse"), confirms shipments for some of those orders as a warehouse would (a simple
//! one, a multi-box one, a partial one followed by the rest, a replay and a bad one), runs an
//! Inventory Sync from a warehouse count, and prints what happened, reading DEAR back to show it.
//! State lives in the embedded store, as with every local command.

use crate::exit::CliError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dear_client::{AvailabilityQuery, DearClient};
use dear_sim::SimServer;
use dearsync_core::state::{LedgerQuery, RecordState};
use dearsync_core::{Credentials, Job, JobContext, SystemClock, TenantId, TenantSettings, connect};
use dearsync_inventory_sync::{Action, InventorySync, Snapshot};
use dearsync_order_download::{NdjsonSink, OrderDownload, OrderSink, RunOptions};
use dearsync_shipment_confirmation::{Shipment, ShipmentConfirmation};
use dearsync_store_sqlite::SqliteStore;
use futures::TryStreamExt;
use serde_json::{Value, json};

/// Options of `dearsync demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the state store and the orders file here (a new or empty folder); default: a
    /// temporary folder removed at the end.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Seed of the simulated DEAR account's data.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Sales in the simulated account.
    #[arg(long, default_value_t = 150)]
    sales: usize,
    /// Run at DEAR's real pace: the simulator limits calls to 60 a minute and the jobs pace
    /// themselves with the rate budget, as in production (the demo then takes minutes).
    #[arg(long)]
    real_pace: bool,
}

const TENANT: &str = "demo";
const LOCATION: &str = "Main Warehouse";

/// The demo tenant's settings: ORDERED (authorised) sales go to the warehouse; stock at the main
/// warehouse follows the warehouse's counts.
const SETTINGS: &str = r#"
[order_download]
sale_status = "ORDERED"
earliest_order_date = "2020-01-01"

[inventory_sync]
location = "Main Warehouse"
price_tier_name = "Tier 1"
adjustment_reference = "WMS count {snapshot_id}"
"#;

/// Counts the simulator's DEAR calls per phase.
struct CallMeter<'a> {
    sim: &'a SimServer,
    last: u64,
    phases: Vec<(&'static str, u64)>,
}

impl<'a> CallMeter<'a> {
    fn new(sim: &'a SimServer) -> Self {
        Self {
            sim,
            last: 0,
            phases: Vec::new(),
        }
    }

    fn total(&self) -> u64 {
        self.sim
            .sim
            .calls(dear_sim::DEFAULT_ACCOUNT_ID)
            .map(|c| c.total)
            .unwrap_or(0)
    }

    /// Closes a phase; returns its calls.
    fn phase(&mut self, name: &'static str) -> u64 {
        let now = self.total();
        let used = now - self.last;
        self.last = now;
        self.phases.push((name, used));
        used
    }
}

/// Runs the demo, printing the report on stdout.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let temp;
    let dir: &Path = match &args.state_dir {
        Some(dir) => {
            if dir.exists()
                && std::fs::read_dir(dir)
                    .map_err(|e| format!("--state-dir {}: {e}", dir.display()))?
                    .next()
                    .is_some()
            {
                return Err(format!(
                    "--state-dir {} is not empty; the demo starts from a new DEAR account, so give it a new or empty folder",
                    dir.display()
                ).into());
            }
            dir
        }
        None => {
            temp =
                tempfile::tempdir().map_err(|e| format!("cannot make a temporary folder: {e}"))?;
            temp.path()
        }
    };

    let demo = Demo::start(&args, dir).await?;
    let mut meter = CallMeter::new(&demo.sim);
    let orders = demo.download(dir, &mut meter).await?;
    demo.ship(&orders, &mut meter).await?;
    demo.count(&mut meter).await?;
    demo.report(&meter);
    Ok(())
}

/// The demo's DEAR (a seeded simulator), its tenant and the jobs' shared parts.
struct Demo {
    sim: SimServer,
    /// The tenant, DEAR, the SQLite store and the clock every job of the demo shares.
    ctx: JobContext,
    settings: TenantSettings,
}

impl Demo {
    /// Starts the simulator and the store in `dir`, and says what the demo runs against.
    async fn start(args: &DemoArgs, dir: &Path) -> Result<Demo, CliError> {
        let spec = dear_sim::seed::SeedSpec {
            seed: args.seed,
            sales: args.sales,
            products: 40,
            ..Default::default()
        };
        let config = dear_sim::SimConfig {
            rate_limit: if args.real_pace { 60 } else { 0 },
            ..Default::default()
        };
        let sim = dear_sim::start_seeded(config, &spec)
            .await
            .map_err(|e| format!("cannot start the DEAR simulator: {e}"))?;
        let tenant = TenantId::new(TENANT).map_err(|e| e.to_string())?;
        let clock = Arc::new(SystemClock);
        let store = Arc::new(SqliteStore::open_dir(dir, clock.clone()).map_err(|e| e.to_string())?);
        let settings =
            TenantSettings::from_toml(SETTINGS).map_err(|e| format!("demo settings: {e}"))?;
        let credentials = Credentials::new(
            dear_sim::DEFAULT_ACCOUNT_ID.into(),
            dear_sim::DEFAULT_API_KEY.into(),
            &tenant,
            "the simulator",
        )
        .map_err(|e| e.to_string())?;
        let dear = Arc::new(
            connect::dear_client_or_unlimited(
                &credentials,
                &sim.base_url(),
                &settings.dear,
                store.clone(),
                clock.clone(),
                !args.real_pace,
            )
            .map_err(|e| e.to_string())?,
        );
        println!("dear-sync demo");
        println!(
            "  DEAR: the simulator at {} ({} sales, {} products, seed {}){}",
            sim.base_url(),
            args.sales,
            spec.products,
            args.seed,
            if args.real_pace {
                ", limited to 60 calls/min"
            } else {
                ", rate limit off (pass --real-pace for DEAR's 60 calls/min)"
            }
        );
        println!(
            "  state: {} (SQLite){}",
            dir.join("state.sqlite3").display(),
            if args.state_dir.is_some() {
                ""
            } else {
                ", removed at the end (keep it with --state-dir)"
            }
        );

        Ok(Demo {
            sim,
            ctx: JobContext::new(tenant, dear, store, clock),
            settings,
        })
    }

    /// 1. Order download: the ORDERED sales as canonical orders in `dir/orders.ndjson`.
    async fn download(
        &self,
        dir: &Path,
        meter: &mut CallMeter<'_>,
    ) -> Result<Vec<Value>, CliError> {
        let Demo { ctx, settings, .. } = self;
        let orders_path = dir.join("orders.ndjson");
        let sink: Arc<dyn OrderSink> =
            Arc::new(NdjsonSink::file(&orders_path).map_err(|e| e.to_string())?);
        let download = OrderDownload {
            ctx: ctx.clone(),
            settings: settings.order_download.clone(),
            sink,
        };
        let summary = download.run(&RunOptions::default()).await;
        let orders = read_orders(&orders_path)?;
        println!();
        println!(
            "1. Order download (sale status ORDERED) → {}",
            orders_path.display()
        );
        println!(
            "   {} sales listed, {} delivered to the warehouse, {} skipped, {} failed; {} DEAR calls",
            summary.listed,
            summary.delivered,
            summary.skipped_total(),
            summary.failed,
            meter.phase("order download")
        );
        for order in orders.iter().take(5) {
            println!(
                "   delivered {:<10} {:<28} {} line(s), total {} {}",
                text(&order["order_number"]),
                text(&order["ship_to"]["name"]),
                order["lines"].as_array().map_or(0, Vec::len),
                text(&order["total"]),
                text(&order["currency"]),
            );
        }
        if orders.len() > 5 {
            println!("   … and {} more", orders.len() - 5);
        }
        let skipped = ctx
            .store
            .list(&LedgerQuery::new(
                &ctx.tenant,
                Job::OrderDownload,
                RecordState::Skipped,
            ))
            .await
            .map_err(|e| e.to_string())?;
        for record in skipped.records.iter().take(8) {
            let detail: Option<Value> = record
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok());
            let number = detail
                .as_ref()
                .and_then(|d| d.get("order_number"))
                .and_then(Value::as_str)
                .unwrap_or(&record.key.entity);
            println!(
                "   skipped   {number:<10} {}",
                record.reason.as_deref().unwrap_or("")
            );
        }
        if summary.delivered == 0 {
            return Err("the order download delivered nothing; nothing to ship".into());
        }
        Ok(orders)
    }

    /// 2. Shipment confirmation: the warehouse ships the orders; each is read back from DEAR.
    async fn ship(&self, orders: &[Value], meter: &mut CallMeter<'_>) -> Result<(), CliError> {
        let Demo { sim, ctx, settings } = self;
        println!();
        println!("2. Shipment confirmation (the warehouse reports what it shipped)");
        let confirm = ShipmentConfirmation {
            ctx: ctx.clone().in_lane(dearsync_core::Lane::Shipments),
            settings: settings.shipment_confirmation.clone(),
        };
        // The demo's warehouse ships simple sales of products without batches (a real one would
        // report the batches it picked; the canonical shipment carries them).
        let plain = plain_sales(sim);
        let plan = plan_shipments(orders, &plain)?;
        let (started_at, mut applied, mut refused) = (ctx.clock.now(), 0, 0);
        for (label, shipment) in &plan {
            let parsed = Shipment::from_json(&shipment.to_string())
                .map_err(|e| format!("the demo built an invalid shipment: {e}"))?;
            match confirm.confirm(&parsed).await {
                Ok(c) => {
                    applied += u64::from(c.action == "applied");
                    let boxes: Vec<String> = c
                        .boxes
                        .iter()
                        .map(|b| {
                            format!(
                                "{} {}",
                                b.r#box,
                                b.tracking_number.as_deref().unwrap_or("(no tracking)")
                            )
                        })
                        .collect();
                    // Read the sale back: what DEAR shows after this shipment.
                    let id = c
                        .sale_id
                        .parse()
                        .map_err(|e| format!("sale id {}: {e}", c.sale_id))?;
                    let sale = ctx.dear.sale(id).await.map_err(|e| e.to_string())?;
                    println!(
                        "   {label:<18} {} {:<9} {:<9} fulfilment {} · {} {} → DEAR: {}",
                        c.shipment_id,
                        c.order_number,
                        c.action,
                        c.fulfilment_number.map_or("-".into(), |n| n.to_string()),
                        c.carrier,
                        boxes.join(", "),
                        sale.combined_shipping_status.unwrap_or_default()
                    );
                }
                Err(e) => {
                    refused += 1;
                    println!(
                        "   {label:<18} {} refused, nothing written: {e}",
                        shipment["shipment_id"].as_str().unwrap_or("")
                    )
                }
            }
        }
        let report = dearsync_shipment_confirmation::confirmations_report(
            started_at,
            ctx.clock.now(),
            plan.len() as u64 - refused,
            refused,
            0,
        );
        let job = dearsync_core::Job::ShipmentConfirmation;
        dearsync_core::run_log::record_or_warn(ctx.store.as_ref(), &ctx.tenant, job, &report).await;
        println!(
            "   {applied} shipments applied; {} DEAR calls",
            meter.phase("shipments")
        );

        Ok(())
    }

    /// 3. Inventory sync: the warehouse's count becomes DEAR's stock, once.
    async fn count(&self, meter: &mut CallMeter<'_>) -> Result<(), CliError> {
        let Demo { ctx, settings, .. } = self;
        println!();
        println!("3. Inventory sync ({LOCATION}: the warehouse's count becomes DEAR's stock)");
        let snapshot = warehouse_count(&ctx.dear).await?;
        let sync = InventorySync {
            ctx: ctx.clone().in_lane(dearsync_core::Lane::Inventory),
            settings: settings.inventory_sync.clone(),
        };
        let result = sync
            .sync(&snapshot, false)
            .await
            .map_err(|e| format!("inventory sync: {e}"))?;
        println!(
            "   snapshot {}: {} lines, {} unchanged, {} adjusted, {} held for review; outcome {}",
            result.snapshot_id,
            result.lines_read,
            result.unchanged,
            result.adjusted,
            result.held_for_review,
            result.outcome
        );
        println!(
            "   {:<16} {:>10} {:>10} {:>8}  action",
            "sku", "DEAR was", "count", "change"
        );
        for line in &result.plan {
            let action = match &line.action {
                Action::Unchanged => "unchanged".to_owned(),
                Action::Adjust => "adjusted".to_owned(),
                Action::Review => "held for review (DRAFT)".to_owned(),
                Action::Skip(why) => format!("skipped: {why}"),
            };
            println!(
                "   {:<16} {:>10} {:>10} {:>+8}  {action}",
                line.sku,
                line.dear_now.normalize(),
                line.target.normalize(),
                line.change.normalize()
            );
        }
        if !result.unknown_skus.is_empty() {
            println!(
                "   unknown to DEAR (reported, never created): {}",
                result.unknown_skus.join(", ")
            );
        }
        for (reference, task) in &result.adjustments {
            println!("   stock adjustment {task}: {reference}");
        }
        let again = sync
            .sync(&snapshot, false)
            .await
            .map_err(|e| format!("inventory sync (repeat): {e}"))?;
        println!(
            "   the same snapshot again: {}; {} DEAR calls",
            again.outcome,
            meter.phase("inventory sync")
        );

        Ok(())
    }

    /// The DEAR calls each step made, and where to look closer.
    fn report(&self, meter: &CallMeter<'_>) {
        let sim = &self.sim;
        println!();
        println!("DEAR calls");
        let mut total = 0;
        for (phase, calls) in &meter.phases {
            println!("   {phase:<16} {calls:>5}");
            total += calls;
        }
        println!("   {:<16} {total:>5}", "total");
        if let Some(stats) = sim.sim.calls(dear_sim::DEFAULT_ACCOUNT_ID) {
            let routes: BTreeMap<_, _> = stats.by_route.iter().collect();
            let text: Vec<String> = routes.iter().map(|(r, n)| format!("{r} {n}")).collect();
            println!("   by endpoint: {}", text.join(", "));
            println!("   throttled (429): {}", stats.throttled);
        }
        println!();
        println!("Look closer (with --state-dir kept):");
        println!("   dearsync status --state-dir <dir> --tenant {TENANT}");
        println!("   dearsync orders list --state-dir <dir> --tenant {TENANT}");
        println!("   dearsync orders show --state-dir <dir> --tenant {TENANT} <order number>");
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn read_orders(path: &Path) -> Result<Vec<Value>, CliError> {
    let body = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| CliError::with(format!("{} line {}", path.display(), i + 1), e))
        })
        .collect()
}

/// The simulated account's simple (not advanced) sales whose products all go without batches.
fn plain_sales(sim: &SimServer) -> std::collections::BTreeSet<String> {
    sim.sim
        .with_data(
            dear_sim::DEFAULT_ACCOUNT_ID,
            dear_sim::model::Dataset::plain_sale_ids,
        )
        .unwrap_or_default()
}

/// An order line: SKU and quantity.
type OrderLine = (String, rust_decimal::Decimal);

/// Lines of an order, batch-free lines only (the warehouse picks those freely).
fn order_lines(order: &Value) -> Vec<OrderLine> {
    order["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["batch"].is_null())
        .filter_map(|l| {
            let sku = l["sku"].as_str()?.to_owned();
            let qty = l["quantity"].as_str()?.parse().ok()?;
            Some((sku, qty))
        })
        .collect()
}

fn line(sku: &str, qty: rust_decimal::Decimal) -> Value {
    json!({ "sku": sku, "quantity": qty.normalize().to_string() })
}

/// What the warehouse ships: a simple order in one box; an order in two boxes (one tracking
/// number each); an order shipped in part and then in full; a replay; and a shipment naming a SKU
/// that is not on the order.
fn plan_shipments(
    orders: &[Value],
    plain: &std::collections::BTreeSet<String>,
) -> Result<Vec<(&'static str, Value)>, CliError> {
    use rust_decimal::Decimal;
    let simple: Vec<&Value> = orders
        .iter()
        .filter(|o| o["sale_id"].as_str().is_some_and(|id| plain.contains(id)))
        .filter(|o| {
            let lines = order_lines(o);
            !lines.is_empty() && lines.len() == o["lines"].as_array().map_or(0, Vec::len)
        })
        .collect();
    let two = Decimal::from(2);
    let mut used = std::collections::BTreeSet::new();
    let mut take = |pred: &dyn Fn(&[OrderLine]) -> bool| -> Option<&Value> {
        let found = simple
            .iter()
            .find(|o| !used.contains(o["sale_id"].as_str().unwrap_or("")) && pred(&order_lines(o)))
            .copied();
        if let Some(o) = found {
            used.insert(o["sale_id"].as_str().unwrap_or("").to_owned());
        }
        found
    };
    let single = take(&|_| true).ok_or("no order to ship")?;
    let multi = take(&|l| l.len() >= 2 || l.iter().any(|(_, q)| *q >= two))
        .ok_or("no order with two lines or two units to ship in two boxes")?;
    let partial = take(&|l| l.iter().any(|(_, q)| *q >= two))
        .ok_or("no order with a line of two units to ship in part")?;

    let shipment = |id: &str, order: &Value, carrier: &str, packages: Vec<Value>| {
        json!({
            "shipment_id": id,
            "sale_id": order["sale_id"],
            "ship_date": chrono::Utc::now().date_naive().to_string(),
            "carrier": carrier,
            "service": "Ground",
            "packages": packages,
        })
    };
    let mut tracking = 0;
    let mut package = |box_name: &str, lines: Vec<Value>| {
        tracking += 1;
        json!({ "box": box_name, "tracking_number": format!("1Z999AA1{tracking:08}"), "lines": lines })
    };

    let mut plan = Vec::new();
    let lines = order_lines(single);
    let one_box = shipment(
        "WMS-1001",
        single,
        "UPS",
        vec![package(
            "CTN-1",
            lines.iter().map(|(s, q)| line(s, *q)).collect(),
        )],
    );
    plan.push(("one box", one_box.clone()));

    // Two boxes: the lines split between them, or one line's units split.
    let lines = order_lines(multi);
    let (first, second): (Vec<Value>, Vec<Value>) = if lines.len() >= 2 {
        let (a, b) = lines.split_at(1);
        (
            a.iter().map(|(s, q)| line(s, *q)).collect(),
            b.iter().map(|(s, q)| line(s, *q)).collect(),
        )
    } else {
        let (sku, qty) = &lines[0];
        let half = (*qty / two).floor();
        (vec![line(sku, half)], vec![line(sku, *qty - half)])
    };
    plan.push((
        "two boxes",
        shipment(
            "WMS-1002",
            multi,
            "FedEx",
            vec![package("CTN-1", first), package("CTN-2", second)],
        ),
    ));

    // In part, then the rest.
    let lines = order_lines(partial);
    let (sku, qty) = lines
        .iter()
        .find(|(_, q)| *q >= two)
        .ok_or("no line of two units")?;
    let now = (*qty / two).floor();
    plan.push((
        "partial (1 of 2)",
        shipment(
            "WMS-1003",
            partial,
            "USPS",
            vec![package("CTN-1", vec![line(sku, now)])],
        ),
    ));
    let mut rest: Vec<Value> = lines
        .iter()
        .map(|(s, q)| {
            if s == sku {
                line(s, *q - now)
            } else {
                line(s, *q)
            }
        })
        .collect();
    rest.retain(|l| l["quantity"] != "0");
    plan.push((
        "the rest (2 of 2)",
        shipment("WMS-1004", partial, "USPS", vec![package("CTN-2", rest)]),
    ));

    plan.push(("replayed", one_box));
    let wrong = shipment(
        "WMS-1005",
        single,
        "UPS",
        vec![package("CTN-9", vec![line("NOT-ON-ORDER", Decimal::ONE)])],
    );
    plan.push(("wrong SKU", wrong));
    Ok(plan)
}

/// The warehouse's count at the main location: DEAR's own levels with a few differences (found
/// stock, shrinkage, a SKU counted to zero) and one SKU DEAR does not know.
async fn warehouse_count(dear: &DearClient) -> Result<Snapshot, CliError> {
    use rust_decimal::Decimal;
    let query = AvailabilityQuery {
        location: Some(LOCATION.into()),
        ..Default::default()
    };
    let pages: Vec<_> = dear
        .product_availability(&query, 1000)
        .try_collect()
        .await
        .map_err(|e| format!("read DEAR's stock: {e}"))?;
    let mut levels: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut with_batches = std::collections::BTreeSet::new();
    for row in pages.iter().flat_map(|p| &p.items) {
        let Some(sku) = &row.sku else { continue };
        if row.batch.as_deref().is_some_and(|b| !b.is_empty()) {
            with_batches.insert(sku.clone());
        }
        *levels.entry(sku.clone()).or_default() += row.on_hand;
    }
    // The demo counts SKUs without batches (batch stock is counted per batch).
    levels.retain(|sku, _| !with_batches.contains(sku));
    let mut lines = Vec::new();
    for (i, (sku, on_hand)) in levels.iter().enumerate() {
        let on_hand = (*on_hand).max(Decimal::ZERO);
        let counted = match i {
            0 => on_hand + Decimal::from(12),
            1 => (on_hand - Decimal::from(3)).max(Decimal::ZERO),
            2 => Decimal::ZERO,
            3 => on_hand + Decimal::from(5),
            _ => on_hand,
        };
        lines.push(json!({ "sku": sku, "quantity": counted.normalize().to_string() }));
    }
    lines.push(json!({ "sku": "WMS-ONLY-42", "quantity": "7" }));
    let snapshot = json!({
        "snapshot_id": format!("WMS-COUNT-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")),
        "as_of": chrono::Utc::now().to_rfc3339(),
        "location": LOCATION,
        "lines": lines,
    });
    Snapshot::from_json_reader(snapshot.to_string().as_bytes())
        .map_err(|e| CliError::with("the demo built an invalid snapshot", e))
}
