//! The embedded local store: every dear-sync state port over one SQLite file, so that the CLI
//! keeps exactly-once state with no AWS account.
//!
//! SQLite (bundled through rusqlite) gives the same guarantees the DynamoDB adapter gets from
//! condition expressions: every conditional change is a single `UPDATE … WHERE <condition>` or runs
//! in an `IMMEDIATE` transaction, so two processes sharing the file (two overlapping CLI runs)
//! serialise on SQLite's lock. The file is in WAL mode with a busy timeout, so a reader never blocks
//! a writer and a briefly locked file is waited for rather than failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use dearsync_core::clock::{Clock, from_millis, to_millis};
use dearsync_core::memory::{ledger_sort_bound, ledger_sort_key, ledger_sort_start, new_token};
use dearsync_core::state::*;
use dearsync_core::{Job, RunHistory, RunLog, RunReport, StoreError, TenantId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The default state directory of the CLI, relative to the working directory.
pub const DEFAULT_DIR: &str = ".dearsync";
/// The database file's name in the state directory.
pub const FILE_NAME: &str = "state.sqlite3";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cursors (
    tenant TEXT NOT NULL, job TEXT NOT NULL, name TEXT NOT NULL,
    value TEXT NOT NULL, version INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, job, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    tenant TEXT NOT NULL, job TEXT NOT NULL, entity TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL, input_hash TEXT NOT NULL,
    revision INTEGER NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    due_ms INTEGER, detail TEXT, sort_key TEXT NOT NULL, order_number TEXT,
    unlisted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, job, entity)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_by_state ON ledger (tenant, job, state, sort_key);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
    status TEXT NOT NULL, payload_hash TEXT NOT NULL, token TEXT NOT NULL,
    in_progress_until_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, result TEXT,
    PRIMARY KEY (tenant, scope, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    tenant TEXT NOT NULL, job TEXT NOT NULL, name TEXT NOT NULL,
    holder TEXT NOT NULL, generation INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, job, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    account TEXT PRIMARY KEY NOT NULL, milli_tokens INTEGER NOT NULL, refilled_ms INTEGER NOT NULL,
    paused_ms INTEGER NOT NULL, revision INTEGER NOT NULL, lanes TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY NOT NULL, enabled INTEGER NOT NULL, settings_toml TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    tenant TEXT NOT NULL, job TEXT NOT NULL, history TEXT NOT NULL,
    PRIMARY KEY (tenant, job)
) WITHOUT ROWID;
"#;

/// Brings a store file made by an older version up to [`SCHEMA`]: columns added since (filled
/// from what the records' details already say), then the indexes on them. The change runs in one
/// IMMEDIATE transaction (two processes opening an old file at once migrate it once); a file that
/// needs none is only read.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    add_column(conn, "buckets", "lanes", "TEXT NOT NULL DEFAULT ''")?;
    add_column(conn, "ledger", "unlisted", "INTEGER NOT NULL DEFAULT 0")?;
    let has_order_number = |c: &Connection| -> rusqlite::Result<bool> {
        c.prepare("SELECT 1 FROM pragma_table_info('ledger') WHERE name = 'order_number'")?
            .exists([])
    };
    if !has_order_number(conn)? {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !has_order_number(&tx)? {
            tx.execute_batch(
                "ALTER TABLE ledger ADD COLUMN order_number TEXT;
                 UPDATE ledger
                    SET order_number = NULLIF(TRIM(json_extract(detail, '$.order_number')), '')
                  WHERE job = 'order-download' AND json_valid(detail);
                 UPDATE ledger
                    SET order_number =
                        NULLIF(TRIM(json_extract(detail, '$.confirmation.order_number')), '')
                  WHERE job = 'shipment-confirmation' AND json_valid(detail);
                 UPDATE ledger AS s
                    SET order_number = (
                        SELECT o.order_number FROM ledger AS o
                         WHERE o.tenant = s.tenant AND o.job = 'order-download'
                           AND o.entity = json_extract(s.detail, '$.sale_id'))
                  WHERE s.job = 'shipment-confirmation' AND s.order_number IS NULL
                    AND json_valid(s.detail);",
            )?;
        }
        tx.commit()?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS ledger_by_order ON ledger (tenant, order_number)
         WHERE order_number IS NOT NULL",
    )
}

