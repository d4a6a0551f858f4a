//! Sets DEAR's stock at one location to the warehouse's snapshot: reads DEAR's levels, works out
//! each SKU's target, and posts only the differences as stock adjustments of absolute quantities.
//!
//! Exactly once: a snapshot id is claimed before anything is posted and recorded when done, so the
//! same snapshot never posts twice; a snapshot older than the last one applied at the location is
//! ignored; a POST whose outcome is unknown is looked up by its reference before anything is
//! re-posted. A run that died half-way is resumed by the next run of the snapshot (its claim lapses
//! three minutes after the dead run's last renewal): it plans again (lines carry absolute targets,
//! so what was applied matches and drops out) and skips the parts the ledger shows posted (a DRAFT
//! does not move stock, so it would stay in the plan).

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Utc};
use dear_client::{
    AdjustmentStatus, AvailabilityQuery, DearDateTime, DearError, Product, ProductQuery,
    READ_BACK_ROUNDS, StockAdjustmentLineWrite, StockAdjustmentWrite,
};
use dearsync_core::settings::{
    AdjustmentStatusSetting, BinNullRow, InventorySyncSettings, QuantityIs, SnapshotScope,
};
use dearsync_core::state::{Claim, ClaimTerms, Cursor, CursorKey, IdempotencyKey};
use dearsync_core::{HeldClaim, Job, JobContext, RunOutcome, RunReport, StoreError};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

use crate::progress::{PartId, ProgressLog, progress_key};
mod settled;
use crate::snapshot::Snapshot;
use settled::RowSkus;

/// What happens to one SKU (and batch).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// DEAR already has the target.
    Unchanged,
    /// Posted in a stock adjustment.
    Adjust,
    /// Beyond the drift threshold: posted as DRAFT for review.
    Review,
    /// Not posted, for this reason.
    Skip(String),
}

/// One planned line.
#[derive(Clone, Debug, Serialize)]
pub struct PlanLine {
    /// The SKU.
    pub sku: String,
    /// Its batch, for batch-tracked products.
    pub batch: Option<String>,
    /// DEAR's level now (on hand or available, per the setting).
    #[serde(serialize_with = "decimal_text")]
    pub dear_now: Decimal,
    /// The target.
    #[serde(serialize_with = "decimal_text")]
    pub target: Decimal,
    /// target − now.
    #[serde(serialize_with = "decimal_text")]
    pub change: Decimal,
    /// What happens.
    pub action: Action,
    /// At a location with bins, what the line sets outside them: the target less what DEAR holds
    /// in the bins (absent when the product has nothing in bins).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_decimal_text"
    )]
    pub outside_bins: Option<Decimal>,
    /// The batch's expiry date, sent for FEFO products (the snapshot's, else DEAR's).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "date_text")]
    pub expiry_date: Option<NaiveDate>,
    #[serde(skip)]
    product_id: Option<Uuid>,
    #[serde(skip)]
    unit_cost: Option<Decimal>,
    /// DEAR holds none of it yet: the line also carries a received date.
    #[serde(skip)]
    new_stock: bool,
}

impl PlanLine {
    /// A line that will not be posted (its action is set when it is skipped).
    fn skipped(sku: &str, batch: Option<String>, now: Decimal, target: Decimal) -> PlanLine {
        PlanLine {
            sku: sku.to_owned(),
            batch,
            dear_now: now,
            target,
            change: target - now,
            action: Action::Adjust,
            outside_bins: None,
            expiry_date: None,
            product_id: None,
            unit_cost: None,
            new_stock: false,
        }
    }
}

fn decimal_text<S: serde::Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&v.normalize())
}

/// A decimal's text (only called for a value: absent ones are skipped).
fn opt_decimal_text<S: serde::Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.collect_str(&d.normalize()),
        None => s.serialize_none(),
    }
}

/// `2027-03-31` (only called for a date: absent ones are skipped).
fn date_text<S: serde::Serializer>(v: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.collect_str(d),
        None => s.serialize_none(),
    }
}

/// How a sync ended. Printed and serialised as its snake_case name (`applied`, `held`…).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Nothing decided yet (a summary being filled).
    #[default]
    Pending,
    /// Posted to DEAR (or nothing differed).
    Applied,
    /// Planned only.
    DryRun,
    /// Applied before: the stored result answers.
    AlreadyApplied,
    /// Older than the last snapshot applied at the location: ignored.
    Stale,
    /// Another worker is applying it.
    InProgress,
    /// Held for a person by the sanity guard: nothing written.
    Held,
}

impl SyncOutcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOutcome::Pending => "pending",
            SyncOutcome::Applied => "applied",
            SyncOutcome::DryRun => "dry_run",
            SyncOutcome::AlreadyApplied => "already_applied",
            SyncOutcome::Stale => "stale",
            SyncOutcome::InProgress => "in_progress",
            SyncOutcome::Held => "held",
        }
    }
}

impl std::fmt::Display for SyncOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Comparing with the name, as reports and tests read it.
impl PartialEq<&str> for SyncOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What a sync did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncSummary {
    /// The tenant.
    pub tenant: String,
    /// The snapshot.
    pub snapshot_id: String,
    /// The DEAR location.
    pub location: String,
    /// How it ended.
    pub outcome: SyncOutcome,
    /// Why, when nothing was applied.
    pub note: Option<String>,
    /// Snapshot lines read.
    pub lines_read: u64,
    /// Lines DEAR already matched.
    pub unchanged: u64,
    /// Lines adjusted.
    pub adjusted: u64,
    /// Lines held for review (DRAFT).
    pub held_for_review: u64,
    /// SKUs DEAR does not know.
    pub unknown_skus: Vec<String>,
    /// Lines skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Stock adjustments posted: (reference, DEAR TaskID).
    pub adjustments: Vec<(String, String)>,
    /// Of those, parts an earlier, cut-off run of this snapshot had posted (not posted again).
    pub resumed_parts: u64,
    /// DEAR calls made.
    pub dear_calls: u64,
    /// DEAR answers that said "throttled" (retried).
    pub dear_throttled: u64,
    /// The plan (changed and skipped lines only).
    pub plan: Vec<PlanLine>,
}

impl SyncSummary {
    /// The summary of a sync that ended as `outcome`, with why.
    fn ended(mut self, outcome: SyncOutcome, note: String) -> SyncSummary {
        self.outcome = outcome;
        self.note = Some(note);
        self
    }

    /// The answer a sender gets: the counts and the adjustments, without the plan.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "snapshot_id": self.snapshot_id, "location": self.location, "outcome": self.outcome,
            "note": self.note, "lines_read": self.lines_read, "unchanged": self.unchanged,
            "adjusted": self.adjusted, "held_for_review": self.held_for_review,
            "unknown_skus": self.unknown_skus, "skipped": self.skipped,
            "adjustments": self.adjustments, "dear_calls": self.dear_calls,
        })
    }

    /// The summary as a CloudWatch EMF line.
    pub fn emf(&self, timestamp_ms: i64) -> String {
        dearsync_core::metrics::emf_line(
            timestamp_ms,
            &[
                ("Tenant", &self.tenant),
                ("Job", Job::InventorySync.as_str()),
            ],
            &[
                ("LinesRead", self.lines_read),
                ("Unchanged", self.unchanged),
                ("Adjusted", self.adjusted),
                ("HeldForReview", self.held_for_review),
                // 1 when the sanity guard held the whole snapshot for a person.
                ("SnapshotHeld", u64::from(self.outcome == SyncOutcome::Held)),
                ("UnknownSkus", self.unknown_skus.len() as u64),
                ("Skipped", self.skipped.values().sum()),
                ("DearCalls", self.dear_calls),
                ("DearThrottled", self.dear_throttled),
            ],
        )
    }
}

/// The run log's report of a sync: snapshots applied and held, lines adjusted and held.
fn run_report(
    result: &Result<SyncSummary, SyncError>,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
) -> RunReport {
    match result {
        Ok(summary) => RunReport::new(
            started_at,
            ended_at,
            RunOutcome::Completed,
            [
                (
                    "snapshots_applied",
                    u64::from(summary.outcome == SyncOutcome::Applied),
                ),
                (
                    "snapshots_held",
                    u64::from(summary.outcome == SyncOutcome::Held),
                ),
                ("lines_read", summary.lines_read),
                ("adjusted", summary.adjusted),
                ("held_for_review", summary.held_for_review),
                ("unknown_skus", summary.unknown_skus.len() as u64),
                ("dear_calls", summary.dear_calls),
                ("dear_throttled", summary.dear_throttled),
            ],
        ),
        Err(e) => RunReport::new(started_at, ended_at, RunOutcome::Aborted, [("failed", 1)])
            .note(e.to_string()),
    }
}

