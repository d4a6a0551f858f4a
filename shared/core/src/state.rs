//! The state ports: what the jobs need to remember, as small traits with no storage type in them.
//!
//! Every write that changes an existing item is conditional on what the caller read (a version, a
//! revision, a state, a holder), so that two workers racing on one item cannot both win. The pure
//! rules (what a transition produces, who may take a claim, how a bucket refills) live here too, so
//! every adapter applies the same ones and only differs in how it writes atomically.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{Job, RunLog, StoreError, TenantId};
pub use dear_client::Lane;

/// Largest `detail` / `result` text a store accepts (DynamoDB items are limited to 400 KB).
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;

/// The most records a page of [`Ledger::unlisted_claims`] holds (where the store can tell).
pub const UNLISTED_PAGE: usize = 100;

/// Checks a stored text against [`MAX_DETAIL_BYTES`].
pub fn check_detail_size(what: &str, text: Option<&str>) -> Result<(), StoreError> {
    match text {
        Some(t) if t.len() > MAX_DETAIL_BYTES => Err(StoreError::Invalid(format!(
            "{what} is {} bytes; at most {MAX_DETAIL_BYTES} can be stored",
            t.len()
        ))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Cursors

/// Names one cursor: a job can keep several (e.g. one per DEAR location).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CursorKey {
    /// Whose.
    pub tenant: TenantId,
    /// Which job.
    pub job: Job,
    /// Which cursor of the job (`"sales"`, a location name…).
    pub name: String,
}

impl CursorKey {
    /// A cursor key.
    pub fn new(tenant: &TenantId, job: Job, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.clone(),
            job,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cursor {}/{}/{}", self.tenant, self.job, self.name)
    }
}

/// A stored cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The position, as the job writes it (e.g. the greatest `Updated` fully processed).
    pub value: String,
    /// Starts at 1, +1 on every save; the condition of the next save.
    pub version: u64,
    /// When it was last saved.
    pub updated_at: DateTime<Utc>,
}

/// Sync cursors, saved with optimistic concurrency.
#[async_trait]
pub trait CursorStore: Send + Sync {
    /// Reads a cursor; `None` if never saved.
    async fn cursor(&self, key: &CursorKey) -> Result<Option<Cursor>, StoreError>;

    /// Saves `value` if the stored version is still `expected_version` (`None`: nothing stored yet).
    /// Returns the saved cursor; a [`StoreError::Conflict`] if someone saved in between.
    async fn save_cursor(
        &self,
        key: &CursorKey,
        value: &str,
        expected_version: Option<u64>,
    ) -> Result<Cursor, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Ledger

/// Names one ledger record: an entity a job works on (a DEAR sale, a WMS shipment, a snapshot line).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// Whose.
    pub tenant: TenantId,
    /// Which job.
    pub job: Job,
    /// The entity's id within the job (e.g. a SaleID).
    pub entity: String,
}

impl RecordKey {
    /// A record key.
    pub fn new(tenant: &TenantId, job: Job, entity: impl Into<String>) -> Self {
        Self {
            tenant: tenant.clone(),
            job,
            entity: entity.into(),
        }
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ledger record {}/{}/{}",
            self.tenant, self.job, self.entity
        )
    }
}

/// Where an entity stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Known, not yet worked on.
    Pending,
    /// A worker is on it (until `due_at`, after which another may take over).
    InFlight,
    /// Finished.
    Done,
    /// Failed; retried from `due_at` on.
    Failed,
    /// Deliberately not processed, for `reason`; retried only when its input changes.
    Skipped,
}

impl RecordState {
    /// Every state.
    pub const ALL: [RecordState; 5] = [
        RecordState::Pending,
        RecordState::InFlight,
        RecordState::Done,
        RecordState::Failed,
        RecordState::Skipped,
    ];

