//! The Shipment Confirmation handler with DynamoDB and Secrets Manager on the AWS emulator and DEAR
//! from the simulator: a real SQS batch with a good and a bad message, an EventBridge event, and
//! warehouse pushes through the Function URL, all with a merchant's default settings; and a disabled
//! tenant, for which nothing is written by any entry.

use dear_sim::SimServer;
use dearsync_core::Lane;
use dearsync_function_support::testing::EmulatorDeps;
use serde_json::{Value, json};
use shipment_confirmation::{Deps, HandlerError, handle};

const INBOUND: &str = "warehouse-shared-secret";

async fn world() -> (SimServer, Deps) {
    let (sim, emu) = world_with(true).await;
    (sim, emu.deps)
}

/// The merchant's default settings: an empty settings file.
async fn world_with(enabled: bool) -> (SimServer, EmulatorDeps) {
    let sim = dearsync_test_kit::seeded_sim(21, 120, 40).await;
    let emu = dearsync_function_support::testing::emulator_deps(&sim.base_url()).await;
    emu.put_secret("acme", &dearsync_test_kit::sim_secret(INBOUND, json!({})))
        .await;
    emu.put_tenant("acme", enabled, "").await;
    (sim, emu)
}

/// Two ORDERED simple sales with their order lines.
fn ordered_sales(sim: &SimServer) -> Vec<(String, Vec<(String, String)>)> {
    sim.sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.sales
                .values()
                .filter(|s| {
                    !s.advanced && dear_sim::rules::sale_status(s, Default::default()) == "ORDERED"
                })
                .take(3)
                .map(|s| {
                    (
                        s.id.to_string(),
                        s.lines
                            .iter()
                            .map(|l| (l.sku.clone(), l.quantity.to_string()))
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap()
}

fn shipment(id: &str, sale: &(String, Vec<(String, String)>)) -> Value {
    json!({
        "shipment_id": id, "sale_id": sale.0, "ship_date": "2026-11-20", "carrier": "UPS",
        "packages": [{ "box": "CTN-1", "tracking_number": format!("1Z-{id}"),
                       "lines": sale.1.iter().map(|(sku, q)| json!({ "sku": sku, "quantity": q })).collect::<Vec<_>>() }]
    })
}

fn sqs_record(id: &str, body: &str) -> Value {
    json!({
        "messageId": id, "receiptHandle": "rh", "body": body,
        "attributes": { "ApproximateReceiveCount": "1" }, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:shipments", "awsRegion": "us-east-1"
    })
}

async fn ship_status(deps: &Deps, sale: &str) -> String {
    let client = dear_client::DearClient::new(
        dear_client::DearConfig::new(
            dear_sim::DEFAULT_ACCOUNT_ID,
            dear_client::ApiKey::new(dear_sim::DEFAULT_API_KEY),
        )
        .with_base_url(&deps.base_url)
        .unwrap(),
    )
    .unwrap();
    client
        .fulfilments(sale.parse().unwrap())
        .await
        .unwrap()
        .fulfilments[0]
        .ship
        .status
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_batch_reports_only_the_bad_message_as_failed() {
    let (sim, emu) = world_with(true).await;
    let deps = &emu.deps;
    let sales = ordered_sales(&sim);
    let good = json!({ "tenant": "acme", "shipment": shipment("SQS-1", &sales[0]) }).to_string();
    let mut bad_shipment = shipment("SQS-2", &sales[1]);
    bad_shipment["packages"][0]["lines"][0]["sku"] = json!("NOT-ON-THE-SALE");
    let bad = json!({ "tenant": "acme", "shipment": bad_shipment }).to_string();
    let event = json!({ "Records": [sqs_record("m-good", &good), sqs_record("m-bad", &bad), sqs_record("m-junk", "{oops")] });
    let out = handle(deps, event).await.unwrap();
    assert_eq!(
        out,
        json!({ "batchItemFailures": [{ "itemIdentifier": "m-bad" }, { "itemIdentifier": "m-junk" }] })
    );
    // Its DEAR calls went through the account's bucket in the shipments lane, and only there.
    let lanes = dearsync_aws::testing::bucket_lanes(&emu.table, dear_sim::DEFAULT_ACCOUNT_ID).await;
    let recent = lanes.recent;
    assert!(recent[Lane::Shipments.index()] >= 4, "{lanes:?}");
    assert_eq!(
        recent[Lane::Webhook.index()]
            + recent[Lane::Poll.index()]
            + recent[Lane::Inventory.index()],
        0,
        "{lanes:?}"
    );
    assert_eq!(
        ship_status(deps, &sales[0].0).await,
        "AUTHORISED",
        "the good shipment is applied"
    );
    assert_eq!(
        ship_status(deps, &sales[1].0).await,
        "NOT AVAILABLE",
        "the bad one wrote nothing"
    );
    // SQS redelivers the batch item: the applied one is a no-op.
    let again = handle(deps, json!({ "Records": [sqs_record("m-good-2", &good)] }))
        .await
        .unwrap();
    assert_eq!(again, json!({ "batchItemFailures": [] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventbridge_event_and_a_function_url_push_are_confirmed() {
    let (sim, deps) = world().await;
    let sales = ordered_sales(&sim);
    let event = json!({
        "version": "0", "id": "e-1", "detail-type": "Shipment", "source": "wms", "account": "123456789012",
        "time": "2026-11-20T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": { "tenant": "acme", "shipment": shipment("EB-1", &sales[0]) }
    });
    let out = handle(&deps, event).await.unwrap();
    assert_eq!(out["action"], "applied");
    let err = handle(&deps, json!({ "detail": { "tenant": "acme" } }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandlerError::Failed {
                retryable: false,
                ..
            }
        ) && err.to_string().contains("shipment is missing"),
        "{err}"
    );
    assert!(matches!(
        handle(&deps, json!([1])).await.unwrap_err(),
        HandlerError::BadEvent(_)
    ));

    let push = |secret: &str, body: &Value| {
        json!({
            "version": "2.0", "rawPath": "/shipments/acme", "headers": { "x-dearsync-secret": secret },
            "body": body.to_string(), "isBase64Encoded": false,
            "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": "POST", "path": "/shipments/acme" } }
        })
    };
    let body = shipment("URL-1", &sales[1]);
    let status = |v: &Value| v["statusCode"].as_u64().unwrap();
    assert_eq!(
        status(&handle(&deps, push("nope", &body)).await.unwrap()),
        401
    );
    let mut invalid = body.clone();
    invalid["ship_date"] = json!("soon");
    let resp = handle(&deps, push(INBOUND, &invalid)).await.unwrap();
    assert_eq!(status(&resp), 400);
    assert!(
        resp["body"].as_str().unwrap().contains("ship_date"),
        "{resp}"
    );
    let resp = handle(&deps, push(INBOUND, &body)).await.unwrap();
    assert_eq!(status(&resp), 202, "{resp}");
    let mut changed = body.clone();
    changed["packages"][0]["box"] = json!("CTN-9");
    let resp = handle(&deps, push(INBOUND, &changed)).await.unwrap();
    assert_eq!(status(&resp), 409, "{resp}");
    assert_eq!(ship_status(&deps, &sales[1].0).await, "AUTHORISED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_gets_nothing_written_by_any_entry() {
    let (sim, emu) = world_with(false).await;
    let deps = emu.deps;
    let sales = ordered_sales(&sim);
    let envelope = json!({ "tenant": "acme", "shipment": shipment("OFF-1", &sales[0]) });
    let out = handle(
        &deps,
        json!({ "Records": [sqs_record("m-off", &envelope.to_string())] }),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!({ "batchItemFailures": [{ "itemIdentifier": "m-off" }] }),
        "kept on the queue (then the DLQ) for when the tenant is enabled again"
    );
    let err = handle(&deps, json!({ "detail": envelope }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandlerError::Failed {
                retryable: false,
                ..
            }
        ) && err.to_string().contains("tenant acme is disabled"),
        "{err}"
    );
    let push = |secret: &str| {
        json!({
            "rawPath": "/shipments/acme", "headers": { "x-dearsync-secret": secret },
            "body": shipment("OFF-2", &sales[1]).to_string(), "isBase64Encoded": false,
            "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": "POST" } }
        })
    };
    let resp = handle(&deps, push("nope")).await.unwrap();
    assert_eq!(resp["statusCode"], 401, "{resp}");
    let resp = handle(&deps, push(INBOUND)).await.unwrap();
    assert_eq!(resp["statusCode"], 403, "{resp}");
    assert!(
        resp["body"].as_str().unwrap().contains("disabled"),
        "{resp}"
    );
    let calls = sim.sim.calls(dear_sim::DEFAULT_ACCOUNT_ID).unwrap();
    assert_eq!(
        calls.by_route.values().sum::<u64>(),
        0,
        "DEAR was not called"
    );
    assert_eq!(ship_status(&deps, &sales[0].0).await, "NOT AVAILABLE");
}
