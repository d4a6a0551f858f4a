//! What of a snapshot's plan has been posted to DEAR, kept in the ledger part by part, so a run
//! that takes a crashed run's snapshot over resumes it: parts posted before are not posted again,
//! and a part whose post was cut off is looked up in DEAR by its reference first.
//!
//! Planning again alone would not be enough: a COMPLETED adjustment moves DEAR's stock, so its
//! lines drop out of a new plan, but a DRAFT one (review lines, or `adjustment_status = "draft"`)
//! does not, and would be posted twice.

use dearsync_core::state::{LedgerRecord, NewRecord, RecordKey, RecordState, Transition};
use dearsync_core::{Job, StateStore, StoreError, TenantId};
use serde::{Deserialize, Serialize};

/// One part of a plan: its reference and a hash of the body posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartId {
    /// The adjustment's reference in DEAR.
    pub reference: String,
    /// SHA-256 of the body, so a part re-planned with other lines is a new part.
    pub body_hash: String,
}

/// A part DEAR holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PostedPart {
    #[serde(flatten)]
    part: PartId,
    /// DEAR's TaskID.
    task: String,
}

/// The record's detail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    #[serde(default)]
    posted: Vec<PostedPart>,
    /// A part being posted: if the run died here, DEAR may hold it or not.
    #[serde(default)]
    posting: Option<PartId>,
}

/// The ledger record of one snapshot's application at one location.
pub struct ProgressLog<'a> {
    store: &'a dyn StateStore,
    record: LedgerRecord,
    progress: Progress,
}

/// The ledger key of `snapshot_id`'s application at `location`.
pub fn progress_key(tenant: &TenantId, snapshot_id: &str, location: &str) -> RecordKey {
    RecordKey::new(
        tenant,
        Job::InventorySync,
        format!("snapshot:{snapshot_id}@{}", location.to_ascii_lowercase()),
    )
}

impl<'a> ProgressLog<'a> {
    /// Opens the record for a snapshot whose lines hash to `lines_hash`, creating it in flight.
    /// A record left by a run of other lines (an id reused after the idempotency record lapsed)
    /// starts over.
    pub async fn open(
        store: &'a dyn StateStore,
        key: RecordKey,
        lines_hash: &str,
    ) -> Result<ProgressLog<'a>, StoreError> {
        let fresh = Progress::default();
        let record = match store.record(&key).await? {
            Some(rec) => {
                let kept = rec
                    .detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Progress>(d).ok())
                    .filter(|_| rec.input_hash == lines_hash && rec.state == RecordState::InFlight);
                let progress = kept.unwrap_or(fresh);
                let change = Transition::to(RecordState::InFlight)
                    .input_hash(lines_hash)
                    .detail(json(&progress));
                let record = store.transition(&rec, change).await?;
                return Ok(ProgressLog {
                    store,
                    record,
                    progress,
                });
            }
            None => {
                let mut new = NewRecord::new(key, RecordState::InFlight, lines_hash);
                new.detail = Some(json(&fresh));
                store.insert(new).await?
            }
        };
        Ok(ProgressLog {
            store,
            record,
            progress: fresh,
        })
    }

    /// DEAR's TaskID of `part`, if an earlier run posted it.
    pub fn posted_task(&self, part: &PartId) -> Option<&str> {
        self.progress
            .posted
            .iter()
            .find(|p| p.part == *part)
            .map(|p| p.task.as_str())
    }

    /// True if a run was cut off while posting `part` (DEAR may hold it).
    pub fn was_posting(&self, part: &PartId) -> bool {
        self.progress.posting.as_ref() == Some(part)
    }

    /// Records that `part` is about to be posted.
    pub async fn posting(&mut self, part: &PartId) -> Result<(), StoreError> {
        self.progress.posting = Some(part.clone());
        self.save(RecordState::InFlight).await
    }

    /// Records that DEAR holds `part` as `task`.
    pub async fn posted(&mut self, part: &PartId, task: &str) -> Result<(), StoreError> {
        self.progress.posting = None;
        self.progress.posted.push(PostedPart {
            part: part.clone(),
            task: task.to_owned(),
        });
        self.save(RecordState::InFlight).await
    }

    /// Every part is posted.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        self.progress.posting = None;
        self.save(RecordState::Done).await
    }

    async fn save(&mut self, state: RecordState) -> Result<(), StoreError> {
        let change = Transition::to(state).detail(json(&self.progress));
        self.record = self.store.transition(&self.record, change).await?;
        Ok(())
    }
}

fn json(progress: &Progress) -> String {
    serde_json::to_string(progress).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use dearsync_core::state::Ledger;
    use dearsync_core::{ManualClock, MemoryStore};

    fn part(reference: &str, hash: &str) -> PartId {
        PartId {
            reference: reference.into(),
            body_hash: hash.into(),
        }
    }

    #[tokio::test]
    async fn a_resumed_run_sees_what_was_posted_and_what_was_cut_off() {
        let clock = Arc::new(ManualClock::fixed());
        let store = MemoryStore::new(clock.clone());
        let key = progress_key(&TenantId::new("acme").unwrap(), "S-1", "Main");
        let mut first = ProgressLog::open(&store, key.clone(), "h").await.unwrap();
        first.posting(&part("S-1 (1/2)", "a")).await.unwrap();
        first.posted(&part("S-1 (1/2)", "a"), "T-1").await.unwrap();
        first.posting(&part("S-1 (2/2)", "b")).await.unwrap();
        // The run dies here. The next one resumes.
        let next = ProgressLog::open(&store, key.clone(), "h").await.unwrap();
        assert_eq!(next.posted_task(&part("S-1 (1/2)", "a")), Some("T-1"));
        assert_eq!(next.posted_task(&part("S-1 (1/2)", "other lines")), None);
        assert!(next.was_posting(&part("S-1 (2/2)", "b")));
        next.finish().await.unwrap();
        let rec = store.record(&key).await.unwrap().unwrap();
        assert_eq!(rec.state, RecordState::Done);
        // Other lines under the same id (after the claim lapsed) start over.
        let again = ProgressLog::open(&store, key, "h2").await.unwrap();
        assert_eq!(again.posted_task(&part("S-1 (1/2)", "a")), None);
    }
}