    /// The state's name in keys.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Pending => "pending",
            RecordState::InFlight => "in_flight",
            RecordState::Done => "done",
            RecordState::Failed => "failed",
            RecordState::Skipped => "skipped",
        }
    }

    /// Reads [`RecordState::as_str`]'s text.
    pub fn parse(text: &str) -> Option<RecordState> {
        RecordState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for RecordState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored ledger record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRecord {
    /// Which.
    pub key: RecordKey,
    /// Where it stands.
    pub state: RecordState,
    /// Why it is skipped or failed (or any note for the operator).
    pub reason: Option<String>,
    /// How many attempts were counted.
    pub attempts: u32,
    /// A hash of the input it was (or is being) processed for: a new hash means new work.
    pub input_hash: String,
    /// Starts at 1, +1 on every transition; part of every transition's condition.
    pub revision: u64,
    /// When it was first written.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it is next due: a retry time for `failed`, a deadline for `in_flight`.
    pub due_at: Option<DateTime<Utc>>,
    /// Job-specific data (JSON text): a result, a version, the DEAR ids written…
    pub detail: Option<String>,
    /// DEAR's order number (`SO-00123`) of the sale the record is about, once known: indexed, so
    /// every job's records of one order are one query ([`Ledger::records_of_order`]).
    pub order_number: Option<String>,
    /// An `in_flight` claim that [`Ledger::list`] leaves out: its claimant finds it again after a
    /// crash without a listing (Order Download's cursor never passes a sale it left in flight),
    /// so the store skips the state index's entry and its removal — two of a delivery's writes.
    /// Always false in any other state.
    pub unlisted: bool,
}

impl LedgerRecord {
    /// The instant the record sorts by in state listings: `due_at`, else `updated_at`.
    pub fn sort_at(&self) -> DateTime<Utc> {
        self.due_at.unwrap_or(self.updated_at)
    }

    /// Whether [`Ledger::list`] lists it (in its state): every record but an unlisted claim.
    pub fn is_listed(&self) -> bool {
        !self.unlisted
    }

    /// The record after `change` at `now` (what every adapter writes).
    pub fn apply(&self, change: &Transition, now: DateTime<Utc>) -> LedgerRecord {
        LedgerRecord {
            key: self.key.clone(),
            state: change.to,
            reason: change.reason.clone(),
            attempts: self.attempts + u32::from(change.count_attempt),
            input_hash: change
                .input_hash
                .clone()
                .unwrap_or_else(|| self.input_hash.clone()),
            revision: self.revision + 1,
            created_at: self.created_at,
            updated_at: now,
            due_at: change.due_at,
            detail: match &change.detail {
                DetailChange::Keep => self.detail.clone(),
                DetailChange::Set(text) => Some(text.clone()),
                DetailChange::Clear => None,
            },
            order_number: change
                .order_number
                .clone()
                .or_else(|| self.order_number.clone()),
            unlisted: change.unlisted && change.to == RecordState::InFlight,
        }
    }
}

/// A record to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// Which.
    pub key: RecordKey,
    /// Its first state.
    pub state: RecordState,
    /// Hash of its input.
    pub input_hash: String,
    /// Why, for `skipped` / `failed`.
    pub reason: Option<String>,
    /// Counted attempts so far (1 when inserted straight into `in_flight`, usually 0).
    pub attempts: u32,
    /// See [`LedgerRecord::due_at`].
    pub due_at: Option<DateTime<Utc>>,
    /// See [`LedgerRecord::detail`].
    pub detail: Option<String>,
    /// See [`LedgerRecord::order_number`].
    pub order_number: Option<String>,
    /// See [`LedgerRecord::unlisted`] (ignored unless `state` is `in_flight`).
    pub unlisted: bool,
}

impl NewRecord {
    /// A new record in `state` for input `input_hash`.
    pub fn new(key: RecordKey, state: RecordState, input_hash: impl Into<String>) -> Self {
        Self {
            key,
            state,
            input_hash: input_hash.into(),
            reason: None,
            attempts: 0,
            due_at: None,
            detail: None,
            order_number: None,
            unlisted: false,
        }
    }

    /// The stored record at `now`.
    pub fn into_record(self, now: DateTime<Utc>) -> LedgerRecord {
        LedgerRecord {
            key: self.key,
            state: self.state,
            reason: self.reason,
            attempts: self.attempts,
            input_hash: self.input_hash,
            revision: 1,
            created_at: now,
            updated_at: now,
            due_at: self.due_at,
            detail: self.detail,
            order_number: self
                .order_number
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty()),
            unlisted: self.unlisted && self.state == RecordState::InFlight,
        }
    }
}

/// What to do with a record's `detail` in a transition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DetailChange {
    /// Leave it.
    #[default]
    Keep,
    /// Replace it.
    Set(String),
    /// Remove it.
    Clear,
}

/// A change of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub to: RecordState,
    /// The new reason (replaces the old one; `None` clears it).
    pub reason: Option<String>,
    /// A new input hash (`None`: unchanged).
    pub input_hash: Option<String>,
    /// Count this as an attempt.
    pub count_attempt: bool,
    /// The new due time (`None` clears it).
    pub due_at: Option<DateTime<Utc>>,
    /// The new detail.
    pub detail: DetailChange,
    /// The order number, when the transition learns it (`None`: unchanged; it is never cleared).
    pub order_number: Option<String>,
    /// The new record is an unlisted claim ([`LedgerRecord::unlisted`]; ignored unless `to` is
    /// `in_flight`). Every other transition makes the record listed again.
    pub unlisted: bool,
}

impl Transition {
    /// A plain move to `to`: no reason, no due time, input and detail kept, no attempt counted.
    pub fn to(to: RecordState) -> Self {
        Self {
            to,
            reason: None,
            input_hash: None,
            count_attempt: false,
            due_at: None,
            detail: DetailChange::Keep,
            order_number: None,
            unlisted: false,
        }
    }

