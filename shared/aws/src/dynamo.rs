//! Every state port over one DynamoDB table (single-table design, `docs/state-table.md`).
//!
//! Each change to an existing item is one conditional write whose condition is what the caller
//! read (version, state + revision, holder + generation, token), so racing writers cannot both win.
//! No operation scans: reads are by key or a query on one partition of the table or its index.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TimeToLiveSpecification,
};
use chrono::{DateTime, Duration, Utc};
use dearsync_core::clock::{Clock, from_millis, to_millis};
use dearsync_core::memory::{ledger_sort_bound, ledger_sort_key, ledger_sort_start, new_token};
use dearsync_core::state::*;
use dearsync_core::{Job, RunHistory, RunLog, RunReport, StoreError, TenantId};

use crate::sdk_error_text;

type Item = HashMap<String, AttributeValue>;

/// The partition key attribute.
const PK: &str = "pk";
/// The sort key attribute.
const SK: &str = "sk";
/// The ledger-by-state index and its keys.
const GSI1: &str = "gsi1";
const GSI1PK: &str = "gsi1pk";
const GSI1SK: &str = "gsi1sk";
/// The ledger-by-order index and its keys: sparse (only records with an order number), keys only,
/// so a transition that keeps the order number costs the index nothing.
const GSI2: &str = "gsi2";
const GSI2PK: &str = "gsi2pk";
const GSI2SK: &str = "gsi2sk";
/// DynamoDB's TTL attribute (epoch seconds) on transient items.
const TTL: &str = "expires_at";
/// Optimistic retries of a read-modify-write (token buckets) before giving up.
const MAX_RETRIES: u32 = 20;

/// Every state port over one DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
}

/// Creates the state table as `docs/state-table.md` describes (on-demand, the `gsi1` index, TTL
/// on `expires_at`): for local use and tests; in AWS the SAM template creates it.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))
    };
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(GSI1)
        .key_schema(key(GSI1PK, KeyType::Hash)?)
        .key_schema(key(GSI1SK, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let by_order = GlobalSecondaryIndex::builder()
        .index_name(GSI2)
        .key_schema(key(GSI2PK, KeyType::Hash)?)
        .key_schema(key(GSI2SK, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK)?)
        .attribute_definitions(attr(SK)?)
        .attribute_definitions(attr(GSI1PK)?)
        .attribute_definitions(attr(GSI1SK)?)
        .attribute_definitions(attr(GSI2PK)?)
        .attribute_definitions(attr(GSI2SK)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(gsi)
        .global_secondary_indexes(by_order)
        .send()
        .await
        .map_err(|e| unavailable("create the state table", &e))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| unavailable("enable TTL on the state table", &e))?;
    Ok(())
}

fn unavailable<E: std::error::Error>(what: &str, e: &E) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB: cannot {what}: {}", sdk_error_text(e)))
}

/// True if the error is a failed condition (someone else wrote first).
fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Reads typed attributes out of an item, naming the item when something is off.
struct Reader<'a> {
    item: &'a Item,
    what: String,
}

impl Reader<'_> {
    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            key: self.what.clone(),
            detail,
        }
    }

    fn opt_s(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(other) => Err(self.corrupt(format!("{name} is {other:?}, expected text"))),
        }
    }

    fn s(&self, name: &str) -> Result<String, StoreError> {
        self.opt_s(name)?
            .ok_or_else(|| self.corrupt(format!("{name} is missing")))
    }

    fn opt_n(&self, name: &str) -> Result<Option<i64>, StoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(format!("{name} = {v} is not an integer"))),
            Some(other) => Err(self.corrupt(format!("{name} is {other:?}, expected a number"))),
        }
    }

    fn n(&self, name: &str) -> Result<i64, StoreError> {
        self.opt_n(name)?
            .ok_or_else(|| self.corrupt(format!("{name} is missing")))
    }

    fn bool(&self, name: &str) -> Result<bool, StoreError> {
        match self.item.get(name) {
            Some(AttributeValue::Bool(b)) => Ok(*b),
            other => Err(self.corrupt(format!("{name} is {other:?}, expected a boolean"))),
        }
    }
}

fn reader<'a>(item: &'a Item, what: impl std::fmt::Display) -> Reader<'a> {
    Reader {
        item,
        what: what.to_string(),
    }
}

// Key layouts (see docs/state-table.md).

