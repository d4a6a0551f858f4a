//! The shared DEAR budget with three jobs at once on one account (a benchmark, not a timed test):
//! calls a minute used against the configured budget, DEAR's throttled answers, and the tokens the
//! budgets took, spent, gave back and dropped, and each lane's waits. Results: docs/benchmarks.md.
//!
//! cargo bench --bench budget -- [SECONDS] [memory|sqlite|dynamo] [fixed] [nolanes]
//!
//! SECONDS: how long the jobs run (default 120). The store the budget is kept in (default
//! memory and SQLite; `dynamo` is DynamoDB on the AWS emulator, with its requests and
//! conditional-write conflicts counted). `fixed`: tokens always taken in fixed batches (the
//! budget before it adapted to slow callers). `nolanes`: every job in one lane (before lanes).
//! The simulator allows 60 calls in any sliding minute; each job is its own process's DEAR client
//! with its own budget over the one store, as three Lambda functions are.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextRef,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

use dear_client::{ApiKey, DearClient, DearConfig, Lane};
use dearsync_aws::{DynamoStore, testing};
use dearsync_core::settings::DearSettings;
use dearsync_core::state::TokenBuckets;
use dearsync_core::{MemoryStore, SharedRateBudget, SystemClock, connect};
use dearsync_store_sqlite::SqliteStore;

use common::start_sim;

/// How a job calls DEAR: `burst` calls back to back, then `pause` (its other work), in its lane.
struct Caller {
    name: &'static str,
    burst: u32,
    pause: Duration,
    lane: Lane,
}

const CALLERS: [Caller; 3] = [
    // A shipment: read, pick, pack, ship, then the next message.
    Caller {
        name: "shipments",
        burst: 4,
        pause: Duration::from_millis(2000),
        lane: Lane::Shipments,
    },
    // A sale read, then its delivery to the warehouse's webhook.
    Caller {
        name: "order download",
        burst: 1,
        pause: Duration::from_millis(300),
        lane: Lane::Poll,
    },
    // An availability page, then planning it.
    Caller {
        name: "inventory",
        burst: 1,
        pause: Duration::from_millis(1500),
        lane: Lane::Inventory,
    },
];

/// Counts DynamoDB requests, the writes among them, and answers 400 (a lost conditional write:
/// the bucket is the only item the budget writes).
#[derive(Debug, Default)]
struct DynamoCounts {
    requests: AtomicU64,
    writes: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug)]
struct CountDynamo(Arc<DynamoCounts>);