    /// Makes the new record an unlisted claim (see [`LedgerRecord::unlisted`]).
    pub fn unlisted(mut self) -> Self {
        self.unlisted = true;
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets a new input hash.
    pub fn input_hash(mut self, hash: impl Into<String>) -> Self {
        self.input_hash = Some(hash.into());
        self
    }

    /// Counts an attempt.
    pub fn attempt(mut self) -> Self {
        self.count_attempt = true;
        self
    }

    /// Sets the due time.
    pub fn due_at(mut self, at: DateTime<Utc>) -> Self {
        self.due_at = Some(at);
        self
    }

    /// Replaces the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = DetailChange::Set(detail.into());
        self
    }

    /// Records the order number the record is about (an empty one is ignored).
    pub fn order_number(mut self, number: Option<&str>) -> Self {
        self.order_number = number
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        self
    }
}

/// Where a listing resumes. Only a store makes one (from the last record of a page), and a caller
/// only hands it back unchanged in [`LedgerQuery::after`]: what it holds is the store's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageToken(String);

impl PageToken {
    /// For store adapters: a token holding the store's own resume position.
    pub fn from_store(position: impl Into<String>) -> Self {
        PageToken(position.into())
    }

    /// For store adapters: the position the token was made from.
    pub fn position(&self) -> &str {
        &self.0
    }
}

/// Which records to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Whose.
    pub tenant: TenantId,
    /// Which job.
    pub job: Job,
    /// In which state.
    pub state: RecordState,
    /// Only those whose [`LedgerRecord::sort_at`] is at or after this. For records without a due
    /// time (done, skipped, pending) that is their last change: "changed since".
    pub changed_since: Option<DateTime<Utc>>,
    /// Only those whose [`LedgerRecord::sort_at`] is at or before this (e.g. "due now").
    pub due_before: Option<DateTime<Utc>>,
    /// At most this many (1–1000).
    pub limit: usize,
    /// The `next` of the previous page.
    pub after: Option<PageToken>,
}

impl LedgerQuery {
    /// The first page (up to 100) of `tenant`'s `job` records in `state`.
    pub fn new(tenant: &TenantId, job: Job, state: RecordState) -> Self {
        Self {
            tenant: tenant.clone(),
            job,
            state,
            changed_since: None,
            due_before: None,
            limit: 100,
            after: None,
        }
    }
}

/// A page of records, oldest `sort_at` first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordPage {
    /// The records.
    pub records: Vec<LedgerRecord>,
    /// Where the next page starts; `None` when this is the last.
    pub next: Option<PageToken>,
}

impl RecordPage {
    /// For store adapters: a page of [`Ledger::unlisted_claims`] from `records` in entity
    /// order, read one past [`UNLISTED_PAGE`] to tell whether more follow.
    pub fn of_unlisted(mut records: Vec<LedgerRecord>) -> RecordPage {
        let more = records.len() > UNLISTED_PAGE;
        records.truncate(UNLISTED_PAGE);
        let last = records.last().map(|r| r.key.entity.clone());
        RecordPage {
            next: last.filter(|_| more).map(PageToken::from_store),
            records,
        }
    }
}

/// Records of what happened to every entity, with conditional transitions.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Reads one record.
    async fn record(&self, key: &RecordKey) -> Result<Option<LedgerRecord>, StoreError>;

    /// Inserts a record; [`StoreError::Conflict`] if one exists.
    async fn insert(&self, record: NewRecord) -> Result<LedgerRecord, StoreError>;

    /// Applies `change` if the stored record is still in `current.state` at `current.revision`;
    /// else [`StoreError::Conflict`]. Returns the new record.
    async fn transition(
        &self,
        current: &LedgerRecord,
        change: Transition,
    ) -> Result<LedgerRecord, StoreError>;

    /// Lists records in one state, oldest first, a page at a time, but for unlisted claims
    /// ([`LedgerRecord::unlisted`]). Listings may lag a write by a moment (an index); read a
    /// record before acting on it.
    async fn list(&self, query: &LedgerQuery) -> Result<RecordPage, StoreError>;

    /// The unlisted claims ([`LedgerRecord::unlisted`]) of `tenant`'s `job`, in key order, a
    /// page at a time (a page may be empty while `next` says more follow). There is no index of
    /// them: they are read from the records themselves (on DynamoDB, the job's whole partition),
    /// so this is for a run that took over from one that died, not for every run.
    async fn unlisted_claims(
        &self,
        tenant: &TenantId,
        job: Job,
        after: Option<&PageToken>,
    ) -> Result<RecordPage, StoreError>;

    /// Every job's records of one order (by [`LedgerRecord::order_number`], exact), at most
    /// `limit` (1–1000), in no set order: one indexed query. Like [`Ledger::list`], it may lag a
    /// write by a moment.
    async fn records_of_order(
        &self,
        tenant: &TenantId,
        order_number: &str,
        limit: usize,
    ) -> Result<Vec<LedgerRecord>, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Idempotency

/// Names one idempotent operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// Whose.
    pub tenant: TenantId,
    /// What kind of operation (e.g. `"shipment"`).
    pub scope: String,
    /// The caller's key (e.g. the warehouse's shipment id).
    pub key: String,
}

impl IdempotencyKey {
    /// An idempotency key.
    pub fn new(tenant: &TenantId, scope: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            tenant: tenant.clone(),
            scope: scope.into(),
            key: key.into(),
        }
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.scope, self.key)
    }
}

