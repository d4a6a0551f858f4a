//! `dearsync demo` as a user runs it: one process, a simulated DEAR account, and a report; then the
//! kept state store is read with `dearsync records`.

use std::process::Command;

fn dearsync(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dearsync"))
        .args(args)
        .env_remove("DEAR_BASE_URL")
        .env_remove("DEARSYNC_STATE_DIR")
        .env_remove("DEARSYNC_CONFIG")
        .output()
        .expect("run dearsync")
}

/// The report line that starts (after indentation) with `label`.
fn line<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line {label:?} in the report:\n{report}"))
}

#[test]
fn the_demo_runs_every_job_and_reports_what_dear_shows() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let out = dearsync(&["demo", "--state-dir", state_arg]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}\n{errors}");

    // Orders: some delivered, the skipped one named with its reason.
    let downloaded = line(&report, "29 sales listed");
    assert!(downloaded.contains("28 delivered"), "{downloaded}");
    assert!(
        line(&report, "skipped   SO-").contains("incomplete_ship_to"),
        "{report}"
    );
    let orders = std::fs::read_to_string(state.join("orders.ndjson")).unwrap();
    assert_eq!(orders.lines().count(), 28);

    // Shipments, with DEAR read back after each.
    assert!(line(&report, "one box").ends_with("→ DEAR: SHIPPED"));
    let two = line(&report, "two boxes");
    assert!(
        two.contains("CTN-1 1Z") && two.contains("CTN-2 1Z") && two.ends_with("SHIPPED"),
        "{two}"
    );
    assert!(line(&report, "partial (1 of 2)").ends_with("→ DEAR: PARTIALLY SHIPPED"));
    let rest = line(&report, "the rest (2 of 2)");
    assert!(
        rest.contains("fulfilment 2") && rest.ends_with("→ DEAR: SHIPPED"),
        "{rest}"
    );
    assert!(line(&report, "replayed").contains(" replayed "));
    assert!(line(&report, "wrong SKU").contains("refused, nothing written"));
    assert!(line(&report, "4 shipments applied").contains("DEAR calls"));

    // Inventory: the differences adjusted, the unknown SKU reported, the repeat a no-op.
    let inventory = line(&report, "snapshot WMS-COUNT-");
    assert!(inventory.contains("outcome applied"), "{inventory}");
    assert!(line(&report, "unknown to DEAR").contains("WMS-ONLY-42"));
    assert!(line(&report, "the same snapshot again").contains("already_applied"));
    let total: u64 = line(&report, "total")
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total > 0 && total < 200, "{report}");

    // The kept store: four shipments done, one sale skipped.
    let records = dearsync(&[
        "records",
        "--state-dir",
        state_arg,
        "--tenant",
        "demo",
        "--job",
        "shipment-confirmation",
        "--state",
        "done",
    ]);
    assert!(records.status.success());
    let listing = String::from_utf8_lossy(&records.stdout);
    assert_eq!(listing.lines().count(), 1 + 4, "{listing}");

    // A second demo refuses to reuse the folder rather than mix two DEAR accounts' state.
    let again = dearsync(&["demo", "--state-dir", state_arg]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
}
