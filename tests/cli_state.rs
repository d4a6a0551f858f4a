//! The CLI's settings check and ledger listing, run as a process.

use std::process::Command;

fn dearsync(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dearsync"))
        .args(args)
        .current_dir(dir)
        .env_remove("DEARSYNC_STATE_DIR")
        .env_remove("DEARSYNC_CONFIG")
        .output()
        .expect("run dearsync");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn settings_are_checked_and_printed_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.toml"),
        "[order_download]\nsale_status = \"Packed & Shipping\"\n",
    )
    .unwrap();
    let (ok, out, err) = dearsync(&["settings", "--config", "good.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("sale_status = \"Packed & Shipping\""), "{out}");
    assert!(
        out.contains("max_lines_per_adjustment = 1000"),
        "defaults are filled in: {out}"
    );

    std::fs::write(
        dir.path().join("bad.toml"),
        "[inventory_sync]\nsnapshot = \"most\"\n",
    )
    .unwrap();
    let (ok, _, err) = dearsync(&["settings", "--config", "bad.toml"], dir.path());
    assert!(!ok);
    assert!(
        err.contains("bad.toml") && err.contains("inventory_sync.snapshot"),
        "{err}"
    );

    let (ok, _, err) = dearsync(&["settings", "--config", "missing.toml"], dir.path());
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn records_are_listed_from_the_default_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = dearsync(
        &["records", "--job", "order-download", "--state", "skipped"],
        dir.path(),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("entity"), "{out}");
    assert!(
        dir.path().join(".dearsync/state.sqlite3").exists(),
        "state lives in .dearsync/ by default"
    );

    let (ok, _, err) = dearsync(
        &["records", "--job", "orders", "--state", "done"],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("`orders` is not a job"), "{err}");
}
