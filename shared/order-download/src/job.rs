//! The Order Download run: poll DEAR, map, validate, deliver each order exactly once per version.
//!
//! One run, in order:
//! 1. take the tenant's order-download lease (a second run exits, saying who works);
//! 2. retry ledger records that are due: failed deliveries (with backoff) and deliveries a crashed
//!    run left in flight;
//! 3. list every sale the filter selects changed since `cursor − overlap` and before the run's
//!    start (all pages, Limit 1000), skip the rows whose `Updated` the ledger already has, and
//!    `GET sale` only for the rest, oldest `Updated` first;
//! 4. save the cursor: the greatest `Updated` below which every listed row was processed (never
//!    the clock, never the last row: saleList is unordered).
//!
//! Each delivery is claimed in the ledger (`in_flight`, conditional) before the sink sees it and
//! marked `done` after, so two runs (or a run and a webhook) never deliver the same version twice;
//! a crash in between is resolved by asking the sink, or by delivering again under the same
//! delivery id when the sink cannot tell.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use dear_client::{DearDateTime, DearError, Sale, SaleListQuery, SaleStatus};
use dearsync_core::delivered::DeliveryFacts;
use dearsync_core::settings::{AddressMismatch, OrderDownloadSettings, SaleStatusFilter};
use dearsync_core::state::{
    CursorKey, DetailChange, LedgerQuery, LedgerRecord, NewRecord, RecordKey, RecordState,
    Transition,
};
use dearsync_core::{Job, JobContext, RunLease, RunOutcome, RunReport, RunStart, StoreError};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::address::address_mismatch;
use crate::cancel::{
    CancelError, CancelFacts, CancelReason, Cancelled, cancel_of, cancellation, recorded,
};
use crate::canonical::{
    SkipReason, apply_sku_rules, delivery_id_for, map_sale, ship_method_code, shipping_method,
    validate,
};
use crate::filter::{
    StatusView, matches_attributes, matches_status, selects_before_shipping, selects_exactly,
    shipping_complete, status_queries,
};
use crate::sink::{OrderSink, delivery_id};

/// The cursor's name within the job.
pub const CURSOR_NAME: &str = "sales";
/// The start of the last run that left a backlog behind the cursor: the next run first works the
/// sales changed since then, so a fresh order never waits for the backlog.
pub const FRESH_CURSOR_NAME: &str = "sales-fresh";
/// How long an in-flight delivery is reserved before another run may take it over.
const IN_FLIGHT_FOR: i64 = 15;

/// Run ids start with this (`run-…`); other claimants (`webhook`) do not hold the run lease.
const RUN_CLAIM_PREFIX: &str = "run-";
/// A first run looks back this far when no `earliest_order_date` is set.
const DEFAULT_LOOKBACK_DAYS: i64 = 30;

/// Everything a run needs.
pub struct OrderDownload {
    /// The tenant, its DEAR client, the state store and the clock.
    pub ctx: JobContext,
    /// The tenant's `[order_download]` settings.
    pub settings: OrderDownloadSettings,
    /// Where orders go.
    pub sink: Arc<dyn OrderSink>,
}

/// Reports progress (the CLI draws a bar).
pub trait Progress: Send + Sync {
    /// `done` of `total` sales of this run handled.
    fn update(&self, done: u64, total: u64);
}

/// How one run behaves.
#[derive(Clone)]
pub struct RunOptions {
    /// This run's id (in the lease and the logs).
    pub run_id: String,
    /// Stop taking new work when less than `margin` is left before this.
    pub deadline: Option<tokio::time::Instant>,
    /// See `deadline`.
    pub margin: StdDuration,
    /// The lease's time to live, renewed as the run works: how long a crashed run blocks the next
    /// one. Default 2 minutes.
    pub lease_ttl: Duration,
    /// Progress reports, if wanted.
    pub progress: Option<Arc<dyn Progress>>,
    /// A backfill: list sales changed since this instead of since the cursor. Orders already
    /// delivered at their current version are not sent again, and the cursor only moves forward.
    pub since: Option<DateTime<Utc>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            run_id: format!("run-{}", Uuid::new_v4().simple()),
            deadline: None,
            margin: StdDuration::from_secs(20),
            lease_ttl: Duration::minutes(2),
            progress: None,
            since: None,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Everything listed was handled.
    #[default]
    Completed,
    /// The deadline came first; the next run resumes.
    StoppedAtDeadline,
    /// Another run holds the lease; this one did nothing.
    LeaseBusy(String),
    /// DEAR, the store or the settings failed; the next run resumes from the saved cursor.
    Aborted(String),
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    /// The tenant.
    pub tenant: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Sale rows listed (after de-duplication across queries).
    pub listed: u64,
    /// Rows skipped because the ledger already had their `Updated`.
    pub unchanged: u64,
    /// `GET sale` calls.
    pub fetched: u64,
    /// Orders delivered.
    pub delivered: u64,
    /// Sales whose order content was unchanged (a status change only): not delivered again.
    pub same_version: u64,
    /// Orders skipped, by reason category.
    pub skipped: BTreeMap<String, u64>,
    /// Sales that stopped matching the filter between listing and fetching.
    pub no_longer_matching: u64,
    /// Deliveries that failed (kept in the ledger for retry).
    pub failed: u64,
    /// Due ledger records retried.
    pub retried: u64,
    /// Crashed deliveries found already delivered by the sink.
    pub recovered: u64,
    /// DEAR calls made (retries included).
    pub dear_calls: u64,
    /// DEAR answers that said "throttled".
    pub throttled: u64,
    /// The cursor before the run.
    pub cursor_before: Option<String>,
    /// The cursor after it.
    pub cursor_after: Option<String>,
    /// A first run (no cursor, no backfill, no `earliest_order_date`) looks back only to this
    /// instant; older sales are not looked at.
    pub first_run_since: Option<String>,
    /// When such a first run found nothing: how many sales of the selected status changed before
    /// that instant (DEAR's total for the first status query).
    pub older_than_first_run: Option<u64>,
    /// Delivered orders cancelled at the warehouse (voided, or credited before shipping).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub cancelled: u64,
    /// Delivered orders cancelled in DEAR after the warehouse started shipping: not sent, alarmed.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub cancelled_after_shipping: u64,
    /// Of `delivered`, resends an operator asked for.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub resent: u64,
    /// Resends not made, by sale id, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_resent: BTreeMap<String, String>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl RunSummary {
    /// What the first-run cut-off left out, for the operator; `None` when it did not apply.
    pub fn first_run_note(&self) -> Option<String> {
        let since = self.first_run_since.as_deref()?;
        Some(match self.older_than_first_run {
            Some(older) if older > 0 => format!(
                "first run: only sales changed since {since} ({DEFAULT_LOOKBACK_DAYS} days back) were \
                 looked at, and none matched; {older} matching sales changed before that. To send \
                 them, run once with --since DATE (the Lambda: {{\"tenant\", \"since\"}}) or set \
                 order_download.earliest_order_date"
            ),
            _ => format!(
                "first run: only sales changed since {since} ({DEFAULT_LOOKBACK_DAYS} days back) were \
                 looked at; --since DATE or order_download.earliest_order_date reaches further"
            ),
        })
    }
}

impl RunSummary {
    /// True when something needs attention: failed deliveries or an aborted run.
    pub fn has_failures(&self) -> bool {
        self.failed > 0 || matches!(self.outcome, Outcome::Aborted(_))
    }

    /// Orders skipped, all reasons.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// The run log's report of this run (`dearsync status`).
    pub fn run_report(&self, started_at: DateTime<Utc>, ended_at: DateTime<Utc>) -> RunReport {
        let outcome = match &self.outcome {
            Outcome::Completed | Outcome::LeaseBusy(_) => RunOutcome::Completed,
            Outcome::StoppedAtDeadline => RunOutcome::StoppedAtDeadline,
            Outcome::Aborted(_) => RunOutcome::Aborted,
        };
        let report = RunReport::new(
            started_at,
            ended_at,
            outcome,
            [
                ("listed", self.listed),
                ("delivered", self.delivered),
                ("skipped", self.skipped_total()),
                ("failed", self.failed),
                ("cancelled", self.cancelled),
                ("cancelled_after_shipping", self.cancelled_after_shipping),
                ("dear_calls", self.dear_calls),
                ("dear_throttled", self.throttled),
            ],
        );
        match &self.outcome {
            Outcome::Aborted(why) => report.note(why.clone()),
            _ => report,
        }
    }

