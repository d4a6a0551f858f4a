//! The Shipment Confirmation Lambda's handler, apart from the runtime so tests can drive it.
//!
//! A shipment arrives wrapped with its tenant, `{"tenant": "acme", "shipment": {...}}`, as:
//! * an SQS batch (`Records[]`): each record confirmed on its own; the failed ones are returned as
//!   `batchItemFailures` so SQS redelivers only those (and moves a poison message to the DLQ
//!   after the queue's maxReceiveCount) — one bad message never blocks the rest;
//! * an EventBridge event whose `detail` is the envelope;
//! * a Function URL `POST /shipments/<tenant>` whose body is the shipment itself, with the tenant's
//!   inbound secret in `x-dearsync-secret`: 202 with the result, 4xx with the reason on bad input.

use std::collections::HashMap;

use dearsync_core::{Caller, Job, TenantId};
use dearsync_function_support::TenantContext;
pub use dearsync_function_support::{Deps, TenantError};
use dearsync_function_support::{body_text, http, http_error, is_http, kind, method};
use dearsync_shipment_confirmation::{ConfirmError, Confirmation, Shipment, ShipmentConfirmation};
use serde_json::{Value, json};

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is not one this function understands.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// The shipment was not applied.
    #[error("{0}")]
    NotApplied(String),
}

/// Lambda reports the variant as the invocation's `errorType`, so failures can be told apart in
/// the logs and in the invoke response without parsing the message.
impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(error: HandlerError) -> Self {
        let error_type = match &error {
            HandlerError::BadEvent(_) => "BadEvent",
            HandlerError::NotApplied(_) => "NotApplied",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.into(),
            error_message: error.to_string(),
        }
    }
}

/// Handles one event.
pub async fn handle(deps: &Deps, event: Value) -> Result<Value, HandlerError> {
    if is_http(&event) {
        return Ok(handle_http(deps, &event).await);
    }
    if let Some(records) = event.get("Records").and_then(Value::as_array) {
        return Ok(handle_sqs(deps, records).await);
    }
    if let Some(detail) = event.get("detail") {
        let mut tally = Tally::default();
        let outcome = confirm_envelope(deps, detail, &mut HashMap::new(), &mut tally).await;
        tally.count(outcome.is_ok());
        tally.print(deps);
        return outcome.map(|c| json!(c)).map_err(HandlerError::NotApplied);
    }
    Err(HandlerError::BadEvent(format!(
        "expected an SQS batch (Records), an EventBridge event (detail) or a Function URL request, got {}",
        if event.is_object() {
            "an object without any of them"
        } else {
            kind(&event)
        }
    )))
}

/// Reads `{"tenant": ..., "shipment": {...}}`.
fn envelope(value: &Value) -> Result<(TenantId, Shipment), String> {
    let tenant = match value.get("tenant") {
        Some(Value::String(t)) => TenantId::new(t.clone()).map_err(|e| format!("tenant: {e}"))?,
        Some(other) => {
            return Err(format!(
                "tenant must be a tenant id string, got {}",
                kind(other)
            ));
        }
        None => {
            return Err(
                "tenant is missing (expected {\"tenant\": ..., \"shipment\": {...}})".into(),
            );
        }
    };
    let shipment = value
        .get("shipment")
        .ok_or("shipment is missing (expected {\"tenant\": ..., \"shipment\": {...}})")?;
    let shipment =
        Shipment::from_json(&shipment.to_string()).map_err(|e| format!("invalid shipment: {e}"))?;
    Ok((tenant, shipment))
}

/// What one event's shipments did, for its CloudWatch EMF line.
#[derive(Default)]
struct Tally {
    confirmed: u64,
    failed: u64,
    dear_throttled: u64,
}

