//! The fault campaign's long run: many seeds of each job on each store, with the default settings.
//!
//! ```sh
//! cargo bench --bench fault_campaign -- [SEEDS] [memory|sqlite|dynamo|all]
//! ```
//! SEEDS (default 20) per job and store; DynamoDB needs the AWS emulator (moto), started on demand
//! as in the tests. Prints one line per run and the totals; exits 1 if anything was lost,
//! duplicated or wrong.

#[path = "../tests/campaign/mod.rs"]
mod campaign;
#[path = "../tests/common/mod.rs"]
mod common;

use common::StoreKind;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let all: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this too, without `--bench`: then a smoke run of one seed on
    // memory (the short campaign on every store is tests/fault_campaign.rs).
    let smoke = !all.iter().any(|a| a == "--bench");
    let args: Vec<String> = all.into_iter().filter(|a| !a.starts_with("--")).collect();
    let seeds: u64 = match args.first().and_then(|a| a.parse().ok()) {
        Some(n) => n,
        None if smoke => 1,
        None => 20,
    };
    let stores: Vec<StoreKind> = match args.get(1).map(String::as_str) {
        Some("memory") => vec![StoreKind::Memory],
        Some("sqlite") => vec![StoreKind::Sqlite],
        Some("dynamo") => vec![StoreKind::Dynamo],
        None if smoke => vec![StoreKind::Memory],
        _ => vec![StoreKind::Memory, StoreKind::Sqlite, StoreKind::Dynamo],
    };
    let started = std::time::Instant::now();
    let mut totals: Vec<(String, campaign::Tally)> = Vec::new();
    for store in stores {
        for job in ["order download", "shipment confirmation", "inventory sync"] {
            let mut sum = campaign::Tally::default();
            for seed in 100..100 + seeds {
                let t = match job {
                    "order download" => campaign::order_download(store, seed, 40).await,
                    "shipment confirmation" => campaign::shipments(store, seed, 10).await,
                    _ => campaign::inventory(store, seed, 8).await,
                };
                for p in &t.problems {
                    println!("  seed {seed}: {p}");
                }
                sum.runs += t.runs;
                sum.kills += t.kills;
                sum.faults += t.faults;
                sum.checked += t.checked;
                sum.lost += t.lost;
                sum.duplicated += t.duplicated;
                sum.wrong += t.wrong;
            }
            println!("{}", sum.line(job, store));
            totals.push((job.to_owned(), sum));
        }
    }
    let bad = totals.iter().any(|(_, t)| !t.clean());
    println!(
        "{seeds} seeds per job and store in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        if bad {
            "PROBLEMS FOUND"
        } else {
            "0 lost, 0 duplicated, 0 wrong"
        }
    );
    if bad {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
