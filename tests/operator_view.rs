//! The operator's view, driven as an operator drives it: jobs run with the CLI against the DEAR
//! simulator, then one command answers "what happened to SO-…?" (`orders show`) and one "what is
//! stuck right now?" (`status`), on the embedded store and on the stack's DynamoDB table (the AWS
//! emulator, reached with `--table` and the usual AWS_* variables).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use dear_sim::SimServer;
use serde_json::{Value, json};

/// Where the state lives.
enum Store {
    /// The embedded store in the working directory's `.dearsync`.
    Sqlite,
    /// A table on the AWS emulator.
    Dynamo {
        endpoint: String,
        table: String,
        queue: String,
    },
}

struct Operator<'a> {
    dir: &'a Path,
    store: Store,
    sim: &'a SimServer,
    /// The stack's queues `status` finds beside its table (on the AWS emulator).
    queues: Vec<String>,
}

impl Operator<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dearsync"));
        cmd.args(args)
            .args(["--tenant", "acme"])
            .current_dir(self.dir)
            .env("DEAR_BASE_URL", self.sim.base_url())
            .env("DEAR_ACCOUNT_ID", dear_sim::DEFAULT_ACCOUNT_ID)
            .env("DEAR_API_KEY", dear_sim::DEFAULT_API_KEY)
            .env_remove("DEARSYNC_STATE_DIR")
            .env_remove("DEARSYNC_STATE_TABLE")
            .env_remove("DEARSYNC_CONFIG")
            .env_remove("DEARSYNC_SECRET_PREFIX")
            .env_remove("DEARSYNC_QUEUE_URLS");
        if let Store::Dynamo {
            endpoint, table, ..
        } = &self.store
        {
            cmd.args(["--table", table])
                .env("AWS_ENDPOINT_URL", endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env_remove("AWS_PROFILE");
        }
        cmd.output().expect("run dearsync")
    }

    fn json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let out = self.run(&[args, &["--json"]].concat());
        let value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&out)));
        (out.status.code(), value)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Simple sales whose products carry no batches: the ones a warehouse ships without naming batches.
fn plain_sales(sim: &SimServer) -> BTreeSet<String> {
    sim.sim
        .with_data(
            dear_sim::DEFAULT_ACCOUNT_ID,
            dear_sim::model::Dataset::plain_sale_ids,
        )
        .unwrap_or_default()
}

