//! Large snapshots in parts: each chunk is kept in the ledger as it arrives (in any order, any
//! number of times), and once every part is there they are assembled into one snapshot.
//!
//! A chunk is `{"snapshot_id", "as_of", "location"?, "part", "parts", "lines"}`; parts are numbered
//! `1..=parts`. Parts stay pending until their snapshot is synced (a held or busy snapshot keeps
//! them, so a resent part assembles it again), then are marked done.

use dearsync_core::state::{LedgerRecord, NewRecord, RecordKey, RecordState, Transition};
use dearsync_core::{Job, StateStore, StoreError, TenantId};
use serde_json::{Value, json};

use crate::snapshot::{Snapshot, SnapshotError, SnapshotLine, parse_instant};

/// Largest number of lines one chunk may carry (its lines are kept in one ledger record).
pub const MAX_CHUNK_LINES: usize = 1000;
/// Most parts a snapshot may come in.
pub const MAX_PARTS: u64 = 10_000;

/// Why a chunk was refused or its snapshot could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// A field is missing or of the wrong kind; the text names it.
    #[error("{0}")]
    Malformed(String),
    /// The part numbers are out of range.
    #[error("chunk.part {part} of {parts}: parts are numbered 1..=parts (at most {MAX_PARTS})")]
    BadPart {
        /// The part.
        part: u64,
        /// Of how many.
        parts: u64,
    },
    /// The lines are not valid snapshot lines.
    #[error("invalid chunk {part}/{parts}: {source}")]
    Lines {
        /// The part.
        part: u64,
        /// Of how many.
        parts: u64,
        /// What is wrong.
        #[source]
        source: SnapshotError,
    },
    /// Too many lines, or too large to keep in one record.
    #[error("chunk {part}/{parts} is too large: {detail}")]
    TooLarge {
        /// The part.
        part: u64,
        /// Of how many.
        parts: u64,
        /// By how much.
        detail: String,
    },
    /// The parts together are not a valid snapshot (a SKU in two parts, say).
    #[error("the assembled snapshot {snapshot_id}: {source}")]
    Assembled {
        /// Which.
        snapshot_id: String,
        /// What is wrong.
        #[source]
        source: SnapshotError,
    },
    /// The state store failed (or a kept part is unreadable).
    #[error("keeping the snapshot's chunks: {0}")]
    Store(#[from] StoreError),
}

impl ChunkError {
    /// True when the same chunk may be kept later (the store was unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChunkError::Store(e) if e.is_transient())
    }
}

/// One part of a snapshot, checked.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// The snapshot it belongs to.
    pub snapshot_id: String,
    /// The snapshot's time, as sent.
    pub as_of: String,
    /// The snapshot's location, if it names one.
    pub location: Option<String>,
    /// Which part, from 1.
    pub part: u64,
    /// Of how many.
    pub parts: u64,
    /// Its lines, as sent (kept verbatim; checked as snapshot lines).
    lines: Value,
}

impl Chunk {
    /// Reads and checks a chunk: each field's kind, the part numbers, the lines as a snapshot's,
    /// at most [`MAX_CHUNK_LINES`].
    pub fn from_json(chunk: &Value) -> Result<Chunk, ChunkError> {
        let field = |name: &str| {
            chunk
                .get(name)
                .ok_or_else(|| ChunkError::Malformed(format!("chunk.{name} is missing")))
        };
        let text = |name: &str| {
            field(name)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ChunkError::Malformed(format!("chunk.{name} must be a string")))
        };
        let whole = |name: &str| {
            field(name)?.as_u64().ok_or_else(|| {
                ChunkError::Malformed(format!("chunk.{name} must be a whole number"))
            })
        };
        let snapshot_id = text("snapshot_id")?;
        let as_of = text("as_of")?;
        parse_instant(&as_of).map_err(|e| ChunkError::Malformed(format!("chunk.as_of: {e}")))?;
        let location = chunk
            .get("location")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (part, parts) = (whole("part")?, whole("parts")?);
        if parts == 0 || part == 0 || part > parts || parts > MAX_PARTS {
            return Err(ChunkError::BadPart { part, parts });
        }
        let chunk = Chunk {
            snapshot_id,
            as_of,
            location,
            part,
            parts,
            lines: field("lines")?.clone(),
        };
        let checked = chunk
            .as_snapshot(&chunk.lines)
            .map_err(|source| ChunkError::Lines {
                part,
                parts,
                source,
            })?;
        if checked.lines.len() > MAX_CHUNK_LINES {
            return Err(ChunkError::TooLarge {
                part,
                parts,
                detail: format!(
                    "{} lines; at most {MAX_CHUNK_LINES} per chunk",
                    checked.lines.len()
                ),
            });
        }
        Ok(chunk)
    }

    /// `lines` as a snapshot of this chunk's id, time and location.
    fn as_snapshot(&self, lines: &Value) -> Result<Snapshot, SnapshotError> {
        let value = json!({
            "snapshot_id": self.snapshot_id, "as_of": self.as_of, "location": self.location,
            "lines": lines,
        });
        Snapshot::from_json_reader(value.to_string().as_bytes())
    }

    /// What is kept for it in the ledger.
    fn kept_text(&self) -> String {
        json!({ "as_of": self.as_of, "location": self.location, "parts": self.parts, "lines": self.lines })
            .to_string()
    }
}