    /// The summary as a CloudWatch EMF line.
    pub fn emf(&self, timestamp_ms: i64) -> String {
        dearsync_core::metrics::emf_line(
            timestamp_ms,
            &[
                ("Tenant", &self.tenant),
                ("Job", Job::OrderDownload.as_str()),
            ],
            &[
                ("Listed", self.listed),
                ("Fetched", self.fetched),
                ("Delivered", self.delivered),
                ("Skipped", self.skipped_total()),
                ("Cancelled", self.cancelled),
                // Alarmed at once: the goods are on their way to a cancelled order.
                ("CancelledAfterShipping", self.cancelled_after_shipping),
                // Alarmed at once: every order with such a method waits for the map.
                (
                    "UnmappedShipMethods",
                    self.skipped
                        .get("unmapped_ship_method")
                        .copied()
                        .unwrap_or(0),
                ),
                // Alarmed at once: a person decides which address is right.
                (
                    "AddressMismatches",
                    self.skipped.get("address_mismatch").copied().unwrap_or(0),
                ),
                ("Failed", self.failed),
                ("Retried", self.retried),
                ("DearCalls", self.dear_calls),
                ("DearThrottled", self.throttled),
                (
                    "RunAborted",
                    u64::from(matches!(self.outcome, Outcome::Aborted(_))),
                ),
            ],
        )
    }
}

/// What the ledger keeps per sale, as the record's `detail`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SaleDetail {
    /// The `Updated` this record was last decided for.
    pub(crate) updated: Option<String>,
    pub(crate) order_number: Option<String>,
    /// Who claimed the delivery: a run id (`run-…`), or `webhook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) claimed_by: Option<String>,
    /// The sink the claimant delivered to, when only one process at a time can hold it (the
    /// locked NDJSON file's identity, [`OrderSink::sole_deliverer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) claimed_sink: Option<String>,
    /// How many contents of this sale were claimed for delivery (the last one's number).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) delivery_sequence: u32,
    /// How many times an operator had it resent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) resends: u32,
    /// The id of the last delivery the warehouse took (absent in records written before it was
    /// kept): what a resend names in `resend_of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delivered_id: Option<String>,
    /// The delivered order's cancellation, once handled (sent, or recorded after shipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cancelled: Option<CancelFacts>,
    /// DEAR's sale status when it was last delivered: a sale back before it was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delivered_status: Option<String>,
    /// The last version the warehouse took, whatever later attempts left the record in (a newer
    /// version skipped or failed, a failed read). Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delivered_version: Option<String>,
    /// What the warehouse side answered the last delivery, briefly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) warehouse_answer: Option<String>,
    /// Where the delivered order ships from, its quantity per SKU and when it was delivered: what
    /// Inventory Sync subtracts from a warehouse snapshot taken before the delivery (core's read
    /// model owns these keys).
    #[serde(flatten)]
    pub(crate) delivery: DeliveryFacts,
}

impl SaleDetail {
    pub(crate) fn of(record: &LedgerRecord) -> SaleDetail {
        record
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default()
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The delivery number of `version` given the sale's record: the same as the record's while it
/// is the same content (a retry), the next one when the content changed.
fn delivery_sequence(record: Option<&LedgerRecord>, version: &str) -> u32 {
    let Some(rec) = record else { return 1 };
    let detail = SaleDetail::of(rec);
    let last = detail.delivery_sequence;
    // Delivered again after its cancellation: a new delivery, which the warehouse must not
    // take for the one it cancelled.
    if rec.input_hash == version && detail.cancelled.is_none() {
        last.max(1)
    } else {
        last + 1
    }
}

fn millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A listed sale: only what the run needs, to keep 10,000 rows small.
#[derive(Clone, Debug)]
struct Listed {
    id: Uuid,
    updated: Option<DateTime<Utc>>,
}

/// How a delivery's claim is found again if its claimant dies before recording the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refind {
    /// By the next run's listing from the saved cursor, which never passes a sale left in flight
    /// (the claim is unlisted: it skips the state index's entry and removal, two writes).
    Cursor,
    /// By the ledger's listing of in-flight records: retries, webhooks, resends, backfills,
    /// cancellations and first runs that look back from the clock: a later listing may not cover them.
    Ledger,
}

/// What a run has handled so far, and how its claims are found again.
struct Seen {
    /// Sales handled (a sale listed twice is handled once).
    handled: HashSet<Uuid>,
    /// Sales left in flight by another claimant: the cursor stops before the first of them.
    held: HashSet<Uuid>,
    /// How this run's claims are found again.
    refind: Refind,
    /// An unlisted claim may be left in flight (this run's, cut short; or another's, still
    /// live): the run hands its lease over, so the next run searches for unlisted claims.
    /// The cursor alone may not find one again: its sale may leave the filters meanwhile.
    may_strand: bool,
}

/// What handling a sale left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// Its record reached a state of its own (or none was needed).
    Settled,
    /// A claim is still in flight (another claimant's): the cursor must not pass the sale.
    /// `unlisted`: the claim may be unlisted (only a search of the records finds it).
    InFlight { unlisted: bool },
}

/// Why a single sale could not be handled (the run goes on or stops, by kind).
enum SaleError {
    /// DEAR or the store is failing: stop the run, resume later.
    Stop(String),
}

impl From<StoreError> for SaleError {
    fn from(e: StoreError) -> Self {
        SaleError::Stop(format!("state store: {e}"))
    }
}

/// Where the cursor may move after a run over `rows` (oldest first) that stopped at `stopped_at`
/// and left the sales in `held` in flight: every row updated before it is done; none when
/// nothing was.
fn cursor_after(
    rows: &[Listed],
    stopped_at: Option<usize>,
    held: &HashSet<Uuid>,
) -> Option<DateTime<Utc>> {
    let first_held = rows.iter().position(|r| held.contains(&r.id));
    let stopped_at = match (stopped_at, first_held) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match stopped_at {
        None => rows.iter().filter_map(|r| r.updated).max(),
        Some(i) => {
            let limit = rows[i].updated;
            rows[..i]
                .iter()
                .filter_map(|r| r.updated)
                .filter(|u| Some(*u) < limit)
                .max()
        }
    }
}

/// `Err` when `ship_method_map` is set and takes neither the sale's method nor a default.
fn ship_method_mapped(sale: &Sale, settings: &OrderDownloadSettings) -> Result<(), SkipReason> {
    ship_method_code(shipping_method(sale, settings).as_deref(), settings).map(|_| ())
}

/// A run's end: an abort becomes the error that stops it.
fn ended(summary: &mut RunSummary) -> Result<(), SaleError> {
    match std::mem::take(&mut summary.outcome) {
        Outcome::Aborted(why) => Err(SaleError::Stop(why)),
        other => {
            summary.outcome = other;
            Ok(())
        }
    }
}

