//! Inventory Sync benchmarks (not timed tests): DEAR calls and wall time for 10,000 SKUs at DEAR's
//! 60-calls-a-minute pace, and peak memory for a 100,000-line snapshot. Results: docs/benchmarks.md.
//!
//! cargo bench --bench inventory_sync -- calls [SKUS]      (default 10000; simulator limited to 60/min)
//! cargo bench --bench inventory_sync -- memory [LINES]    (default 100000; simulator limit off)
//! cargo bench --bench inventory_sync -- csv [MB]          (default 50: a warehouse export of that size)

mod common;

use std::sync::Arc;
use std::time::Instant;

use dear_client::AvailabilityQuery;
use dearsync_core::{Credentials, JobContext, SystemClock, TenantId, TenantSettings, connect};
use dearsync_inventory_sync::{InventorySync, Snapshot};
use dearsync_store_sqlite::SqliteStore;
use futures::TryStreamExt;
use rust_decimal::Decimal;

use common::{Sim, cpu_and_peak, start_sim};

fn job(sim: &Sim, dir: &std::path::Path, unlimited: bool) -> InventorySync {
    let tenant = TenantId::new("bench").unwrap();
    let settings = TenantSettings::from_toml(
        "[inventory_sync]\nlocation = \"Main Warehouse\"\nprice_tier_name = \"Tier 1\"\nsubtract_orders_since_snapshot = false\n",
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

    InventorySync {
        ctx: JobContext::new(tenant, Arc::new(dear), store, clock),
        settings: settings.inventory_sync,
    }
}

/// A snapshot of everything stocked at Main, with every 33rd SKU different (a 3 % drift).
async fn snapshot_of(sim: &Sim, id: &str) -> (String, usize) {
    snapshot_differing(sim, id, "2026-11-20T06:00:00Z", 33).await
}

/// A snapshot of everything stocked at Main as of `as_of`, with every `every`th row 5 higher.
async fn snapshot_differing(sim: &Sim, id: &str, as_of: &str, every: usize) -> (String, usize) {
    let creds = Credentials::new(
        dear_sim::DEFAULT_ACCOUNT_ID.into(),
        dear_sim::DEFAULT_API_KEY.into(),
        &TenantId::new("b").unwrap(),
        "b",
    )
    .unwrap();
    let c = connect::unlimited_dear_client(&creds, &sim.base_url).unwrap();
    let q = AvailabilityQuery {
        location: Some("Main Warehouse".into()),
        ..Default::default()
    };
    let pages: Vec<_> = c
        .product_availability(&q, 1000)
        .try_collect()
        .await
        .unwrap();
    let mut lines = String::new();
    let mut n = 0;
    for (i, r) in pages.iter().flat_map(|p| &p.items).enumerate() {
        let q = r.on_hand.max(Decimal::ZERO)
            + if i % every == 0 {
                Decimal::from(5)
            } else {
                Decimal::ZERO
            };
        if n > 0 {
            lines.push(',');
        }
        let batch = r
            .batch
            .as_deref()
            .map(|b| format!("\"{b}\""))
            .unwrap_or_else(|| "null".into());
        lines.push_str(&format!(
            "{{\"sku\":\"{}\",\"quantity\":{q},\"batch\":{batch}}}",
            r.sku.as_deref().unwrap_or("")
        ));
        n += 1;
    }
    (
        format!("{{\"snapshot_id\":\"{id}\",\"as_of\":\"{as_of}\",\"lines\":[{lines}]}}"),
        n,
    )
}

async fn calls(skus: usize) {
    let sim = start_sim(10, skus, 60);
    let dir = tempfile::tempdir().unwrap();
    let (json, n) = snapshot_of(&sim, "BENCH-1").await;
    // The listing above went through the simulator's budget too: start the job's minute fresh.
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    let snapshot = Snapshot::from_json_reader(json.as_bytes()).unwrap();
    let j = job(&sim, dir.path(), false);
    let started = Instant::now();
    let s = j.sync(&snapshot, false).await.unwrap();
    println!(
        "calls: {skus} products in DEAR, {n} snapshot lines at Main, 3 % different; DEAR limited to 60/min, default budget"
    );
    println!(
        "  outcome {}; unchanged {}, adjusted {}, skipped {:?}, adjustments {}",
        s.outcome,
        s.unchanged,
        s.adjusted,
        s.skipped,
        s.adjustments.len()
    );
    println!(
        "  DEAR calls {} (availability + product pages, price tiers, {} POST); wall {:.1} s",
        s.dear_calls,
        s.adjustments.len(),
        started.elapsed().as_secs_f64()
    );
    // The next count: DEAR now holds the first one; four SKUs moved since.
    let (json, _) = snapshot_differing(&sim, "BENCH-2", "2026-11-20T07:00:00Z", 2_500).await;
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    let snapshot = Snapshot::from_json_reader(json.as_bytes()).unwrap();
    let started = Instant::now();
    let s = j.sync(&snapshot, false).await.unwrap();
    println!(
        "  next count, {} SKUs different: unchanged {}, adjusted {}; DEAR calls {} (availability pages, \
         one product read per changed SKU, price tiers, {} POST); wall {:.1} s",
        s.adjusted,
        s.unchanged,
        s.adjusted,
        s.dear_calls,
        s.adjustments.len(),
        started.elapsed().as_secs_f64()
    );
}

async fn memory(lines: usize) {
    let sim = start_sim(10, lines, 0);
    let dir = tempfile::tempdir().unwrap();
    let (json, n) = snapshot_of(&sim, "BENCH-M").await;
    let path = dir.path().join("snapshot.json");
    std::fs::write(&path, &json).unwrap();
    drop(json);
    let (_, peak_before) = cpu_and_peak();
    let (cpu0, _) = cpu_and_peak();
    let started = Instant::now();
    // As the CLI does: the snapshot is streamed from the file.
    let snapshot = Snapshot::from_json_reader(std::fs::File::open(&path).unwrap()).unwrap();
    let j = job(&sim, dir.path(), true);
    let s = j.sync(&snapshot, false).await.unwrap();
    let (cpu1, peak) = cpu_and_peak();
    println!(
        "memory: {lines} products, {n}-line snapshot streamed from a file, simulator limit off"
    );
    println!(
        "  outcome {}; unchanged {}, adjusted {}, adjustments {}, DEAR calls {}",
        s.outcome,
        s.unchanged,
        s.adjusted,
        s.adjustments.len(),
        s.dear_calls
    );
    println!(
        "  wall {:.1} s; job CPU {:.2} s; peak RSS {peak:.1} MB (before the sync: {peak_before:.1} MB)",
        started.elapsed().as_secs_f64(),
        cpu1 - cpu0
    );
}

/// A warehouse export of about `mb` MB as real systems write it (UTF-8 BOM, CRLF, every field
/// quoted, a description column the job ignores): DEAR's stocked SKUs at Main first, then SKUs DEAR
/// does not know until the size is reached.
async fn export_csv(sim: &Sim, path: &std::path::Path, mb: usize) -> (usize, usize) {
    use std::io::Write;
    let (json, _) = snapshot_of(sim, "X").await;
    let known = Snapshot::from_json_reader(json.as_bytes()).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(b"\xef\xbb\xbf\"Item SKU\",\"Description\",\"Lot\",\"Qty On Hand\"\r\n")
        .unwrap();
    let row = |sku: &str, lot: &str, q: &str| {
        format!("\"{sku}\",\"Counted item, shelf \"\"{sku}\"\"\",\"{lot}\",\"{q}\"\r\n")
    };
    let mut written = 0usize;
    for l in &known.lines {
        let line = row(
            &l.sku,
            l.batch.as_deref().unwrap_or(""),
            &l.quantity.to_string(),
        );
        written += line.len();
        out.write_all(line.as_bytes()).unwrap();
    }
    let mut unknown = 0;
    while written < mb * 1_000_000 {
        unknown += 1;
        let line = row(&format!("WH-ONLY-{unknown:08}"), "", "3");
        written += line.len();
        out.write_all(line.as_bytes()).unwrap();
    }
    out.flush().unwrap();
    (known.lines.len(), unknown)
}

async fn csv(mb: usize) {
    let sim = start_sim(10, 10_000, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.csv");
    let (known, unknown) = export_csv(&sim, &path, mb).await;
    let size = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
    let (cpu0, peak_before) = cpu_and_peak();
    let started = Instant::now();
    // As the CLI does: the file is streamed record by record.
    let options = dearsync_inventory_sync::CsvOptions::new(
        "BENCH-CSV",
        dearsync_inventory_sync::parse_instant("2026-11-20").unwrap(),
    );
    let snapshot =
        Snapshot::from_csv_reader(std::fs::File::open(&path).unwrap(), &options).unwrap();
    let (_, peak_parsed) = cpu_and_peak();
    let j = job(&sim, dir.path(), true);
    let s = j.sync(&snapshot, false).await.unwrap();
    let (cpu1, peak) = cpu_and_peak();
    println!(
        "csv: a {size:.1} MB export (BOM, CRLF, quoted), {known} SKUs DEAR knows + {unknown} it does not; 10000 products in DEAR"
    );
    println!(
        "  outcome {}; unchanged {}, adjusted {}, unknown SKUs {}, note {:?}",
        s.outcome,
        s.unchanged,
        s.adjusted,
        s.unknown_skus.len(),
        s.note
            .as_deref()
            .map(|n| n.chars().take(120).collect::<String>())
    );
    println!(
        "  wall {:.1} s; CPU {:.2} s; peak RSS {peak:.1} MB (before reading: {peak_before:.1} MB, after parsing: {peak_parsed:.1} MB)",
        started.elapsed().as_secs_f64(),
        cpu1 - cpu0
    );
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !all.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this too: a quick smoke run.
        rt.block_on(memory(300));
        return;
    }
    let args: Vec<String> = all.into_iter().filter(|a| !a.starts_with("--")).collect();
    let n = args.get(1).and_then(|s| s.parse().ok());
    match args.first().map(String::as_str) {
        Some("calls") | None => rt.block_on(calls(n.unwrap_or(10_000))),
        Some("memory") => rt.block_on(memory(n.unwrap_or(100_000))),
        Some("csv") => rt.block_on(csv(n.unwrap_or(50))),
        Some(other) => eprintln!("unknown benchmark {other}; use calls, memory or csv"),
    }
}
