//! An in-memory [`StateStore`](crate::StateStore): for unit tests and as the reference the
//! conformance suite checks the real stores against. One mutex makes every operation atomic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::clock::{Clock, to_millis};
use crate::state::*;
use crate::{Job, RunHistory, RunLog, RunReport, StoreError, TenantId};

#[derive(Default)]
struct Inner {
    cursors: HashMap<CursorKey, Cursor>,
    records: HashMap<RecordKey, LedgerRecord>,
    claims: HashMap<IdempotencyKey, IdempotencyRecord>,
    leases: HashMap<LeaseKey, Lease>,
    buckets: HashMap<String, BucketState>,
    tenants: BTreeMap<TenantId, TenantEntry>,
    runs: HashMap<(TenantId, Job), RunHistory>,
}

/// Every state port, in memory.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The key ledger listings sort and page by: `sort_at` in ms, zero-padded, then the entity.
pub fn ledger_sort_key(record: &LedgerRecord) -> String {
    format!(
        "{:015}#{}",
        to_millis(record.sort_at()).max(0),
        record.key.entity
    )
}

/// The sort key an inclusive `changed_since` bound starts at.
pub fn ledger_sort_start(changed_since: DateTime<Utc>) -> String {
    // Every key of that millisecond (`<ms>#<entity>`) sorts after the bare `<ms>`.
    format!("{:015}", to_millis(changed_since).max(0))
}

/// The sort key an inclusive `due_before` bound ends at.
pub fn ledger_sort_bound(due_before: DateTime<Utc>) -> String {
    // '#' < '$': every key at that millisecond sorts before the bound.
    format!("{:015}$", to_millis(due_before).max(0))
}

/// A new idempotency claim token.
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[async_trait]
impl CursorStore for MemoryStore {
    async fn cursor(&self, key: &CursorKey) -> Result<Option<Cursor>, StoreError> {
        Ok(self.lock().cursors.get(key).cloned())
    }

    async fn save_cursor(
        &self,
        key: &CursorKey,
        value: &str,
        expected_version: Option<u64>,
    ) -> Result<Cursor, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let stored = inner.cursors.get(key).map(|c| c.version);
        if stored != expected_version {
            return Err(StoreError::conflict(
                key.to_string(),
                format!("expected version {expected_version:?}, found {stored:?}"),
            ));
        }
        let cursor = Cursor {
            value: value.to_owned(),
            version: expected_version.unwrap_or(0) + 1,
            updated_at: now,
        };
        inner.cursors.insert(key.clone(), cursor.clone());
        Ok(cursor)
    }
}

#[async_trait]
impl Ledger for MemoryStore {
    async fn record(&self, key: &RecordKey) -> Result<Option<LedgerRecord>, StoreError> {
        Ok(self.lock().records.get(key).cloned())
    }

    async fn insert(&self, record: NewRecord) -> Result<LedgerRecord, StoreError> {
        check_detail_size("ledger detail", record.detail.as_deref())?;
        let now = self.clock.now();
        let mut inner = self.lock();
        if inner.records.contains_key(&record.key) {
            return Err(StoreError::conflict(
                record.key.to_string(),
                "it already exists",
            ));
        }
        let record = record.into_record(now);
        inner.records.insert(record.key.clone(), record.clone());
        Ok(record)
    }