/// Where an idempotent operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdempotencyStatus {
    /// Claimed by a worker until `in_progress_until`.
    InProgress,
    /// Done, with a stored result.
    Completed,
}

/// A stored idempotency record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Which.
    pub key: IdempotencyKey,
    /// Where it stands.
    pub status: IdempotencyStatus,
    /// Hash of the payload it was claimed for.
    pub payload_hash: String,
    /// The claim's token: only its holder may complete or release it.
    pub token: String,
    /// An in-progress claim may be taken over after this.
    pub in_progress_until: DateTime<Utc>,
    /// The whole record lapses after this (a repeat after it runs again).
    pub expires_at: DateTime<Utc>,
    /// The stored result (JSON text), once completed.
    pub result: Option<String>,
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the key: do the work, then complete (or release) with this token.
    Acquired {
        /// The claim's token.
        token: String,
    },
    /// Done before: here is the stored result.
    Completed {
        /// The stored result.
        result: String,
    },
    /// Someone else is on it until `until`.
    InProgress {
        /// When their claim lapses.
        until: DateTime<Utc>,
    },
}

/// How long claims and records last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimTerms {
    /// An in-progress claim lapses after this (set it to the worker's remaining time).
    pub in_progress_for: Duration,
    /// A record (completed or not) lapses after this.
    pub keep_for: Duration,
}

/// What a claim meets in the store, decided the same way by every adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Nothing live there: write a new claim.
    Take,
    /// Answer with this (completed or in progress).
    Answer(Claim),
    /// A live record for another payload.
    Mismatch {
        /// Its hash.
        stored: String,
    },
}

impl IdempotencyRecord {
    /// True if this record no longer blocks a new claim at `now` (Powertools' rule: the record has
    /// expired, or it is an in-progress claim whose worker ran out of time).
    pub fn is_lapsed(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
            || (self.status == IdempotencyStatus::InProgress && self.in_progress_until <= now)
    }

    /// What a claim for `payload_hash` at `now` gets when it meets this record.
    pub fn decide(
        existing: Option<&IdempotencyRecord>,
        payload_hash: &str,
        now: DateTime<Utc>,
    ) -> ClaimDecision {
        match existing {
            None => ClaimDecision::Take,
            Some(rec) if rec.is_lapsed(now) => ClaimDecision::Take,
            Some(rec) if rec.payload_hash != payload_hash => ClaimDecision::Mismatch {
                stored: rec.payload_hash.clone(),
            },
            Some(rec) => match (rec.status, &rec.result) {
                (IdempotencyStatus::Completed, Some(result)) => {
                    ClaimDecision::Answer(Claim::Completed {
                        result: result.clone(),
                    })
                }
                _ => ClaimDecision::Answer(Claim::InProgress {
                    until: rec.in_progress_until,
                }),
            },
        }
    }
}

/// Run-once guards with the semantics of AWS Lambda Powertools' idempotency utility.
#[async_trait]
pub trait Idempotency: Send + Sync {
    /// Claims `key` for a payload hashing to `payload_hash`: [`Claim::Acquired`] if nothing live is
    /// stored, the stored result if it completed, [`Claim::InProgress`] if another worker holds it,
    /// [`StoreError::PayloadMismatch`] if a live record was made for another payload.
    async fn claim(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError>;

    /// Stores the result of the work claimed with `token`; [`StoreError::Conflict`] if the claim
    /// was lost (it lapsed and was taken over).
    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: &str,
        result: &str,
        keep_for: Duration,
    ) -> Result<(), StoreError>;

    /// Keeps the claim held with `token` alive: it lapses `in_progress_for` from now instead.
    /// Returns the new lapse time; [`StoreError::Conflict`] if the claim was lost (taken over or
    /// completed), in which case the holder must stop working. A claim past its time that nobody
    /// took over is still the holder's, so it renews.
    async fn renew_claim(
        &self,
        key: &IdempotencyKey,
        token: &str,
        in_progress_for: Duration,
    ) -> Result<DateTime<Utc>, StoreError>;

    /// Gives up the claim (the work failed and may be retried at once); a no-op if it was lost.
    async fn release_claim(&self, key: &IdempotencyKey, token: &str) -> Result<(), StoreError>;

    /// Reads the record, if any (for operators and tests).
    async fn idempotency_record(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Leases

/// Names one lease: one tenant's job, so that overlapping runs never work at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    /// Whose.
    pub tenant: TenantId,
    /// Which job.
    pub job: Job,
    /// A sub-lease (e.g. a location), or empty.
    pub name: String,
}

impl LeaseKey {
    /// The lease on `tenant`'s `job`.
    pub fn new(tenant: &TenantId, job: Job) -> Self {
        Self {
            tenant: tenant.clone(),
            job,
            name: String::new(),
        }
    }
}

impl std::fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease {}/{}", self.tenant, self.job)?;
        if !self.name.is_empty() {
            write!(f, "/{}", self.name)?;
        }
        Ok(())
    }
}

