//! Cancellations: a sale delivered to the warehouse and then voided (or credited before it
//! shipped) in DEAR sends the warehouse one `dear-sync.order-cancel/v1`, exactly once, on the same
//! sink. One the warehouse already started shipping is recorded as `cancelled_after_shipping` and
//! alarmed instead: the goods are on their way, a person decides.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use dear_client::{Sale, SaleStatus, SaleType, StageStatus};
use dearsync_core::settings::SaleStatusFilter;
use dearsync_core::state::{Claim, ClaimTerms, IdempotencyKey, RecordState, Transition};
use dearsync_core::{HeldClaim, StoreError};
use serde::{Deserialize, Serialize};

/// The `schema` of every cancellation.
pub const CANCEL_SCHEMA: &str = "dear-sync.order-cancel/v1";

/// What the warehouse is told when an order it was sent is cancelled in DEAR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancel {
    /// Always [`CANCEL_SCHEMA`].
    pub schema: String,
    /// DEAR's SaleID.
    pub sale_id: String,
    /// DEAR's order number.
    pub order_number: String,
    /// The `version` of the order the warehouse was sent, now cancelled.
    pub version: String,
    /// This cancellation's id (the webhook's `Idempotency-Key`): the cancelled delivery's id and
    /// `:cancel` (`<sale_id>:<version>:cancel`).
    pub cancel_id: String,
    /// The `delivery_id` of the order cancelled.
    pub delivery_id: String,
    /// Why: `voided`, `credited` or `undone`.
    pub reason: CancelReason,
    /// When dear-sync saw it (UTC, milliseconds).
    pub at: String,
}

/// Why a delivered order is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Voided in DEAR.
    Voided,
    /// Credited in DEAR before it shipped.
    Credited,
    /// Undone in DEAR back before the selected status (a pick or pack undone) before it shipped.
    Undone,
}

impl CancelReason {
    /// The reason's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Voided => "voided",
            CancelReason::Credited => "credited",
            CancelReason::Undone => "undone",
        }
    }
}

/// Whether DEAR's sale, as it is now, cancels the order the `filter` selected: voided; credited
/// before any of it shipped (credited after shipping is a return, the warehouse's business no
/// more); or, for a simple sale, undone back before the status the filter selects and not shipped.
///
/// `delivered_status` is DEAR's status when the warehouse was sent it: a sale counts as undone only
/// when it is now before both that status and the filter's (a changed filter never makes a sale
/// that moved forward look undone); unknown, it never does.
pub fn cancellation(
    sale: &Sale,
    filter: &SaleStatusFilter,
    delivered_status: Option<&str>,
) -> Option<CancelReason> {
    match sale.status {
        SaleStatus::Voided => Some(CancelReason::Voided),
        SaleStatus::Credited if !shipping_started(sale) => Some(CancelReason::Credited),
        _ if undone(sale, filter, delivered_status) => Some(CancelReason::Undone),
        _ => None,
    }
}

/// Where a status stands on the way from a draft to a shipment; `None` for the statuses off that
/// way (invoicing, credited, completed, voided), which a sale reaches by moving on, not back.
fn pipeline(status: &SaleStatus) -> Option<u8> {
    Some(match status {
        SaleStatus::Draft => 0,
        SaleStatus::Estimating => 1,
        SaleStatus::Estimated => 2,
        SaleStatus::Ordering => 3,
        SaleStatus::Ordered | SaleStatus::Backordered => 4,
        SaleStatus::Picking => 5,
        SaleStatus::Picked => 6,
        SaleStatus::Packing => 7,
        SaleStatus::Packed => 8,
        SaleStatus::Shipping => 9,
        _ => return None,
    })
}

