//! What a shipment's ledger record tells of its order, for `dearsync orders show`.

use dearsync_core::Job;
use dearsync_core::state::{LedgerRecord, RecordState};
use dearsync_core::story::StoryEvent;

use crate::confirm::ShipmentDetail;

/// The events `record` (a shipment-confirmation record) tells: received, then applied (boxes,
/// tracking, carrier, DEAR's ship status read back) or where it stands.
pub fn story(record: &LedgerRecord) -> Vec<StoryEvent> {
    let detail = ShipmentDetail::of(record);
    let id = record.key.entity.as_str();
    let event =
        |at, name, text: String| StoryEvent::new(at, Job::ShipmentConfirmation, id, name, text);
    let mut events = vec![event(
        record.created_at,
        "shipment_received",
        format!("shipment {id} received from the warehouse"),
    )];
    let reason = record.reason.as_deref().unwrap_or("no reason recorded");
    events.push(match (record.state, &detail.confirmation) {
        (RecordState::Done, Some(c)) => {
            let boxes: Vec<String> = c
                .boxes
                .iter()
                .map(|b| match &b.tracking_number {
                    Some(t) => format!("{} ({t})", b.r#box),
                    None => format!("{} (no tracking)", b.r#box),
                })
                .collect();
            event(
                record.updated_at,
                "shipment_applied",
                format!(
                    "applied to DEAR fulfilment {}: {} box(es) {} by {}; DEAR's ship status {}",
                    c.fulfilment_number
                        .map(|n| format!("#{n}"))
                        .unwrap_or_else(|| c.task_id.clone()),
                    c.boxes.len(),
                    boxes.join(", "),
                    c.carrier,
                    c.ship_status
                ),
            )
        }
        (RecordState::Done, None) => event(record.updated_at, "shipment_applied", "applied".into()),
        (RecordState::Failed, _) => event(
            record.updated_at,
            "shipment_failed",
            format!(
                "not applied (attempt {}): {reason}; a corrected resend from the warehouse applies it (after a DEAR outage, the queue's retry does)",
                record.attempts
            ),
        ),
        (RecordState::InFlight, _) => event(
            record.updated_at,
            "shipment_in_flight",
            format!(
                "being applied (attempt {}{}); a retry resumes it",
                record.attempts,
                detail
                    .task_id
                    .as_deref()
                    .map(|t| format!(", fulfilment {t}"))
                    .unwrap_or_default()
            ),
        ),
        (state, _) => event(record.updated_at, "shipment_recorded", format!("{state}: {reason}")),
    });
    events
}
