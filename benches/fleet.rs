//! Many tenants through the fan-out (a benchmark, not a timed test): one schedule firing runs the
//! dispatcher, which enqueues one message per tenant on SQS; `workers` Lambda-like workers take
//! one message at a time (the template's BatchSize 1) and run that tenant's Order Download. Every
//! tenant is its own simulated DEAR account (60 calls a minute each) with a backlog of sales, its
//! own secret, the stack's DynamoDB table and its shared rate budget, all on the AWS emulator.
//! The warehouse ships what it receives while the runs go on: each delivered order it can ship
//! (a simple sale without batches, not yet fulfilled) becomes a shipment in one box, confirmed by
//! the Shipment Confirmation handler (`workers` more workers, one message at a time) on the same
//! accounts and budgets. Results: docs/benchmarks.md.
//!
//! cargo bench --bench fleet -- [tenants N] [workers W] [sales S]
//!
//! Defaults: 20 tenants, 20 workers, 10 sales each. It reports the time until every tenant's run
//! ended, each tenant's lag from the schedule firing to its run's end (p50 / p99), DEAR calls a
//! minute per account while it ran, throttled answers, and DynamoDB requests per order delivered
//! (counted by an interceptor on the SDK client, the rate budget's included) and the write units
//! they cost (`dearsync_aws::write_units`' model of DynamoDB's billing); for the shipments,
//! their lag from the order reaching the warehouse to DEAR holding the shipment, calls and
//! DynamoDB requests per shipment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::error::BoxError;
use dearsync_aws::write_units::{WriteMeter, WriteUnits};
use dearsync_aws::{DynamoStore, SecretsManagerCredentials, SqsRunQueue, testing};
use dearsync_core::state::{StateStore, TenantEntry};
use dearsync_core::{SystemClock, TenantId};
use order_download::{Deps, handle};
use serde_json::{Value, json};

const API_KEY: &str = "fleet-api-key";
const SIGNING: &str = "fleet-signing-key";

