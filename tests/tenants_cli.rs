//! `dearsync tenants put|list|show` and `dearsync records` against the deployed stack's table —
//! here a DynamoDB table on the AWS emulator, reached as an operator would, with `--table` and the
//! usual AWS_* variables.

use std::process::{Command, Output};

fn dearsync(endpoint: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dearsync"))
        .args(args)
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("DEARSYNC_STATE_DIR")
        .env_remove("DEARSYNC_STATE_TABLE")
        .env_remove("DEARSYNC_CONFIG")
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
