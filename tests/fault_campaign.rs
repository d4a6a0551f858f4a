//! The fault campaign, short: fixed seeds, each job on each store with the default settings.
//! The long run is `cargo bench --bench fault_campaign` (docs/reliability.md has its figures).

mod campaign;
mod common;

use common::StoreKind;

const STORES: [StoreKind; 3] = [StoreKind::Memory, StoreKind::Sqlite, StoreKind::Dynamo];

/// Every seed's run is clean, and the seeds together met faults and kills.
fn assert_clean(tallies: &[campaign::Tally], job: &str, store: StoreKind) {
    for tally in tallies {
        println!("{}", tally.line(job, store));
        assert!(
            tally.clean(),
            "{job} on {store:?}:\n{}",
            tally.problems.join("\n")
        );
    }
    let faults: u64 = tallies.iter().map(|t| t.faults).sum();
    let kills: u64 = tallies.iter().map(|t| t.kills).sum();
    assert!(
        faults > 0 && kills > 0,
        "{job} on {store:?}: {faults} faults, {kills} kills injected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_download_under_faults_kills_and_edits() {
    for store in STORES {
        let mut tallies = Vec::new();
        for seed in [1, 2] {
            tallies.push(campaign::order_download(store, seed, 25).await);
        }
        assert_clean(&tallies, "order download", store);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipments_under_faults_kills_and_duplicates() {
    for store in STORES {
        let mut tallies = Vec::new();
        for seed in [1, 2] {
            tallies.push(campaign::shipments(store, seed, 8).await);
        }
        assert_clean(&tallies, "shipment confirmation", store);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_under_faults_and_kills() {
    for store in STORES {
        let mut tallies = Vec::new();
        for seed in [1, 2] {
            tallies.push(campaign::inventory(store, seed, 5).await);
        }
        assert_clean(&tallies, "inventory sync", store);
    }
}