fn tenant_pk(tenant: &TenantId) -> String {
    format!("T#{tenant}")
}

fn cursor_sk(key: &CursorKey) -> String {
    format!("CURSOR#{}#{}", key.job, key.name)
}

fn ledger_pk(tenant: &TenantId, job: Job) -> String {
    format!("T#{tenant}#J#{job}")
}

fn ledger_sk(entity: &str) -> String {
    format!("R#{entity}")
}

fn ledger_gsi1pk(tenant: &TenantId, job: Job, state: RecordState) -> String {
    format!("T#{tenant}#J#{job}#S#{state}")
}

fn ledger_gsi2pk(tenant: &TenantId, order_number: &str) -> String {
    format!("T#{tenant}#O#{order_number}")
}

fn ledger_gsi2sk(key: &RecordKey) -> String {
    format!("{}#{}", key.job, key.entity)
}

fn run_sk(job: Job) -> String {
    format!("RUN#{job}")
}

fn idempotency_pk(key: &IdempotencyKey) -> String {
    format!("T#{}#I#{}#{}", key.tenant, key.scope, key.key)
}

const IDEMPOTENCY_SK: &str = "IDEMPOTENCY";

fn lease_sk(key: &LeaseKey) -> String {
    format!("LEASE#{}#{}", key.job, key.name)
}

fn bucket_pk(account: &str) -> String {
    format!("A#{account}")
}

const BUCKET_SK: &str = "BUCKET";
const TENANTS_PK: &str = "TENANTS";

fn tenant_sk(tenant: &TenantId) -> String {
    format!("T#{tenant}")
}

/// DynamoDB's TTL (whole seconds), a little after the item's own expiry so that conditions, not
/// TTL's lazy deletion, decide when an item has lapsed.
fn ttl_secs(expires_ms: i64) -> i64 {
    expires_ms / 1000 + 60
}

fn record_item(rec: &LedgerRecord) -> Item {
    let mut item = Item::new();
    item.insert(PK.into(), s(ledger_pk(&rec.key.tenant, rec.key.job)));
    item.insert(SK.into(), s(ledger_sk(&rec.key.entity)));
    // An unlisted claim stays out of the state index: entering and leaving it would cost two
    // of the delivery's writes.
    if rec.is_listed() {
        item.insert(
            GSI1PK.into(),
            s(ledger_gsi1pk(&rec.key.tenant, rec.key.job, rec.state)),
        );
        item.insert(GSI1SK.into(), s(ledger_sort_key(rec)));
    } else {
        item.insert("unlisted".into(), AttributeValue::Bool(true));
    }
    item.insert("tenant".into(), s(rec.key.tenant.as_str()));
    item.insert("job".into(), s(rec.key.job.as_str()));
    item.insert("entity".into(), s(&rec.key.entity));
    item.insert("state".into(), s(rec.state.as_str()));
    if let Some(reason) = &rec.reason {
        item.insert("reason".into(), s(reason));
    }
    item.insert("attempts".into(), n(rec.attempts));
    item.insert("input_hash".into(), s(&rec.input_hash));
    item.insert("revision".into(), n(rec.revision));
    item.insert("created_ms".into(), n(to_millis(rec.created_at)));
    item.insert("updated_ms".into(), n(to_millis(rec.updated_at)));
    if let Some(due) = rec.due_at {
        item.insert("due_ms".into(), n(to_millis(due)));
    }
    if let Some(detail) = &rec.detail {
        item.insert("detail".into(), s(detail));
    }
    if let Some(number) = &rec.order_number {
        item.insert("order_number".into(), s(number));
        item.insert(GSI2PK.into(), s(ledger_gsi2pk(&rec.key.tenant, number)));
        item.insert(GSI2SK.into(), s(ledger_gsi2sk(&rec.key)));
    }
    item
}

