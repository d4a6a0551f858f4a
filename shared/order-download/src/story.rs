//! What an order-download ledger record tells of its sale, for `dearsync orders show`.

use dearsync_core::Job;
use dearsync_core::state::{LedgerRecord, RecordState};
use dearsync_core::story::{StoryEvent, parse_time};

use crate::job::SaleDetail;

/// The events `record` (an order-download record) tells, oldest first: first seen, delivered,
/// cancelled, and where it stands now (skipped, failed and when it retries, in flight).
pub fn story(record: &LedgerRecord) -> Vec<StoryEvent> {
    let detail = SaleDetail::of(record);
    let entity = record.key.entity.as_str();
    let event =
        |at, name, text: String| StoryEvent::new(at, Job::OrderDownload, entity, name, text);
    let mut events = vec![event(
        record.created_at,
        "listed",
        format!(
            "first seen in DEAR (sale {entity}{})",
            detail
                .updated
                .as_deref()
                .map(|u| format!(", changed {u}"))
                .unwrap_or_default()
        ),
    )];
    if let Some(at) = parse_time(detail.delivery.delivered_at.as_deref()) {
        events.push(event(at, "delivered", delivered_text(&detail, record)));
    }
    if let Some(c) = &detail.cancelled {
        let at = parse_time(Some(&c.at)).unwrap_or(record.updated_at);
        events.push(if c.sent {
            event(
                at,
                "cancelled",
                format!("{} in DEAR: cancellation of version {} sent to the warehouse", c.reason, c.version),
            )
        } else {
            event(
                at,
                "cancelled_after_shipping",
                format!(
                    "{} in DEAR after the warehouse began shipping: not sent; stop the shipment by hand",
                    c.reason
                ),
            )
        });
    }
    events.extend(now_event(record));
    events
}

fn delivered_text(detail: &SaleDetail, record: &LedgerRecord) -> String {
    let version = detail
        .delivered_version
        .clone()
        .unwrap_or_else(|| record.input_hash.clone());
    let mut text = format!("the warehouse took version {version}");
    if let Some(id) = &detail.delivered_id {
        text.push_str(&format!(" as delivery {id}"));
    }
    if let Some(status) = &detail.delivered_status {
        text.push_str(&format!(" (DEAR status {status})"));
    }
    if let Some(answer) = &detail.warehouse_answer {
        text.push_str(&format!("; it answered {answer}"));
    }
    if detail.resends > 0 {
        text.push_str(&format!("; resent {} time(s) on request", detail.resends));
    }
    text
}

/// Where the record stands, when that is not "done": the reason and what happens next.
fn now_event(record: &LedgerRecord) -> Option<StoryEvent> {
    let reason = record.reason.as_deref().unwrap_or("no reason recorded");
    let (name, text) = match record.state {
        RecordState::Done => return None,
        RecordState::Skipped => (
            "skipped",
            format!("skipped: {reason}; looked at again when the sale changes in DEAR"),
        ),
        RecordState::Failed => (
            "failed",
            format!(
                "failed (attempt {}): {reason}; {}",
                record.attempts,
                next_try(record)
            ),
        ),
        RecordState::InFlight => (
            "in_flight",
            format!(
                "being delivered (attempt {}); {}",
                record.attempts,
                next_try(record)
            ),
        ),
        RecordState::Pending => ("pending", "waiting to be worked on".to_owned()),
    };
    Some(StoryEvent::new(
        record.updated_at,
        Job::OrderDownload,
        &record.key.entity,
        name,
        text,
    ))
}

fn next_try(record: &LedgerRecord) -> String {
    match record.due_at {
        Some(due) => format!(
            "retried from {}",
            due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => "retried by the next run".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};
    use dearsync_core::TenantId;
    use dearsync_core::state::{NewRecord, RecordKey};

    use super::*;

    fn record(state: RecordState, detail: serde_json::Value) -> LedgerRecord {
        let t = TenantId::new("acme").unwrap();
        let mut new = NewRecord::new(
            RecordKey::new(&t, Job::OrderDownload, "sale-1"),
            state,
            "v2",
        );
        new.detail = Some(detail.to_string());
        new.reason = Some("webhook answered 503".into());
        new.attempts = 3;
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        new.due_at = Some(at + Duration::minutes(20));
        new.into_record(at)
    }

    fn names(events: &[StoryEvent]) -> Vec<&str> {
        events.iter().map(|e| e.event).collect()
    }

    #[test]
    fn a_failed_redelivery_tells_the_delivery_then_the_failure_and_its_retry() {
        let rec = record(
            RecordState::Failed,
            serde_json::json!({"delivered_at": "2026-12-01T10:00:00.000Z", "delivered_version": "v1",
                "delivered_id": "sale-1:v1", "warehouse_answer": "HTTP 202 Accepted: {\"id\":\"W-1\"}"}),
        );
        let events = story(&rec);
        assert_eq!(names(&events), ["listed", "delivered", "failed"]);
        assert!(
            events[1].text.contains("answered HTTP 202 Accepted"),
            "{}",
            events[1].text
        );
        assert!(
            events[1].text.contains("version v1 as delivery sale-1:v1"),
            "{}",
            events[1].text
        );
        assert!(events[2].text.contains("attempt 3"), "{}", events[2].text);
        assert!(events[2].text.contains("webhook answered 503"));
        assert!(
            events[2].text.contains("retried from"),
            "{}",
            events[2].text
        );
    }

    #[test]
    fn a_cancellation_says_whether_it_was_sent() {
        let sent = story(&record(
            RecordState::Done,
            serde_json::json!({"delivered_at": "2026-12-01T10:00:00.000Z",
                "cancelled": {"reason": "voided", "version": "v1", "at": "2026-12-01T11:00:00.000Z", "sent": true}}),
        ));
        assert_eq!(names(&sent), ["listed", "delivered", "cancelled"]);
        let late = story(&record(
            RecordState::Done,
            serde_json::json!({"delivered_at": "2026-12-01T10:00:00.000Z",
                "cancelled": {"reason": "voided", "version": "v1", "at": "2026-12-01T11:00:00.000Z", "sent": false}}),
        ));
        assert_eq!(
            names(&late),
            ["listed", "delivered", "cancelled_after_shipping"]
        );
        assert!(late[2].text.contains("not sent"));
    }
}