fn shipment(id: &str, order: &Value, sku: Option<&str>) -> Value {
    let lines: Vec<Value> = order["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| json!({"sku": sku.unwrap_or(l["sku"].as_str().unwrap()), "quantity": l["quantity"]}))
        .collect();
    json!({
        "shipment_id": id,
        "sale_id": order["sale_id"],
        "ship_date": "2026-12-01",
        "carrier": "UPS",
        "packages": [{"box": "CTN-1", "tracking_number": format!("1Z-{id}"), "lines": lines}],
    })
}

async fn operator_answers_both_questions_with_one_command_each(store: Store) {
    let config = dear_sim::SimConfig {
        rate_limit: 0,
        ..Default::default()
    };
    let spec = dear_sim::seed::SeedSpec {
        seed: 7,
        sales: 60,
        ..Default::default()
    };
    let sim = dear_sim::start_seeded(config, &spec).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("acme.toml"),
        "[order_download]\nsale_status = \"Any\"\nearliest_order_date = \"2020-01-01\"\n",
    )
    .unwrap();
    let queues = match &store {
        Store::Sqlite => Vec::new(),
        Store::Dynamo { queue, .. } => vec![queue.clone()],
    };
    let op = Operator {
        dir: d,
        store,
        sim: &sim,
        queues,
    };

    // The jobs, as a user runs them: a download, one good shipment and one the sale refuses.
    let out = op.run(&[
        "order-download",
        "--config",
        "acme.toml",
        "--out",
        "orders.ndjson",
        "--no-rate-limit",
    ]);
    assert!(matches!(out.status.code(), Some(0 | 2)), "{}", text(&out));
    let plain = plain_sales(&sim);
    let orders: Vec<Value> = std::fs::read_to_string(d.join("orders.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let order = orders
        .iter()
        .find(|o| plain.contains(o["sale_id"].as_str().unwrap()))
        .expect("a plain order was delivered");
    let number = order["order_number"].as_str().unwrap();
    let sale_id = order["sale_id"].as_str().unwrap();
    std::fs::write(
        d.join("good.json"),
        shipment("WMS-1", order, None).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("bad.json"),
        shipment("WMS-2", order, Some("NOT-ON-ORDER")).to_string(),
    )
    .unwrap();
    let out = op.run(&["confirm-shipment", "good.json", "--no-rate-limit"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = op.run(&["confirm-shipment", "bad.json", "--no-rate-limit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // "What happened to SO-…?": one command, in time order, every job's records.
    let out = op.run(&["orders", "show", number]);
    let story = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a failed shipment needs attention: {story}"
    );
    for want in [
        "listed",
        "delivered",
        // The warehouse side's answer (here the orders file).
        "it answered appended to",
        "shipment_applied",
        "1Z-WMS-1",
        "UPS",
        "shipment_failed",
        "NOT-ON-ORDER",
    ] {
        assert!(story.contains(want), "{want} missing from: {story}");
    }
    let (_, shown) = op.json(&["orders", "show", number]);
    let events: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let at = |name: &str| events.iter().position(|e| *e == name).unwrap();
    assert!(at("listed") < at("delivered") && at("delivered") < at("shipment_applied"));
    assert_eq!(shown["records"].as_array().unwrap().len(), 3, "{shown}");
    // By SaleID too.
    let (_, by_id) = op.json(&["orders", "show", sale_id]);
    assert_eq!(by_id["order_number"], number);
    assert_eq!(by_id["events"], shown["events"]);
    // An order no job has seen says so and where to look.
    let out = op.run(&["orders", "show", "SO-99999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no record of order SO-99999"),
        "{}",
        text(&out)
    );

    // "What is stuck right now?": one command.
    // With --table, the stack's queues are found beside its table.
    let (code, status) = op.json(&["status"]);
    for (q, depth) in op.queues.iter().zip(status["queues"].as_array().unwrap()) {
        assert_eq!(depth["url"], q.as_str());
        assert_eq!(
            (depth["visible"].as_u64(), depth["dead_letter"].as_bool()),
            (Some(0), Some(false)),
            "{depth}"
        );
    }
    assert_eq!(status["queues"].as_array().unwrap().len(), op.queues.len());
    assert_eq!(code, Some(2), "{status}");
    let tenant = &status["tenants"][0];
    assert_eq!(tenant["tenant"], "acme");
    assert_eq!(tenant["needs_attention"], true);
    let job = |name: &str| {
        tenant["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == name)
            .unwrap()
            .clone()
    };
    let download = job("order-download");
    assert_eq!(download["last_run"]["outcome"], "completed", "{download}");
    assert_eq!(
        download["last_run"]["counts"]["delivered"].as_u64(),
        Some(orders.len() as u64)
    );
    assert!(download["last_success_at"].is_string());
    assert!(download["cursor_lag_seconds"].as_i64().unwrap() >= 0);
    let shipments = job("shipment-confirmation");
    assert_eq!(shipments["runs"], 2);
    assert_eq!(shipments["records"]["failed"]["count"], 1, "{shipments}");
    assert_eq!(shipments["last_run"]["outcome"], "aborted");
    let out = op.run(&["status"]);
    assert!(text(&out).contains("needs attention"), "{}", text(&out));

    // Lists say when they are cut and how to go on; going on repeats nothing.
    let (_, first) = op.json(&["orders", "list", "--job", "order-download", "--limit", "2"]);
    assert_eq!(first["cut"], true, "{first}");
    let after = first["next"]["after"].as_str().unwrap().to_owned();
    let args = [
        "orders",
        "list",
        "--job",
        "order-download",
        "--limit",
        "1000",
        "--after",
        &after,
    ];
    let (_, rest) = op.json(&args);
    assert_eq!(rest["cut"], false);
    let entities = |v: &Value| -> BTreeSet<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["entity"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(entities(&first).is_disjoint(&entities(&rest)));
    assert!(!entities(&rest).is_empty());
    // A cut right at the end of one listing still says what follows in the next.
    let narrow = [
        "orders",
        "list",
        "--job",
        "shipment-confirmation",
        "--state",
        "failed",
        "--state",
        "done",
        "--limit",
        "1",
    ];
    let (_, one) = op.json(&narrow);
    assert_eq!(one["records"][0]["entity"], "WMS-2", "{one}");
    assert_eq!(one["cut"], true, "the done shipment follows: {one}");
    let token = one["next"]["after"].as_str().unwrap().to_owned();
    let (_, on) = op.json(&[&narrow[..], &["--after", &token]].concat());
    assert_eq!(on["records"][0]["entity"], "WMS-1", "{on}");
    assert_eq!(on["cut"], false, "{on}");
    let (_, failed) = op.json(&["orders", "list", "--state", "failed"]);
    assert_eq!(failed["records"][0]["entity"], "WMS-2", "{failed}");
    assert_eq!(failed["records"][0]["order_number"], number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_answers_both_questions_on_the_embedded_store() {
    operator_answers_both_questions_with_one_command_each(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_answers_both_questions_on_the_stack_table() {
    let endpoint = dearsync_aws::testing::endpoint().to_owned();
    let (table, queue) = dearsync_aws::testing::fresh_stack().await;
    operator_answers_both_questions_with_one_command_each(Store::Dynamo {
        endpoint,
        table,
        queue,
    })
    .await;
}