/// Why a sync failed (nothing half-applied: a retry plans again).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Neither the settings nor the snapshot name the location.
    #[error("no location: set inventory_sync.location or the snapshot's location")]
    NoLocation,
    /// The location is not one of DEAR's.
    #[error(
        "{location:?} is not a DEAR location (DEAR has: {}); check inventory_sync.location or the snapshot's location",
        known.join(", ")
    )]
    UnknownLocation {
        /// The name given.
        location: String,
        /// DEAR's locations.
        known: Vec<String>,
    },
    /// `inventory_sync.price_tier_name` is not one of DEAR's tiers.
    #[error(
        "inventory_sync.price_tier_name {name:?} is not a DEAR price tier (DEAR has: {})",
        known.join(", ")
    )]
    UnknownPriceTier {
        /// The name set.
        name: String,
        /// DEAR's tier names.
        known: Vec<String>,
    },
    /// The snapshot id was used before for other lines.
    #[error("snapshot id {0} was used before for other lines; a new snapshot needs a new id")]
    SnapshotIdReused(String),
    /// Under the tenant's SKU aliases the snapshot lists a DEAR SKU twice (once by its warehouse
    /// alias, once by DEAR's own SKU).
    #[error("under sku_aliases the snapshot is not valid: {0}")]
    Aliased(#[source] crate::snapshot::SnapshotError),
    /// DEAR failed or refused; [`SyncError::is_retryable`] tells which.
    #[error("DEAR: {0}")]
    Dear(#[source] DearError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[source] StoreError),
}

impl SyncError {
    /// True when the same sync may succeed later without anyone changing anything (DEAR or the
    /// store was unavailable, a write's outcome is unknown, a race was lost): retrying is safe, it
    /// plans again.
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Dear(e) => e.is_transient() || e.is_outcome_unknown(),
            // As every store failure always was: the sync plans again from DEAR's state.
            SyncError::Store(_) => true,
            _ => false,
        }
    }
}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        SyncError::Store(e)
    }
}

impl From<DearError> for SyncError {
    fn from(e: DearError) -> Self {
        SyncError::Dear(e)
    }
}

/// Everything a sync needs.
pub struct InventorySync {
    /// The tenant, its DEAR client, the state store and the clock.
    pub ctx: JobContext,
    /// The tenant's `[inventory_sync]` settings.
    pub settings: InventorySyncSettings,
}

/// A product as the plan needs it.
#[derive(Clone)]
struct Item {
    id: Uuid,
    sku: String,
    batch_tracked: bool,
    /// FEFO: its adjustment lines carry the batch's expiry date.
    expiry_dated: bool,
    /// AverageCost, when positive: the unit cost of lines for stock DEAR already holds (else the
    /// new-stock cost).
    average_cost: Option<Decimal>,
    /// The unit cost of lines for new stock (none in DEAR): the tier price, else AverageCost.
    new_stock_cost: Option<Decimal>,
}

impl Item {
    fn of(p: &Product, tier: Option<u8>) -> Item {
        let tier_price = tier
            .and_then(|c| p.price_tier(c))
            .filter(|v| *v > Decimal::ZERO);
        let average = p.average_cost.filter(|v| *v > Decimal::ZERO);
        Item {
            id: p.id,
            sku: p.sku.clone().unwrap_or_default(),
            batch_tracked: p.is_batch_tracked(),
            expiry_dated: p.is_expiry_dated(),
            average_cost: average,
            new_stock_cost: tier_price.or(average),
        }
    }
}

/// DEAR's stock of one product (and batch) at the location.
#[derive(Default, Clone)]
struct Level {
    on_hand: Decimal,
    available: Decimal,
    /// The batch's expiry date as DEAR lists it (FEFO products).
    expiry: Option<NaiveDate>,
    /// Of `on_hand` / `available`, what DEAR lists in the location's bins (a line naming the bare
    /// location sets only the stock outside them).
    in_bins: Decimal,
    available_in_bins: Decimal,
    /// What the `Bin: null` rows list (until the reading is resolved, see [`resolve_bins`]).
    null_on_hand: Decimal,
    null_available: Decimal,
}

/// How one sync behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// Plan without writing.
    pub dry_run: bool,
    /// Apply a snapshot the sanity guard would hold (a person checked it).
    pub force: bool,
}

impl InventorySync {
    /// Syncs one snapshot; `dry_run` plans without writing.
    pub async fn sync(&self, snapshot: &Snapshot, dry_run: bool) -> Result<SyncSummary, SyncError> {
        let options = SyncOptions {
            dry_run,
            ..SyncOptions::default()
        };
        self.sync_with(snapshot, options).await
    }

    /// Syncs one snapshot as `options` say; a sync that is not a dry run is logged
    /// (`dearsync status`).
    pub async fn sync_with(
        &self,
        snapshot: &Snapshot,
        options: SyncOptions,
    ) -> Result<SyncSummary, SyncError> {
        let started_at = self.ctx.clock.now();
        let dry_run = options.dry_run;
        let result = self.sync_unlogged(snapshot, options).await;
        if !dry_run {
            let report = run_report(&result, started_at, self.ctx.clock.now());
            dearsync_core::run_log::record_or_warn(
                self.ctx.store.as_ref(),
                &self.ctx.tenant,
                Job::InventorySync,
                &report,
            )
            .await;
        }
        result
    }

    async fn sync_unlogged(
        &self,
        snapshot: &Snapshot,
        options: SyncOptions,
    ) -> Result<SyncSummary, SyncError> {
        let dry_run = options.dry_run;
        let stats_before = self.ctx.dear.stats();
        // The warehouse's SKUs become DEAR's (the tenant's aliases) before anything is compared.
        let aliased;
        let snapshot = if self.settings.sku_aliases.is_empty() {
            snapshot
        } else {
            aliased = snapshot.with_dear_skus(&self.settings.sku_aliases);
            aliased.check().map_err(SyncError::Aliased)?;
            &aliased
        };
        let location = self.target_location(snapshot)?;
        let mut summary = SyncSummary {
            tenant: self.ctx.tenant.to_string(),
            snapshot_id: snapshot.snapshot_id.clone(),
            location: location.clone(),
            lines_read: snapshot.lines.len() as u64,
            ..Default::default()
        };
        let (cursor_key, claim_key) = self.keys(snapshot, &location);
        let cursor = self.ctx.store.cursor(&cursor_key).await?;
        if let Some(note) = stale_note(cursor.as_ref(), snapshot, &location) {
            tracing::warn!(tenant = %self.ctx.tenant, note = %note, "stale snapshot");
            return Ok(summary.ended(SyncOutcome::Stale, note));
        }
        let payload_hash = lines_hash(snapshot);
        let terms = claim_terms();
        let token = if dry_run {
            None
        } else {
            match self
                .claim_snapshot(&claim_key, &payload_hash, snapshot)
                .await?
            {
                Ok(token) => Some(token),
                Err((outcome, note)) => return Ok(summary.ended(outcome, note)),
            }
        };
        let work = self.plan_and_post(snapshot, &payload_hash, &location, options, &mut summary);
        let held = token.as_deref().map(|token| {
            HeldClaim::new(
                self.ctx.store.as_ref(),
                &claim_key,
                token,
                terms.in_progress_for,
            )
        });
        let result = match &held {
            Some(held) => match held.keep_while(work).await {
                Ok(result) => result,
                Err(lost) => {
                    let note = format!("{lost}; it finishes applying the snapshot");
                    return Ok(summary.ended(SyncOutcome::InProgress, note));
                }
            },
            None => work.await,
        };
        let stats = self.ctx.dear.stats();
        summary.dear_calls = stats.calls - stats_before.calls;
        summary.dear_throttled = stats.throttled - stats_before.throttled;
        if let Some(held) = &held {
            // Applied: completed (a repeat is answered from it). Held or failed: released.
            let done = matches!(result, Ok(None)).then(|| {
                serde_json::json!({ "adjustments": summary.adjustments, "adjusted": summary.adjusted, "held_for_review": summary.held_for_review })
                    .to_string()
            });
            held.finish(done.as_deref(), terms.keep_for).await?;
            if done.is_some() {
                self.advance_cursor(&cursor_key, cursor.as_ref(), snapshot)
                    .await?;
            }
        }
        Ok(self.concluded(summary, result?, dry_run))
    }

