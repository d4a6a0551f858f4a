//! What dear-sync's tests share (a dev-only crate): DEAR clients on the simulator, a state store of
//! each kind, an order sink that collects, and the simulator-side oracles.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dear_client::{
    ApiKey, AvailabilityQuery, DearClient, DearConfig, RetryPolicy, SaleListItem, SaleType,
};
use dear_sim::SimServer;
use dearsync_core::{Clock, MemoryStore, StateStore};
use dearsync_order_download::{CanonicalOrder, OrderCancel, OrderSink, SinkError};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use uuid::Uuid;

/// The DEAR account the simulator seeds.
pub const ACCOUNT: &str = dear_sim::DEFAULT_ACCOUNT_ID;

/// DEAR on the simulator with fast retries, unpaced (the simulator's limit is off in these tests;
/// the pacing is tested on its own), giving up on a call after `request_timeout`.
pub fn fast_client(server: &SimServer, request_timeout: Duration) -> Arc<DearClient> {
    fast_client_with(server, request_timeout, 3, 3)
}

/// [`fast_client`] retrying a failed read `read_retries` times and a throttled call
/// `throttle_retries` times.
pub fn fast_client_with(
    server: &SimServer,
    request_timeout: Duration,
    read_retries: u32,
    throttle_retries: u32,
) -> Arc<DearClient> {
    let mut config = DearConfig::new(ACCOUNT, ApiKey::new(dear_sim::DEFAULT_API_KEY))
        .with_base_url(&server.base_url())
        .expect("valid URL");
    config.calls_per_minute = 0;
    config.retry = RetryPolicy {
        max_read_retries: read_retries,
        max_throttle_retries: throttle_retries,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        throttle_pause: Duration::from_millis(20),
        request_timeout,
    };
    Arc::new(DearClient::new(config).expect("valid config"))
}

/// On hand per SKU at `location`, as DEAR reports it (batches and bins summed).
pub async fn on_hand(server: &SimServer, location: &str) -> BTreeMap<String, Decimal> {
    let q = AvailabilityQuery {
        location: Some(location.into()),
        ..Default::default()
    };
    let pages: Vec<_> = fast_client(server, Duration::from_secs(2))
        .product_availability(&q, 1000)
        .try_collect()
        .await
        .expect("the simulator lists availability");
    let mut m = BTreeMap::new();
    for r in pages.iter().flat_map(|p| &p.items) {
        *m.entry(r.sku.clone().expect("the simulator names every SKU"))
            .or_default() += r.on_hand;
    }
    m
}

/// Collects delivered orders; can be told to fail some sales' first deliveries.
#[derive(Default)]
pub struct CollectingSink {
    /// What was delivered, in order.
    pub orders: Mutex<Vec<CanonicalOrder>>,
    /// Sales whose next delivery fails (once) with a warehouse's 503.
    pub fail_once: Mutex<HashSet<String>>,
    /// Cancellations received, in order.
    pub cancels: Mutex<Vec<OrderCancel>>,
    /// Sales whose next cancellation fails (once) with a warehouse's 503.
    pub fail_cancel_once: Mutex<HashSet<String>>,
}

#[async_trait]
impl OrderSink for CollectingSink {
    async fn deliver(
        &self,
        order: &CanonicalOrder,
    ) -> Result<dearsync_order_download::Receipt, SinkError> {
        if self.fail_once.lock().unwrap().remove(&order.sale_id) {
            return Err(SinkError::NotTaken("HTTP 503 from the warehouse".into()));
        }
        self.orders.lock().unwrap().push(order.clone());
        Ok(dearsync_order_download::Receipt::default())
    }

    async fn cancel(&self, cancel: &OrderCancel) -> Result<(), SinkError> {
        if self
            .fail_cancel_once
            .lock()
            .unwrap()
            .remove(&cancel.sale_id)
        {
            return Err(SinkError::NotTaken("HTTP 503 from the warehouse".into()));
        }
        self.cancels.lock().unwrap().push(cancel.clone());
        Ok(())
    }
}

impl CollectingSink {
    /// The delivered orders' sale ids, in delivery order.
    pub fn sale_ids(&self) -> Vec<String> {
        self.orders
            .lock()
            .unwrap()
            .iter()
            .map(|o| o.sale_id.clone())
            .collect()
    }
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

/// A simulated DEAR account seeded with `sales` sales over `products` products (from `seed`),
/// its rate limit off (pacing is tested on its own).
pub async fn seeded_sim(seed: u64, sales: usize, products: usize) -> SimServer {
    let spec = dear_sim::seed::SeedSpec {
        seed,
        sales,
        products,
        ..Default::default()
    };
    let config = dear_sim::SimConfig {
        rate_limit: 0,
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec)
        .await
        .expect("the simulator starts")
}

/// A tenant secret for the simulated account with `inbound_secret`, plus `extra` keys.
pub fn sim_secret(inbound_secret: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut secret = serde_json::json!({
        "account_id": dear_sim::DEFAULT_ACCOUNT_ID,
        "api_key": dear_sim::DEFAULT_API_KEY,
        "inbound_secret": inbound_secret,
    });
    if let (Some(s), Some(e)) = (secret.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    secret
}
