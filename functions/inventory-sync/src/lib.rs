//! The Inventory Sync Lambda's handler, apart from the runtime so tests can drive it.
//!
//! Events:
//! * a schedule `{"tenant": "acme"}` (or `detail.tenant`; none = every enabled tenant with a
//!   `snapshot_url`): pulls the tenant's JSON snapshot from `inventory_sync.snapshot_url` and syncs it;
//! * SQS records and EventBridge `detail`s carrying `{"tenant": ..., "snapshot": {...}}`, or a chunk of
//!   a large snapshot `{"tenant": ..., "chunk": {"snapshot_id", "as_of", "location", "part", "parts",
//!   "lines"}}`: chunks are kept in the ledger until all parts are there, then synced as one;
//! * a Function URL `POST /inventory/<tenant>` with a snapshot (or chunk) as the body and the tenant's
//!   inbound secret in `x-dearsync-secret`: 202 with the summary, 4xx with the reason.

use std::collections::BTreeMap;

use dearsync_core::{Caller, TenantId, TenantSettings};
pub use dearsync_function_support::{Deps, HandlerError};
use dearsync_function_support::{
    TenantContext, TenantError, UrlRequest, as_sqs, as_url_request, body_json, http, http_error,
    kind, method, query_flag, sqs_batch,
};
use dearsync_inventory_sync::{
    Chunk, ChunkError, ChunkLedger, ChunkProgress, InventorySync, Snapshot, SyncError, SyncOptions,
    SyncOutcome, SyncSummary,
};
use serde_json::{Value, json};

pub use dearsync_inventory_sync::MAX_CHUNK_LINES;

/// Why one snapshot (or chunk) was not synced; each says whether a retry may help.
#[derive(Debug, thiserror::Error)]
pub enum NotSynced {
    /// The envelope, chunk or snapshot is malformed: fix and resend.
    #[error("{0}")]
    Bad(String),
    /// The tenant cannot be worked for.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The sync itself failed.
    #[error("tenant {tenant}, snapshot {snapshot_id}: {source}")]
    Sync {
        /// Whose.
        tenant: TenantId,
        /// Which.
        snapshot_id: String,
        /// Why.
        #[source]
        source: Box<SyncError>,
    },
    /// A chunk was refused, or keeping or assembling the chunks failed.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The tenant's snapshot URL could not be read.
    #[error("{0}")]
    Pull(String),
    /// Another worker holds the snapshot's claim. Retried, not dropped: if that worker died, its
    /// claim lapses within minutes and the retry resumes the snapshot (only the sender still has it).
    #[error("tenant {tenant}, snapshot {snapshot_id}: {note}")]
    Busy {
        /// Whose.
        tenant: TenantId,
        /// Which.
        snapshot_id: String,
        /// Who holds it until when.
        note: String,
    },
}

impl NotSynced {
    /// True when the same input may succeed later (SQS should redeliver; HTTP 503).
    pub fn is_retryable(&self) -> bool {
        match self {
            NotSynced::Bad(_) => false,
            NotSynced::Tenant(e) => e.is_retryable(),
            NotSynced::Sync { source, .. } => source.is_retryable(),
            NotSynced::Chunk(e) => e.is_retryable(),
            NotSynced::Pull(_) | NotSynced::Busy { .. } => true,
        }
    }

    /// The Function URL status for it.
    fn http_status(&self) -> u16 {
        match self {
            NotSynced::Tenant(e) => e.http_status(),
            NotSynced::Bad(_) => 400,
            NotSynced::Sync { .. } if !self.is_retryable() => 422,
            // A damaged or refused record in the state store: an operator's problem, not a retry.
            NotSynced::Chunk(ChunkError::Store(_)) if !self.is_retryable() => 500,
            NotSynced::Chunk(_) if !self.is_retryable() => 400,
            _ => 503,
        }
    }
}

impl From<String> for NotSynced {
    fn from(message: String) -> Self {
        NotSynced::Bad(message)
    }
}

impl From<&str> for NotSynced {
    fn from(message: &str) -> Self {
        NotSynced::Bad(message.to_owned())
    }
}

