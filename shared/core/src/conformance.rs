//! The conformance suite: one set of checks every [`StateStore`] must pass, run by each store
//! crate's tests against its own store (in memory, SQLite, DynamoDB).
//!
//! A store crate implements [`Factory`] and expands [`conformance_suite!`](crate::conformance_suite)
//! once; every check becomes its own `#[tokio::test]`. Races run many tasks at once through two
//! handles on the same state (two "processes"), and exactly one may win.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Duration;
use futures::future::join_all;

use crate::clock::ManualClock;
use crate::state::*;
use crate::{Job, RunOutcome, RunReport, StateStore, StoreError, TenantId};

/// How many tasks race in the race checks.
pub const RACERS: usize = 16;

/// A store under test, with a second handle on the same state and the clock both use.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn StateStore>,
    /// Another handle on the same state (another connection, client or process), or the same one.
    pub peer: Arc<dyn StateStore>,
    /// The clock the store reads; the checks move it.
    pub clock: Arc<ManualClock>,
    /// Whatever must live as long as the fixture (a temporary directory, a table to drop).
    pub keep_alive: Box<dyn std::any::Any + Send + Sync>,
}

/// Makes a fresh, empty store for each check.
#[async_trait]
pub trait Factory: Send + Sync {
    /// A fresh fixture: empty state, a clock at 2026-11-01T00:00:00Z.
    async fn fixture(&self) -> Fixture;
}

/// Expands to one `#[tokio::test]` per check, each calling `$factory` for its fixture.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            cursors_save_with_versions, cursor_race_has_one_winner,
            ledger_insert_and_read_back, ledger_insert_race_has_one_winner,
            ledger_transitions_are_conditional, ledger_transition_race_has_one_winner,
            ledger_lists_by_state_in_due_order_and_pages, ledger_lists_changed_since_and_pages,
            ledger_rejects_oversized_detail, ledger_leaves_unlisted_claims_out_of_listings,
            idempotency_follows_powertools, idempotency_lapses_and_takeover,
            idempotency_claim_race_has_one_winner, idempotency_claims_renew_until_lost,
            leases_exclude_and_expire, lease_race_has_one_winner,
            token_buckets_refill_and_pause, token_bucket_race_never_overdraws,
            token_buckets_serve_a_waiting_shipment_first,
            tenants_are_listed_and_replaced,
            ledger_finds_every_record_of_an_order, run_log_keeps_the_last_success_and_totals,
            run_log_counts_every_concurrent_run,
        );
    };
    (@tests $factory:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let factory = $factory;
                $crate::conformance::$check(&factory).await;
            }
        )+
    };
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant id")
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

/// Cursors: created once, then saved only at the version last read.
pub async fn cursors_save_with_versions(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let key = CursorKey::new(&t, Job::OrderDownload, "sales");
    assert_eq!(f.store.cursor(&key).await.unwrap(), None);
    let c1 = f
        .store
        .save_cursor(&key, "2026-11-01T00:00:00Z", None)
        .await
        .unwrap();
    assert_eq!((c1.version, c1.value.as_str()), (1, "2026-11-01T00:00:00Z"));
    assert_eq!(c1.updated_at, f.clock.now_for_tests());
    assert_conflict(f.store.save_cursor(&key, "x", None).await, "second create");
    let c2 = f.peer.save_cursor(&key, "v2", Some(1)).await.unwrap();
    assert_eq!(c2.version, 2);
    assert_conflict(
        f.store.save_cursor(&key, "stale", Some(1)).await,
        "stale save",
    );
    assert_eq!(f.store.cursor(&key).await.unwrap().unwrap().value, "v2");
    // Other names, jobs and tenants are separate cursors.
    for other in [
        CursorKey::new(&t, Job::OrderDownload, "other"),
        CursorKey::new(&t, Job::InventorySync, "sales"),
        CursorKey::new(&tenant("beta"), Job::OrderDownload, "sales"),
    ] {
        assert_eq!(f.store.cursor(&other).await.unwrap(), None, "{other}");
    }
}

/// Many writers save a cursor from the same version: exactly one succeeds.
pub async fn cursor_race_has_one_winner(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = CursorKey::new(&tenant("acme"), Job::OrderDownload, "sales");
    f.store.save_cursor(&key, "start", None).await.unwrap();
    let results = join_all((0..RACERS).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        let key = key.clone();
        tokio::spawn(async move {
            store
                .save_cursor(&key, &format!("racer-{i}"), Some(1))
                .await
        })
    }))
    .await;
    let wins: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("task"))
        .filter_map(|r| match r {
            Ok(c) => Some(c),
            Err(e) if e.is_conflict() => None,
            Err(e) => panic!("unexpected error: {e}"),
        })
        .collect();
    assert_eq!(wins.len(), 1, "exactly one racer saves");
    let stored = f.store.cursor(&key).await.unwrap().unwrap();
    assert_eq!((stored.version, &stored.value), (2, &wins[0].value));
}

fn new_record(t: &TenantId, entity: &str, state: RecordState) -> NewRecord {
    NewRecord::new(
        RecordKey::new(t, Job::OrderDownload, entity),
        state,
        format!("hash-{entity}"),
    )
}