    async fn transition(
        &self,
        current: &LedgerRecord,
        change: Transition,
    ) -> Result<LedgerRecord, StoreError> {
        if let DetailChange::Set(text) = &change.detail {
            check_detail_size("ledger detail", Some(text))?;
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        let Some(stored) = inner.records.get(&current.key) else {
            return Err(StoreError::conflict(
                current.key.to_string(),
                "it does not exist",
            ));
        };
        if stored.state != current.state || stored.revision != current.revision {
            return Err(StoreError::conflict(
                current.key.to_string(),
                format!(
                    "expected {} at revision {}, found {} at revision {}",
                    current.state, current.revision, stored.state, stored.revision
                ),
            ));
        }
        let next = stored.apply(&change, now);
        inner.records.insert(next.key.clone(), next.clone());
        Ok(next)
    }

    async fn list(&self, query: &LedgerQuery) -> Result<RecordPage, StoreError> {
        let inner = self.lock();
        let bound = query.due_before.map(ledger_sort_bound);
        let start = query.changed_since.map(ledger_sort_start);
        let mut rows: Vec<(String, &LedgerRecord)> = inner
            .records
            .values()
            .filter(|r| {
                r.key.tenant == query.tenant
                    && r.key.job == query.job
                    && r.state == query.state
                    && r.is_listed()
            })
            .map(|r| (ledger_sort_key(r), r))
            .filter(|(k, _)| {
                query
                    .after
                    .as_ref()
                    .is_none_or(|a| k.as_str() > a.position())
            })
            .filter(|(k, _)| start.as_ref().is_none_or(|s| k >= s))
            .filter(|(k, _)| bound.as_ref().is_none_or(|b| k < b))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let limit = query.limit.clamp(1, 1000);
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(RecordPage {
            next: if more {
                rows.last().map(|(k, _)| PageToken::from_store(k.clone()))
            } else {
                None
            },
            records: rows.into_iter().map(|(_, r)| r.clone()).collect(),
        })
    }

    async fn unlisted_claims(
        &self,
        tenant: &TenantId,
        job: Job,
        after: Option<&PageToken>,
    ) -> Result<RecordPage, StoreError> {
        let inner = self.lock();
        let mut claims: Vec<&LedgerRecord> = inner
            .records
            .values()
            .filter(|r| r.key.tenant == *tenant && r.key.job == job && !r.is_listed())
            .filter(|r| after.is_none_or(|a| r.key.entity.as_str() > a.position()))
            .collect();
        claims.sort_by(|a, b| a.key.entity.cmp(&b.key.entity));
        claims.truncate(UNLISTED_PAGE + 1);
        Ok(RecordPage::of_unlisted(
            claims.into_iter().cloned().collect(),
        ))
    }

    async fn records_of_order(
        &self,
        tenant: &TenantId,
        order_number: &str,
        limit: usize,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .records
            .values()
            .filter(|r| r.key.tenant == *tenant && r.order_number.as_deref() == Some(order_number))
            .take(limit.clamp(1, 1000))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl Idempotency for MemoryStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        match IdempotencyRecord::decide(inner.claims.get(key), payload_hash, now) {
            ClaimDecision::Take => {
                let token = new_token();
                inner.claims.insert(
                    key.clone(),
                    IdempotencyRecord {
                        key: key.clone(),
                        status: IdempotencyStatus::InProgress,
                        payload_hash: payload_hash.to_owned(),
                        token: token.clone(),
                        in_progress_until: now + terms.in_progress_for,
                        expires_at: now + terms.keep_for,
                        result: None,
                    },
                );
                Ok(Claim::Acquired { token })
            }
            ClaimDecision::Answer(claim) => Ok(claim),
            ClaimDecision::Mismatch { stored } => Err(StoreError::PayloadMismatch {
                key: key.to_string(),
                stored,
                given: payload_hash.to_owned(),
            }),
        }
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: &str,
        result: &str,
        keep_for: Duration,
    ) -> Result<(), StoreError> {
        check_detail_size("idempotency result", Some(result))?;
        let now = self.clock.now();
        let mut inner = self.lock();
        match inner.claims.get_mut(key) {
            Some(rec) if rec.token == token && rec.status == IdempotencyStatus::InProgress => {
                rec.status = IdempotencyStatus::Completed;
                rec.result = Some(result.to_owned());
                rec.expires_at = now + keep_for;
                Ok(())
            }
            _ => Err(StoreError::claim_lost(&key)),
        }
    }

    async fn renew_claim(
        &self,
        key: &IdempotencyKey,
        token: &str,
        in_progress_for: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let until = self.clock.now() + in_progress_for;
        let mut inner = self.lock();
        match inner.claims.get_mut(key) {
            Some(rec) if rec.token == token && rec.status == IdempotencyStatus::InProgress => {
                rec.in_progress_until = until;
                Ok(until)
            }
            _ => Err(StoreError::claim_lost(&key)),
        }
    }

    async fn release_claim(&self, key: &IdempotencyKey, token: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .claims
            .get(key)
            .is_some_and(|r| r.token == token && r.status == IdempotencyStatus::InProgress)
        {
            inner.claims.remove(key);
        }
        Ok(())
    }

    async fn idempotency_record(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.lock().claims.get(key).cloned())
    }
}