impl From<NotSynced> for HandlerError {
    fn from(error: NotSynced) -> Self {
        let retryable = error.is_retryable();
        HandlerError::failed(error, retryable)
    }
}

/// Handles one event.
pub async fn handle(deps: &Deps, event: Value) -> Result<Value, HandlerError> {
    if let Some(request) = as_url_request(&event) {
        return Ok(match request {
            Ok(request) => handle_http(deps, &request).await,
            Err(response) => response,
        });
    }
    if let Some(batch) = as_sqs(&event) {
        let response = sqs_batch(batch?, "inventory-sync", async |body| {
            envelope(deps, &body, false).await.map(|_| ())
        })
        .await;
        return Ok(json!(response));
    }
    let detail = event.get("detail");
    if let Some(d) = detail
        && (d.get("snapshot").is_some() || d.get("chunk").is_some())
    {
        return Ok(envelope(deps, d, false).await?);
    }
    let tenant = event
        .get("tenant")
        .or_else(|| detail.and_then(|d| d.get("tenant")));
    match tenant {
        Some(Value::String(t)) => {
            let tenant = TenantId::new(t.clone())
                .map_err(|e| HandlerError::BadEvent(format!("tenant: {e}")))?;
            let options = SyncOptions {
                force: force_flag(&event)?,
                ..SyncOptions::default()
            };
            Ok(json!({ "tenants": [pull(deps, &tenant, options).await?] }))
        }
        Some(other) => Err(HandlerError::BadEvent(format!(
            "tenant must be a tenant id string, got {}",
            kind(other)
        ))),
        None if event.is_object() => pull_all(deps).await,
        None => Err(HandlerError::BadEvent(format!(
            "expected a JSON object, got {}",
            kind(&event)
        ))),
    }
}

fn job(deps: &Deps, ctx: TenantContext) -> InventorySync {
    InventorySync {
        ctx: ctx.job_context(deps),
        settings: ctx.settings.inventory_sync,
    }
}

async fn run(
    deps: &Deps,
    job: &InventorySync,
    snapshot: &Snapshot,
    options: SyncOptions,
) -> Result<SyncSummary, NotSynced> {
    let s = job
        .sync_with(snapshot, options)
        .await
        .map_err(|source| NotSynced::Sync {
            tenant: job.ctx.tenant.clone(),
            snapshot_id: snapshot.snapshot_id.clone(),
            source: Box::new(source),
        })?;
    println!("{}", s.emf(deps.clock.now().timestamp_millis()));
    Ok(s)
}

/// A pushed snapshot another worker is applying is an error to retry: acknowledging it would drop
/// the only copy if that worker died. (A pulled one is not: the next pull reads it again.)
fn not_busy(summary: SyncSummary) -> Result<SyncSummary, NotSynced> {
    if summary.outcome != SyncOutcome::InProgress {
        return Ok(summary);
    }
    Err(NotSynced::Busy {
        tenant: TenantId::new(summary.tenant.clone()).map_err(|e| format!("tenant: {e}"))?,
        snapshot_id: summary.snapshot_id,
        note: summary.note.unwrap_or_default(),
    })
}

/// `"force": true` next to the tenant: apply a snapshot the sanity guard would hold (a person
/// checked it). Anything but a boolean is refused rather than guessed.
fn force_flag(value: &Value) -> Result<bool, NotSynced> {
    match value.get("force") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(NotSynced::Bad(format!(
            "force must be true or false, got {}",
            kind(other)
        ))),
    }
}

/// `{"tenant", "snapshot"}` or `{"tenant", "chunk"}`, with an optional `"force": true`; `force`
/// is the caller's own.
async fn envelope(deps: &Deps, value: &Value, force: bool) -> Result<Value, NotSynced> {
    let tenant = match value.get("tenant") {
        Some(Value::String(t)) => TenantId::new(t.clone()).map_err(|e| format!("tenant: {e}"))?,
        _ => return Err(
            "tenant is missing or not a string (expected {\"tenant\": ..., \"snapshot\": {...}})"
                .into(),
        ),
    };
    let options = SyncOptions {
        force: force || force_flag(value)?,
        ..SyncOptions::default()
    };
    let input = if let Some(snapshot) = value.get("snapshot") {
        SyncInput::snapshot(snapshot)?
    } else if let Some(chunk) = value.get("chunk") {
        SyncInput::Chunk(chunk)
    } else {
        return Err("expected \"snapshot\" or \"chunk\" next to \"tenant\"".into());
    };
    // The input is checked before the tenant is loaded: a malformed message costs no secret read.
    let ctx = deps.tenant(&tenant).await?;
    sync_input(deps, ctx, input, options).await
}