impl Intercept for CountDynamo {
    fn name(&self) -> &'static str {
        "CountDynamo"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        if target.ends_with(".PutItem") {
            self.0.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().status().as_u16() == 400 {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// One store's run: per lane (calls, throttled, waits) and the budgets' (granted, used, given back,
/// dropped).
async fn run(store: Arc<dyn TokenBuckets>, base_url: &str, secs: u64, adaptive: bool, lanes: bool) {
    let settings = DearSettings::default();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for lane in &CALLERS {
        let mut budget_config = connect::budget_config(&settings);
        budget_config.adaptive = adaptive;
        let budget = Arc::new(SharedRateBudget::new(
            store.clone(),
            Arc::new(SystemClock),
            budget_config,
        ));
        let mut config = DearConfig::new(
            dear_sim::DEFAULT_ACCOUNT_ID,
            ApiKey::new(dear_sim::DEFAULT_API_KEY),
        )
        .with_base_url(base_url)
        .unwrap();
        config.calls_per_minute = settings.calls_per_minute;
        let dear = DearClient::with_budget(config, budget.clone()).unwrap();
        let dear = if lanes { dear.in_lane(lane.lane) } else { dear };
        tasks.push(tokio::spawn(async move {
            // Each call's time, request to answer: the simulator answers in a millisecond or two,
            // so this is the wait for the budget (what a priority lane would shorten).
            let mut waits = Vec::new();
            while Instant::now() < until {
                for _ in 0..lane.burst {
                    let asked = Instant::now();
                    if dear.me().await.is_err() {
                        break;
                    }
                    waits.push(asked.elapsed().as_secs_f64());
                }
                tokio::time::sleep(lane.pause).await;
            }
            waits.sort_by(f64::total_cmp);
            (lane.name, dear.stats(), budget.stats(), waits)
        }));
    }
    let (mut calls, mut throttled, mut dropped, mut granted, mut returned) = (0, 0, 0, 0, 0);
    for t in tasks {
        let (name, dear, budget, waits) = t.await.unwrap();
        let at = |q: f64| {
            waits
                .get(((waits.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "  {name:<15} calls {:>4}  throttled {:>2}  tokens granted {:>4} used {:>4} given back {:>3} dropped {:>3}  \
             wait p50 {:.2} s, p90 {:.2} s, max {:.2} s",
            dear.calls,
            dear.throttled,
            budget.granted,
            budget.used,
            budget.returned,
            budget.dropped,
            at(0.5),
            at(0.9),
            at(1.0)
        );
        calls += dear.calls;
        throttled += dear.throttled;
        dropped += budget.dropped;
        returned += budget.returned;
        granted += budget.granted;
    }
    let per_minute = calls as f64 * 60.0 / secs as f64;
    println!(
        "  all             {per_minute:.1} calls a minute = {:.1} % of the configured {}, {throttled} throttled, {returned} of {granted} tokens given back unspent, {dropped} dropped",
        per_minute * 100.0 / f64::from(settings.calls_per_minute),
        settings.calls_per_minute
    );
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo test --all-targets` runs this binary too, without `--bench`: a quick smoke run then.
    let bench = all.iter().any(|a| a == "--bench");
    let args: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs = if bench {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(120)
    } else {
        3
    };
    let adaptive = !args.contains(&"fixed");
    let lanes = !args.contains(&"nolanes");
    let stores: Vec<&str> = match args
        .iter()
        .find(|a| ["memory", "sqlite", "dynamo"].contains(a))
    {
        Some(one) => vec![one],
        None => vec!["memory", "sqlite"],
    };
    let sim = start_sim(10, 10, 60);
    for kind in stores {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(SystemClock);
        let counts = Arc::new(DynamoCounts::default());
        let store: Arc<dyn TokenBuckets> = match kind {
            "sqlite" => Arc::new(SqliteStore::open_dir(dir.path(), clock).unwrap()),
            "dynamo" => rt.block_on(async {
                let client = aws_sdk_dynamodb::Client::from_conf(
                    aws_sdk_dynamodb::config::Builder::from(&testing::sdk_config())
                        .interceptor(CountDynamo(counts.clone()))
                        .build(),
                );
                let table = testing::fresh_table().await;
                Arc::new(DynamoStore::new(client, &table, clock)) as Arc<dyn TokenBuckets>
            }),
            _ => Arc::new(MemoryStore::new(clock)),
        };
        counts.requests.store(0, Ordering::Relaxed);
        counts.writes.store(0, Ordering::Relaxed);
        println!(
            "{kind}: three jobs on one account for {secs} s, tokens {}, {}",
            if adaptive {
                "adaptive"
            } else {
                "in fixed batches"
            },
            if lanes { "in their lanes" } else { "one lane" }
        );
        rt.block_on(run(store, &sim.base_url, secs, adaptive, lanes));
        if kind == "dynamo" {
            let requests = counts.requests.load(Ordering::Relaxed);
            let writes = counts.writes.load(Ordering::Relaxed);
            let refused = counts.refused.load(Ordering::Relaxed);
            println!(
                "  DynamoDB        {requests} requests, {writes} conditional writes, {refused} of them lost ({:.1} %)",
                refused as f64 * 100.0 / writes.max(1) as f64
            );
        }
    }
}