/// Ledger records come back exactly as written.
pub async fn ledger_insert_and_read_back(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let now = f.clock.now_for_tests();
    let mut rec = new_record(&t, "SALE-1", RecordState::Skipped);
    rec.reason = Some("ship-to address has no postcode".into());
    rec.attempts = 2;
    rec.due_at = Some(now + Duration::hours(1));
    rec.detail = Some(r#"{"updated":"2026-11-01T00:00:00.123Z","note":"ünïcødé"}"#.into());
    let written = f.store.insert(rec.clone()).await.unwrap();
    assert_eq!(written, rec.clone().into_record(now));
    assert_eq!(
        f.peer.record(&written.key).await.unwrap(),
        Some(written.clone())
    );
    assert_conflict(f.peer.insert(rec).await, "duplicate insert");
    let missing = RecordKey::new(&t, Job::OrderDownload, "SALE-2");
    assert_eq!(f.store.record(&missing).await.unwrap(), None);
    let other_job = RecordKey::new(&t, Job::ShipmentConfirmation, "SALE-1");
    assert_eq!(f.store.record(&other_job).await.unwrap(), None);
}

/// Many workers insert the same record: exactly one succeeds.
pub async fn ledger_insert_race_has_one_winner(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let results = join_all((0..RACERS).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        let mut rec = new_record(&t, "SALE-1", RecordState::InFlight);
        rec.input_hash = format!("racer-{i}");
        tokio::spawn(async move { store.insert(rec).await })
    }))
    .await;
    let wins = count_wins(results);
    assert_eq!(wins, 1, "exactly one insert wins");
}

fn count_wins<T>(results: Vec<Result<Result<T, StoreError>, tokio::task::JoinError>>) -> usize {
    results
        .into_iter()
        .map(|r| r.expect("task"))
        .filter(|r| match r {
            Ok(_) => true,
            Err(e) if e.is_conflict() => false,
            Err(e) => panic!("unexpected error: {e}"),
        })
        .count()
}

/// Transitions apply only from the state and revision the caller read, and change only what they say.
pub async fn ledger_transitions_are_conditional(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let mut new = new_record(&t, "SALE-1", RecordState::Pending);
    new.detail = Some("{\"v\":1}".into());
    let pending = f.store.insert(new).await.unwrap();
    f.clock.advance(Duration::seconds(5));
    let deadline = f.clock.now_for_tests() + Duration::minutes(15);
    let in_flight = f
        .store
        .transition(
            &pending,
            Transition::to(RecordState::InFlight)
                .attempt()
                .due_at(deadline),
        )
        .await
        .unwrap();
    assert_eq!(in_flight.state, RecordState::InFlight);
    assert_eq!((in_flight.revision, in_flight.attempts), (2, 1));
    assert_eq!(in_flight.due_at, Some(deadline));
    assert_eq!(in_flight.created_at, pending.created_at);
    assert_eq!(in_flight.updated_at, f.clock.now_for_tests());
    assert_eq!(in_flight.detail.as_deref(), Some("{\"v\":1}"));
    assert_eq!(
        f.peer.record(&pending.key).await.unwrap(),
        Some(in_flight.clone())
    );

    // From a stale read (old state, old revision): refused, nothing changed.
    assert_conflict(
        f.peer
            .transition(&pending, Transition::to(RecordState::Done))
            .await,
        "transition from a stale read",
    );
    let mut wrong_state = in_flight.clone();
    wrong_state.state = RecordState::Failed;
    assert_conflict(
        f.store
            .transition(&wrong_state, Transition::to(RecordState::Done))
            .await,
        "transition from the wrong state",
    );
    assert_eq!(
        f.store.record(&pending.key).await.unwrap(),
        Some(in_flight.clone())
    );

    let failed = f
        .peer
        .transition(
            &in_flight,
            Transition::to(RecordState::Failed)
                .reason("HTTP 502 from the sink")
                .due_at(deadline),
        )
        .await
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("HTTP 502 from the sink"));
    let done = f
        .store
        .transition(
            &failed,
            Transition::to(RecordState::Done)
                .input_hash("hash-v2")
                .detail("{\"v\":2}"),
        )
        .await
        .unwrap();
    assert_eq!(
        (done.reason.as_deref(), done.due_at, done.revision),
        (None, None, 4)
    );
    assert_eq!(done.input_hash, "hash-v2");
    assert_eq!(done.detail.as_deref(), Some("{\"v\":2}"));
    let mut clear = Transition::to(RecordState::Pending);
    clear.detail = DetailChange::Clear;
    let cleared = f.store.transition(&done, clear).await.unwrap();
    assert_eq!(cleared.detail, None);
    assert_eq!(f.store.record(&done.key).await.unwrap(), Some(cleared));

    // A record that does not exist cannot be transitioned.
    let ghost = new_record(&t, "GHOST", RecordState::Pending).into_record(f.clock.now_for_tests());
    assert_conflict(
        f.store
            .transition(&ghost, Transition::to(RecordState::Done))
            .await,
        "transition of a missing record",
    );
    assert_eq!(f.store.record(&ghost.key).await.unwrap(), None);
}

/// Many workers move the same record from one read: exactly one succeeds.
pub async fn ledger_transition_race_has_one_winner(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let pending = f
        .store
        .insert(new_record(&t, "SALE-1", RecordState::Pending))
        .await
        .unwrap();
    let results = join_all((0..RACERS).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        let pending = pending.clone();
        tokio::spawn(async move {
            store
                .transition(
                    &pending,
                    Transition::to(RecordState::InFlight)
                        .attempt()
                        .detail(format!("racer-{i}")),
                )
                .await
        })
    }))
    .await;
    assert_eq!(count_wins(results), 1, "exactly one transition wins");
    let stored = f.store.record(&pending.key).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.revision, stored.attempts),
        (RecordState::InFlight, 2, 1)
    );
}