/// Syncs a snapshot, or keeps a chunk (syncing the snapshot once all its parts are in).
async fn sync_input(
    deps: &Deps,
    ctx: TenantContext,
    input: SyncInput<'_>,
    options: SyncOptions,
) -> Result<Value, NotSynced> {
    let job = job(deps, ctx);
    match input {
        SyncInput::Snapshot(snapshot) => {
            let summary = not_busy(run(deps, &job, &snapshot, options).await?)?;
            Ok(summary_json(&summary))
        }
        SyncInput::Chunk(chunk) => chunk_arrived(deps, &job, chunk, options).await,
    }
}

/// What an envelope carries.
enum SyncInput<'a> {
    Snapshot(Snapshot),
    Chunk(&'a Value),
}

impl SyncInput<'_> {
    fn snapshot(value: &Value) -> Result<Self, NotSynced> {
        Snapshot::from_json_reader(value.to_string().as_bytes())
            .map(SyncInput::Snapshot)
            .map_err(|e| NotSynced::Bad(format!("invalid snapshot: {e}")))
    }
}

fn summary_json(s: &SyncSummary) -> Value {
    json!({
        "snapshot_id": s.snapshot_id, "location": s.location, "outcome": s.outcome, "note": s.note,
        "lines_read": s.lines_read, "unchanged": s.unchanged, "adjusted": s.adjusted,
        "held_for_review": s.held_for_review, "unknown_skus": s.unknown_skus, "skipped": s.skipped,
        "adjustments": s.adjustments, "dear_calls": s.dear_calls,
    })
}

/// Keeps a chunk; when every part is there, syncs the whole snapshot.
async fn chunk_arrived(
    deps: &Deps,
    job: &InventorySync,
    chunk: &Value,
    options: SyncOptions,
) -> Result<Value, NotSynced> {
    let chunk = Chunk::from_json(chunk)?;
    let ledger = ChunkLedger {
        store: deps.store.as_ref(),
        tenant: &job.ctx.tenant,
    };
    let (snapshot, parts) = match ledger.keep(&chunk).await? {
        ChunkProgress::Waiting { received, parts } => {
            return Ok(json!({
                "snapshot_id": chunk.snapshot_id, "outcome": "waiting_for_parts",
                "received": received, "parts": parts,
            }));
        }
        ChunkProgress::Complete { snapshot, parts } => (snapshot, parts),
    };
    // Busy: the parts stay pending, so the retry (or any part resent) assembles it again.
    let summary = not_busy(run(deps, job, &snapshot, options).await?)?;
    if summary.outcome != SyncOutcome::Held {
        // Held: kept pending, so resending any part with `"force": true` applies the whole snapshot.
        ledger.done(parts).await;
    }
    Ok(summary_json(&summary))
}

/// The largest snapshot a pull reads: planned in memory, a 50 MB file peaks near 200 MB
/// (docs/benchmarks.md), so this keeps within the function's 512 MB with room for the bytes read.
const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;

