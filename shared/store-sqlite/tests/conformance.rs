//! The conformance suite against the SQLite store, with the peer as a second connection to the
//! same file (as a second process would have).

use std::sync::Arc;

use async_trait::async_trait;
use dearsync_core::ManualClock;
use dearsync_core::conformance::{Factory, Fixture};
use dearsync_store_sqlite::SqliteStore;

struct SqliteFactory;

#[async_trait]
impl Factory for SqliteFactory {
    async fn fixture(&self) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::fixed());
        let store = SqliteStore::open_dir(dir.path(), clock.clone()).expect("open");
        let peer = SqliteStore::open_dir(dir.path(), clock.clone()).expect("open peer");
        Fixture {
            store: Arc::new(store),
            peer: Arc::new(peer),
            clock,
            keep_alive: Box::new(dir),
        }
    }
}

dearsync_core::conformance_suite!(SqliteFactory);

/// State survives closing and reopening the file (a later CLI run sees the earlier one's work).
#[tokio::test]
async fn state_survives_reopening() {
    use dearsync_core::state::*;
    use dearsync_core::{Job, TenantId};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::fixed());
    let tenant = TenantId::new("acme").unwrap();
    let key = RecordKey::new(&tenant, Job::OrderDownload, "SALE-1");
    {
        let store = SqliteStore::open_dir(dir.path(), clock.clone()).unwrap();
        store
            .insert(NewRecord::new(key.clone(), RecordState::Done, "h1"))
            .await
            .unwrap();
        store
            .save_cursor(
                &CursorKey::new(&tenant, Job::OrderDownload, "sales"),
                "c1",
                None,
            )
            .await
            .unwrap();
    }
    let store = SqliteStore::open_dir(dir.path(), clock).unwrap();
    assert_eq!(
        store.record(&key).await.unwrap().unwrap().state,
        RecordState::Done
    );
    let cursor = store
        .cursor(&CursorKey::new(&tenant, Job::OrderDownload, "sales"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((cursor.value.as_str(), cursor.version), ("c1", 1));
}

/// A state path that cannot be created is a clear error naming it.
#[test]
fn an_unusable_directory_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let bad = file.path().join("sub");
    let err = SqliteStore::open_dir(&bad, Arc::new(ManualClock::fixed()))
        .err()
        .expect("a file is not a directory")
        .to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
}
