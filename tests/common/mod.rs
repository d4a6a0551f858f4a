//! What the end-to-end tests share: a state store of each kind, and the simulator-side oracles.

#![allow(dead_code)] // Each test binary uses its own part.

use std::sync::Arc;
use std::time::Duration;

use dear_client::{ApiKey, DearClient, DearConfig, RetryPolicy, SaleListItem, SaleType};
use dear_sim::SimServer;
use dearsync_core::{Clock, MemoryStore, StateStore};
use uuid::Uuid;

/// The DEAR account the simulator seeds.
pub const ACCOUNT: &str = dear_sim::DEFAULT_ACCOUNT_ID;

/// DEAR on the simulator with fast retries, unpaced (the simulator's limit is off in these tests;
/// the pacing is tested on its own), giving up on a call after `request_timeout`.
pub fn fast_client(server: &SimServer, request_timeout: Duration) -> Arc<DearClient> {
    let mut config = DearConfig::new(ACCOUNT, ApiKey::new(dear_sim::DEFAULT_API_KEY))
        .with_base_url(&server.base_url())
        .expect("valid URL");
    config.calls_per_minute = 0;
    config.retry = RetryPolicy {
        max_read_retries: 3,
        max_throttle_retries: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        throttle_pause: Duration::from_millis(20),
        request_timeout,
    };
    Arc::new(DearClient::new(config).expect("valid config"))
}

/// The kinds of state store the jobs run on. Adding a store adds a row to every job matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In memory (unit tests, the reference).
    Memory,
    /// The CLI's embedded SQLite store.
    Sqlite,
    /// The stack's DynamoDB table, on the AWS emulator (moto).
    Dynamo,
}

/// A store and whatever must live as long as it (a temporary directory, a fresh table).
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn StateStore>,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// A fresh, empty store of `kind` on `clock`.
pub async fn store_of(kind: StoreKind, clock: Arc<dyn Clock>) -> TestStore {
    match kind {
        StoreKind::Memory => TestStore {
            store: Arc::new(MemoryStore::new(clock)),
            _keep: Box::new(()),
        },
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let store = dearsync_store_sqlite::SqliteStore::open_dir(dir.path(), clock)
                .expect("the SQLite store opens");
            TestStore {
                store: Arc::new(store),
                _keep: Box::new(dir),
            }
        }
        StoreKind::Dynamo => {
            let table = dearsync_aws::testing::fresh_table().await;
            let store =
                dearsync_aws::DynamoStore::new(dearsync_aws::testing::dynamodb(), &table, clock);
            TestStore {
                store: Arc::new(store),
                _keep: Box::new(table),
            }
        }
    }
}

/// The oracle for the status filter, restated from the documented rules: simple sales by
/// `Status`; advanced sales when some of the sale reached the stage and not all moved past it.
pub fn selected(filter: &str, row: &SaleListItem) -> bool {
    let adv = row.sale_type == SaleType::Advanced;
    let c = |v: &Option<String>| v.clone().unwrap_or_default();
    let (pick, pack, ship) = (
        c(&row.combined_picking_status),
        c(&row.combined_packing_status),
        c(&row.combined_shipping_status),
    );
    let stage = |s: &str| -> bool {
        if adv {
            match s {
                "PICKED" => {
                    (pick == "PICKED" || pick == "PARTIALLY PICKED")
                        && pack != "PACKED"
                        && pack != "PACKING"
                }
                "PACKED" => {
                    (pack == "PACKED" || pack == "PARTIALLY PACKED")
                        && ship != "SHIPPED"
                        && ship != "SHIPPING"
                }
                "SHIPPING" => ship == "SHIPPING",
                other => row.status.as_str() == other,
            }
        } else {
            row.status.as_str() == s
        }
    };
    match filter {
        "Any" => true,
        "Packed & Shipping" => stage("PACKED") || stage("SHIPPING"),
        s => stage(s),
    }
}

/// Whether the simulator's sale is complete enough to deliver (the oracle for validation).
pub fn deliverable(server: &SimServer, id: Uuid) -> bool {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            let s = &d.sales[&id];
            let a = &s.shipping;
            ![&a.line1, &a.city, &a.postcode, &a.country]
                .iter()
                .any(|v| v.trim().is_empty())
                && !s.lines.is_empty()
                && !s.order_number.is_empty()
        })
        .expect("the simulator has the account")
}

/// DEAR writes the simulator has answered so far (every call but GETs).
pub fn writes(server: &SimServer) -> u64 {
    let calls = server
        .sim
        .calls(ACCOUNT)
        .expect("the simulator has the account");
    calls
        .by_route
        .iter()
        .filter(|(route, _)| !route.starts_with("GET"))
        .map(|(_, n)| *n)
        .sum()
}

/// A simulated sale's order lines as (SKU, whole quantity).
pub fn whole_lines(sale: &dear_sim::model::SimSale) -> Vec<(String, i64)> {
    sale.lines
        .iter()
        .map(|l| {
            let whole = l
                .quantity
                .trunc()
                .to_string()
                .parse()
                .expect("a quantity within i64");
            (l.sku.clone(), whole)
        })
        .collect()
}
