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
pub use dearsync_function_support::{Deps, HandlerError, TenantError};
use dearsync_function_support::{
    SqsEvent, UrlRequest, as_sqs, as_url_request, body_text, http, http_error, kind, method,
    sqs_batch,
};
use dearsync_shipment_confirmation::{ConfirmError, Confirmation, Shipment, ShipmentConfirmation};
use serde_json::{Value, json};

/// Handles one event.
pub async fn handle(deps: &Deps, event: Value) -> Result<Value, HandlerError> {
    if let Some(request) = as_url_request(&event) {
        return Ok(match request {
            Ok(request) => handle_http(deps, &request).await,
            Err(response) => response,
        });
    }
    if let Some(batch) = as_sqs(&event) {
        return Ok(json!(handle_sqs(deps, batch?).await));
    }
    if let Some(detail) = event.get("detail") {
        let mut tally = Tally::default();
        let outcome = confirm_envelope(deps, detail, &mut HashMap::new(), &mut tally).await;
        tally.count(outcome.is_ok());
        tally.print(deps);
        return outcome.map(|c| json!(c)).map_err(|e| {
            let retryable = e.is_retryable();
            HandlerError::failed(e, retryable)
        });
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

/// Reads `{"tenant": ..., "shipment": {...}}`; `Err` says what is wrong with it.
fn envelope(value: &Value) -> Result<(TenantId, Shipment), NotConfirmed> {
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

/// Why a shipment was not confirmed: its envelope is malformed, its tenant cannot be worked for,
/// or the confirmation failed.
#[derive(Debug, thiserror::Error)]
pub enum NotConfirmed {
    /// The envelope (or the shipment in it) is malformed: fix and resend.
    #[error("{0}")]
    Bad(String),
    /// The tenant cannot be worked for.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The confirmation failed.
    #[error("tenant {tenant}, shipment {shipment_id}: {source}")]
    Confirm {
        /// Whose.
        tenant: TenantId,
        /// Which.
        shipment_id: String,
        /// Why.
        #[source]
        source: Box<ConfirmError>,
    },
}

impl NotConfirmed {
    /// True when the same message may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotConfirmed::Bad(_) => false,
            NotConfirmed::Tenant(e) => e.is_retryable(),
            NotConfirmed::Confirm { source, .. } => source.is_retryable(),
        }
    }
}

async fn confirm(
    deps: &Deps,
    ctx: &TenantContext,
    shipment: &Shipment,
    tally: &mut Tally,
) -> Result<Confirmation, ConfirmError> {
    let job = ShipmentConfirmation {
        ctx: ctx.job_context(deps),
        settings: ctx.settings.shipment_confirmation.clone(),
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
    let mut tally = Tally::default();
    let mut tenants = HashMap::new();
    let response = sqs_batch(batch, "shipment-confirmation", async |body| {
        confirm_envelope(deps, &body, &mut tenants, &mut tally)
            .await
            .map(|_| tally.confirmed += 1)
    })
    .await;
    // Every message returned failed, the unreadable ones included.
    tally.failed += response.batch_item_failures.len() as u64;
    tally.print(deps);
    response
}

async fn handle_http(deps: &Deps, event: &UrlRequest) -> Value {
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
    let shipment = match body_text(event) {
        Ok(text) => match Shipment::from_json(&text) {
            Ok(s) => s,
            Err(e) => return http_error(400, format!("invalid shipment: {e}")),
        },
        Err(e) => return http_error(400, e.to_string()),
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
