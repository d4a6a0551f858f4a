//! What a scheduled or operator's event asks for: whose run, and from when.

use dearsync_core::TenantId;
use dearsync_core::settings::SettingInstant;
use dearsync_function_support::{HandlerError, kind};
use serde_json::Value;

/// Reads the tenant of a scheduled event; `None` = every enabled tenant.
pub(crate) fn scheduled_tenant(event: &Value) -> Result<Option<TenantId>, HandlerError> {
    let field = event_field(event, "tenant");
    match field {
        None => {
            if !event.is_object() {
                return Err(HandlerError::BadEvent(format!(
                    "expected a JSON object (a scheduled event or a Function URL request), got {}",
                    kind(event)
                )));
            }
            Ok(None)
        }
        Some((name, Value::String(t))) => TenantId::new(t.clone())
            .map(Some)
            .map_err(|e| HandlerError::BadEvent(format!("{name}: {e}"))),
        Some((name, other)) => Err(HandlerError::BadEvent(format!(
            "{name} must be a tenant id string, got {}",
            kind(other)
        ))),
    }
}

/// `name` at the top of the event (an operator's or a Scheduler target's input), else in an
/// EventBridge event's `detail`; with the dotted name errors should use.
fn event_field<'a>(event: &'a Value, name: &str) -> Option<(String, &'a Value)> {
    match event.get(name) {
        Some(v) => Some((name.to_owned(), v)),
        None => event
            .get("detail")
            .and_then(|d| d.get(name))
            .map(|v| (format!("detail.{name}"), v)),
    }
}

/// An operator's backfill: `{"tenant": "acme", "since": "2026-10-01"}` lists from that date
/// instead of the cursor (already delivered orders are not sent again).
pub(crate) fn backfill_since(
    event: &Value,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, HandlerError> {
    let field = event_field(event, "since");
    match field {
        None | Some((_, Value::Null)) => Ok(None),
        Some((name, Value::String(text))) => SettingInstant::parse(text)
            .map(|i| Some(i.0))
            .map_err(|e| HandlerError::BadEvent(format!("{name}: {e}"))),
        Some((name, other)) => Err(HandlerError::BadEvent(format!(
            "{name} must be a date string (2026-10-01), got {}",
            kind(other)
        ))),
    }
}

/// An operator's resend: `{"tenant": "acme", "resend": ["<sale id>", …]}`: those sales are
/// delivered again at their current version under new delivery ids.
pub(crate) fn resend_ids(event: &Value) -> Result<Option<Vec<uuid::Uuid>>, HandlerError> {
    let Some((name, value)) = event_field(event, "resend") else {
        return Ok(None);
    };
    let bad = |why: String| HandlerError::BadEvent(format!("{name}: {why}"));
    let Value::Array(items) = value else {
        return Err(bad(format!(
            "must be an array of sale ids, got {}",
            kind(value)
        )));
    };
    if items.is_empty() {
        return Err(bad("names no sale".into()));
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(text) => text
                .trim()
                .parse::<uuid::Uuid>()
                .map_err(|e| bad(format!("{text:?} is not a SaleID: {e}"))),
            other => Err(bad(format!(
                "a sale id must be a string, got {}",
                kind(other)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