/// Listings: one state, oldest due first, filtered by due time, paged without loss or repeats.
pub async fn ledger_lists_by_state_in_due_order_and_pages(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let start = f.clock.now_for_tests();
    // 25 failed records due at start + (25 - i) minutes, so insertion order ≠ due order.
    for i in 0..25i64 {
        let mut rec = new_record(&t, &format!("SALE-{i:02}"), RecordState::Failed);
        rec.due_at = Some(start + Duration::minutes(25 - i));
        f.store.insert(rec).await.unwrap();
    }
    // Noise: other states, jobs and tenants.
    f.store
        .insert(new_record(&t, "DONE-1", RecordState::Done))
        .await
        .unwrap();
    let mut other_job = new_record(&t, "SALE-99", RecordState::Failed);
    other_job.key.job = Job::InventorySync;
    f.store.insert(other_job).await.unwrap();
    f.store
        .insert(new_record(&tenant("beta"), "SALE-98", RecordState::Failed))
        .await
        .unwrap();

    let mut query = LedgerQuery::new(&t, Job::OrderDownload, RecordState::Failed);
    query.limit = 7;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = f.peer.list(&query).await.unwrap();
        pages += 1;
        assert!(page.records.len() <= 7);
        seen.extend(page.records.iter().map(|r| r.key.entity.clone()));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("SALE-{i:02}")).collect();
    assert_eq!(
        seen, expected,
        "every failed record once, earliest due first"
    );

    // Due now + 10 minutes, inclusive: SALE-24 (due +1) … SALE-15 (due +10).
    let mut due = LedgerQuery::new(&t, Job::OrderDownload, RecordState::Failed);
    due.due_before = Some(start + Duration::minutes(10));
    let page = f.store.list(&due).await.unwrap();
    let entities: Vec<_> = page.records.iter().map(|r| r.key.entity.as_str()).collect();
    assert_eq!(entities.len(), 10, "{entities:?}");
    assert_eq!((entities[0], entities[9]), ("SALE-24", "SALE-15"));
    assert_eq!(page.next, None);

    // A transition moves a record between listings.
    let rec = f
        .store
        .record(&RecordKey::new(&t, Job::OrderDownload, "SALE-24"))
        .await
        .unwrap()
        .unwrap();
    f.store
        .transition(&rec, Transition::to(RecordState::Done))
        .await
        .unwrap();
    let done = f
        .store
        .list(&LedgerQuery::new(&t, Job::OrderDownload, RecordState::Done))
        .await
        .unwrap();
    let done: HashSet<_> = done.records.iter().map(|r| r.key.entity.as_str()).collect();
    assert_eq!(done, HashSet::from(["DONE-1", "SALE-24"]));
    let failed = f
        .store
        .list(&LedgerQuery::new(
            &t,
            Job::OrderDownload,
            RecordState::Failed,
        ))
        .await
        .unwrap();
    assert_eq!(failed.records.len(), 24);
}

/// An unlisted claim is read back as one but not listed in flight; any next state is listed (a
/// failed retry, a done delivery), and claiming it again unlisted leaves the listing again.
pub async fn ledger_leaves_unlisted_claims_out_of_listings(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let in_flight = || LedgerQuery::new(&t, Job::OrderDownload, RecordState::InFlight);
    let listed = |page: RecordPage| -> Vec<String> {
        page.records.into_iter().map(|r| r.key.entity).collect()
    };
    let mut quiet = new_record(&t, "QUIET-1", RecordState::InFlight);
    quiet.unlisted = true;
    let quiet = f.store.insert(quiet).await.unwrap();
    assert!(quiet.unlisted && !quiet.is_listed());
    f.store
        .insert(new_record(&t, "LOUD-1", RecordState::InFlight))
        .await
        .unwrap();
    // Unlisted only in flight: the flag means nothing in another state.
    let mut skipped = new_record(&t, "SKIP-1", RecordState::Skipped);
    skipped.unlisted = true;
    assert!(f.store.insert(skipped).await.unwrap().is_listed());

    let read = f.peer.record(&quiet.key).await.unwrap().unwrap();
    assert_eq!(read, quiet, "read back unlisted");
    // Found by reading the records: every unlisted claim, page by page, and only those (10 KB
    // each: more than one of DynamoDB's 1 MB pages).
    for i in 0..(UNLISTED_PAGE + 5) {
        let mut claim = new_record(&t, &format!("QUIET-{:03}", i + 2), RecordState::InFlight);
        claim.unlisted = true;
        claim.detail = Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(10 * 1024)));
        f.store.insert(claim).await.unwrap();
    }
    let other = tenant("other");
    let mut theirs = new_record(&other, "QUIET-X", RecordState::InFlight);
    theirs.unlisted = true;
    f.store.insert(theirs).await.unwrap();
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let page = f
            .peer
            .unlisted_claims(&t, Job::OrderDownload, after.as_ref())
            .await
            .unwrap();
        assert!(page.records.iter().all(|r| !r.is_listed()));
        found.extend(page.records.into_iter().map(|r| r.key.entity));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(found.len(), UNLISTED_PAGE + 6, "{found:?}");
    assert!(found.contains(&"QUIET-1".to_owned()) && !found.contains(&"LOUD-1".to_owned()));
    let unique: HashSet<&String> = found.iter().collect();
    assert_eq!(unique.len(), found.len(), "no claim twice");
    assert_eq!(
        listed(f.store.list(&in_flight()).await.unwrap()),
        ["LOUD-1"]
    );

    let failed = f
        .store
        .transition(&read, Transition::to(RecordState::Failed).unlisted())
        .await
        .unwrap();
    assert!(failed.is_listed(), "only a claim is unlisted");
    let failed_list = LedgerQuery::new(&t, Job::OrderDownload, RecordState::Failed);
    assert_eq!(
        listed(f.store.list(&failed_list).await.unwrap()),
        ["QUIET-1"]
    );

    let again = f
        .store
        .transition(&failed, Transition::to(RecordState::InFlight).unlisted())
        .await
        .unwrap();
    assert!(!again.is_listed());
    assert!(f.store.list(&failed_list).await.unwrap().records.is_empty());
    assert_eq!(
        listed(f.store.list(&in_flight()).await.unwrap()),
        ["LOUD-1"]
    );
    let done = f
        .store
        .transition(&again, Transition::to(RecordState::Done))
        .await
        .unwrap();
    assert!(done.is_listed());
    let done_list = LedgerQuery::new(&t, Job::OrderDownload, RecordState::Done);
    assert_eq!(listed(f.store.list(&done_list).await.unwrap()), ["QUIET-1"]);
    assert_eq!(f.peer.record(&done.key).await.unwrap().unwrap(), done);
    let first = f
        .store
        .unlisted_claims(&t, Job::OrderDownload, None)
        .await
        .unwrap();
    assert!(
        first.records.iter().all(|r| r.key.entity != "QUIET-1"),
        "done is listed"
    );
}

