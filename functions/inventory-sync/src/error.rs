//! Why one snapshot (or chunk) was not synced, and what the caller is told.

use dearsync_core::TenantId;
use dearsync_function_support::{HandlerError, TenantError};
use dearsync_inventory_sync::{ChunkError, ChunkSyncError, PullError, SyncError};

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
    /// The tenant's snapshot could not be pulled from its URL.
    #[error("tenant {tenant}: {source}")]
    Pull {
        /// Whose.
        tenant: TenantId,
        /// Why.
        #[source]
        source: PullError,
    },
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
    /// The sync of `tenant`'s snapshot `snapshot_id` failed.
    pub(crate) fn sync(tenant: &TenantId, snapshot_id: &str, source: SyncError) -> Self {
        NotSynced::Sync {
            tenant: tenant.clone(),
            snapshot_id: snapshot_id.to_owned(),
            source: Box::new(source),
        }
    }

    /// A chunk of `tenant`'s was not kept, or its snapshot not synced.
    pub(crate) fn chunk(tenant: &TenantId, error: ChunkSyncError) -> Self {
        match error {
            ChunkSyncError::Chunk(e) => NotSynced::Chunk(e),
            ChunkSyncError::Sync {
                snapshot_id,
                source,
            } => NotSynced::sync(tenant, &snapshot_id, source),
        }
    }

    /// True when the same input may succeed later (SQS should redeliver; HTTP 503).
    pub fn is_retryable(&self) -> bool {
        match self {
            NotSynced::Bad(_) => false,
            NotSynced::Tenant(e) => e.is_retryable(),
            NotSynced::Sync { source, .. } => source.is_retryable(),
            NotSynced::Chunk(e) => e.is_retryable(),
            NotSynced::Pull { source, .. } => source.is_retryable(),
            NotSynced::Busy { .. } => true,
        }
    }

    /// The Function URL status for it.
    pub(crate) fn http_status(&self) -> u16 {
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
