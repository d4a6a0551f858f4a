//! The job matrix: each job's end-to-end suite — the happy path, one fault, a rerun — on every
//! kind of state store (memory, SQLite, DynamoDB on the AWS emulator), with the **default**
//! settings a merchant starts with. A new store kind is one more row in `tests/common`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dear_client::{DearClient, SaleListItem, SaleListQuery};
use dear_sim::seed::SeedSpec;
use dear_sim::{Fault, FaultRule, SimConfig, SimServer};
use dearsync_core::{Clock, JobContext, OffsetClock, TenantId, TenantSettings};
use dearsync_inventory_sync::{InventorySync, Snapshot};
use dearsync_order_download::{OrderDownload, Outcome, RunOptions};
use dearsync_shipment_confirmation::{ConfirmError, Shipment, ShipmentConfirmation};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

mod common;
use common::{ACCOUNT, StoreKind, TestStore, deliverable, selected, store_of, writes};

const MAIN: &str = "Main Warehouse";

async fn sim() -> SimServer {
    let spec = SeedSpec {
        seed: 11,
        sales: 400,
        products: 60,
        ..Default::default()
    };
    let config = SimConfig {
        rate_limit: 0,
        hang_ms: 1_000,
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec)
        .await
        .expect("simulator starts")
}

/// DEAR with fast retries; the calls-per-minute pacing is the only departure from production
/// (the simulator's limit is off, and the pacing itself is tested on its own).
fn client(server: &SimServer) -> Arc<DearClient> {
    common::fast_client(server, Duration::from_millis(2_000))
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// Every setting at its default.
fn defaults() -> TenantSettings {
    TenantSettings::from_toml("").expect("the defaults are valid")
}

/// Collects orders; fails the first delivery of the sales it is told to.
type Warehouse = common::CollectingSink;

fn order_download(
    server: &SimServer,
    store: &TestStore,
    clock: Arc<OffsetClock>,
    sink: Arc<Warehouse>,
) -> OrderDownload {
    OrderDownload {
        ctx: JobContext::new(tenant(), client(server), store.store.clone(), clock),
        settings: defaults().order_download,
        sink,
    }
}

async fn all_rows(server: &SimServer) -> Vec<SaleListItem> {
    let pages: Vec<_> = client(server)
        .sale_list(&SaleListQuery::default(), 1000)
        .try_collect()
        .await
        .unwrap();
    pages.into_iter().flat_map(|p| p.items).collect()
}

/// Order Download with the defaults (PICKED, a first run looking back 30 days): every selected,
/// deliverable recent sale once, through a DEAR fault and a failed delivery, and nothing on a rerun.
async fn order_download_matrix(kind: StoreKind) {
    let server = sim().await;
    let clock = Arc::new(OffsetClock::default());
    let store = store_of(kind, clock.clone() as Arc<dyn Clock>).await;
    let warehouse = Arc::new(Warehouse::default());
    let job = order_download(&server, &store, clock.clone(), warehouse.clone());

    // The oracle: PICKED and deliverable; recent enough for the first run's 30 days (sales near
    // the cut-off may fall either side of it, so the lower bound is a day inside it).
    let now = chrono::Utc::now();
    let rows = all_rows(&server).await;
    let picked: Vec<&SaleListItem> = rows
        .iter()
        .filter(|r| selected("PICKED", r) && deliverable(&server, r.sale_id))
        .collect();
    let may: HashSet<String> = picked
        .iter()
        .filter(|r| {
            r.updated
                .is_some_and(|u| u.to_utc() > now - chrono::Duration::days(31))
        })
        .map(|r| r.sale_id.to_string())
        .collect();
    let must: HashSet<String> = picked
        .iter()
        .filter(|r| {
            r.updated
                .is_some_and(|u| u.to_utc() > now - chrono::Duration::days(29))
        })
        .map(|r| r.sale_id.to_string())
        .collect();
    assert!(
        must.len() >= 3,
        "{kind:?}: the seed has recent PICKED sales"
    );

    // One fault of each side: DEAR answers 503 once (retried by the client), and the warehouse
    // refuses one order once (retried by a later run when due).
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "sale".into(),
            sequence: [Fault::Status(503)].into(),
            ..Default::default()
        },
    );
    let refused = must.iter().next().unwrap().clone();
    warehouse.fail_once.lock().unwrap().insert(refused.clone());

    let first = job.run(&RunOptions::default()).await;
    assert_eq!(first.outcome, Outcome::Completed, "{kind:?}: {first:?}");
    assert_eq!(first.failed, 1, "{kind:?}: the refused order: {first:?}");
    assert!(first.first_run_since.is_some(), "{kind:?}: {first:?}");
    clock.advance(chrono::Duration::minutes(2));
    let retry = job.run(&RunOptions::default()).await;
    assert_eq!((retry.retried, retry.failed), (1, 0), "{kind:?}: {retry:?}");

    let delivered = warehouse.sale_ids();
    let once: HashSet<String> = delivered.iter().cloned().collect();
    assert_eq!(once.len(), delivered.len(), "{kind:?}: no order twice");
    assert!(
        once.contains(&refused),
        "{kind:?}: the refused order arrived"
    );
    assert!(
        once.is_superset(&must),
        "{kind:?}: missing {:?}",
        must.difference(&once)
    );
    assert!(
        once.is_subset(&may),
        "{kind:?}: not selected {:?}",
        once.difference(&may)
    );

    // A rerun: nothing fetched, nothing sent.
    let again = job.run(&RunOptions::default()).await;
    assert_eq!(
        (again.outcome.clone(), again.fetched, again.delivered),
        (Outcome::Completed, 0, 0),
        "{kind:?}: {again:?}"
    );
    assert_eq!(warehouse.sale_ids().len(), delivered.len());
}