/// A time bound: only records that changed at or after it, paged with the store's own tokens,
/// also together with a due bound.
pub async fn ledger_lists_changed_since_and_pages(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let start = f.clock.now_for_tests();
    // A record written first and moved to done last counts as changed last.
    let late = f
        .store
        .insert(new_record(&t, "LATE", RecordState::Pending))
        .await
        .unwrap();
    // 30 done records, one a minute: DONE-00 at start … DONE-29 at start + 29 min.
    for i in 0..30i64 {
        f.store
            .insert(new_record(&t, &format!("DONE-{i:02}"), RecordState::Done))
            .await
            .unwrap();
        f.clock.advance(Duration::minutes(1));
    }
    f.store
        .transition(&late, Transition::to(RecordState::Done))
        .await
        .unwrap();

    let list_all = |mut query: LedgerQuery| {
        let store = f.peer.clone();
        async move {
            let mut seen = Vec::new();
            for _ in 0..20 {
                let page = store.list(&query).await.unwrap();
                assert!(page.records.len() <= query.limit);
                seen.extend(page.records.iter().map(|r| r.key.entity.clone()));
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => return seen,
                }
            }
            panic!("paging does not end");
        }
    };
    // Inclusive: DONE-20 changed exactly at the bound.
    let mut query = LedgerQuery::new(&t, Job::OrderDownload, RecordState::Done);
    query.changed_since = Some(start + Duration::minutes(20));
    query.limit = 3;
    let mut expected: Vec<String> = (20..30).map(|i| format!("DONE-{i:02}")).collect();
    expected.push("LATE".into());
    assert_eq!(
        list_all(query.clone()).await,
        expected,
        "changed since +20 min, oldest first"
    );

    // Both bounds: +5 … +9 minutes.
    query.due_before = Some(start + Duration::minutes(9));
    query.changed_since = Some(start + Duration::minutes(5));
    let expected: Vec<String> = (5..10).map(|i| format!("DONE-{i:02}")).collect();
    assert_eq!(
        list_all(query.clone()).await,
        expected,
        "between +5 and +9 min"
    );

    // A bound after everything lists nothing.
    query.due_before = None;
    query.changed_since = Some(start + Duration::days(1));
    assert!(list_all(query).await.is_empty());
}

