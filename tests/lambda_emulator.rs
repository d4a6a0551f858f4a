//! The three function binaries under the real Lambda runtime. Each test runs cargo-lambda's runtime
//! emulator (`cargo lambda watch --only-lambda-apis`) on 127.0.0.1, starts the function's own
//! binary as a separate process polling it (as Lambda's `bootstrap` would), and invokes it through
//! the emulator's Invoke API with the sample events in `tests/events/`. DEAR is the simulator;
//! DynamoDB and Secrets Manager are moto. The tests assert what happened in DEAR's simulated state
//! and in the state table, and the metrics the function logged.
//!
//! The binaries are the workspace's debug builds (`cargo test --workspace` builds them);
//! `cargo-lambda` comes from `pip install cargo-lambda` (scripts/test.sh installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use dear_client::{ApiKey, DearClient, DearConfig};
use dear_sim::SimServer;
use dearsync_core::delivered::DeliveryFacts;
use dearsync_core::state::{LedgerQuery, NewRecord, RecordKey, RecordState};
use dearsync_core::{Job, TenantId, sha256_hex};
use dearsync_function_support::testing::{EmulatorDeps, emulator_deps};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const INBOUND: &str = "inbound-shared-secret";
const MAIN: &str = "Main Warehouse";

/// A child process killed (and reaped) when the test ends, pass or fail.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One function binary polling its own runtime emulator.
struct Lambda {
    port: u16,
    logs: tempfile::TempDir,
    _function: Process,
    _emulator: Process,
}

