//! Order Download benchmarks (not timed tests): DEAR calls per delivered order, CPU time and peak
//! memory for 10,000 orders with the simulator's limit off, and the sustained call rate against a
//! 60-calls-a-minute DEAR. Results go into docs/benchmarks.md.
//!
//! cargo bench --bench order_download -- volume [SALES]     (default 10000)
//! cargo bench --bench order_download -- rate [SECONDS]     (default 240)
//!
//! The simulator runs as a separate `dearsync sim` process, so this process's CPU time and peak
//! memory are the job's alone (plus its embedded store and HTTP client).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dearsync_core::{Credentials, JobContext, SystemClock, TenantId, TenantSettings, connect};
use dearsync_order_download::{
    CanonicalOrder, OrderCancel, OrderDownload, OrderSink, RunOptions, SinkError,
};
use dearsync_store_sqlite::SqliteStore;

use common::{Sim, cpu_and_peak, start_sim};

struct CountingSink(AtomicU64);

#[async_trait]
impl OrderSink for CountingSink {
    async fn deliver(
        &self,
        order: &CanonicalOrder,
    ) -> Result<dearsync_order_download::Receipt, SinkError> {
        // Serialise as a real sink would, then drop it.
        let bytes = serde_json::to_vec(order).map_err(SinkError::Encode)?;
        std::hint::black_box(bytes);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(dearsync_order_download::Receipt::default())
    }

    async fn cancel(&self, cancel: &OrderCancel) -> Result<(), SinkError> {
        std::hint::black_box(serde_json::to_vec(cancel).map_err(SinkError::Encode)?);
        Ok(())
    }
}

fn job(sim: &Sim, dir: &std::path::Path, unlimited: bool) -> (OrderDownload, Arc<CountingSink>) {
    let tenant = TenantId::new("bench").unwrap();
    let settings = TenantSettings::from_toml(
        "[order_download]\nsale_status = \"Any\"\nearliest_order_date = \"2020-01-01\"\n",
    )
    .unwrap();
    let clock = Arc::new(SystemClock);
    let store = Arc::new(SqliteStore::open_dir(dir, clock.clone()).unwrap());
    let creds = Credentials::new(
        dear_sim::DEFAULT_ACCOUNT_ID.into(),
        dear_sim::DEFAULT_API_KEY.into(),
        &tenant,
        "bench",
    )
    .unwrap();
    let dear = connect::dear_client_or_unlimited(
        &creds,
        &sim.base_url,
        &settings.dear,
        store.clone(),
        clock.clone(),
        unlimited,
    )
    .unwrap();

    let sink = Arc::new(CountingSink(AtomicU64::new(0)));
    let job = OrderDownload {
        ctx: JobContext::new(tenant, Arc::new(dear), store, clock),
        settings: settings.order_download,
        sink: sink.clone(),
    };
    (job, sink)
}

async fn volume(sales: usize) {
    let sim = start_sim(sales, 200, 0);
    let dir = tempfile::tempdir().unwrap();
    let (job, sink) = job(&sim, dir.path(), true);
    let (cpu0, _) = cpu_and_peak();
    let started = Instant::now();
    let s = job.run(&RunOptions::default()).await;
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, peak) = cpu_and_peak();
    let delivered = sink.0.load(Ordering::Relaxed);
    let again = job.run(&RunOptions::default()).await;
    println!("volume: {sales} sales in DEAR, filter Any, state in SQLite, simulator limit off");
    println!(
        "  outcome {:?}; listed {}, fetched {}, delivered {delivered}, skipped {}",
        s.outcome,
        s.listed,
        s.fetched,
        s.skipped_total()
    );
    println!(
        "  DEAR calls {} = {:.4} per delivered order ({} listing pages + {} GET sale)",
        s.dear_calls,
        s.dear_calls as f64 / delivered.max(1) as f64,
        s.dear_calls - s.fetched,
        s.fetched
    );
    println!(
        "  wall {wall:.1} s; job CPU {:.2} s = {:.3} s per 1,000 orders; peak RSS {peak:.1} MB",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1000.0 / delivered.max(1) as f64
    );
    println!(
        "  second run: DEAR calls {}, fetched {}, delivered {}",
        again.dear_calls, again.fetched, again.delivered
    );
}

async fn rate(seconds: u64) {
    let sim = start_sim(2_000, 200, 60);
    let dir = tempfile::tempdir().unwrap();
    let (job, sink) = job(&sim, dir.path(), false);
    let opts = RunOptions {
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(seconds)),
        margin: Duration::ZERO,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let s = job.run(&opts).await;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let admin: serde_json::Value = reqwest::get(format!(
        "{}calls",
        sim.base_url.replace("ExternalApi/v2/", "admin/")
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    println!(
        "rate: DEAR simulator limited to 60 calls per sliding minute; the job's budget {:?}",
        TenantSettings::default().dear
    );
    println!("  ran {:.2} min, outcome {:?}", minutes, s.outcome);
    println!(
        "  DEAR calls {} = {:.1} per minute ({:.1}% of 60); throttled answers {} (client) / {} (simulator)",
        s.dear_calls,
        s.dear_calls as f64 / minutes,
        s.dear_calls as f64 / minutes / 60.0 * 100.0,
        s.throttled,
        admin["throttled"]
    );
    println!(
        "  most calls the simulator saw in any 60 s: {}; orders delivered {}",
        admin["max_in_window"],
        sink.0.load(Ordering::Relaxed)
    );
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo test --all-targets` runs this binary too, without `--bench`: a quick smoke run then.
    if !all.iter().any(|a| a == "--bench") {
        rt.block_on(volume(300));
        return;
    }
    let args: Vec<String> = all.into_iter().filter(|a| !a.starts_with("--")).collect();
    match args.first().map(String::as_str) {
        Some("rate") => rt.block_on(rate(
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(240),
        )),
        Some("volume") | None => rt.block_on(volume(
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000),
        )),
        Some(other) => eprintln!("unknown benchmark {other}; use volume or rate"),
    }
}
