//! Applies one warehouse shipment to DEAR: pick → pack (a box per package) → ship (a line per box
//! with carrier and tracking), exactly once, resumable, with late tracking updates.
//!
//! Exactly once: the shipment id is claimed in the idempotency store before anything is written
//! (a concurrent duplicate is told it is in progress; a repeat gets the stored result), and the
//! ledger records which fulfilment the shipment uses, so a retry after a crash re-reads that
//! fulfilment's stages in DEAR and continues from the first one not yet authorised. A write whose
//! outcome is unknown (a timeout) is settled by re-reading the stage before anything is written again.

use std::collections::BTreeMap;

use chrono::Duration;
use dear_client::{
    DearDateTime, DearError, Fulfilment, FulfilmentLine, PickPack, READ_BACK_ROUNDS, Sale,
    SaleListQuery, SaleType, Ship, ShipLine, StageStatus,
};
use dearsync_core::settings::{ShipOrderAction, ShipmentConfirmationSettings};
use dearsync_core::state::{
    Claim, ClaimTerms, DetailChange, IdempotencyKey, LedgerRecord, NewRecord, RecordKey,
    RecordState, Transition,
};
use dearsync_core::{HeldClaim, Job, JobContext, StoreError};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::shipment::{Checked, Invalid, Shipment};

/// The idempotency scope of shipments.
const SCOPE: &str = "shipment";

/// What confirming did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The warehouse's shipment id.
    pub shipment_id: String,
    /// `applied`, `replayed` (a repeat: nothing written), or `tracking_updated`.
    pub action: String,
    /// DEAR's SaleID.
    pub sale_id: String,
    /// DEAR's order number.
    pub order_number: String,
    /// The fulfilment the shipment was written to.
    pub task_id: String,
    /// Its number on the sale.
    pub fulfilment_number: Option<i64>,
    /// The DEAR carrier written.
    pub carrier: String,
    /// One entry per box.
    pub boxes: Vec<BoxResult>,
    /// The fulfilment's ship status after the write.
    pub ship_status: String,
}

/// One box as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoxResult {
    /// The box name in DEAR.
    pub r#box: String,
    /// Its tracking number.
    pub tracking_number: Option<String>,
}

/// Why a shipment was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// The shipment is wrong (or does not fit the sale): nothing was written; fix and resend.
    #[error("invalid shipment: {0}")]
    Invalid(Invalid),
    /// The same shipment id was applied before with other contents; only carrier and tracking may change.
    #[error(
        "shipment {shipment_id} was already applied with other contents ({detail}); only carrier and tracking numbers can be changed"
    )]
    Changed {
        /// Which.
        shipment_id: String,
        /// What differs.
        detail: String,
    },
    /// Another worker is applying this shipment now; retry later.
    #[error("shipment {0} is being applied by another worker; retry later")]
    InProgress(String),
    /// DEAR could not be reached, throttled, or a write's outcome is unknown: retrying later is
    /// safe (it reads DEAR back and resumes).
    #[error("DEAR: {0}; retrying later resumes where it stopped")]
    Dear(#[source] DearError),
    /// The state store failed; retrying later resumes where it stopped.
    #[error("state store: {0}; retrying later resumes where it stopped")]
    Store(#[source] StoreError),
    /// What the ledger or an idempotency record holds for the shipment cannot be used (a record
    /// written mid-upgrade, say); retried, as a later run may find it complete.
    #[error("shipment {shipment_id}: {what}; retrying later resumes where it stopped")]
    Ledger {
        /// Which shipment.
        shipment_id: String,
        /// What is wrong with the stored state.
        what: String,
    },
    /// DEAR refused a write for a reason a retry will not fix.
    #[error("DEAR refused the shipment: {0}")]
    Rejected(#[source] DearError),
    /// DEAR accepted creating a fulfilment but none new is open.
    #[error("DEAR refused the shipment: sale {sale_id}: DEAR opened no new fulfilment")]
    NoFulfilmentOpened {
        /// The sale.
        sale_id: Uuid,
    },
}

impl ConfirmError {
    /// True when a retry may succeed (SQS should redeliver).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConfirmError::InProgress(_) | ConfirmError::Store(_) | ConfirmError::Ledger { .. } => {
                true
            }
            ConfirmError::Dear(_) => true,
            ConfirmError::Invalid(_)
            | ConfirmError::Changed { .. }
            | ConfirmError::Rejected(_)
            | ConfirmError::NoFulfilmentOpened { .. } => false,
        }
    }

    /// True when DEAR refused the shipment (HTTP 422 at the Function URL).
    pub fn is_refused_by_dear(&self) -> bool {
        matches!(
            self,
            ConfirmError::Rejected(_) | ConfirmError::NoFulfilmentOpened { .. }
        )
    }
}

impl From<Invalid> for ConfirmError {
    fn from(e: Invalid) -> Self {
        ConfirmError::Invalid(e)
    }
}

impl From<StoreError> for ConfirmError {
    fn from(e: StoreError) -> Self {
        ConfirmError::Store(e)
    }
}

/// A voided sale, or one whose order is not authorised, takes no shipment.
fn check_sale_takes_shipments(sale: &Sale, number: &str) -> Result<(), Invalid> {
    if sale.status == dear_client::SaleStatus::Voided {
        return Err(Invalid::new(
            "sale_id",
            format!("sale {number} ({}) is voided", sale.id),
        ));
    }
    if !sale.order_status().is_authorised() {
        return Err(Invalid::new(
            "sale_id",
            format!(
                "the order of sale {number} is not authorised (order status {})",
                sale.order_status()
            ),
        ));
    }
    Ok(())
}

