//! `{"tenant": ..., "shipment": {...}}`, read from an SQS record or an EventBridge `detail`.

use dearsync_core::TenantId;
use dearsync_function_support::kind;
use dearsync_shipment_confirmation::Shipment;
use serde_json::Value;

use crate::NotConfirmed;

/// Reads `{"tenant": ..., "shipment": {...}}`; `Err` says what is wrong with it.
pub(crate) fn envelope(value: &Value) -> Result<(TenantId, Shipment), NotConfirmed> {
    let bad = |m: String| NotConfirmed::Bad(m);
    let tenant = match value.get("tenant") {
        Some(Value::String(t)) => {
            TenantId::new(t.clone()).map_err(|e| bad(format!("tenant: {e}")))?
        }
        Some(other) => {
            return Err(bad(format!(
                "tenant must be a tenant id string, got {}",
                kind(other)
            )));
        }
        None => {
            return Err(bad(
                "tenant is missing (expected {\"tenant\": ..., \"shipment\": {...}})".into(),
            ));
        }
    };
    let shipment = value.get("shipment").ok_or_else(|| {
        bad("shipment is missing (expected {\"tenant\": ..., \"shipment\": {...}})".into())
    })?;
    let shipment = Shipment::from_json(&shipment.to_string())
        .map_err(|e| bad(format!("invalid shipment: {e}")))?;
    Ok((tenant, shipment))
}