fn record_from(item: &Item) -> Result<LedgerRecord, StoreError> {
    let r = reader(item, format!("ledger item {:?}", item.get(SK)));
    let tenant = TenantId::new(r.s("tenant")?).map_err(|e| r.corrupt(e.to_string()))?;
    let job_text = r.s("job")?;
    let state_text = r.s("state")?;
    Ok(LedgerRecord {
        key: RecordKey {
            tenant,
            job: Job::parse(&job_text)
                .ok_or_else(|| r.corrupt(format!("unknown job {job_text:?}")))?,
            entity: r.s("entity")?,
        },
        state: RecordState::parse(&state_text)
            .ok_or_else(|| r.corrupt(format!("unknown state {state_text:?}")))?,
        reason: r.opt_s("reason")?,
        attempts: u32::try_from(r.n("attempts")?)
            .map_err(|_| r.corrupt("attempts out of range".into()))?,
        input_hash: r.s("input_hash")?,
        revision: u64::try_from(r.n("revision")?)
            .map_err(|_| r.corrupt("revision out of range".into()))?,
        created_at: from_millis(r.n("created_ms")?),
        updated_at: from_millis(r.n("updated_ms")?),
        due_at: r.opt_n("due_ms")?.map(from_millis),
        detail: r.opt_s("detail")?,
        order_number: r.opt_s("order_number")?,
        unlisted: item.get("unlisted").is_some() && r.bool("unlisted")?,
    })
}

fn claim_from(key: &IdempotencyKey, item: &Item) -> Result<IdempotencyRecord, StoreError> {
    let r = reader(item, format!("idempotency {key}"));
    let status = match r.s("status")?.as_str() {
        "INPROGRESS" => IdempotencyStatus::InProgress,
        "COMPLETED" => IdempotencyStatus::Completed,
        other => return Err(r.corrupt(format!("unknown status {other:?}"))),
    };
    Ok(IdempotencyRecord {
        key: key.clone(),
        status,
        payload_hash: r.s("payload_hash")?,
        token: r.s("token")?,
        in_progress_until: from_millis(r.n("in_progress_until_ms")?),
        expires_at: from_millis(r.n("expires_ms")?),
        result: r.opt_s("result")?,
    })
}

fn bucket_from(account: &str, item: &Item) -> Result<BucketState, StoreError> {
    let r = reader(item, format!("bucket {account}"));
    Ok(BucketState {
        milli_tokens: r.n("milli_tokens")?,
        refilled_at_ms: r.n("refilled_ms")?,
        paused_until_ms: r.n("paused_ms")?,
        revision: u64::try_from(r.n("revision")?)
            .map_err(|_| r.corrupt("revision out of range".into()))?,
        lanes: {
            let text = r.opt_s("lanes")?.unwrap_or_default();
            LaneState::decode(&text).ok_or_else(|| r.corrupt(format!("lanes {text:?}")))?
        },
    })
}

fn tenant_from(item: &Item) -> Result<TenantEntry, StoreError> {
    let r = reader(item, format!("tenant item {:?}", item.get(SK)));
    Ok(TenantEntry {
        tenant: TenantId::new(r.s("tenant")?).map_err(|e| r.corrupt(e.to_string()))?,
        enabled: r.bool("enabled")?,
        settings_toml: r.s("settings_toml")?,
    })
}

impl DynamoStore {
    /// The store over `table`.
    pub fn new(client: Client, table: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn now_ms(&self) -> i64 {
        to_millis(self.clock.now())
    }

    /// A strongly consistent read of one item.
    async fn get(&self, pk: String, sk: &str, what: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(&format!("read {what}"), &e))?;
        Ok(out.item)
    }
}

#[async_trait]
impl CursorStore for DynamoStore {
    async fn cursor(&self, key: &CursorKey) -> Result<Option<Cursor>, StoreError> {
        let Some(item) = self
            .get(tenant_pk(&key.tenant), &cursor_sk(key), &key.to_string())
            .await?
        else {
            return Ok(None);
        };
        let r = reader(&item, key);
        Ok(Some(Cursor {
            value: r.s("value")?,
            version: u64::try_from(r.n("version")?)
                .map_err(|_| r.corrupt("version out of range".into()))?,
            updated_at: from_millis(r.n("updated_ms")?),
        }))
    }

    async fn save_cursor(
        &self,
        key: &CursorKey,
        value: &str,
        expected_version: Option<u64>,
    ) -> Result<Cursor, StoreError> {
        let now = self.now_ms();
        let version = expected_version.unwrap_or(0) + 1;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(tenant_pk(&key.tenant)))
            .item(SK, s(cursor_sk(key)))
            .item("value", s(value))
            .item("version", n(version))
            .item("updated_ms", n(now));
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
        };
        match put.send().await {
            Ok(_) => Ok(Cursor {
                value: value.to_owned(),
                version,
                updated_at: from_millis(now),
            }),
            Err(e) if is_condition_failed(&e) => Err(StoreError::conflict(
                key.to_string(),
                format!("expected version {expected_version:?}; it was saved by someone else"),
            )),
            Err(e) => Err(unavailable(&format!("save {key}"), &e)),
        }
    }
}