    /// The DEAR location the snapshot is written to: the settings', else the snapshot's own.
    fn target_location(&self, snapshot: &Snapshot) -> Result<String, SyncError> {
        self.settings
            .location
            .clone()
            .or_else(|| snapshot.location.clone())
            .ok_or(SyncError::NoLocation)
    }

    /// The location's cursor, and the claim of this snapshot at it (locations compared without
    /// case, as DEAR names them).
    fn keys(&self, snapshot: &Snapshot, location: &str) -> (CursorKey, IdempotencyKey) {
        let location = location.to_ascii_lowercase();
        let cursor = CursorKey::new(
            &self.ctx.tenant,
            Job::InventorySync,
            format!("location:{location}"),
        );
        let claim = IdempotencyKey::new(
            &self.ctx.tenant,
            "snapshot",
            format!("{}@{location}", snapshot.snapshot_id),
        );
        (cursor, claim)
    }

    /// How a sync that ran to the end ended: held for a person (`held` says why), a dry run, or
    /// applied; logged.
    fn concluded(
        &self,
        mut summary: SyncSummary,
        held: Option<String>,
        dry_run: bool,
    ) -> SyncSummary {
        if let Some(reason) = held {
            tracing::warn!(tenant = %self.ctx.tenant, snapshot_id = %summary.snapshot_id, reason = %reason,
                "inventory snapshot held for a person: nothing written");
            return if dry_run {
                summary.ended(
                    SyncOutcome::DryRun,
                    format!("a real run would hold it: {reason}"),
                )
            } else {
                summary.ended(SyncOutcome::Held, reason)
            };
        }
        summary.outcome = if dry_run {
            SyncOutcome::DryRun
        } else {
            SyncOutcome::Applied
        };
        tracing::info!(tenant = %self.ctx.tenant, summary = %serde_json::json!({
            "snapshot_id": summary.snapshot_id, "location": summary.location, "lines_read": summary.lines_read,
            "unchanged": summary.unchanged, "adjusted": summary.adjusted, "held_for_review": summary.held_for_review,
            "unknown_skus": summary.unknown_skus.len(), "skipped": summary.skipped, "dear_calls": summary.dear_calls,
        }), "inventory sync");
        if summary.held_for_review > 0 {
            tracing::warn!(tenant = %self.ctx.tenant, lines = summary.held_for_review, "inventory drift beyond the threshold: held as DRAFT for review");
        }
        summary
    }