/// Where a snapshot's parts stand after one arrived.
#[derive(Debug)]
pub enum ChunkProgress {
    /// Parts `1..=received` are there, part `received + 1` is not yet.
    Waiting {
        /// Parts there, counted from 1 up to the first missing one.
        received: u64,
        /// Of how many.
        parts: u64,
    },
    /// Every part is there: the whole snapshot, and its parts' records to mark done once synced.
    Complete {
        /// The assembled snapshot, checked.
        snapshot: Snapshot,
        /// The parts' ledger records.
        parts: Vec<LedgerRecord>,
    },
}

/// A tenant's kept chunks.
pub struct ChunkLedger<'a> {
    /// Where they are kept.
    pub store: &'a dyn StateStore,
    /// Whose.
    pub tenant: &'a TenantId,
}

impl ChunkLedger<'_> {
    fn key(&self, snapshot_id: &str, part: u64) -> RecordKey {
        RecordKey::new(
            self.tenant,
            Job::InventorySync,
            format!("chunk:{snapshot_id}:{part}"),
        )
    }

    /// Keeps `chunk` (a redelivered one is a no-op) and, when every part is there, assembles the
    /// snapshot.
    pub async fn keep(&self, chunk: &Chunk) -> Result<ChunkProgress, ChunkError> {
        let text = chunk.kept_text();
        let mut record = NewRecord::new(
            self.key(&chunk.snapshot_id, chunk.part),
            RecordState::Pending,
            dearsync_core::sha256_hex(text.as_bytes()),
        );
        record.detail = Some(text);
        // A conflict is a redelivered chunk: kept already.
        match StoreError::unless_raced(self.store.insert(record).await) {
            Ok(_) => {}
            Err(StoreError::Invalid(m)) => {
                return Err(ChunkError::TooLarge {
                    part: chunk.part,
                    parts: chunk.parts,
                    detail: format!("the state store will not keep it: {m}"),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let mut all = Vec::new();
        for p in 1..=chunk.parts {
            match self.store.record(&self.key(&chunk.snapshot_id, p)).await? {
                Some(r) => all.push(r),
                None => {
                    return Ok(ChunkProgress::Waiting {
                        received: p - 1,
                        parts: chunk.parts,
                    });
                }
            }
        }
        let snapshot = self.assemble(chunk, &all)?;
        Ok(ChunkProgress::Complete {
            snapshot,
            parts: all,
        })
    }

    /// The parts' lines in part order, as one snapshot with the arriving chunk's id, time and
    /// location.
    fn assemble(&self, chunk: &Chunk, all: &[LedgerRecord]) -> Result<Snapshot, ChunkError> {
        let mut lines: Vec<SnapshotLine> = Vec::new();
        for r in all {
            let unreadable = |detail: String| StoreError::Corrupt {
                key: r.key.to_string(),
                detail,
            };
            let kept: Value = serde_json::from_str(r.detail.as_deref().unwrap_or("{}"))
                .map_err(|e| unreadable(e.to_string()))?;
            let part = chunk
                .as_snapshot(&kept["lines"])
                .map_err(|e| unreadable(e.to_string()))?;
            lines.extend(part.lines);
        }
        let snapshot = Snapshot {
            snapshot_id: chunk.snapshot_id.clone(),
            as_of: parse_instant(&chunk.as_of)
                .map_err(|e| ChunkError::Malformed(format!("chunk.as_of: {e}")))?,
            location: chunk.location.clone(),
            lines,
        };
        snapshot.check().map_err(|source| ChunkError::Assembled {
            snapshot_id: chunk.snapshot_id.clone(),
            source,
        })?;
        Ok(snapshot)
    }

    /// Marks a synced snapshot's parts done (a late duplicate of a part is then a no-op). Failing
    /// here is harmless: a pending part only means a resend assembles it again, and the
    /// snapshot's own idempotency record answers it.
    pub async fn done(&self, parts: Vec<LedgerRecord>) {
        for r in parts
            .into_iter()
            .filter(|r| r.state == RecordState::Pending)
        {
            if let Err(e) = self
                .store
                .transition(&r, Transition::to(RecordState::Done))
                .await
            {
                tracing::warn!(record = %r.key, error = %e, "a synced snapshot's part stays pending");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(part: u64, parts: u64, lines: Value) -> Value {
        json!({ "snapshot_id": "BIG-1", "as_of": "2026-11-20T06:00:00Z", "part": part, "parts": parts, "lines": lines })
    }

    #[test]
    fn a_chunk_is_checked_field_by_field() {
        let line = json!([{ "sku": "A", "quantity": "1" }]);
        assert!(Chunk::from_json(&chunk(1, 2, line.clone())).is_ok());
        for (value, needle) in [
            (chunk(0, 2, line.clone()), "numbered 1..=parts"),
            (chunk(3, 2, line.clone()), "numbered 1..=parts"),
            (chunk(1, MAX_PARTS + 1, line.clone()), "numbered 1..=parts"),
            (
                json!({ "snapshot_id": 7 }),
                "chunk.snapshot_id must be a string",
            ),
            (json!({ "snapshot_id": "S" }), "chunk.as_of is missing"),
            (chunk(1, 1, json!([{ "sku": "A" }])), "invalid chunk 1/1"),
        ] {
            let err = Chunk::from_json(&value).unwrap_err().to_string();
            assert!(err.contains(needle), "{value}: {err}");
        }
        let many: Vec<Value> = (0..=MAX_CHUNK_LINES)
            .map(|i| json!({ "sku": format!("S{i}"), "quantity": "1" }))
            .collect();
        let err = Chunk::from_json(&chunk(1, 1, json!(many))).unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge { .. }), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn parts_in_any_order_and_repeated_assemble_once_every_part_is_kept() {
        let clock = std::sync::Arc::new(dearsync_core::ManualClock::fixed());
        let store = dearsync_core::MemoryStore::new(clock);
        let tenant = TenantId::new("acme").unwrap();
        let ledger = ChunkLedger {
            store: &store,
            tenant: &tenant,
        };
        let part = |n: u64, sku: &str| {
            Chunk::from_json(&chunk(n, 3, json!([{ "sku": sku, "quantity": "2" }]))).unwrap()
        };
        let waiting = |p: ChunkProgress| match p {
            ChunkProgress::Waiting { received, .. } => received,
            ChunkProgress::Complete { .. } => panic!("complete too early"),
        };
        assert_eq!(waiting(ledger.keep(&part(3, "C")).await.unwrap()), 0);
        assert_eq!(waiting(ledger.keep(&part(1, "A")).await.unwrap()), 1);
        assert_eq!(
            waiting(ledger.keep(&part(1, "A")).await.unwrap()),
            1,
            "a repeat"
        );
        let ChunkProgress::Complete { snapshot, parts } = ledger.keep(&part(2, "B")).await.unwrap()
        else {
            panic!("every part is there");
        };
        let skus: Vec<&str> = snapshot.lines.iter().map(|l| l.sku.as_str()).collect();
        assert_eq!(skus, ["A", "B", "C"], "in part order");
        ledger.done(parts).await;
        // A SKU in two parts is refused when assembled.
        let dup = |n: u64| {
            Chunk::from_json(&json!({ "snapshot_id": "DUP", "as_of": "2026-11-20T06:00:00Z", "part": n, "parts": 2, "lines": [{ "sku": "A", "quantity": "1" }] })).unwrap()
        };
        ledger.keep(&dup(1)).await.unwrap();
        let err = ledger.keep(&dup(2)).await.unwrap_err();
        assert!(matches!(err, ChunkError::Assembled { .. }), "{err}");
    }
}