/// What an invocation answered.
#[derive(Debug)]
struct Invocation {
    status: u16,
    body: Value,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The function binary `name`: from `DEARSYNC_FUNCTIONS_DIR` when set (e.g. a folder of wrappers
/// that run the arm64 bootstraps under qemu-user), else the workspace's build next to this test
/// binary's `deps/` folder.
fn function_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("DEARSYNC_FUNCTIONS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test binary's path");
            exe.parent()
                .and_then(Path::parent)
                .expect("the test binary sits in <target>/<profile>/deps")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Lambda {
    /// Starts the runtime emulator and `binary` polling it, configured for `emu`'s table and
    /// secrets and DEAR at `dear_base_url`.
    fn start(binary: &str, emu: &EmulatorDeps, dear_base_url: &str) -> Lambda {
        Self::start_logging(binary, emu, dear_base_url, "info")
    }

    /// [`Lambda::start`] with `RUST_LOG` set to `level`.
    fn start_logging(binary: &str, emu: &EmulatorDeps, dear_base_url: &str, level: &str) -> Lambda {
        let logs = tempfile::tempdir().expect("a log folder");
        let port = free_port();
        let emulator_log = std::fs::File::create(logs.path().join("emulator.log")).unwrap();
        let emulator = Command::new("cargo-lambda")
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(emulator_log.try_clone().unwrap())
            .stderr(emulator_log)
            .spawn()
            .expect(
                "cargo-lambda must be installed (pip install cargo-lambda; scripts/test.sh does)",
            );
        let mut emulator = Process(emulator);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = emulator.0.try_wait() {
                panic!(
                    "the runtime emulator exited ({status}):\n{}",
                    log_text(&logs.path().join("emulator.log"))
                );
            }
            assert!(
                Instant::now() < deadline,
                "the runtime emulator did not listen on {addr} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let stdout = std::fs::File::create(logs.path().join("function.out")).unwrap();
        let stderr = std::fs::File::create(logs.path().join("function.err")).unwrap();
        let function = Command::new(function_binary(binary))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // What Lambda (here the emulator) gives a custom runtime.
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://{addr}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", &emu.endpoint)
            // What the SAM template sets.
            .env("STATE_TABLE", &emu.table)
            .env("SECRET_PREFIX", &emu.prefix)
            .env("DEAR_BASE_URL", dear_base_url)
            // The tests' sinks listen on 127.0.0.1; the SAM template never sets this.
            .env("DEARSYNC_ALLOW_LOOPBACK_URLS", "1")
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start the function binary");
        Lambda {
            port,
            logs,
            _function: Process(function),
            _emulator: emulator,
        }
    }

    /// Invokes the function through the emulator's Invoke API (what `cargo lambda invoke` and the
    /// AWS SDK's `Invoke` call).
    async fn invoke(&self, event: &Value) -> Invocation {
        let url = format!(
            "http://127.0.0.1:{}/2015-03-31/functions/_/invocations",
            self.port
        );
        let response = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(event.to_string())
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap_or_else(|e| panic!("invoke {url}: {e}\n{}", self.logs()));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("invoke answered {status} {text:?} ({e})\n{}", self.logs()));
        Invocation { status, body }
    }

    /// Invokes the function with a sample event file through `cargo lambda invoke`, as a developer
    /// would; returns the function's answer.
    fn invoke_with_cargo_lambda(&self, file: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/events")
            .join(file);
        let out = Command::new("cargo-lambda")
            .args(["lambda", "invoke", "-A", "127.0.0.1", "-P"])
            .arg(self.port.to_string())
            .arg("--data-file")
            .arg(&path)
            .args(["--output-format", "json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo lambda invoke");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo lambda invoke {file}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
    }

    /// The function's stdout: its JSON log lines and EMF metric lines.
    fn stdout_lines(&self) -> Vec<Value> {
        log_text(&self.logs.path().join("function.out"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The EMF metric lines the function printed.
    fn metrics(&self) -> Vec<Value> {
        self.stdout_lines()
            .into_iter()
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    fn logs(&self) -> String {
        format!(
            "--- function stdout\n{}\n--- function stderr\n{}\n--- emulator\n{}",
            log_text(&self.logs.path().join("function.out")),
            log_text(&self.logs.path().join("function.err")),
            log_text(&self.logs.path().join("emulator.log"))
        )
    }
}

/// A sample event from `tests/events/`, with `{{NAME}}` placeholders filled: `strings` inside JSON
/// strings (escaped), `values` where a whole `"{{NAME}}"` stands for a JSON value.
fn sample_event(file: &str, strings: &[(&str, &str)], values: &[(&str, Value)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/events")
        .join(file);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (name, value) in values {
        text = text.replace(&format!("\"{{{{{name}}}}}\""), &value.to_string());
    }
    for (name, value) in strings {
        let escaped = serde_json::to_string(value).unwrap();
        text = text.replace(&format!("{{{{{name}}}}}"), &escaped[1..escaped.len() - 1]);
    }
    assert!(
        !text.contains("{{"),
        "{file}: a placeholder was left unfilled"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"))
}

async fn seeded_sim(seed: u64, sales: usize, products: usize) -> SimServer {
    common::seeded_sim(seed, sales, products).await
}

async fn tenant_with_secret(sim: &SimServer, settings: &str) -> EmulatorDeps {
    tenant_with_secret_keys(sim, settings, json!({})).await
}

/// Tenant `acme` with DEAR credentials, `inbound_secret`, `order_webhook_secret` and `extra` keys
/// in its secret.
async fn tenant_with_secret_keys(sim: &SimServer, settings: &str, extra: Value) -> EmulatorDeps {
    let emu = emulator_deps(&sim.base_url()).await;
    let mut secret = json!({
        "account_id": dear_sim::DEFAULT_ACCOUNT_ID,
        "api_key": dear_sim::DEFAULT_API_KEY,
        "order_webhook_secret": "order-signing-key",
        "inbound_secret": INBOUND,
    });
    secret
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    emu.put_secret("acme", &secret).await;
    emu.put_tenant("acme", true, settings).await;
    emu
}

fn dear(sim: &SimServer) -> DearClient {
    DearClient::new(
        DearConfig::new(
            dear_sim::DEFAULT_ACCOUNT_ID,
            ApiKey::new(dear_sim::DEFAULT_API_KEY),
        )
        .with_base_url(&sim.base_url())
        .unwrap(),
    )
    .unwrap()
}

/// Every ledger record of `job` in `state`, all pages.
async fn records(emu: &EmulatorDeps, job: Job, state: RecordState) -> Vec<String> {
    let mut query = LedgerQuery::new(&TenantId::new("acme").unwrap(), job, state);
    let mut out = Vec::new();
    loop {
        let page = emu.deps.store.list(&query).await.unwrap();
        out.extend(page.records.into_iter().map(|r| r.key.entity));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return out,
        }
    }
}

/// A warehouse endpoint on 127.0.0.1 that records every order it is sent.
async fn warehouse() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |body: Bytes| {
            let r = r.clone();
            async move {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(order) => {
                        r.lock().unwrap().push(order);
                        StatusCode::OK
                    }
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/orders"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_download_runs_under_the_lambda_runtime() {
    let sim = seeded_sim(31, 100, 20).await;
    let (webhook_url, received) = warehouse().await;
    let settings =
        format!("[order_download]\nsale_status = \"PICKED\"\nwebhook_url = \"{webhook_url}\"\n");
    let emu = tenant_with_secret(&sim, &settings).await;
    let picked: BTreeMap<String, String> = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.sales
                .values()
                .filter(|s| {
                    !s.advanced && dear_sim::rules::sale_status(s, Default::default()) == "PICKED"
                })
                .map(|s| (s.id.to_string(), s.order_number.clone()))
                .collect()
        })
        .unwrap();
    assert!(picked.len() >= 3, "the seed has simple PICKED sales");
    let lambda = Lambda::start("order-download", &emu, &sim.base_url());

    // DEAR's webhook for one sale, through the Function URL: that sale is delivered at once.
    // (One with a full address, so it is delivered rather than skipped.)
    let (first_id, first_number) = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.sales
                .values()
                .find(|s| picked.contains_key(&s.id.to_string()) && !s.shipping.postcode.is_empty())
                .map(|s| (s.id.to_string(), s.order_number.clone()))
        })
        .unwrap()
        .expect("a PICKED sale with a full address");
    let webhook = sample_event(
        "function-url-dear-webhook.json",
        &[
            ("TENANT", "acme"),
            ("INBOUND_SECRET", INBOUND),
            ("SALE_ID", &first_id.to_uppercase()),
            ("ORDER_NUMBER", &first_number),
        ],
        &[],
    );
    let out = lambda.invoke(&webhook).await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.body["statusCode"], 200, "{out:?}\n{}", lambda.logs());
    assert_eq!(received.lock().unwrap().len(), 1);

    // The scheduled poll (every enabled tenant) delivers the rest, and the first not again.
    let out = lambda
        .invoke(&sample_event("scheduled-event.json", &[], &[]))
        .await;
    assert_eq!(out.status, 200, "{out:?}\n{}", lambda.logs());
    let run = &out.body["tenants"][0];
    assert_eq!(run["tenant"], "acme", "{out:?}");
    let delivered = run["delivered"].as_u64().unwrap();
    let skipped: u64 = run["skipped"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let orders = received.lock().unwrap().clone();
    let ids: BTreeSet<String> = orders
        .iter()
        .map(|o| o["sale_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), orders.len(), "no order was delivered twice");
    assert_eq!(orders.len() as u64, delivered + 1);

    // The table: one done record per delivered order, one skipped record per skipped sale, and
    // every simple PICKED sale is one or the other (advanced sales picked in a later fulfilment
    // are delivered too).
    let done: BTreeSet<String> = records(&emu, Job::OrderDownload, RecordState::Done)
        .await
        .into_iter()
        .collect();
    let skipped_records = records(&emu, Job::OrderDownload, RecordState::Skipped).await;
    assert_eq!(done.len(), ids.len(), "{done:?}");
    assert_eq!(skipped_records.len() as u64, skipped, "{skipped_records:?}");
    assert!(ids.iter().all(|id| done.iter().any(|e| e.contains(id))));
    // With the default settings a first run looks back 30 days: sales changed since then are
    // each delivered or skipped, older ones are left alone (the summary said where it started).
    assert!(run["first_run_since"].is_string(), "{run}");
    let now = chrono::Utc::now().naive_utc();
    let updated: BTreeMap<String, chrono::NaiveDateTime> = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.sales
                .values()
                .map(|s| (s.id.to_string(), s.updated))
                .collect()
        })
        .unwrap();
    let mut recent = 0;
    for id in picked.keys() {
        let age = now - updated[id];
        let handled = ids.contains(id) || skipped_records.iter().any(|e| e.contains(id));
        if age < chrono::Duration::days(29) {
            recent += 1;
            assert!(
                handled,
                "PICKED sale {id} was neither delivered nor skipped"
            );
        } else if age > chrono::Duration::days(31) && *id != first_id {
            assert!(
                !handled,
                "PICKED sale {id}, {age} old, was listed on a first run"
            );
        }
    }
    assert!(recent >= 2, "the seed has recent PICKED sales");

    // The run's EMF line (the last; the webhook's download printed one too), rolled up per job
    // for the template's alarms.
    let emf = lambda.metrics();
    let line = emf
        .iter()
        .rev()
        .find(|v| v["Job"] == "order-download")
        .unwrap_or_else(|| panic!("no EMF line\n{}", lambda.logs()));
    assert_eq!(line["Delivered"].as_u64(), Some(delivered));
    assert_eq!(
        line["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["Tenant", "Job"], ["Job"]])
    );

    // A malformed event is an invocation error Lambda reports with its type.
    let out = lambda.invoke(&json!(["not", "an", "event"])).await;
    assert_ne!(out.status, 200, "{out:?}");
    assert_eq!(out.body["errorType"], "BadEvent", "{out:?}");
    assert!(
        out.body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("got an array"),
        "{out:?}"
    );
    // ...and the runtime carries on with the next one.
    let out = lambda
        .invoke(&sample_event(
            "scheduler-tenant.json",
            &[("TENANT", "acme")],
            &[],
        ))
        .await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.body["tenants"][0]["delivered"], 0, "{out:?}");
}

/// A simple ORDERED sale's id and lines (SKU, quantity).
fn ordered_sales(sim: &SimServer, n: usize) -> Vec<(String, Vec<(String, Decimal)>)> {
    sim.sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.sales
                .values()
                .filter(|s| {
                    !s.advanced && dear_sim::rules::sale_status(s, Default::default()) == "ORDERED"
                })
                .filter(|s| s.lines.iter().any(|l| l.quantity >= Decimal::from(2)))
                .take(n)
                .map(|s| {
                    let lines = s
                        .lines
                        .iter()
                        .map(|l| (l.sku.clone(), l.quantity))
                        .collect();
                    (s.id.to_string(), lines)
                })
                .collect()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipment_confirmation_runs_under_the_lambda_runtime() {
    let sim = seeded_sim(21, 120, 40).await;
    // A merchant's default settings: an empty settings file.
    let emu = tenant_with_secret(&sim, "").await;
    let sales = ordered_sales(&sim, 2);
    assert_eq!(sales.len(), 2, "the seed has ORDERED sales");
    let lambda = Lambda::start("shipment-confirmation", &emu, &sim.base_url());

    // An SQS batch: a whole shipment in two boxes, and a message that is not JSON.
    let (sale, lines) = &sales[0];
    let (first, rest) = lines.split_at(1);
    let shipment = json!({
        "shipment_id": "RT-SQS-1", "sale_id": sale, "ship_date": "2026-11-28", "carrier": "UPS",
        "packages": [
            { "box": "CTN-1", "tracking_number": "1ZRT0001",
              "lines": first.iter().map(|(s, q)| json!({ "sku": s, "quantity": q.to_string() })).collect::<Vec<_>>() },
            { "box": "CTN-2", "tracking_number": "1ZRT0002",
              "lines": rest.iter().map(|(s, q)| json!({ "sku": s, "quantity": q.to_string() })).collect::<Vec<_>>() },
        ]
    });
    let mut shipment = shipment;
    if rest.is_empty() {
        // A one-line sale: split its quantity over the two boxes instead.
        let (sku, qty) = &first[0];
        let half = (*qty / Decimal::from(2)).floor();
        shipment["packages"][0]["lines"] = json!([{ "sku": sku, "quantity": half.to_string() }]);
        shipment["packages"][1]["lines"] =
            json!([{ "sku": sku, "quantity": (*qty - half).to_string() }]);
    }
    let message = json!({ "tenant": "acme", "shipment": shipment }).to_string();
    let batch = sample_event("sqs-shipments.json", &[("SHIPMENT_MESSAGE", &message)], &[]);
    let out = lambda.invoke(&batch).await;
    assert_eq!(out.status, 200, "{out:?}\n{}", lambda.logs());
    assert_eq!(
        out.body,
        json!({ "batchItemFailures": [{ "itemIdentifier": "6a4c7b0e-0b4e-4a8c-9b59-2d1f4f6b1c02" }] }),
        "only the junk message goes back to the queue"
    );
    let fulfilments = dear(&sim)
        .fulfilments(sale.parse().unwrap())
        .await
        .unwrap()
        .fulfilments;
    assert_eq!(fulfilments.len(), 1);
    let ship = &fulfilments[0].ship;
    assert_eq!(ship.status.to_string(), "AUTHORISED");
    let tracking: BTreeSet<String> = ship
        .lines
        .iter()
        .filter_map(|l| l.tracking_number.clone())
        .collect();
    assert_eq!(
        tracking,
        BTreeSet::from(["1ZRT0001".to_owned(), "1ZRT0002".to_owned()]),
        "one tracking number per box"
    );
    // One EMF line per tenant (with its Tenant dimension), one for failures before a tenant was
    // known; CloudWatch's per-job roll-up sums them.
    let metrics = lambda.metrics();
    let lines: Vec<&Value> = metrics
        .iter()
        .filter(|v| v["Job"] == "shipment-confirmation")
        .collect();
    assert!(!lines.is_empty(), "no EMF line\n{}", lambda.logs());
    let sum = |name: &str| lines.iter().filter_map(|l| l[name].as_u64()).sum::<u64>();
    assert_eq!(
        (sum("Confirmed"), sum("Failed"), sum("DearThrottled")),
        (1, 1, 0)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["Tenant"] == "acme" && l["Confirmed"] == 1),
        "{lines:?}"
    );

    // SQS redelivers the batch: the applied shipment is not written again.
    let calls = || sim.sim.calls(dear_sim::DEFAULT_ACCOUNT_ID).unwrap().total;
    let calls_before = calls();
    let out = lambda.invoke(&batch).await;
    assert_eq!(out.body["batchItemFailures"].as_array().unwrap().len(), 1);
    assert_eq!(
        calls(),
        calls_before,
        "a repeat is answered from the table, without DEAR"
    );

    // A warehouse pushes a partial shipment of the second sale through the Function URL.
    let (sale2, lines2) = &sales[1];
    let (sku, qty) = lines2.iter().find(|(_, q)| *q >= Decimal::from(2)).unwrap();
    let partial = json!({
        "shipment_id": "RT-URL-1", "sale_id": sale2, "ship_date": "2026-11-28", "carrier": "FedEx",
        "packages": [{ "box": "CTN-1", "tracking_number": "FX-RT-1", "lines": [{ "sku": sku, "quantity": "1" }] }]
    });
    let push = sample_event(
        "function-url-shipment.json",
        &[
            ("TENANT", "acme"),
            ("INBOUND_SECRET", INBOUND),
            ("SHIPMENT", &partial.to_string()),
        ],
        &[],
    );
    let out = lambda.invoke(&push).await;
    assert_eq!(out.body["statusCode"], 202, "{out:?}\n{}", lambda.logs());
    let f2 = dear(&sim)
        .fulfilments(sale2.parse().unwrap())
        .await
        .unwrap()
        .fulfilments;
    let packed: Decimal = f2[0].pack.lines.iter().map(|l| l.quantity).sum();
    assert_eq!(
        packed,
        Decimal::ONE,
        "only the one unit shipped ({qty} ordered)"
    );
    assert_eq!(f2[0].ship.status.to_string(), "AUTHORISED");
    assert_eq!(
        f2[0].ship.lines[0].tracking_number.as_deref(),
        Some("FX-RT-1")
    );
    let done = records(&emu, Job::ShipmentConfirmation, RecordState::Done).await;
    assert!(
        done.iter().any(|e| e.contains("RT-SQS-1")) && done.iter().any(|e| e.contains("RT-URL-1")),
        "{done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_shipment_push_is_applied_once_and_its_replay_is_refused() {
    use dearsync_core::push_signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
    let sim = seeded_sim(22, 60, 20).await;
    let emu = tenant_with_secret_keys(
        &sim,
        "",
        json!({ "warehouse_signing_secret": "wms-signing-key" }),
    )
    .await;
    let sales = ordered_sales(&sim, 1);
    let (sale, lines) = &sales[0];
    let shipment = json!({
        "shipment_id": "RT-SIGNED-1", "sale_id": sale, "ship_date": "2026-11-28", "carrier": "UPS",
        "packages": [{ "box": "CTN-1", "tracking_number": "1ZSIGNED",
            "lines": lines.iter().map(|(s, q)| json!({ "sku": s, "quantity": q.to_string() })).collect::<Vec<_>>() }]
    })
    .to_string();
    let mut push = sample_event(
        "function-url-shipment.json",
        &[
            ("TENANT", "acme"),
            ("INBOUND_SECRET", INBOUND),
            ("SHIPMENT", &shipment),
        ],
        &[],
    );
    let lambda = Lambda::start("shipment-confirmation", &emu, &sim.base_url());

    // The shared secret alone no longer admits the warehouse once it signs.
    let out = lambda.invoke(&push).await;
    assert_eq!(out.body["statusCode"], 401, "{out:?}");

    let headers = push["headers"].as_object_mut().unwrap();
    headers.remove("x-dearsync-secret");
    let now = chrono::Utc::now().timestamp();
    headers.insert(TIMESTAMP_HEADER.into(), json!(now.to_string()));
    headers.insert(
        SIGNATURE_HEADER.into(),
        json!(sign(b"wms-signing-key", now, shipment.as_bytes())),
    );
    let out = lambda.invoke(&push).await;
    assert_eq!(out.body["statusCode"], 202, "{out:?}\n{}", lambda.logs());

    let calls = || sim.sim.calls(dear_sim::DEFAULT_ACCOUNT_ID).unwrap().total;
    let before = calls();
    let out = lambda.invoke(&push).await;
    assert_eq!(out.body["statusCode"], 400, "a replay: {out:?}");
    assert_eq!(calls(), before, "a replay costs DEAR nothing");
    let fulfilments = dear(&sim)
        .fulfilments(sale.parse().unwrap())
        .await
        .unwrap()
        .fulfilments;
    assert_eq!(fulfilments.len(), 1);
    assert_eq!(fulfilments[0].ship.status.to_string(), "AUTHORISED");
}

/// What Order Download leaves in the ledger when the warehouse takes an order from Main now.
async fn deliver_order(emu: &EmulatorDeps, sku: &str, quantity: Decimal) {
    let mut facts = DeliveryFacts::new(Some(MAIN.to_owned()), [(sku, quantity)]);
    facts.delivered(chrono::Utc::now());
    let detail = serde_json::to_string(&facts).unwrap();
    let key = RecordKey::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        uuid::Uuid::new_v4().to_string(),
    );
    let mut record = NewRecord::new(key, RecordState::Done, sha256_hex(detail.as_bytes()));
    record.detail = Some(detail);
    emu.deps.store.insert(record).await.unwrap();
}

async fn on_hand(sim: &SimServer) -> BTreeMap<String, Decimal> {
    common::on_hand(sim, MAIN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_sync_runs_under_the_lambda_runtime() {
    let sim = seeded_sim(9, 20, 60).await;
    // Defaults but the location: orders delivered since the count are subtracted.
    let settings = format!("[inventory_sync]\nlocation = \"{MAIN}\"\n");
    let emu = tenant_with_secret(&sim, &settings).await;
    let fifo: BTreeSet<String> = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.products
                .values()
                .filter(|p| !p.batch_tracked())
                .map(|p| p.sku.clone())
                .collect()
        })
        .unwrap();
    let before = on_hand(&sim).await;
    // The warehouse counts 3 more of every other stocked SKU, and the same of the rest.
    let targets: BTreeMap<String, Decimal> = before
        .iter()
        .filter(|(sku, _)| fifo.contains(*sku))
        .enumerate()
        .map(|(i, (sku, q))| {
            let q = (*q).max(Decimal::ZERO);
            let bump = if i % 2 == 0 {
                Decimal::from(3)
            } else {
                Decimal::ZERO
            };
            (sku.clone(), q + bump)
        })
        .collect();
    let lines: Vec<Value> = targets
        .iter()
        .map(|(sku, q)| json!({ "sku": sku, "quantity": q.to_string() }))
        .collect();
    // An order for 2 of the first SKU reached the warehouse after the count (in the sample
    // event, 2026-11-28): DEAR keeps those 2 until the sale ships, so its target is 2 lower.
    let (ordered_sku, _) = targets.iter().next().expect("a counted SKU");
    let ordered_sku = ordered_sku.clone();
    deliver_order(&emu, &ordered_sku, Decimal::from(2)).await;
    let mut targets = targets;
    *targets.get_mut(&ordered_sku).unwrap() -= Decimal::from(2);
    let changed = targets.iter().filter(|(s, q)| before[*s] != **q).count();
    assert!(changed > 3, "the seed stocks enough SKUs at {MAIN}");
    let lambda = Lambda::start("inventory-sync", &emu, &sim.base_url());

    let event = sample_event(
        "eventbridge-inventory-snapshot.json",
        &[("TENANT", "acme"), ("SNAPSHOT_ID", "RT-INV-1")],
        &[("LINES", json!(lines))],
    );
    let out = lambda.invoke(&event).await;
    assert_eq!(out.status, 200, "{out:?}\n{}", lambda.logs());
    assert_eq!(out.body["outcome"], "applied", "{out:?}");
    assert_eq!(
        out.body["adjusted"].as_u64(),
        Some(changed as u64),
        "{out:?}"
    );
    let after = on_hand(&sim).await;
    for (sku, want) in &targets {
        assert_eq!(after.get(sku), Some(want), "{sku}");
    }

    // EventBridge delivers at least once: the repeat changes nothing.
    let out = lambda.invoke(&event).await;
    assert_eq!(out.body["outcome"], "already_applied", "{out:?}");
    assert_eq!(on_hand(&sim).await, after);

    // The scheduled pull, from the sample file through `cargo lambda invoke`: this tenant pushes
    // its snapshots (no snapshot_url), so there is nothing to pull.
    assert_eq!(
        lambda.invoke_with_cargo_lambda("scheduled-event.json"),
        json!({ "tenants": [] })
    );

    let metrics = lambda.metrics();
    let adjusted: Vec<u64> = metrics
        .iter()
        .filter(|v| v["Job"] == "inventory-sync")
        .filter_map(|v| v["Adjusted"].as_u64())
        .collect();
    assert_eq!(adjusted.first(), Some(&(changed as u64)), "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_or_the_state_table_even_at_trace() {
    let sim = seeded_sim(31, 40, 20).await;
    let (webhook_url, _received) = warehouse().await;
    const SIGNING: &str = "wms-signing-key-7f3a";
    let emu = tenant_with_secret_keys(
        &sim,
        &format!(
            "[order_download]\nsale_status = \"Any\"\nwebhook_url = \"{webhook_url}\"\n[inventory_sync]\nlocation = \"Main Warehouse\"\n"
        ),
        json!({ "warehouse_signing_secret": SIGNING }),
    )
    .await;
    let secrets = [
        INBOUND,
        dear_sim::DEFAULT_API_KEY,
        "order-signing-key",
        SIGNING,
    ];
    // DEAR's webhooks carry the shared secret; the warehouse's pushes are signed.
    let request = |path: &str, body: Value| {
        let body = body.to_string();
        let headers = if path.starts_with("/dear/") {
            json!({ "x-dearsync-secret": INBOUND, "content-type": "application/json" })
        } else {
            let now = chrono::Utc::now().timestamp();
            json!({
                "x-dearsync-timestamp": now.to_string(),
                "x-dearsync-signature": dearsync_core::push_signature::sign(SIGNING.as_bytes(), now, body.as_bytes()),
                "content-type": "application/json",
            })
        };
        json!({
            "version": "2.0", "rawPath": path, "rawQueryString": "",
            "headers": headers, "body": body, "isBase64Encoded": false,
            "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": "POST", "path": path } }
        })
    };
    let sale = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            *d.sales.keys().next().unwrap()
        })
        .unwrap();
    for (binary, events) in [
        (
            "order-download",
            vec![
                json!({ "tenant": "acme" }),
                request("/dear/acme", json!({ "SaleID": sale.to_string() })),
            ],
        ),
        (
            "shipment-confirmation",
            vec![request("/shipments/acme", json!({ "shipment_id": "S-1" }))],
        ),
        (
            "inventory-sync",
            vec![request(
                "/inventory/acme",
                json!({ "snapshot_id": "T-1", "as_of": "2026-11-20", "lines": [] }),
            )],
        ),
    ] {
        // A span directive too: an EnvFilter alone lets it re-enable any target inside the span.
        let lambda = Lambda::start_logging(
            binary,
            &emu,
            &sim.base_url(),
            "trace,[Lambda runtime invoke]=trace",
        );
        for event in &events {
            let out = lambda.invoke(event).await;
            // Past authentication: the handlers did their work (and logged it) with the secrets.
            assert_ne!(out.body["statusCode"], 401, "{binary}: {out:?}");
        }
        let logs = lambda.logs();
        assert!(
            logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
            "{binary} logged at trace"
        );
        for secret in secrets {
            let leaks: Vec<String> = logs
                .lines()
                .filter(|l| l.contains(secret))
                .map(|l| l.chars().take(300).collect())
                .collect();
            assert!(
                leaks.is_empty(),
                "{binary}: {secret:?} is in the logs:\n{leaks:#?}"
            );
        }
    }
    // Nothing in the state table either.
    let items = dearsync_aws::testing::dynamodb()
        .scan()
        .table_name(&emu.table)
        .send()
        .await
        .unwrap();
    let table = format!("{:?}", items.items());
    assert!(!table.is_empty());
    for secret in secrets {
        assert!(!table.contains(secret), "a secret is in the state table");
    }
}
