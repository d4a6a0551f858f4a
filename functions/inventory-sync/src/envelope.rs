//! What an SQS record, an EventBridge `detail` or a Function URL body carries, checked before the
//! tenant is loaded: a malformed message costs no secret read.

use dearsync_core::TenantId;
use dearsync_function_support::kind;
use dearsync_inventory_sync::{Chunk, Snapshot, SyncOptions};
use serde_json::Value;

use crate::NotSynced;

/// A whole snapshot, or one chunk of a large one.
pub(crate) enum SyncInput {
    /// Synced at once.
    Snapshot(Snapshot),
    /// Kept until every part is there.
    Chunk(Chunk),
}

impl SyncInput {
    /// A snapshot object.
    pub(crate) fn snapshot(value: &Value) -> Result<Self, NotSynced> {
        Snapshot::from_json_reader(value.to_string().as_bytes())
            .map(SyncInput::Snapshot)
            .map_err(|e| NotSynced::Bad(format!("invalid snapshot: {e}")))
    }

    /// A chunk object.
    pub(crate) fn chunk(value: &Value) -> Result<Self, NotSynced> {
        Ok(SyncInput::Chunk(Chunk::from_json(value)?))
    }
}

/// A checked envelope: whose, what, and how.
pub(crate) struct Envelope {
    pub(crate) tenant: TenantId,
    pub(crate) input: SyncInput,
    pub(crate) options: SyncOptions,
}

/// `{"tenant", "snapshot"}` or `{"tenant", "chunk"}`, with an optional `"force": true`.
pub(crate) fn envelope(value: &Value) -> Result<Envelope, NotSynced> {
    let tenant = match value.get("tenant") {
        Some(Value::String(t)) => TenantId::new(t.clone()).map_err(|e| format!("tenant: {e}"))?,
        _ => return Err(
            "tenant is missing or not a string (expected {\"tenant\": ..., \"snapshot\": {...}})"
                .into(),
        ),
    };
    let options = options(force_flag(value)?);
    let input = if let Some(snapshot) = value.get("snapshot") {
        SyncInput::snapshot(snapshot)?
    } else if let Some(chunk) = value.get("chunk") {
        SyncInput::chunk(chunk)?
    } else {
        return Err("expected \"snapshot\" or \"chunk\" next to \"tenant\"".into());
    };
    Ok(Envelope {
        tenant,
        input,
        options,
    })
}

/// The sync options of a run, forced or not.
pub(crate) fn options(force: bool) -> SyncOptions {
    SyncOptions {
        force,
        ..SyncOptions::default()
    }
}

/// `"force": true` next to the tenant: apply a snapshot the sanity guard would hold (a person
/// checked it). Anything but a boolean is refused rather than guessed.
pub(crate) fn force_flag(value: &Value) -> Result<bool, NotSynced> {
    match value.get("force") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(NotSynced::Bad(format!(
            "force must be true or false, got {}",
            kind(other)
        ))),
    }
}
