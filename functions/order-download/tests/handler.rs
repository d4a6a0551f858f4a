//! The Order Download handler with its production adapters: DynamoDB and Secrets Manager on the
//! AWS emulator, DEAR from the simulator, and a local warehouse endpoint that checks signatures.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use dear_sim::SimServer;
use dearsync_core::state::TenantEntry;
use dearsync_core::{Job, Lane, TenantId};
use hmac::{Hmac, KeyInit, Mac};
use order_download::{Deps, HandlerError, NotRun, TenantError, handle};
use serde_json::{Value, json};

const HMAC_KEY: &str = "order-signing-key";
const INBOUND: &str = "inbound-shared-secret";

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

/// A warehouse endpoint on 127.0.0.1 that accepts every order.
async fn warehouse() -> (String, Received) {
    let received = Received::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let r = r.clone();
            async move {
                r.0.lock().unwrap().push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/orders"), received)
}

fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    headers
        .get("x-dearsync-signature")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("sha256={want}"))
}

struct World {
    sim: SimServer,
    deps: Deps,
    received: Received,
    webhook_url: String,
    /// The state table (the account's rate bucket is read from it).
    table: String,
}

async fn world() -> World {
    let sim = dearsync_test_kit::seeded_sim(11, 60, 30).await;
    let emu = dearsync_function_support::testing::emulator_deps(&sim.base_url()).await;
    let (webhook_url, received) = warehouse().await;
    for tenant in ["acme", "broken", "dormant"] {
        emu.put_secret(
            tenant,
            &json!({
                "account_id": dear_sim::DEFAULT_ACCOUNT_ID,
                "api_key": dear_sim::DEFAULT_API_KEY,
                "order_webhook_secret": HMAC_KEY,
                "inbound_secret": INBOUND,
            }),
        )
        .await;
    }
    World {
        sim,
        deps: emu.deps,
        received,
        webhook_url,
        table: emu.table,
    }
}

fn settings(url: &str) -> String {
    format!("[order_download]\nsale_status = \"PICKED\"\nwebhook_url = \"{url}\"\n")
}

async fn put(w: &World, tenant: &str, enabled: bool, toml: String) {
    w.deps
        .store
        .put_tenant(&TenantEntry {
            tenant: TenantId::new(tenant).unwrap(),
            enabled,
            settings_toml: toml,
        })
        .await
        .unwrap();
}