/// A held lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Which.
    pub key: LeaseKey,
    /// Who holds it (a run id).
    pub holder: String,
    /// Fencing token: +1 on every acquisition, so a stale holder can be told apart.
    pub generation: u64,
    /// It lapses at this time unless renewed.
    pub expires_at: DateTime<Utc>,
    /// Acquired from a holder that never released it (its lease lapsed, or it was handed over):
    /// it may have died mid-work, or left on purpose what only it knew of (an unlisted claim), for
    /// this holder to look for.
    pub took_over: bool,
}

/// The answer to an acquisition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds it now.
    Acquired(Lease),
    /// Someone else does.
    Held {
        /// Who.
        holder: String,
        /// Until when, unless renewed.
        expires_at: DateTime<Utc>,
    },
}

/// Mutual exclusion between runs of one job, with expiry so a crashed run's lease is taken over.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes the lease for `ttl` if it is free or lapsed.
    async fn acquire(
        &self,
        key: &LeaseKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError>;

    /// Extends a held lease to now + `ttl`; [`StoreError::Conflict`] if it was taken over.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError>;

    /// Gives the lease up; `false` if it was no longer ours.
    async fn release_lease(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// Gives the lease up at once but as if never released: its next holder is told it took
    /// over ([`Lease::took_over`]), so it looks for what this holder left; `false` if it was no
    /// longer ours.
    async fn hand_over_lease(&self, lease: &Lease) -> Result<bool, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Rate budget (token buckets)

/// A token bucket's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    /// Most tokens the bucket holds (the burst).
    pub capacity: u32,
    /// Tokens added per minute.
    pub per_minute: u32,
}

/// A bucket as stored. Tokens are kept in thousandths so refill needs no floats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Thousandths of a token available at `refilled_at`.
    pub milli_tokens: i64,
    /// When `milli_tokens` was computed (ms since epoch).
    pub refilled_at_ms: i64,
    /// No tokens before this (ms since epoch), after DEAR throttled the account.
    pub paused_until_ms: i64,
    /// +1 per write; the write condition. 0 = not stored yet.
    pub revision: u64,
    /// Who waits for a token and who had which share: the lanes' priority across processes.
    pub lanes: LaneState,
}

/// The lanes' part of a shared bucket: which lanes have a caller waiting, and each lane's recent
/// share of the grants. A take yields to a waiting lane that outranks its own: one below its
/// guaranteed share ([`Lane::guaranteed_percent`]) outranks one above it; otherwise the higher
/// priority does. So shipments go first while every lane keeps its share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneState {
    /// Per lane ([`Lane::index`]): until when a caller of it waits for a token (ms since epoch).
    pub waiting_until_ms: [i64; 4],
    /// Per lane: tokens granted lately, halved every [`LaneState::HALF_LIFE_MS`].
    pub recent: [u32; 4],
    /// When `recent` was last halved (ms since epoch).
    pub recent_since_ms: i64,
}

impl LaneState {
    /// How fast the recent shares forget: half every 20 s (a minute's grants weigh most).
    pub const HALF_LIFE_MS: i64 = 20_000;
    /// A waiting mark outlives the wait it was made for by this much, so that a waiter asking
    /// again every second rewrites it only every few seconds (a write each); a waiter that died
    /// holds the lanes it outranks back for at most this long.
    pub const WAIT_GRACE_MS: i64 = 4_000;
    /// A mark is rewritten only when it would lapse this much sooner than wanted.
    pub const REMARK_MS: i64 = 2_000;
    /// How soon a take that yielded asks again.
    pub const YIELD_RETRY_MS: u64 = 250;

    /// The stored text: `w0,w1,w2,w3;r0,r1,r2,r3;since` (empty for a bucket without lanes).
    pub fn encode(&self) -> String {
        let join = |v: &[String]| v.join(",");
        format!(
            "{};{};{}",
            join(&self.waiting_until_ms.map(|v| v.to_string())),
            join(&self.recent.map(|v| v.to_string())),
            self.recent_since_ms
        )
    }

    /// Reads [`LaneState::encode`]'s text; empty text (a bucket stored before lanes) is none.
    pub fn decode(text: &str) -> Option<LaneState> {
        if text.is_empty() {
            return Some(LaneState::default());
        }
        let mut parts = text.split(';');
        let waiting = four(parts.next()?)?;
        let recent = four(parts.next()?)?;
        let since = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(LaneState {
            waiting_until_ms: waiting,
            recent,
            recent_since_ms: since,
        })
    }

    /// Forgets half the recent grants per half-life passed.
    fn decay(&mut self, now_ms: i64) {
        if self.recent_since_ms == 0 {
            self.recent_since_ms = now_ms;
        }
        let halvings = (now_ms - self.recent_since_ms) / Self::HALF_LIFE_MS;
        if halvings > 0 {
            let shift = halvings.min(31) as u32;
            self.recent = self.recent.map(|r| r >> shift);
            self.recent_since_ms += halvings * Self::HALF_LIFE_MS;
        }
    }