#[async_trait]
impl Leases for MemoryStore {
    async fn acquire(
        &self,
        key: &LeaseKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let (generation, took_over) = match inner.leases.get(key) {
            Some(l) if l.expires_at > now => {
                return Ok(LeaseOutcome::Held {
                    holder: l.holder.clone(),
                    expires_at: l.expires_at,
                });
            }
            // A released lease has no holder.
            Some(l) => (l.generation + 1, !l.holder.is_empty()),
            None => (1, false),
        };
        let lease = Lease {
            key: key.clone(),
            holder: holder.to_owned(),
            generation,
            expires_at: now + ttl,
            took_over,
        };
        inner.leases.insert(key.clone(), lease.clone());
        Ok(LeaseOutcome::Acquired(lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        match inner.leases.get_mut(&lease.key) {
            Some(l) if l.holder == lease.holder && l.generation == lease.generation => {
                l.expires_at = now + ttl;
                Ok(l.clone())
            }
            _ => Err(StoreError::conflict(
                lease.key.to_string(),
                format!("{} no longer holds it", lease.holder),
            )),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let ours = inner
            .leases
            .get(&lease.key)
            .is_some_and(|l| l.holder == lease.holder && l.generation == lease.generation);
        if ours {
            // Keep the generation so the next holder's token is still higher.
            if let Some(l) = inner.leases.get_mut(&lease.key) {
                l.expires_at = DateTime::<Utc>::MIN_UTC;
                l.holder.clear();
            }
        }
        Ok(ours)
    }

    async fn hand_over_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.leases.get_mut(&lease.key) {
            // Free at once; the holder stays, so the next one is told it took over.
            Some(l) if l.holder == lease.holder && l.generation == lease.generation => {
                l.expires_at = DateTime::<Utc>::MIN_UTC;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl TokenBuckets for MemoryStore {
    async fn take(
        &self,
        account: &str,
        spec: BucketSpec,
        want: u32,
        lane: Lane,
    ) -> Result<Grant, StoreError> {
        let now = to_millis(self.clock.now());
        let mut inner = self.lock();
        let state = inner.buckets.get(account).copied().unwrap_or_default();
        let taken = state.take(spec, want, now, lane);
        if taken.write {
            inner.buckets.insert(account.to_owned(), taken.next);
        }
        Ok(taken.grant)
    }

    async fn give_back(
        &self,
        account: &str,
        spec: BucketSpec,
        tokens: u32,
        lane: Lane,
    ) -> Result<(), StoreError> {
        let now = to_millis(self.clock.now());
        let mut inner = self.lock();
        if let Some(state) = inner.buckets.get(account).copied() {
            let next = state.give_back(spec, tokens, now, lane);
            inner.buckets.insert(account.to_owned(), next);
        }
        Ok(())
    }

    async fn pause(&self, account: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        let now = to_millis(self.clock.now());
        let mut inner = self.lock();
        let state = inner.buckets.get(account).copied().unwrap_or_default();
        inner
            .buckets
            .insert(account.to_owned(), state.pause(to_millis(until), now));
        Ok(())
    }
}

#[async_trait]
impl TenantDirectory for MemoryStore {
    async fn tenants(&self) -> Result<Vec<TenantEntry>, StoreError> {
        Ok(self.lock().tenants.values().cloned().collect())
    }

    async fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, StoreError> {
        Ok(self.lock().tenants.get(tenant).cloned())
    }

    async fn put_tenant(&self, entry: &TenantEntry) -> Result<(), StoreError> {
        self.lock()
            .tenants
            .insert(entry.tenant.clone(), entry.clone());
        Ok(())
    }
}

#[async_trait]
impl RunLog for MemoryStore {
    async fn record_run(
        &self,
        tenant: &TenantId,
        job: Job,
        report: &RunReport,
    ) -> Result<RunHistory, StoreError> {
        let mut inner = self.lock();
        let key = (tenant.clone(), job);
        let next = RunHistory::after(inner.runs.get(&key), report);
        inner.runs.insert(key, next.clone());
        Ok(next)
    }

    async fn run_history(
        &self,
        tenant: &TenantId,
        job: Job,
    ) -> Result<Option<RunHistory>, StoreError> {
        Ok(self.lock().runs.get(&(tenant.clone(), job)).cloned())
    }
}