/// A cursor's instant, if it reads as one.
fn parse_millis(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Backoff for a failed delivery: 1, 2, 4 … minutes, at most an hour (CartRover retries hourly).
fn retry_delay(attempts: u32) -> Duration {
    Duration::minutes(1i64 << attempts.saturating_sub(1).min(6)).min(Duration::hours(1))
}

impl OrderDownload {
    fn key(&self, sale_id: Uuid) -> RecordKey {
        RecordKey::new(&self.ctx.tenant, Job::OrderDownload, sale_id.to_string())
    }

    /// Before each sale: `false` (the outcome then says so) once the run is out of time; the run
    /// lease renewed otherwise, and an error once it is lost.
    async fn may_go_on(
        &self,
        opts: &RunOptions,
        lease: &mut RunLease,
        summary: &mut RunSummary,
    ) -> Result<bool, SaleError> {
        if self.out_of_time(opts) {
            summary.outcome = Outcome::StoppedAtDeadline;
            return Ok(false);
        }
        lease
            .keep_alive(self.ctx.clock.now())
            .await
            .map_err(|e| SaleError::Stop(format!("lost the run lease: {e}")))?;
        Ok(true)
    }

    fn out_of_time(&self, opts: &RunOptions) -> bool {
        opts.deadline
            .is_some_and(|d| tokio::time::Instant::now() + opts.margin >= d)
    }

    /// One scheduled run.
    pub async fn run(&self, opts: &RunOptions) -> RunSummary {
        let started_at = self.ctx.clock.now();
        let calls_before = self.ctx.dear.stats();
        let mut summary = RunSummary {
            tenant: self.ctx.tenant.to_string(),
            ..Default::default()
        };
        let lease_key = dearsync_core::state::LeaseKey::new(&self.ctx.tenant, Job::OrderDownload);
        let leases: Arc<dyn dearsync_core::state::Leases> = self.ctx.store.clone();
        let mut lease =
            match RunLease::start(leases, &lease_key, &opts.run_id, opts.lease_ttl).await {
                Ok(RunStart::Acquired(l)) => l,
                Ok(RunStart::Busy { holder, until }) => {
                    let msg = RunStart::busy_message(&lease_key, &holder, until);
                    tracing::info!(tenant = %self.ctx.tenant, "{msg}");
                    summary.outcome = Outcome::LeaseBusy(msg);
                    return summary;
                }
                Err(e) => {
                    summary.outcome = Outcome::Aborted(format!("cannot take the run lease: {e}"));
                    return summary;
                }
            };
        let mut seen = Seen {
            handled: HashSet::new(),
            held: HashSet::new(),
            refind: Refind::Ledger,
            // A run that took over from a dead one looks for its unlisted claims first.
            may_strand: lease.took_over(),
        };
        let result = self
            .run_leased(opts, &mut lease, &mut seen, &mut summary)
            .await;
        if let Err(SaleError::Stop(why)) = result {
            tracing::error!(tenant = %self.ctx.tenant, error = %why, "order download stopped");
            summary.outcome = Outcome::Aborted(why);
        }
        if seen.may_strand {
            tracing::info!(tenant = %self.ctx.tenant,
                "an unlisted claim may be left in flight: the run lease is handed over, so the next run searches for it");
            if let Err(e) = lease.hand_over().await {
                // Not handed over: it lapses by itself, still unreleased, so the next run searches.
                tracing::warn!(tenant = %self.ctx.tenant, error = %e, "could not hand the run lease over; it lapses by itself");
            }
        } else if let Err(e) = lease.finish().await {
            tracing::warn!(tenant = %self.ctx.tenant, error = %e, "could not release the run lease; it lapses by itself");
        }
        let calls = self.ctx.dear.stats();
        summary.dear_calls = calls.calls - calls_before.calls;
        summary.throttled = calls.throttled - calls_before.throttled;
        let report = summary.run_report(started_at, self.ctx.clock.now());
        dearsync_core::run_log::record_or_warn(
            self.ctx.store.as_ref(),
            &self.ctx.tenant,
            Job::OrderDownload,
            &report,
        )
        .await;
        summary
    }

    /// Where the listing starts: a backfill's date, else the saved cursor, else the earliest
    /// order date, else (a first run) the default look-back, noted in the summary.
    fn listing_since(
        &self,
        opts: &RunOptions,
        cursor: Option<&dearsync_core::state::Cursor>,
        run_start: DateTime<Utc>,
        summary: &mut RunSummary,
    ) -> Result<DateTime<Utc>, SaleError> {
        Ok(match (&opts.since, cursor) {
            (Some(backfill), _) => *backfill,
            (None, Some(c)) => DateTime::parse_from_rfc3339(&c.value)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| {
                    SaleError::Stop(format!("the saved cursor {:?} is unreadable: {e}", c.value))
                })?,
            (None, None) => match self.settings.earliest_order_date {
                Some(d) => d.0,
                None => {
                    let cut_off = run_start - Duration::days(DEFAULT_LOOKBACK_DAYS);
                    summary.first_run_since = Some(millis(cut_off));
                    cut_off
                }
            },
        })
    }

    /// Handles the listed rows oldest first, skipping those the retries handled, keeping the lease
    /// alive; `Some(i)` when the run stopped at row `i` (out of time, or aborted: the summary's
    /// outcome says which).
    async fn work_through(
        &self,
        rows: &[Listed],
        seen: &mut Seen,
        opts: &RunOptions,
        lease: &mut RunLease,
        summary: &mut RunSummary,
    ) -> Result<Option<usize>, SaleError> {
        let total = rows.len() as u64;
        for (i, row) in rows.iter().enumerate() {
            if let Some(p) = &opts.progress {
                p.update(i as u64, total);
            }
            if seen.handled.contains(&row.id) {
                continue;
            }
            if !self.may_go_on(opts, lease, summary).await? {
                return Ok(Some(i));
            }
            match self.handle_listed(row, opts, seen.refind, summary).await {
                Ok(Left::Settled) => {}
                Ok(Left::InFlight { unlisted }) => {
                    seen.held.insert(row.id);
                    seen.may_strand |= unlisted;
                }
                Err(SaleError::Stop(why)) => {
                    seen.may_strand |= self.left_own_claim(row.id, opts).await;
                    summary.outcome = Outcome::Aborted(why);
                    return Ok(Some(i));
                }
            }
            // A sale listed twice (it changed during the listing) is handled once.
            seen.handled.insert(row.id);
        }
        Ok(None)
    }

    /// Whether the claim another claimant won on `sale_id` is unlisted (so when the store cannot
    /// say; not so once it is settled).
    async fn claimed_unlisted(&self, sale_id: Uuid) -> bool {
        match self.ctx.store.record(&self.key(sale_id)).await {
            Ok(rec) => rec.is_some_and(|r| r.state == RecordState::InFlight && !r.is_listed()),
            Err(_) => true,
        }
    }

    /// Whether a sale this run stopped at holds an unlisted claim of this run's (so when the
    /// store cannot say).
    async fn left_own_claim(&self, sale_id: Uuid, opts: &RunOptions) -> bool {
        match self.ctx.store.record(&self.key(sale_id)).await {
            Ok(Some(rec)) => {
                rec.state == RecordState::InFlight
                    && !rec.is_listed()
                    && SaleDetail::of(&rec).claimed_by.as_deref() == Some(opts.run_id.as_str())
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    async fn run_leased(
        &self,
        opts: &RunOptions,
        lease: &mut RunLease,
        seen: &mut Seen,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        let run_start = self.ctx.clock.now();

        // 2. Due retries first: they have waited longest; after a run that died, its unlisted
        // claims too.
        if seen.may_strand {
            // Cleared by a search that ends; it sets it again for what it leaves.
            seen.may_strand = false;
            if let Err(e) = self.search_unlisted(opts, lease, seen, summary).await {
                seen.may_strand = true;
                return Err(e);
            }
        }
        self.retry_due(opts, lease, summary, &mut seen.handled)
            .await?;
        if summary.outcome == Outcome::StoppedAtDeadline {
            return Ok(());
        }

        // 3. The listing.
        let cursor_key = CursorKey::new(&self.ctx.tenant, Job::OrderDownload, CURSOR_NAME);
        let cursor = self.ctx.store.cursor(&cursor_key).await?;
        summary.cursor_before = cursor.as_ref().map(|c| c.value.clone());
        let since = self.listing_since(opts, cursor.as_ref(), run_start, summary)?;
        // A claim made from this listing is found again by the next run's, which starts at the
        // same place: the saved cursor, or a first run's `earliest_order_date`. Not so a
        // backfill's date, nor a first run's look-back, which moves with the clock.
        if opts.since.is_none() && (cursor.is_some() || summary.first_run_since.is_none()) {
            seen.refind = Refind::Cursor;
        }
        let overlap = Duration::minutes(i64::from(self.settings.overlap_minutes));

        // 3a. Delivered orders voided (or credited) since: cancelled at the warehouse first.
        self.cancel_changed(
            since - overlap,
            run_start,
            opts,
            lease,
            &mut seen.handled,
            summary,
        )
        .await?;
        if summary.outcome == Outcome::StoppedAtDeadline {
            // Out of time among the cancellations: the cursor stays, the next run lists them again.
            summary.cursor_after = summary.cursor_before.clone();
            return ended(summary);
        }

        // 3b. During a backlog, the sales changed since the last run began come first.
        let fresh_key = CursorKey::new(&self.ctx.tenant, Job::OrderDownload, FRESH_CURSOR_NAME);
        let fresh = self.ctx.store.cursor(&fresh_key).await?;
        let fresh_since = fresh
            .as_ref()
            .and_then(|c| parse_millis(&c.value))
            .filter(|f| opts.since.is_none() && cursor.is_some() && *f > since);
        if let Some(fresh_since) = fresh_since {
            let mut newest = self.list(fresh_since - overlap, run_start).await?;
            newest.sort_by_key(|r| r.updated);
            tracing::info!(tenant = %self.ctx.tenant, backlog_since = %millis(since), fresh = newest.len(),
                "a backlog is behind the cursor: the sales changed since the last run come first");
            if self
                .work_through(&newest, seen, opts, lease, summary)
                .await?
                .is_some()
            {
                // Out of time (or aborted) in the fresh window: the backlog waits, the window
                // stays, and the next run begins with it again.
                summary.cursor_after = summary.cursor_before.clone();
                return ended(summary);
            }
        }

        let mut rows = self.list(since - overlap, run_start).await?;
        if rows.is_empty() && summary.first_run_since.is_some() {
            summary.older_than_first_run = Some(self.count_before(since - overlap).await?);
        }
        // Oldest first, so that a run cut short still moves the cursor over what it finished.
        rows.sort_by_key(|r| r.updated);
        summary.listed = rows.len() as u64;
        let total = rows.len() as u64;

        let stopped_at = self.work_through(&rows, seen, opts, lease, summary).await?;
        if let Some(p) = &opts.progress {
            p.update(stopped_at.map(|i| i as u64).unwrap_or(total), total);
        }

        // 4. The cursor: every row with Updated below it is done, none left in flight. A
        // backfill that began after the cursor moves it not at all: it did not list what lies
        // between, where a crashed run's claim may be waiting for the cursor's next listing.
        let next = cursor_after(&rows, stopped_at, &seen.held);
        let previous = cursor
            .as_ref()
            .and_then(|c| DateTime::parse_from_rfc3339(&c.value).ok());
        let covers_the_cursor = opts
            .since
            .is_none_or(|s| previous.is_none_or(|p| s <= p.to_utc()));
        if let Some(next) = next
            && previous.is_none_or(|p| next > p)
            && covers_the_cursor
        {
            let value = millis(next);
            self.ctx
                .store
                .save_cursor(&cursor_key, &value, cursor.as_ref().map(|c| c.version))
                .await?;
            summary.cursor_after = Some(value);
        } else {
            summary.cursor_after = summary.cursor_before.clone();
        }
        // A backlog left: the next run's fresh window starts at this run's start. None left: the
        // window closes (it is the listing itself), so a run without a backlog lists once.
        let fresh_next = match stopped_at {
            Some(_) => Some(millis(run_start)),
            None => summary.cursor_after.clone(),
        };
        if let Some(value) = fresh_next
            && fresh.as_ref().map(|c| &c.value) != Some(&value)
            && (stopped_at.is_some() || fresh.is_some())
        {
            self.ctx
                .store
                .save_cursor(&fresh_key, &value, fresh.as_ref().map(|c| c.version))
                .await?;
        }
        ended(summary)
    }

    /// Looks at the sales voided or credited in `(since, until)` that the warehouse was sent:
    /// each is cancelled there (`cancel_delivered`). A filter of "Any" lists them with the rest.
    async fn cancel_changed(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        opts: &RunOptions,
        lease: &mut RunLease,
        handled: &mut HashSet<Uuid>,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        if matches!(self.settings.sale_status, SaleStatusFilter::Any) {
            return Ok(());
        }
        for status in [SaleStatus::Voided, SaleStatus::Credited] {
            if selects_exactly(&self.settings.sale_status, &status) {
                continue;
            }
            let query = SaleListQuery {
                status: Some(status),
                updated_since: Some(DearDateTime::from_utc(since)),
                updated_until: Some(DearDateTime::from_utc(until)),
                ..Default::default()
            };
            let mut pages = std::pin::pin!(self.ctx.dear.sale_list(&query, dear_client::MAX_LIMIT));
            while let Some(page) = pages.try_next().await.map_err(dear_stop)? {
                for item in page.items {
                    let record = self.ctx.store.record(&self.key(item.sale_id)).await?;
                    let open = record.as_ref().is_some_and(|r| {
                        sent_version(r).is_some()
                            && SaleDetail::of(r).cancelled.is_none()
                            && !self.is_live_claim(r)
                    });
                    if !open || handled.contains(&item.sale_id) {
                        continue;
                    }
                    if !self.may_go_on(opts, lease, summary).await? {
                        return Ok(());
                    }
                    handled.insert(item.sale_id);
                    let id = item.sale_id;
                    self.fetch_and_deliver(id, None, record, "cancel", Refind::Ledger, summary)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Lists every selected sale changed in `(since, until)`, de-duplicated across queries.
    async fn list(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Listed>, SaleError> {
        let location_id = match &self.settings.location_name {
            Some(name) => Some(self.location_id(name).await?),
            None => None,
        };
        let earliest = self.settings.earliest_order_date.map(|d| d.0.naive_utc());
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        for mut query in status_queries(&self.settings.sale_status) {
            query.updated_since = Some(DearDateTime::from_utc(since));
            query.updated_until = Some(DearDateTime::from_utc(until));
            query.order_location_id = location_id;
            let mut pages = std::pin::pin!(self.ctx.dear.sale_list(&query, dear_client::MAX_LIMIT));
            while let Some(page) = pages.try_next().await.map_err(dear_stop)? {
                for item in page.items {
                    let view = StatusView {
                        status: &item.status,
                        sale_type: &item.sale_type,
                        pick: item.combined_picking_status.as_deref(),
                        pack: item.combined_packing_status.as_deref(),
                        ship: item.combined_shipping_status.as_deref(),
                    };
                    if !matches_status(&self.settings.sale_status, &view) {
                        continue;
                    }
                    let order_date = item.order_date.map(|d| d.0);
                    if let (Some(e), Some(d)) = (earliest, order_date)
                        && d < e
                    {
                        continue;
                    }
                    if seen.insert(item.sale_id) {
                        rows.push(Listed {
                            id: item.sale_id,
                            updated: item.updated.map(|u| u.to_utc()),
                        });
                    }
                }
            }
        }
        Ok(rows)
    }

    /// How many sales of the first status query changed before `until` (one call, Limit 1): what a
    /// first run's cut-off left out.
    async fn count_before(&self, until: DateTime<Utc>) -> Result<u64, SaleError> {
        let Some(mut query) = status_queries(&self.settings.sale_status)
            .into_iter()
            .next()
        else {
            return Ok(0);
        };
        query.updated_until = Some(DearDateTime::from_utc(until));
        let mut pages = std::pin::pin!(self.ctx.dear.sale_list(&query, 1));
        match pages.try_next().await.map_err(dear_stop)? {
            Some(page) => Ok(page.total),
            None => Ok(0),
        }
    }

    async fn location_id(&self, name: &str) -> Result<Uuid, SaleError> {
        let mut known = Vec::new();
        let mut pages = std::pin::pin!(self.ctx.dear.locations(None, dear_client::MAX_LIMIT));
        while let Some(page) = pages.try_next().await.map_err(dear_stop)? {
            for loc in page.items {
                let loc_name = loc.name.clone().unwrap_or_default();
                if loc_name.trim().eq_ignore_ascii_case(name.trim()) {
                    return Ok(loc.id);
                }
                known.push(loc_name);
            }
        }
        Err(SaleError::Stop(format!(
            "order_download.location_name {name:?} is not a DEAR location (DEAR has: {})",
            known.join(", ")
        )))
    }

    /// One listed sale: nothing when the ledger has its listed version settled, else fetched and
    /// delivered. A claim left in flight is its claimant's until due, then taken over (asking the
    /// sink first, as a retry does): the way an unlisted claim of a crashed run is found again.
    async fn handle_listed(
        &self,
        row: &Listed,
        opts: &RunOptions,
        refind: Refind,
        summary: &mut RunSummary,
    ) -> Result<Left, SaleError> {
        let key = self.key(row.id);
        let mut record = self.ctx.store.record(&key).await?;
        if let Some(rec) = record.as_ref().filter(|r| r.state == RecordState::InFlight) {
            if !self.is_due(rec, &opts.run_id) {
                summary.unchanged += 1;
                return Ok(Left::InFlight {
                    unlisted: !rec.is_listed(),
                });
            }
            summary.retried += 1;
            if self.recover_in_flight(rec, summary).await? {
                // Settled, or (a lost race) claimed anew by someone else: theirs, then.
                record = self.ctx.store.record(&key).await?;
                if let Some(theirs) = record.as_ref().filter(|r| r.state == RecordState::InFlight) {
                    return Ok(Left::InFlight {
                        unlisted: !theirs.is_listed(),
                    });
                }
            }
        }
        let now = self.ctx.clock.now();
        let listed_updated = row.updated.map(millis);
        if let Some(rec) = &record {
            let same_updated =
                SaleDetail::of(rec).updated == listed_updated && listed_updated.is_some();
            // A backfill looks at skipped sales again: it usually follows a settings change
            // (a wider attribute filter) that a skip's reason may no longer hold under.
            let settled = rec.state == RecordState::Done
                || (rec.state == RecordState::Skipped && opts.since.is_none());
            let waiting = rec.state == RecordState::Failed && rec.due_at.is_some_and(|d| d > now);
            if (same_updated && settled) || waiting {
                summary.unchanged += 1;
                return Ok(Left::Settled);
            }
        }
        self.fetch_and_deliver(row.id, row.updated, record, &opts.run_id, refind, summary)
            .await
    }

    /// Takes over the unlisted claims a run that died may have left in flight (found by reading
    /// the records, not a listing): each one due is settled as a crashed run's listed claim is;
    /// one still live, or one not reached before the deadline, keeps the search for the next run.
    async fn search_unlisted(
        &self,
        opts: &RunOptions,
        lease: &mut RunLease,
        seen: &mut Seen,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        let mut after = None;
        loop {
            if !self.may_go_on(opts, lease, summary).await? {
                seen.may_strand = true;
                return Ok(());
            }
            let page = self
                .ctx
                .store
                .unlisted_claims(&self.ctx.tenant, Job::OrderDownload, after.as_ref())
                .await?;
            for rec in &page.records {
                if !self.may_go_on(opts, lease, summary).await? {
                    seen.may_strand = true;
                    return Ok(());
                }
                let Ok(id) = rec.key.entity.parse::<Uuid>() else {
                    continue;
                };
                if !self.is_due(rec, &opts.run_id) {
                    seen.may_strand = true;
                    continue;
                }
                summary.retried += 1;
                if self.recover_in_flight(rec, summary).await? {
                    continue;
                }
                seen.handled.insert(id);
                let claimant = &opts.run_id;
                let rec = Some(rec.clone());
                let left = self
                    .fetch_and_deliver(id, None, rec, claimant, Refind::Ledger, summary)
                    .await?;
                // Still in flight (a cancellation waits for the claim to lapse): search again.
                seen.may_strand |= matches!(left, Left::InFlight { .. });
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Retries due failed records and takes over deliveries a crashed run left in flight.
    async fn retry_due(
        &self,
        opts: &RunOptions,
        lease: &mut RunLease,
        summary: &mut RunSummary,
        handled: &mut HashSet<Uuid>,
    ) -> Result<(), SaleError> {
        for state in [RecordState::InFlight, RecordState::Failed] {
            let mut query = LedgerQuery::new(&self.ctx.tenant, Job::OrderDownload, state);
            // In-flight claims are all listed: `is_due` says which are this run's to take over.
            query.due_before = (state == RecordState::Failed).then(|| self.ctx.clock.now());
            query.limit = 200;
            loop {
                let page = self.ctx.store.list(&query).await?;
                for listed in &page.records {
                    if !self.may_go_on(opts, lease, summary).await? {
                        return Ok(());
                    }
                    let Ok(id) = listed.key.entity.parse::<Uuid>() else {
                        continue;
                    };
                    // The index may lag: act on a fresh read only.
                    let Some(rec) = self.ctx.store.record(&listed.key).await? else {
                        continue;
                    };
                    if rec.state != state || !self.is_due(&rec, &opts.run_id) {
                        continue;
                    }
                    summary.retried += 1;
                    if state == RecordState::InFlight
                        && self.recover_in_flight(&rec, summary).await?
                    {
                        // Settled as the version the sink has; the listing below still looks at
                        // the sale, so an edit made while the claim was stuck is delivered now.
                        continue;
                    }
                    handled.insert(id);
                    let claimant = &opts.run_id;
                    self.fetch_and_deliver(id, None, Some(rec), claimant, Refind::Ledger, summary)
                        .await?;
                }
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Whether a failed or in-flight record is this run's to retry now: a failed delivery once its
    /// backoff is over; an in-flight one once its claim lapsed, or, when a run claimed it, as soon
    /// as that run cannot still be delivering it (longer ago than the longest delivery the
    /// settings allow). This run holds the lease, but a slow run may have outlived its own lease
    /// mid-delivery, so the lease alone does not prove the claimant gone — unless the claimant
    /// delivered to the very sink this process now holds alone (the same locked file): then its
    /// delivery is over. A webhook's claim is waited out.
    fn is_due(&self, rec: &LedgerRecord, this_run: &str) -> bool {
        let now = self.ctx.clock.now();
        if rec.due_at.is_some_and(|d| d <= now) {
            return true;
        }
        let detail = SaleDetail::of(rec);
        let Some(claimant) = detail
            .claimed_by
            .filter(|c| rec.state == RecordState::InFlight && c.starts_with(RUN_CLAIM_PREFIX))
        else {
            return false;
        };
        let same_sole_sink = detail
            .claimed_sink
            .is_some_and(|theirs| self.sink.sole_deliverer().as_ref() == Some(&theirs));
        if same_sole_sink && claimant != this_run {
            return true;
        }
        let claimed_at = rec.due_at.map(|d| d - Duration::minutes(IN_FLIGHT_FOR));
        claimed_at.is_some_and(|c| now - c > self.longest_delivery())
    }

    /// The longest one delivery can take: every attempt timing out, with room for the backoff
    /// between attempts.
    fn longest_delivery(&self) -> Duration {
        let od = &self.settings;
        let attempts = i64::from(od.webhook_attempts.max(1));
        Duration::seconds(2 * attempts * i64::from(od.webhook_timeout_secs) + 30)
    }

    /// A run died after claiming a delivery: if the sink has it, record it done.
    async fn recover_in_flight(
        &self,
        rec: &LedgerRecord,
        summary: &mut RunSummary,
    ) -> Result<bool, SaleError> {
        let sequence = SaleDetail::of(rec).delivery_sequence;
        let id = delivery_id_for(&rec.key.entity, &rec.input_hash, sequence);
        match self.sink.was_delivered(&id).await {
            Ok(Some(true)) => {
                let mut detail = SaleDetail::of(rec);
                detail.delivery.delivered(self.ctx.clock.now());
                detail.claimed_by = None;
                detail.delivered_version = Some(rec.input_hash.clone());
                detail.delivered_id = Some(id.clone());
                let change = Transition::to(RecordState::Done).detail(detail.to_json());
                match self.ctx.store.transition(rec, change).await {
                    Ok(_) => {
                        summary.recovered += 1;
                        Ok(true)
                    }
                    Err(e) if e.is_conflict() => Ok(true),
                    Err(e) => Err(e.into()),
                }
            }
            Ok(_) => Ok(false),
            Err(e) => {
                tracing::warn!(delivery = %id, error = %e, "cannot ask the sink about an interrupted delivery; delivering again");
                Ok(false)
            }
        }
    }

    /// Downloads one sale now (the webhook path): same rules as a scheduled run, no listing.
    pub async fn download_one(&self, sale_id: Uuid) -> RunSummary {
        let calls_before = self.ctx.dear.stats();
        let mut summary = RunSummary {
            tenant: self.ctx.tenant.to_string(),
            listed: 1,
            ..Default::default()
        };
        let result = async {
            let record = self.ctx.store.record(&self.key(sale_id)).await?;
            if let Some(rec) = &record
                && rec.state == RecordState::InFlight
                && rec.due_at.is_some_and(|d| d > self.ctx.clock.now())
            {
                summary.unchanged += 1;
                return Ok(());
            }
            self.fetch_and_deliver(
                sale_id,
                None,
                record,
                "webhook",
                Refind::Ledger,
                &mut summary,
            )
            .await
            .map(|_| ())
        }
        .await;
        if let Err(SaleError::Stop(why)) = result {
            summary.outcome = Outcome::Aborted(why);
        }
        let calls = self.ctx.dear.stats();
        summary.dear_calls = calls.calls - calls_before.calls;
        summary.throttled = calls.throttled - calls_before.throttled;
        summary
    }

    /// An operator's resend: delivers the sale again at its current version under a new delivery
    /// id, `resend_of` naming the delivery it repeats, and counts it in the ledger. A sale the
    /// settings no longer select, one that is not a valid order, one DEAR does not have, or one
    /// whose delivery is in flight is not resent; `not_resent` says why.
    pub async fn resend(&self, sale_id: Uuid) -> RunSummary {
        let calls_before = self.ctx.dear.stats();
        let mut summary = RunSummary {
            tenant: self.ctx.tenant.to_string(),
            listed: 1,
            ..Default::default()
        };
        match self.resend_sale(sale_id, &mut summary).await {
            Ok(Err(why)) => {
                tracing::warn!(tenant = %self.ctx.tenant, sale_id = %sale_id, why = %why, "not resent");
                summary.not_resent.insert(sale_id.to_string(), why);
            }
            Ok(Ok(())) => {}
            Err(SaleError::Stop(why)) => summary.outcome = Outcome::Aborted(why),
        }
        let calls = self.ctx.dear.stats();
        summary.dear_calls = calls.calls - calls_before.calls;
        summary.throttled = calls.throttled - calls_before.throttled;
        summary
    }

    /// [`OrderDownload::resend`]; `Ok(Err(why))` when it was not resent.
    async fn resend_sale(
        &self,
        sale_id: Uuid,
        summary: &mut RunSummary,
    ) -> Result<Result<(), String>, SaleError> {
        let record = self.ctx.store.record(&self.key(sale_id)).await?;
        summary.fetched += 1;
        let sale = match self.ctx.dear.sale(sale_id).await {
            Ok(sale) => sale,
            Err(e) if e.is_transient() => return Err(dear_stop(e)),
            Err(e) => return Ok(Err(format!("GET sale {sale_id} failed: {e}"))),
        };
        if !self.selects(&sale) {
            return Ok(Err(format!(
                "the sale no longer matches the filters (status {}, sale_status filter {})",
                sale.status, self.settings.sale_status
            )));
        }
        let mut order = map_sale(&sale, &self.settings, None);
        if let Err(skip) = apply_sku_rules(&mut order, &self.settings)
            .and_then(|()| validate(&order))
            .and_then(|()| ship_method_mapped(&sale, &self.settings))
            .and_then(|()| self.address_guard(&sale))
        {
            return Ok(Err(format!("not a valid order: {}", skip.detail)));
        }
        let previous = record.as_ref().map(SaleDetail::of).unwrap_or_default();
        let sequence = previous.delivery_sequence + 1;
        order.delivery_id = delivery_id_for(&order.sale_id, &order.version, sequence);
        order.resend_of = previous.delivered_id.clone().or_else(|| {
            // Records from before the id was kept: the first delivery of that version's id.
            let v = previous.delivered_version.as_deref()?;
            let same = record.as_ref().is_some_and(|r| r.input_hash == v);
            let n = if same { previous.delivery_sequence } else { 1 };
            Some(delivery_id_for(&order.sale_id, v, n.max(1)))
        });
        let same_content = previous.delivered_version.as_deref() == Some(order.version.as_str());
        let detail = SaleDetail {
            updated: sale.last_modified_on.map(|d| millis(d.to_utc())),
            order_number: Some(order.order_number.clone()),
            claimed_by: Some("resend".to_owned()),
            claimed_sink: self.sink.sole_deliverer(),
            delivery_sequence: sequence,
            resends: previous.resends + 1,
            delivered_id: previous.delivered_id.clone(),
            cancelled: None,
            delivered_status: previous.delivered_status.clone(),
            delivered_version: previous.delivered_version.clone(),
            warehouse_answer: previous.warehouse_answer.clone(),
            // The same content keeps when the warehouse first took it (Inventory Sync's
            // subtraction); new content is new facts.
            delivery: if same_content {
                previous.delivery.clone()
            } else {
                DeliveryFacts::new(order.location.clone(), self.dear_skus(&order.lines))
            },
        };
        let Some(claimed) = self
            .claim_delivery(sale_id, record, &order, &detail, Refind::Ledger)
            .await?
        else {
            return Ok(Err(
                "another delivery of it is in flight; resend it again later".into(),
            ));
        };
        let delivered_before = summary.delivered;
        self.deliver_claimed(claimed, &order, detail, summary)
            .await?;
        summary.resent += summary.delivered - delivered_before;
        Ok(Ok(()))
    }

    async fn fetch_and_deliver(
        &self,
        sale_id: Uuid,
        listed_updated: Option<DateTime<Utc>>,
        record: Option<LedgerRecord>,
        claimant: &str,
        refind: Refind,
        summary: &mut RunSummary,
    ) -> Result<Left, SaleError> {
        let Some(sale) = self.fetch_sale(sale_id, &record, summary).await? else {
            return Ok(Left::Settled);
        };
        let updated = sale.last_modified_on.map(|d| d.to_utc()).or(listed_updated);
        // Voided (or credited before shipping) after the warehouse was sent it: a cancellation,
        // unless the settings select exactly that status.
        let delivered_status = record
            .as_ref()
            .and_then(|r| SaleDetail::of(r).delivered_status);
        let cancel = cancellation(
            &sale,
            &self.settings.sale_status,
            delivered_status.as_deref(),
        );
        if let (Some(reason), Some(rec)) = (cancel, &record)
            && !selects_exactly(&self.settings.sale_status, &sale.status)
            && let Some(version) = sent_version(rec)
        {
            // Another claimant may be delivering it right now: cancelled once its delivery ends.
            if self.is_live_claim(rec) {
                summary.unchanged += 1;
                return Ok(Left::InFlight {
                    unlisted: !rec.is_listed(),
                });
            }
            return self
                .cancel_delivered(rec, &sale, &version, reason, summary)
                .await;
        }
        if !self.selects(&sale) {
            summary.no_longer_matching += 1;
            // A pending or failed record of a sale that moved on is closed; done records stay done.
            if let Some(rec) = record
                && !matches!(rec.state, RecordState::Done | RecordState::Skipped)
            {
                let reason = format!(
                    "the sale no longer matches the filters (status {}, sale_status filter {})",
                    sale.status, self.settings.sale_status
                );
                let number = sale.order_number();
                self.settle(
                    &rec,
                    RecordState::Skipped,
                    Some(reason),
                    None,
                    updated,
                    number,
                )
                .await?;
            }
            return Ok(Left::Settled);
        }
        if selects_before_shipping(&self.settings.sale_status) && shipping_complete(&sale) {
            self.already_shipped(sale_id, record, &sale, updated, summary)
                .await?;
            return Ok(Left::Settled);
        }
        let mut order = map_sale(&sale, &self.settings, listed_updated);
        let rules = apply_sku_rules(&mut order, &self.settings);
        let sequence = delivery_sequence(record.as_ref(), &order.version);
        order.delivery_id = delivery_id_for(&order.sale_id, &order.version, sequence);
        let deliverable = matches_attributes(&self.settings, |n| {
            sale.additional_attribute(n).map(str::to_owned)
        })
        .map_err(|reason| SkipReason {
            category: "attribute_filter",
            detail: reason.to_string(),
        })
        .and(rules)
        .and_then(|()| validate(&order))
        .and_then(|()| ship_method_mapped(&sale, &self.settings))
        .and_then(|()| self.address_guard(&sale));
        if let Err(skip) = deliverable {
            self.record_skip(
                sale_id,
                record,
                &order.version,
                &sale,
                skip,
                updated,
                summary,
            )
            .await?;
            return Ok(Left::Settled);
        }
        // The warehouse has this version already: only a status or timestamp changed, or the
        // content came back to what it took after a newer version was skipped or failed.
        if let Some(rec) = &record
            && rec.state != RecordState::InFlight
            && last_delivered_version(rec).as_deref() == Some(order.version.as_str())
            && SaleDetail::of(rec).cancelled.is_none()
        {
            summary.same_version += 1;
            let number = Some(order.order_number.as_str());
            self.settle(
                rec,
                RecordState::Done,
                None,
                Some(&order.version),
                updated,
                number,
            )
            .await?;
            return Ok(Left::Settled);
        }

        let kept = record.as_ref().map(SaleDetail::of).unwrap_or_default();
        let detail = SaleDetail {
            updated: updated.map(millis),
            order_number: Some(order.order_number.clone()),
            claimed_by: Some(claimant.to_owned()),
            claimed_sink: self.sink.sole_deliverer(),
            delivery_sequence: sequence,
            resends: kept.resends,
            delivered_id: kept.delivered_id,
            cancelled: None,
            delivered_status: kept.delivered_status,
            // Cancelled: what the warehouse had is void, so until this delivery lands it has none
            // (a failed one is delivered again, not taken as delivered).
            delivered_version: if kept.cancelled.is_some() {
                None
            } else {
                record.as_ref().and_then(last_delivered_version)
            },
            warehouse_answer: kept.warehouse_answer,
            delivery: DeliveryFacts::new(order.location.clone(), self.dear_skus(&order.lines)),
        };
        // Another run or a webhook claimed it first: theirs to deliver.
        let Some(claimed) = self
            .claim_delivery(sale_id, record, &order, &detail, refind)
            .await?
        else {
            summary.unchanged += 1;
            return Ok(Left::InFlight {
                unlisted: self.claimed_unlisted(sale_id).await,
            });
        };
        self.deliver_claimed(claimed, &order, detail, summary)
            .await?;
        Ok(Left::Settled)
    }

    /// Sends (or, once shipping began, records) the cancellation of the delivered `version`,
    /// once: a record whose cancellation was handled is left as it is. The warehouse no longer
    /// holds the order, so Inventory Sync stops subtracting it.
    async fn cancel_delivered(
        &self,
        rec: &LedgerRecord,
        sale: &Sale,
        version: &str,
        reason: CancelReason,
        summary: &mut RunSummary,
    ) -> Result<Left, SaleError> {
        let mut detail = SaleDetail::of(rec);
        if detail.cancelled.is_some() && rec.state == RecordState::Done {
            summary.same_version += 1;
            return Ok(Left::Settled);
        }
        let delivered_id = detail.delivered_id.clone().unwrap_or_else(|| {
            delivery_id_for(
                &sale.id.to_string(),
                version,
                detail.delivery_sequence.max(1),
            )
        });
        let cancel = cancel_of(sale, version, &delivered_id, reason, self.ctx.clock.now());
        let facts = match self.send_cancel(sale, &cancel).await {
            Ok(Cancelled::Sent(facts)) => {
                summary.cancelled += 1;
                tracing::info!(tenant = %self.ctx.tenant, sale_id = %sale.id, order_number = %cancel.order_number,
                    reason = reason.as_str(), "order cancelled at the warehouse");
                facts
            }
            Ok(Cancelled::AfterShipping(facts)) => {
                summary.cancelled_after_shipping += 1;
                tracing::error!(tenant = %self.ctx.tenant, sale_id = %sale.id, order_number = %cancel.order_number,
                    reason = reason.as_str(), "cancelled in DEAR after the warehouse started shipping: not sent, for a person");
                facts
            }
            Ok(Cancelled::InProgress) => {
                // Another worker is cancelling it; a claim still in flight stays in sight.
                summary.unchanged += 1;
                return Ok(match rec.state {
                    RecordState::InFlight => Left::InFlight {
                        unlisted: !rec.is_listed(),
                    },
                    _ => Left::Settled,
                });
            }
            Err(CancelError::Store(e)) => return Err(e.into()),
            Err(e @ CancelError::Sink(_)) => {
                summary.failed += 1;
                let change = Transition::to(RecordState::Failed)
                    .reason(e.to_string())
                    .attempt()
                    .due_at(self.ctx.clock.now() + retry_delay(rec.attempts + 1));
                StoreError::unless_raced(self.ctx.store.transition(rec, change).await)?;
                tracing::warn!(tenant = %self.ctx.tenant, sale_id = %sale.id, error = %e, "cancellation not delivered; it will be retried");
                return Ok(Left::Settled);
            }
        };
        detail.delivery = DeliveryFacts::default();
        let change = recorded(&facts).detail(
            SaleDetail {
                cancelled: Some(facts),
                ..detail
            }
            .to_json(),
        );
        StoreError::unless_raced(self.ctx.store.transition(rec, change).await)?;
        Ok(Left::Settled)
    }

    /// An in-flight claim whose holder may still be delivering.
    fn is_live_claim(&self, rec: &LedgerRecord) -> bool {
        rec.state == RecordState::InFlight && rec.due_at.is_some_and(|d| d > self.ctx.clock.now())
    }

    /// The order's lines under DEAR's SKUs (the aliases undone): what Inventory Sync subtracts.
    fn dear_skus<'a>(
        &'a self,
        lines: &'a [crate::canonical::OrderLine],
    ) -> impl Iterator<Item = (&'a str, rust_decimal::Decimal)> + 'a {
        lines
            .iter()
            .map(|l| (self.settings.sku_aliases.to_dear(&l.sku), l.quantity))
    }

    /// `Err` for a ship-to address typed over on the order in DEAR, unless the settings only
    /// warn about it.
    fn address_guard(&self, sale: &Sale) -> Result<(), SkipReason> {
        let Some(why) = sale.shipping_address.as_ref().and_then(address_mismatch) else {
            return Ok(());
        };
        match self.settings.address_mismatch {
            AddressMismatch::Hold => Err(SkipReason {
                category: "address_mismatch",
                detail: why,
            }),
            AddressMismatch::Warn => {
                tracing::warn!(tenant = %self.ctx.tenant, sale_id = %sale.id, why = %why,
                    "ship-to address typed over on the order; sent as its fields say (address_mismatch = warn)");
                Ok(())
            }
        }
    }

    /// Reads the sale. A refusal of this one sale (deleted? a bad record?) is recorded as its
    /// failure, to retry later (`None`); DEAR down, the key refused or the budget gone stop the run.
    async fn fetch_sale(
        &self,
        sale_id: Uuid,
        record: &Option<LedgerRecord>,
        summary: &mut RunSummary,
    ) -> Result<Option<Sale>, SaleError> {
        summary.fetched += 1;
        match self.ctx.dear.sale(sale_id).await {
            Ok(sale) => Ok(Some(sale)),
            Err(e)
                if e.is_transient()
                    || matches!(
                        e,
                        DearError::Credentials { .. } | DearError::Config(_) | DearError::Budget(_)
                    ) =>
            {
                Err(dear_stop(e))
            }
            Err(e) => {
                let reason = format!("GET sale {sale_id} failed: {e}");
                self.record_failure(sale_id, record.clone(), None, &reason, summary)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Whether the sale, as DEAR has it now, is one the settings select (status, earliest date,
    /// location).
    fn selects(&self, sale: &Sale) -> bool {
        let view = StatusView {
            status: &sale.status,
            sale_type: &sale.sale_type,
            pick: sale.combined_picking_status.as_deref(),
            pack: sale.combined_packing_status.as_deref(),
            ship: sale.combined_shipping_status.as_deref(),
        };
        matches_status(&self.settings.sale_status, &view)
            && !self.before_earliest(sale)
            && self.matches_location(sale)
    }

    /// Claims the delivery of `order`: its record in flight until the longest delivery is over.
    /// `None`: another run or a webhook claimed it first.
    async fn claim_delivery(
        &self,
        sale_id: Uuid,
        record: Option<LedgerRecord>,
        order: &crate::CanonicalOrder,
        detail: &SaleDetail,
        refind: Refind,
    ) -> Result<Option<LedgerRecord>, SaleError> {
        let due = self.ctx.clock.now() + Duration::minutes(IN_FLIGHT_FOR);
        let unlisted = refind == Refind::Cursor;
        let claimed = match record {
            None => {
                let mut new =
                    NewRecord::new(self.key(sale_id), RecordState::InFlight, &order.version);
                new.attempts = 1;
                new.due_at = Some(due);
                new.detail = Some(detail.to_json());
                new.order_number = Some(order.order_number.clone());
                new.unlisted = unlisted;
                self.ctx.store.insert(new).await
            }
            Some(rec) => {
                let mut change = Transition::to(RecordState::InFlight)
                    .input_hash(&order.version)
                    .attempt()
                    .due_at(due)
                    .detail(detail.to_json())
                    .order_number(Some(&order.order_number));
                change.unlisted = unlisted;
                self.ctx.store.transition(&rec, change).await
            }
        };
        Ok(StoreError::unless_raced(claimed)?)
    }

    /// Delivers a claimed order and records the answer: done, or failed with a retry time.
    async fn deliver_claimed(
        &self,
        claimed: LedgerRecord,
        order: &crate::CanonicalOrder,
        detail: SaleDetail,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        let sale_id = &order.sale_id;
        match self.sink.deliver(order).await {
            Ok(receipt) => {
                let mut detail = detail;
                if receipt.answer.is_some() {
                    detail.warehouse_answer = receipt.answer;
                }
                // A resend of what the warehouse had keeps when it first took it.
                if detail.delivery.delivered_at.is_none() {
                    detail.delivery.delivered(self.ctx.clock.now());
                }
                detail.claimed_by = None;
                detail.delivered_version = Some(order.version.clone());
                detail.delivered_id = Some(order.delivery_id.clone());
                detail.delivered_status = Some(order.status.clone());
                let change = Transition::to(RecordState::Done).detail(detail.to_json());
                self.ctx.store.transition(&claimed, change).await?;
                summary.delivered += 1;
                tracing::info!(tenant = %self.ctx.tenant, sale_id = %sale_id, order_number = %order.order_number,
                    delivery = %delivery_id(order), "order delivered");
            }
            Err(e) => {
                summary.failed += 1;
                let change = Transition::to(RecordState::Failed)
                    .reason(format!("delivery failed: {e}"))
                    .due_at(self.ctx.clock.now() + retry_delay(claimed.attempts));
                self.ctx.store.transition(&claimed, change).await?;
                tracing::warn!(tenant = %self.ctx.tenant, sale_id = %sale_id, error = %e, attempts = claimed.attempts,
                    "order delivery failed; it will be retried");
            }
        }
        Ok(())
    }

    /// A sale DEAR shows shipped is never sent (again) for a status before shipping: one
    /// delivered before stays done (the warehouse shipped it), any other is skipped.
    async fn already_shipped(
        &self,
        sale_id: Uuid,
        record: Option<LedgerRecord>,
        sale: &Sale,
        updated: Option<DateTime<Utc>>,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        if let Some(rec) = &record
            && rec.state == RecordState::Done
        {
            summary.same_version += 1;
            return self
                .settle(
                    rec,
                    RecordState::Done,
                    None,
                    None,
                    updated,
                    sale.order_number(),
                )
                .await;
        }
        let skip = SkipReason {
            category: "already_shipped",
            detail: format!(
                "DEAR shows the sale shipped (CombinedShippingStatus {}, Status {}); a sale selected \
                 before shipping is never sent to the warehouse once shipped",
                sale.combined_shipping_status.as_deref().unwrap_or("-"),
                sale.status
            ),
        };
        let version = map_sale(sale, &self.settings, None).version;
        self.record_skip(sale_id, record, &version, sale, skip, updated, summary)
            .await
    }

    fn before_earliest(&self, sale: &Sale) -> bool {
        match (self.settings.earliest_order_date, sale.sale_order_date) {
            (Some(e), Some(d)) => d.0 < e.0.naive_utc(),
            _ => false,
        }
    }

    fn matches_location(&self, sale: &Sale) -> bool {
        match &self.settings.location_name {
            None => true,
            Some(name) => sale
                .location
                .as_deref()
                .is_some_and(|l| l.trim().eq_ignore_ascii_case(name.trim())),
        }
    }

    /// Moves a record to a final state for `updated` (no attempt counted).
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        rec: &LedgerRecord,
        state: RecordState,
        reason: Option<String>,
        input_hash: Option<&str>,
        updated: Option<DateTime<Utc>>,
        order_number: Option<&str>,
    ) -> Result<(), SaleError> {
        let mut detail = SaleDetail::of(rec);
        detail.updated = updated.map(millis);
        // The sale's number as DEAR shows it now (a record first written without one learns it).
        if let Some(number) = order_number {
            detail.order_number = Some(number.to_owned());
        }
        let mut change = Transition::to(state);
        change.reason = reason;
        change.input_hash = input_hash.map(str::to_owned);
        change.detail = DetailChange::Set(detail.to_json());
        let change = change.order_number(detail.order_number.as_deref());
        StoreError::unless_raced(self.ctx.store.transition(rec, change).await)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_skip(
        &self,
        sale_id: Uuid,
        record: Option<LedgerRecord>,
        version: &str,
        sale: &Sale,
        skip: SkipReason,
        updated: Option<DateTime<Utc>>,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        *summary.skipped.entry(skip.category.to_owned()).or_default() += 1;
        tracing::info!(tenant = %self.ctx.tenant, sale_id = %sale_id, order_number = sale.order_number().unwrap_or(""),
            reason = %skip.detail, "order skipped");
        let reason = format!("{}: {}", skip.category, skip.detail);
        match record {
            Some(rec) if rec.state == RecordState::Done => {
                // Delivered before; this newer version is not deliverable. Recorded, not delivered.
                self.settle(
                    &rec,
                    RecordState::Skipped,
                    Some(reason),
                    Some(version),
                    updated,
                    sale.order_number(),
                )
                .await
            }
            Some(rec) => {
                self.settle(
                    &rec,
                    RecordState::Skipped,
                    Some(reason),
                    Some(version),
                    updated,
                    sale.order_number(),
                )
                .await
            }
            None => {
                let mut new = NewRecord::new(self.key(sale_id), RecordState::Skipped, version);
                new.reason = Some(reason);
                new.order_number = sale.order_number().map(str::to_owned);
                new.detail = Some(
                    SaleDetail {
                        updated: updated.map(millis),
                        order_number: sale.order_number().map(str::to_owned),
                        ..Default::default()
                    }
                    .to_json(),
                );
                StoreError::unless_raced(self.ctx.store.insert(new).await)?;
                Ok(())
            }
        }
    }

    async fn record_failure(
        &self,
        sale_id: Uuid,
        record: Option<LedgerRecord>,
        updated: Option<DateTime<Utc>>,
        reason: &str,
        summary: &mut RunSummary,
    ) -> Result<(), SaleError> {
        summary.failed += 1;
        tracing::warn!(tenant = %self.ctx.tenant, sale_id = %sale_id, reason, "sale could not be downloaded");
        let now = self.ctx.clock.now();
        let result = match record {
            Some(rec) => {
                let attempts = rec.attempts + 1;
                let change = Transition::to(RecordState::Failed)
                    .reason(reason)
                    .attempt()
                    .due_at(now + retry_delay(attempts));
                self.ctx.store.transition(&rec, change).await.map(|_| ())
            }
            None => {
                let mut new = NewRecord::new(self.key(sale_id), RecordState::Failed, "");
                new.reason = Some(reason.to_owned());
                new.attempts = 1;
                new.due_at = Some(now + retry_delay(1));
                new.detail = Some(
                    SaleDetail {
                        updated: updated.map(millis),
                        ..Default::default()
                    }
                    .to_json(),
                );
                self.ctx.store.insert(new).await.map(|_| ())
            }
        };
        StoreError::unless_raced(result)?;
        Ok(())
    }
}

/// The last version of the sale the warehouse took, if any: kept in the detail, or (records
/// written before it was kept) the version of a done record.
/// The version the warehouse may hold: the last delivered, else one whose delivery was claimed
/// and may have arrived (in flight, or failed after it was sent: a timeout can hide an arrival).
/// A cancellation for an order the warehouse never got is one it can ignore; a missed one ships.
fn sent_version(rec: &LedgerRecord) -> Option<String> {
    let claimed = SaleDetail::of(rec).delivery_sequence > 0;
    last_delivered_version(rec).or_else(|| {
        (claimed && matches!(rec.state, RecordState::InFlight | RecordState::Failed))
            .then(|| rec.input_hash.clone())
    })
}

fn last_delivered_version(rec: &LedgerRecord) -> Option<String> {
    SaleDetail::of(rec)
        .delivered_version
        .or_else(|| (rec.state == RecordState::Done).then(|| rec.input_hash.clone()))
}

fn dear_stop(e: DearError) -> SaleError {
    SaleError::Stop(format!("DEAR: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(minute: u32) -> Listed {
        Listed {
            id: Uuid::new_v4(),
            updated: DateTime::parse_from_rfc3339(&format!("2026-11-20T06:{minute:02}:00Z"))
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    #[test]
    fn the_cursor_moves_over_what_the_run_finished_and_no_further() {
        let rows = [listed(1), listed(2), listed(2), listed(5)];
        let none = HashSet::new();
        assert_eq!(
            cursor_after(&rows, None, &none),
            rows[3].updated,
            "all done"
        );
        // Stopped at the second row updated at :02: the first one at :02 may be done, but a
        // cursor at :02 would hide the unfinished one, so it stays at :01.
        assert_eq!(cursor_after(&rows, Some(2), &none), rows[0].updated);
        assert_eq!(
            cursor_after(&rows, Some(0), &none),
            None,
            "nothing finished"
        );
        assert_eq!(cursor_after(&[], None, &none), None);
    }

    #[test]
    fn the_cursor_stops_before_a_sale_left_in_flight() {
        let rows = [listed(1), listed(2), listed(3), listed(5)];
        let held = HashSet::from([rows[2].id]);
        assert_eq!(cursor_after(&rows, None, &held), rows[1].updated);
        // Whichever comes first: the stop or the held sale.
        assert_eq!(cursor_after(&rows, Some(1), &held), rows[0].updated);
        assert_eq!(cursor_after(&rows, Some(3), &held), rows[1].updated);
        let first = HashSet::from([rows[0].id]);
        assert_eq!(cursor_after(&rows, None, &first), None);
    }
}
