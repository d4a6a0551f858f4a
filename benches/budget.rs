//! The shared DEAR budget with three jobs at once on one account (a benchmark, not a timed test):
//! calls a minute used against the configured budget, DEAR's throttled answers, and the tokens the
//! budgets took, spent and dropped. Results: docs/benchmarks.md.
//!
//! cargo bench --bench budget -- [SECONDS] [memory|sqlite] [fixed]
//!
//! SECONDS: how long the jobs run (default 120). The store the budget is kept in (default both).
//! `fixed`: tokens always taken in fixed batches (the budget before it adapted to slow callers).
//! The simulator allows 60 calls in any sliding minute; each job is its own process's DEAR client
//! with its own budget over the one store, as three Lambda functions are.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dear_client::{ApiKey, DearClient, DearConfig};
use dearsync_core::settings::DearSettings;
use dearsync_core::state::TokenBuckets;
use dearsync_core::{MemoryStore, SharedRateBudget, SystemClock, connect};
use dearsync_store_sqlite::SqliteStore;

use common::start_sim;

/// How a job calls DEAR: `burst` calls back to back, then `pause` (its other work).
struct Lane {
    name: &'static str,
    burst: u32,
    pause: Duration,
}

const LANES: [Lane; 3] = [
    // A shipment: read, pick, pack, ship, then the next message.
    Lane {
        name: "shipments",
        burst: 4,
        pause: Duration::from_millis(2000),
    },
    // A sale read, then its delivery to the warehouse's webhook.
    Lane {
        name: "order download",
        burst: 1,
        pause: Duration::from_millis(300),
    },
    // An availability page, then planning it.
    Lane {
        name: "inventory",
        burst: 1,
        pause: Duration::from_millis(1500),
    },
];

/// One store's run: per lane (calls, throttled) and the budgets' (granted, used, dropped).
async fn run(store: Arc<dyn TokenBuckets>, base_url: &str, secs: u64, adaptive: bool) {
    let settings = DearSettings::default();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for lane in &LANES {
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
    let (mut calls, mut throttled, mut dropped, mut granted) = (0, 0, 0, 0);
    for t in tasks {
        let (name, dear, budget, waits) = t.await.unwrap();
        let at = |q: f64| {
            waits
                .get(((waits.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "  {name:<15} calls {:>4}  throttled {:>2}  tokens granted {:>4} used {:>4} dropped {:>3}  \
             wait p50 {:.2} s, p90 {:.2} s, max {:.2} s",
            dear.calls,
            dear.throttled,
            budget.granted,
            budget.used,
            budget.dropped,
            at(0.5),
            at(0.9),
            at(1.0)
        );
        calls += dear.calls;
        throttled += dear.throttled;
        dropped += budget.dropped;
        granted += budget.granted;
    }
    let per_minute = calls as f64 * 60.0 / secs as f64;
    println!(
        "  all             {per_minute:.1} calls a minute = {:.1} % of the configured {}, {throttled} throttled, {dropped} of {granted} tokens dropped",
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
    let stores: Vec<&str> = match args.iter().find(|a| ["memory", "sqlite"].contains(a)) {
        Some(one) => vec![one],
        None => vec!["memory", "sqlite"],
    };
    let sim = start_sim(10, 10, 60);
    for kind in stores {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(SystemClock);
        let store: Arc<dyn TokenBuckets> = match kind {
            "sqlite" => Arc::new(SqliteStore::open_dir(dir.path(), clock).unwrap()),
            _ => Arc::new(MemoryStore::new(clock)),
        };
        println!(
            "{kind}: three jobs on one account for {secs} s, tokens {}",
            if adaptive {
                "adaptive"
            } else {
                "in fixed batches"
            }
        );
        rt.block_on(run(store, &sim.base_url, secs, adaptive));
    }
}