impl Tally {
    fn count(&mut self, confirmed: bool) {
        if confirmed {
            self.confirmed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Prints the line (per job, not per tenant: a batch mixes tenants; the logs name each
    /// shipment's tenant).
    fn print(&self, deps: &Deps) {
        println!(
            "{}",
            dearsync_core::metrics::emf_line(
                deps.clock.now().timestamp_millis(),
                &[("Job", Job::ShipmentConfirmation.as_str())],
                &[
                    ("Confirmed", self.confirmed),
                    ("Failed", self.failed),
                    ("DearThrottled", self.dear_throttled),
                ],
            )
        );
    }
}

/// Why a shipment was not confirmed: its tenant cannot be worked for, or the confirmation failed.
#[derive(Debug, thiserror::Error)]
enum NotConfirmed {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Confirm(#[from] ConfirmError),
}

async fn confirm(
    deps: &Deps,
    ctx: &TenantContext,
    shipment: &Shipment,
    tally: &mut Tally,
) -> Result<Confirmation, ConfirmError> {
    let job = ShipmentConfirmation {
        tenant: ctx.tenant.clone(),
        settings: ctx.settings.shipment_confirmation.clone(),
        dear: ctx.dear.clone(),
        store: deps.store.clone(),
        clock: deps.clock.clone(),
    };
    let before = ctx.dear.stats().throttled;
    let outcome = job.confirm(shipment).await;
    tally.dear_throttled += ctx.dear.stats().throttled - before;
    outcome
}

/// Confirms an envelope's shipment; tenants already loaded in this event are reused (one DEAR
/// client, one TLS connection, per tenant and event).
async fn confirm_envelope(
    deps: &Deps,
    value: &Value,
    tenants: &mut HashMap<TenantId, TenantContext>,
    tally: &mut Tally,
) -> Result<Confirmation, String> {
    let (tenant, shipment) = envelope(value)?;
    let outcome = async {
        if !tenants.contains_key(&tenant) {
            let ctx = deps.tenant(&tenant).await?;
            tenants.insert(tenant.clone(), ctx);
        }
        let ctx = &tenants[&tenant];
        Ok::<_, NotConfirmed>(confirm(deps, ctx, &shipment, tally).await?)
    }
    .await;
    outcome
        .inspect(|c| tracing::info!(tenant = %tenant, result = %json!(c), "shipment confirmed"))
        .map_err(|e| format!("tenant {tenant}, shipment {}: {e}", shipment.shipment_id))
}

async fn handle_sqs(deps: &Deps, records: &[Value]) -> Value {
    let mut failures = Vec::new();
    let mut tally = Tally::default();
    let mut tenants = HashMap::new();
    for record in records {
        let id = record
            .get("messageId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let outcome = match record
            .get("body")
            .and_then(Value::as_str)
            .map(serde_json::from_str::<Value>)
        {
            Some(Ok(body)) => confirm_envelope(deps, &body, &mut tenants, &mut tally)
                .await
                .map(|_| ()),
            Some(Err(e)) => Err(format!("the message body is not JSON: {e}")),
            None => Err("the record has no body".into()),
        };
        tally.count(outcome.is_ok());
        match outcome {
            Ok(()) => {}
            Err(why) => {
                // Returned to SQS for another try; after maxReceiveCount it lands in the DLQ.
                tracing::error!(message_id = %id, error = %why, "shipment message failed");
                failures.push(json!({ "itemIdentifier": id }));
            }
        }
    }
    tally.print(deps);
    json!({ "batchItemFailures": failures })
}

async fn handle_http(deps: &Deps, event: &Value) -> Value {
    let method = method(event);
    if method != "POST" {
        return http_error(405, format!("{method} is not allowed; POST a shipment"));
    }
    let ctx = match deps
        .authorise(event, "/shipments/", Caller::Warehouse)
        .await
    {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let shipment = match body_text(event)
        .and_then(|b| Shipment::from_json(&b).map_err(|e| format!("invalid shipment: {e}")))
    {
        Ok(s) => s,
        Err(e) => return http_error(400, e),
    };
    let mut tally = Tally::default();
    let outcome = confirm(deps, &ctx, &shipment, &mut tally).await;
    tally.count(outcome.is_ok());
    tally.print(deps);
    match outcome {
        Ok(c) => http(202, json!(c)),
        Err(e @ ConfirmError::Invalid(_)) => http_error(400, e.to_string()),
        Err(e @ ConfirmError::Changed { .. }) => http_error(409, e.to_string()),
        Err(e) if e.is_refused_by_dear() => http_error(422, e.to_string()),
        Err(e) => http_error(503, e.to_string()),
    }
}
