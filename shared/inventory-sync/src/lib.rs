//! dear-sync's Inventory Sync: a warehouse's stock snapshot → DEAR stock adjustments at one
//! location, posting only what differs, as absolute quantities, exactly once.

pub mod chunks;
mod progress;
pub mod receive;
pub mod snapshot;
pub mod sync;

pub use chunks::{Chunk, ChunkError, ChunkLedger, ChunkProgress, MAX_CHUNK_LINES};
pub use receive::{ChunkReceived, ChunkSyncError, MAX_SNAPSHOT_BYTES, PullError};
pub use snapshot::{CsvOptions, Snapshot, SnapshotError, SnapshotLine, parse_instant};
pub use sync::{Action, InventorySync, PlanLine, SyncError, SyncOptions, SyncOutcome, SyncSummary};