    /// Whether `lane` has had less than its guaranteed share lately.
    fn below_share(&self, lane: Lane) -> bool {
        let total: u64 = self.recent.iter().map(|r| u64::from(*r)).sum();
        u64::from(self.recent[lane.index()]) * 100 < u64::from(lane.guaranteed_percent()) * total
    }

    /// Whether a waiting `other` goes before `lane`.
    fn outranks(&self, other: Lane, lane: Lane) -> bool {
        match (self.below_share(other), self.below_share(lane)) {
            (true, false) => true,
            (false, true) => false,
            _ => other < lane,
        }
    }

    /// A lane other than `lane` with a caller waiting now that goes before it.
    fn yields_to(&self, lane: Lane, now_ms: i64) -> Option<Lane> {
        Lane::ALL.into_iter().find(|other| {
            *other != lane
                && self.waiting_until_ms[other.index()] > now_ms
                && self.outranks(*other, lane)
        })
    }

    /// Marks `lane` waiting until `until_ms`; `true` when that changes the stored mark enough to
    /// be worth a write (not for every retry of a caller already marked).
    fn mark_waiting(&mut self, lane: Lane, until_ms: i64) -> bool {
        let mark = &mut self.waiting_until_ms[lane.index()];
        if *mark >= until_ms - Self::REMARK_MS {
            return false;
        }
        *mark = until_ms;
        true
    }
}

/// Four comma-separated numbers.
fn four<T: std::str::FromStr + Copy + Default>(text: &str) -> Option<[T; 4]> {
    let mut out = [T::default(); 4];
    let mut values = text.split(',');
    for slot in &mut out {
        *slot = values.next()?.parse().ok()?;
    }
    values.next().is_none().then_some(out)
}

/// A take's result: the state to store (when `write`), and the grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The bucket after the take.
    pub next: BucketState,
    /// What the caller got.
    pub grant: Grant,
    /// Whether `next` must be stored: tokens were granted, or a lane's waiting mark changed.
    pub write: bool,
}

/// The answer to a take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted now: up to the number wanted, as many as the bucket held, or 0.
    pub granted: u32,
    /// How long until the bucket holds a token again (after this grant, when some were granted):
    /// a caller of the same process need not ask before.
    pub retry_after: std::time::Duration,
}

impl BucketState {
    /// Takes up to `want` whole tokens (clamped to 1..=capacity; as many as the bucket holds) at
    /// `now_ms` for a call of `lane`; a fresh bucket starts full. Nothing is granted while a waiting lane outranks
    /// `lane` (see [`LaneState`]); a lane refused is marked waiting.
    pub fn take(self, spec: BucketSpec, want: u32, now_ms: i64, lane: Lane) -> Taken {
        let capacity = i64::from(spec.capacity.max(1)) * 1000;
        let (mut milli, from) = if self.revision == 0 {
            (capacity, now_ms)
        } else {
            (self.milli_tokens, self.refilled_at_ms)
        };
        // Refill: per_minute tokens per 60,000 ms = per_minute thousandths per 60 ms.
        let elapsed = (now_ms - from).max(0);
        milli = (milli + elapsed * i64::from(spec.per_minute) / 60).min(capacity);
        let mut next = BucketState {
            milli_tokens: milli,
            refilled_at_ms: now_ms,
            paused_until_ms: self.paused_until_ms,
            revision: self.revision + 1,
            lanes: self.lanes,
        };
        next.lanes.decay(now_ms);
        let refused = |next: BucketState, retry_after: std::time::Duration, write: bool| Taken {
            next,
            grant: Grant {
                granted: 0,
                retry_after,
            },
            write,
        };
        if now_ms < self.paused_until_ms {
            let wait = (self.paused_until_ms - now_ms) as u64;
            return refused(next, std::time::Duration::from_millis(wait), false);
        }
        // Up to `want` whole tokens, as many as there are: a batch saves store writes while tokens
        // are plentiful, and no caller waits for a second token while one is there (waiting for a
        // whole batch keeps the bucket near full, where its refill is cut off).
        let want = want.clamp(1, spec.capacity.max(1));
        let available = u32::try_from(milli / 1000).unwrap_or(0).min(want);
        let until_one = |milli: i64| {
            if milli >= 1000 || spec.per_minute == 0 {
                return std::time::Duration::ZERO;
            }
            let missing = (1000 - milli).max(1) as u64;
            std::time::Duration::from_millis((missing * 60).div_ceil(u64::from(spec.per_minute)))
        };
        if available > 0 && next.lanes.yields_to(lane, now_ms).is_none() {
            next.milli_tokens = milli - i64::from(available) * 1000;
            let l = &mut next.lanes;
            l.recent[lane.index()] = l.recent[lane.index()].saturating_add(available);
            l.waiting_until_ms[lane.index()] = 0;
            return Taken {
                next,
                grant: Grant {
                    granted: available,
                    retry_after: until_one(next.milli_tokens),
                },
                write: true,
            };
        }
        let retry_after = if available > 0 {
            // Tokens are there, for a lane that goes first: ask again shortly.
            std::time::Duration::from_millis(LaneState::YIELD_RETRY_MS)
        } else {
            until_one(milli).max(std::time::Duration::from_millis(1))
        };
        let until = now_ms + retry_after.as_millis() as i64 + LaneState::WAIT_GRACE_MS;
        let write = next.lanes.mark_waiting(lane, until);
        refused(next, retry_after, write)
    }

