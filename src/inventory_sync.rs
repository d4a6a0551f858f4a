//! `dearsync inventory-sync FILE [--dry-run]`: sets DEAR's stock at one location to a warehouse
//! snapshot (JSON, or CSV with `--snapshot-id`, `--as-of`, `--location`).

use crate::exit::CliError;
use std::path::PathBuf;

use dearsync_inventory_sync::{InventorySync, Snapshot, SyncOptions, SyncOutcome, parse_instant};

use crate::exit::Ended;
use crate::local::LocalOptions;

/// Options of `dearsync inventory-sync`.
#[derive(clap::Args)]
pub struct InventorySyncArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// The snapshot: `.json`, or `.csv` (columns sku and quantity, by name or alias, optional batch
    /// and location; other columns are ignored: docs/inventory-snapshot.md).
    file: PathBuf,
    /// Print the plan (SKU, DEAR now, target, change, action) without writing.
    #[arg(long)]
    dry_run: bool,
    /// CSV: the snapshot's id.
    #[arg(long)]
    snapshot_id: Option<String>,
    /// CSV: when the levels were true (RFC 3339 or a date).
    #[arg(long)]
    as_of: Option<String>,
    /// CSV: the DEAR location (unless the file has a location column or the settings name one).
    #[arg(long)]
    location: Option<String>,
    /// CSV: which column holds the quantity when the file has several, e.g. "On Hand".
    #[arg(long, value_name = "NAME")]
    quantity_column: Option<String>,
    /// Apply a snapshot the sanity guard holds (it would zero much of the location, or most of
    /// its SKUs are unknown to DEAR): only after a person checked it.
    #[arg(long)]
    force: bool,
    /// No DEAR rate budget at all: only against a simulator with its limit off.
    #[arg(long)]
    no_rate_limit: bool,
}

/// Runs it; needs attention when the snapshot was held or not applied (in progress, stale), or
/// lines were skipped, unknown or held for review.
pub async fn run(args: InventorySyncArgs) -> Result<Ended, CliError> {
    let file = std::fs::File::open(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let is_csv = args
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let snapshot = if is_csv {
        let id = args
            .snapshot_id
            .as_deref()
            .ok_or("a CSV snapshot needs --snapshot-id")?;
        let as_of = parse_instant(
            args.as_of
                .as_deref()
                .ok_or("a CSV snapshot needs --as-of")?,
        )
        .map_err(|e| format!("--as-of: {e}"))?;
        let options = dearsync_inventory_sync::CsvOptions {
            snapshot_id: id,
            as_of,
            location: args.location.as_deref(),
            quantity_column: args.quantity_column.as_deref(),
        };
        Snapshot::from_csv_reader(file, &options)
    } else {
        Snapshot::from_json_reader(file)
    }
    .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let local = args.local.job(args.no_rate_limit).await?;
    let job = InventorySync {
        ctx: local.ctx.in_lane(dearsync_core::Lane::Inventory),
        settings: local.settings.inventory_sync,
    };
    let options = SyncOptions {
        dry_run: args.dry_run,
        force: args.force,
    };
    let s = job
        .sync_with(&snapshot, options)
        .await
        .map_err(|e| e.to_string())?;
    if args.dry_run {
        println!(
            "{:<24} {:<12} {:>12} {:>12} {:>12}  action",
            "sku", "batch", "dear now", "target", "change"
        );
        for l in &s.plan {
            let action = match &l.action {
                dearsync_inventory_sync::Action::Skip(why) => format!("skip: {why}"),
                other => serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            };
            println!(
                "{:<24} {:<12} {:>12} {:>12} {:>12}  {action}",
                l.sku,
                l.batch.as_deref().unwrap_or(""),
                l.dear_now.normalize(),
                l.target.normalize(),
                l.change.normalize()
            );
        }
    }
    eprintln!(
        "inventory sync {} at {}: {}{}",
        s.snapshot_id,
        s.location,
        s.outcome,
        s.note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    eprintln!(
        "  lines read {}  unchanged {}  adjusted {}  held for review {}  unknown SKUs {}  skipped {:?}  DEAR calls {}",
        s.lines_read,
        s.unchanged,
        s.adjusted,
        s.held_for_review,
        s.unknown_skus.len(),
        s.skipped,
        s.dear_calls
    );
    if !s.unknown_skus.is_empty() {
        eprintln!(
            "  unknown SKUs: {}",
            first_of(&s.unknown_skus, UNKNOWN_SKUS_SHOWN)
        );
    }
    for (reference, task) in &s.adjustments {
        eprintln!("  stock adjustment {task}: {reference}");
    }
    if s.outcome == SyncOutcome::InProgress {
        return Ok(Ended::Busy);
    }
    let clean = s.unknown_skus.is_empty()
        && s.skipped.is_empty()
        && s.held_for_review == 0
        && matches!(
            s.outcome,
            SyncOutcome::Applied | SyncOutcome::AlreadyApplied | SyncOutcome::DryRun
        )
        && (s.note.is_none() || s.outcome == SyncOutcome::AlreadyApplied);
    Ok(Ended::attention_if(!clean))
}

/// How many unknown SKUs the summary names (a wrong file can have millions).
const UNKNOWN_SKUS_SHOWN: usize = 20;

/// The first `n` items, and how many more there are.
fn first_of(items: &[String], n: usize) -> String {
    let shown = items[..items.len().min(n)].join(", ");
    match items.len().saturating_sub(n) {
        0 => shown,
        more => format!("{shown} … and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::first_of;

    #[test]
    fn a_long_list_names_its_first_items_and_counts_the_rest() {
        let items: Vec<String> = (1..=25).map(|i| format!("S{i}")).collect();
        let text = first_of(&items, 20);
        assert!(
            text.starts_with("S1, S2,") && text.ends_with("S20 … and 5 more"),
            "{text}"
        );
        assert_eq!(first_of(&items[..2], 20), "S1, S2");
    }
}