/// Counts the DynamoDB requests the store makes.
#[derive(Debug)]
struct CountRequests(Arc<AtomicU64>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What the warehouse received and has to ship.
#[derive(Default)]
struct Warehouse {
    /// Orders taken.
    received: AtomicU64,
    /// Per tenant: the sales it can ship (simple, without batches, not yet fulfilled).
    shippable: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Shipments waiting for a worker: tenant, its queue message body, when the order came.
    to_confirm: std::sync::Mutex<std::collections::VecDeque<(String, Value, Instant)>>,
}

impl Warehouse {
    /// Takes an order; one it can ship becomes a shipment of all its lines in one box.
    fn take(&self, tenant: &str, order: &Value) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let sale = order["sale_id"].as_str().unwrap_or_default();
        if !self.shippable.get(tenant).is_some_and(|s| s.contains(sale)) {
            return;
        }
        let lines: Vec<Value> = order["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| json!({ "sku": l["sku"], "quantity": l["quantity"] }))
            .collect();
        let shipment = json!({
            "shipment_id": format!("WMS-{sale}"),
            "sale_id": sale,
            "ship_date": chrono::Utc::now().date_naive().to_string(),
            "carrier": "UPS",
            "service": "Ground",
            "packages": [{ "box": "CTN-1", "tracking_number": format!("1Z{}", &sale[..8]), "lines": lines }],
        });
        let body = json!({ "tenant": tenant, "shipment": shipment });
        let mut queue = self.to_confirm.lock().unwrap();
        queue.push_back((tenant.to_owned(), body, Instant::now()));
    }

    fn next(&self) -> Option<(String, Value, Instant)> {
        self.to_confirm.lock().unwrap().pop_front()
    }
}

/// A warehouse on 127.0.0.1 that takes every tenant's orders at `/orders/<tenant>`.
async fn warehouse(warehouse: Arc<Warehouse>) -> String {
    let app = axum::Router::new().route(
        "/orders/{tenant}",
        axum::routing::post(
            move |axum::extract::Path(tenant): axum::extract::Path<String>, body: String| {
                let w = warehouse.clone();
                async move {
                    match serde_json::from_str::<Value>(&body) {
                        Ok(order) => {
                            w.take(&tenant, &order);
                            axum::http::StatusCode::ACCEPTED
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/orders")
}

/// What one shipment worker saw of one shipment.
struct Confirmed {
    /// From the order reaching the warehouse to DEAR holding the shipment.
    lag: Duration,
    applied: bool,
}

/// Confirms the warehouse's shipments one at a time (an SQS batch of one each, as the template's
/// shipment queue delivers them) until the order runs are over and none is left.
async fn ship_worker(
    deps: Arc<Deps>,
    warehouse: Arc<Warehouse>,
    orders_done: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Confirmed> {
    let mut confirmed = Vec::new();
    loop {
        let Some((tenant, body, received)) = warehouse.next() else {
            if orders_done.load(Ordering::Relaxed) {
                return confirmed;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let event = json!({ "Records": [{
            "messageId": format!("ship-{tenant}-{}", confirmed.len()), "receiptHandle": "r",
            "body": body.to_string(), "eventSource": "aws:sqs", "awsRegion": "us-east-1",
        }]});
        let out = shipment_confirmation::handle(&deps, event)
            .await
            .expect("handled");
        confirmed.push(Confirmed {
            lag: received.elapsed(),
            applied: out["batchItemFailures"] == json!([]),
        });
    }
}

fn account(i: usize) -> String {
    format!("fleet-account-{i:04}")
}

/// What one worker saw of one tenant's run.
struct TenantRun {
    /// From the schedule firing to the run's end.
    lag: Duration,
    /// The run itself.
    took: Duration,
    delivered: u64,
}

/// Orders the run log says `tenant`'s runs delivered so far.
async fn delivered_so_far(deps: &Deps, tenant: &str) -> u64 {
    let tenant = TenantId::new(tenant).expect("a tenant id the bench made");
    deps.store
        .run_history(&tenant, dearsync_core::Job::OrderDownload)
        .await
        .ok()
        .flatten()
        .and_then(|h| h.totals.get("delivered").copied())
        .unwrap_or(0)
}

/// Takes one message at a time until the queue stays empty, as a Lambda worker with BatchSize 1.
async fn worker(deps: Arc<Deps>, queue: String, fired: Instant) -> Vec<(String, TenantRun)> {
    let sqs = testing::sqs();
    let mut runs = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let answer = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(1)
            .visibility_timeout(600)
            .send()
            .await
            .expect("receive");
        let Some(message) = answer.messages().first().cloned() else {
            empty += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        empty = 0;
        let body = message.body().unwrap_or_default().to_owned();
        let tenant = serde_json::from_str::<Value>(&body).unwrap()["tenant"]
            .as_str()
            .unwrap()
            .to_owned();
        let receipt = message.receipt_handle().unwrap_or_default().to_owned();
        let event = json!({ "Records": [{
            "messageId": message.message_id().unwrap_or_default().to_owned(), "receiptHandle": receipt,
            "body": body, "eventSource": "aws:sqs", "awsRegion": "us-east-1",
        }]});
        let started = Instant::now();
        let before = delivered_so_far(&deps, &tenant).await;
        let out = handle(&deps, event, "fleet", None).await.expect("handled");
        assert_eq!(out["batchItemFailures"], json!([]), "{tenant}: {out}");
        let after = delivered_so_far(&deps, &tenant).await;
        sqs.delete_message()
            .queue_url(&queue)
            .receipt_handle(&receipt)
            .send()
            .await
            .expect("delete");
        runs.push((
            tenant,
            TenantRun {
                lag: fired.elapsed(),
                took: started.elapsed(),
                delivered: after - before,
            },
        ));
    }
    runs
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(tenants: usize, workers: usize, sales: usize) {
    // One simulator, one DEAR account per tenant, each with its own backlog and rate limit.
    let config = dear_sim::SimConfig {
        rate_limit: 60,
        ..Default::default()
    };
    let spec = |i: usize| dear_sim::seed::SeedSpec {
        seed: 100 + i as u64,
        sales,
        products: 20,
        ..Default::default()
    };
    let sim = dear_sim::Sim::new(
        config,
        &account(0),
        API_KEY,
        dear_sim::seed::generate(&spec(0)),
    );
    for i in 1..tenants {
        sim.add_account(&account(i), API_KEY, dear_sim::seed::generate(&spec(i)));
    }
    let shippable = (0..tenants)
        .map(|i| {
            (
                format!("t{i:04}"),
                sim.with_data(&account(i), shippable).unwrap(),
            )
        })
        .collect();
    let server = dear_sim::start(sim, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let goods = Arc::new(Warehouse {
        shippable,
        ..Warehouse::default()
    });
    let webhook_url = warehouse(goods.clone()).await;

    // The stack: its table (requests counted), secrets, run queue.
    let requests = Arc::new(AtomicU64::new(0));
    let ship_requests = Arc::new(AtomicU64::new(0));
    let (meter, ship_meter) = (WriteMeter::default(), WriteMeter::default());
    let counted = |counter: &Arc<AtomicU64>, meter: &WriteMeter| {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&testing::sdk_config())
                .interceptor(CountRequests(counter.clone()))
                .interceptor(meter.clone())
                .build(),
        )
    };
    let dynamo = counted(&requests, &meter);
    let table = testing::fresh_table().await;
    let queue = testing::fresh_queue().await;
    let prefix = format!("fleet/{}/", dearsync_core::memory::new_token());
    let clock = Arc::new(SystemClock);
    let store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(dynamo, &table, clock.clone()));
    let ship_store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        counted(&ship_requests, &ship_meter),
        &table,
        clock.clone(),
    ));
    let secrets = testing::secrets_manager();
    let settings = |tenant: &str| {
        format!(
            "[order_download]\nsale_status = \"Any\"\nearliest_order_date = \"2020-01-01\"\nwebhook_url = \"{webhook_url}/{tenant}\"\n"
        )
    };
    for i in 0..tenants {
        let tenant = format!("t{i:04}");
        secrets
            .create_secret()
            .name(format!("{prefix}{tenant}"))
            .secret_string(
                json!({"account_id": account(i), "api_key": API_KEY, "order_webhook_secret": SIGNING})
                    .to_string(),
            )
            .send()
            .await
            .expect("create a secret");
        store
            .put_tenant(&TenantEntry {
                tenant: TenantId::new(&tenant).unwrap(),
                enabled: true,
                settings_toml: settings(&tenant),
            })
            .await
            .unwrap();
    }
    let deps_over = |store: Arc<dyn StateStore>| {
        Deps::new(
            store,
            Arc::new(SecretsManagerCredentials::new(
                secrets.clone(),
                &prefix,
                Duration::from_secs(600),
            )),
            server.base_url(),
            clock.clone(),
            dearsync_outbound::OutboundPolicy {
                allow_loopback: true,
            },
        )
    };
    let deps = Arc::new(
        deps_over(store).with_run_queue(Arc::new(SqsRunQueue::new(testing::sqs(), &queue))),
    );
    let ship_deps = Arc::new(deps_over(ship_store));
    let setup_requests = requests.load(Ordering::Relaxed);
    let setup_units = meter.units();

    // The schedule fires: the dispatcher enqueues every due tenant; the workers run them.
    let fired = Instant::now();
    let dispatched = handle(
        &deps,
        json!({ "detail-type": "Scheduled Event", "detail": {} }),
        "fleet-dispatch",
        None,
    )
    .await
    .expect("dispatched");
    let dispatch_took = fired.elapsed();
    let dispatch_requests = requests.load(Ordering::Relaxed) - setup_requests;
    assert_eq!(
        dispatched["enqueued"].as_array().map(Vec::len),
        Some(tenants),
        "{dispatched}"
    );
    // The workers interleave on this task (the handler's future is not `Send` for every
    // lifetime, as `tokio::spawn` wants); their waits are all I/O, as a Lambda worker's are.
    let orders_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let order_runs = async {
        let done = futures::future::join_all(
            (0..workers).map(|_| worker(deps.clone(), queue.clone(), fired)),
        )
        .await;
        orders_done.store(true, Ordering::Relaxed);
        done
    };
    let shipping = futures::future::join_all(
        (0..workers).map(|_| ship_worker(ship_deps.clone(), goods.clone(), orders_done.clone())),
    );
    let (workers_done, shipped) = futures::join!(order_runs, shipping);
    let mut runs: BTreeMap<String, TenantRun> = BTreeMap::new();
    for w in workers_done {
        runs.extend(w);
    }
    let all_done = fired.elapsed();
    let work_requests = requests.load(Ordering::Relaxed) - setup_requests - dispatch_requests;
    let shipments: Vec<Confirmed> = shipped.into_iter().flatten().collect();
    report(&Report {
        tenants,
        workers,
        sales,
        runs: &runs,
        all_done,
        dispatch_took,
        dispatch_requests,
        work_requests,
        delivered_at_warehouse: goods.received.load(Ordering::Relaxed),
        server: &server,
        shipments: &shipments,
        ship_requests: ship_requests.load(Ordering::Relaxed),
        units: meter.units().since(&setup_units),
        ship_units: ship_meter.units(),
    });
}

struct Report<'a> {
    tenants: usize,
    workers: usize,
    sales: usize,
    runs: &'a BTreeMap<String, TenantRun>,
    all_done: Duration,
    dispatch_took: Duration,
    dispatch_requests: u64,
    work_requests: u64,
    delivered_at_warehouse: u64,
    server: &'a dear_sim::SimServer,
    shipments: &'a [Confirmed],
    ship_requests: u64,
    /// Write units of the dispatcher and the order runs (modelled).
    units: WriteUnits,
    /// Write units of the shipments (modelled).
    ship_units: WriteUnits,
}

fn report(r: &Report) {
    assert_eq!(r.runs.len(), r.tenants, "every tenant ran once");
    let mut lags: Vec<f64> = r.runs.values().map(|t| t.lag.as_secs_f64()).collect();
    lags.sort_by(f64::total_cmp);
    let delivered: u64 = r.runs.values().map(|t| t.delivered).sum();
    // Per account: its calls, and its rate over the run when the run lasted a minute or more (a
    // shorter run's calls all fall inside one minute: compare the count with the limit).
    let (mut per_account, mut per_minute) = (Vec::new(), Vec::new());
    let (mut calls, mut throttled) = (0u64, 0u64);
    for (i, run) in r.runs.values().enumerate() {
        let stats = r.server.sim.calls(&account(i)).unwrap_or_default();
        calls += stats.total;
        throttled += stats.throttled;
        per_account.push(stats.total as f64);
        if run.took >= Duration::from_secs(60) {
            per_minute.push(stats.total as f64 * 60.0 / run.took.as_secs_f64());
        }
    }
    per_account.sort_by(f64::total_cmp);
    per_minute.sort_by(f64::total_cmp);
    println!(
        "{} tenants, {} workers, {} sales each: every tenant done {:.1} s after the schedule fired \
         (dispatch {:.2} s, {} DynamoDB requests)",
        r.tenants,
        r.workers,
        r.sales,
        r.all_done.as_secs_f64(),
        r.dispatch_took.as_secs_f64(),
        r.dispatch_requests
    );
    println!(
        "  lag per tenant (fired → run ended): p50 {:.1} s, p99 {:.1} s, max {:.1} s",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0)
    );
    println!(
        "  orders delivered {delivered} (the warehouse took {}); DEAR calls {calls} ({:.1} per tenant), \
         {throttled} throttled",
        r.delivered_at_warehouse,
        calls as f64 / r.tenants as f64
    );
    println!(
        "  DEAR calls per account: p50 {:.0}, max {:.0}; per minute over runs of a minute or more \
         ({} of them): p50 {:.1}, max {:.1} (limit 60 in any minute)",
        percentile(&per_account, 0.5),
        per_account.last().copied().unwrap_or(0.0),
        per_minute.len(),
        percentile(&per_minute, 0.5),
        per_minute.last().copied().unwrap_or(0.0)
    );
    println!(
        "  DynamoDB requests: {} for the runs = {:.1} per order, {:.1} per tenant",
        r.work_requests,
        r.work_requests as f64 / delivered.max(1) as f64,
        r.work_requests as f64 / r.tenants as f64
    );
    let per_order = |n: u64| n as f64 / delivered.max(1) as f64;
    println!(
        "  DynamoDB write units (modelled): ledger {:.2} per order (table {:.2}, gsi1 {:.2}, gsi2 \
         {:.2}); every write {:.2} per order (rate buckets, leases, cursors, run logs included)",
        per_order(r.units.ledger()),
        per_order(r.units.ledger_table),
        per_order(r.units.ledger_gsi1),
        per_order(r.units.ledger_gsi2),
        per_order(r.units.ledger() + r.units.other)
    );
    let mut ship_lags: Vec<f64> = r.shipments.iter().map(|c| c.lag.as_secs_f64()).collect();
    ship_lags.sort_by(f64::total_cmp);
    let applied = r.shipments.iter().filter(|c| c.applied).count();
    assert_eq!(applied, r.shipments.len(), "every shipment confirmed");
    println!(
        "  shipments confirmed {applied} while the runs went on: lag (order at the warehouse → \
         shipment in DEAR) p50 {:.1} s, p99 {:.1} s, max {:.1} s; DynamoDB requests {:.1} per shipment",
        percentile(&ship_lags, 0.5),
        percentile(&ship_lags, 0.99),
        ship_lags.last().copied().unwrap_or(0.0),
        r.ship_requests as f64 / applied.max(1) as f64
    );
    println!(
        "  shipments' write units (modelled): ledger {:.2}, every write {:.2} per shipment",
        r.ship_units.ledger() as f64 / applied.max(1) as f64,
        (r.ship_units.ledger() + r.ship_units.other) as f64 / applied.max(1) as f64
    );
}

/// The sales a warehouse can ship at once: simple, without batches, authorised, not voided and
/// with nothing fulfilled yet.
fn shippable(data: &dear_sim::model::Dataset) -> std::collections::BTreeSet<String> {
    let plain = data.plain_sale_ids();
    data.sales
        .values()
        .filter(|s| plain.contains(&s.id.to_string()))
        .filter(|s| {
            s.order_status == dear_sim::model::Stage::Authorised
                && !s.voided
                && s.fulfilments.iter().all(|f| {
                    f.pick.is_empty() && f.pick_status == dear_sim::model::Stage::NotAvailable
                })
        })
        .map(|s| s.id.to_string())
        .collect()
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this binary too, without `--bench`: a small smoke run then.
    let bench = all.iter().any(|a| a == "--bench");
    let value = |name: &str, default: usize| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (tenants, workers, sales) = if bench {
        (
            value("tenants", 20),
            value("workers", 20),
            value("sales", 10),
        )
    } else {
        (3, 2, 3)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(tenants, workers, sales));
}
