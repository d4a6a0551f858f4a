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
    // A folder with no store (a mistyped --state-dir) is an error, and no store is created.
    let (ok, _, err) = dearsync(
        &["records", "--job", "order-download", "--state", "skipped"],
        dir.path(),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("no state store in .dearsync") && err.contains("--state-dir"),
        "{err}"
    );
    assert!(!dir.path().join(".dearsync/state.sqlite3").exists());

    dearsync_store_sqlite::SqliteStore::open_dir(
        dir.path().join(".dearsync"),
        std::sync::Arc::new(dearsync_core::SystemClock),
    )
    .unwrap();
    let (ok, out, err) = dearsync(
        &["records", "--job", "order-download", "--state", "skipped"],
        dir.path(),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("entity"), "{out}");
}

#[test]
fn exit_statuses_follow_one_convention() {
    let dir = tempfile::tempdir().unwrap();
    let code = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dearsync"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // A usage error has its own status, never a job's 1 or 2.
    let out = code(&["records", "--job", "orders", "--state", "done"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`orders` is not a job"));
    assert_eq!(code(&["--help"]).status.code(), Some(0));
    // A failed command is 1.
    assert_eq!(
        code(&["settings", "--config", "missing.toml"])
            .status
            .code(),
        Some(1)
    );
    // A reader that goes away (`| head`) ends the command quietly, not with a panic.
    std::fs::write(dir.path().join("t.toml"), "").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // Gone before the command writes a byte.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dearsync"))
        .args(["settings", "--config", "t.toml"])
        .current_dir(dir.path())
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Writing a tenant's settings needs --tenant (no silent `local` tenant).
    std::fs::write(dir.path().join("t.toml"), "").unwrap();
    let out = code(&["tenants", "put", "--config", "t.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant"));
}