#[async_trait]
impl Ledger for DynamoStore {
    async fn record(&self, key: &RecordKey) -> Result<Option<LedgerRecord>, StoreError> {
        self.get(
            ledger_pk(&key.tenant, key.job),
            &ledger_sk(&key.entity),
            &key.to_string(),
        )
        .await?
        .map(|item| record_from(&item))
        .transpose()
    }

    async fn insert(&self, record: NewRecord) -> Result<LedgerRecord, StoreError> {
        check_detail_size("ledger detail", record.detail.as_deref())?;
        let rec = record.into_record(self.clock.now());
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record_item(&rec)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(rec),
            Err(e) if is_condition_failed(&e) => Err(StoreError::conflict(
                rec.key.to_string(),
                "it already exists",
            )),
            Err(e) => Err(unavailable(&format!("insert {}", rec.key), &e)),
        }
    }

    async fn transition(
        &self,
        current: &LedgerRecord,
        change: Transition,
    ) -> Result<LedgerRecord, StoreError> {
        if let DetailChange::Set(text) = &change.detail {
            check_detail_size("ledger detail", Some(text))?;
        }
        let next = current.apply(&change, self.clock.now());
        // The whole item is replaced, on condition that it is still what the caller read.
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record_item(&next)))
            .condition_expression("#state = :state AND revision = :revision")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", s(current.state.as_str()))
            .expression_attribute_values(":revision", n(current.revision))
            .send()
            .await;
        match result {
            Ok(_) => Ok(next),
            Err(e) if is_condition_failed(&e) => Err(StoreError::conflict(
                current.key.to_string(),
                format!(
                    "expected {} at revision {}; it changed or does not exist",
                    current.state, current.revision
                ),
            )),
            Err(e) => Err(unavailable(&format!("update {}", current.key), &e)),
        }
    }

    async fn list(&self, query: &LedgerQuery) -> Result<RecordPage, StoreError> {
        let gsi1pk = ledger_gsi1pk(&query.tenant, query.job, query.state);
        let limit = query.limit.clamp(1, 1000);
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .expression_attribute_values(":p", s(&gsi1pk))
            .limit(limit as i32);
        let start = query.changed_since.map(ledger_sort_start);
        let end = query.due_before.map(ledger_sort_bound);
        // No real key equals either bound (keys are `<ms>#<entity>`), so BETWEEN's inclusive ends
        // give "at or after the start" and "before the end".
        request = match (start, end) {
            (Some(a), Some(b)) => request
                .key_condition_expression("gsi1pk = :p AND gsi1sk BETWEEN :a AND :b")
                .expression_attribute_values(":a", s(a))
                .expression_attribute_values(":b", s(b)),
            (Some(a), None) => request
                .key_condition_expression("gsi1pk = :p AND gsi1sk >= :a")
                .expression_attribute_values(":a", s(a)),
            (None, Some(b)) => request
                .key_condition_expression("gsi1pk = :p AND gsi1sk < :b")
                .expression_attribute_values(":b", s(b)),
            (None, None) => request.key_condition_expression("gsi1pk = :p"),
        };
        if let Some(token) = &query.after {
            // This store's token is the last item's index sort key, `<ms>#<entity>`: the whole
            // start key can be rebuilt from it.
            let after = token.position();
            let entity = after
                .split_once('#')
                .map(|(_, e)| e)
                .ok_or_else(|| StoreError::Invalid(format!("bad ledger page token {after:?}")))?;
            request = request
                .exclusive_start_key(PK, s(ledger_pk(&query.tenant, query.job)))
                .exclusive_start_key(SK, s(ledger_sk(entity)))
                .exclusive_start_key(GSI1PK, s(&gsi1pk))
                .exclusive_start_key(GSI1SK, s(after));
        }
        let out = request
            .send()
            .await
            .map_err(|e| unavailable("list ledger records", &e))?;
        let items = out.items();
        let records = items
            .iter()
            .map(record_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (out.last_evaluated_key(), records.last()) {
            (Some(_), Some(last)) => Some(PageToken::from_store(ledger_sort_key(last))),
            _ => None,
        };
        Ok(RecordPage { records, next })
    }

    async fn unlisted_claims(
        &self,
        tenant: &TenantId,
        job: Job,
        after: Option<&PageToken>,
    ) -> Result<RecordPage, StoreError> {
        // One page of the job's partition (DynamoDB's 1 MB), only the unlisted claims kept; the
        // token is the last key read, so the next page starts after it.
        let pk = ledger_pk(tenant, job);
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :p")
            .filter_expression("attribute_exists(unlisted)")
            .expression_attribute_values(":p", s(&pk));
        if let Some(token) = after {
            request = request
                .exclusive_start_key(PK, s(&pk))
                .exclusive_start_key(SK, s(ledger_sk(token.position())));
        }
        let out = request
            .send()
            .await
            .map_err(|e| unavailable("read the unlisted claims", &e))?;
        let records = out
            .items()
            .iter()
            .map(record_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match out.last_evaluated_key().and_then(|k| k.get(SK)) {
            Some(AttributeValue::S(sk)) => Some(PageToken::from_store(
                sk.strip_prefix("R#").unwrap_or(sk).to_owned(),
            )),
            _ => None,
        };
        Ok(RecordPage { records, next })
    }

    async fn records_of_order(
        &self,
        tenant: &TenantId,
        order_number: &str,
        limit: usize,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI2)
            .key_condition_expression("gsi2pk = :p")
            .expression_attribute_values(":p", s(ledger_gsi2pk(tenant, order_number)))
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| unavailable(&format!("list the records of order {order_number}"), &e))?;
        // The index holds keys only: the records themselves are read in batches of 100.
        let keys: Vec<Item> = out
            .items()
            .iter()
            .map(|item| {
                [PK, SK]
                    .iter()
                    .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect()
            })
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        for batch in keys.chunks(100) {
            for item in self.batch_get(batch.to_vec()).await? {
                records.push(record_from(&item)?);
            }
        }
        Ok(records)
    }
}

