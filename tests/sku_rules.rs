//! SKU rules end to end against the simulator: a tenant's `[sku_aliases]` applied both ways by
//! all three jobs (orders out under the warehouse's SKUs; shipments and inventory counts in under
//! them), and `include_skus` / `exclude_skus` on orders.

use std::sync::Arc;
use std::time::Duration;

use dear_client::StageStatus;
use dear_sim::SimServer;
use dear_sim::seed::SeedSpec;
use dearsync_core::state::{RecordKey, RecordState};
use dearsync_core::{Job, JobContext, MemoryStore, OffsetClock, TenantId, TenantSettings};
use dearsync_inventory_sync::{InventorySync, Snapshot};
use dearsync_order_download::OrderDownload;
use dearsync_shipment_confirmation::{Shipment, ShipmentConfirmation};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

mod common;
use common::{ACCOUNT, CollectingSink};

const MAIN: &str = "Main Warehouse";

async fn sim() -> SimServer {
    let spec = SeedSpec {
        seed: 5,
        sales: 200,
        products: 40,
        ..Default::default()
    };
    let config = dear_sim::SimConfig {
        rate_limit: 0,
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec).await.unwrap()
}

fn ctx(server: &SimServer) -> JobContext {
    let clock = Arc::new(OffsetClock::default());
    JobContext::new(
        TenantId::new("acme").unwrap(),
        common::fast_client(server, Duration::from_secs(2)),
        Arc::new(MemoryStore::new(clock.clone())),
        clock,
    )
}

/// A simple ORDERED sale of whole quantities at Main with at least two SKUs: its id and lines.
fn ordered_sale(server: &SimServer) -> (Uuid, Vec<(String, i64)>) {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            let main = d.locations.iter().find(|l| l.name == MAIN)?.id;
            d.sales
                .values()
                .filter(|s| {
                    !s.advanced
                        && s.location_id == main
                        && s.lines.len() >= 2
                        && dear_sim::rules::sale_status(s, Default::default()) == "ORDERED"
                        && s.lines.iter().all(|l| l.quantity.fract().is_zero())
                })
                .map(|s| (s.id, common::whole_lines(s)))
                .next()
        })
        .unwrap()
        .expect("the seed has a simple ORDERED sale with two SKUs at Main")
}

fn settings(toml: &str) -> TenantSettings {
    TenantSettings::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e}"))
}