fn orders(r: &Received) -> Vec<Value> {
    r.0.lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_delivers_signed_orders_once() {
    let w = world().await;
    put(&w, "acme", true, settings(&w.webhook_url)).await;
    let out = handle(&w.deps, json!({ "tenant": "acme" }), "req-1", None)
        .await
        .unwrap();
    let delivered = out["tenants"][0]["delivered"].as_u64().unwrap();
    assert!(delivered > 0, "{out}");
    // A scheduled run's DEAR calls are in the poll lane of the account's bucket.
    let lanes = dearsync_aws::testing::bucket_lanes(&w.table, dear_sim::DEFAULT_ACCOUNT_ID).await;
    assert!(lanes.recent[Lane::Poll.index()] > 0, "{lanes:?}");
    assert_eq!(lanes.recent[Lane::Webhook.index()], 0, "{lanes:?}");
    let got = w.received.0.lock().unwrap().clone();
    assert_eq!(got.len() as u64, delivered);
    for (headers, body) in &got {
        assert!(
            verify(headers, body),
            "every order is signed with the tenant's key"
        );
        let order: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(order["schema"], "dear-sync.order/v1");
        assert_eq!(
            headers.get("idempotency-key").unwrap().to_str().unwrap(),
            format!(
                "{}:{}",
                order["sale_id"].as_str().unwrap(),
                order["version"].as_str().unwrap()
            )
        );
    }
    // EventBridge's own shape, with the tenant in `detail`: nothing new to deliver.
    let again = handle(&w.deps, json!({ "detail-type": "Scheduled Event", "source": "aws.scheduler", "detail": { "tenant": "acme" } }), "req-2", None)
        .await
        .unwrap();
    assert_eq!(again["tenants"][0]["delivered"], 0);
    assert_eq!(w.received.0.lock().unwrap().len() as u64, delivered);
    // An operator's resend: the same version again, under a new Idempotency-Key.
    let first = orders(&w.received)[0].clone();
    let resend = json!({ "tenant": "acme", "resend": [first["sale_id"]] });
    let out = handle(&w.deps, resend, "req-r1", None).await.unwrap();
    assert_eq!(out["tenants"][0]["resends"][0]["resent"], 1, "{out}");
    let got = w.received.0.lock().unwrap().clone();
    let (headers, body) = got.last().unwrap();
    let again: Value = serde_json::from_slice(body).unwrap();
    assert!(verify(headers, body));
    assert_eq!(
        (&again["sale_id"], &again["version"]),
        (&first["sale_id"], &first["version"])
    );
    assert_eq!(again["resend_of"], first["delivery_id"]);
    assert_ne!(
        headers.get("idempotency-key").unwrap().to_str().unwrap(),
        first["delivery_id"].as_str().unwrap()
    );
    for (bad, names) in [
        (
            json!({ "tenant": "acme", "resend": "SO-1" }),
            "resend: must be an array",
        ),
        (
            json!({ "tenant": "acme", "resend": ["SO-1"] }),
            "\"SO-1\" is not a SaleID",
        ),
        (json!({ "resend": [first["sale_id"]] }), "names its tenant"),
    ] {
        let err = handle(&w.deps, bad, "req-r2", None).await.unwrap_err();
        assert!(
            matches!(err, HandlerError::BadEvent(_)) && err.to_string().contains(names),
            "{err}"
        );
    }
    drop(w.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_run_isolates_a_broken_tenant_and_skips_disabled_ones() {
    let w = world().await;
    put(&w, "acme", true, settings(&w.webhook_url)).await;
    put(
        &w,
        "broken",
        true,
        "[order_download]\nsale_status = \"PICKD\"\n".into(),
    )
    .await;
    put(&w, "dormant", false, settings(&w.webhook_url)).await;
    let err = handle(
        &w.deps,
        json!({ "detail-type": "Scheduled Event", "detail": {} }),
        "req-3",
        None,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HandlerError::Failed { .. }), "{err:?}");
    assert!(
        text.contains("1 of 2 tenants failed")
            && text.contains("broken")
            && text.contains("order_download.sale_status"),
        "{text}"
    );
    // acme ran all the same; dormant did not run at all.
    let delivered = orders(&w.received);
    assert!(!delivered.is_empty());
    let again = handle(&w.deps, json!({ "tenant": "acme" }), "req-4", None)
        .await
        .unwrap();
    assert_eq!(
        again["tenants"][0]["delivered"], 0,
        "acme's orders were delivered by the fan-out run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fans_out_one_queued_run_per_due_tenant_and_each_runs_on_its_own() {
    let mut w = world().await;
    let queue_url = dearsync_aws::testing::fresh_queue().await;
    w.deps = w
        .deps
        .with_run_queue(std::sync::Arc::new(dearsync_aws::SqsRunQueue::new(
            dearsync_aws::testing::sqs(),
            &queue_url,
        )));
    put(&w, "acme", true, settings(&w.webhook_url)).await;
    put(
        &w,
        "broken",
        true,
        // No webhook_url: its runs cannot start.
        "[order_download]\nsale_status = \"PICKED\"\npoll_interval_minutes = 60\n".into(),
    )
    .await;
    put(&w, "dormant", false, settings(&w.webhook_url)).await;
    let schedule = json!({ "detail-type": "Scheduled Event", "detail": {} });
    let dispatched = handle(&w.deps, schedule.clone(), "req-d1", None)
        .await
        .unwrap();
    assert_eq!(
        dispatched["enqueued"],
        json!(["acme", "broken"]),
        "{dispatched}"
    );
    assert_eq!(dispatched["disabled"], 1);
    assert_eq!(
        dispatched["periods_missed"],
        json!({ "acme": 0, "broken": 0 }),
        "the heartbeat starts at a tenant's first run"
    );
    assert!(
        orders(&w.received).is_empty(),
        "the dispatcher runs no tenant itself"
    );
    // The queue's messages, as Lambda hands them over: acme runs; broken, whose sink setting
    // cannot be used, is returned to the queue (and would reach the DLQ), not dropped.
    let batch = dearsync_aws::testing::receive_as_event(&queue_url).await;
    assert_eq!(batch["Records"].as_array().unwrap().len(), 2, "{batch}");
    let broken_id = batch["Records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["body"].as_str().unwrap().contains("broken"))
        .unwrap()["messageId"]
        .clone();
    let worked = handle(&w.deps, batch, "req-w1", None).await.unwrap();
    assert_eq!(
        worked["batchItemFailures"],
        json!([{ "itemIdentifier": broken_id }]),
        "{worked}"
    );
    assert!(
        !orders(&w.received).is_empty(),
        "acme's queued run delivered"
    );
    // Dispatched again at once: neither is due within its interval (5 and 60 minutes).
    let soon = handle(&w.deps, schedule.clone(), "req-d2", None)
        .await
        .unwrap();
    assert_eq!(
        soon["enqueued"],
        json!([]),
        "not due within its interval: {soon}"
    );
    assert_eq!(soon["not_due"], 2);
    // The heartbeat: acme's run succeeded just now; broken's could not start, which counts.
    assert_eq!(
        soon["periods_missed"],
        json!({ "acme": 0, "broken": 1 }),
        "{soon}"
    );
    let broken = w
        .deps
        .store
        .run_history(&TenantId::new("broken").unwrap(), Job::OrderDownload)
        .await
        .unwrap()
        .expect("a run that could not start is logged");
    assert_eq!(broken.last.outcome, dearsync_core::RunOutcome::Aborted);
    assert!(
        broken
            .last
            .note
            .as_deref()
            .unwrap_or("")
            .contains("webhook"),
        "{:?}",
        broken.last.note
    );
    // A message that is not a run request is returned, naming what it lacks.
    let odd = json!({ "Records": [{ "messageId": "m-odd", "body": "{\"tenants\": [\"acme\"]}", "eventSource": "aws:sqs" }] });
    let refused = handle(&w.deps, odd, "req-w2", None).await.unwrap();
    assert_eq!(refused["batchItemFailures"][0]["itemIdentifier"], "m-odd");
    // An operator's backfill through the queue runs: it delivers what the first run's look-back
    // left out, and nothing already delivered again.
    let before = orders(&w.received).len();
    let backfill = json!({ "Records": [{ "messageId": "m-bf", "body": "{\"tenant\": \"acme\", \"since\": \"2020-01-01\"}", "eventSource": "aws:sqs" }] });
    let ran = handle(&w.deps, backfill, "req-w3", None).await.unwrap();
    assert_eq!(ran["batchItemFailures"], json!([]), "{ran}");
    let all = orders(&w.received);
    let ids: std::collections::HashSet<_> = all.iter().map(|o| o["sale_id"].clone()).collect();
    assert!(all.len() > before, "older sales were backfilled");
    assert_eq!(ids.len(), all.len(), "no order delivered twice");
}

#[tokio::test]
async fn malformed_events_are_refused_naming_what_is_wrong() {
    let w = world().await;
    for (event, needle) in [
        (json!(5), "expected a JSON object"),
        (json!({ "tenant": 5 }), "tenant must be a tenant id string"),
        (json!({ "detail": { "tenant": "a b" } }), "detail.tenant"),
        (
            json!({ "tenant": "acme", "since": "last tuesday" }),
            "since: \"last tuesday\" is not a date",
        ),
        (
            json!({ "detail": { "since": 20261001 } }),
            "detail.since must be a date string",
        ),
    ] {
        let err = handle(&w.deps, event.clone(), "req", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HandlerError::BadEvent(_)) && err.to_string().contains(needle),
            "{event}: {err}"
        );
    }
    let err = handle(&w.deps, json!({ "tenant": "nobody" }), "req", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("tenant nobody is not configured"),
        "{err}"
    );
    put(&w, "acme", true, "[order_download]\n".into()).await;
    let err = handle(&w.deps, json!({ "tenant": "acme" }), "req", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("order_download.webhook_url is not set"),
        "{err}"
    );
}

fn url_request(method: &str, path: &str, secret: Option<&str>, body: &str) -> Value {
    let mut headers = json!({ "content-type": "application/json" });
    if let Some(s) = secret {
        headers["X-DearSync-Secret"] = json!(s);
    }
    json!({
        "version": "2.0",
        "rawPath": path,
        "headers": headers,
        "body": body,
        "isBase64Encoded": false,
        "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": method, "path": path } },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dear_webhook_through_the_function_url_downloads_that_sale() {
    let w = world().await;
    put(&w, "acme", true, settings(&w.webhook_url)).await;
    let picked = w
        .sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.sales
                .values()
                .find(|s| {
                    dear_sim::rules::sale_status(s, Default::default()) == "PICKED"
                        && !s.shipping.postcode.is_empty()
                })
                .map(|s| s.id)
        })
        .unwrap()
        .expect("a PICKED sale in the seed");
    let event_body = json!({ "SaleID": picked.to_string().to_uppercase(), "SaleOrderNumber": "SO-1", "EventType": "Sale/PickAuthorised" }).to_string();
    let status = |v: &Value| v["statusCode"].as_u64().unwrap();

    for (req, want, needle) in [
        (
            url_request("GET", "/dear/acme", Some(INBOUND), ""),
            405,
            "not allowed",
        ),
        (
            url_request("POST", "/elsewhere", Some(INBOUND), &event_body),
            404,
            "/dear/<tenant>",
        ),
        // An unknown tenant answers as a wrong secret does: names cannot be probed.
        (
            url_request("POST", "/dear/nobody", Some(INBOUND), &event_body),
            401,
            "x-dearsync-secret",
        ),
        (
            url_request("POST", "/dear/acme", None, &event_body),
            401,
            "x-dearsync-secret",
        ),
        (
            url_request("POST", "/dear/acme", Some("wrong"), &event_body),
            401,
            "x-dearsync-secret",
        ),
        (
            url_request("POST", "/dear/acme", Some(INBOUND), "{not json"),
            400,
            "not JSON",
        ),
        (
            url_request("POST", "/dear/acme", Some(INBOUND), "[{\"SKU\":\"Bread\"}]"),
            400,
            "no SaleID",
        ),
    ] {
        let resp = handle(&w.deps, req, "req", None).await.unwrap();
        assert_eq!(status(&resp), want, "{resp}");
        assert!(resp["body"].as_str().unwrap().contains(needle), "{resp}");
    }
    assert!(
        w.received.0.lock().unwrap().is_empty(),
        "nothing delivered for refused requests"
    );

    let resp = handle(
        &w.deps,
        url_request("POST", "/dear/acme", Some(INBOUND), &event_body),
        "req",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status(&resp), 200, "{resp}");
    let got = orders(&w.received);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["sale_id"], picked.to_string());
    // A webhook's sale is read in the webhook lane (ahead of polls), and only there.
    let lanes = dearsync_aws::testing::bucket_lanes(&w.table, dear_sim::DEFAULT_ACCOUNT_ID).await;
    assert!(lanes.recent[Lane::Webhook.index()] > 0, "{lanes:?}");
    assert_eq!(lanes.recent[Lane::Poll.index()], 0, "{lanes:?}");
    // DEAR retries its webhooks: a repeat delivers nothing new.
    let resp = handle(
        &w.deps,
        url_request("POST", "/dear/acme", Some(INBOUND), &event_body),
        "req",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status(&resp), 200);
    assert_eq!(orders(&w.received).len(), 1);
    // Voided in DEAR: its Sale/Voided webhook sends the warehouse a signed cancellation, under
    // its own Idempotency-Key, once (DEAR's retry sends nothing more).
    w.sim
        .sim
        .edit_sale(
            dear_sim::DEFAULT_ACCOUNT_ID,
            picked,
            &dear_sim::SaleEdit {
                void: true,
                ..Default::default()
            },
        )
        .unwrap();
    let voided = json!({ "SaleID": picked.to_string(), "EventType": "Sale/Voided" }).to_string();
    for _ in 0..2 {
        let resp = handle(
            &w.deps,
            url_request("POST", "/dear/acme", Some(INBOUND), &voided),
            "req",
            None,
        )
        .await
        .unwrap();
        assert_eq!(status(&resp), 200, "{resp}");
    }
    let got = w.received.0.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "the order, then one cancellation");
    let (headers, body) = &got[1];
    assert!(verify(headers, body), "signed with the tenant's key");
    let cancel: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(cancel["schema"], "dear-sync.order-cancel/v1");
    assert_eq!(cancel["sale_id"], picked.to_string());
    assert_eq!(cancel["version"], orders(&w.received)[0]["version"]);
    assert_eq!(
        headers.get("idempotency-key").unwrap().to_str().unwrap(),
        format!(
            "{}:cancel",
            orders(&w.received)[0]["delivery_id"].as_str().unwrap()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_is_refused_by_its_schedule_and_its_webhook() {
    let w = world().await;
    put(&w, "dormant", false, settings(&w.webhook_url)).await;
    let err = handle(&w.deps, json!({ "tenant": "dormant" }), "req", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.source_as::<NotRun>(),
            Some(NotRun::Tenant(TenantError::Disabled(_)))
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("tenant dormant is disabled"),
        "{err}"
    );
    assert_eq!(
        lambda_runtime::Diagnostic::from(err).error_type,
        "NotRetryable"
    );
    let body =
        json!({ "SaleID": uuid::Uuid::new_v4().to_string(), "EventType": "Sale/PickAuthorised" })
            .to_string();
    let status = |v: &Value| v["statusCode"].as_u64().unwrap();
    let resp = handle(
        &w.deps,
        url_request("POST", "/dear/dormant", Some("wrong"), &body),
        "req",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status(&resp), 401, "the secret is checked first: {resp}");
    let resp = handle(
        &w.deps,
        url_request("POST", "/dear/dormant", Some(INBOUND), &body),
        "req",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status(&resp), 403, "{resp}");
    assert!(
        resp["body"].as_str().unwrap().contains("disabled"),
        "{resp}"
    );
    assert!(w.received.0.lock().unwrap().is_empty());
    let calls = w.sim.sim.calls(dear_sim::DEFAULT_ACCOUNT_ID).unwrap();
    assert_eq!(
        calls.by_route.values().sum::<u64>(),
        0,
        "DEAR was not called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_webhooks_to_inner_addresses_are_refused_with_the_rule_named() {
    let mut w = world().await;
    put(
        &w,
        "acme",
        true,
        settings("https://169.254.169.254/latest/meta-data/"),
    )
    .await;
    let out = handle(&w.deps, json!({ "tenant": "acme" }), "req-1", None).await;
    let text = match &out {
        Ok(v) => v.to_string(),
        Err(e) => e.to_string(),
    };
    assert!(out.is_err(), "{text}");
    assert!(text.contains("the instance metadata service"), "{text}");
    // Under the production policy the test's own warehouse, plain http on 127.0.0.1, is refused.
    w.deps.outbound = dearsync_outbound::OutboundPolicy::PUBLIC;
    put(&w, "acme", true, settings(&w.webhook_url)).await;
    let err = handle(&w.deps, json!({ "tenant": "acme" }), "req-2", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must use https"), "{err}");
    assert!(w.received.0.lock().unwrap().is_empty(), "nothing was sent");
    drop(w.sim);
}