impl DynamoStore {
    /// Reads up to 100 items by key, asking again for any DynamoDB left unprocessed. Only the
    /// operator's commands (`dearsync orders`) read this way, so the functions' roles do not grant
    /// `dynamodb:BatchGetItem` (scripts/check_template_matches_code.py counts `.table_name` calls).
    async fn batch_get(&self, mut keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        for attempt in 0..MAX_RETRIES {
            if keys.is_empty() {
                return Ok(items);
            }
            let request = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| unavailable("read ledger records", &e))?;
            if let Some(found) = out.responses.and_then(|mut r| r.remove(&self.table)) {
                items.extend(found);
            }
            keys = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
            if keys.is_empty() {
                return Ok(items);
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(format!(
            "DynamoDB left {} ledger records unread after {MAX_RETRIES} tries",
            keys.len()
        )))
    }
}

#[async_trait]
impl Idempotency for DynamoStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        payload_hash: &str,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        for _ in 0..MAX_RETRIES {
            let now = self.now_ms();
            let token = new_token();
            let expires_ms = now + terms.keep_for.num_milliseconds();
            // Powertools' condition: nothing there, or the record lapsed, or its worker ran out of time.
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(PK, s(idempotency_pk(key)))
                .item(SK, s(IDEMPOTENCY_SK))
                .item("status", s("INPROGRESS"))
                .item("payload_hash", s(payload_hash))
                .item("token", s(&token))
                .item(
                    "in_progress_until_ms",
                    n(now + terms.in_progress_for.num_milliseconds()),
                )
                .item("expires_ms", n(expires_ms))
                .item(TTL, n(ttl_secs(expires_ms)))
                .condition_expression(
                    "attribute_not_exists(pk) OR expires_ms <= :now \
                     OR (#status = :in_progress AND in_progress_until_ms <= :now)",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":in_progress", s("INPROGRESS"))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let existing = match result {
                Ok(_) => return Ok(Claim::Acquired { token }),
                Err(e) if is_condition_failed(&e) => {
                    let old = match e.as_service_error() {
                        Some(PutItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                        _ => None,
                    };
                    match old {
                        Some(item) => Some(item),
                        None => {
                            self.get(idempotency_pk(key), IDEMPOTENCY_SK, &key.to_string())
                                .await?
                        }
                    }
                }
                Err(e) => return Err(unavailable(&format!("claim idempotency key {key}"), &e)),
            };
            let existing = existing.map(|item| claim_from(key, &item)).transpose()?;
            match IdempotencyRecord::decide(existing.as_ref(), payload_hash, from_millis(now)) {
                // It lapsed (or vanished) between the write and the read: try again.
                ClaimDecision::Take => continue,
                ClaimDecision::Answer(claim) => return Ok(claim),
                ClaimDecision::Mismatch { stored } => {
                    return Err(StoreError::PayloadMismatch {
                        key: key.to_string(),
                        stored,
                        given: payload_hash.to_owned(),
                    });
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "idempotency key {key}: the claim kept changing under {MAX_RETRIES} attempts"
        )))
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: &str,
        result: &str,
        keep_for: Duration,
    ) -> Result<(), StoreError> {
        check_detail_size("idempotency result", Some(result))?;
        let expires_ms = self.now_ms() + keep_for.num_milliseconds();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(idempotency_pk(key)))
            .key(SK, s(IDEMPOTENCY_SK))
            .update_expression(
                "SET #status = :completed, #result = :result, expires_ms = :e, #ttl = :ttl",
            )
            .condition_expression("#token = :token AND #status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#result", "result")
            .expression_attribute_names("#token", "token")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":completed", s("COMPLETED"))
            .expression_attribute_values(":in_progress", s("INPROGRESS"))
            .expression_attribute_values(":result", s(result))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":e", n(expires_ms))
            .expression_attribute_values(":ttl", n(ttl_secs(expires_ms)))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StoreError::claim_lost(&key)),
            Err(e) => Err(unavailable(&format!("complete idempotency key {key}"), &e)),
        }
    }

    async fn renew_claim(
        &self,
        key: &IdempotencyKey,
        token: &str,
        in_progress_for: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        let until = self.now_ms() + in_progress_for.num_milliseconds();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(idempotency_pk(key)))
            .key(SK, s(IDEMPOTENCY_SK))
            .update_expression("SET in_progress_until_ms = :until")
            .condition_expression("#token = :token AND #status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":in_progress", s("INPROGRESS"))
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", n(until))
            .send()
            .await;
        match out {
            Ok(_) => Ok(from_millis(until)),
            Err(e) if is_condition_failed(&e) => Err(StoreError::claim_lost(&key)),
            Err(e) => Err(unavailable(&format!("renew idempotency key {key}"), &e)),
        }
    }

    async fn release_claim(&self, key: &IdempotencyKey, token: &str) -> Result<(), StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(idempotency_pk(key)))
            .key(SK, s(IDEMPOTENCY_SK))
            .condition_expression("#token = :token AND #status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":in_progress", s("INPROGRESS"))
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(unavailable(&format!("release idempotency key {key}"), &e)),
        }
    }

    async fn idempotency_record(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.get(idempotency_pk(key), IDEMPOTENCY_SK, &key.to_string())
            .await?
            .map(|item| claim_from(key, &item))
            .transpose()
    }
}

