//! A randomized fault campaign, shared by `tests/fault_campaign.rs` (fixed seeds, short) and
//! `benches/fault_campaign.rs` (the long run). Each job runs against the simulator on one store
//! with the default settings:
//! - DEAR faults of every kind the simulator has, on every route, some after the write was applied;
//! - the warehouse refuses some deliveries;
//! - runs killed at random moments (the job's future dropped mid-await: what was written stays,
//!   what was in memory is gone, as with SIGKILL);
//! - duplicate concurrent submissions, sales edited and voided between runs.
//!
//! When the faults stop, the job is run until it settles, and DEAR's state and the sink are
//! checked against what should have happened. Nothing lost, duplicated or wrong.

#![allow(dead_code)] // The test and the bench each use their part.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dear_client::{DearClient, SaleListItem, SaleListQuery};
use dear_sim::seed::SeedSpec;
use dear_sim::{Fault, FaultRule, SaleEdit, SimConfig, SimServer};
use dearsync_core::{Clock, JobContext, OffsetClock, TenantId, TenantSettings};
use dearsync_inventory_sync::{InventorySync, Snapshot};
use dearsync_order_download::{
    CanonicalOrder, OrderCancel, OrderDownload, OrderSink, RunOptions, SinkError, map_sale,
    validate,
};
use dearsync_shipment_confirmation::{Shipment, ShipmentConfirmation};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::common::{ACCOUNT, StoreKind, TestStore, deliverable, selected, store_of};

const MAIN: &str = "Main Warehouse";

/// What one campaign saw and found.
#[derive(Debug, Default)]
pub struct Tally {
    /// Job runs (or confirmation / sync attempts).
    pub runs: u64,
    /// Of them, killed mid-way.
    pub kills: u64,
    /// DEAR answers the simulator faulted.
    pub faults: u64,
    /// Orders, shipments or stock levels checked at the end.
    pub checked: u64,
    /// Expected in DEAR or at the warehouse and missing.
    pub lost: u64,
    /// There more than once.
    pub duplicated: u64,
    /// There, but not what it should be.
    pub wrong: u64,
    /// One line per problem, for the assertion message.
    pub problems: Vec<String>,
}

impl Tally {
    /// True when nothing was lost, duplicated or wrong.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.wrong == 0
    }

    fn problem(&mut self, kind: &str, text: String) {
        match kind {
            "lost" => self.lost += 1,
            "duplicated" => self.duplicated += 1,
            _ => self.wrong += 1,
        }
        self.problems.push(format!("{kind}: {text}"));
    }

    /// One line for a report.
    pub fn line(&self, job: &str, store: StoreKind) -> String {
        format!(
            "{job:<22} {store:<7?} runs {:>4}  kills {:>3}  faults {:>4}  checked {:>4}  lost {}  duplicated {}  wrong {}",
            self.runs,
            self.kills,
            self.faults,
            self.checked,
            self.lost,
            self.duplicated,
            self.wrong
        )
    }
}

/// A small deterministic generator (the campaign is reproducible from its seed).
pub struct Rng(fastrand::Rng);

impl Rng {
    /// From a seed.
    pub fn new(seed: u64) -> Self {
        Rng(fastrand::Rng::with_seed(seed))
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.f64() < p
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(0..n.max(1))
    }
}

/// Faults on every route, about `percent` of all calls: every kind the simulator plays, each
/// both before and after the request is applied.
fn fault_rules(server: &SimServer, percent: u64) {
    let kinds = [
        Fault::Status(429),
        Fault::Status(503),
        Fault::Status(500),
        Fault::Timeout,
        Fault::Drop,
        Fault::ErrorModel200(500),
        Fault::Html200,
    ];
    let rules = (kinds.len() * 2) as f64;
    for fault in kinds {
        for after_apply in [false, true] {
            server.sim.add_fault(
                ACCOUNT,
                FaultRule {
                    route: "*".into(),
                    probability: percent as f64 / 100.0 / rules,
                    fault: Some(fault.clone()),
                    after_apply,
                    latency_ms: 2,
                    ..Default::default()
                },
            );
        }
    }
}

