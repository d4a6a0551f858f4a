//! Many tenants through the fan-out (a benchmark, not a timed test): one schedule firing runs the
//! dispatcher, which enqueues one message per tenant on SQS; `workers` Lambda-like workers take
//! one message at a time (the template's BatchSize 1) and run that tenant's Order Download. Every
//! tenant is its own simulated DEAR account (60 calls a minute each) with a backlog of sales, its
//! own secret, the stack's DynamoDB table and its shared rate budget, all on the AWS emulator.
//! Results: docs/benchmarks.md.
//!
//! cargo bench --bench fleet -- [tenants N] [workers W] [sales S]
//!
//! Defaults: 20 tenants, 20 workers, 10 sales each. It reports the time until every tenant's run
//! ended, each tenant's lag from the schedule firing to its run's end (p50 / p99), DEAR calls a
//! minute per account while it ran, throttled answers, and DynamoDB requests per order delivered
//! (counted by an interceptor on the SDK client, the rate budget's included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::error::BoxError;
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

/// A warehouse on 127.0.0.1 that takes every order and counts them per tenant's account.
async fn warehouse() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/orders"), count)
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
    let server = dear_sim::start(sim, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let (webhook_url, received) = warehouse().await;

    // The stack: its table (requests counted), secrets, run queue.
    let requests = Arc::new(AtomicU64::new(0));
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&testing::sdk_config())
            .interceptor(CountRequests(requests.clone()))
            .build(),
    );
    let table = testing::fresh_table().await;
    let queue = testing::fresh_queue().await;
    let prefix = format!("fleet/{}/", dearsync_core::memory::new_token());
    let clock = Arc::new(SystemClock);
    let store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(dynamo, &table, clock.clone()));
    let secrets = testing::secrets_manager();
    let settings = format!(
        "[order_download]\nsale_status = \"Any\"\nearliest_order_date = \"2020-01-01\"\nwebhook_url = \"{webhook_url}\"\n"
    );
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
                settings_toml: settings.clone(),
            })
            .await
            .unwrap();
    }
    let deps = Arc::new(
        Deps::new(
            store,
            Arc::new(SecretsManagerCredentials::new(
                secrets,
                &prefix,
                Duration::from_secs(600),
            )),
            server.base_url(),
            clock,
            dearsync_outbound::OutboundPolicy {
                allow_loopback: true,
            },
        )
        .with_run_queue(Arc::new(SqsRunQueue::new(testing::sqs(), &queue))),
    );
    let setup_requests = requests.load(Ordering::Relaxed);

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
    let workers_done =
        futures::future::join_all((0..workers).map(|_| worker(deps.clone(), queue.clone(), fired)))
            .await;
    let mut runs: BTreeMap<String, TenantRun> = BTreeMap::new();
    for w in workers_done {
        runs.extend(w);
    }
    let all_done = fired.elapsed();
    let work_requests = requests.load(Ordering::Relaxed) - setup_requests - dispatch_requests;
    report(&Report {
        tenants,
        workers,
        sales,
        runs: &runs,
        all_done,
        dispatch_took,
        dispatch_requests,
        work_requests,
        delivered_at_warehouse: received.load(Ordering::Relaxed),
        server: &server,
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