/// Oversized details are refused with a clear error, not truncated.
pub async fn ledger_rejects_oversized_detail(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let mut rec = new_record(&t, "BIG", RecordState::Pending);
    rec.detail = Some("x".repeat(MAX_DETAIL_BYTES + 1));
    match f.store.insert(rec).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("bytes"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let ok = f
        .store
        .insert(new_record(&t, "BIG", RecordState::Pending))
        .await
        .unwrap();
    let big = Transition::to(RecordState::Done).detail("y".repeat(MAX_DETAIL_BYTES + 1));
    assert!(matches!(
        f.store.transition(&ok, big).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(f.store.record(&ok.key).await.unwrap(), Some(ok));
}

fn terms() -> ClaimTerms {
    ClaimTerms {
        in_progress_for: Duration::minutes(5),
        keep_for: Duration::days(30),
    }
}

/// Claim, repeat, mismatch, complete, stored result, release: Powertools' idempotency rules.
pub async fn idempotency_follows_powertools(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = IdempotencyKey::new(&tenant("acme"), "shipment", "WMS-SHP-1001");
    let token = match f.store.claim(&key, "h1", terms()).await.unwrap() {
        Claim::Acquired { token } => token,
        other => panic!("first claim: {other:?}"),
    };
    let until = f.clock.now_for_tests() + Duration::minutes(5);
    assert_eq!(
        f.peer.claim(&key, "h1", terms()).await.unwrap(),
        Claim::InProgress { until }
    );
    match f.peer.claim(&key, "h2", terms()).await {
        Err(StoreError::PayloadMismatch { stored, given, .. }) => {
            assert_eq!((stored.as_str(), given.as_str()), ("h1", "h2"))
        }
        other => panic!("claim with another payload: {other:?}"),
    }
    assert_conflict(
        f.peer
            .complete(&key, "not-the-token", "{}", Duration::days(30))
            .await,
        "complete with a wrong token",
    );
    f.store
        .complete(&key, &token, r#"{"fulfilment":"F-1"}"#, Duration::days(30))
        .await
        .unwrap();
    assert_eq!(
        f.peer.claim(&key, "h1", terms()).await.unwrap(),
        Claim::Completed {
            result: r#"{"fulfilment":"F-1"}"#.into()
        }
    );
    assert!(matches!(
        f.peer.claim(&key, "h2", terms()).await,
        Err(StoreError::PayloadMismatch { .. })
    ));
    let rec = f.store.idempotency_record(&key).await.unwrap().unwrap();
    assert_eq!(rec.status, IdempotencyStatus::Completed);
    assert_eq!(rec.expires_at, f.clock.now_for_tests() + Duration::days(30));
    // Completing twice is refused (the claim is no longer in progress).
    assert_conflict(
        f.store
            .complete(&key, &token, "{}", Duration::days(1))
            .await,
        "second complete",
    );

    // A released claim can be taken again at once.
    let other = IdempotencyKey::new(&tenant("acme"), "shipment", "WMS-SHP-1002");
    let Claim::Acquired { token } = f.store.claim(&other, "h1", terms()).await.unwrap() else {
        panic!("claim")
    };
    f.store.release_claim(&other, "wrong-token").await.unwrap();
    assert!(matches!(
        f.peer.claim(&other, "h1", terms()).await.unwrap(),
        Claim::InProgress { .. }
    ));
    f.store.release_claim(&other, &token).await.unwrap();
    assert_eq!(f.store.idempotency_record(&other).await.unwrap(), None);
    assert!(matches!(
        f.peer.claim(&other, "h2", terms()).await.unwrap(),
        Claim::Acquired { .. }
    ));
    // Keys are per tenant and scope.
    for k in [
        IdempotencyKey::new(&tenant("beta"), "shipment", "WMS-SHP-1001"),
        IdempotencyKey::new(&tenant("acme"), "snapshot", "WMS-SHP-1001"),
    ] {
        assert!(matches!(
            f.store.claim(&k, "h9", terms()).await.unwrap(),
            Claim::Acquired { .. }
        ));
    }
}

/// An in-progress claim whose worker died is taken over after its expiry; the dead worker's
/// token no longer completes; completed records lapse after `keep_for`.
pub async fn idempotency_lapses_and_takeover(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = IdempotencyKey::new(&tenant("acme"), "shipment", "WMS-SHP-1");
    let Claim::Acquired { token: dead } = f.store.claim(&key, "h1", terms()).await.unwrap() else {
        panic!("claim")
    };
    f.clock.advance(Duration::minutes(4));
    assert!(matches!(
        f.peer.claim(&key, "h1", terms()).await.unwrap(),
        Claim::InProgress { .. }
    ));
    f.clock.advance(Duration::minutes(1));
    let Claim::Acquired { token: live } = f.peer.claim(&key, "h1", terms()).await.unwrap() else {
        panic!("takeover after expiry")
    };
    assert_ne!(dead, live);
    assert_conflict(
        f.store
            .complete(&key, &dead, "{\"by\":\"dead\"}", Duration::days(1))
            .await,
        "dead worker completes",
    );
    f.store.release_claim(&key, &dead).await.unwrap();
    f.peer
        .complete(&key, &live, "{\"by\":\"live\"}", Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        f.store.claim(&key, "h1", terms()).await.unwrap(),
        Claim::Completed {
            result: "{\"by\":\"live\"}".into()
        }
    );
    f.clock.advance(Duration::hours(1));
    // Lapsed: a repeat runs again, even with another payload.
    assert!(matches!(
        f.store.claim(&key, "h2", terms()).await.unwrap(),
        Claim::Acquired { .. }
    ));
}

/// A renewed claim keeps a peer out past its first lapse time; a claim that lapsed unrenewed and
/// was taken over, or that completed, no longer renews; a late renewal nobody overtook still does.
pub async fn idempotency_claims_renew_until_lost(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = IdempotencyKey::new(&tenant("acme"), "snapshot", "S-9@main");
    let short = ClaimTerms {
        in_progress_for: Duration::seconds(60),
        keep_for: Duration::days(30),
    };
    let Claim::Acquired { token } = f.store.claim(&key, "h1", short).await.unwrap() else {
        panic!("claim")
    };
    f.clock.advance(Duration::seconds(40));
    let until = f
        .store
        .renew_claim(&key, &token, Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(until, f.clock.now_for_tests() + Duration::seconds(60));
    f.clock.advance(Duration::seconds(40));
    assert_eq!(
        f.peer.claim(&key, "h1", short).await.unwrap(),
        Claim::InProgress { until },
        "renewed: still held 80 s after a 60 s claim"
    );
    assert_eq!(
        f.store
            .idempotency_record(&key)
            .await
            .unwrap()
            .unwrap()
            .in_progress_until,
        until
    );
    assert_conflict(
        f.peer
            .renew_claim(&key, "not-the-token", Duration::seconds(60))
            .await,
        "renew with a wrong token",
    );
    // Past its time but not taken over: the holder may still renew.
    f.clock.advance(Duration::seconds(30));
    f.store
        .renew_claim(&key, &token, Duration::seconds(60))
        .await
        .unwrap();
    // Not renewed again: it lapses and is taken over; the old holder learns it lost.
    f.clock.advance(Duration::seconds(61));
    let Claim::Acquired { token: peer } = f.peer.claim(&key, "h1", short).await.unwrap() else {
        panic!("takeover after the renewed claim lapsed")
    };
    assert_conflict(
        f.store
            .renew_claim(&key, &token, Duration::seconds(60))
            .await,
        "renew a claim taken over",
    );
    f.peer
        .complete(&key, &peer, "{}", Duration::days(30))
        .await
        .unwrap();
    assert_conflict(
        f.peer.renew_claim(&key, &peer, Duration::seconds(60)).await,
        "renew a completed claim",
    );
    let missing = IdempotencyKey::new(&tenant("acme"), "snapshot", "never-claimed");
    assert_conflict(
        f.store
            .renew_claim(&missing, "t", Duration::seconds(60))
            .await,
        "renew a claim that does not exist",
    );
}

/// Many workers claim one key at once: exactly one acquires it; the rest see it in progress.
pub async fn idempotency_claim_race_has_one_winner(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = IdempotencyKey::new(&tenant("acme"), "shipment", "WMS-SHP-RACE");
    let results = join_all((0..RACERS).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        let key = key.clone();
        tokio::spawn(async move { store.claim(&key, "h1", terms()).await })
    }))
    .await;
    let mut acquired = 0;
    for r in results {
        match r.expect("task").expect("claim") {
            Claim::Acquired { .. } => acquired += 1,
            Claim::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acquired, 1, "exactly one claim acquires");
}

/// Leases: held until released or expired; a crashed holder's lease is taken over after expiry.
pub async fn leases_exclude_and_expire(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = LeaseKey::new(&tenant("acme"), Job::OrderDownload);
    let ttl = Duration::minutes(5);
    let LeaseOutcome::Acquired(a) = f.store.acquire(&key, "run-a", ttl).await.unwrap() else {
        panic!("first acquire")
    };
    assert_eq!(a.expires_at, f.clock.now_for_tests() + ttl);
    assert!(!a.took_over, "a first lease takes over from no one");
    match f.peer.acquire(&key, "run-b", ttl).await.unwrap() {
        LeaseOutcome::Held { holder, expires_at } => {
            assert_eq!((holder.as_str(), expires_at), ("run-a", a.expires_at))
        }
        other => panic!("second acquire: {other:?}"),
    }
    // Other jobs and tenants have their own leases.
    assert!(matches!(
        f.peer
            .acquire(
                &LeaseKey::new(&tenant("acme"), Job::InventorySync),
                "run-b",
                ttl
            )
            .await
            .unwrap(),
        LeaseOutcome::Acquired(_)
    ));
    f.clock.advance(Duration::minutes(4));
    let a = f.store.renew(&a, ttl).await.unwrap();
    f.clock.advance(Duration::minutes(4));
    assert!(matches!(
        f.peer.acquire(&key, "run-b", ttl).await.unwrap(),
        LeaseOutcome::Held { .. }
    ));
    // run-a crashes: after expiry run-b takes over with a higher generation.
    f.clock.advance(Duration::minutes(1));
    let LeaseOutcome::Acquired(b) = f.peer.acquire(&key, "run-b", ttl).await.unwrap() else {
        panic!("takeover after expiry")
    };
    assert!(b.generation > a.generation);
    assert!(b.took_over, "run-a never released it");
    assert!(
        f.peer.renew(&b, ttl).await.unwrap().took_over,
        "kept by a renewal"
    );
    assert_conflict(f.store.renew(&a, ttl).await, "the crashed holder renews");
    assert!(
        !f.store.release_lease(&a).await.unwrap(),
        "the crashed holder cannot release"
    );
    assert!(matches!(
        f.store.acquire(&key, "run-c", ttl).await.unwrap(),
        LeaseOutcome::Held { .. }
    ));
    assert!(f.peer.release_lease(&b).await.unwrap());
    let LeaseOutcome::Acquired(c) = f.store.acquire(&key, "run-c", ttl).await.unwrap() else {
        panic!("acquire after release")
    };
    assert!(c.generation > b.generation);
    assert!(!c.took_over, "run-b released it");
    assert_eq!(c.generation, b.generation + 1);
    // run-c hands it over: free at once, and the next holder is told it took over.
    assert!(f.store.hand_over_lease(&c).await.unwrap());
    let LeaseOutcome::Acquired(d) = f.peer.acquire(&key, "run-d", ttl).await.unwrap() else {
        panic!("acquire at once after a hand-over")
    };
    assert!(d.took_over, "run-c handed it over");
    assert_eq!(d.generation, c.generation + 1);
    assert!(
        !f.store.hand_over_lease(&c).await.unwrap(),
        "a former holder cannot hand it over"
    );
    assert!(matches!(
        f.store.acquire(&key, "run-e", ttl).await.unwrap(),
        LeaseOutcome::Held { .. }
    ));
}

/// Many runs start at once: exactly one gets the lease.
pub async fn lease_race_has_one_winner(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let key = LeaseKey::new(&tenant("acme"), Job::InventorySync);
    let results = join_all((0..RACERS).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        let key = key.clone();
        tokio::spawn(async move {
            store
                .acquire(&key, &format!("run-{i}"), Duration::minutes(5))
                .await
        })
    }))
    .await;
    let winners: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r.expect("task").expect("acquire") {
            LeaseOutcome::Acquired(l) => Some(l.holder),
            LeaseOutcome::Held { .. } => None,
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one run holds the lease: {winners:?}"
    );
}

const SPEC: BucketSpec = BucketSpec {
    capacity: 5,
    per_minute: 60,
};

/// The tokens a take from `account`'s bucket got.
async fn granted(store: &Arc<dyn StateStore>, account: &str, want: u32, lane: Lane) -> u32 {
    store.take(account, SPEC, want, lane).await.unwrap().granted
}

/// Buckets: start full, refill at the rate up to capacity, take back what was not spent, grant
/// nothing while paused.
pub async fn token_buckets_refill_and_pause(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let take = |store: &Arc<dyn StateStore>, want: u32| {
        let store = store.clone();
        async move { store.take("acct-1", SPEC, want, Lane::Poll).await.unwrap() }
    };
    assert_eq!(take(&f.store, 3).await.granted, 3);
    assert_eq!(take(&f.peer, 3).await.granted, 2, "as many as there are");
    let g = take(&f.store, 3).await;
    assert_eq!(
        (g.granted, g.retry_after.as_millis()),
        (0, 1000),
        "until one is there"
    );
    f.clock.advance(Duration::milliseconds(2500));
    assert_eq!(take(&f.store, 3).await.granted, 2);
    assert_eq!(take(&f.store, 1).await.granted, 0);
    // Tokens given back are there again.
    f.peer
        .give_back("acct-1", SPEC, 2, Lane::Poll)
        .await
        .unwrap();
    assert_eq!(take(&f.store, 2).await.granted, 2);
    f.clock.advance(Duration::hours(1));
    assert_eq!(
        granted(&f.store, "acct-1", 9, Lane::Poll).await,
        5,
        "capped at capacity"
    );
    // Another account has its own bucket.
    assert_eq!(granted(&f.store, "acct-2", 1, Lane::Poll).await, 1);
    // DEAR throttled acct-2: nothing for 30 s, whatever was in the bucket.
    f.peer
        .pause("acct-2", f.clock.now_for_tests() + Duration::seconds(30))
        .await
        .unwrap();
    let g = f.store.take("acct-2", SPEC, 1, Lane::Poll).await.unwrap();
    assert_eq!((g.granted, g.retry_after.as_secs()), (0, 30));
    f.clock.advance(Duration::seconds(31));
    assert_eq!(granted(&f.store, "acct-2", 1, Lane::Poll).await, 1);
}

/// Lanes across processes: a shipment refused in one process is marked waiting in the store, so a
/// poll in another yields the next token to it.
pub async fn token_buckets_serve_a_waiting_shipment_first(factory: &dyn Factory) {
    let f = factory.fixture().await;
    assert_eq!(granted(&f.store, "acct-l", 5, Lane::Poll).await, 5);
    let g = f
        .peer
        .take("acct-l", SPEC, 1, Lane::Shipments)
        .await
        .unwrap();
    assert_eq!((g.granted, g.retry_after.as_millis()), (0, 1000));
    f.clock.advance(Duration::milliseconds(1000));
    let g = f.store.take("acct-l", SPEC, 1, Lane::Poll).await.unwrap();
    assert_eq!(g.granted, 0, "the poll yields to the waiting shipment");
    assert_eq!(granted(&f.peer, "acct-l", 1, Lane::Shipments).await, 1);
    f.clock.advance(Duration::milliseconds(1000));
    assert_eq!(granted(&f.store, "acct-l", 1, Lane::Poll).await, 1);
}

/// Many processes take from one bucket at once: together they never get more than it holds.
pub async fn token_bucket_race_never_overdraws(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let results = join_all((0..RACERS).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        tokio::spawn(async move { store.take("acct-race", SPEC, 1, Lane::Poll).await })
    }))
    .await;
    let granted: u32 = results
        .into_iter()
        .map(|r| r.expect("task").expect("take").granted)
        .sum();
    assert_eq!(
        granted, SPEC.capacity,
        "the clock stood still: exactly the capacity is granted"
    );
}