fn faulted(server: &SimServer) -> u64 {
    server.sim.calls(ACCOUNT).map(|c| c.faulted).unwrap_or(0)
}

/// The simulator, its rate limit off (the budget is tested on its own), a short hang for timeouts.
pub async fn simulator(seed: u64, sales: usize, products: usize) -> SimServer {
    let spec = SeedSpec {
        seed,
        sales,
        products,
        ..Default::default()
    };
    let config = SimConfig {
        rate_limit: 0,
        hang_ms: 300,
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec)
        .await
        .expect("simulator starts")
}

/// DEAR with fast retries and a short timeout (the simulator hangs 300 ms on a timeout fault).
pub fn client(server: &SimServer) -> Arc<DearClient> {
    crate::common::fast_client(server, Duration::from_millis(200))
}

fn defaults() -> TenantSettings {
    TenantSettings::from_toml("").expect("the defaults are valid")
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// Runs `work`, killed after a random moment with probability `p_kill`; `true` if it finished.
async fn maybe_killed<F: std::future::Future>(
    rng: &mut Rng,
    p_kill: f64,
    tally: &mut Tally,
    work: F,
) -> Option<F::Output> {
    tally.runs += 1;
    if rng.chance(p_kill) {
        let after = Duration::from_millis(1 + rng.below(40));
        match tokio::time::timeout(after, work).await {
            Ok(out) => Some(out),
            Err(_) => {
                tally.kills += 1;
                // The killed run's requests in flight land or fail within the client's timeout
                // (200 ms here), as a dead worker's do within DEAR's 60 s before its claim lapses.
                tokio::time::sleep(Duration::from_millis(400)).await;
                None
            }
        }
    } else {
        Some(work.await)
    }
}

// ---------------------------------------------------------------------------------------------
// Order Download

/// The warehouse: every order it accepted, in order; refuses a share of deliveries.
#[derive(Default)]
struct Warehouse {
    orders: Mutex<Vec<CanonicalOrder>>,
    cancels: Mutex<Vec<OrderCancel>>,
    refuse_percent: Mutex<u64>,
    draws: Mutex<u64>,
}

#[async_trait]
impl OrderSink for Warehouse {
    async fn deliver(
        &self,
        order: &CanonicalOrder,
    ) -> Result<dearsync_order_download::Receipt, SinkError> {
        let refuse = {
            let mut n = self.draws.lock().unwrap();
            *n += 1;
            // Deterministic: every k-th delivery is refused.
            let p = *self.refuse_percent.lock().unwrap();
            p > 0 && (*n * 7919) % 100 < p
        };
        if refuse {
            return Err(SinkError::NotTaken("HTTP 503 from the warehouse".into()));
        }
        self.orders.lock().unwrap().push(order.clone());
        Ok(dearsync_order_download::Receipt::default())
    }

    async fn cancel(&self, cancel: &OrderCancel) -> Result<(), SinkError> {
        self.cancels.lock().unwrap().push(cancel.clone());
        Ok(())
    }
}

async fn all_rows(server: &SimServer) -> Vec<SaleListItem> {
    let pages: Vec<_> = client(server)
        .sale_list(&SaleListQuery::default(), 1000)
        .try_collect()
        .await
        .expect("the listing");
    pages.into_iter().flat_map(|p| p.items).collect()
}

/// Order Download under faults, kills, edits and concurrent runs.
pub async fn order_download(kind: StoreKind, seed: u64, rounds: usize) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let server = simulator(seed, 200, 40).await;
    let clock = Arc::new(OffsetClock::default());
    let kept: TestStore = store_of(kind, clock.clone()).await;
    let store = kept.store.clone();
    let warehouse = Arc::new(Warehouse::default());
    let settings = defaults();
    let filter = settings.order_download.sale_status.to_string();
    let job = Arc::new(OrderDownload {
        ctx: JobContext::new(tenant(), client(&server), store.clone(), clock.clone()),
        settings: settings.order_download.clone(),
        sink: warehouse.clone(),
    });
    let first_run = clock.now();
    let rows = all_rows(&server).await;
    let selected_ids: Vec<Uuid> = rows
        .iter()
        .filter(|r| selected(&filter, r))
        .map(|r| r.sale_id)
        .collect();
    assert!(selected_ids.len() >= 5, "the seed selects enough sales");

    *warehouse.refuse_percent.lock().unwrap() = 10;
    fault_rules(&server, 15);
    // Sales voided during the campaign → how many orders the warehouse had at that moment.
    let mut voided: HashMap<Uuid, usize> = HashMap::new();
    for round in 0..rounds {
        // Sales edited in DEAR between runs.
        for _ in 0..rng.below(3) {
            let id = selected_ids[rng.below(selected_ids.len() as u64) as usize];
            if voided.contains_key(&id) {
                continue;
            }
            let memo = format!("edit {round}-{}", rng.below(1000));
            let edit = SaleEdit {
                order_memo: Some(memo),
                ..Default::default()
            };
            server.sim.edit_sale(ACCOUNT, id, &edit).expect("edit");
        }
        // Sometimes a sale is voided (no run is working at this moment).
        if rng.chance(0.1) {
            let id = selected_ids[rng.below(selected_ids.len() as u64) as usize];
            if let std::collections::hash_map::Entry::Vacant(e) = voided.entry(id) {
                let void = SaleEdit {
                    void: true,
                    ..Default::default()
                };
                server.sim.edit_sale(ACCOUNT, id, &void).expect("void");
                e.insert(warehouse.orders.lock().unwrap().len());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Sometimes two runs at once (the lease lets one work).
        if rng.chance(0.15) {
            let (a, b) = (job.clone(), job.clone());
            let ra = tokio::spawn(async move { a.run(&RunOptions::default()).await });
            let rb = tokio::spawn(async move { b.run(&RunOptions::default()).await });
            let _ = (ra.await, rb.await);
            tally.runs += 2;
        } else {
            let _ = maybe_killed(&mut rng, 0.3, &mut tally, job.run(&RunOptions::default())).await;
        }
        // A killed run's lease lapses after 2 minutes; backoffs are 1 minute and up.
        clock.advance(chrono::Duration::minutes(1 + rng.below(3) as i64));
    }
    tally.faults = faulted(&server);

    // The faults stop; the job settles.
    server.sim.clear_faults(ACCOUNT);
    *warehouse.refuse_percent.lock().unwrap() = 0;
    for _ in 0..6 {
        clock.advance(chrono::Duration::hours(2));
        let s = job.run(&RunOptions::default()).await;
        tally.runs += 1;
        if s.delivered == 0 && s.failed == 0 && s.retried == 0 && s.fetched == 0 {
            break;
        }
    }
    check_orders(
        &server, &warehouse, &filter, first_run, &settings, &mut tally,
    )
    .await;
    // A voided sale is never delivered after the void, and one the warehouse had is cancelled
    // there exactly once (under its delivered version); one it never had is not.
    let orders = warehouse.orders.lock().unwrap().clone();
    let cancels = warehouse.cancels.lock().unwrap().clone();
    for (id, at) in &voided {
        tally.checked += 1;
        let id = id.to_string();
        if orders[*at..].iter().any(|o| o.sale_id == id) {
            tally.problem(
                "wrong",
                format!("sale {id} was delivered after it was voided"),
            );
        }
        let had = orders[..*at].iter().rev().find(|o| o.sale_id == id);
        let sent: Vec<_> = cancels.iter().filter(|c| c.sale_id == id).collect();
        match (had, sent.as_slice()) {
            // Never recorded delivered, but maybe in flight when a run was killed: a cancellation
            // the warehouse can ignore.
            (None, [] | [_]) => {}
            (Some(o), [c]) if c.version == o.version => {}
            (Some(_), []) => {
                // Recorded, not sent, when the warehouse had begun shipping it.
                let key = dearsync_core::state::RecordKey::new(
                    &tenant(),
                    dearsync_core::Job::OrderDownload,
                    id.clone(),
                );
                let rec = store.record(&key).await.ok().flatten();
                let reason = rec.and_then(|r| r.reason).unwrap_or_default();
                if !reason.starts_with("cancelled_after_shipping") {
                    tally.problem(
                        "lost",
                        format!("delivered sale {id} was voided and never cancelled ({reason})"),
                    );
                }
            }
            (_, more) => tally.problem(
                "duplicated",
                format!(
                    "sale {id}: {} cancellations for what the warehouse had",
                    more.len()
                ),
            ),
        }
    }
    tally
}

async fn check_orders(
    server: &SimServer,
    warehouse: &Warehouse,
    filter: &str,
    first_run: chrono::DateTime<chrono::Utc>,
    settings: &TenantSettings,
    tally: &mut Tally,
) {
    let orders = warehouse.orders.lock().unwrap().clone();
    let mut by_sale: HashMap<String, Vec<&CanonicalOrder>> = HashMap::new();
    for o in &orders {
        by_sale.entry(o.sale_id.clone()).or_default().push(o);
    }
    let dear = client(server);
    let cut_off = first_run - chrono::Duration::days(30);
    for row in all_rows(server).await {
        let id = row.sale_id.to_string();
        let sent = by_sale.remove(&id).unwrap_or_default();
        // The same content twice in a row under two ids would be applied twice.
        for pair in sent.windows(2) {
            if pair[0].version == pair[1].version && pair[0].delivery_id != pair[1].delivery_id {
                tally.problem(
                    "duplicated",
                    format!(
                        "sale {id}: version {} sent as {} and {}",
                        pair[0].version, pair[0].delivery_id, pair[1].delivery_id
                    ),
                );
            }
        }
        let in_window = row.updated.is_some_and(|u| u.to_utc() >= cut_off);
        if !selected(filter, &row) || !in_window {
            continue;
        }
        let sale = dear.sale(row.sale_id).await.expect("GET sale");
        let now = map_sale(&sale, &settings.order_download, None);
        let should_deliver = deliverable(server, row.sale_id) && validate(&now).is_ok();
        tally.checked += 1;
        match (should_deliver, sent.last()) {
            (true, None) => tally.problem("lost", format!("sale {id} was never delivered")),
            (true, Some(last)) if last.version != now.version => tally.problem(
                "lost",
                format!(
                    "sale {id}: the warehouse ends on version {}, DEAR's is {}",
                    last.version, now.version
                ),
            ),
            (false, Some(_)) => tally.problem(
                "wrong",
                format!("sale {id} is not deliverable but was delivered"),
            ),
            _ => {}
        }
    }
    for (id, _) in by_sale {
        tally.problem(
            "wrong",
            format!("sale {id} was delivered but is not in DEAR"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shipment Confirmation

/// ORDERED simple sales with whole quantities of at least 2 per line.
fn ordered_sales(server: &SimServer, n: usize) -> Vec<(Uuid, Vec<(String, i64)>)> {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            d.sales
                .values()
                .filter(|s| {
                    !s.advanced && dear_sim::rules::sale_status(s, Default::default()) == "ORDERED"
                })
                // Batch-tracked products need the warehouse's batch numbers: refused without.
                .filter(|s| {
                    !s.lines.is_empty()
                        && s.lines.iter().all(|l| {
                            l.quantity >= Decimal::from(2)
                                && l.quantity.fract().is_zero()
                                && !d
                                    .products
                                    .values()
                                    .any(|p| p.sku == l.sku && p.batch_tracked())
                        })
                })
                .take(n)
                .map(|s| (s.id, crate::common::whole_lines(s)))
                .collect()
        })
        .expect("the account")
}

fn a_shipment(
    id: &str,
    sale: Uuid,
    lines: &[(String, i64)],
    share: impl Fn(i64) -> i64,
) -> Shipment {
    let packages: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, q))| {
            json!({ "box": format!("{id}-B{i}"), "tracking_number": format!("TRK-{id}-{i}"),
                    "lines": [{ "sku": sku, "quantity": share(*q) }] })
        })
        .collect();
    Shipment::from_json(
        &json!({ "shipment_id": id, "sale_id": sale, "ship_date": "2026-11-20", "carrier": "UPS", "packages": packages })
            .to_string(),
    )
    .expect("a valid shipment")
}

/// Shipment Confirmation under faults, kills and duplicate submissions: complete and partial
/// shipments.
pub async fn shipments(kind: StoreKind, seed: u64, sales: usize) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let server = simulator(seed, 300, 40).await;
    let clock = Arc::new(OffsetClock::default());
    let kept: TestStore = store_of(kind, clock.clone()).await;
    let store = kept.store.clone();
    let job = Arc::new(ShipmentConfirmation {
        ctx: JobContext::new(tenant(), client(&server), store, clock.clone()),
        settings: defaults().shipment_confirmation,
    });
    let chosen = ordered_sales(&server, sales);
    assert!(chosen.len() >= sales.min(3), "the seed has ORDERED sales");
    // Each sale: shipped whole, or in two parts.
    let mut plan: Vec<(Uuid, Vec<Shipment>)> = Vec::new();
    for (i, (sale, lines)) in chosen.iter().enumerate() {
        let shipments = if rng.chance(0.5) {
            vec![a_shipment(&format!("S{seed}-{i}"), *sale, lines, |q| q)]
        } else {
            vec![
                a_shipment(&format!("S{seed}-{i}a"), *sale, lines, |q| q / 2),
                a_shipment(&format!("S{seed}-{i}b"), *sale, lines, |q| q - q / 2),
            ]
        };
        plan.push((*sale, shipments));
    }
    fault_rules(&server, 15);
    for (_, shipments) in &plan {
        for s in shipments {
            confirm_until_settled(&job, s, &clock, &mut rng, &mut tally).await;
        }
    }
    tally.faults = faulted(&server);
    server.sim.clear_faults(ACCOUNT);
    // A replay of every shipment changes nothing.
    let writes_before = crate::common::writes(&server);
    for (_, shipments) in &plan {
        for s in shipments {
            clock.advance(chrono::Duration::minutes(6));
            if let Err(e) = job.confirm(s).await {
                tally.problem("lost", format!("{}: after the faults: {e}", s.shipment_id));
            }
        }
    }
    if crate::common::writes(&server) != writes_before {
        tally.problem("duplicated", "a replay wrote to DEAR".into());
    }
    check_shipments(&job.ctx.dear, &plan, &mut tally).await;
    tally
}