/// A simple sale DEAR now shows before the (pipeline) status the filter selects, nothing shipped:
/// its pick or pack was undone. Advanced sales keep `ORDERED` whatever their fulfilments do, so
/// theirs are not read as undone.
fn undone(sale: &Sale, filter: &SaleStatusFilter, delivered_status: Option<&str>) -> bool {
    let selected = match filter {
        SaleStatusFilter::Status(s) => s.clone(),
        SaleStatusFilter::PackedAndShipping => SaleStatus::Packed,
        SaleStatusFilter::Any => return false,
    };
    let delivered = delivered_status
        .and_then(|s| s.parse::<SaleStatus>().ok())
        .and_then(|s| pipeline(&s));
    let (Some(now), Some(wanted), Some(delivered)) =
        (pipeline(&sale.status), pipeline(&selected), delivered)
    else {
        return false;
    };
    sale.sale_type != SaleType::Advanced
        && now < wanted
        && now < delivered
        && !shipping_started(sale)
}

/// Whether shipping began: a fulfilment's shipment authorised (in part or whole), or DEAR's
/// combined shipping status says so.
pub fn shipping_started(sale: &Sale) -> bool {
    let combined = sale
        .combined_shipping_status
        .as_deref()
        .map(str::trim)
        .unwrap_or("");
    combined.eq_ignore_ascii_case("SHIPPED")
        || combined.eq_ignore_ascii_case("PARTIALLY SHIPPED")
        || sale.fulfilments.iter().any(|f| {
            matches!(
                f.ship.status,
                StageStatus::Authorised | StageStatus::PartiallyAuthorised
            )
        })
}

/// What the ledger keeps of a cancellation, in the sale's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CancelFacts {
    /// `voided` or `credited`.
    pub(crate) reason: String,
    /// The version cancelled.
    pub(crate) version: String,
    /// When it was seen.
    pub(crate) at: String,
    /// False when the warehouse had started shipping: recorded, not sent.
    pub(crate) sent: bool,
}

/// The idempotency scope of cancellations.
const SCOPE: &str = "order-cancel";

/// A cancellation's claim lapses two minutes after its last renewal; its result is kept 90 days.
fn claim_terms() -> ClaimTerms {
    ClaimTerms {
        in_progress_for: Duration::minutes(2),
        keep_for: Duration::days(90),
    }
}

/// How one cancellation ended.
pub(crate) enum Cancelled {
    /// Sent to the warehouse now (or found sent before).
    Sent(CancelFacts),
    /// Not sent: the warehouse had started shipping.
    AfterShipping(CancelFacts),
    /// Another worker is sending it.
    InProgress,
}

