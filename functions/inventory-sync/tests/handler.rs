//! The Inventory Sync handler with DynamoDB and Secrets Manager on the AWS emulator and DEAR from
//! the simulator: a snapshot by EventBridge, a chunked one by SQS, a scheduled pull, a push.

use std::collections::BTreeMap;
use std::sync::Arc;

use dear_client::{ApiKey, AvailabilityQuery, DearClient, DearConfig};
use dear_sim::seed::SeedSpec;
use dear_sim::{SimConfig, SimServer};
use futures::TryStreamExt;
use inventory_sync::{Deps, handle};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const MAIN: &str = "Main Warehouse";

async fn world(extra_settings: &str) -> (SimServer, Deps) {
    let spec = SeedSpec {
        seed: 9,
        sales: 20,
        products: 80,
        ..Default::default()
    };
    let sim = dear_sim::start_seeded(
        SimConfig {
            rate_limit: 0,
            ..Default::default()
        },
        &spec,
    )
    .await
    .unwrap();
    let emu = dearsync_function_support::testing::emulator_deps(&sim.base_url()).await;
    emu.put_secret(
        "acme",
        &json!({ "account_id": dear_sim::DEFAULT_ACCOUNT_ID, "api_key": dear_sim::DEFAULT_API_KEY, "inbound_secret": "s3" }),
    )
    .await;
    let settings = format!(
        "[dear]\ncalls_per_minute = 50\nburst = 10\n[inventory_sync]\nlocation = \"{MAIN}\"\nprice_tier_name = \"Tier 1\"\nsubtract_orders_since_snapshot = false\n{extra_settings}"
    );
    emu.put_tenant("acme", true, &settings).await;
    let deps = emu.deps;
    (sim, deps)
}

async fn levels(sim: &SimServer) -> BTreeMap<String, Decimal> {
    let c = DearClient::new(
        DearConfig::new(
            dear_sim::DEFAULT_ACCOUNT_ID,
            ApiKey::new(dear_sim::DEFAULT_API_KEY),
        )
        .with_base_url(&sim.base_url())
        .unwrap(),
    )
    .unwrap();
    let q = AvailabilityQuery {
        location: Some(MAIN.into()),
        ..Default::default()
    };
    let pages: Vec<_> = c
        .product_availability(&q, 1000)
        .try_collect()
        .await
        .unwrap();
    let mut m = BTreeMap::new();
    for r in pages.iter().flat_map(|p| &p.items) {
        *m.entry(r.sku.clone().unwrap()).or_default() += r.on_hand;
    }
    m
}

/// Snapshot lines: every FIFO SKU stocked at Main, at `now + delta` (never below 0).
async fn lines(sim: &SimServer, delta: i64) -> Vec<Value> {
    let fifo: std::collections::BTreeSet<String> = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.products
                .values()
                .filter(|p| !p.batch_tracked())
                .map(|p| p.sku.clone())
                .collect()
        })
        .unwrap();
    levels(sim)
        .await
        .into_iter()
        .filter(|(s, _)| fifo.contains(s))
        .map(|(s, q)| json!({ "sku": s, "quantity": (q.max(Decimal::ZERO) + Decimal::from(delta)).to_string() }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_by_eventbridge_and_a_chunked_one_by_sqs_are_applied_once() {
    let (sim, deps) = world("").await;
    let l = lines(&sim, 2).await;
    let event = json!({ "detail-type": "Inventory", "source": "wms", "detail": { "tenant": "acme", "snapshot": { "snapshot_id": "EB-1", "as_of": "2026-11-20T06:00:00Z", "lines": l } } });
    let out = handle(&deps, event.clone()).await.unwrap();
    assert_eq!(out["outcome"], "applied", "{out}");
    assert_eq!(out["adjusted"].as_u64().unwrap() as usize, l.len());
    assert_eq!(
        handle(&deps, event).await.unwrap()["outcome"],
        "already_applied"
    );

    // The same levels +3, in two chunks by SQS; the first waits for the second.
    let l = lines(&sim, 3).await;
    let half = l.len() / 2;
    let chunk = |part: u64, lines: &[Value]| {
        json!({ "tenant": "acme", "chunk": { "snapshot_id": "SQS-1", "as_of": "2026-11-20T07:00:00Z", "location": MAIN, "part": part, "parts": 2, "lines": lines } }).to_string()
    };
    let rec =
        |id: &str, body: String| json!({ "messageId": id, "body": body, "eventSource": "aws:sqs" });
    let out = handle(&deps, json!({ "Records": [rec("c1", chunk(1, &l[..half])), rec("bad", "{\"tenant\":\"acme\"}".into())] })).await.unwrap();
    assert_eq!(
        out,
        json!({ "batchItemFailures": [{ "itemIdentifier": "bad" }] })
    );
    let before = levels(&sim).await;
    let out = handle(
        &deps,
        json!({ "Records": [rec("c2", chunk(2, &l[half..]))] }),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({ "batchItemFailures": [] }));
    let after = levels(&sim).await;
    let changed = after
        .iter()
        .filter(|(s, q)| before.get(*s) != Some(q))
        .count();
    assert_eq!(changed, l.len(), "both chunks applied together");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_pull_and_a_push_through_the_function_url() {
    // The warehouse's snapshot endpoint on 127.0.0.1.
    let body = Arc::new(std::sync::Mutex::new(String::new()));
    let served = body.clone();
    let app = axum::Router::new().route(
        "/inventory.json",
        axum::routing::get(move || {
            let b = served.lock().unwrap().clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inventory.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (sim, deps) = world(&format!("snapshot_url = \"{url}\"\n")).await;
    let l = lines(&sim, 4).await;
    *body.lock().unwrap() =
        json!({ "snapshot_id": "PULL-1", "as_of": "2026-11-20T06:00:00Z", "lines": l }).to_string();
    let out = handle(&deps, json!({ "tenant": "acme" })).await.unwrap();
    assert_eq!(out["tenants"][0]["outcome"], "applied", "{out}");
    let out = handle(
        &deps,
        json!({ "detail-type": "Scheduled Event", "detail": {} }),
    )
    .await
    .unwrap();
    assert_eq!(out["tenants"][0]["outcome"], "already_applied", "{out}");

    let push = |secret: &str, body: Value| {
        json!({
            "rawPath": "/inventory/acme", "headers": { "x-dearsync-secret": secret }, "body": body.to_string(),
            "isBase64Encoded": false, "requestContext": { "http": { "method": "POST" } }
        })
    };
    let status = |v: &Value| v["statusCode"].as_u64().unwrap();
    let snap = json!({ "snapshot_id": "PUSH-1", "as_of": "2026-11-20T08:00:00Z", "lines": lines(&sim, 1).await });
    assert_eq!(
        status(&handle(&deps, push("wrong", snap.clone())).await.unwrap()),
        401
    );
    let bad = json!({ "snapshot_id": "PUSH-2", "as_of": "later", "lines": [] });
    let resp = handle(&deps, push("s3", bad)).await.unwrap();
    assert_eq!(status(&resp), 400);
    assert!(resp["body"].as_str().unwrap().contains("as_of"), "{resp}");
    let resp = handle(&deps, push("s3", snap)).await.unwrap();
    assert_eq!(status(&resp), 202, "{resp}");
}