/// Pull mode: GET the tenant's snapshot and sync it.
async fn pull(deps: &Deps, tenant: &TenantId, options: SyncOptions) -> Result<Value, NotSynced> {
    let job = job(deps, deps.tenant(tenant).await?);
    let url = job.settings.snapshot_url.clone().ok_or_else(|| {
        format!("tenant {tenant}: inventory_sync.snapshot_url is not set: nothing to pull")
    })?;
    let pulled = |m: String| NotSynced::Pull(m);
    let url = dearsync_outbound::check_url(&url, deps.outbound)
        .map_err(|e| pulled(format!("tenant {tenant}: inventory_sync.snapshot_url: {e}")))?;
    let http = dearsync_outbound::client(deps.outbound, std::time::Duration::from_secs(60))
        .map_err(|e| pulled(format!("tenant {tenant}: {e}")))?;
    let resp = http.get(url.clone()).send().await.map_err(|e| {
        let why = match dearsync_outbound::OutboundError::refusal_in(&e) {
            Some(refusal) => refusal.to_string(),
            None => dear_client::error_chain(&e),
        };
        pulled(format!(
            "tenant {tenant}: cannot GET the snapshot at {url}: {why}"
        ))
    })?;
    if !resp.status().is_success() {
        return Err(pulled(format!(
            "tenant {tenant}: the snapshot URL answered HTTP {}",
            resp.status()
        )));
    }
    let bytes = dearsync_outbound::read_capped(resp, MAX_SNAPSHOT_BYTES)
        .await
        .map_err(|e| pulled(format!("tenant {tenant}: reading the snapshot: {e}")))?;
    let snapshot = Snapshot::from_json_reader(bytes.as_slice())
        .map_err(|e| format!("tenant {tenant}: invalid snapshot from {url}: {e}"))?;
    drop(bytes); // the lines are parsed: the raw text is not kept while planning
    run(deps, &job, &snapshot, options)
        .await
        .map(|s| summary_json(&s))
}

/// Pulls every enabled tenant whose settings set `inventory_sync.snapshot_url`, each isolated (one
/// tenant's failure never stops another); a tenant whose stored settings do not parse is a failure
/// named, not skipped.
async fn pull_all(deps: &Deps) -> Result<Value, HandlerError> {
    let tenants = deps.store.tenants().await.map_err(|e| {
        let retryable = e.is_transient();
        HandlerError::failed(e, retryable)
    })?;
    let mut results = Vec::new();
    let mut failures = BTreeMap::new();
    let mut retryable = true;
    for t in tenants.into_iter().filter(|t| t.enabled) {
        let outcome = match TenantSettings::from_toml(&t.settings_toml) {
            Ok(settings) if settings.inventory_sync.snapshot_url.is_none() => continue,
            Ok(_) => pull(deps, &t.tenant, SyncOptions::default()).await,
            Err(source) => Err(NotSynced::Tenant(TenantError::Settings {
                tenant: t.tenant.clone(),
                source,
            })),
        };
        match outcome {
            Ok(s) => results.push(s),
            Err(e) => {
                tracing::error!(tenant = %t.tenant, error = %e, "inventory pull failed");
                retryable &= e.is_retryable();
                failures.insert(t.tenant.to_string(), e.to_string());
            }
        }
    }
    if failures.is_empty() {
        Ok(json!({ "tenants": results }))
    } else {
        Err(HandlerError::failed(
            format!("{} tenants failed: {failures:?}", failures.len()),
            retryable,
        ))
    }
}

async fn handle_http(deps: &Deps, event: &UrlRequest) -> Value {
    let method = method(event);
    if method != "POST" {
        return http_error(405, format!("{method} is not allowed; POST a snapshot"));
    }
    let ctx = match deps
        .authorise(event, "/inventory/", Caller::Warehouse)
        .await
    {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let (body, force) = match body_json(event).and_then(|b| Ok((b, query_flag(event, "force")?))) {
        Ok(read) => read,
        Err(e) => return http_error(400, e.to_string()),
    };
    // The tenant is the one the request proved; it is not loaded again.
    let input = if body.get("part").is_some() {
        Ok(SyncInput::Chunk(&body))
    } else {
        SyncInput::snapshot(&body)
    };
    let options = SyncOptions {
        force,
        ..SyncOptions::default()
    };
    let outcome = match input {
        Ok(input) => sync_input(deps, ctx, input, options).await,
        Err(e) => Err(e),
    };
    match outcome {
        // Held for a person: not applied, and resending it unchanged will not apply it either.
        Ok(summary) if summary["outcome"] == SyncOutcome::Held.as_str() => http(409, summary),
        Ok(summary) => http(202, summary),
        Err(e) => http_error(e.http_status(), e.to_string()),
    }
}