/// The cancellation the warehouse is sent for the delivery `delivery_id` of `version` of `sale`.
pub(crate) fn cancel_of(
    sale: &Sale,
    version: &str,
    delivery_id: &str,
    reason: CancelReason,
    now: DateTime<Utc>,
) -> OrderCancel {
    OrderCancel {
        schema: CANCEL_SCHEMA.to_owned(),
        sale_id: sale.id.to_string(),
        order_number: sale.order_number().unwrap_or("").to_owned(),
        version: version.to_owned(),
        cancel_id: format!("{delivery_id}:cancel"),
        delivery_id: delivery_id.to_owned(),
        reason,
        at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

impl crate::job::OrderDownload {
    /// Sends the cancellation once (a claim keeps two workers from both sending it); one the
    /// warehouse started shipping is only recorded.
    pub(crate) async fn send_cancel(
        &self,
        sale: &Sale,
        cancel: &OrderCancel,
    ) -> Result<Cancelled, CancelError> {
        let facts = |sent| CancelFacts {
            reason: cancel.reason.as_str().to_owned(),
            version: cancel.version.clone(),
            at: cancel.at.clone(),
            sent,
        };
        if shipping_started(sale) {
            return Ok(Cancelled::AfterShipping(facts(false)));
        }
        // One claim per delivery cancelled: a sale delivered again after an undo can be
        // cancelled again.
        let key = IdempotencyKey::new(&self.ctx.tenant, SCOPE, &cancel.cancel_id);
        let terms = claim_terms();
        let token = match self.ctx.store.claim(&key, &cancel.version, terms).await {
            Ok(Claim::Acquired { token }) => token,
            Ok(Claim::Completed { .. }) => return Ok(Cancelled::Sent(facts(true))),
            Ok(Claim::InProgress { .. }) => return Ok(Cancelled::InProgress),
            // A later version was cancelled under the same sale: that one is the warehouse's.
            Err(StoreError::PayloadMismatch { .. }) => return Ok(Cancelled::Sent(facts(true))),
            Err(e) => return Err(CancelError::Store(e)),
        };
        let held = HeldClaim::new(self.ctx.store.as_ref(), &key, &token, terms.in_progress_for);
        let sent = match held.keep_while(self.sink.cancel(cancel)).await {
            Ok(sent) => sent,
            Err(_) => return Ok(Cancelled::InProgress),
        };
        let result = sent.as_ref().ok().map(|()| "sent");
        held.finish(result, terms.keep_for)
            .await
            .map_err(CancelError::Store)?;
        sent.map(|()| Cancelled::Sent(facts(true)))
            .map_err(CancelError::Sink)
    }
}

/// Why a cancellation was not sent now (it is retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    /// The warehouse did not take it.
    #[error("the cancellation was not delivered: {0}")]
    Sink(#[source] crate::SinkError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[source] StoreError),
}

/// The transition recording a handled cancellation.
pub(crate) fn recorded(facts: &CancelFacts) -> Transition {
    let reason = if facts.sent {
        format!(
            "cancelled ({}): the warehouse was sent the cancellation of version {}",
            facts.reason, facts.version
        )
    } else {
        format!(
            "cancelled_after_shipping ({}): the warehouse had started shipping version {}; not sent, for a person to settle",
            facts.reason, facts.version
        )
    };
    Transition::to(RecordState::Done).reason(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(status: SaleStatus, sale_type: SaleType) -> Sale {
        Sale {
            status,
            sale_type,
            ..Default::default()
        }
    }

    #[test]
    fn only_a_sale_moved_back_from_where_it_was_delivered_is_undone() {
        let picked = SaleStatusFilter::Status(SaleStatus::Picked);
        let picking = sale(SaleStatus::Picking, SaleType::Simple);
        assert_eq!(
            cancellation(&picking, &picked, Some("PICKED")),
            Some(CancelReason::Undone)
        );
        // Delivered at ORDERED under an older filter: PICKING is forward from there.
        assert_eq!(cancellation(&picking, &picked, Some("ORDERED")), None);
        // Unknown delivery status (records from before it was kept): never read as undone.
        assert_eq!(cancellation(&picking, &picked, None), None);
        // Advanced sales keep ORDERED whatever their fulfilments do.
        let advanced = sale(SaleStatus::Ordered, SaleType::Advanced);
        assert_eq!(cancellation(&advanced, &picked, Some("PICKED")), None);
        // Moving on (packed, invoiced) is no cancellation; "Any" never undoes.
        let packed = sale(SaleStatus::Packed, SaleType::Simple);
        assert_eq!(cancellation(&packed, &picked, Some("PICKED")), None);
        let invoiced = sale(SaleStatus::Invoiced, SaleType::Simple);
        assert_eq!(cancellation(&invoiced, &picked, Some("PICKED")), None);
        assert_eq!(
            cancellation(&picking, &SaleStatusFilter::Any, Some("PICKED")),
            None
        );
        // Voided always cancels; credited only before shipping.
        let voided = sale(SaleStatus::Voided, SaleType::Advanced);
        assert_eq!(
            cancellation(&voided, &SaleStatusFilter::Any, None),
            Some(CancelReason::Voided)
        );
        let mut credited = sale(SaleStatus::Credited, SaleType::Simple);
        assert_eq!(
            cancellation(&credited, &picked, None),
            Some(CancelReason::Credited)
        );
        credited.combined_shipping_status = Some("SHIPPED".into());
        assert_eq!(cancellation(&credited, &picked, None), None, "a return");
    }
}