    /// The state after a process gives back `tokens` it took for `lane` and did not spend (the
    /// caller's burst ended): the bucket holds them again (up to its capacity), and the lane's
    /// share no longer counts them. Calls never exceed the tokens taken and kept, so DEAR's limit
    /// holds as if they had never been taken.
    pub fn give_back(self, spec: BucketSpec, tokens: u32, now_ms: i64, lane: Lane) -> BucketState {
        if now_ms < self.paused_until_ms {
            return self; // DEAR throttled the account: the bucket stays empty until the pause ends
        }
        let capacity = i64::from(spec.capacity.max(1)) * 1000;
        let elapsed = (now_ms - self.refilled_at_ms).max(0);
        let refilled =
            (self.milli_tokens + elapsed * i64::from(spec.per_minute) / 60).min(capacity);
        let mut lanes = self.lanes;
        lanes.decay(now_ms);
        let recent = &mut lanes.recent[lane.index()];
        *recent = recent.saturating_sub(tokens);
        BucketState {
            milli_tokens: (refilled + i64::from(tokens) * 1000).min(capacity),
            refilled_at_ms: now_ms.max(self.refilled_at_ms),
            paused_until_ms: self.paused_until_ms,
            revision: self.revision + 1,
            lanes,
        }
    }

    /// The state after DEAR throttled the account: empty, and nothing granted before `until_ms`.
    pub fn pause(self, until_ms: i64, now_ms: i64) -> BucketState {
        BucketState {
            milli_tokens: 0,
            refilled_at_ms: now_ms.max(until_ms),
            paused_until_ms: self.paused_until_ms.max(until_ms),
            revision: self.revision + 1,
            lanes: self.lanes,
        }
    }
}

/// Token buckets shared by every process that calls one DEAR account.
#[async_trait]
pub trait TokenBuckets: Send + Sync {
    /// Takes up to `want` tokens (at most the capacity; as many as it holds, or none) from
    /// `account`'s bucket for a call of `lane` ([`BucketState::take`]).
    async fn take(
        &self,
        account: &str,
        spec: BucketSpec,
        want: u32,
        lane: Lane,
    ) -> Result<Grant, StoreError>;

    /// Puts back `tokens` taken for `lane` and not spent ([`BucketState::give_back`]).
    async fn give_back(
        &self,
        account: &str,
        spec: BucketSpec,
        tokens: u32,
        lane: Lane,
    ) -> Result<(), StoreError>;

    /// Empties `account`'s bucket and grants nothing before `until`.
    async fn pause(&self, account: &str, until: DateTime<Utc>) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Tenants

/// A tenant as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantEntry {
    /// Who.
    pub tenant: TenantId,
    /// Whether scheduled runs include it.
    pub enabled: bool,
    /// Its settings, as TOML text (the same format as the CLI's `--config` file).
    pub settings_toml: String,
}

/// The tenants and their settings.
#[async_trait]
pub trait TenantDirectory: Send + Sync {
    /// Every tenant, enabled or not, in id order.
    async fn tenants(&self) -> Result<Vec<TenantEntry>, StoreError>;

    /// One tenant.
    async fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, StoreError>;

    /// Creates or replaces a tenant. Callers validate the settings first
    /// ([`crate::settings::TenantSettings::from_toml`]).
    async fn put_tenant(&self, entry: &TenantEntry) -> Result<(), StoreError>;
}

/// Every state port in one: what a store adapter implements.
pub trait StateStore:
    CursorStore + Ledger + Idempotency + Leases + TokenBuckets + TenantDirectory + RunLog
{
}