/// Adds `column` to `table` unless it is there (in one IMMEDIATE transaction, checked again
/// inside it, so two processes opening an old file add it once).
fn add_column(
    conn: &mut Connection,
    table: &str,
    column: &str,
    decl: &str,
) -> rusqlite::Result<()> {
    let has = |c: &Connection| -> rusqlite::Result<bool> {
        c.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists(params![table, column])
    };
    if has(conn)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !has(&tx)? {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    tx.commit()
}

/// Every state port over one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
    path: PathBuf,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite: {e}"))
}

fn corrupt(key: impl std::fmt::Display, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` (e.g. [`DEFAULT_DIR`]).
    pub fn open_dir(dir: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the state directory {}: {e}",
                dir.display()
            ))
        })?;
        Self::open(dir.join(FILE_NAME), clock)
    }

    /// Opens (creating if needed) the store in the file `path`.
    pub fn open(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |e: rusqlite::Error| {
            StoreError::Unavailable(format!(
                "cannot open the state file {}: {e}",
                path.display()
            ))
        };
        let mut conn = Connection::open(&path).map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        migrate(&mut conn).map_err(open_error)?;
        // Lapsed transient items are dropped on open (DynamoDB's TTL does this in AWS).
        let now = to_millis(clock.now());
        conn.execute(
            "DELETE FROM idempotency WHERE expires_ms <= ?1",
            params![now],
        )
        .map_err(open_error)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            clock,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let now = to_millis(self.clock.now());
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, now)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("SQLite worker failed: {e}")))?
    }

    /// Runs `f` in an immediate (write-locking) transaction, committed when `f` succeeds and
    /// rolled back when it fails.
    async fn with_tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<T, StoreError> + Send + 'static,
    {
        self.with(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let out = f(&tx, now)?;
            tx.commit().map_err(db_error)?;
            Ok(out)
        })
        .await
    }
}

fn job_of(key: &str, text: &str) -> Result<Job, StoreError> {
    Job::parse(text).ok_or_else(|| corrupt(key, format!("unknown job {text:?}")))
}

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        tenant: row.get(0)?,
        job: row.get(1)?,
        entity: row.get(2)?,
        state: row.get(3)?,
        reason: row.get(4)?,
        attempts: row.get(5)?,
        input_hash: row.get(6)?,
        revision: row.get(7)?,
        created_ms: row.get(8)?,
        updated_ms: row.get(9)?,
        due_ms: row.get(10)?,
        detail: row.get(11)?,
        order_number: row.get(12)?,
        unlisted: row.get(13)?,
    })
}

const RECORD_COLUMNS: &str = "tenant, job, entity, state, reason, attempts, input_hash, revision, created_ms, updated_ms, due_ms, detail, order_number, unlisted";

struct RawRecord {
    tenant: String,
    job: String,
    entity: String,
    state: String,
    reason: Option<String>,
    attempts: i64,
    input_hash: String,
    revision: i64,
    created_ms: i64,
    updated_ms: i64,
    due_ms: Option<i64>,
    detail: Option<String>,
    order_number: Option<String>,
    unlisted: bool,
}

impl RawRecord {
    fn into_record(self) -> Result<LedgerRecord, StoreError> {
        let name = format!("ledger {}/{}/{}", self.tenant, self.job, self.entity);
        Ok(LedgerRecord {
            key: RecordKey {
                tenant: TenantId::new(self.tenant).map_err(|e| corrupt(&name, e.to_string()))?,
                job: job_of(&name, &self.job)?,
                entity: self.entity,
            },
            state: RecordState::parse(&self.state)
                .ok_or_else(|| corrupt(&name, format!("unknown state {:?}", self.state)))?,
            reason: self.reason,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| corrupt(&name, "attempts out of range"))?,
            input_hash: self.input_hash,
            revision: u64::try_from(self.revision)
                .map_err(|_| corrupt(&name, "revision out of range"))?,
            created_at: from_millis(self.created_ms),
            updated_at: from_millis(self.updated_ms),
            due_at: self.due_ms.map(from_millis),
            detail: self.detail,
            order_number: self.order_number,
            unlisted: self.unlisted,
        })
    }
}

#[async_trait]
impl CursorStore for SqliteStore {
    async fn cursor(&self, key: &CursorKey) -> Result<Option<Cursor>, StoreError> {
        let key = key.clone();
        self.with(move |conn, _| {
            conn.query_row(
                "SELECT value, version, updated_ms FROM cursors WHERE tenant = ?1 AND job = ?2 AND name = ?3",
                params![key.tenant.as_str(), key.job.as_str(), key.name],
                |row| {
                    Ok(Cursor {
                        value: row.get(0)?,
                        version: row.get::<_, i64>(1)? as u64,
                        updated_at: from_millis(row.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(db_error)
        })
        .await
    }

    async fn save_cursor(
        &self,
        key: &CursorKey,
        value: &str,
        expected_version: Option<u64>,
    ) -> Result<Cursor, StoreError> {
        let key = key.clone();
        let value = value.to_owned();
        self.with(move |conn, now| {
            let version = expected_version.unwrap_or(0) + 1;
            let changed = match expected_version {
                None => match conn.execute(
                    "INSERT INTO cursors (tenant, job, name, value, version, updated_ms) VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                    params![key.tenant.as_str(), key.job.as_str(), key.name, value, now],
                ) {
                    Err(e) if is_unique_violation(&e) => 0,
                    other => other.map_err(db_error)?,
                },
                Some(v) => conn
                    .execute(
                        "UPDATE cursors SET value = ?4, version = ?5, updated_ms = ?6
                         WHERE tenant = ?1 AND job = ?2 AND name = ?3 AND version = ?7",
                        params![key.tenant.as_str(), key.job.as_str(), key.name, value, version as i64, now, v as i64],
                    )
                    .map_err(db_error)?,
            };
            if changed == 1 {
                Ok(Cursor {
                    value,
                    version,
                    updated_at: from_millis(now),
                })
            } else {
                Err(StoreError::conflict(
                    key.to_string(),
                    format!("expected version {expected_version:?}; it was saved by someone else"),
                ))
            }
        })
        .await
    }
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn record(&self, key: &RecordKey) -> Result<Option<LedgerRecord>, StoreError> {
        let key = key.clone();
        self.with(move |conn, _| {
            conn.query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM ledger WHERE tenant = ?1 AND job = ?2 AND entity = ?3"),
                params![key.tenant.as_str(), key.job.as_str(), key.entity],
                read_record,
            )
            .optional()
            .map_err(db_error)?
            .map(RawRecord::into_record)
            .transpose()
        })
        .await
    }

    async fn insert(&self, record: NewRecord) -> Result<LedgerRecord, StoreError> {
        check_detail_size("ledger detail", record.detail.as_deref())?;
        self.with(move |conn, now| {
            let rec = record.into_record(from_millis(now));
            let result = conn.execute(
                "INSERT INTO ledger (tenant, job, entity, state, reason, attempts, input_hash, revision,
                                     created_ms, updated_ms, due_ms, detail, sort_key, order_number, unlisted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    rec.key.tenant.as_str(),
                    rec.key.job.as_str(),
                    rec.key.entity,
                    rec.state.as_str(),
                    rec.reason,
                    rec.attempts,
                    rec.input_hash,
                    rec.revision as i64,
                    to_millis(rec.created_at),
                    to_millis(rec.updated_at),
                    rec.due_at.map(to_millis),
                    rec.detail,
                    ledger_sort_key(&rec),
                    rec.order_number,
                    rec.unlisted,
                ],
            );
            match result {
                Ok(_) => Ok(rec),
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::conflict(rec.key.to_string(), "it already exists"))
                }
                Err(e) => Err(db_error(e)),
            }
        })
        .await
    }

    async fn transition(
        &self,
        current: &LedgerRecord,
        change: Transition,
    ) -> Result<LedgerRecord, StoreError> {
        if let DetailChange::Set(text) = &change.detail {
            check_detail_size("ledger detail", Some(text))?;
        }
        let current = current.clone();
        self.with(move |conn, now| {
            let next = current.apply(&change, from_millis(now));
            let changed = conn
                .execute(
                    "UPDATE ledger SET state = ?4, reason = ?5, attempts = ?6, input_hash = ?7, revision = ?8,
                            updated_ms = ?9, due_ms = ?10, detail = ?11, sort_key = ?12, order_number = ?15,
                            unlisted = ?16
                     WHERE tenant = ?1 AND job = ?2 AND entity = ?3 AND state = ?13 AND revision = ?14",
                    params![
                        next.key.tenant.as_str(),
                        next.key.job.as_str(),
                        next.key.entity,
                        next.state.as_str(),
                        next.reason,
                        next.attempts,
                        next.input_hash,
                        next.revision as i64,
                        to_millis(next.updated_at),
                        next.due_at.map(to_millis),
                        next.detail,
                        ledger_sort_key(&next),
                        current.state.as_str(),
                        current.revision as i64,
                        next.order_number,
                        next.unlisted,
                    ],
                )
                .map_err(db_error)?;
            if changed == 1 {
                Ok(next)
            } else {
                Err(StoreError::conflict(
                    current.key.to_string(),
                    format!(
                        "expected {} at revision {}; it changed or does not exist",
                        current.state, current.revision
                    ),
                ))
            }
        })
        .await
    }

    async fn list(&self, query: &LedgerQuery) -> Result<RecordPage, StoreError> {
        let query = query.clone();
        self.with(move |conn, _| {
            let limit = query.limit.clamp(1, 1000);
            // After the page token (exclusive), from the time bound (inclusive); "" is no bound.
            let after = query.after.as_ref().map(|t| t.position().to_owned()).unwrap_or_default();
            let since = query.changed_since.map(ledger_sort_start).unwrap_or_default();
            // '~' sorts after every key this store writes.
            let bound = query.due_before.map(ledger_sort_bound).unwrap_or_else(|| "~".to_owned());
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS}, sort_key FROM ledger
                     WHERE tenant = ?1 AND job = ?2 AND state = ?3 AND sort_key > ?4 AND sort_key >= ?5
                       AND sort_key < ?6 AND unlisted = 0
                     ORDER BY sort_key LIMIT ?7"
                ))
                .map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![
                        query.tenant.as_str(),
                        query.job.as_str(),
                        query.state.as_str(),
                        after,
                        since,
                        bound,
                        (limit + 1) as i64
                    ],
                    |row| Ok((read_record(row)?, row.get::<_, String>(14)?)),
                )
                .map_err(db_error)?;
            let mut records = Vec::new();
            let mut last_key = None;
            let mut more = false;
            for row in rows {
                let (raw, sort_key) = row.map_err(db_error)?;
                if records.len() == limit {
                    more = true;
                    break;
                }
                records.push(raw.into_record()?);
                last_key = Some(sort_key);
            }
            Ok(RecordPage {
                records,
                next: if more {
                    last_key.map(PageToken::from_store)
                } else {
                    None
                },
            })
        })
        .await
    }

    async fn unlisted_claims(
        &self,
        tenant: &TenantId,
        job: Job,
        after: Option<&PageToken>,
    ) -> Result<RecordPage, StoreError> {
        let (tenant, after) = (tenant.clone(), after.map(|a| a.position().to_owned()));
        self.with(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM ledger
                     WHERE tenant = ?1 AND job = ?2 AND unlisted = 1 AND entity > ?3
                     ORDER BY entity LIMIT ?4"
                ))
                .map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![
                        tenant.as_str(),
                        job.as_str(),
                        after.unwrap_or_default(),
                        (UNLISTED_PAGE + 1) as i64
                    ],
                    read_record,
                )
                .map_err(db_error)?;
            let mut records = Vec::new();
            for row in rows {
                records.push(row.map_err(db_error)?.into_record()?);
            }
            Ok(RecordPage::of_unlisted(records))
        })
        .await
    }

    async fn records_of_order(
        &self,
        tenant: &TenantId,
        order_number: &str,
        limit: usize,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        let tenant = tenant.clone();
        let order_number = order_number.to_owned();
        self.with(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM ledger WHERE tenant = ?1 AND order_number = ?2 LIMIT ?3"
                ))
                .map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![tenant.as_str(), order_number, limit.clamp(1, 1000) as i64],
                    read_record,
                )
                .map_err(db_error)?;
            rows.map(|row| row.map_err(db_error)?.into_record())
                .collect()
        })
        .await
    }
}

#[async_trait]
impl RunLog for SqliteStore {
    async fn record_run(
        &self,
        tenant: &TenantId,
        job: Job,
        report: &RunReport,
    ) -> Result<RunHistory, StoreError> {
        let tenant = tenant.clone();
        let report = report.clone();
        // An IMMEDIATE transaction: another process's read-and-write cannot come in between.
        self.with(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let previous = read_run_history(&tx, &tenant, job)?;
            let next = RunHistory::after(previous.as_ref(), &report);
            let text = serde_json::to_string(&next)
                .map_err(|e| corrupt(run_name(&tenant, job), e.to_string()))?;
            tx.execute(
                "INSERT INTO runs (tenant, job, history) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, job) DO UPDATE SET history = excluded.history",
                params![tenant.as_str(), job.as_str(), text],
            )
            .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
            Ok(next)
        })
        .await
    }

    async fn run_history(
        &self,
        tenant: &TenantId,
        job: Job,
    ) -> Result<Option<RunHistory>, StoreError> {
        let tenant = tenant.clone();
        self.with(move |conn, _| read_run_history(conn, &tenant, job))
            .await
    }
}

fn run_name(tenant: &TenantId, job: Job) -> String {
    format!("run log {tenant}/{job}")
}

fn read_run_history(
    conn: &Connection,
    tenant: &TenantId,
    job: Job,
) -> Result<Option<RunHistory>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT history FROM runs WHERE tenant = ?1 AND job = ?2",
            params![tenant.as_str(), job.as_str()],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_error)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| corrupt(run_name(tenant, job), e.to_string()))
    })
    .transpose()
}

fn read_claim(
    key: &IdempotencyKey,
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, IdempotencyRecord)> {
    let status: String = row.get(0)?;
    Ok((
        status.clone(),
        IdempotencyRecord {
            key: key.clone(),
            status: if status == "COMPLETED" {
                IdempotencyStatus::Completed
            } else {
                IdempotencyStatus::InProgress
            },
            payload_hash: row.get(1)?,
            token: row.get(2)?,
            in_progress_until: from_millis(row.get(3)?),
            expires_at: from_millis(row.get(4)?),
            result: row.get(5)?,
        },
    ))
}

fn select_claim(
    conn: &Connection,
    key: &IdempotencyKey,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let found = conn
        .query_row(
            "SELECT status, payload_hash, token, in_progress_until_ms, expires_ms, result FROM idempotency
             WHERE tenant = ?1 AND scope = ?2 AND key = ?3",
            params![key.tenant.as_str(), key.scope, key.key],
            |row| read_claim(key, row),
        )
        .optional()
        .map_err(db_error)?;
    match found {
        Some((status, rec)) if status == "COMPLETED" || status == "INPROGRESS" => Ok(Some(rec)),
        Some((status, _)) => Err(corrupt(
            format!("idempotency {key}"),
            format!("unknown status {status:?}"),
        )),
        None => Ok(None),
    }
}

#[async_trait]
impl Idempotency for SqliteStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let key = key.clone();
        let payload_hash = payload_hash.to_owned();
        self.with_tx(move |tx, now| {
            let existing = select_claim(tx, &key)?;
            match IdempotencyRecord::decide(existing.as_ref(), &payload_hash, from_millis(now)) {
                ClaimDecision::Take => {
                    let token = new_token();
                    tx.execute(
                        "INSERT OR REPLACE INTO idempotency
                           (tenant, scope, key, status, payload_hash, token, in_progress_until_ms, expires_ms, result)
                         VALUES (?1, ?2, ?3, 'INPROGRESS', ?4, ?5, ?6, ?7, NULL)",
                        params![
                            key.tenant.as_str(),
                            key.scope,
                            key.key,
                            payload_hash,
                            token,
                            now + terms.in_progress_for.num_milliseconds(),
                            now + terms.keep_for.num_milliseconds(),
                        ],
                    )
                    .map_err(db_error)?;
                    Ok(Claim::Acquired { token })
                }
                ClaimDecision::Answer(claim) => Ok(claim),
                ClaimDecision::Mismatch { stored } => Err(StoreError::PayloadMismatch {
                    key: key.to_string(),
                    stored,
                    given: payload_hash.clone(),
                }),
            }
        })
        .await
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: &str,
        result: &str,
        keep_for: Duration,
    ) -> Result<(), StoreError> {
        check_detail_size("idempotency result", Some(result))?;
        let key = key.clone();
        let token = token.to_owned();
        let result = result.to_owned();
        self.with(move |conn, now| {
            let changed = conn
                .execute(
                    "UPDATE idempotency SET status = 'COMPLETED', result = ?5, expires_ms = ?6
                     WHERE tenant = ?1 AND scope = ?2 AND key = ?3 AND token = ?4 AND status = 'INPROGRESS'",
                    params![
                        key.tenant.as_str(),
                        key.scope,
                        key.key,
                        token,
                        result,
                        now + keep_for.num_milliseconds()
                    ],
                )
                .map_err(db_error)?;
            if changed == 1 {
                Ok(())
            } else {
                Err(StoreError::claim_lost(&key))
            }
        })
        .await
    }

    async fn renew_claim(
        &self,
        key: &IdempotencyKey,
        token: &str,
        in_progress_for: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let key = key.clone();
        let token = token.to_owned();
        self.with(move |conn, now| {
            let until = now + in_progress_for.num_milliseconds();
            let changed = conn
                .execute(
                    "UPDATE idempotency SET in_progress_until_ms = ?5
                     WHERE tenant = ?1 AND scope = ?2 AND key = ?3 AND token = ?4 AND status = 'INPROGRESS'",
                    params![key.tenant.as_str(), key.scope, key.key, token, until],
                )
                .map_err(db_error)?;
            if changed == 1 {
                Ok(from_millis(until))
            } else {
                Err(StoreError::claim_lost(&key))
            }
        })
        .await
    }

    async fn release_claim(&self, key: &IdempotencyKey, token: &str) -> Result<(), StoreError> {
        let key = key.clone();
        let token = token.to_owned();
        self.with(move |conn, _| {
            conn.execute(
                "DELETE FROM idempotency WHERE tenant = ?1 AND scope = ?2 AND key = ?3 AND token = ?4 AND status = 'INPROGRESS'",
                params![key.tenant.as_str(), key.scope, key.key, token],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_record(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.clone();
        self.with(move |conn, _| select_claim(conn, &key)).await
    }
}

#[async_trait]
impl Leases for SqliteStore {
    async fn acquire(
        &self,
        key: &LeaseKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let key = key.clone();
        let holder = holder.to_owned();
        self.with_tx(move |tx, now| {
            let current: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT holder, generation, expires_ms FROM leases WHERE tenant = ?1 AND job = ?2 AND name = ?3",
                    params![key.tenant.as_str(), key.job.as_str(), key.name],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(db_error)?;
            let (generation, took_over) = match current {
                Some((holder, _, expires_ms)) if expires_ms > now => {
                    return Ok(LeaseOutcome::Held {
                        holder,
                        expires_at: from_millis(expires_ms),
                    });
                }
                // A released lease has no holder.
                Some((holder, generation, _)) => (generation + 1, !holder.is_empty()),
                None => (1, false),
            };
            let expires_ms = now + ttl.num_milliseconds();
            tx.execute(
                "INSERT OR REPLACE INTO leases (tenant, job, name, holder, generation, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key.tenant.as_str(), key.job.as_str(), key.name, holder, generation, expires_ms],
            )
            .map_err(db_error)?;
            Ok(LeaseOutcome::Acquired(Lease {
                key,
                holder,
                generation: generation as u64,
                expires_at: from_millis(expires_ms),
                took_over,
            }))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let lease = lease.clone();
        self.with(move |conn, now| {
            let expires_ms = now + ttl.num_milliseconds();
            let changed = conn
                .execute(
                    "UPDATE leases SET expires_ms = ?6
                     WHERE tenant = ?1 AND job = ?2 AND name = ?3 AND holder = ?4 AND generation = ?5",
                    params![
                        lease.key.tenant.as_str(),
                        lease.key.job.as_str(),
                        lease.key.name,
                        lease.holder,
                        lease.generation as i64,
                        expires_ms
                    ],
                )
                .map_err(db_error)?;
            if changed == 1 {
                Ok(Lease {
                    expires_at: from_millis(expires_ms),
                    ..lease
                })
            } else {
                Err(StoreError::conflict(
                    lease.key.to_string(),
                    format!("{} no longer holds it", lease.holder),
                ))
            }
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        // The row (and its generation) stays, so the next holder's generation is still higher.
        self.end_lease(lease, "holder = '', expires_ms = 0").await
    }

    async fn hand_over_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        // Free at once; the holder stays, so the next one is told it took over.
        self.end_lease(lease, "expires_ms = 0").await
    }
}

impl SqliteStore {
    /// Ends a held lease with `set` (a fixed SQL `SET` list); `false` if it was no longer ours.
    async fn end_lease(&self, lease: &Lease, set: &'static str) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.with(move |conn, _| {
            let changed = conn
                .execute(
                    &format!(
                        "UPDATE leases SET {set}
                         WHERE tenant = ?1 AND job = ?2 AND name = ?3 AND holder = ?4 AND generation = ?5"
                    ),
                    params![
                        lease.key.tenant.as_str(),
                        lease.key.job.as_str(),
                        lease.key.name,
                        lease.holder,
                        lease.generation as i64
                    ],
                )
                .map_err(db_error)?;
            Ok(changed == 1)
        })
        .await
    }
}

fn select_bucket(conn: &Connection, account: &str) -> Result<BucketState, StoreError> {
    Ok(conn
        .query_row(
            "SELECT milli_tokens, refilled_ms, paused_ms, revision, lanes FROM buckets WHERE account = ?1",
            params![account],
            |row| {
                let state = BucketState {
                    milli_tokens: row.get(0)?,
                    refilled_at_ms: row.get(1)?,
                    paused_until_ms: row.get(2)?,
                    revision: row.get::<_, i64>(3)? as u64,
                    lanes: Default::default(),
                };
                Ok((state, row.get::<_, String>(4)?))
            },
        )
        .optional()
        .map_err(db_error)?
        .map(|(state, lanes)| {
            let lanes = LaneState::decode(&lanes)
                .ok_or_else(|| corrupt(format!("bucket {account}"), format!("lanes {lanes:?}")))?;
            Ok(BucketState { lanes, ..state })
        })
        .transpose()?
        .unwrap_or_default())
}

fn write_bucket(conn: &Connection, account: &str, s: &BucketState) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO buckets (account, milli_tokens, refilled_ms, paused_ms, revision, lanes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            account,
            s.milli_tokens,
            s.refilled_at_ms,
            s.paused_until_ms,
            s.revision as i64,
            s.lanes.encode()
        ],
    )
    .map_err(db_error)?;
    Ok(())
}

#[async_trait]
impl TokenBuckets for SqliteStore {
    async fn take(
        &self,
        account: &str,
        spec: BucketSpec,
        want: u32,
        lane: Lane,
    ) -> Result<Grant, StoreError> {
        let account = account.to_owned();
        self.with_tx(move |tx, now| {
            let taken = select_bucket(tx, &account)?.take(spec, want, now, lane);
            if taken.write {
                write_bucket(tx, &account, &taken.next)?;
            }
            Ok(taken.grant)
        })
        .await
    }

    async fn give_back(
        &self,
        account: &str,
        spec: BucketSpec,
        tokens: u32,
        lane: Lane,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.with_tx(move |tx, now| {
            let state = select_bucket(tx, &account)?;
            if state.revision == 0 {
                return Ok(()); // nothing was ever taken from it
            }
            write_bucket(tx, &account, &state.give_back(spec, tokens, now, lane))
        })
        .await
    }

    async fn pause(&self, account: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.with_tx(move |tx, now| {
            let next = select_bucket(tx, &account)?.pause(to_millis(until), now);
            write_bucket(tx, &account, &next)
        })
        .await
    }
}

fn read_tenant(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, bool, String)> {
    Ok((row.get(0)?, row.get::<_, i64>(1)? != 0, row.get(2)?))
}

fn tenant_entry(
    (id, enabled, settings_toml): (String, bool, String),
) -> Result<TenantEntry, StoreError> {
    Ok(TenantEntry {
        tenant: TenantId::new(id.clone())
            .map_err(|e| corrupt(format!("tenant {id}"), e.to_string()))?,
        enabled,
        settings_toml,
    })
}

#[async_trait]
impl TenantDirectory for SqliteStore {
    async fn tenants(&self) -> Result<Vec<TenantEntry>, StoreError> {
        self.with(|conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT tenant, enabled, settings_toml FROM tenants ORDER BY tenant",
                )
                .map_err(db_error)?;
            let rows = stmt.query_map([], read_tenant).map_err(db_error)?;
            rows.map(|r| r.map_err(db_error).and_then(tenant_entry))
                .collect()
        })
        .await
    }

    async fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, StoreError> {
        let tenant = tenant.clone();
        self.with(move |conn, _| {
            conn.query_row(
                "SELECT tenant, enabled, settings_toml FROM tenants WHERE tenant = ?1",
                params![tenant.as_str()],
                read_tenant,
            )
            .optional()
            .map_err(db_error)?
            .map(tenant_entry)
            .transpose()
        })
        .await
    }

    async fn put_tenant(&self, entry: &TenantEntry) -> Result<(), StoreError> {
        let entry = entry.clone();
        self.with(move |conn, _| {
            conn.execute(
                "INSERT OR REPLACE INTO tenants (tenant, enabled, settings_toml) VALUES (?1, ?2, ?3)",
                params![entry.tenant.as_str(), entry.enabled as i64, entry.settings_toml],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store file written before records carried an order number (and buckets their lanes)
    /// opens, keeps its records and indexes the new ones.
    #[tokio::test]
    async fn a_store_file_from_before_order_numbers_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE ledger (
                    tenant TEXT NOT NULL, job TEXT NOT NULL, entity TEXT NOT NULL,
                    state TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL,
                    input_hash TEXT NOT NULL, revision INTEGER NOT NULL, created_ms INTEGER NOT NULL,
                    updated_ms INTEGER NOT NULL, due_ms INTEGER, detail TEXT,
                    sort_key TEXT NOT NULL, PRIMARY KEY (tenant, job, entity)
                 ) WITHOUT ROWID;
                 INSERT INTO ledger VALUES ('acme', 'order-download', 'SALE-0', 'done', NULL, 1,
                    'h', 2, 0, 0, NULL, NULL, '000000000000000#SALE-0');
                 INSERT INTO ledger VALUES ('acme', 'order-download', 'SALE-9', 'done', NULL, 1,
                    'h', 2, 0, 0, NULL, '{\"order_number\":\"SO-9\"}', '000000000000000#SALE-9');
                 INSERT INTO ledger VALUES ('acme', 'shipment-confirmation', 'WMS-9', 'done', NULL,
                    1, 'h', 2, 0, 0, NULL, '{\"confirmation\":{\"order_number\":\"SO-9\"}}',
                    '000000000000000#WMS-9');
                 INSERT INTO ledger VALUES ('acme', 'shipment-confirmation', 'WMS-8', 'failed',
                    'refused', 1, 'h', 2, 0, 0, NULL, '{\"sale_id\":\"SALE-9\"}',
                    '000000000000000#WMS-8');
                 CREATE TABLE buckets (
                    account TEXT PRIMARY KEY NOT NULL, milli_tokens INTEGER NOT NULL,
                    refilled_ms INTEGER NOT NULL, paused_ms INTEGER NOT NULL,
                    revision INTEGER NOT NULL
                 ) WITHOUT ROWID;
                 INSERT INTO buckets VALUES ('acct', 2000, 0, 0, 7);",
            )
            .unwrap();
        }
        let clock: Arc<dyn Clock> = Arc::new(dearsync_core::ManualClock::fixed());
        let store = SqliteStore::open(&path, clock).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let old = RecordKey::new(&tenant, Job::OrderDownload, "SALE-0");
        let kept = store.record(&old).await.unwrap().expect("kept");
        assert_eq!(kept.order_number, None);
        let mut new = NewRecord::new(
            RecordKey::new(&tenant, Job::OrderDownload, "SALE-1"),
            RecordState::Done,
            "h",
        );
        new.order_number = Some("SO-1".into());
        store.insert(new).await.unwrap();
        let found = store.records_of_order(&tenant, "SO-1", 10).await.unwrap();
        assert_eq!(found.len(), 1);
        // Records written before the column have their order number from their detail.
        let old_ones = store.records_of_order(&tenant, "SO-9", 10).await.unwrap();
        assert_eq!(
            old_ones.len(),
            3,
            "a failed shipment by its sale: {old_ones:?}"
        );
        // A bucket from before lanes keeps its tokens and takes lanes from now on.
        let spec = BucketSpec {
            capacity: 2,
            per_minute: 0,
        };
        let grant = store.take("acct", spec, 2, Lane::Shipments).await.unwrap();
        assert_eq!(grant.granted, 2);
        drop(store);
        // Opening again does not add the columns twice.
        SqliteStore::open(&path, Arc::new(dearsync_core::ManualClock::fixed())).unwrap();
    }
}
