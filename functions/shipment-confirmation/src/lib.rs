//! The Shipment Confirmation Lambda's handler, apart from the runtime so tests can drive it.
//!
//! A shipment arrives wrapped with its tenant, `{"tenant": "acme", "shipment": {...}}`, as:
//! * an SQS batch (`Records[]`): each record confirmed on its own; the failed ones are returned as
//!   `batchItemFailures` so SQS redelivers only those (and moves a poison message to the DLQ
//!   after the queue's maxReceiveCount) — one bad message never blocks the rest;
//! * an EventBridge event whose `detail` is the envelope;
//! * a Function URL `POST /shipments/<tenant>` whose body is the shipment itself, with the tenant's
//!   inbound secret in `x-dearsync-secret`: 202 with the result, 4xx with the reason on bad input.

mod envelope;
mod error;
mod http;
mod tally;

use std::collections::HashMap;

use dearsync_core::TenantId;
use dearsync_function_support::TenantContext;
pub use dearsync_function_support::{Deps, HandlerError, TenantError};
use dearsync_function_support::{SqsEvent, as_sqs, as_url_request, kind, sqs_batch};
use dearsync_shipment_confirmation::{ConfirmError, Confirmation, Shipment, ShipmentConfirmation};
use serde_json::{Value, json};

use envelope::envelope;
pub use error::NotConfirmed;
use tally::Tally;

/// Handles one event.
pub async fn handle(deps: &Deps, event: Value) -> Result<Value, HandlerError> {
    if let Some(request) = as_url_request(&event) {
        return Ok(match request {
            Ok(request) => http::handle_http(deps, &request).await,
            Err(response) => response,
        });
    }
    if let Some(batch) = as_sqs(&event) {
        return Ok(json!(handle_sqs(deps, batch?).await));
    }
    if let Some(detail) = event.get("detail") {
        let mut tally = Tally::new(deps);
        let outcome = confirm_envelope(deps, detail, &mut HashMap::new(), &mut tally).await;
        tally.settle_failures(u64::from(outcome.is_err()));
        tally.finish(deps).await;
        return Ok(json!(outcome?));
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

/// Confirms one shipment of a loaded tenant, counting it and DEAR's throttled answers.
async fn confirm(
    deps: &Deps,
    ctx: &TenantContext,
    shipment: &Shipment,
    tally: &mut Tally,
) -> Result<Confirmation, ConfirmError> {
    let job = ShipmentConfirmation {
        ctx: ctx
            .job_context(deps)
            .in_lane(dearsync_core::Lane::Shipments),
        settings: ctx.settings.shipment_confirmation.clone(),
    };
    let before = ctx.dear.stats();
    let outcome = job.confirm(shipment).await;
    let after = ctx.dear.stats();
    tally.count(
        &ctx.tenant,
        outcome.is_ok(),
        after.calls - before.calls,
        after.throttled - before.throttled,
    );
    outcome
}

/// Confirms an envelope's shipment; tenants already loaded in this event are reused (one DEAR
/// client, one TLS connection, per tenant and event).
async fn confirm_envelope(
    deps: &Deps,
    value: &Value,
    tenants: &mut HashMap<TenantId, TenantContext>,
    tally: &mut Tally,
) -> Result<Confirmation, NotConfirmed> {
    let (tenant, shipment) = envelope(value)?;
    if !tenants.contains_key(&tenant) {
        let ctx = deps.tenant(&tenant).await?;
        tenants.insert(tenant.clone(), ctx);
    }
    let ctx = &tenants[&tenant];
    let confirmation = confirm(deps, ctx, &shipment, tally)
        .await
        .map_err(|source| NotConfirmed::Confirm {
            tenant: tenant.clone(),
            shipment_id: shipment.shipment_id.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(tenant = %tenant, result = %json!(confirmation), "shipment confirmed");
    Ok(confirmation)
}

/// Confirms each message's shipment; tenants loaded once per batch.
async fn handle_sqs(deps: &Deps, batch: SqsEvent) -> dearsync_function_support::SqsBatchResponse {
    let mut tally = Tally::new(deps);
    let mut tenants = HashMap::new();
    let response = sqs_batch(batch, "shipment-confirmation", async |body| {
        confirm_envelope(deps, &body, &mut tenants, &mut tally)
            .await
            .map(|_| ())
    })
    .await;
    // Every message returned failed, the unreadable ones included.
    tally.settle_failures(response.batch_item_failures.len() as u64);
    tally.finish(deps).await;
    response
}