    /// Claims the snapshot at the location: `Ok(token)` to apply it, else how it ends (applied
    /// before, being applied by another worker); the id used before for other lines is refused.
    async fn claim_snapshot(
        &self,
        key: &IdempotencyKey,
        lines_hash: &str,
        snapshot: &Snapshot,
    ) -> Result<Result<String, (SyncOutcome, String)>, SyncError> {
        match self.ctx.store.claim(key, lines_hash, claim_terms()).await {
            Ok(Claim::Acquired { token }) => Ok(Ok(token)),
            Ok(Claim::Completed { result }) => Ok(Err((
                SyncOutcome::AlreadyApplied,
                format!(
                    "snapshot {} was applied before: {result}",
                    snapshot.snapshot_id
                ),
            ))),
            Ok(Claim::InProgress { until }) => Ok(Err((
                SyncOutcome::InProgress,
                format!("another worker is applying it until {until}"),
            ))),
            Err(StoreError::PayloadMismatch { .. }) => {
                Err(SyncError::SnapshotIdReused(snapshot.snapshot_id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a location name DEAR does not have, naming the ones it has.
    async fn check_location_exists(&self, location: &str) -> Result<(), SyncError> {
        let pages: Vec<_> = self
            .ctx
            .dear
            .locations(None, dear_client::MAX_LIMIT)
            .try_collect()
            .await?;
        let names: Vec<String> = pages
            .into_iter()
            .flat_map(|p| p.items)
            .filter_map(|l| l.name)
            .collect();
        if names
            .iter()
            .any(|n| n.trim().eq_ignore_ascii_case(location.trim()))
        {
            return Ok(());
        }
        Err(SyncError::UnknownLocation {
            location: location.to_owned(),
            known: names,
        })
    }

    /// Plans the snapshot and posts the plan; `Some(reason)` when the sanity guard holds it
    /// (nothing posted).
    async fn plan_and_post(
        &self,
        snapshot: &Snapshot,
        lines_hash: &str,
        location: &str,
        options: SyncOptions,
        summary: &mut SyncSummary,
    ) -> Result<Option<String>, SyncError> {
        let s = &self.settings;
        let (levels, row_skus) = self.levels_at(location).await?;
        // DEAR lists nothing there: an empty location, or a name DEAR does not know (which it
        // would only refuse when the adjustment is posted). Asked only in this case.
        if levels.is_empty() {
            self.check_location_exists(location).await?;
        }
        let orders = if s.subtract_orders_since_snapshot {
            dearsync_core::delivered::delivered_since(
                self.ctx.store.as_ref(),
                &self.ctx.tenant,
                snapshot.as_of,
                location,
            )
            .await?
        } else {
            BTreeMap::new()
        };
        let full = s.snapshot == SnapshotScope::Full;
        let settled = settled::settle(snapshot, &levels, &row_skus, &orders, s, full);
        let mut by_sku = self.items(&settled, snapshot, levels.len()).await?;
        for (sku, item) in settled.items {
            by_sku.entry(sku).or_insert(item);
        }
        let known = Known {
            by_sku: &by_sku,
            absent_zero: &settled.absent_zero,
        };
        let mut wanted = Wanted::of(snapshot, known, &levels, &orders, summary);
        if full {
            wanted.zero_unlisted(&levels, &by_sku);
        }
        let held = hold_reason(&GuardInput {
            stocked: &stocked_products(&levels, &row_skus, &by_sku),
            targets: &wanted.targets,
            minimum_level: s.minimum_level,
            unknown: &summary.unknown_skus,
            lines: snapshot.lines.len(),
            zeroing_percent: s.hold_if_zeroing_percent,
            location,
        });
        let (adjust, review) = self.classify(wanted, &levels, &by_sku, location, summary);
        summary.adjusted = adjust.len() as u64;
        summary.held_for_review = review.len() as u64;
        summary.plan.extend(adjust.iter().cloned());
        summary.plan.extend(review.iter().cloned());
        if let Some(reason) = held
            && (options.dry_run || !options.force)
        {
            return Ok(Some(reason));
        }
        if options.dry_run || (adjust.is_empty() && review.is_empty()) {
            return Ok(None); // nothing to post, nothing to record
        }
        self.post_plan(snapshot, lines_hash, location, &adjust, &review, summary)
            .await?;
        Ok(None)
    }

    /// Records the snapshot's time as the location's last applied one, unless a newer one was.
    async fn advance_cursor(
        &self,
        key: &CursorKey,
        cursor: Option<&Cursor>,
        snapshot: &Snapshot,
    ) -> Result<(), SyncError> {
        let value = snapshot.as_of.to_rfc3339_opts(SecondsFormat::Millis, true);
        let newer = cursor.is_none_or(|c| {
            DateTime::parse_from_rfc3339(&c.value).is_ok_and(|l| snapshot.as_of >= l)
        });
        if newer {
            self.ctx
                .store
                .save_cursor(key, &value, cursor.map(|c| c.version))
                .await?;
        }
        Ok(())
    }

    /// The code of `price_tier_name`'s tier, if one is set.
    async fn price_tier_code(&self) -> Result<Option<u8>, SyncError> {
        let Some(name) = &self.settings.price_tier_name else {
            return Ok(None);
        };
        let tiers = self.ctx.dear.price_tiers().await?;
        tiers
            .iter()
            .find(|t| {
                t.name
                    .as_deref()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(name.trim()))
            })
            .map(|t| Some(t.code))
            .ok_or_else(|| SyncError::UnknownPriceTier {
                name: name.clone(),
                known: tiers.iter().filter_map(|t| t.name.clone()).collect(),
            })
    }

    /// DEAR's levels at the location, per product and batch (bins summed), and the SKU its rows
    /// give each product, a page at a time.
    async fn levels_at(&self, location: &str) -> Result<(Levels, RowSkus), SyncError> {
        let query = AvailabilityQuery {
            location: Some(location.to_owned()),
            ..Default::default()
        };
        let mut levels = Levels::new();
        let mut skus = RowSkus::new();
        let mut pages = std::pin::pin!(
            self.ctx
                .dear
                .product_availability(&query, dear_client::MAX_LIMIT)
        );
        while let Some(page) = pages.try_next().await? {
            for row in page.items.into_iter().filter(|row| {
                row.location
                    .as_deref()
                    .is_some_and(|l| l.trim().eq_ignore_ascii_case(location.trim()))
            }) {
                if let Some(sku) = row.sku.as_deref().filter(|s| !s.trim().is_empty()) {
                    skus.entry(row.id).or_insert_with(|| sku.trim().to_owned());
                }
                add_row(&mut levels, row);
            }
        }
        resolve_bins(&mut levels, self.settings.bin_null_row);
        Ok((levels, skus))
    }

    /// The catalogue entries the plan needs (lower-cased SKU → item): none when every SKU is
    /// settled; each needed SKU on its own (`GET product?Sku=`, which matches SKUs containing
    /// it: the exact one is kept) when that takes fewer calls than the whole catalogue's pages,
    /// estimated from the larger of the location's products and the snapshot's lines.
    async fn items(
        &self,
        settled: &settled::Settled,
        snapshot: &Snapshot,
        products_at_location: usize,
    ) -> Result<HashMap<String, Item>, SyncError> {
        if settled.needed.is_empty() && !settled.needs_catalogue {
            return Ok(HashMap::new());
        }
        // The price tier first: it decides the one cost kept per product.
        let tier = self.price_tier_code().await?;
        let catalogue_pages = products_at_location
            .max(snapshot.lines.len())
            .div_ceil(dear_client::MAX_LIMIT as usize)
            .max(1);
        if settled.needs_catalogue || settled.needed.len() > catalogue_pages {
            return self.catalogue(tier, &ProductQuery::default()).await;
        }
        let mut by_sku = HashMap::new();
        for sku in &settled.needed {
            let query = ProductQuery {
                sku: Some(sku.clone()),
                ..ProductQuery::default()
            };
            let wanted = sku.to_ascii_lowercase();
            let found = self.catalogue(tier, &query).await?;
            by_sku.extend(found.into_iter().filter(|(s, _)| *s == wanted));
        }
        Ok(by_sku)
    }

    /// The catalogue's products matching `query`, reduced to what the plan needs, a page at a
    /// time: lower-cased SKU → item.
    async fn catalogue(
        &self,
        tier: Option<u8>,
        query: &ProductQuery,
    ) -> Result<HashMap<String, Item>, SyncError> {
        let mut by_sku = HashMap::new();
        let mut pages = std::pin::pin!(self.ctx.dear.products(query, dear_client::MAX_LIMIT));
        while let Some(page) = pages.try_next().await? {
            for p in page.items {
                let Some(sku) = p.sku.clone() else { continue };
                by_sku.insert(sku.trim().to_ascii_lowercase(), Item::of(&p, tier));
            }
        }
        Ok(by_sku)
    }

    /// Compares each target with DEAR's level: unchanged lines are counted, lines that cannot be
    /// posted are skipped with their reason, the rest are adjustments or, past the drift
    /// thresholds, lines for review.
    fn classify(
        &self,
        wanted: Wanted,
        levels: &Levels,
        by_sku: &HashMap<String, Item>,
        location: &str,
        summary: &mut SyncSummary,
    ) -> (Vec<PlanLine>, Vec<PlanLine>) {
        let mut adjust = Vec::new();
        let mut review = Vec::new();
        for ((sku, batch), (target, product_id)) in wanted.targets {
            let product = by_sku.get(&sku.to_ascii_lowercase());
            let level = level_of(levels, product_id, product, &batch);
            let given = wanted.expiries.get(&(sku.clone(), batch.clone()));
            let decision = decide(
                &self.settings,
                Candidate {
                    sku,
                    batch,
                    target,
                    product_id,
                },
                product,
                &level,
                given,
                location,
            );
            match decision {
                Decision::Unchanged => summary.unchanged += 1,
                Decision::Skip(line, reason) => skip_line(summary, line, &reason),
                Decision::Post(line) if line.action == Action::Review => review.push(line),
                Decision::Post(line) => adjust.push(line),
            }
        }
        (adjust, review)
    }

    /// Posts the adjustments, then the lines for review as a draft, resuming a cut-off run.
    async fn post_plan(
        &self,
        snapshot: &Snapshot,
        lines_hash: &str,
        location: &str,
        adjust: &[PlanLine],
        review: &[PlanLine],
        summary: &mut SyncSummary,
    ) -> Result<(), SyncError> {
        let s = &self.settings;
        let status = match s.adjustment_status {
            AdjustmentStatusSetting::Completed => AdjustmentStatus::Completed,
            AdjustmentStatusSetting::Draft => AdjustmentStatus::Draft,
        };
        let base_ref = s
            .adjustment_reference
            .replace("{snapshot_id}", &snapshot.snapshot_id);
        let key = progress_key(&self.ctx.tenant, &snapshot.snapshot_id, location);
        let mut progress = ProgressLog::open(self.ctx.store.as_ref(), key, lines_hash).await?;
        let at = Target { location, snapshot };
        self.post(adjust, status, &base_ref, at, summary, &mut progress)
            .await?;
        let review_ref = format!("{base_ref} review");
        self.post(
            review,
            AdjustmentStatus::Draft,
            &review_ref,
            at,
            summary,
            &mut progress,
        )
        .await?;
        progress.finish().await?;
        Ok(())
    }

    /// Posts `lines` in parts of at most `max_lines_per_adjustment`, skipping the parts an
    /// earlier run of this snapshot posted, and looking up a part whose post was cut off.
    async fn post(
        &self,
        lines: &[PlanLine],
        status: AdjustmentStatus,
        base_ref: &str,
        at: Target<'_>,
        summary: &mut SyncSummary,
        progress: &mut ProgressLog<'_>,
    ) -> Result<(), SyncError> {
        let max = self.settings.max_lines_per_adjustment.max(1) as usize;
        let parts: Vec<&[PlanLine]> = lines.chunks(max).collect();
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let reference = if n > 1 {
                format!("{base_ref} ({}/{n})", i + 1)
            } else {
                base_ref.to_owned()
            };
            let body = self.adjustment_body(part, status.clone(), &reference, at);
            let id = PartId {
                reference: reference.clone(),
                body_hash: dearsync_core::sha256_hex(
                    serde_json::to_string(&body).unwrap_or_default().as_bytes(),
                ),
            };
            if let Some(task) = progress.posted_task(&id) {
                tracing::info!(reference = %reference, task = %task, "part posted by an earlier run of this snapshot; not posted again");
                summary.resumed_parts += 1;
                summary.adjustments.push((reference, task.to_owned()));
                continue;
            }
            let found = if progress.was_posting(&id) {
                self.find_by_reference(&reference).await?
            } else {
                None
            };
            let task = match found {
                Some(task) => {
                    summary.resumed_parts += 1;
                    task
                }
                None => {
                    progress.posting(&id).await?;
                    self.create_once(&body, &reference).await?
                }
            };
            progress.posted(&id, &task.to_string()).await?;
            summary.adjustments.push((reference, task.to_string()));
        }
        Ok(())
    }

    /// The stock adjustment that sets `part`'s lines to their targets.
    fn adjustment_body(
        &self,
        part: &[PlanLine],
        status: AdjustmentStatus,
        reference: &str,
        at: Target<'_>,
    ) -> StockAdjustmentWrite {
        StockAdjustmentWrite {
            effective_date: Some(DearDateTime::from_utc(at.snapshot.as_of)),
            status,
            account: self.settings.adjustment_account.clone(),
            reference: Some(reference.to_owned()),
            update_on_hand: Some(self.settings.quantity_is == QuantityIs::OnHand),
            lines: part
                .iter()
                .map(|l| StockAdjustmentLineWrite {
                    product_id: l.product_id,
                    sku: Some(l.sku.clone()),
                    quantity: l.outside_bins.unwrap_or(l.target),
                    unit_cost: l.unit_cost,
                    location: Some(at.location.to_owned()),
                    batch_sn: l.batch.clone(),
                    expiry_date: l.expiry_date.map(DearDateTime::from_date),
                    received_date: l
                        .new_stock
                        .then(|| DearDateTime::from_utc(at.snapshot.as_of)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Posts one adjustment. An unknown outcome (timeout, dropped connection, throttled) is looked
    /// up by its reference before it is posted again (up to [`READ_BACK_ROUNDS`] posts), so it is
    /// applied once. When DEAR may still be applying the post (no answer came), a miss proves
    /// nothing yet: the error goes to the snapshot's retry, whose run looks the part up again
    /// (the progress log's `posting` marker) instead of posting it now. A refusal of a repeated
    /// post is looked up too: the first one may have landed.
    async fn create_once(
        &self,
        body: &StockAdjustmentWrite,
        reference: &str,
    ) -> Result<Uuid, SyncError> {
        let mut posts = 1;
        loop {
            let e = match self.ctx.dear.create_stock_adjustment(body).await {
                Ok(adj) => return Ok(adj.task_id),
                Err(e) => e,
            };
            let repeated_refusal = posts > 1 && matches!(e, DearError::Rejected { .. });
            if !e.is_outcome_unknown() && !repeated_refusal {
                return Err(e.into());
            }
            tracing::warn!(reference = %reference, error = %e, "stock adjustment not confirmed; looking it up");
            if let Some(task) = self.find_by_reference(reference).await? {
                return Ok(task);
            }
            if repeated_refusal || e.may_still_be_applying() || posts >= READ_BACK_ROUNDS {
                return Err(e.into());
            }
            posts += 1;
        }
    }

    async fn find_by_reference(&self, reference: &str) -> Result<Option<Uuid>, SyncError> {
        let pages: Vec<_> = self
            .ctx
            .dear
            .stock_adjustment_list(None, dear_client::MAX_LIMIT)
            .try_collect()
            .await?;
        Ok(pages
            .into_iter()
            .flat_map(|p| p.items)
            .filter(|a| a.status != AdjustmentStatus::Voided)
            .find(|a| a.reference.as_deref() == Some(reference))
            .map(|a| a.task_id))
    }
}

/// A snapshot's claim lapses three minutes after its last renewal: it is renewed while the worker
/// lives, so a crashed worker's snapshot is taken over (and resumed) within three minutes. That is
/// more than DEAR's request timeout plus a renewal interval, so the dead worker's last request has
/// ended by then. The record is kept a year.
fn claim_terms() -> ClaimTerms {
    ClaimTerms {
        in_progress_for: Duration::minutes(3),
        keep_for: Duration::days(365),
    }
}

/// Where a snapshot's adjustments go.
#[derive(Clone, Copy)]
struct Target<'a> {
    location: &'a str,
    snapshot: &'a Snapshot,
}

/// The hash a snapshot's lines are claimed and recorded under.
fn lines_hash(snapshot: &Snapshot) -> String {
    dearsync_core::sha256_hex(canonical_lines(&snapshot.lines).as_bytes())
}

/// The snapshot's lines as the text they are hashed from. Byte for byte the text the first
/// releases hashed (Rust's `Debug` of the lines, when lines had no expiry date), so the records
/// they wrote still match a resent snapshot; an expiry date is appended only when given.
fn canonical_lines(lines: &[crate::snapshot::SnapshotLine]) -> String {
    use std::fmt::Write;
    let mut text = String::from("[");
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "SnapshotLine {{ sku: {:?}, quantity: {:?}, batch: {:?}",
            l.sku, l.quantity, l.batch
        );
        if let Some(date) = l.expiry_date {
            let _ = write!(text, ", expiry_date: {date}");
        }
        if let Some(unreadable) = &l.expiry_unreadable {
            let _ = write!(text, ", expiry_unreadable: {unreadable:?}");
        }
        text.push_str(" }");
    }
    text.push(']');
    text
}

/// What a snapshot line says of its batch's expiry.
#[derive(Clone, Debug, PartialEq)]
enum SnapshotExpiry {
    Date(NaiveDate),
    /// A CSV cell that is no date, as written.
    Unreadable(String),
}

impl SnapshotExpiry {
    fn of(line: &crate::snapshot::SnapshotLine) -> Option<SnapshotExpiry> {
        line.expiry_date.map(SnapshotExpiry::Date).or_else(|| {
            line.expiry_unreadable
                .clone()
                .map(SnapshotExpiry::Unreadable)
        })
    }
}

/// Why a snapshot older than the last one applied at the location is ignored, if it is.
fn stale_note(cursor: Option<&Cursor>, snapshot: &Snapshot, location: &str) -> Option<String> {
    let c = cursor?;
    let last = DateTime::parse_from_rfc3339(&c.value).ok()?;
    (snapshot.as_of < last).then(|| {
        format!(
            "snapshot {} is as of {}, older than the last applied one at {location} ({}); ignored",
            snapshot.snapshot_id,
            snapshot.as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
            c.value
        )
    })
}

/// Why a FEFO line has no expiry date; its text is the line's skip reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NoExpiry {
    /// The snapshot's date cannot be read.
    #[error("expiry_unreadable: the product is FEFO and its expiry date {0:?} is not YYYY-MM-DD")]
    Unreadable(String),
    /// Nobody gives one.
    #[error(
        "expiry_required: the product is FEFO and neither the snapshot line nor DEAR gives the batch's expiry date"
    )]
    Required,
}

/// A FEFO line's expiry date: DEAR's for a batch it holds (another date could make it another
/// cell), else the snapshot's.
fn fefo_expiry(
    dear: Option<NaiveDate>,
    given: Option<&SnapshotExpiry>,
) -> Result<NaiveDate, NoExpiry> {
    match (dear, given) {
        (Some(date), _) => Ok(date),
        (None, Some(SnapshotExpiry::Date(date))) => Ok(*date),
        (None, Some(SnapshotExpiry::Unreadable(text))) => Err(NoExpiry::Unreadable(text.clone())),
        (None, None) => Err(NoExpiry::Required),
    }
}

/// DEAR's levels at the location: product id → (batch, level) rows.
type Levels = HashMap<Uuid, Vec<(Option<String>, Level)>>;

/// A plan's key: (DEAR's SKU, batch — `None` for products not tracked by batch).
type TargetKey = (String, Option<String>);

/// Adds one availability row to its product × batch level (bins and `Bin: null` rows apart).
fn add_row(levels: &mut Levels, row: dear_client::models::ProductAvailability) {
    let batch = row.batch.filter(|b| !b.trim().is_empty());
    let rows = levels.entry(row.id).or_default();
    let at = match rows.iter().position(|(b, _)| *b == batch) {
        Some(i) => i,
        None => {
            rows.push((batch, Level::default()));
            rows.len() - 1
        }
    };
    let l = &mut rows[at].1;
    l.expiry = l.expiry.or(row.expiry_date.map(DearDateTime::date));
    if row.bin.as_deref().is_some_and(|b| !b.trim().is_empty()) {
        l.in_bins += row.on_hand;
        l.available_in_bins += row.available;
    } else {
        l.null_on_hand += row.on_hand;
        l.null_available += row.available;
    }
}

/// What the plan knows of the snapshot's SKUs.
#[derive(Clone, Copy)]
struct Known<'a> {
    /// Lower-cased SKU → its catalogue entry (or, for a settled SKU, what its rows tell).
    by_sku: &'a HashMap<String, Item>,
    /// Lower-cased SKUs counted zero that DEAR lists nowhere at the location: unchanged without
    /// asking the catalogue whether DEAR knows them.
    absent_zero: &'a std::collections::HashSet<String>,
}

/// What the snapshot asks for: a target per (SKU, batch) with the product id, and the expiry
/// dates it gives.
struct Wanted {
    targets: BTreeMap<TargetKey, (Decimal, Uuid)>,
    expiries: HashMap<TargetKey, SnapshotExpiry>,
}

impl Wanted {
    /// The snapshot's lines as targets: SKUs DEAR does not know are listed in the summary, lines
    /// of batch-tracked products without a batch (when DEAR has more than one) are skipped, orders
    /// delivered since the snapshot are taken off, and lines of one (SKU, batch) are summed.
    fn of(
        snapshot: &Snapshot,
        known: Known<'_>,
        levels: &Levels,
        orders: &BTreeMap<String, Decimal>,
        summary: &mut SyncSummary,
    ) -> Wanted {
        let mut wanted = Wanted {
            targets: BTreeMap::new(),
            expiries: HashMap::new(),
        };
        let mut unknown = Vec::new();
        let mut unsubtracted = orders.clone();
        for line in &snapshot.lines {
            let sku = line.sku.trim();
            let lower = sku.to_ascii_lowercase();
            let Some(product) = known.by_sku.get(&lower) else {
                if known.absent_zero.contains(&lower) {
                    summary.unchanged += 1; // none there, none counted: known or not, no change
                } else {
                    unknown.push(sku.to_owned());
                }
                continue;
            };
            let psku = product.sku.clone();
            let batch = if product.batch_tracked {
                match line.batch.clone().filter(|b| !b.trim().is_empty()) {
                    Some(b) => Some(b),
                    None => match only_batch(levels, product.id) {
                        Some(b) => Some(b),
                        None => {
                            let line = PlanLine::skipped(&psku, None, Decimal::ZERO, line.quantity);
                            skip_line(
                                summary,
                                line,
                                "batch_required: the product is batch-tracked and the snapshot line has no batch",
                            );
                            continue;
                        }
                    },
                }
            } else {
                None // FIFO products are not split by batch: the snapshot's batches are summed.
            };
            let mut q = line.quantity;
            if let Some(left) = unsubtracted.get_mut(&psku) {
                // Spread the orders over the SKU's lines in snapshot order: take from the first,
                // each order once.
                let take = (*left).min(q);
                q -= take;
                *left -= take;
            }
            if let Some(given) = SnapshotExpiry::of(line) {
                wanted
                    .expiries
                    .entry((psku.clone(), batch.clone()))
                    .or_insert(given);
            }
            let e = wanted
                .targets
                .entry((psku, batch))
                .or_insert((Decimal::ZERO, product.id));
            e.0 += q;
        }
        unknown.sort();
        unknown.dedup();
        summary.unknown_skus = unknown;
        wanted
    }

