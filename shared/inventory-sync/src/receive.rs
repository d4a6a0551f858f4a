//! How a snapshot reaches a sync besides a whole one in hand: in chunks (kept until every part is
//! there), or pulled from the tenant's `inventory_sync.snapshot_url`.

use std::time::Duration;

use dearsync_outbound::{OutboundError, OutboundPolicy};
use serde_json::{Value, json};

use crate::chunks::{Chunk, ChunkError, ChunkLedger, ChunkProgress};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::sync::{InventorySync, SyncError, SyncOptions, SyncOutcome, SyncSummary};

/// The largest snapshot a pull reads: planned in memory, a 50 MB file peaks near 200 MB
/// (docs/benchmarks.md), so this keeps within the function's 512 MB with room for the bytes read.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;

/// How long a pull's GET may take, the body included.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// What became of one chunk.
#[derive(Debug)]
pub enum ChunkReceived {
    /// Kept; the snapshot still lacks a part.
    Waiting {
        /// The snapshot.
        snapshot_id: String,
        /// Parts there, counted from 1 up to the first missing one.
        received: u64,
        /// Of how many.
        parts: u64,
    },
    /// It was the last part: the whole snapshot was synced (or held, or found in progress
    /// elsewhere: then its parts stay pending, so a resent part assembles it again).
    Synced(Box<SyncSummary>),
}

impl ChunkReceived {
    /// The answer a sender gets: the sync's summary, or how many parts are in.
    pub fn to_json(&self) -> Value {
        match self {
            ChunkReceived::Waiting {
                snapshot_id,
                received,
                parts,
            } => json!({
                "snapshot_id": snapshot_id, "outcome": "waiting_for_parts",
                "received": received, "parts": parts,
            }),
            ChunkReceived::Synced(summary) => summary.to_json(),
        }
    }
}

/// Why a chunk was not kept, or its snapshot not synced.
#[derive(Debug, thiserror::Error)]
pub enum ChunkSyncError {
    /// The chunk was refused, or keeping or assembling the parts failed.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The assembled snapshot's sync failed.
    #[error("snapshot {snapshot_id}: {source}")]
    Sync {
        /// Which.
        snapshot_id: String,
        /// Why.
        #[source]
        source: SyncError,
    },
}