#[async_trait]
impl Leases for DynamoStore {
    async fn acquire(
        &self,
        key: &LeaseKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let now = self.now_ms();
        let expires_ms = now + ttl.num_milliseconds();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(tenant_pk(&key.tenant)))
            .key(SK, s(lease_sk(key)))
            .update_expression(
                "SET holder = :holder, expires_ms = :e, generation = if_not_exists(generation, :zero) + :one",
            )
            .condition_expression("attribute_not_exists(pk) OR expires_ms <= :now")
            .expression_attribute_values(":holder", s(holder))
            .expression_attribute_values(":e", n(expires_ms))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            // The item before: its generation, and whether its holder released it.
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match out {
            Ok(out) => {
                let empty = Item::new();
                let r = reader(out.attributes().unwrap_or(&empty), key);
                let before = u64::try_from(r.opt_n("generation")?.unwrap_or(0))
                    .map_err(|_| r.corrupt("generation out of range".into()))?;
                Ok(LeaseOutcome::Acquired(Lease {
                    key: key.clone(),
                    holder: holder.to_owned(),
                    generation: before + 1,
                    expires_at: from_millis(expires_ms),
                    // A released lease has no holder.
                    took_over: r.opt_s("holder")?.is_some_and(|h| !h.is_empty()),
                }))
            }
            Err(e) if is_condition_failed(&e) => {
                let old = match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                    _ => None,
                };
                let item = match old {
                    Some(item) => item,
                    None => self
                        .get(tenant_pk(&key.tenant), &lease_sk(key), &key.to_string())
                        .await?
                        .unwrap_or_default(),
                };
                let r = reader(&item, key);
                Ok(LeaseOutcome::Held {
                    holder: r.s("holder")?,
                    expires_at: from_millis(r.n("expires_ms")?),
                })
            }
            Err(e) => Err(unavailable(&format!("acquire {key}"), &e)),
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let expires_ms = self.now_ms() + ttl.num_milliseconds();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(tenant_pk(&lease.key.tenant)))
            .key(SK, s(lease_sk(&lease.key)))
            .update_expression("SET expires_ms = :e")
            .condition_expression("holder = :holder AND generation = :g")
            .expression_attribute_values(":holder", s(&lease.holder))
            .expression_attribute_values(":g", n(lease.generation))
            .expression_attribute_values(":e", n(expires_ms))
            .send()
            .await;
        match out {
            Ok(_) => Ok(Lease {
                expires_at: from_millis(expires_ms),
                ..lease.clone()
            }),
            Err(e) if is_condition_failed(&e) => Err(StoreError::conflict(
                lease.key.to_string(),
                format!("{} no longer holds it", lease.holder),
            )),
            Err(e) => Err(unavailable(&format!("renew {}", lease.key), &e)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        // The item (and its generation) stays, so the next holder's generation is still higher.
        self.end_lease(lease, "SET holder = :none, expires_ms = :zero", "release")
            .await
    }

    async fn hand_over_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        // Free at once; the holder stays, so the next one is told it took over.
        self.end_lease(lease, "SET expires_ms = :zero", "hand over")
            .await
    }
}