impl<T> StateStore for T where
    T: CursorStore + Ledger + Idempotency + Leases + TokenBuckets + TenantDirectory + RunLog
{
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: BucketSpec = BucketSpec {
        capacity: 3,
        per_minute: 60,
    };

    /// A poll's take (the lanes aside).
    fn take(state: BucketState, want: u32, now_ms: i64) -> (BucketState, Grant) {
        let t = state.take(SPEC, want, now_ms, Lane::Poll);
        (t.next, t.grant)
    }

    #[test]
    fn a_fresh_bucket_is_full_and_refills_at_the_rate() {
        let (s, g) = take(BucketState::default(), 5, 0);
        assert_eq!(g.granted, 3, "clamped to the capacity");
        let (s, g) = take(s, 1, 500);
        assert_eq!(g.granted, 0);
        assert_eq!(g.retry_after, std::time::Duration::from_millis(500));
        let (s, g) = take(s, 2, 1000);
        assert_eq!(g.granted, 1, "as many as there are");
        let (s, g) = take(s, 2, 3000);
        assert_eq!(g.granted, 2);
        // Capacity caps the refill.
        let (_, g) = take(s, 10, 1_000_000);
        assert_eq!(g.granted, 3);
    }

    #[test]
    fn a_paused_bucket_grants_nothing_until_the_pause_ends() {
        let (s, _) = take(BucketState::default(), 1, 0);
        let s = s.pause(30_000, 0);
        let (s, g) = take(s, 1, 10_000);
        assert_eq!((g.granted, g.retry_after.as_millis()), (0, 20_000));
        let (_, g) = take(s, 1, 31_000);
        assert_eq!(g.granted, 1);
    }

    #[test]
    fn a_lane_yields_to_a_waiting_shipment_and_a_lane_below_its_share_goes_first() {
        // 60/min, capacity 3: empty it with polls, then a shipment finds none and waits.
        let (s, _) = take(BucketState::default(), 3, 0);
        let t = s.take(SPEC, 1, 10, Lane::Shipments);
        assert!(
            t.write && t.grant.granted == 0,
            "a refused shipment is marked waiting"
        );
        // A token later, a poll (well above its share) yields to it; the shipment gets it.
        let t = t.next.take(SPEC, 1, 1_010, Lane::Poll);
        assert_eq!(t.grant.granted, 0);
        assert_eq!(
            t.grant.retry_after.as_millis(),
            u128::from(LaneState::YIELD_RETRY_MS)
        );
        let t = t.next.take(SPEC, 1, 1_020, Lane::Shipments);
        assert_eq!(t.grant.granted, 1);
        assert_eq!(t.next.lanes.waiting_until_ms[Lane::Shipments.index()], 0);
        // Nobody waits: the poll is served.
        let t = t.next.take(SPEC, 1, 2_100, Lane::Poll);
        assert_eq!(t.grant.granted, 1);

        // Shipments took everything lately: a waiting inventory sync (below its 15 %) goes
        // before another shipment.
        let mut state = t.next;
        state.lanes.recent = [40, 0, 0, 0];
        let t = state.take(SPEC, 1, 2_200, Lane::Inventory);
        let t = t.next.take(SPEC, 1, 2_300, Lane::Inventory);
        assert_eq!(t.grant.granted, 0, "none left");
        let t = t.next.take(SPEC, 1, 3_400, Lane::Shipments);
        assert_eq!(t.grant.granted, 0, "yields to inventory, below its share");
        let t = t.next.take(SPEC, 1, 3_500, Lane::Inventory);
        assert_eq!(t.grant.granted, 1);
    }

    #[test]
    fn a_dead_waiters_mark_lapses_and_a_repeat_refusal_is_not_written_again() {
        let (s, _) = take(BucketState::default(), 3, 0);
        let t = s.take(SPEC, 1, 10, Lane::Shipments);
        assert!(t.write);
        let again = t.next.take(SPEC, 1, 20, Lane::Shipments);
        assert!(!again.write, "already marked: no write");
        // The shipment never comes back: after its mark lapses the poll is served.
        let t = t.next.take(
            SPEC,
            1,
            10 + 1_000 + LaneState::WAIT_GRACE_MS + 1,
            Lane::Poll,
        );
        assert_eq!(t.grant.granted, 1);
        // Shares halve every half-life.
        let mut state = t.next;
        state.lanes.recent = [8, 4, 2, 1];
        state.lanes.recent_since_ms = 1;
        let t = state.take(SPEC, 1, 2 * LaneState::HALF_LIFE_MS + 5, Lane::Inventory);
        assert_eq!(t.next.lanes.recent, [2, 1, 0, 1]);
        // Given back while DEAR's throttle pause lasts: nothing changes.
        let paused = t.next.pause(60_000, 2 * LaneState::HALF_LIFE_MS + 5);
        let back = paused.give_back(SPEC, 2, 2 * LaneState::HALF_LIFE_MS + 10, Lane::Poll);
        assert_eq!(back, paused);
        let text = t.next.lanes.encode();
        assert_eq!(LaneState::decode(&text), Some(t.next.lanes));
        assert_eq!(LaneState::decode(""), Some(LaneState::default()));
        assert_eq!(LaneState::decode("1,2;3"), None);
    }

    #[test]
    fn transitions_bump_the_revision_and_keep_what_is_not_changed() {
        let tenant = TenantId::new("t").unwrap();
        let now = Utc::now();
        let rec = NewRecord::new(
            RecordKey::new(&tenant, Job::OrderDownload, "s1"),
            RecordState::Pending,
            "h1",
        )
        .into_record(now);
        let next = rec.apply(
            &Transition::to(RecordState::InFlight).attempt().detail("{}"),
            now,
        );
        assert_eq!(
            (next.revision, next.attempts, next.input_hash.as_str()),
            (2, 1, "h1")
        );
        assert_eq!(next.detail.as_deref(), Some("{}"));
        let done = next.apply(&Transition::to(RecordState::Done), now);
        assert_eq!(done.detail.as_deref(), Some("{}"));
    }
}