    /// A full snapshot: what DEAR stocks at the location and the snapshot does not list goes to 0.
    fn zero_unlisted(&mut self, levels: &Levels, by_sku: &HashMap<String, Item>) {
        let listed: std::collections::HashSet<Uuid> =
            self.targets.values().map(|(_, id)| *id).collect();
        let id_to_item: HashMap<Uuid, &Item> = by_sku.values().map(|p| (p.id, p)).collect();
        for (id, rows) in levels {
            let Some(item) = id_to_item.get(id) else {
                continue;
            };
            if listed.contains(id) {
                continue;
            }
            for (batch, level) in rows {
                if !level.on_hand.is_zero() {
                    let product_batch = if item.batch_tracked {
                        batch.clone()
                    } else {
                        None
                    };
                    self.targets
                        .insert((item.sku.clone(), product_batch), (Decimal::ZERO, *id));
                }
            }
        }
    }
}

/// The one batch DEAR lists for the product at the location, if it lists exactly one.
fn only_batch(levels: &Levels, product: Uuid) -> Option<String> {
    let batches: Vec<&String> = levels
        .get(&product)
        .map(|rows| rows.iter().filter_map(|(b, _)| b.as_ref()).collect())
        .unwrap_or_default();
    match batches.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// The level a target is compared with: that batch's rows for a batch-tracked product, every
/// batch row of the product together for a FIFO one.
fn level_of(
    levels: &Levels,
    product_id: Uuid,
    product: Option<&Item>,
    batch: &Option<String>,
) -> Level {
    let batch_tracked = product.is_some_and(|p| p.batch_tracked);
    levels
        .get(&product_id)
        .map(|rows| rows.iter().filter(|(b, _)| !batch_tracked || b == batch))
        .into_iter()
        .flatten()
        .fold(Level::default(), |mut acc, (_, l)| {
            acc.on_hand += l.on_hand;
            acc.available += l.available;
            acc.in_bins += l.in_bins;
            acc.available_in_bins += l.available_in_bins;
            acc.expiry = acc.expiry.or(l.expiry);
            acc
        })
}

/// One target before it is compared with DEAR.
struct Candidate {
    sku: String,
    batch: Option<String>,
    target: Decimal,
    product_id: Uuid,
}

/// What becomes of one target.
#[derive(Debug)]
enum Decision {
    /// DEAR already has it.
    Unchanged,
    /// It cannot be posted: the line and why.
    Skip(PlanLine, String),
    /// An adjustment (or a line for review).
    Post(PlanLine),
}

/// Decides one target against DEAR's level (pure: the rules of `[inventory_sync]`).
fn decide(
    s: &InventorySyncSettings,
    c: Candidate,
    product: Option<&Item>,
    level: &Level,
    given_expiry: Option<&SnapshotExpiry>,
    location: &str,
) -> Decision {
    let target = if c.target < s.minimum_level {
        Decimal::ZERO
    } else {
        c.target
    };
    let now = match s.quantity_is {
        QuantityIs::OnHand => level.on_hand,
        QuantityIs::Available => level.available,
    };
    if now == target {
        return Decision::Unchanged;
    }
    let skip = |reason: String| {
        Decision::Skip(
            PlanLine::skipped(&c.sku, c.batch.clone(), now, target),
            reason,
        )
    };
    // A line naming the bare location sets the stock outside its bins: what the bins hold
    // stays, so the line carries the rest. Fewer counted than the bins hold is for a
    // person to settle bin by bin.
    let in_bins = match s.quantity_is {
        QuantityIs::OnHand => level.in_bins,
        QuantityIs::Available => level.available_in_bins,
    };
    if target < in_bins {
        return skip(format!(
            "binned_stock: DEAR holds {} in bins at {location}, more than the count; adjust the bins in DEAR",
            in_bins.normalize()
        ));
    }
    let outside_bins = (!in_bins.is_zero()).then(|| target - in_bins);
    // Every line carries a unit cost: DEAR's reference marks it required on every line (and
    // it is reported enforced live), while DEAR is documented to need it for new stock only.
    // Sent always, it is right under both readings.
    let new_stock = level.on_hand <= Decimal::ZERO;
    let empty_outside_bins = level.on_hand - level.in_bins <= Decimal::ZERO;
    let (cost, missing) = if new_stock {
        (
            product.and_then(|p| p.new_stock_cost),
            "no_unit_cost: zero stock in DEAR, and neither the price tier nor AverageCost gives a unit cost",
        )
    } else {
        (
            product.and_then(|p| p.average_cost.or(p.new_stock_cost)),
            "no_unit_cost: neither AverageCost nor the price tier gives a unit cost",
        )
    };
    let Some(unit_cost) = cost else {
        return skip(missing.to_owned());
    };
    // FEFO: DEAR's reference requires the batch's expiry date on the line.
    let expiry_date = if product.is_some_and(|p| p.expiry_dated) {
        match fefo_expiry(level.expiry, given_expiry) {
            Ok(date) => Some(date),
            Err(reason) => return skip(reason.to_string()),
        }
    } else {
        None
    };
    let change = target - now;
    let drift = s.drift_threshold_units.is_some_and(|u| change.abs() > u)
        || s.drift_threshold_percent.is_some_and(|pct| {
            !now.is_zero() && change.abs() * Decimal::ONE_HUNDRED / now.abs() > pct
        });
    Decision::Post(PlanLine {
        sku: c.sku,
        batch: c.batch,
        dear_now: now,
        target,
        change,
        action: if drift {
            Action::Review
        } else {
            Action::Adjust
        },
        expiry_date,
        product_id: Some(c.product_id),
        unit_cost: Some(unit_cost),
        new_stock: empty_outside_bins,
        outside_bins,
    })
}

/// Records a skipped line: in the plan with its reason, and counted by the reason's code (the
/// text before its first `:`).
fn skip_line(summary: &mut SyncSummary, mut line: PlanLine, reason: &str) {
    *summary
        .skipped
        .entry(reason.split(':').next().unwrap_or(reason).to_owned())
        .or_default() += 1;
    line.action = Action::Skip(reason.to_owned());
    summary.plan.push(line);
}

/// Turns the rows read into each product × batch's level at the location, by the reading of the
/// `Bin: null` row: the stock outside bins (every row summed), or the total (bins included). The
/// data settles it when some `Bin: null` row is smaller than its bin rows (it cannot be a total);
/// otherwise `setting` decides. Either way `in_bins` is what the bin rows list.
fn resolve_bins(levels: &mut Levels, setting: BinNullRow) {
    let cannot_be_totals = levels
        .values()
        .flatten()
        .any(|(_, l)| l.in_bins > Decimal::ZERO && l.null_on_hand < l.in_bins);
    let null_is_total = setting == BinNullRow::Total && !cannot_be_totals;
    for (_, l) in levels.values_mut().flatten() {
        if null_is_total {
            l.on_hand = l.null_on_hand;
            l.available = l.null_available;
        } else {
            l.on_hand = l.null_on_hand + l.in_bins;
            l.available = l.null_available + l.available_in_bins;
        }
    }
}

/// DEAR's stocked products at the location (on hand above zero, any batch): id → SKU, as the
/// availability rows name it, else the catalogue.
fn stocked_products(
    levels: &Levels,
    row_skus: &RowSkus,
    by_sku: &HashMap<String, Item>,
) -> BTreeMap<Uuid, String> {
    let sku_of: HashMap<Uuid, &str> = by_sku.values().map(|p| (p.id, p.sku.as_str())).collect();
    levels
        .iter()
        .filter(|(_, rows)| rows.iter().map(|(_, l)| l.on_hand).sum::<Decimal>() > Decimal::ZERO)
        .filter_map(|(id, _)| {
            let sku = row_skus
                .get(id)
                .map(String::as_str)
                .or(sku_of.get(id).copied());
            sku.map(|sku| (*id, sku.to_owned()))
        })
        .collect()
}

/// What the sanity guard looks at.
struct GuardInput<'a> {
    /// DEAR's stocked products at the location: id → SKU.
    stocked: &'a BTreeMap<Uuid, String>,
    /// The planned targets per (SKU, batch), with the product id.
    targets: &'a BTreeMap<TargetKey, (Decimal, Uuid)>,
    /// Targets below it become 0.
    minimum_level: Decimal,
    /// SKUs of the snapshot DEAR does not know.
    unknown: &'a [String],
    /// The snapshot's line count.
    lines: usize,
    /// `hold_if_zeroing_percent`.
    zeroing_percent: Decimal,
    /// For the reason's text.
    location: &'a str,
}

/// How many SKUs a reason names before "…".
const NAMED_IN_REASON: usize = 10;

/// Why a snapshot must be held for a person rather than applied, if it must: it would set more
/// than `zeroing_percent` of the location's stocked SKUs to zero, or more than half of its lines
/// name SKUs DEAR does not know (a wrong file or column, which a full snapshot turns into zeros).
fn hold_reason(g: &GuardInput<'_>) -> Option<String> {
    let mut per_product: HashMap<Uuid, Decimal> = HashMap::new();
    for (target, id) in g.targets.values() {
        let t = if *target < g.minimum_level {
            Decimal::ZERO
        } else {
            *target
        };
        *per_product.entry(*id).or_default() += t;
    }
    let mut zeroed: Vec<&str> = g
        .stocked
        .iter()
        .filter(|(id, _)| per_product.get(id).is_some_and(|t| t.is_zero()))
        .map(|(_, sku)| sku.as_str())
        .collect();
    zeroed.sort_unstable();
    let stocked = Decimal::from(g.stocked.len());
    let mut reasons = Vec::new();
    if !zeroed.is_empty()
        && Decimal::from(zeroed.len()) * Decimal::ONE_HUNDRED > g.zeroing_percent * stocked
    {
        reasons.push(format!(
            "it would set {} of DEAR's {} stocked SKUs at {} to zero (more than \
             hold_if_zeroing_percent = {}%): {}",
            zeroed.len(),
            g.stocked.len(),
            g.location,
            g.zeroing_percent.normalize(),
            first_named(&zeroed)
        ));
    }
    if g.unknown.len() * 2 > g.lines && g.lines > 0 {
        let unknown: Vec<&str> = g.unknown.iter().map(String::as_str).collect();
        reasons.push(format!(
            "{} of its {} lines name SKUs DEAR does not know: {}",
            g.unknown.len(),
            g.lines,
            first_named(&unknown)
        ));
    }
    (!reasons.is_empty()).then(|| {
        format!(
            "held for a person, nothing written: {}. Check the snapshot; to apply it as it is, \
             run again with --force (the Lambda: \"force\": true next to the snapshot)",
            reasons.join("; and ")
        )
    })
}

/// The first few names, then how many more.
fn first_named(names: &[&str]) -> String {
    let shown = names[..names.len().min(NAMED_IN_REASON)].join(", ");
    match names.len().saturating_sub(NAMED_IN_REASON) {
        0 => shown,
        more => format!("{shown} … ({more} more)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fefo_line_takes_dears_date_then_the_snapshots_else_names_why_not() {
        let day = |d| NaiveDate::from_ymd_opt(2027, 3, d).unwrap();
        let given = SnapshotExpiry::Date(day(2));
        let bad = SnapshotExpiry::Unreadable("31/03/2027".into());
        assert_eq!(fefo_expiry(Some(day(1)), Some(&given)), Ok(day(1)));
        assert_eq!(fefo_expiry(Some(day(1)), Some(&bad)), Ok(day(1)));
        assert_eq!(fefo_expiry(None, Some(&given)), Ok(day(2)));
        assert!(
            fefo_expiry(None, Some(&bad))
                .unwrap_err()
                .to_string()
                .starts_with("expiry_unreadable:")
        );
        assert!(
            fefo_expiry(None, None)
                .unwrap_err()
                .to_string()
                .starts_with("expiry_required:")
        );
    }

    fn rows(null: i64, bins: i64) -> Vec<(Option<String>, Level)> {
        vec![(
            None,
            Level {
                null_on_hand: Decimal::from(null),
                null_available: Decimal::from(null),
                in_bins: Decimal::from(bins),
                available_in_bins: Decimal::from(bins),
                ..Level::default()
            },
        )]
    }

    fn resolved(products: &[(i64, i64)], setting: BinNullRow) -> Vec<Decimal> {
        let ids: Vec<Uuid> = products.iter().map(|_| Uuid::new_v4()).collect();
        let mut levels: HashMap<Uuid, Vec<(Option<String>, Level)>> = ids
            .iter()
            .zip(products)
            .map(|(id, (null, bins))| (*id, rows(*null, *bins)))
            .collect();
        resolve_bins(&mut levels, setting);
        ids.iter().map(|id| levels[id][0].1.on_hand).collect()
    }

    #[test]
    fn the_bin_null_row_is_read_from_the_data_where_it_can_be_and_from_the_setting_otherwise() {
        let d = |n: i64| Decimal::from(n);
        // No bins: the same under both.
        for setting in [BinNullRow::Remainder, BinNullRow::Total] {
            assert_eq!(resolved(&[(7, 0)], setting), [d(7)]);
        }
        // A `Bin: null` row below its bins cannot be a total: every row is summed, whatever the
        // setting says, for every product.
        assert_eq!(
            resolved(&[(4, 6), (30, 5)], BinNullRow::Total),
            [d(10), d(35)]
        );
        // Nothing tells: the setting decides.
        assert_eq!(resolved(&[(30, 5)], BinNullRow::Total), [d(30)]);
        assert_eq!(resolved(&[(30, 5)], BinNullRow::Remainder), [d(35)]);
        // Stock only in bins with no `Bin: null` row: that row is no total either.
        assert_eq!(
            resolved(&[(0, 9), (30, 5)], BinNullRow::Total),
            [d(9), d(35)]
        );
    }

    #[test]
    fn lines_are_hashed_as_the_first_releases_did_so_their_records_still_match() {
        // What the first releases hashed: the derived Debug of lines without an expiry date.
        mod legacy {
            #[derive(Debug)]
            #[allow(dead_code)]
            pub struct SnapshotLine {
                pub sku: String,
                pub quantity: rust_decimal::Decimal,
                pub batch: Option<String>,
            }
        }
        let rows = [("A-1", "5", None), ("B \"2\"\u{e9}", "1.50", Some("L\n1"))];
        let lines: Vec<crate::snapshot::SnapshotLine> = rows
            .iter()
            .map(|(sku, q, b)| crate::snapshot::SnapshotLine {
                sku: (*sku).to_owned(),
                quantity: q.parse().unwrap(),
                batch: b.map(str::to_owned),
                expiry_date: None,
                expiry_unreadable: None,
            })
            .collect();
        let old: Vec<legacy::SnapshotLine> = rows
            .iter()
            .map(|(sku, q, b)| legacy::SnapshotLine {
                sku: (*sku).to_owned(),
                quantity: q.parse().unwrap(),
                batch: b.map(str::to_owned),
            })
            .collect();
        assert_eq!(canonical_lines(&lines), format!("{old:?}"));
        let mut dated = lines.clone();
        dated[1].expiry_date = NaiveDate::from_ymd_opt(2027, 3, 31);
        assert!(canonical_lines(&dated).ends_with(", expiry_date: 2027-03-31 }]"));
    }

    use super::*;

    fn item(sku: &str, average_cost: Option<Decimal>) -> Item {
        Item {
            id: Uuid::from_u128(sku.len() as u128),
            sku: sku.to_owned(),
            batch_tracked: false,
            expiry_dated: false,
            average_cost,
            new_stock_cost: average_cost,
        }
    }

    fn candidate(target: i64) -> Candidate {
        Candidate {
            sku: "A".into(),
            batch: None,
            target: Decimal::from(target),
            product_id: Uuid::from_u128(1),
        }
    }

    fn level(on_hand: i64, in_bins: i64) -> Level {
        Level {
            on_hand: Decimal::from(on_hand),
            available: Decimal::from(on_hand),
            in_bins: Decimal::from(in_bins),
            available_in_bins: Decimal::from(in_bins),
            ..Level::default()
        }
    }

    #[test]
    fn each_target_is_unchanged_skipped_or_posted_by_the_rules() {
        let s = InventorySyncSettings {
            minimum_level: Decimal::from(2),
            drift_threshold_units: Some(Decimal::from(50)),
            ..InventorySyncSettings::default()
        };
        let costed = item("A", Some(Decimal::from(3)));
        let decide_at = |target, on_hand, in_bins, product: &Item| {
            decide(
                &s,
                candidate(target),
                Some(product),
                &level(on_hand, in_bins),
                None,
                "Main",
            )
        };
        assert!(matches!(decide_at(5, 5, 0, &costed), Decision::Unchanged));
        // Below the minimum level: 0, so a location already at 0 is unchanged.
        assert!(matches!(decide_at(1, 0, 0, &costed), Decision::Unchanged));
        let Decision::Post(line) = decide_at(8, 5, 0, &costed) else {
            panic!("an adjustment")
        };
        assert_eq!(
            (line.change, line.action, line.unit_cost),
            (Decimal::from(3), Action::Adjust, Some(Decimal::from(3)))
        );
        let Decision::Post(line) = decide_at(80, 5, 0, &costed) else {
            panic!("a line for review")
        };
        assert_eq!(line.action, Action::Review, "past the drift threshold");
        let Decision::Post(line) = decide_at(9, 6, 4, &costed) else {
            panic!("an adjustment outside the bins")
        };
        assert_eq!(line.outside_bins, Some(Decimal::from(5)));
        let Decision::Skip(_, why) = decide_at(3, 6, 4, &costed) else {
            panic!("fewer than the bins hold")
        };
        assert!(why.starts_with("binned_stock:"), "{why}");
        let Decision::Skip(_, why) = decide_at(3, 0, 0, &item("A", None)) else {
            panic!("no cost")
        };
        assert!(why.starts_with("no_unit_cost:"), "{why}");
        let mut fefo = costed.clone();
        fefo.expiry_dated = true;
        let Decision::Skip(_, why) = decide_at(3, 0, 0, &fefo) else {
            panic!("no expiry")
        };
        assert!(why.starts_with("expiry_required"), "{why}");
    }

    #[test]
    fn snapshot_lines_become_summed_targets_less_orders_delivered_since() {
        let mut by_sku = HashMap::new();
        by_sku.insert("a".to_owned(), item("A", Some(Decimal::ONE)));
        let mut lot = item("LOT", Some(Decimal::ONE));
        lot.batch_tracked = true;
        by_sku.insert("lot".to_owned(), lot);
        let line = |sku: &str, q: i64| crate::SnapshotLine {
            sku: sku.into(),
            quantity: Decimal::from(q),
            batch: None,
            expiry_date: None,
            expiry_unreadable: None,
        };
        let snapshot = Snapshot {
            snapshot_id: "S".into(),
            as_of: chrono::Utc::now(),
            location: None,
            lines: vec![
                line(" a ", 4),
                line("A", 3),
                line("nope", 1),
                line("LOT", 2),
            ],
        };
        let orders = BTreeMap::from([("A".to_owned(), Decimal::from(2))]);
        let mut summary = SyncSummary::default();
        let absent_zero = std::collections::HashSet::new();
        let known = Known {
            by_sku: &by_sku,
            absent_zero: &absent_zero,
        };
        let wanted = Wanted::of(&snapshot, known, &Levels::new(), &orders, &mut summary);
        assert_eq!(
            wanted.targets.get(&("A".to_owned(), None)).map(|t| t.0),
            Some(Decimal::from(5)),
            "4 + 3, less the 2 delivered since"
        );
        assert_eq!(summary.unknown_skus, ["nope"]);
        assert_eq!(
            summary.skipped.get("batch_required"),
            Some(&1),
            "no batch, and DEAR lists none"
        );
    }

    #[test]
    fn a_sync_error_is_retryable_when_dear_or_the_store_failed_not_when_the_input_is_wrong() {
        let unavailable = DearError::Unavailable {
            method: "GET".into(),
            path: "ref/productavailability".into(),
            attempts: 3,
            reason: "timed out".into(),
        };
        let rejected = DearError::Rejected {
            method: "POST".into(),
            path: "stockadjustment".into(),
            status: 400,
            code: 400,
            message: "bad line".into(),
        };
        assert!(SyncError::Dear(unavailable).is_retryable());
        assert!(!SyncError::Dear(rejected).is_retryable());
        assert!(SyncError::Store(StoreError::Unavailable("down".into())).is_retryable());
        assert!(SyncError::Store(StoreError::conflict("x", "lost a race")).is_retryable());
        let corrupt = StoreError::Corrupt {
            key: "k".into(),
            detail: "d".into(),
        };
        assert!(SyncError::Store(corrupt).is_retryable(), "as before");
        assert!(!SyncError::NoLocation.is_retryable());
        assert!(!SyncError::SnapshotIdReused("S-1".into()).is_retryable());
        // The cause stays reachable, not flattened into a message.
        let e = SyncError::Store(StoreError::Unavailable("down".into()));
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_dead_workers_last_request_ends_before_its_snapshot_claim_is_taken_over() {
        let lapse = claim_terms().in_progress_for.to_std().unwrap();
        let renew_every = lapse / 3;
        let request = dear_client::RetryPolicy::default().request_timeout;
        assert!(lapse - renew_every > request, "{lapse:?} vs {request:?}");
    }

    fn guard(stocked: usize, zero: usize, unknown: usize, lines: usize) -> Option<String> {
        let ids: Vec<Uuid> = (0..stocked).map(|_| Uuid::new_v4()).collect();
        let stocked_map: BTreeMap<Uuid, String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, format!("SKU-{i:03}")))
            .collect();
        let targets: BTreeMap<(String, Option<String>), (Decimal, Uuid)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let q = if i < zero {
                    Decimal::ZERO
                } else {
                    Decimal::TEN
                };
                ((format!("SKU-{i:03}"), None), (q, *id))
            })
            .collect();
        let unknown: Vec<String> = (0..unknown).map(|i| format!("X-{i}")).collect();
        hold_reason(&GuardInput {
            stocked: &stocked_map,
            targets: &targets,
            minimum_level: Decimal::ZERO,
            unknown: &unknown,
            lines,
            zeroing_percent: Decimal::from(20),
            location: "Main Warehouse",
        })
    }

    #[test]
    fn zeroing_more_than_the_threshold_is_held_and_named() {
        assert_eq!(guard(10, 2, 0, 10), None, "20 % is not more than 20 %");
        let reason = guard(10, 3, 0, 10).expect("30 % is held");
        assert!(
            reason.contains("3 of DEAR's 10 stocked SKUs at Main Warehouse")
                && reason.contains("SKU-000, SKU-001, SKU-002")
                && reason.contains("--force"),
            "{reason}"
        );
        let many = guard(40, 30, 0, 40).unwrap();
        assert!(many.contains("… (20 more)"), "{many}");
    }

    #[test]
    fn mostly_unknown_skus_are_held() {
        assert_eq!(guard(4, 0, 2, 4), None, "half is not more than half");
        let reason = guard(4, 0, 3, 4).expect("held");
        assert!(
            reason.contains("3 of its 4 lines name SKUs DEAR does not know: X-0, X-1, X-2"),
            "{reason}"
        );
    }

    #[test]
    fn targets_below_the_minimum_level_count_as_zero() {
        let id = Uuid::new_v4();
        let stocked = BTreeMap::from([(id, "A".to_owned())]);
        let targets = BTreeMap::from([(("A".to_owned(), None), (Decimal::ONE, id))]);
        let g = GuardInput {
            stocked: &stocked,
            targets: &targets,
            minimum_level: Decimal::TWO,
            unknown: &[],
            lines: 1,
            zeroing_percent: Decimal::from(20),
            location: "Main",
        };
        assert!(hold_reason(&g).is_some());
    }
}