/// Confirms until applied, as a queue would redeliver: retryable errors and kills are retried
/// (a killed attempt's claim lapses two minutes after its last renewal), sometimes with a duplicate at once.
async fn confirm_until_settled(
    job: &Arc<ShipmentConfirmation>,
    s: &Shipment,
    clock: &OffsetClock,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    for _ in 0..40 {
        if rng.chance(0.1) {
            let (a, b) = (job.clone(), job.clone());
            let (s1, s2) = (s.clone(), s.clone());
            let ra = tokio::spawn(async move { a.confirm(&s1).await });
            let rb = tokio::spawn(async move { b.confirm(&s2).await });
            tally.runs += 2;
            let (ra, rb) = (ra.await.expect("task"), rb.await.expect("task"));
            if ra.is_ok() || rb.is_ok() {
                return;
            }
        } else {
            match maybe_killed(rng, 0.35, tally, job.confirm(s)).await {
                Some(Ok(_)) => return,
                Some(Err(e)) if !e.is_retryable() => {
                    tally.problem("wrong", format!("{}: refused: {e}", s.shipment_id));
                    return;
                }
                _ => {}
            }
        }
        clock.advance(chrono::Duration::minutes(3));
    }
    tally.problem("lost", format!("{}: never applied", s.shipment_id));
}