/// Tenants: listed in id order, replaced in place.
pub async fn tenants_are_listed_and_replaced(factory: &dyn Factory) {
    let f = factory.fixture().await;
    assert!(f.store.tenants().await.unwrap().is_empty());
    let entry = |id: &str, enabled: bool, toml: &str| TenantEntry {
        tenant: tenant(id),
        enabled,
        settings_toml: toml.to_owned(),
    };
    f.store.put_tenant(&entry("zeta", true, "")).await.unwrap();
    f.store
        .put_tenant(&entry(
            "acme",
            false,
            "[order_download]\nsale_status = \"Any\"\n",
        ))
        .await
        .unwrap();
    f.peer.put_tenant(&entry("beta", true, "")).await.unwrap();
    let ids: Vec<_> = f
        .peer
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.tenant.to_string())
        .collect();
    assert_eq!(ids, ["acme", "beta", "zeta"]);
    assert_eq!(
        f.store.tenant(&tenant("acme")).await.unwrap(),
        Some(entry(
            "acme",
            false,
            "[order_download]\nsale_status = \"Any\"\n"
        ))
    );
    f.store.put_tenant(&entry("acme", true, "")).await.unwrap();
    assert_eq!(
        f.peer.tenant(&tenant("acme")).await.unwrap(),
        Some(entry("acme", true, ""))
    );
    assert_eq!(f.peer.tenants().await.unwrap().len(), 3);
    assert_eq!(f.store.tenant(&tenant("nobody")).await.unwrap(), None);
}

