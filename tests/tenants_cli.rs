//! `dearsync tenants put|list|show` and `dearsync records` against the deployed stack's table —
//! here a DynamoDB table on the AWS emulator, reached as an operator would, with `--table` and the
//! usual AWS_* variables.

use std::process::{Command, Output};

/// `dearsync` in `dir`, with AWS reached at the emulator with dummy credentials.
fn command(endpoint: &str, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dearsync"));
    cmd.current_dir(dir)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("DEARSYNC_STATE_DIR")
        .env_remove("DEARSYNC_STATE_TABLE")
        .env_remove("DEARSYNC_CONFIG")
        .env_remove("DEARSYNC_SECRET_PREFIX");
    cmd
}

fn dearsync(endpoint: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    command(endpoint, dir)
        .args(args)
        .output()
        .expect("run dearsync")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_validated_stored_listed_and_shown_in_the_stack_table() {
    let endpoint = dearsync_aws::testing::endpoint();
    let table = dearsync_aws::testing::fresh_table().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("acme.toml"),
        "[order_download]\nsale_status = \"ORDERED\"\nwebhook_url = \"https://wms.example.com/orders\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("bad.toml"),
        "[order_download]\nsale_status = \"SOLD\"\n",
    )
    .unwrap();
    let t = table.as_str();

    // A bad settings file is refused, naming the key; nothing is stored.
    let out = dearsync(
        endpoint,
        d,
        &[
            "tenants", "put", "--table", t, "--tenant", "bad", "--config", "bad.toml",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("order_download.sale_status"),
        "{}",
        text(&out)
    );

    let out = dearsync(
        endpoint,
        d,
        &[
            "tenants",
            "put",
            "--table",
            t,
            "--tenant",
            "acme",
            "--config",
            "acme.toml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = dearsync(
        endpoint,
        d,
        &[
            "tenants",
            "put",
            "--table",
            t,
            "--tenant",
            "dormant",
            "--config",
            "acme.toml",
            "--disabled",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = dearsync(endpoint, d, &["tenants", "list", "--table", t]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["acme", "yes", "ORDERED", "set", "-"],
            vec!["dormant", "no", "ORDERED", "set", "-"]
        ],
        "{listing}"
    );
    let out = dearsync(endpoint, d, &["tenants", "list", "--table", t, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["tenant"], "acme");
    assert_eq!(json[1]["enabled"], false);
    assert_eq!(json[0]["sale_status"], "ORDERED");

    let out = dearsync(
        endpoint,
        d,
        &["tenants", "show", "--table", t, "--tenant", "acme"],
    );
    assert!(text(&out).contains("webhook_url = \"https://wms.example.com/orders\""));
    let out = dearsync(
        endpoint,
        d,
        &["tenants", "show", "--table", t, "--tenant", "nobody"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("tenant nobody is not configured"));

    // The same store answers `records`, the operator's view of skipped and failed work.
    let out = dearsync(
        endpoint,
        d,
        &[
            "records",
            "--table",
            t,
            "--tenant",
            "acme",
            "--job",
            "order-download",
            "--state",
            "failed",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "only the header"
    );

    // Without --table, the embedded store in the working folder.
    let out = dearsync(
        endpoint,
        d,
        &[
            "tenants",
            "put",
            "--tenant",
            "acme",
            "--config",
            "acme.toml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.join(".dearsync/state.sqlite3").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_jobs_against_the_stack_with_the_tenants_secret() {
    let endpoint = dearsync_aws::testing::endpoint();
    let table = dearsync_aws::testing::fresh_table().await;
    let prefix = format!("dear-sync-cli/{}/", dearsync_core::memory::new_token());
    dearsync_aws::testing::secrets_manager()
        .create_secret()
        .name(format!("{prefix}acme"))
        .secret_string(
            serde_json::json!({
                "account_id": dear_sim::DEFAULT_ACCOUNT_ID,
                "api_key": dear_sim::DEFAULT_API_KEY,
                "inbound_secret": "from-the-secret",
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let spec = dear_sim::seed::SeedSpec {
        sales: 40,
        products: 10,
        ..Default::default()
    };
    let config = dear_sim::SimConfig {
        rate_limit: 0,
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
    let stack = [
        "--table",
        table.as_str(),
        "--tenant",
        "acme",
        "--secret-prefix",
        prefix.as_str(),
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(stack.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| {
        command(endpoint, d)
            .args(&args)
            .env("DEAR_BASE_URL", sim.base_url())
            .env_remove("DEAR_ACCOUNT_ID")
            .env_remove("DEAR_API_KEY")
            .env_remove("DEARSYNC_INBOUND_SECRET")
            .output()
            .expect("run dearsync")
    };

    // No DEAR variables: the credentials come from the tenant's secret; the ledger is the table's.
    let out = run(with(&[
        "order-download",
        "--config",
        "acme.toml",
        "--out",
        "orders.ndjson",
        "--no-rate-limit",
    ]));
    assert!(out.status.success(), "{}", text(&out));
    let orders = std::fs::read_to_string(d.join("orders.ndjson")).unwrap();
    assert!(orders.lines().count() > 20, "{orders}");
    let out = run(with(&[
        "records",
        "--job",
        "order-download",
        "--state",
        "done",
        "--limit",
        "1000",
    ]));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() - 1,
        orders.lines().count(),
        "one done record in the table per order"
    );

    // The webhook's secret header is the secret's inbound_secret.
    let out = run(with(&[
        "webhooks",
        "register",
        "--url",
        "https://x.lambda-url.us-east-1.on.aws/",
        "--config",
        "acme.toml",
    ]));
    assert!(out.status.success(), "{}", text(&out));
    let headers = sim
        .sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |data| {
            data.webhooks
                .iter()
                .flat_map(|w| w.headers.clone())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(
        !headers.is_empty()
            && headers
                .iter()
                .all(|(k, v)| k == "x-dearsync-secret" && v == "from-the-secret"),
        "{headers:?}"
    );

    // A tenant without a secret is named.
    let out = run(vec![
        "order-download".into(),
        "--table".into(),
        table.clone(),
        "--tenant".into(),
        "nobody".into(),
        "--secret-prefix".into(),
        prefix.clone(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("{prefix}nobody")),
        "{}",
        text(&out)
    );
}
