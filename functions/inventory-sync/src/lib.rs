//! The Inventory Sync Lambda's handler, apart from the runtime so tests can drive it.
//!
//! Events:
//! * a schedule `{"tenant": "acme"}` (or `detail.tenant`): pulls the tenant's JSON snapshot from
//!   `inventory_sync.snapshot_url` and syncs it. Without a tenant: with a run queue
//!   (`TENANT_RUN_QUEUE_URL`, the deployed stack's inventory queue), one `{"tenant"}` message per
//!   tenant due a pull (`pull_interval_minutes`) is enqueued, and each such message is one pull;
//!   without one, every enabled tenant with a `snapshot_url` is pulled in turn;
//! * SQS records and EventBridge `detail`s carrying `{"tenant": ..., "snapshot": {...}}`, or a chunk of
//!   a large snapshot `{"tenant": ..., "chunk": {"snapshot_id", "as_of", "location", "part", "parts",
//!   "lines"}}`: chunks are kept in the ledger until all parts are there, then synced as one;
//! * a Function URL `POST /inventory/<tenant>` with a snapshot (or chunk) as the body and the tenant's
//!   inbound secret in `x-dearsync-secret`: 202 with the summary, 4xx with the reason.

mod envelope;
mod error;
mod http;
mod pull;

use dearsync_core::TenantId;
pub use dearsync_function_support::{Deps, HandlerError};
use dearsync_function_support::{TenantContext, as_sqs, as_url_request, kind, sqs_batch};
use dearsync_inventory_sync::{
    ChunkReceived, InventorySync, Snapshot, SyncOptions, SyncOutcome, SyncSummary,
};
use serde_json::{Value, json};

use envelope::{SyncInput, envelope, force_flag, options};
pub use error::NotSynced;

pub use dearsync_inventory_sync::MAX_CHUNK_LINES;

/// Handles one event.
pub async fn handle(deps: &Deps, event: Value) -> Result<Value, HandlerError> {
    if let Some(request) = as_url_request(&event) {
        return Ok(match request {
            Ok(request) => http::handle_http(deps, &request).await,
            Err(response) => response,
        });
    }
    if let Some(batch) = as_sqs(&event) {
        let response = sqs_batch(batch?, "inventory-sync", async |body| {
            if body.get("snapshot").is_some() || body.get("chunk").is_some() {
                pushed(deps, &body).await.map(|_| ())
            } else {
                pull::queued_pull(deps, body).await.map(|_| ())
            }
        })
        .await;
        return Ok(json!(response));
    }
    let detail = event.get("detail");
    if let Some(d) = detail
        && (d.get("snapshot").is_some() || d.get("chunk").is_some())
    {
        return Ok(pushed(deps, d).await?);
    }
    match event.get("tenant").or_else(|| detail?.get("tenant")) {
        Some(Value::String(t)) => {
            let tenant = TenantId::new(t.clone())
                .map_err(|e| HandlerError::BadEvent(format!("tenant: {e}")))?;
            let result = pull::pull(deps, &tenant, options(force_flag(&event)?)).await?;
            Ok(json!({ "tenants": [result] }))
        }
        Some(other) => Err(HandlerError::BadEvent(format!(
            "tenant must be a tenant id string, got {}",
            kind(other)
        ))),
        // The deployed stack fans out: one queued pull per due tenant, run in parallel.
        None if event.is_object() => match &deps.run_queue {
            Some(queue) => pull::dispatch_pulls(deps, queue.as_ref()).await,
            None => pull::pull_all(deps).await,
        },
        None => Err(HandlerError::BadEvent(format!(
            "expected a JSON object, got {}",
            kind(&event)
        ))),
    }
}

/// A snapshot or chunk pushed through SQS or EventBridge.
async fn pushed(deps: &Deps, value: &Value) -> Result<Value, NotSynced> {
    let envelope = envelope(value)?;
    let ctx = deps.tenant(&envelope.tenant).await?;
    sync_input(deps, ctx, envelope.input, envelope.options).await
}

fn job(deps: &Deps, ctx: TenantContext) -> InventorySync {
    InventorySync {
        ctx: ctx
            .job_context(deps)
            .in_lane(dearsync_core::Lane::Inventory),
        settings: ctx.settings.inventory_sync,
    }
}

/// Syncs a snapshot and reports its metrics.
async fn run(
    deps: &Deps,
    job: &InventorySync,
    snapshot: &Snapshot,
    options: SyncOptions,
) -> Result<SyncSummary, NotSynced> {
    let s = job
        .sync_with(snapshot, options)
        .await
        .map_err(|e| NotSynced::sync(&job.ctx.tenant, &snapshot.snapshot_id, e))?;
    println!("{}", s.emf(deps.clock.now().timestamp_millis()));
    Ok(s)
}

/// Syncs a pushed snapshot, or keeps a chunk (syncing the snapshot once all its parts are in).
async fn sync_input(
    deps: &Deps,
    ctx: TenantContext,
    input: SyncInput,
    options: SyncOptions,
) -> Result<Value, NotSynced> {
    let job = job(deps, ctx);
    let summary = match input {
        SyncInput::Snapshot(snapshot) => run(deps, &job, &snapshot, options).await?,
        SyncInput::Chunk(chunk) => match job.sync_chunk(&chunk, options).await {
            Ok(ChunkReceived::Synced(summary)) => {
                println!("{}", summary.emf(deps.clock.now().timestamp_millis()));
                *summary
            }
            Ok(waiting) => return Ok(waiting.to_json()),
            Err(e) => return Err(NotSynced::chunk(&job.ctx.tenant, e)),
        },
    };
    not_busy(&job.ctx.tenant, summary).map(|s| s.to_json())
}

/// A pushed snapshot another worker is applying is an error to retry: acknowledging it would drop
/// the only copy if that worker died. (A pulled one is not: the next pull reads it again.)
fn not_busy(tenant: &TenantId, summary: SyncSummary) -> Result<SyncSummary, NotSynced> {
    if summary.outcome != SyncOutcome::InProgress {
        return Ok(summary);
    }
    Err(NotSynced::Busy {
        tenant: tenant.clone(),
        snapshot_id: summary.snapshot_id,
        note: summary.note.unwrap_or_default(),
    })
}