/// Why the tenant's snapshot could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The tenant has no URL to pull from.
    #[error("inventory_sync.snapshot_url is not set: nothing to pull")]
    NoUrl,
    /// The URL is not one this deployment calls (not https, not a public address…).
    #[error("inventory_sync.snapshot_url: {0}")]
    Url(#[source] OutboundError),
    /// The HTTP client could not be built.
    #[error("{0}")]
    Client(#[source] OutboundError),
    /// The GET did not get an answer.
    #[error("cannot GET the snapshot at {url}: {why}")]
    Get {
        /// Where: its host only (`dearsync_outbound::shown`).
        url: String,
        /// The refusal by the outbound rules, or the transport's error chain.
        why: String,
    },
    /// The URL answered, but not with success.
    #[error("the snapshot URL answered HTTP {status}")]
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// The body could not be read (or is larger than [`MAX_SNAPSHOT_BYTES`]).
    #[error("reading the snapshot: {0}")]
    Read(#[source] OutboundError),
    /// The body is not a valid snapshot.
    #[error("invalid snapshot from {url}: {source}")]
    Invalid {
        /// Where: its host only (`dearsync_outbound::shown`).
        url: String,
        /// What is wrong.
        #[source]
        source: SnapshotError,
    },
}

impl PullError {
    /// True when pulling again later may work without anyone changing the settings or the file.
    /// A URL the rules refuse counts as retryable as before: the next scheduled pull tries again
    /// anyway, and the failure is alarmed either way.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PullError::NoUrl | PullError::Invalid { .. })
    }
}

impl InventorySync {
    /// Keeps `chunk`; when every part is there, syncs the whole snapshot and marks the parts done
    /// (unless it was held for a person or is in progress elsewhere: then they stay pending, so
    /// resending any part, with `force` for a held one, syncs it again).
    pub async fn sync_chunk(
        &self,
        chunk: &Chunk,
        options: SyncOptions,
    ) -> Result<ChunkReceived, ChunkSyncError> {
        let ledger = ChunkLedger {
            store: self.ctx.store.as_ref(),
            tenant: &self.ctx.tenant,
        };
        let (snapshot, parts) = match ledger.keep(chunk).await? {
            ChunkProgress::Waiting { received, parts } => {
                return Ok(ChunkReceived::Waiting {
                    snapshot_id: chunk.snapshot_id.clone(),
                    received,
                    parts,
                });
            }
            ChunkProgress::Complete { snapshot, parts } => (snapshot, parts),
        };
        let summary =
            self.sync_with(&snapshot, options)
                .await
                .map_err(|source| ChunkSyncError::Sync {
                    snapshot_id: snapshot.snapshot_id.clone(),
                    source,
                })?;
        if !matches!(summary.outcome, SyncOutcome::Held | SyncOutcome::InProgress) {
            ledger.done(parts).await;
        }
        Ok(ChunkReceived::Synced(Box::new(summary)))
    }

    /// GETs the tenant's snapshot from `inventory_sync.snapshot_url`, under the deployment's
    /// outbound rules, at most [`MAX_SNAPSHOT_BYTES`].
    pub async fn pull(&self, policy: OutboundPolicy) -> Result<Snapshot, PullError> {
        let url = self
            .settings
            .snapshot_url
            .as_deref()
            .ok_or(PullError::NoUrl)?;
        let url = dearsync_outbound::check_url(url, policy).map_err(PullError::Url)?;
        let http = dearsync_outbound::client(policy, PULL_TIMEOUT).map_err(PullError::Client)?;
        let resp = http.get(url.clone()).send().await.map_err(|e| {
            let refusal = OutboundError::refusal_in(&e).map(ToString::to_string);
            PullError::Get {
                url: dearsync_outbound::shown(&url),
                // The URL may hold a secret (a presigned one does): the chain goes without it.
                why: refusal.unwrap_or_else(|| dear_client::error_chain(&e.without_url())),
            }
        })?;
        if !resp.status().is_success() {
            return Err(PullError::Status {
                status: resp.status().as_u16(),
            });
        }
        let bytes = dearsync_outbound::read_capped(resp, MAX_SNAPSHOT_BYTES)
            .await
            .map_err(PullError::Read)?;
        Snapshot::from_json_reader(bytes.as_slice()).map_err(|source| PullError::Invalid {
            url: dearsync_outbound::shown(&url),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_snapshot_answers_how_many_parts_are_in() {
        let waiting = ChunkReceived::Waiting {
            snapshot_id: "BIG-1".into(),
            received: 2,
            parts: 5,
        };
        assert_eq!(
            waiting.to_json(),
            json!({"snapshot_id": "BIG-1", "outcome": "waiting_for_parts", "received": 2, "parts": 5})
        );
    }

    #[test]
    fn only_a_missing_url_or_an_invalid_file_is_not_worth_pulling_again() {
        assert!(!PullError::NoUrl.is_retryable());
        assert!(PullError::Status { status: 503 }.is_retryable());
        let invalid = Snapshot::from_json_reader(&b"{}"[..]).unwrap_err();
        assert!(
            !PullError::Invalid {
                url: "https://wms.example/stock.json".into(),
                source: invalid,
            }
            .is_retryable()
        );
    }

    #[tokio::test]
    async fn a_tenant_without_a_snapshot_url_is_told_so_before_any_request() {
        let store: std::sync::Arc<dyn dearsync_core::StateStore> = std::sync::Arc::new(
            dearsync_core::MemoryStore::new(std::sync::Arc::new(dearsync_core::SystemClock)),
        );
        let dear = dear_client::DearClient::new(dear_client::DearConfig::new(
            "acct",
            dear_client::ApiKey::new("key"),
        ))
        .unwrap();
        let job = InventorySync {
            ctx: dearsync_core::JobContext::new(
                dearsync_core::TenantId::new("acme").unwrap(),
                std::sync::Arc::new(dear),
                store,
                std::sync::Arc::new(dearsync_core::SystemClock),
            ),
            settings: Default::default(),
        };
        let refused = job.pull(OutboundPolicy::default()).await.unwrap_err();
        assert!(matches!(refused, PullError::NoUrl), "{refused}");
    }
}
