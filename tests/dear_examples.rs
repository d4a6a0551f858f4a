//! DEAR's published example bodies (`../shared/dear-examples/`, see its MANIFEST.md), read at run
//! time, never copied here:
//! - every response body parses through the client's own call for that endpoint, served by a local
//!   replay server on 127.0.0.1;
//! - every webhook delivery for a sale names the sale as our webhook handler reads it;
//! - every request the client builds uses the example's field names with the same JSON types (the
//!   client may omit optional fields).
//!
//! The folder is `DEAR_EXAMPLES_DIR`, default `../shared/dear-examples` next to the repository. When
//! it is absent and the variable is not set (a user's own clone), the tests say they skipped; when
//! the variable is set (CI) and the folder is missing, they fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use dear_client::{
    ApiKey, AvailabilityQuery, DearClient, DearConfig, DearError, PickPack, ProductQuery,
    RetryPolicy, SaleListQuery, Ship, StockAdjustmentWrite, Webhook,
};
use futures::TryStreamExt;
use serde_json::Value;
use uuid::Uuid;

/// The corpus folder, or `None` (with the reason printed) when the test must skip.
fn corpus() -> Option<PathBuf> {
    let set = std::env::var("DEAR_EXAMPLES_DIR").ok();
    let dir = set.clone().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/dear-examples")
    });
    if dir.join("MANIFEST.md").is_file() {
        return Some(dir);
    }
    assert!(
        set.is_none(),
        "DEAR_EXAMPLES_DIR={} has no MANIFEST.md: the DEAR example corpus is missing",
        dir.display()
    );
    println!(
        "skipped: DEAR's example corpus is not at {} (set DEAR_EXAMPLES_DIR to run these tests)",
        dir.display()
    );
    None
}