/// A simple ORDERED sale with whole-unit lines: (id, lines as (SKU, quantity)).
fn ordered_sale(server: &SimServer) -> (Uuid, Vec<(String, i64)>) {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            d.sales
                .values()
                .filter(|s| {
                    !s.advanced
                        && dear_sim::rules::sale_status(s, Default::default()) == "ORDERED"
                        && s.lines.iter().all(|l| l.quantity.fract().is_zero())
                })
                .map(|s| (s.id, common::whole_lines(s)))
                .next()
        })
        .unwrap()
        .expect("the seed has a simple ORDERED sale")
}

/// Shipment Confirmation with the defaults: a two-box shipment through a refused pick write
/// (DEAR 503, nothing applied), applied on the retry, then a replay that writes nothing.
async fn shipment_confirmation_matrix(kind: StoreKind) {
    let server = sim().await;
    let clock = Arc::new(OffsetClock::default());
    let store = store_of(kind, clock.clone() as Arc<dyn Clock>).await;
    let job = ShipmentConfirmation {
        ctx: JobContext::new(tenant(), client(&server), store.store.clone(), clock),
        settings: defaults().shipment_confirmation,
    };
    let (sale, lines) = ordered_sale(&server);
    let packages: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, q))| json!({ "box": format!("CTN-{}", i + 1), "tracking_number": format!("1Z{i:08}"), "lines": [{ "sku": sku, "quantity": q }] }))
        .collect();
    let shipment = Shipment::from_json(
        &json!({ "shipment_id": "WMS-1", "sale_id": sale.to_string(), "ship_date": "2026-11-20",
                 "carrier": "UPS", "packages": packages })
        .to_string(),
    )
    .expect("a valid shipment");

    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "sale/fulfilment/pick".into(),
            method: Some("POST".into()),
            // More throttled answers than the client retries: the write fails, unapplied.
            sequence: vec![Fault::Status(503); 5].into(),
            ..Default::default()
        },
    );
    match job.confirm(&shipment).await {
        Err(e @ ConfirmError::Dear(_)) => assert!(e.is_retryable(), "{kind:?}: {e}"),
        other => panic!("{kind:?}: the refused pick is a transient failure: {other:?}"),
    }
    let applied = job.confirm(&shipment).await.expect("the retry applies it");
    assert_eq!(applied.action, "applied", "{kind:?}");
    let f = &job.ctx.dear.fulfilments(sale).await.unwrap().fulfilments[0];
    assert_eq!(f.task_id.to_string(), applied.task_id);
    assert_eq!(
        f.ship.status,
        dear_client::StageStatus::Authorised,
        "{kind:?}"
    );
    let mut tracking: Vec<String> = f
        .ship
        .lines
        .iter()
        .filter_map(|l| l.tracking_number.clone())
        .collect();
    tracking.sort();
    let want: Vec<String> = (0..lines.len()).map(|i| format!("1Z{i:08}")).collect();
    assert_eq!(tracking, want, "{kind:?}: one tracking number per box");

    let before = writes(&server);
    let replay = job.confirm(&shipment).await.unwrap();
    assert_eq!(
        (replay.action.as_str(), replay.task_id.as_str()),
        ("replayed", applied.task_id.as_str()),
        "{kind:?}"
    );
    assert_eq!(writes(&server), before, "{kind:?}: a replay writes nothing");
}

