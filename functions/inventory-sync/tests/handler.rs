//! The Inventory Sync handler with DynamoDB and Secrets Manager on the AWS emulator and DEAR from
//! the simulator, with a merchant's default settings (only the location set): a snapshot by
//! EventBridge, a chunked one by SQS, a scheduled pull, a push, a disabled tenant, and a snapshot
//! the sanity guard holds until it is forced.

use std::collections::BTreeMap;
use std::sync::Arc;

use dear_client::{ApiKey, AvailabilityQuery, DearClient, DearConfig};
use dear_sim::SimServer;
use futures::TryStreamExt;
use inventory_sync::{Deps, handle};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const MAIN: &str = "Main Warehouse";

async fn world(extra_settings: &str) -> (SimServer, Deps) {
    world_with(true, extra_settings).await
}

async fn world_with(enabled: bool, extra_settings: &str) -> (SimServer, Deps) {
    let sim = dearsync_test_kit::seeded_sim(9, 20, 80).await;
    let emu = dearsync_function_support::testing::emulator_deps(&sim.base_url()).await;
    emu.put_secret("acme", &dearsync_test_kit::sim_secret("s3", json!({})))
        .await;
    let settings = format!("[inventory_sync]\nlocation = \"{MAIN}\"\n{extra_settings}");
    emu.put_tenant("acme", enabled, &settings).await;
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
            "isBase64Encoded": false, "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": "POST" } }
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

    // Deployed, the schedule fans out: one queued pull per tenant due one, each its own
    // invocation.
    let queue_url = dearsync_aws::testing::fresh_queue().await;
    let deps = deps.with_run_queue(Arc::new(dearsync_aws::SqsRunQueue::new(
        dearsync_aws::testing::sqs(),
        &queue_url,
    )));
    let counted = lines(&sim, 2).await;
    *body.lock().unwrap() =
        json!({ "snapshot_id": "PULL-2", "as_of": "2026-11-20T09:00:00Z", "lines": counted })
            .to_string();
    let schedule = json!({ "detail-type": "Scheduled Event", "detail": {} });
    let dispatched = handle(&deps, schedule.clone()).await.unwrap();
    assert_eq!(dispatched["enqueued"], json!(["acme"]), "{dispatched}");
    let again = handle(&deps, schedule).await.unwrap();
    assert_eq!(
        again["enqueued"],
        json!([]),
        "due again in an hour: {again}"
    );
    let batch = dearsync_aws::testing::receive_as_event(&queue_url).await;
    let pulled = handle(&deps, batch).await.unwrap();
    assert_eq!(pulled["batchItemFailures"], json!([]), "{pulled}");
    let now = levels(&sim).await;
    for line in &counted {
        let sku = line["sku"].as_str().unwrap();
        assert_eq!(
            now[sku].to_string(),
            line["quantity"].as_str().unwrap(),
            "{sku}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_url_leading_inside_the_network_is_not_fetched_and_nothing_is_written() {
    // A same-host redirect is followed; one to another host (here 127.0.0.2) is not.
    let app = axum::Router::new().route(
        "/moved",
        axum::routing::get(|| async {
            axum::response::Redirect::temporary("http://127.0.0.2:9/latest/meta-data/")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let moved = format!("http://{}/moved", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for (url, rule) in [
        (
            "https://169.254.169.254/latest/meta-data/",
            "the instance metadata service",
        ),
        ("https://10.0.0.7/inventory.json", "a private address"),
        (moved.as_str(), "another scheme, host or port"),
    ] {
        let (sim, deps) = world(&format!("snapshot_url = \"{url}\"\n")).await;
        let err = handle(&deps, json!({ "tenant": "acme" }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(rule), "{url}: {err}");
        assert_eq!(writes(&sim), 0, "{url}: nothing written");
    }
}

use dearsync_test_kit::writes;

fn push(path: &str, secret: &str, body: &Value) -> Value {
    json!({
        "rawPath": path, "rawQueryString": "", "headers": { "x-dearsync-secret": secret },
        "body": body.to_string(), "isBase64Encoded": false,
        "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": "POST" } }
    })
}

fn status(response: &Value) -> u64 {
    response["statusCode"].as_u64().unwrap()
}

fn error_text(response: &Value) -> String {
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    body["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_gets_nothing_written_by_any_entry() {
    let (sim, deps) = world_with(false, "").await;
    let l = lines(&sim, 2).await;
    let snapshot = json!({ "snapshot_id": "OFF-1", "as_of": "2026-11-20T06:00:00Z", "lines": l });
    let envelope = json!({ "tenant": "acme", "snapshot": snapshot });

    // EventBridge: the invocation fails, naming the tenant and why (not retryable).
    let err = handle(&deps, json!({ "detail": envelope }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tenant acme is disabled"), "{err}");
    let diagnostic = lambda_runtime::Diagnostic::from(err);
    assert_eq!(diagnostic.error_type, "NotRetryable");

    // SQS: the record is returned (it stays on the queue, then the DLQ: nothing is lost).
    let out = handle(
        &deps,
        json!({ "Records": [{ "messageId": "m1", "body": envelope.to_string() }] }),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!({ "batchItemFailures": [{ "itemIdentifier": "m1" }] })
    );

    // A scheduled pull names the tenant; a pull of every tenant skips it.
    let err = handle(&deps, json!({ "tenant": "acme" }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tenant acme is disabled"), "{err}");
    assert_eq!(
        handle(&deps, json!({})).await.unwrap(),
        json!({ "tenants": [] })
    );

    // Function URL: 401 without the secret (nothing revealed), 403 with it.
    let resp = handle(&deps, push("/inventory/acme", "wrong", &snapshot))
        .await
        .unwrap();
    assert_eq!(status(&resp), 401, "{resp}");
    let resp = handle(&deps, push("/inventory/acme", "s3", &snapshot))
        .await
        .unwrap();
    assert_eq!(status(&resp), 403, "{resp}");
    assert!(error_text(&resp).contains("disabled"), "{resp}");

    assert_eq!(
        writes(&sim),
        0,
        "nothing is written to DEAR for a disabled tenant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_zeroes_the_location_is_held_until_forced() {
    let (sim, deps) = world("").await;
    let before = levels(&sim).await;
    let zeroes: Vec<Value> = lines(&sim, 0)
        .await
        .into_iter()
        .map(|l| json!({ "sku": l["sku"], "quantity": "0" }))
        .collect();
    let stocked_zeroed = zeroes
        .iter()
        .filter(|l| before[l["sku"].as_str().unwrap()] > Decimal::ZERO)
        .count();
    assert!(stocked_zeroed > 3, "the seed stocks enough SKUs at {MAIN}");
    let snapshot =
        json!({ "snapshot_id": "ZERO-1", "as_of": "2026-11-20T06:00:00Z", "lines": zeroes });

    // Held, by every entry, and not treated as a failure to retry.
    let out = handle(
        &deps,
        json!({ "detail": { "tenant": "acme", "snapshot": snapshot } }),
    )
    .await
    .unwrap();
    assert_eq!(out["outcome"], "held", "{out}");
    assert!(
        out["note"].as_str().unwrap().contains("held for a person"),
        "{out}"
    );
    let resp = handle(&deps, push("/inventory/acme", "s3", &snapshot))
        .await
        .unwrap();
    assert_eq!(status(&resp), 409, "{resp}");
    let out = handle(
        &deps,
        json!({ "Records": [{ "messageId": "m1", "body": json!({ "tenant": "acme", "snapshot": snapshot }).to_string() }] }),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({ "batchItemFailures": [] }));
    assert_eq!(writes(&sim), 0, "a held snapshot writes nothing");
    assert_eq!(levels(&sim).await, before);

    // A force flag that is not a boolean is refused, not guessed.
    let mut bad = push("/inventory/acme", "s3", &snapshot);
    bad["queryStringParameters"] = json!({ "force": "yes" });
    let resp = handle(&deps, bad).await.unwrap();
    assert_eq!(status(&resp), 400, "{resp}");
    assert!(error_text(&resp).contains("force"), "{resp}");
    let err = handle(
        &deps,
        json!({ "detail": { "tenant": "acme", "snapshot": snapshot, "force": "yes" } }),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("force must be true or false"),
        "{err}"
    );
    assert_eq!(writes(&sim), 0);

    // A person checked it: `?force=true` applies it.
    let mut forced = push("/inventory/acme", "s3", &snapshot);
    forced["rawQueryString"] = json!("force=true");
    forced["queryStringParameters"] = json!({ "force": "true" });
    let resp = handle(&deps, forced).await.unwrap();
    assert_eq!(status(&resp), 202, "{resp}");
    let after = levels(&sim).await;
    for l in &zeroes {
        // DEAR lists no availability row for a product with no stock left.
        let left = after.get(l["sku"].as_str().unwrap()).copied();
        assert_eq!(left.unwrap_or_default(), Decimal::ZERO, "{l}");
    }
    // And the same by EventBridge with `"force": true` is already applied.
    let out = handle(
        &deps,
        json!({ "detail": { "tenant": "acme", "snapshot": snapshot, "force": true } }),
    )
    .await
    .unwrap();
    assert_eq!(out["outcome"], "already_applied", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_pulls_only_tenants_whose_settings_set_a_snapshot_url() {
    // The words "snapshot_url" in a comment (or any other text) are not a snapshot URL.
    let (_sim, deps) =
        world("# snapshot_url = \"https://wms.example/stock.json\" once we have it\n").await;
    let out = handle(
        &deps,
        json!({ "detail-type": "Scheduled Event", "detail": {} }),
    )
    .await
    .unwrap_or_else(|e| panic!("no tenant has a snapshot URL, so nothing fails: {e}"));
    assert_eq!(out, json!({ "tenants": [] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_sandbox_keeps_one_dear_client_per_tenant_until_dear_refuses_its_key() {
    let sim = dearsync_test_kit::seeded_sim(9, 5, 10).await;
    let emu = dearsync_function_support::testing::emulator_deps(&sim.base_url()).await;
    let secret = |key: &str| json!({ "account_id": dear_sim::DEFAULT_ACCOUNT_ID, "api_key": key, "inbound_secret": "s3" });
    emu.put_secret("acme", &secret("an-old-key")).await;
    emu.put_tenant(
        "acme",
        true,
        &format!("[inventory_sync]\nlocation = \"{MAIN}\"\n"),
    )
    .await;
    let deps = &emu.deps;
    let tenant = dearsync_core::TenantId::new("acme").unwrap();
    let first = deps.tenant(&tenant).await.unwrap();
    let second = deps.tenant(&tenant).await.unwrap();
    assert!(
        Arc::ptr_eq(&first.dear, &second.dear),
        "one client (one connection pool, one TLS session) across invocations"
    );

    // The key is rotated in Secrets Manager; the kept client still has the old one, and DEAR
    // refuses it.
    emu.update_secret("acme", &secret(dear_sim::DEFAULT_API_KEY))
        .await;
    let refused = first.dear.locations(None, 10).try_collect::<Vec<_>>().await;
    assert!(
        matches!(refused, Err(dear_client::DearError::Credentials { .. })),
        "{refused:?}"
    );
    // The next invocation reads the secret again at once (not after the cache's TTL) and
    // builds a client with the new key.
    let third = deps.tenant(&tenant).await.unwrap();
    assert!(!Arc::ptr_eq(&first.dear, &third.dear));
    let pages: Vec<_> = third
        .dear
        .locations(None, 10)
        .try_collect()
        .await
        .expect("the rotated key works");
    assert!(!pages.is_empty());
}