impl DynamoStore {
    /// Ends a held lease with `update` (which may use `:none` and `:zero`); `false` if it was no
    /// longer ours.
    async fn end_lease(&self, lease: &Lease, update: &str, what: &str) -> Result<bool, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(tenant_pk(&lease.key.tenant)))
            .key(SK, s(lease_sk(&lease.key)))
            .update_expression(update)
            .condition_expression("holder = :holder AND generation = :g")
            .expression_attribute_values(":holder", s(&lease.holder))
            .expression_attribute_values(":g", n(lease.generation))
            .expression_attribute_values(":zero", n(0));
        if update.contains(":none") {
            request = request.expression_attribute_values(":none", s(""));
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(&format!("{what} {}", lease.key), &e)),
        }
    }
}

impl DynamoStore {
    async fn read_bucket(&self, account: &str) -> Result<BucketState, StoreError> {
        self.get(bucket_pk(account), BUCKET_SK, &format!("bucket {account}"))
            .await?
            .map(|item| bucket_from(account, &item))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Reads the bucket, lets `change` say what to store (`None`: nothing) and what to answer,
    /// and writes it on the condition that nobody wrote in between, reading again (with a
    /// spread-out pause) when someone did.
    async fn update_bucket<R>(
        &self,
        account: &str,
        change: impl Fn(BucketState, i64) -> (Option<BucketState>, R),
    ) -> Result<R, StoreError> {
        for attempt in 0..MAX_RETRIES {
            let state = self.read_bucket(account).await?;
            let (next, answer) = change(state, self.now_ms());
            let written = match next {
                None => true,
                Some(next) => self.write_bucket(account, state.revision, &next).await?,
            };
            if written {
                return Ok(answer);
            }
            Self::backoff(attempt + 1).await;
        }
        Err(StoreError::Unavailable(format!(
            "the rate bucket of {account} kept changing under {MAX_RETRIES} attempts"
        )))
    }

    /// Writes `next` if the stored bucket is still at `prev_revision`; `false` if it moved.
    async fn write_bucket(
        &self,
        account: &str,
        prev_revision: u64,
        next: &BucketState,
    ) -> Result<bool, StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(bucket_pk(account)))
            .item(SK, s(BUCKET_SK))
            .item("milli_tokens", n(next.milli_tokens))
            .item("refilled_ms", n(next.refilled_at_ms))
            .item("paused_ms", n(next.paused_until_ms))
            .item("revision", n(next.revision))
            .item("lanes", s(next.lanes.encode()));
        put = if prev_revision == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("revision = :r")
                .expression_attribute_values(":r", n(prev_revision))
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(
                &format!("update the rate bucket of {account}"),
                &e,
            )),
        }
    }

    async fn backoff(attempt: u32) {
        // Spread racing writers apart: 5–25 ms × attempt.
        let ms = u64::from(attempt) * (5 + u64::from(uuid_nibble()) % 20);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

fn uuid_nibble() -> u8 {
    new_token().as_bytes()[0]
}

#[async_trait]
impl TokenBuckets for DynamoStore {
    async fn take(
        &self,
        account: &str,
        spec: BucketSpec,
        want: u32,
        lane: Lane,
    ) -> Result<Grant, StoreError> {
        // Nothing granted and no new waiting mark changes nothing worth writing: a read is enough.
        self.update_bucket(account, |state, now| {
            let taken = state.take(spec, want, now, lane);
            (taken.write.then_some(taken.next), taken.grant)
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
        self.update_bucket(account, |state, now| {
            // A bucket never written had nothing taken from it.
            let next = (state.revision > 0).then(|| state.give_back(spec, tokens, now, lane));
            (next, ())
        })
        .await
    }

    async fn pause(&self, account: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        self.update_bucket(account, |state, now| {
            (Some(state.pause(to_millis(until), now)), ())
        })
        .await
    }
}

#[async_trait]
impl TenantDirectory for DynamoStore {
    async fn tenants(&self) -> Result<Vec<TenantEntry>, StoreError> {
        let mut entries = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(TENANTS_PK))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("list tenants", &e))?;
            for item in out.items() {
                entries.push(tenant_from(item)?);
            }
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => break,
            }
        }
        Ok(entries)
    }

    async fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantEntry>, StoreError> {
        self.get(
            TENANTS_PK.to_owned(),
            &tenant_sk(tenant),
            &format!("tenant {tenant}"),
        )
        .await?
        .map(|item| tenant_from(&item))
        .transpose()
    }

    async fn put_tenant(&self, entry: &TenantEntry) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(TENANTS_PK))
            .item(SK, s(tenant_sk(&entry.tenant)))
            .item("tenant", s(entry.tenant.as_str()))
            .item("enabled", AttributeValue::Bool(entry.enabled))
            .item("settings_toml", s(&entry.settings_toml))
            .send()
            .await
            .map_err(|e| unavailable(&format!("save tenant {}", entry.tenant), &e))?;
        Ok(())
    }
}