/// On hand per SKU at Main Warehouse, as DEAR reports it.
async fn on_hand(server: &SimServer) -> BTreeMap<String, Decimal> {
    common::on_hand(server, MAIN).await
}

fn fifo_skus(server: &SimServer) -> HashSet<String> {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            d.products
                .values()
                .filter(|p| !p.batch_tracked())
                .map(|p| p.sku.clone())
                .collect()
        })
        .unwrap()
}

/// Inventory Sync with the defaults (the snapshot names its location; orders delivered after the
/// snapshot are subtracted, read from the order ledger in the same store): DEAR ends at the
/// snapshot less those orders, through a refused POST, and a rerun is already applied.
async fn inventory_sync_matrix(kind: StoreKind) {
    let server = sim().await;
    let clock = Arc::new(OffsetClock::default());
    let store = store_of(kind, clock.clone() as Arc<dyn Clock>).await;
    let snapshot_time = chrono::Utc::now() - chrono::Duration::minutes(5);

    // Orders reach the warehouse after its count was taken.
    let warehouse = Arc::new(Warehouse::default());
    let od = order_download(&server, &store, clock.clone(), warehouse.clone());
    let run = od.run(&RunOptions::default()).await;
    assert_eq!(run.outcome, Outcome::Completed, "{kind:?}: {run:?}");
    let mut sold: BTreeMap<String, Decimal> = BTreeMap::new();
    for order in warehouse.orders.lock().unwrap().iter() {
        if order.location.as_deref() == Some(MAIN) {
            for l in &order.lines {
                *sold.entry(l.sku.clone()).or_default() += l.quantity;
            }
        }
    }

    // The count: FIFO SKUs with stock at Main, sold ones first; each 5 above DEAR plus what was
    // sold after the count, so the expected end is DEAR's level + 5 for every line.
    let before = on_hand(&server).await;
    let fifo = fifo_skus(&server);
    let mut skus: Vec<&String> = before
        .iter()
        .filter(|(s, q)| fifo.contains(*s) && **q > Decimal::ZERO)
        .map(|(s, _)| s)
        .collect();
    skus.sort_by_key(|s| !sold.contains_key(*s));
    skus.truncate(8);
    assert!(
        skus.iter().any(|s| sold.contains_key(*s)),
        "{kind:?}: some counted SKU was sold after the count ({sold:?})"
    );
    let five = Decimal::from(5);
    let lines: Vec<_> = skus
        .iter()
        .map(|s| {
            let q = before[*s] + five + sold.get(*s).copied().unwrap_or_default();
            json!({ "sku": s, "quantity": q.to_string() })
        })
        .collect();
    let snapshot = Snapshot::from_json_reader(
        json!({ "snapshot_id": "COUNT-1", "as_of": snapshot_time.to_rfc3339(), "location": MAIN, "lines": lines })
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let job = InventorySync {
        ctx: JobContext::new(tenant(), client(&server), store.store.clone(), clock),
        settings: defaults().inventory_sync,
    };

    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "stockadjustment".into(),
            method: Some("POST".into()),
            // More throttled answers than the client retries: the write fails, unapplied.
            sequence: vec![Fault::Status(503); 5].into(),
            ..Default::default()
        },
    );
    match job.sync(&snapshot, false).await {
        Err(e) if e.is_retryable() => {}
        other => panic!("{kind:?}: a refused POST is a transient failure: {other:?}"),
    }
    let applied = job
        .sync(&snapshot, false)
        .await
        .expect("the retry applies it");
    assert_eq!(applied.outcome, "applied", "{kind:?}: {applied:?}");
    let after = on_hand(&server).await;
    for s in &skus {
        assert_eq!(after[*s], before[*s] + five, "{kind:?}: {s}");
    }

    let writes_before = writes(&server);
    let again = job.sync(&snapshot, false).await.unwrap();
    assert_eq!(again.outcome, "already_applied", "{kind:?}");
    assert_eq!(
        writes(&server),
        writes_before,
        "{kind:?}: nothing written again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_download_on_memory() {
    order_download_matrix(StoreKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_download_on_sqlite() {
    order_download_matrix(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_download_on_dynamodb() {
    order_download_matrix(StoreKind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipment_confirmation_on_memory() {
    shipment_confirmation_matrix(StoreKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipment_confirmation_on_sqlite() {
    shipment_confirmation_matrix(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipment_confirmation_on_dynamodb() {
    shipment_confirmation_matrix(StoreKind::Dynamo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_sync_on_memory() {
    inventory_sync_matrix(StoreKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_sync_on_sqlite() {
    inventory_sync_matrix(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_sync_on_dynamodb() {
    inventory_sync_matrix(StoreKind::Dynamo).await;
}