#[tokio::test]
async fn aliases_rename_skus_both_ways_in_every_job_and_rules_pick_an_orders_lines() {
    let server = sim().await;
    let (sale, lines) = ordered_sale(&server);
    let (dear_sku, other_sku) = (lines[0].0.clone(), lines[1].0.clone());
    let aliases = format!("[sku_aliases]\n\"{dear_sku}\" = \"WMS-{dear_sku}\"\n");

    // Orders go out under the warehouse's SKU; the rest unchanged.
    let sink = Arc::new(CollectingSink::default());
    let download = |toml: String| OrderDownload {
        ctx: ctx(&server),
        settings: settings(&toml).order_download,
        sink: sink.clone(),
    };
    let plain = "[order_download]\nsale_status = \"Any\"\n";
    let job = download(format!("{plain}{aliases}"));
    assert_eq!(job.download_one(sale).await.delivered, 1);
    let order = sink.orders.lock().unwrap().pop().unwrap();
    let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
    assert!(
        skus.contains(&format!("WMS-{dear_sku}").as_str()),
        "{skus:?}"
    );
    assert!(skus.contains(&other_sku.as_str()) && !skus.contains(&dear_sku.as_str()));

    // include / exclude (exact or glob, on DEAR's SKUs): lines left out; none left is a skip.
    let job = download(format!("{plain}exclude_skus = [\"{other_sku}\"]\n"));
    job.download_one(sale).await;
    let order = sink.orders.lock().unwrap().pop().unwrap();
    assert!(order.lines.iter().all(|l| l.sku != other_sku), "excluded");
    let job = download(format!(
        "{plain}include_skus = [\"{}\", \"GIFT-*\"]\n",
        other_sku.to_lowercase()
    ));
    job.download_one(sale).await;
    let order = sink.orders.lock().unwrap().pop().unwrap();
    let kept: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(
        kept,
        [other_sku.as_str()],
        "only the included SKU, matched without case"
    );
    let job = download(format!("{plain}include_skus = [\"NOTHING-*\"]\n"));
    let s = job.download_one(sale).await;
    assert_eq!(
        (s.delivered, s.skipped.get("no_lines_after_rules")),
        (0, Some(&1)),
        "{s:?}"
    );
    let record = job
        .ctx
        .store
        .record(&RecordKey::new(
            &job.ctx.tenant,
            Job::OrderDownload,
            sale.to_string(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, RecordState::Skipped);

    // The warehouse ships under its SKU: DEAR is picked under its own.
    let confirm = ShipmentConfirmation {
        ctx: ctx(&server),
        settings: settings(&aliases).shipment_confirmation,
    };
    let packages: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, q))| {
            let theirs = if *sku == dear_sku { format!("WMS-{sku}") } else { sku.clone() };
            json!({ "box": format!("CTN-{i}"), "tracking_number": format!("T-{i}"), "lines": [{ "sku": theirs, "quantity": q }] })
        })
        .collect();
    let shipment = Shipment::from_json(
        &json!({ "shipment_id": "WMS-ALIAS-1", "sale_id": sale.to_string(), "ship_date": "2026-11-20",
                 "carrier": "UPS", "packages": packages })
        .to_string(),
    )
    .unwrap();
    let applied = confirm.confirm(&shipment).await.unwrap();
    assert_eq!(applied.action, "applied");
    let f = &confirm
        .ctx
        .dear
        .fulfilments(sale)
        .await
        .unwrap()
        .fulfilments[0];
    assert_eq!(f.ship.status, StageStatus::Authorised);
    assert!(
        f.pick
            .lines
            .iter()
            .any(|l| l.sku.as_deref() == Some(dear_sku.as_str()))
    );

    // The warehouse counts under its SKU: DEAR's level of its own SKU follows.
    let sync = InventorySync {
        ctx: ctx(&server),
        settings: settings(&format!(
            "[inventory_sync]\nlocation = \"{MAIN}\"\n{aliases}"
        ))
        .inventory_sync,
    };
    let before = common::on_hand(&server, MAIN).await;
    let target = before.get(&dear_sku).copied().unwrap_or_default() + Decimal::from(7);
    let snapshot = Snapshot::from_json_reader(
        json!({ "snapshot_id": "ALIAS-1", "as_of": "2026-11-20T06:00:00Z",
                "lines": [{ "sku": format!("WMS-{dear_sku}"), "quantity": target.to_string() }] })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let summary = sync.sync(&snapshot, false).await.unwrap();
    assert_eq!(
        (summary.adjusted, summary.unknown_skus.len()),
        (1, 0),
        "{summary:?}"
    );
    assert_eq!(common::on_hand(&server, MAIN).await[&dear_sku], target);
    // Both names of one SKU in one count cannot be told apart: refused, nothing written.
    let twice = Snapshot::from_json_reader(
        json!({ "snapshot_id": "ALIAS-2", "as_of": "2026-11-20T07:00:00Z",
                "lines": [{ "sku": format!("WMS-{dear_sku}"), "quantity": "1" }, { "sku": dear_sku, "quantity": "2" }] })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let refused = sync.sync(&twice, false).await.unwrap_err();
    assert!(refused.to_string().contains("listed twice"), "{refused}");
    // A table that cannot read both ways is refused when the settings are read.
    let both = TenantSettings::from_toml("[sku_aliases]\nA = \"X\"\nB = \"X\"\n").unwrap_err();
    assert!(both.to_string().contains("sku_aliases"), "{both}");
}