/// What the sale's order lists, per SKU.
fn ordered_by_sku(sale: &Sale) -> BTreeMap<String, Decimal> {
    let mut m = BTreeMap::new();
    for l in sale
        .order
        .as_ref()
        .map(|o| o.lines.as_slice())
        .unwrap_or_default()
    {
        *m.entry(l.sku.clone().unwrap_or_default().trim().to_owned())
            .or_default() += l.quantity;
    }
    m
}

/// Every shipped SKU must be on the sale.
fn check_skus_on_sale(
    shipment: &Shipment,
    ordered: &BTreeMap<String, Decimal>,
    number: &str,
) -> Result<(), Invalid> {
    for (i, p) in shipment.packages.iter().enumerate() {
        for (j, l) in p.lines.iter().enumerate() {
            if !ordered.contains_key(&l.sku) {
                return Err(Invalid::new(
                    format!("packages[{i}].lines[{j}].sku"),
                    format!(
                        "{:?} is not on sale {number} (it has {})",
                        l.sku,
                        ordered.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A fulfilment this shipment can use: the one an earlier attempt wrote to, else an unshipped
/// one open for packing (mark packed & shipped) or packed (mark shipped).
fn usable_fulfilment<'a>(
    live: &[&'a Fulfilment],
    resume: Option<Uuid>,
    action: ShipOrderAction,
) -> Option<&'a Fulfilment> {
    match resume {
        Some(t) => live.iter().find(|f| f.task_id == t).copied(),
        None => match action {
            ShipOrderAction::MarkPackedAndShipped => live
                .iter()
                .find(|f| !shipped(f) && f.pack.status.is_open())
                .copied(),
            ShipOrderAction::MarkShipped => live
                .iter()
                .find(|f| !shipped(f) && f.pack.status.is_authorised())
                .copied(),
        },
    }
}

/// Mark shipped: a packed fulfilment must hold exactly what shipped.
fn plan_mark_shipped(
    candidate: Option<&Fulfilment>,
    shipped_by_sku: &BTreeMap<String, Decimal>,
    number: &str,
) -> Result<Plan, Invalid> {
    let Some(f) = candidate else {
        return Err(Invalid::new(
            "shipment_id",
            format!(
                "sale {number} has no packed, unshipped fulfilment (ship_order_action is mark_shipped: pick and pack in DEAR first)"
            ),
        ));
    };
    let packed = sum_by_sku(f.pack.lines.iter());
    if &packed != shipped_by_sku {
        return Err(Invalid::new(
            "packages",
            format!(
                "the shipment ({}) differs from what is packed in DEAR ({})",
                show(shipped_by_sku),
                show(&packed)
            ),
        ));
    }
    Ok(Plan {
        task: Some(f.task_id),
    })
}

/// The shipment may not take more than the other fulfilments left (picked, packed or shipped).
fn check_within_unshipped(
    live: &[&Fulfilment],
    candidate: Option<&Fulfilment>,
    ordered: &BTreeMap<String, Decimal>,
    shipped_by_sku: &BTreeMap<String, Decimal>,
    number: &str,
) -> Result<(), Invalid> {
    let taken = sum_by_sku(
        live.iter()
            .filter(|f| Some(f.task_id) != candidate.map(|c| c.task_id))
            .filter(|f| !f.pick.status.is_open())
            .flat_map(|f| f.pick.lines.iter()),
    );
    for (sku, q) in shipped_by_sku {
        let remaining = ordered.get(sku).copied().unwrap_or_default()
            - taken.get(sku).copied().unwrap_or_default();
        if *q > remaining {
            return Err(Invalid::new(
                "packages",
                format!(
                    "{q} × {sku} exceeds what remains unshipped on sale {number} ({remaining})"
                ),
            ));
        }
    }
    Ok(())
}

/// Builds a sale's pick and pack lines at one location, with DEAR's product ids.
struct LineMaker<'a> {
    products: BTreeMap<String, Option<Uuid>>,
    location: &'a str,
}

impl<'a> LineMaker<'a> {
    fn of(sale: &Sale, location: &'a str) -> Self {
        let products = sale
            .order
            .as_ref()
            .map(|o| {
                o.lines
                    .iter()
                    .map(|l| {
                        (
                            l.sku.clone().unwrap_or_default().trim().to_owned(),
                            l.product_id,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        LineMaker { products, location }
    }

    fn line(
        &self,
        sku: &str,
        q: Decimal,
        batch: Option<String>,
        r#box: Option<String>,
    ) -> FulfilmentLine {
        FulfilmentLine {
            product_id: self.products.get(sku).copied().flatten(),
            sku: Some(sku.to_owned()),
            location: Some(self.location.to_owned()),
            quantity: q,
            batch_sn: batch,
            r#box,
            ..Default::default()
        }
    }

    /// One pick line per (SKU, batch), boxes summed.
    fn pick(&self, shipment: &Shipment) -> Vec<FulfilmentLine> {
        shipment
            .quantities()
            .into_iter()
            .map(|((sku, batch), q)| self.line(&sku, q, batch, None))
            .collect()
    }

    /// One pack line per line of each box, naming the box.
    fn pack(&self, shipment: &Shipment) -> Vec<FulfilmentLine> {
        shipment
            .packages
            .iter()
            .flat_map(|p| {
                p.lines
                    .iter()
                    .map(|l| self.line(&l.sku, l.quantity, l.batch.clone(), Some(p.r#box.clone())))
            })
            .collect()
    }
}

/// One ship line per box; with "mark shipped" only, a one-box shipment takes the name of DEAR's
/// one packed box.
fn ship_lines(
    shipment: &Shipment,
    pack: &PickPack,
    mark_shipped: bool,
    carrier: &str,
    date: DearDateTime,
) -> Vec<ShipLine> {
    let mut packed_boxes: Vec<String> = pack.lines.iter().filter_map(|l| l.r#box.clone()).collect();
    packed_boxes.dedup();
    shipment
        .packages
        .iter()
        .map(|p| {
            let name = if mark_shipped && shipment.packages.len() == 1 && packed_boxes.len() == 1 {
                packed_boxes[0].clone()
            } else {
                p.r#box.clone()
            };
            ShipLine {
                shipment_date: Some(date),
                carrier: Some(carrier.to_owned()),
                r#box: Some(name),
                tracking_number: p.tracking_number.clone(),
                tracking_url: p.tracking_url.clone(),
                is_shipped: true,
                ..Default::default()
            }
        })
        .collect()
}

/// A shipment applied before whose claim has lapsed: its confirmation from the ledger.
fn replay_from_ledger(existing: Option<&LedgerRecord>) -> Option<Confirmation> {
    let c = existing
        .filter(|r| r.state == RecordState::Done)
        .and_then(|r| ShipmentDetail::of(r).confirmation)?;
    Some(Confirmation {
        action: "replayed".into(),
        ..c
    })
}

/// The fulfilment an earlier attempt wrote to, whether it is still in flight or failed after some
/// stages were applied (a refused ship leaves the pick and pack in DEAR). One shipped with other
/// boxes belongs to another shipment now: not resumed.
fn resume_task(existing: Option<&LedgerRecord>, sale: &Sale, shipment: &Shipment) -> Option<Uuid> {
    existing
        .filter(|r| r.state != RecordState::Done)
        .and_then(|r| ShipmentDetail::of(r).task_id)
        .and_then(|t| t.parse::<Uuid>().ok())
        .filter(|t| {
            sale.fulfilments
                .iter()
                .find(|f| f.task_id == *t)
                .is_none_or(|f| !shipped(f) || ships_these_boxes(&f.ship, shipment))
        })
}

/// The boxes as the confirmation reports them.
fn boxes_of(shipment: &Shipment) -> Vec<BoxResult> {
    shipment
        .packages
        .iter()
        .map(|p| BoxResult {
            r#box: p.r#box.clone(),
            tracking_number: p.tracking_number.clone(),
        })
        .collect()
}

/// A confirmation as its idempotency record keeps it.
fn result_text(c: &Confirmation) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

fn ledger(shipment_id: &str, what: String) -> ConfirmError {
    ConfirmError::Ledger {
        shipment_id: shipment_id.to_owned(),
        what,
    }
}

fn dear_error(e: DearError) -> ConfirmError {
    if e.is_transient() || e.is_outcome_unknown() {
        ConfirmError::Dear(e)
    } else {
        ConfirmError::Rejected(e)
    }
}

/// What the ledger keeps per shipment (its `detail`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ShipmentDetail {
    pub(crate) sale_id: Option<String>,
    pub(crate) task_id: Option<String>,
    pub(crate) contents_hash: Option<String>,
    pub(crate) payload_hash: Option<String>,
    pub(crate) confirmation: Option<Confirmation>,
}

impl ShipmentDetail {
    pub(crate) fn of(rec: &LedgerRecord) -> Self {
        rec.detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default()
    }
    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The run log's report of shipments confirmed from `started_at` to `ended_at` (a batch, or one
/// CLI run): aborted when every one failed (DEAR or the store down, most likely).
pub fn confirmations_report(
    started_at: chrono::DateTime<chrono::Utc>,
    ended_at: chrono::DateTime<chrono::Utc>,
    confirmed: u64,
    failed: u64,
    dear_throttled: u64,
) -> dearsync_core::RunReport {
    let outcome = if confirmed == 0 && failed > 0 {
        dearsync_core::RunOutcome::Aborted
    } else {
        dearsync_core::RunOutcome::Completed
    };
    dearsync_core::RunReport::new(
        started_at,
        ended_at,
        outcome,
        [
            ("confirmed", confirmed),
            ("failed", failed),
            ("dear_throttled", dear_throttled),
        ],
    )
}

/// Everything confirmation needs.
pub struct ShipmentConfirmation {
    /// The tenant, its DEAR client, the state store and the clock.
    pub ctx: JobContext,
    /// The tenant's `[shipment_confirmation]` settings.
    pub settings: ShipmentConfirmationSettings,
}

fn sum_by_sku<'a>(lines: impl Iterator<Item = &'a FulfilmentLine>) -> BTreeMap<String, Decimal> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.sku.clone().unwrap_or_default().trim().to_owned())
            .or_default() += l.quantity;
    }
    m
}

fn is_live(f: &Fulfilment) -> bool {
    f.pick.status != StageStatus::Voided && f.ship.status != StageStatus::Voided
}

/// A fulfilment nothing was picked on yet: where a new shipment goes.
fn open_for_a_new_shipment(f: &Fulfilment) -> bool {
    is_live(f) && f.pick.status.is_open() && f.pick.lines.is_empty() && !shipped(f)
}

/// True when DEAR's ship lists exactly this shipment's boxes (names trimmed, any case).
fn ships_these_boxes(ship: &Ship, shipment: &Shipment) -> bool {
    let norm = |b: &str| b.trim().to_ascii_lowercase();
    let mut in_dear: Vec<String> = ship
        .lines
        .iter()
        .filter_map(|l| l.r#box.as_deref().map(norm))
        .collect();
    let mut ours: Vec<String> = shipment.packages.iter().map(|p| norm(&p.r#box)).collect();
    in_dear.sort();
    ours.sort();
    in_dear == ours
}

/// Quantity per SKU of a shipment.
fn shipment_by_sku(shipment: &Shipment) -> BTreeMap<String, Decimal> {
    let mut m = BTreeMap::new();
    for ((sku, _), q) in shipment.quantities() {
        *m.entry(sku).or_default() += q;
    }
    m
}

fn shipped(f: &Fulfilment) -> bool {
    matches!(
        f.ship.status,
        StageStatus::Authorised | StageStatus::PartiallyAuthorised
    )
}

/// A shipment's claim lapses two minutes after its last renewal (renewed while the worker lives,
/// so a crashed worker's shipment is taken over within two minutes); its result is kept 90 days.
/// Two minutes is more than DEAR's request timeout plus a renewal interval: a dead worker's last
/// request has ended before another worker takes its shipment over.
fn claim_terms() -> ClaimTerms {
    ClaimTerms {
        in_progress_for: Duration::minutes(2),
        keep_for: Duration::days(90),
    }
}

impl ShipmentConfirmation {
    fn key(&self, shipment: &Shipment) -> RecordKey {
        RecordKey::new(
            &self.ctx.tenant,
            Job::ShipmentConfirmation,
            &shipment.shipment_id,
        )
    }

    /// Confirms one shipment.
    pub async fn confirm(&self, shipment: &Shipment) -> Result<Confirmation, ConfirmError> {
        // From here on the shipment is the checked one, its text trimmed once and its SKUs
        // DEAR's (the tenant's aliases undone).
        let mut facts = shipment.checked()?;
        facts.shipment.use_dear_skus(&self.settings.sku_aliases);
        let shipment = &facts.shipment;
        let id = facts.id.clone();
        let hash = facts.payload_hash.clone();
        let key = IdempotencyKey::new(&self.ctx.tenant, SCOPE, &id);
        let terms = claim_terms();
        match self.ctx.store.claim(&key, &hash, terms).await {
            Ok(Claim::Completed { result }) => {
                let mut c: Confirmation = serde_json::from_str(&result)
                    .map_err(|e| ledger(&id, format!("stored result unreadable: {e}")))?;
                c.action = "replayed".into();
                Ok(c)
            }
            Ok(Claim::InProgress { .. }) => Err(ConfirmError::InProgress(id)),
            Err(StoreError::PayloadMismatch { .. }) => self.changed(shipment, &facts).await,
            Err(e) => Err(e.into()),
            Ok(Claim::Acquired { token }) => {
                let held =
                    HeldClaim::new(self.ctx.store.as_ref(), &key, &token, terms.in_progress_for);
                let Ok(result) = held.keep_while(self.apply(shipment, &facts)).await else {
                    // Another worker took the claim over and finishes the shipment.
                    return Err(ConfirmError::InProgress(id));
                };
                let text = result.as_ref().ok().map(result_text);
                held.finish(text.as_deref(), terms.keep_for).await?;
                result
            }
        }
    }

    /// The same shipment id with a different payload: a late tracking update, or a conflict.
    async fn changed(
        &self,
        shipment: &Shipment,
        facts: &Checked,
    ) -> Result<Confirmation, ConfirmError> {
        let id = facts.id.clone();
        let rec = self.ctx.store.record(&self.key(shipment)).await?;
        let Some(rec) = rec.filter(|r| r.state == RecordState::Done) else {
            return Err(ConfirmError::InProgress(id));
        };
        let detail = ShipmentDetail::of(&rec);
        let Some(applied) = detail.confirmation.clone() else {
            return Err(ledger(&id, "the ledger has no result".into()));
        };
        if detail.contents_hash.as_deref() != Some(facts.contents_hash.as_str()) {
            return Err(ConfirmError::Changed {
                shipment_id: id,
                detail: "its sale, date, location, boxes or lines differ".into(),
            });
        }
        if detail.payload_hash.as_deref() == Some(facts.payload_hash.as_str()) {
            let mut c = applied;
            c.action = "replayed".into();
            return Ok(c);
        }
        // Only carrier or tracking changed: one claim per update, so concurrent updates apply once.
        let key = IdempotencyKey::new(
            &self.ctx.tenant,
            SCOPE,
            format!("{id}#{}", &facts.payload_hash[..16]),
        );
        let terms = claim_terms();
        let token = match self
            .ctx
            .store
            .claim(&key, &facts.payload_hash, terms)
            .await?
        {
            Claim::Completed { result } => {
                return serde_json::from_str(&result)
                    .map_err(|e| ledger(&id, format!("stored result unreadable: {e}")));
            }
            Claim::InProgress { .. } => return Err(ConfirmError::InProgress(id)),
            Claim::Acquired { token } => token,
        };
        let held = HeldClaim::new(self.ctx.store.as_ref(), &key, &token, terms.in_progress_for);
        let Ok(result) = held
            .keep_while(self.update_tracking(shipment, facts, &applied))
            .await
        else {
            return Err(ConfirmError::InProgress(id));
        };
        if let Ok(c) = &result {
            let mut d = detail.clone();
            d.payload_hash = Some(facts.payload_hash.clone());
            d.confirmation = Some(c.clone());
            let change = Transition::to(RecordState::Done).detail(d.json());
            self.ctx.store.transition(&rec, change).await?;
        }
        let text = result.as_ref().ok().map(result_text);
        held.finish(text.as_deref(), terms.keep_for).await?;
        result
    }

    async fn update_tracking(
        &self,
        shipment: &Shipment,
        facts: &Checked,
        applied: &Confirmation,
    ) -> Result<Confirmation, ConfirmError> {
        let task: Uuid = applied
            .task_id
            .parse()
            .map_err(|_| ledger(&applied.shipment_id, "bad stored task id".into()))?;
        let carrier = self.carrier_for(shipment).await?;
        let date = DearDateTime(facts.date);
        let lines: Vec<ShipLine> = shipment
            .packages
            .iter()
            .zip(&applied.boxes)
            .map(|(p, b)| ShipLine {
                shipment_date: Some(date),
                carrier: Some(carrier.clone()),
                r#box: Some(b.r#box.clone()),
                tracking_number: p.tracking_number.clone(),
                tracking_url: p.tracking_url.clone(),
                is_shipped: true,
                ..Default::default()
            })
            .collect();
        let ship = Ship {
            task_id: Some(task),
            status: StageStatus::Authorised,
            add_tracking_numbers: Some(true),
            lines,
            ..Default::default()
        };
        let written = self
            .ctx
            .dear
            .write_ship(&ship, true)
            .await
            .map_err(dear_error)?;
        let mut c = applied.clone();
        c.action = "tracking_updated".into();
        c.carrier = carrier;
        c.boxes = shipment
            .packages
            .iter()
            .zip(&applied.boxes)
            .map(|(p, b)| BoxResult {
                r#box: b.r#box.clone(),
                tracking_number: p.tracking_number.clone(),
            })
            .collect();
        c.ship_status = written.status.to_string();
        Ok(c)
    }

    /// Finds the sale by id or order number.
    async fn sale(&self, shipment: &Shipment) -> Result<Sale, ConfirmError> {
        let id = match shipment
            .sale_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(text) => text
                .parse::<Uuid>()
                .map_err(|_| Invalid::new("sale_id", "not a GUID"))?,
            None => {
                let number = shipment
                    .order_number
                    .as_deref()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let query = SaleListQuery {
                    search: Some(number.clone()),
                    ..Default::default()
                };
                let pages: Vec<_> = self
                    .ctx
                    .dear
                    .sale_list(&query, 100)
                    .try_collect()
                    .await
                    .map_err(dear_error)?;
                pages
                    .into_iter()
                    .flat_map(|p| p.items)
                    .find(|s| {
                        s.order_number
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(&number))
                    })
                    .map(|s| s.sale_id)
                    .ok_or_else(|| {
                        Invalid::new(
                            "order_number",
                            format!("no DEAR sale has order number {number:?}"),
                        )
                    })?
            }
        };
        match self.ctx.dear.sale(id).await {
            Ok(sale) => Ok(sale),
            Err(DearError::Rejected {
                status: 400 | 404, ..
            }) => Err(Invalid::new("sale_id", format!("DEAR has no sale {id}")).into()),
            Err(e) => Err(dear_error(e)),
        }
    }

    /// The DEAR carrier name for the shipment's carrier and service (the carrier map, else as sent).
    async fn carrier_for(&self, shipment: &Shipment) -> Result<String, ConfirmError> {
        let carrier = shipment.carrier.as_str();
        let service = shipment.service.as_deref().map(str::trim).unwrap_or("");
        let find = |k: &str| {
            self.settings
                .carrier_map
                .iter()
                .find(|(from, _)| from.trim().eq_ignore_ascii_case(k))
                .map(|(_, to)| to.trim().to_owned())
        };
        let mapped = find(&format!("{carrier}/{service}")).or_else(|| find(carrier));
        let name = mapped.unwrap_or_else(|| carrier.to_owned());
        if self.settings.create_missing_carriers {
            let pages: Vec<_> = self
                .ctx
                .dear
                .carriers(1000)
                .try_collect()
                .await
                .map_err(dear_error)?;
            let known = pages.iter().flat_map(|p| &p.items).any(|c| {
                c.description
                    .as_deref()
                    .is_some_and(|d| d.trim().eq_ignore_ascii_case(&name))
            });
            if !known {
                self.ctx
                    .dear
                    .create_carrier(&name)
                    .await
                    .map_err(dear_error)?;
                tracing::info!(tenant = %self.ctx.tenant, carrier = %name, "created a DEAR carrier");
            }
        }
        Ok(name)
    }

    async fn apply(
        &self,
        shipment: &Shipment,
        facts: &Checked,
    ) -> Result<Confirmation, ConfirmError> {
        let hash = facts.payload_hash.as_str();
        let key = self.key(shipment);
        let existing = self.ctx.store.record(&key).await?;
        let sale = self.sale(shipment).await?;
        // Applied before, claim since lapsed (90 days): answer from the ledger.
        if let Some(c) = replay_from_ledger(existing.as_ref()) {
            return Ok(c);
        }
        let resume_task = resume_task(existing.as_ref(), &sale, shipment);
        let plan = match self.plan(shipment, &sale, resume_task) {
            Ok(p) => p,
            Err(e) => {
                self.record_failure(&key, existing, &e.to_string(), hash, sale.order_number())
                    .await?;
                return Err(e.into());
            }
        };
        let carrier = self.carrier_for(shipment).await?;
        let fulfilment = self.fulfilment_for(plan.task, &sale).await?;
        let task = fulfilment.task_id;
        // Known from the read (or the create) already: no read after shipping.
        let fulfilment_number = fulfilment.fulfillment_number;
        let detail = ShipmentDetail {
            sale_id: Some(sale.id.to_string()),
            task_id: Some(task.to_string()),
            contents_hash: Some(facts.contents_hash.clone()),
            payload_hash: Some(hash.to_owned()),
            confirmation: None,
        };
        let in_flight = self
            .mark_in_flight(key, existing, &detail, hash, sale.order_number())
            .await?;
        let location = shipment
            .location
            .clone()
            .or_else(|| self.settings.location.clone())
            .or_else(|| sale.location.clone())
            .unwrap_or_default();
        let location = stage_location(&location, self.settings.pick_bin.as_deref());
        let date = DearDateTime(facts.date);
        let ship = match self
            .write_stages(shipment, &sale, fulfilment, &location, &carrier, date)
            .await
        {
            Ok(ship) => ship,
            Err(e) => {
                // Stays in flight (with its task) for a retry to resume, or fails with the reason.
                let state = if e.is_retryable() {
                    RecordState::InFlight
                } else {
                    RecordState::Failed
                };
                let change = Transition::to(state)
                    .reason(e.to_string())
                    .detail(detail.json());
                self.ctx.store.transition(&in_flight, change).await?;
                return Err(e);
            }
        };
        let confirmation = Confirmation {
            shipment_id: facts.id.clone(),
            action: "applied".into(),
            sale_id: sale.id.to_string(),
            order_number: sale.order_number().unwrap_or_default().to_owned(),
            task_id: task.to_string(),
            fulfilment_number,
            carrier,
            boxes: boxes_of(shipment),
            ship_status: ship.status.to_string(),
        };
        let mut done = detail;
        done.confirmation = Some(confirmation.clone());
        let mut change = Transition::to(RecordState::Done);
        change.detail = DetailChange::Set(done.json());
        self.ctx.store.transition(&in_flight, change).await?;
        tracing::info!(tenant = %self.ctx.tenant, shipment_id = %confirmation.shipment_id, sale_id = %confirmation.sale_id,
            task_id = %confirmation.task_id, boxes = confirmation.boxes.len(), "shipment confirmed in DEAR");
        Ok(confirmation)
    }

    /// The fulfilment to write to: the one the plan chose (a previous attempt's, or an open
    /// one), a simple sale's own task, or a new one. The sale was read just now, so its
    /// fulfilments are current; a new one comes back from DEAR.
    async fn fulfilment_for(
        &self,
        planned: Option<Uuid>,
        sale: &Sale,
    ) -> Result<Fulfilment, ConfirmError> {
        if let Some(f) = planned.and_then(|t| sale.fulfilments.iter().find(|f| f.task_id == t)) {
            return Ok(f.clone());
        }
        // A simple sale may list no fulfilment before any work (as a DEAR reference example
        // shows): its own task is the sale. Creating one would make it an Advanced Sale.
        if sale.sale_type == SaleType::Simple && !sale.fulfilments.iter().any(is_live) {
            return Ok(Fulfilment {
                task_id: sale.id,
                fulfillment_number: Some(1),
                ..Fulfilment::default()
            });
        }
        // A killed attempt's create may have landed after the sale was read (DEAR then refuses
        // a second open fulfilment), or this one's answer was lost: the open one that appeared
        // is taken.
        let created = self
            .write_checked(
                "fulfilment",
                || self.ctx.dear.create_fulfilment(sale.id),
                || self.ctx.dear.fulfilments(sale.id),
                |now| now.fulfilments.iter().any(open_for_a_new_shipment),
            )
            .await?;
        created
            .fulfilments
            .into_iter()
            .filter(open_for_a_new_shipment)
            .max_by_key(|f| f.fulfillment_number.unwrap_or(0))
            .ok_or(ConfirmError::NoFulfilmentOpened { sale_id: sale.id })
    }

    /// The shipment's ledger record, in flight with `detail` (a new record, or the earlier
    /// attempt's moved back in flight).
    async fn mark_in_flight(
        &self,
        key: RecordKey,
        existing: Option<LedgerRecord>,
        detail: &ShipmentDetail,
        hash: &str,
        order_number: Option<&str>,
    ) -> Result<LedgerRecord, ConfirmError> {
        let change = Transition::to(RecordState::InFlight)
            .input_hash(hash)
            .attempt()
            .detail(detail.json())
            .order_number(order_number);
        Ok(match existing {
            None => {
                let mut new = NewRecord::new(key, RecordState::InFlight, hash);
                new.attempts = 1;
                new.detail = Some(detail.json());
                new.order_number = change.order_number;
                self.ctx.store.insert(new).await?
            }
            Some(rec) => self.ctx.store.transition(&rec, change).await?,
        })
    }

    async fn record_failure(
        &self,
        key: &RecordKey,
        existing: Option<LedgerRecord>,
        reason: &str,
        hash: &str,
        order_number: Option<&str>,
    ) -> Result<(), ConfirmError> {
        let change = Transition::to(RecordState::Failed)
            .reason(reason)
            .input_hash(hash)
            .attempt()
            .order_number(order_number);
        let result = match existing {
            Some(rec) if rec.state != RecordState::Done => {
                self.ctx.store.transition(&rec, change).await.map(|_| ())
            }
            Some(_) => Ok(()),
            None => {
                let mut new = NewRecord::new(key.clone(), RecordState::Failed, hash);
                new.reason = Some(reason.to_owned());
                new.attempts = 1;
                new.order_number = change.order_number;
                self.ctx.store.insert(new).await.map(|_| ())
            }
        };
        match result {
            Err(e) if !e.is_conflict() => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Which fulfilment to write, decided before any write.
struct Plan {
    /// The fulfilment, or `None` for a new one.
    task: Option<Uuid>,
}

impl ShipmentConfirmation {
    /// Validates the shipment against the sale and picks the fulfilment. Nothing is written.
    fn plan(
        &self,
        shipment: &Shipment,
        sale: &Sale,
        resume: Option<Uuid>,
    ) -> Result<Plan, Invalid> {
        let number = sale.order_number().unwrap_or("(no number)");
        check_sale_takes_shipments(sale, number)?;
        let ordered = ordered_by_sku(sale);
        check_skus_on_sale(shipment, &ordered, number)?;
        let live: Vec<&Fulfilment> = sale.fulfilments.iter().filter(|f| is_live(f)).collect();
        let mut shipped_by_sku: BTreeMap<String, Decimal> = BTreeMap::new();
        for ((sku, _), q) in shipment.quantities() {
            *shipped_by_sku.entry(sku).or_default() += q;
        }
        let action = self.settings.ship_order_action;
        let candidate = usable_fulfilment(&live, resume, action);
        if action == ShipOrderAction::MarkShipped {
            return plan_mark_shipped(candidate, &shipped_by_sku, number);
        }
        // Mark packed & shipped: an already authorised pick must be exactly what shipped.
        if let Some(f) = candidate
            && f.pick.status.is_authorised()
        {
            let picked = sum_by_sku(f.pick.lines.iter());
            if picked != shipped_by_sku {
                return Err(Invalid::new(
                    "packages",
                    format!(
                        "fulfilment {} of sale {number} is already picked in DEAR ({}); the shipment ({}) must ship exactly that",
                        f.fulfillment_number.unwrap_or(0),
                        show(&picked),
                        show(&shipped_by_sku)
                    ),
                ));
            }
            return Ok(Plan {
                task: Some(f.task_id),
            });
        }
        check_within_unshipped(&live, candidate, &ordered, &shipped_by_sku, number)?;
        if candidate.is_none() && live.iter().any(|f| !f.pick.status.is_authorised()) {
            return Err(Invalid::new(
                "shipment_id",
                format!(
                    "sale {number} has a fulfilment that is picked but not packed; DEAR allows no new fulfilment until it is"
                ),
            ));
        }
        Ok(Plan {
            task: candidate.map(|f| f.task_id),
        })
    }

    /// Writes pick, pack and ship as needed, re-reading each stage first.
    async fn write_stages(
        &self,
        shipment: &Shipment,
        sale: &Sale,
        f: Fulfilment,
        location: &str,
        carrier: &str,
        date: DearDateTime,
    ) -> Result<Ship, ConfirmError> {
        if self.settings.ship_order_action == ShipOrderAction::MarkPackedAndShipped {
            let lines = LineMaker::of(sale, location);
            self.pick_and_pack(shipment, &f, &lines).await?;
        }
        if shipped(&f) {
            return Ok(f.ship);
        }
        let task = f.task_id;
        let mark_shipped = self.settings.ship_order_action == ShipOrderAction::MarkShipped;
        let ship = Ship {
            task_id: Some(task),
            status: StageStatus::Authorised,
            lines: ship_lines(shipment, &f.pack, mark_shipped, carrier, date),
            ..Default::default()
        };
        self.write_checked(
            "ship",
            || self.ctx.dear.write_ship(&ship, false),
            || self.ctx.dear.ship(task),
            |s| {
                matches!(
                    s.status,
                    StageStatus::Authorised | StageStatus::PartiallyAuthorised
                ) && ships_these_boxes(s, shipment)
            },
        )
        .await
    }

    /// Authorises the pick and the pack the fulfilment lacks, each read back to count as this
    /// shipment's when the write's answer proves nothing.
    async fn pick_and_pack(
        &self,
        shipment: &Shipment,
        f: &Fulfilment,
        lines: &LineMaker<'_>,
    ) -> Result<(), ConfirmError> {
        let task = f.task_id;
        // What DEAR must show for a stage to count as this shipment's.
        let want = shipment_by_sku(shipment);
        let is_this_shipments =
            |p: &PickPack| p.status.is_authorised() && sum_by_sku(p.lines.iter()) == want;
        let pack = PickPack {
            task_id: Some(task),
            status: StageStatus::Authorised,
            lines: lines.pack(shipment),
            ..Default::default()
        };
        if !f.pick.status.is_authorised() {
            let pick = PickPack {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: lines.pick(shipment),
                ..Default::default()
            };
            let replace = f.pick.status == StageStatus::Draft;
            self.write_checked(
                "pick",
                || self.ctx.dear.write_pick(&pick, replace),
                || self.ctx.dear.pick(task),
                is_this_shipments,
            )
            .await?;
            return self.pack_after_pick(task, &pack, is_this_shipments).await;
        }
        if !f.pack.status.is_authorised() {
            let replace = f.pack.status == StageStatus::Draft;
            self.write_stage_pack(task, &pack, replace, is_this_shipments)
                .await?;
        }
        Ok(())
    }

    /// Packs right after this shipment's own pick, without reading the pack first: DEAR may
    /// have opened a DRAFT pack with the pick (reference examples show one) or left it NOT
    /// AVAILABLE. A PUT is right under both readings of the reference (it replaces a DRAFT,
    /// and NOT AVAILABLE is not among its exceptions). Where DEAR refuses the PUT anyway, or its
    /// outcome is unknown, the pack is read and written as it then stands.
    async fn pack_after_pick(
        &self,
        task: Uuid,
        pack: &PickPack,
        done: impl Fn(&PickPack) -> bool,
    ) -> Result<(), ConfirmError> {
        let refused = match self.ctx.dear.write_pack(pack, true).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_outcome_unknown() || matches!(e, DearError::Rejected { .. }) => e,
            Err(e) => return Err(dear_error(e)),
        };
        tracing::warn!(error = %refused, "the pack's PUT was not confirmed; reading the pack");
        let now = self.ctx.dear.pack(task).await.map_err(dear_error)?;
        if done(&now) {
            return Ok(());
        }
        if now.status.is_authorised() {
            // Authorised with other contents: not this shipment's pack, and not to be replaced.
            return Err(dear_error(refused));
        }
        self.write_stage_pack(task, pack, now.status == StageStatus::Draft, done)
            .await
    }

    /// Writes the pack (replacing a DRAFT), read back when the answer proves nothing.
    async fn write_stage_pack(
        &self,
        task: Uuid,
        pack: &PickPack,
        replace: bool,
        done: impl Fn(&PickPack) -> bool,
    ) -> Result<(), ConfirmError> {
        self.write_checked(
            "pack",
            || self.ctx.dear.write_pack(pack, replace),
            || self.ctx.dear.pack(task),
            done,
        )
        .await
        .map(|_| ())
    }

    /// Writes a stage; if the outcome is unknown (timeout, dropped connection, throttled), reads
    /// the stage back and accepts it when DEAR has it, instead of writing it again blindly; if DEAR
    /// does not have it, writes again (up to [`READ_BACK_ROUNDS`] writes). A refusal is read back
    /// too: an earlier attempt of this shipment (killed with its request still on the way) may have
    /// applied the stage since it was read, and DEAR then refuses it as done. `done` checks the
    /// contents, not only the status, so another shipment's stage is never taken.
    async fn write_checked<T, W, WF, R, RF>(
        &self,
        stage: &str,
        write: W,
        read: R,
        done: impl Fn(&T) -> bool,
    ) -> Result<T, ConfirmError>
    where
        W: Fn() -> WF,
        WF: std::future::Future<Output = Result<T, DearError>>,
        R: Fn() -> RF,
        RF: std::future::Future<Output = Result<T, DearError>>,
    {
        let mut writes = 1;
        loop {
            let e = match write().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let unknown = e.is_outcome_unknown();
            if !unknown && !matches!(e, DearError::Rejected { .. }) {
                return Err(dear_error(e));
            }
            tracing::warn!(stage, error = %e, "stage write not confirmed; reading DEAR back");
            let now = read().await.map_err(dear_error)?;
            if done(&now) {
                tracing::warn!(
                    stage,
                    "DEAR has the stage as this shipment wrote it; accepted"
                );
                return Ok(now);
            }
            if !unknown || writes >= READ_BACK_ROUNDS {
                return Err(dear_error(e));
            }
            writes += 1;
        }
    }
}

/// Where pick and pack lines take the stock from: the location, or DEAR's `"<location>: <bin>"`.
fn stage_location(location: &str, bin: Option<&str>) -> String {
    match bin.map(str::trim).filter(|b| !b.is_empty()) {
        Some(bin) if !location.trim().is_empty() => format!("{}: {bin}", location.trim()),
        _ => location.to_owned(),
    }
}

fn show(m: &BTreeMap<String, Decimal>) -> String {
    m.iter()
        .map(|(k, v)| format!("{} × {k}", v.normalize()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bin_is_named_the_way_dear_addresses_it() {
        assert_eq!(
            stage_location("Main Warehouse", Some("A-01")),
            "Main Warehouse: A-01"
        );
        assert_eq!(stage_location("Main Warehouse", None), "Main Warehouse");
        assert_eq!(
            stage_location("Main Warehouse", Some(" ")),
            "Main Warehouse"
        );
        assert_eq!(stage_location("", Some("A-01")), "");
    }

    #[test]
    fn a_dead_workers_last_request_ends_before_its_shipment_claim_is_taken_over() {
        let lapse = claim_terms().in_progress_for.to_std().unwrap();
        let renew_every = lapse / 3;
        let request = dear_client::RetryPolicy::default().request_timeout;
        assert!(lapse - renew_every > request, "{lapse:?} vs {request:?}");
    }
}