/// Files of the corpus whose name starts with `prefix` (`endpoint__verb.kind`).
fn files(dir: &PathBuf, prefix: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the corpus folder") {
        let name = entry
            .expect("a file")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(prefix) && name.ends_with(".json") {
            let text = std::fs::read_to_string(dir.join(&name)).expect("readable");
            let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One request as the replay server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Replay {
    answer: Arc<Mutex<Value>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Answers every request with the current example; a page after the first has its lists emptied
/// (examples' totals do not always match their rows).
async fn replay(State(r): State<Replay>, request: Request) -> impl IntoResponse {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let later_page = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv.to_ascii_lowercase().starts_with("page=") && &kv[5..] != "1");
    let bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    r.seen.lock().unwrap().push(Seen { method, path, body });
    let mut answer = r.answer.lock().unwrap().clone();
    if later_page && let Value::Object(map) = &mut answer {
        for v in map.values_mut() {
            if v.is_array() {
                *v = Value::Array(Vec::new());
            }
        }
    }
    ([("content-type", "application/json")], answer.to_string())
}

async fn server() -> (DearClient, Replay) {
    let state = Replay::default();
    let app = axum::Router::new()
        .fallback(replay)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ExternalApi/v2/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut config = DearConfig::new("replay-account", ApiKey::new("replay-key"))
        .with_base_url(&url)
        .unwrap();
    config.calls_per_minute = 0;
    config.retry = RetryPolicy {
        max_read_retries: 0,
        max_throttle_retries: 0,
        ..RetryPolicy::default()
    };
    (DearClient::new(config).unwrap(), state)
}

fn id() -> Uuid {
    Uuid::nil()
}

/// The client's call for a response example, by its file name's `endpoint__verb` prefix.
async fn call(c: &DearClient, endpoint: &str) -> Option<Result<String, DearError>> {
    Some(match endpoint {
        "me__get" => c.me().await.map(|m| format!("{m:?}")),
        "product__get" => c
            .products(&ProductQuery::default(), 100)
            .try_collect::<Vec<_>>()
            .await
            .map(|p| {
                format!(
                    "{} products",
                    p.iter().map(|p| p.items.len()).sum::<usize>()
                )
            }),
        "ref_carrier__get" => c.carriers(100).try_collect::<Vec<_>>().await.map(|p| {
            format!(
                "{} carriers",
                p.iter().map(|p| p.items.len()).sum::<usize>()
            )
        }),
        "ref_carrier__post" => c.create_carrier("Example").await.map(|x| format!("{x:?}")),
        "ref_location__get" => c
            .locations(None, 100)
            .try_collect::<Vec<_>>()
            .await
            .map(|p| {
                format!(
                    "{} locations",
                    p.iter().map(|p| p.items.len()).sum::<usize>()
                )
            }),
        "ref_priceTier__get" => c.price_tiers().await.map(|t| format!("{t:?}")),
        "ref_productavailability__get" => c
            .product_availability(&AvailabilityQuery::default(), 100)
            .try_collect::<Vec<_>>()
            .await
            .map(|p| format!("{} rows", p.iter().map(|p| p.items.len()).sum::<usize>())),
        "saleList__get" => c
            .sale_list(&SaleListQuery::default(), 100)
            .try_collect::<Vec<_>>()
            .await
            .map(|p| format!("{} sales", p.iter().map(|p| p.items.len()).sum::<usize>())),
        "sale__get" => c
            .sale(id())
            .await
            .map(|s| format!("{:?}", s.order_number())),
        "sale_fulfilment__get" => c
            .fulfilments(id())
            .await
            .map(|f| format!("{} fulfilments", f.fulfilments.len())),
        "sale_fulfilment__post" => c
            .create_fulfilment(id())
            .await
            .map(|f| format!("{} fulfilments", f.fulfilments.len())),
        "sale_fulfilment__delete" => c
            .delete_fulfilment(id(), false)
            .await
            .map(|()| String::new()),
        "sale_fulfilment_pick__get" => c
            .pick(id())
            .await
            .map(|p| format!("{} lines", p.lines.len())),
        "sale_fulfilment_pick__post" | "sale_fulfilment_pick__put" => c
            .write_pick(&PickPack::default(), endpoint.ends_with("put"))
            .await
            .map(|p| format!("{} lines", p.lines.len())),
        "sale_fulfilment_pack__get" => c
            .pack(id())
            .await
            .map(|p| format!("{} lines", p.lines.len())),
        "sale_fulfilment_pack__post" | "sale_fulfilment_pack__put" => c
            .write_pack(&PickPack::default(), endpoint.ends_with("put"))
            .await
            .map(|p| format!("{} lines", p.lines.len())),
        "sale_fulfilment_ship__get" => c
            .ship(id())
            .await
            .map(|s| format!("{} lines", s.lines.len())),
        "sale_fulfilment_ship__post" | "sale_fulfilment_ship__put" => c
            .write_ship(&Ship::default(), endpoint.ends_with("put"))
            .await
            .map(|s| format!("{} lines", s.lines.len())),
        "stockadjustmentList__get" => c
            .stock_adjustment_list(None, 100)
            .try_collect::<Vec<_>>()
            .await
            .map(|p| {
                format!(
                    "{} adjustments",
                    p.iter().map(|p| p.items.len()).sum::<usize>()
                )
            }),
        "stockadjustment__get" => c
            .stock_adjustment(id())
            .await
            .map(|a| format!("{:?}", a.status)),
        "stockadjustment__post" => c
            .create_stock_adjustment(&StockAdjustmentWrite::default())
            .await
            .map(|a| format!("{:?}", a.status)),
        "stockadjustment__put" => c
            .update_stock_adjustment(&StockAdjustmentWrite::default())
            .await
            .map(|a| format!("{:?}", a.status)),
        "stockadjustment__delete" => c
            .delete_stock_adjustment(id(), false)
            .await
            .map(|_| String::new()),
        "webhooks__get" => c.webhooks().await.map(|w| format!("{} webhooks", w.len())),
        "webhooks__post" => c
            .create_webhook(&Webhook::default())
            .await
            .map(|w| format!("{w:?}")),
        "webhooks__put" => c
            .update_webhook(id(), &Webhook::default())
            .await
            .map(|()| String::new()),
        "webhooks__delete" => c.delete_webhook(id()).await.map(|()| String::new()),
        _ => return None,
    })
}

#[tokio::test]
async fn every_response_example_parses_through_the_clients_call() {
    let Some(dir) = corpus() else { return };
    let (client, replay) = server().await;
    let mut failures = Vec::new();
    let mut unmapped = Vec::new();
    let mut parsed = 0;
    for (name, body) in files(&dir, "") {
        if !name.contains(".response__") {
            continue;
        }
        let endpoint = name.split('.').next().unwrap_or("");
        *replay.answer.lock().unwrap() = body;
        match call(&client, endpoint).await {
            None => unmapped.push(name),
            Some(Ok(_)) => parsed += 1,
            Some(Err(e)) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(unmapped.is_empty(), "no client call for {unmapped:?}");
    assert!(
        failures.is_empty(),
        "{} of {} do not parse:\n{}",
        failures.len(),
        parsed + failures.len(),
        failures.join("\n")
    );
    assert!(parsed > 50, "{parsed} examples parsed");
}

#[test]
fn every_sale_webhook_delivery_names_its_sale() {
    let Some(dir) = corpus() else { return };
    let deliveries = files(&dir, "webhook_delivery__Sale-");
    assert!(
        deliveries.len() >= 9,
        "{} sale webhook examples",
        deliveries.len()
    );
    for (name, body) in deliveries {
        // What functions/order-download reads: SaleID, else SaleTaskID.
        let id = body
            .get("SaleID")
            .or_else(|| body.get("SaleTaskID"))
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Uuid>().ok());
        assert!(
            id.is_some(),
            "{name}: no SaleID or SaleTaskID GUID in {body}"
        );
    }
}

#[test]
fn the_order_source_setting_reads_the_fields_of_deals_published_sales() {
    let Some(dir) = corpus() else { return };
    let sales = files(&dir, "sale__get.response");
    assert!(!sales.is_empty(), "sale examples");
    for (name, body) in sales {
        let sale: dear_client::Sale =
            serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (setting, field) in [
            ("source_channel", "SourceChannel"),
            ("account", "DefaultAccount"),
            ("sales_rep", "SalesRepresentative"),
        ] {
            let settings = dearsync_core::TenantSettings::from_toml(&format!(
                "[order_download]\norder_source = \"{setting}\"\n"
            ))
            .unwrap()
            .order_download;
            let order = dearsync_order_download::map_sale(&sale, &settings, None);
            let want = body[field]
                .as_str()
                .map(str::trim)
                .filter(|v| !v.is_empty());
            assert!(want.is_some(), "{name}: the example has a {field}");
            assert_eq!(order.source_channel.as_deref(), want, "{name}: {setting}");
        }
    }
}

#[test]
fn deals_published_addresses_pass_the_address_guard() {
    // Their display lines come with and without the country: neither is a typed-over address.
    let Some(dir) = corpus() else { return };
    let mut checked = 0;
    for (name, body) in files(&dir, "sale__get.response") {
        let sale: dear_client::Sale =
            serde_json::from_value(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        for a in [&sale.shipping_address, &sale.billing_address]
            .into_iter()
            .flatten()
        {
            assert_eq!(dearsync_order_download::address_mismatch(a), None, "{name}");
            checked += 1;
        }
    }
    assert!(checked > 0, "addresses in the examples");
}

/// Where `ours` has a key the example lacks, or a value of another JSON type (numbers written as
/// strings or the reverse): the paths. Nulls in either are not compared; arrays by their first item.
fn shape_mismatches(ours: &Value, example: &Value, path: &str, out: &mut Vec<String>) {
    match (ours, example) {
        (_, Value::Null) | (Value::Null, _) => {}
        (Value::Object(a), Value::Object(b)) => {
            let b_lower: BTreeMap<String, &Value> =
                b.iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            for (k, v) in a {
                match b_lower.get(&k.to_ascii_lowercase()) {
                    Some(e) => shape_mismatches(v, e, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: not in the example")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                shape_mismatches(x, y, &format!("{path}[0]"), out);
            }
        }
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => {}
        (a, b) => out.push(format!("{path}: we send {a}, the example has {b}")),
    }
}

/// The write the client builds for a request example: the example read into our model, sent.
async fn write_for(c: &DearClient, endpoint: &str, example: &Value) -> Option<Result<(), String>> {
    fn model<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("our model cannot read it: {e}"))
    }
    let r = match endpoint {
        "sale_fulfilment_pick__post" | "sale_fulfilment_pick__put" => {
            match model::<PickPack>(example) {
                Ok(p) => c.write_pick(&p, endpoint.ends_with("put")).await.map(drop),
                Err(e) => return Some(Err(e)),
            }
        }
        "sale_fulfilment_pack__post" | "sale_fulfilment_pack__put" => {
            match model::<PickPack>(example) {
                Ok(p) => c.write_pack(&p, endpoint.ends_with("put")).await.map(drop),
                Err(e) => return Some(Err(e)),
            }
        }
        "sale_fulfilment_ship__post" | "sale_fulfilment_ship__put" => {
            match model::<Ship>(example) {
                Ok(s) => c.write_ship(&s, endpoint.ends_with("put")).await.map(drop),
                Err(e) => return Some(Err(e)),
            }
        }
        "stockadjustment__post" | "stockadjustment__put" => {
            match model::<StockAdjustmentWrite>(example) {
                Ok(a) if endpoint.ends_with("put") => c.update_stock_adjustment(&a).await.map(drop),
                Ok(a) => c.create_stock_adjustment(&a).await.map(drop),
                Err(e) => return Some(Err(e)),
            }
        }
        "webhooks__post" | "webhooks__put" => match model::<Webhook>(example) {
            Ok(w) if endpoint.ends_with("put") => c.update_webhook(id(), &w).await,
            Ok(w) => c.create_webhook(&w).await.map(drop),
            Err(e) => return Some(Err(e)),
        },
        "ref_carrier__post" => c.create_carrier("Example").await.map(drop),
        "sale_fulfilment__post" => c.create_fulfilment(id()).await.map(drop),
        _ => return None,
    };
    // The answer is not the point here (it is the request echoed); only what was sent.
    let _ = r;
    Some(Ok(()))
}

#[tokio::test]
async fn every_request_the_client_builds_has_the_examples_field_names_and_types() {
    let Some(dir) = corpus() else { return };
    let (client, replay) = server().await;
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, example) in files(&dir, "") {
        if !name.contains(".request__") {
            continue;
        }
        let endpoint = name.split('.').next().unwrap_or("");
        *replay.answer.lock().unwrap() = example.clone();
        replay.seen.lock().unwrap().clear();
        match write_for(&client, endpoint, &example).await {
            None => problems.push(format!("{name}: no client write for it")),
            Some(Err(e)) => problems.push(format!("{name}: {e}")),
            Some(Ok(())) => {
                let seen = replay.seen.lock().unwrap().clone();
                let Some(sent) = seen.iter().find(|s| s.method != "GET") else {
                    problems.push(format!("{name}: nothing was written"));
                    continue;
                };
                let mut out = Vec::new();
                shape_mismatches(&sent.body, &example, "", &mut out);
                problems.extend(
                    out.into_iter()
                        .map(|m| format!("{name} ({} {}): {m}", sent.method, sent.path)),
                );
                checked += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 15, "{checked} request examples checked");
}