#[async_trait]
impl RunLog for DynamoStore {
    async fn record_run(
        &self,
        tenant: &TenantId,
        job: Job,
        report: &RunReport,
    ) -> Result<RunHistory, StoreError> {
        let what = format!("the run log of {tenant}/{job}");
        for attempt in 0..dearsync_core::run_log::RECORD_RUN_ATTEMPTS {
            let previous = self.run_history(tenant, job).await?;
            let next = RunHistory::after(previous.as_ref(), report);
            let text = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt {
                key: what.clone(),
                detail: e.to_string(),
            })?;
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(PK, s(tenant_pk(tenant)))
                .item(SK, s(run_sk(job)))
                .item("history", s(text))
                .item("revision", n(next.revision));
            let put = match &previous {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(p) => put
                    .condition_expression("revision = :r")
                    .expression_attribute_values(":r", n(p.revision)),
            };
            match put.send().await {
                Ok(_) => return Ok(next),
                // Another run of this tenant and job wrote in between: read again, add ours
                // (jittered from the first retry on, so racing writers spread apart).
                Err(e) if is_condition_failed(&e) => Self::backoff(attempt + 1).await,
                Err(e) => return Err(unavailable(&format!("write {what}"), &e)),
            }
        }
        Err(StoreError::conflict(
            what,
            "other runs kept writing it; this run's report was not added",
        ))
    }

    async fn run_history(
        &self,
        tenant: &TenantId,
        job: Job,
    ) -> Result<Option<RunHistory>, StoreError> {
        let what = format!("the run log of {tenant}/{job}");
        let Some(item) = self.get(tenant_pk(tenant), &run_sk(job), &what).await? else {
            return Ok(None);
        };
        let r = reader(&item, &what);
        serde_json::from_str(&r.s("history")?)
            .map(Some)
            .map_err(|e| r.corrupt(e.to_string()))
    }
}