async fn check_shipments(dear: &DearClient, plan: &[(Uuid, Vec<Shipment>)], tally: &mut Tally) {
    for (sale, shipments) in plan {
        let all = dear
            .fulfilments(*sale)
            .await
            .expect("fulfilments")
            .fulfilments;
        let used: Vec<_> = all.iter().filter(|f| !f.pick.lines.is_empty()).collect();
        tally.checked += shipments.len() as u64;
        if used.len() > shipments.len() {
            tally.problem(
                "duplicated",
                format!(
                    "sale {sale}: {} fulfilments for {} shipments",
                    used.len(),
                    shipments.len()
                ),
            );
        }
        let mut want: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut tracking: Vec<String> = Vec::new();
        for s in shipments {
            for ((sku, _), q) in s.quantities() {
                *want.entry(sku).or_default() += q;
            }
            tracking.extend(s.packages.iter().filter_map(|p| p.tracking_number.clone()));
        }
        let mut picked: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut packed: BTreeMap<String, Decimal> = BTreeMap::new();
        for f in &used {
            for l in &f.pick.lines {
                *picked.entry(l.sku.clone().unwrap_or_default()).or_default() += l.quantity;
            }
            for l in &f.pack.lines {
                *packed.entry(l.sku.clone().unwrap_or_default()).or_default() += l.quantity;
            }
        }
        for (name, got) in [("picked", &picked), ("packed", &packed)] {
            let got: BTreeMap<_, _> = got
                .iter()
                .filter(|(_, q)| !q.is_zero())
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if got != want {
                let kind = if got.values().sum::<Decimal>() > want.values().sum::<Decimal>() {
                    "duplicated"
                } else {
                    "lost"
                };
                tally.problem(
                    kind,
                    format!("sale {sale}: {name} {got:?}, shipped {want:?}"),
                );
            }
        }
        if !used
            .iter()
            .all(|f| f.ship.status == dear_client::StageStatus::Authorised)
        {
            tally.problem("lost", format!("sale {sale}: a fulfilment is not shipped"));
        }
        let mut in_dear: Vec<String> = used
            .iter()
            .flat_map(|f| {
                f.ship
                    .lines
                    .iter()
                    .filter_map(|l| l.tracking_number.clone())
            })
            .collect();
        in_dear.sort();
        tracking.sort();
        if in_dear != tracking {
            let kind = if in_dear.len() > tracking.len() {
                "duplicated"
            } else {
                "wrong"
            };
            tally.problem(
                kind,
                format!("sale {sale}: tracking {in_dear:?}, sent {tracking:?}"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inventory Sync

async fn levels(server: &SimServer) -> BTreeMap<String, Decimal> {
    crate::common::on_hand(server, MAIN).await
}

/// Inventory Sync under faults and kills: a series of counts of the same SKUs, each retried
/// until it is applied; DEAR ends on the last count.
pub async fn inventory(kind: StoreKind, seed: u64, snapshots: usize) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let server = simulator(seed, 20, 60).await;
    let clock = Arc::new(OffsetClock::default());
    let kept: TestStore = store_of(kind, clock.clone()).await;
    let store = kept.store.clone();
    let mut settings = defaults().inventory_sync;
    settings.location = Some(MAIN.into());
    // Several parts per snapshot, so kills land between parts and the next run resumes them.
    settings.max_lines_per_adjustment = 3;
    let job = InventorySync {
        ctx: JobContext::new(tenant(), client(&server), store, clock.clone()),
        settings,
    };
    let fifo: std::collections::BTreeSet<String> = server
        .sim
        .with_data(ACCOUNT, |d| {
            d.products
                .values()
                .filter(|p| !p.batch_tracked())
                .map(|p| p.sku.clone())
                .collect()
        })
        .expect("the account");
    let skus: Vec<String> = levels(&server)
        .await
        .into_iter()
        .filter(|(s, q)| fifo.contains(s) && *q > Decimal::ZERO)
        .map(|(s, _)| s)
        .take(12)
        .collect();
    assert!(skus.len() >= 5, "the seed stocks enough SKUs");
    // A sync makes few calls: a higher rate, so that each snapshot meets some.
    fault_rules(&server, 30);
    let mut last: BTreeMap<String, Decimal> = BTreeMap::new();
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    for n in 0..snapshots {
        // Counts of at least 1: the sanity guard would rightly hold a count that zeroes them.
        let counts: BTreeMap<String, Decimal> = skus
            .iter()
            .map(|s| (s.clone(), Decimal::from(1 + rng.below(40))))
            .collect();
        let lines: Vec<_> = counts
            .iter()
            .map(|(s, q)| json!({ "sku": s, "quantity": q.to_string() }))
            .collect();
        let as_of = base + chrono::Duration::minutes(n as i64);
        let snapshot = Snapshot::from_json_reader(
            json!({ "snapshot_id": format!("C{seed}-{n}"), "as_of": as_of.to_rfc3339(), "location": MAIN, "lines": lines })
                .to_string()
                .as_bytes(),
        )
        .expect("a valid snapshot");
        let mut applied = false;
        for _ in 0..40 {
            match maybe_killed(&mut rng, 0.25, &mut tally, job.sync(&snapshot, false)).await {
                Some(Ok(s)) if s.outcome == "applied" || s.outcome == "already_applied" => {
                    applied = true;
                    break;
                }
                Some(Ok(s)) if s.outcome == "in_progress" => {}
                Some(Ok(s)) => {
                    tally.problem(
                        "wrong",
                        format!(
                            "{}: outcome {} ({:?})",
                            snapshot.snapshot_id, s.outcome, s.note
                        ),
                    );
                    break;
                }
                Some(Err(e)) if !e.is_retryable() => {
                    tally.problem("wrong", format!("{}: refused: {e}", snapshot.snapshot_id));
                    break;
                }
                _ => {}
            }
            // A killed sync's claim lapses three minutes after its last renewal.
            clock.advance(chrono::Duration::minutes(4));
        }
        if applied {
            last = counts;
        } else {
            tally.problem("lost", format!("{} never applied", snapshot.snapshot_id));
        }
    }
    tally.faults = faulted(&server);
    server.sim.clear_faults(ACCOUNT);
    // Every part of every snapshot is posted once (its reference is unique among live adjustments).
    let mut references: BTreeMap<String, usize> = BTreeMap::new();
    server
        .sim
        .with_data(ACCOUNT, |d| {
            for a in d.adjustments.values() {
                if a.status != "VOIDED" && a.reference.starts_with(&format!("dear-sync C{seed}-")) {
                    *references.entry(a.reference.clone()).or_default() += 1;
                }
            }
        })
        .expect("the account");
    for (reference, n) in references.iter().filter(|(_, n)| **n > 1) {
        tally.problem("duplicated", format!("{reference}: posted {n} times"));
    }
    let now = levels(&server).await;
    for (sku, want) in &last {
        tally.checked += 1;
        let got = now.get(sku).copied().unwrap_or_default();
        if got != *want {
            tally.problem(
                "wrong",
                format!("{sku}: DEAR has {got}, the last count is {want}"),
            );
        }
    }
    tally
}