/// The in-memory store's factory (its own conformance run).
pub struct MemoryFactory;

#[async_trait]
impl Factory for MemoryFactory {
    async fn fixture(&self) -> Fixture {
        let clock = Arc::new(ManualClock::fixed());
        let store: Arc<dyn StateStore> = Arc::new(crate::MemoryStore::new(clock.clone()));
        Fixture {
            peer: store.clone(),
            store,
            clock,
            keep_alive: Box::new(()),
        }
    }
}

impl ManualClock {
    /// The clock's reading (a shorthand for the checks).
    pub fn now_for_tests(&self) -> chrono::DateTime<chrono::Utc> {
        crate::Clock::now(self)
    }
}

/// Every job's records of one order come back from one look-up, whichever job wrote them and
/// whenever they learnt the order number; other orders and tenants do not.
pub async fn ledger_finds_every_record_of_an_order(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let mut sale = new_record(&t, "SALE-1", RecordState::Done);
    sale.order_number = Some("SO-00123".into());
    f.store.insert(sale).await.unwrap();
    // A shipment learns its order number when it reads the sale.
    let shipment = f
        .store
        .insert(NewRecord::new(
            RecordKey::new(&t, Job::ShipmentConfirmation, "SHIP-1"),
            RecordState::InFlight,
            "h",
        ))
        .await
        .unwrap();
    let shipment = f
        .store
        .transition(
            &shipment,
            Transition::to(RecordState::InFlight).order_number(Some(" SO-00123 ")),
        )
        .await
        .unwrap();
    assert_eq!(shipment.order_number.as_deref(), Some("SO-00123"));
    // A later transition that does not name it keeps it.
    let shipment = f
        .store
        .transition(&shipment, Transition::to(RecordState::Done))
        .await
        .unwrap();
    assert_eq!(shipment.order_number.as_deref(), Some("SO-00123"));
    let mut other = new_record(&t, "SALE-2", RecordState::Done);
    other.order_number = Some("SO-00124".into());
    f.store.insert(other).await.unwrap();
    let mut elsewhere = new_record(&tenant("beta"), "SALE-1", RecordState::Done);
    elsewhere.order_number = Some("SO-00123".into());
    f.store.insert(elsewhere).await.unwrap();

    let mut found: Vec<_> = f
        .peer
        .records_of_order(&t, "SO-00123", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key.job, r.key.entity, r.state))
        .collect();
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert_eq!(
        found,
        [
            (Job::OrderDownload, "SALE-1".to_owned(), RecordState::Done),
            (
                Job::ShipmentConfirmation,
                "SHIP-1".to_owned(),
                RecordState::Done
            ),
        ]
    );
    assert_eq!(
        f.store
            .records_of_order(&t, "SO-00123", 1)
            .await
            .unwrap()
            .len(),
        1,
        "the limit holds"
    );
    assert!(
        f.store
            .records_of_order(&t, "SO-9", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn run_report(f: &Fixture, outcome: RunOutcome, delivered: u64) -> RunReport {
    let now = f.clock.now_for_tests();
    RunReport {
        started_at: now - Duration::seconds(3),
        ended_at: now,
        outcome,
        note: (outcome == RunOutcome::Aborted).then(|| "DEAR is unavailable".to_owned()),
        counts: [("delivered".to_owned(), delivered)].into(),
    }
}

/// The run log keeps the last run, the last success across failed runs, and the totals.
pub async fn run_log_keeps_the_last_success_and_totals(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    assert_eq!(
        f.store.run_history(&t, Job::OrderDownload).await.unwrap(),
        None
    );
    let ok = run_report(&f, RunOutcome::Completed, 3);
    f.store
        .record_run(&t, Job::OrderDownload, &ok)
        .await
        .unwrap();
    f.clock.advance(Duration::minutes(5));
    let failed = run_report(&f, RunOutcome::Aborted, 0);
    f.peer
        .record_run(&t, Job::OrderDownload, &failed)
        .await
        .unwrap();
    let history = f
        .store
        .run_history(&t, Job::OrderDownload)
        .await
        .unwrap()
        .expect("logged");
    assert_eq!(history.last, failed);
    assert_eq!(history.last_success_at, Some(ok.ended_at));
    assert_eq!((history.runs, history.totals["delivered"]), (2, 3));
    assert_eq!(
        f.store.run_history(&t, Job::InventorySync).await.unwrap(),
        None,
        "kept per job"
    );
}

/// Runs of one tenant and job that end together (a webhook beside a poll) are all counted.
pub async fn run_log_counts_every_concurrent_run(factory: &dyn Factory) {
    let f = factory.fixture().await;
    let t = tenant("acme");
    let report = run_report(&f, RunOutcome::Completed, 1);
    let results = join_all((0..4).map(|i| {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            f.peer.clone()
        };
        let (t, report) = (t.clone(), report.clone());
        tokio::spawn(async move {
            store
                .record_run(&t, Job::ShipmentConfirmation, &report)
                .await
        })
    }))
    .await;
    for r in results {
        r.expect("task").expect("recorded");
    }
    let history = f
        .store
        .run_history(&t, Job::ShipmentConfirmation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((history.runs, history.totals["delivered"]), (4, 4));
}
