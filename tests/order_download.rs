//! Order Download end to end: the job against the DEAR simulator over HTTP on 127.0.0.1, with
//! state in memory, in SQLite, and in DynamoDB on the AWS emulator.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dear_client::{DearClient, SaleListItem, SaleListQuery, SaleStatus, SaleType};
use dear_sim::seed::SeedSpec;
use dear_sim::{Fault, FaultRule, SaleEdit, SimConfig, SimServer};
use dearsync_core::settings::OrderDownloadSettings;
use dearsync_core::state::{LedgerQuery, RecordKey, RecordState};
use dearsync_core::{
    Job, JobContext, MemoryStore, OffsetClock, StateStore, TenantId, TenantSettings,
};
use dearsync_order_download::{OrderDownload, Outcome, RunOptions, RunSummary};
use futures::TryStreamExt;
use uuid::Uuid;

mod common;
use common::{ACCOUNT, deliverable, selected};

async fn sim(sales: usize) -> SimServer {
    let spec = SeedSpec {
        seed: 7,
        sales,
        products: 80,
        ..Default::default()
    };
    let config = SimConfig {
        rate_limit: 0,
        hang_ms: 2_000,
        retry_after_secs: Some(0),
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec)
        .await
        .expect("simulator starts")
}

fn client(server: &SimServer) -> Arc<DearClient> {
    common::fast_client_with(server, Duration::from_millis(500), 4, 6)
}

use common::CollectingSink;

fn settings(toml: &str) -> OrderDownloadSettings {
    let base = "[order_download]\nearliest_order_date = \"2020-01-01\"\n";
    TenantSettings::from_toml(&format!("{base}{toml}"))
        .expect("valid settings")
        .order_download
}

struct Harness {
    server: SimServer,
    store: Arc<dyn StateStore>,
    sink: Arc<CollectingSink>,
    clock: Arc<OffsetClock>,
    job: OrderDownload,
}

fn harness(
    server: SimServer,
    store: Arc<dyn StateStore>,
    clock: Arc<OffsetClock>,
    od: OrderDownloadSettings,
) -> Harness {
    let sink = Arc::new(CollectingSink::default());
    let job = OrderDownload {
        ctx: JobContext::new(
            TenantId::new("acme").unwrap(),
            client(&server),
            store.clone(),
            clock.clone(),
        ),
        settings: od,
        sink: sink.clone(),
    };
    Harness {
        server,
        store,
        sink,
        clock,
        job,
    }
}

fn memory() -> (Arc<dyn StateStore>, Arc<OffsetClock>) {
    let clock = Arc::new(OffsetClock::default());
    (Arc::new(MemoryStore::new(clock.clone())), clock)
}

async fn run(h: &Harness) -> RunSummary {
    let s = h.job.run(&RunOptions::default()).await;
    assert!(
        !matches!(s.outcome, Outcome::Aborted(_) | Outcome::LeaseBusy(_)),
        "{s:?}"
    );
    s
}

/// Every sale, as DEAR lists it (the test's view, not the job's).
async fn all_rows(server: &SimServer) -> Vec<SaleListItem> {
    let c = client(server);
    let pages: Vec<_> = c
        .sale_list(&SaleListQuery::default(), 1000)
        .try_collect()
        .await
        .unwrap();
    pages.into_iter().flat_map(|p| p.items).collect()
}

fn ids(v: impl IntoIterator<Item = impl ToString>) -> HashSet<String> {
    v.into_iter().map(|x| x.to_string()).collect()
}

async fn ledger_entities(store: &Arc<dyn StateStore>, state: RecordState) -> HashSet<String> {
    let mut q = LedgerQuery::new(&TenantId::new("acme").unwrap(), Job::OrderDownload, state);
    q.limit = 1000;
    let mut out = HashSet::new();
    loop {
        let page = store.list(&q).await.unwrap();
        out.extend(page.records.iter().map(|r| r.key.entity.clone()));
        match page.next {
            Some(n) => q.after = Some(n),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_filter_delivers_exactly_the_selected_sales_once() {
    let server = sim(2_000).await;
    let rows = all_rows(&server).await;
    assert_eq!(rows.len(), 2_000);
    let statuses: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(format!("{} {}", r.status, r.sale_type))
            .or_default() += 1;
        m
    });
    let sim_shared = server.sim.clone();
    let base_url = server.base_url();
    let mut h = harness(
        server,
        memory().0,
        Arc::new(OffsetClock::default()),
        settings(""),
    );
    for filter in ["PICKED", "Packed & Shipping", "BACKORDERED", "Any"] {
        let (store, clock) = memory();
        h.store = store.clone();
        h.clock = clock.clone();
        h.sink = Arc::new(CollectingSink::default());
        h.job.ctx.store = store;
        h.job.ctx.clock = clock;
        h.job.sink = h.sink.clone();
        h.job.settings = settings(&format!("sale_status = \"{filter}\"\n"));
        let expected: Vec<&SaleListItem> = rows.iter().filter(|r| selected(filter, r)).collect();
        assert!(
            !expected.is_empty(),
            "{filter}: the seed has such sales ({statuses:?})"
        );
        if filter == "PICKED" {
            assert!(
                expected.iter().any(|r| r.sale_type == SaleType::Advanced)
                    && expected.iter().any(|r| r.status == SaleStatus::Picked),
                "PICKED covers simple and advanced sales"
            );
        }
        let want_delivered = ids(expected
            .iter()
            .filter(|r| deliverable(&h.server, r.sale_id))
            .map(|r| r.sale_id));
        let want_skipped = ids(expected
            .iter()
            .filter(|r| !deliverable(&h.server, r.sale_id))
            .map(|r| r.sale_id));

        let s = run(&h).await;
        let delivered = h.sink.sale_ids();
        assert_eq!(
            delivered.len(),
            ids(&delivered).len(),
            "{filter}: no order delivered twice"
        );
        assert_eq!(ids(&delivered), want_delivered, "{filter}: delivered set");
        assert_eq!(
            ledger_entities(&h.store, RecordState::Skipped).await,
            want_skipped,
            "{filter}: skipped set"
        );
        assert_eq!(s.delivered as usize, want_delivered.len());
        assert_eq!(s.failed, 0);
        // DEAR calls: the listing pages plus one GET per selected sale.
        let pages = s.dear_calls - s.fetched;
        assert_eq!(
            s.fetched as usize,
            expected.len(),
            "{filter}: one GET per selected sale"
        );
        assert!(pages <= 5 * 3, "{filter}: {pages} listing calls");

        // A second run lists again and fetches nothing.
        let again = run(&h).await;
        assert_eq!(
            (again.delivered, again.fetched),
            (0, 0),
            "{filter}: {again:?}"
        );
        assert_eq!(h.sink.sale_ids().len(), delivered.len());
    }
    drop(sim_shared);
    drop(base_url);
}

#[tokio::test]
async fn an_edited_sale_is_delivered_again_once_and_a_status_change_alone_is_not() {
    let server = sim(150).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let first = run(&h).await;
    assert!(first.delivered > 50, "{first:?}");
    let orders = h.sink.orders.lock().unwrap().clone();
    let target = orders
        .iter()
        .find(|o| o.status == "ORDERED")
        .expect("an ORDERED sale");
    let other = orders
        .iter()
        .find(|o| o.sale_id != target.sale_id && o.status == "ORDERED")
        .unwrap();
    let target_id: Uuid = target.sale_id.parse().unwrap();
    h.server
        .sim
        .edit_sale(
            ACCOUNT,
            target_id,
            &SaleEdit {
                order_memo: Some("Leave at the back door".into()),
                ..Default::default()
            },
        )
        .unwrap();
    // An attribute the order does not carry: DEAR's Updated moves, the order does not change.
    h.server
        .sim
        .edit_sale(
            ACCOUNT,
            other.sale_id.parse().unwrap(),
            &SaleEdit {
                attributes: [(7u8, "internal".to_owned())].into(),
                ..Default::default()
            },
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = run(&h).await;
    assert_eq!(
        (second.delivered, second.same_version, second.fetched),
        (1, 1, 2),
        "{second:?}"
    );
    let all = h.sink.orders.lock().unwrap().clone();
    let versions: Vec<_> = all.iter().filter(|o| o.sale_id == target.sale_id).collect();
    assert_eq!(versions.len(), 2);
    assert_ne!(versions[0].version, versions[1].version);
    assert_eq!(versions[1].notes.as_deref(), Some("Leave at the back door"));
    let third = run(&h).await;
    assert_eq!((third.delivered, third.fetched), (0, 0), "{third:?}");
}

#[tokio::test]
async fn a_failed_delivery_stays_in_the_ledger_and_is_retried_when_due() {
    let server = sim(120).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let rows = all_rows(&h.server).await;
    let victim = rows
        .iter()
        .find(|r| deliverable(&h.server, r.sale_id) && r.order_number.is_some())
        .unwrap()
        .sale_id;
    h.sink.fail_once.lock().unwrap().insert(victim.to_string());
    let first = run(&h).await;
    assert_eq!(first.failed, 1, "{first:?}");
    assert!(first.has_failures());
    let key = RecordKey::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        victim.to_string(),
    );
    let rec = h.store.record(&key).await.unwrap().unwrap();
    assert_eq!(rec.state, RecordState::Failed);
    assert!(
        rec.reason.as_deref().unwrap().contains("HTTP 503"),
        "{rec:?}"
    );
    // Not due yet: the next run leaves it.
    let early = run(&h).await;
    assert_eq!((early.retried, early.delivered), (0, 0));
    h.clock.advance(chrono::Duration::minutes(2));
    let later = run(&h).await;
    assert_eq!((later.retried, later.delivered), (1, 1), "{later:?}");
    assert_eq!(
        h.store.record(&key).await.unwrap().unwrap().state,
        RecordState::Done
    );
    assert_eq!(
        h.sink
            .sale_ids()
            .iter()
            .filter(|s| **s == victim.to_string())
            .count(),
        1
    );
}

/// The id of the simulated account's location `name`.
fn location_id(server: &SimServer, name: &str) -> Uuid {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            d.locations.iter().find(|l| l.name == name).map(|l| l.id)
        })
        .flatten()
        .unwrap_or_else(|| panic!("no location {name}"))
}

/// Sets Additional Attribute 5 to "Wholesale" on the first `n` deliverable sales, as a DEAR user
/// would; returns them.
fn tag_wholesale(server: &SimServer, rows: &[SaleListItem], n: usize) -> Vec<Uuid> {
    let tagged: Vec<Uuid> = rows
        .iter()
        .filter(|r| deliverable(server, r.sale_id))
        .take(n)
        .map(|r| r.sale_id)
        .collect();
    for id in &tagged {
        server
            .sim
            .edit_sale(
                ACCOUNT,
                *id,
                &SaleEdit {
                    attributes: [(5u8, "Wholesale".to_owned())].into(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    tagged
}

#[tokio::test]
async fn location_and_attribute_filters_select_exactly_their_sales() {
    let server = sim(200).await;
    let rows = all_rows(&server).await;
    let main_id = location_id(&server, "Main Warehouse");
    let tagged = tag_wholesale(&server, &rows, 5);
    let (store, clock) = memory();
    let mut h = harness(
        server,
        store,
        clock,
        settings("sale_status = \"Any\"\nlocation_name = \"main warehouse\"\n"),
    );
    run(&h).await;
    let want = ids(rows
        .iter()
        .filter(|r| r.order_location_id == Some(main_id) && deliverable(&h.server, r.sale_id))
        .map(|r| r.sale_id));
    assert!(!want.is_empty() && want.len() < rows.len());
    assert_eq!(ids(h.sink.sale_ids()), want);

    let (store, clock) = memory();
    h.store = store.clone();
    h.job.ctx.store = store;
    h.job.ctx.clock = clock;
    h.sink = Arc::new(CollectingSink::default());
    h.job.sink = h.sink.clone();
    h.job.settings = settings(
        "sale_status = \"Any\"\nadditional_attribute_filters = { \"5\" = \"wholesale\" }\n",
    );
    let s = run(&h).await;
    assert_eq!(ids(h.sink.sale_ids()), ids(&tagged));
    assert_eq!(
        s.skipped.get("attribute_filter").copied().unwrap_or(0) as usize,
        rows.len()
            - tagged.len()
            - s.skipped
                .iter()
                .filter(|(k, _)| *k != "attribute_filter")
                .map(|(_, v)| *v as usize)
                .sum::<usize>()
    );

    let (store, clock) = memory();
    h.job.ctx.store = store;
    h.job.ctx.clock = clock;
    h.job.settings = settings("location_name = \"Nowhere\"\n");
    let s = h.job.run(&RunOptions::default()).await;
    match s.outcome {
        Outcome::Aborted(why) => assert!(
            why.contains("\"Nowhere\" is not a DEAR location") && why.contains("Main Warehouse"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dear_faults_do_not_change_what_is_delivered() {
    let server = sim(300).await;
    let rows = all_rows(&server).await;
    let want = ids(rows
        .iter()
        .filter(|r| deliverable(&server, r.sale_id))
        .map(|r| r.sale_id));
    for (route, fault) in [
        ("salelist", Fault::Status(429)),
        ("salelist", Fault::Status(500)),
        ("sale", Fault::Status(503)),
        ("sale", Fault::Status(500)),
        ("sale", Fault::Timeout),
        ("sale", Fault::ErrorModel200(500)),
        ("sale", Fault::Drop),
    ] {
        server.sim.add_fault(
            ACCOUNT,
            FaultRule {
                route: route.into(),
                probability: 0.04,
                fault: Some(fault),
                ..Default::default()
            },
        );
    }
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    // Faults the client's retries cannot hide abort a run; the next run resumes.
    let mut runs = 0;
    loop {
        runs += 1;
        let s = h.job.run(&RunOptions::default()).await;
        if s.outcome == Outcome::Completed && s.failed == 0 {
            break;
        }
        assert!(runs < 30, "never completed: {s:?}");
        h.clock.advance(chrono::Duration::hours(1));
    }
    let calls = h.server.sim.calls(ACCOUNT).unwrap();
    assert!(calls.total > 0);
    let delivered = h.sink.sale_ids();
    assert_eq!(delivered.len(), ids(&delivered).len(), "no duplicates");
    assert_eq!(ids(&delivered), want);
}

#[tokio::test]
async fn overlapping_runs_never_work_at_once() {
    let server = sim(50).await;
    let (store, clock) = memory();
    let h = harness(
        server,
        store.clone(),
        clock,
        settings("sale_status = \"Any\"\n"),
    );
    let key =
        dearsync_core::state::LeaseKey::new(&TenantId::new("acme").unwrap(), Job::OrderDownload);
    let held = store
        .acquire(&key, "run-elsewhere", chrono::Duration::minutes(5))
        .await
        .unwrap();
    assert!(matches!(
        held,
        dearsync_core::state::LeaseOutcome::Acquired(_)
    ));
    let s = h.job.run(&RunOptions::default()).await;
    match &s.outcome {
        Outcome::LeaseBusy(msg) => assert!(msg.contains("run-elsewhere"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!((s.fetched, s.dear_calls), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_through_dynamodb_on_the_aws_emulator() {
    let server = sim(250).await;
    let rows = all_rows(&server).await;
    let table = dearsync_aws::testing::fresh_table().await;
    let clock = Arc::new(OffsetClock::default());
    let store: Arc<dyn StateStore> = Arc::new(dearsync_aws::DynamoStore::new(
        dearsync_aws::testing::dynamodb(),
        &table,
        clock.clone(),
    ));
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let want = ids(rows
        .iter()
        .filter(|r| deliverable(&h.server, r.sale_id))
        .map(|r| r.sale_id));
    let s = run(&h).await;
    assert_eq!(ids(h.sink.sale_ids()), want);
    assert_eq!(s.delivered as usize, want.len());
    let again = run(&h).await;
    assert_eq!((again.delivered, again.fetched), (0, 0));
    assert_eq!(ledger_entities(&h.store, RecordState::Done).await, want);
}

/// Every `sale_id:version` in an NDJSON file, in order.
fn deliveries_in(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            format!(
                "{}:{}",
                v["sale_id"].as_str().unwrap(),
                v["version"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cli_run_resumes_and_delivers_every_order_exactly_once() {
    let server = sim(2_000).await;
    let rows = all_rows(&server).await;
    let want = ids(rows
        .iter()
        .filter(|r| deliverable(&server, r.sale_id))
        .map(|r| r.sale_id));
    // Slow DEAR down so the run is still going when it is killed.
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "sale".into(),
            latency_ms: 3,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenant.toml"),
        "[order_download]\nsale_status = \"Any\"\nearliest_order_date = \"2020-01-01\"\n",
    )
    .unwrap();
    let out = dir.path().join("orders.ndjson");
    let command = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dearsync"));
        c.args([
            "order-download",
            "--no-rate-limit",
            "--lease-ttl-secs",
            "2",
            "--config",
            "tenant.toml",
            "--out",
            "orders.ndjson",
        ])
        .current_dir(dir.path())
        .env("DEAR_BASE_URL", server.base_url())
        .env("DEAR_ACCOUNT_ID", ACCOUNT)
        .env("DEAR_API_KEY", dear_sim::DEFAULT_API_KEY)
        .env_remove("DEARSYNC_STATE_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        c
    };
    let mut child = command().spawn().expect("start dearsync");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while deliveries_in(&out).len() < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never delivered 400 orders"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let at_kill = deliveries_in(&out).len();
    assert!(
        at_kill < want.len(),
        "killed mid-way ({at_kill} of {})",
        want.len()
    );

    server.sim.clear_faults(ACCOUNT);
    // Right after the kill the dead run's lease still stands: the rerun says so and does nothing.
    let blocked = command().output().expect("rerun");
    assert_eq!(
        blocked.status.code(),
        Some(75),
        "nothing done: another run holds the lease, try again later"
    );
    assert!(
        String::from_utf8_lossy(&blocked.stderr).contains("holds the lease"),
        "{}",
        String::from_utf8_lossy(&blocked.stderr)
    );
    assert_eq!(deliveries_in(&out).len(), at_kill);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let done = command().output().expect("rerun");
    // Sales with incomplete addresses are skipped: done, but needing attention.
    assert_eq!(
        done.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let all = deliveries_in(&out);
    assert_eq!(
        all.len(),
        ids(&all).len(),
        "no order delivered twice across the kill"
    );
    let sales: HashSet<String> = all
        .iter()
        .map(|d| d.split(':').next().unwrap().to_owned())
        .collect();
    assert!(
        sales == want,
        "every order delivered: {} delivered, {} wanted, {} missing",
        sales.len(),
        want.len(),
        want.difference(&sales).count()
    );

    // A third run has nothing to do.
    let again = command().output().unwrap();
    assert!(again.status.success());
    assert_eq!(deliveries_in(&out).len(), all.len());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("delivered 0"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A run whose orders file another process has open does nothing and says so.
    let held = dearsync_order_download::NdjsonSink::file(&out).expect("the file is free");
    let busy = command().output().unwrap();
    assert_eq!(busy.status.code(), Some(75), "try again later");
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("writing orders to"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    drop(held);
}

#[tokio::test]
async fn a_delivery_interrupted_after_the_sink_wrote_it_is_recorded_not_repeated() {
    let server = sim(60).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("orders.ndjson");
    let (store, clock) = memory();
    let mut h = harness(
        server,
        store.clone(),
        clock.clone(),
        settings("sale_status = \"Any\"\n"),
    );
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::file(&out).unwrap());
    run(&h).await;
    let first = deliveries_in(&out);
    assert!(!first.is_empty());
    // Rewind one record to in_flight, as if the run died after writing the line.
    let (sale, version) = first[0].split_once(':').unwrap();
    let key = RecordKey::new(&TenantId::new("acme").unwrap(), Job::OrderDownload, sale);
    let done = store.record(&key).await.unwrap().unwrap();
    let in_flight = store
        .transition(
            &done,
            dearsync_core::state::Transition::to(RecordState::InFlight).due_at(clock.now_plus(0)),
        )
        .await
        .unwrap();
    assert_eq!(in_flight.input_hash, version);
    h.clock.advance(chrono::Duration::minutes(1));
    let s = run(&h).await;
    assert_eq!((s.recovered, s.delivered), (1, 0), "{s:?}");
    assert_eq!(deliveries_in(&out), first);
    assert_eq!(
        store.record(&key).await.unwrap().unwrap().state,
        RecordState::Done
    );
}

trait NowPlus {
    fn now_plus(&self, secs: i64) -> chrono::DateTime<chrono::Utc>;
}

impl NowPlus for OffsetClock {
    fn now_plus(&self, secs: i64) -> chrono::DateTime<chrono::Utc> {
        dearsync_core::Clock::now(self) + chrono::Duration::seconds(secs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stops_at_its_deadline_and_the_next_resumes_without_loss_or_duplicates() {
    let server = sim(150).await;
    let rows = all_rows(&server).await;
    let want = ids(rows
        .iter()
        .filter(|r| deliverable(&server, r.sale_id))
        .map(|r| r.sale_id));
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "sale".into(),
            latency_ms: 15,
            ..Default::default()
        },
    );
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let opts = RunOptions {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(700)),
        margin: Duration::from_millis(100),
        ..RunOptions::default()
    };
    let cut = h.job.run(&opts).await;
    assert_eq!(cut.outcome, Outcome::StoppedAtDeadline, "{cut:?}");
    assert!(
        cut.delivered > 0 && (cut.delivered as usize) < want.len(),
        "{cut:?}"
    );
    let max_updated = rows
        .iter()
        .filter_map(|r| r.updated)
        .max()
        .unwrap()
        .to_utc();
    let cursor = cut
        .cursor_after
        .clone()
        .expect("the cursor moved over the finished part");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&cursor).unwrap() < max_updated,
        "{cursor}"
    );
    h.server.sim.clear_faults(ACCOUNT);
    let rest = run(&h).await;
    assert_eq!(rest.outcome, Outcome::Completed);
    let delivered = h.sink.sale_ids();
    assert_eq!(delivered.len(), ids(&delivered).len(), "no duplicates");
    assert_eq!(ids(&delivered), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_that_changes_during_a_backlog_is_delivered_by_the_next_run_not_after_the_backlog() {
    let server = sim(150).await;
    let rows = all_rows(&server).await;
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "sale".into(),
            latency_ms: 15,
            ..Default::default()
        },
    );
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let short_run = || RunOptions {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(700)),
        margin: Duration::from_millis(100),
        ..RunOptions::default()
    };
    let first = h.job.run(&short_run()).await;
    assert_eq!(first.outcome, Outcome::StoppedAtDeadline, "{first:?}");
    // The newest-but-one deliverable sale not yet delivered: oldest first, the backlog reaches it
    // last. A DEAR user edits it now.
    let delivered = ids(h.sink.sale_ids());
    let mut waiting: Vec<_> = rows
        .iter()
        .filter(|r| {
            deliverable(&h.server, r.sale_id) && !delivered.contains(&r.sale_id.to_string())
        })
        .collect();
    waiting.sort_by_key(|r| r.updated);
    let edited = waiting[waiting.len() / 2].sale_id;
    h.server
        .sim
        .edit_sale(
            ACCOUNT,
            edited,
            &dear_sim::SaleEdit {
                order_memo: Some("leave at the back door".into()),
                ..Default::default()
            },
        )
        .unwrap();
    // A run lists what changed before it began (to the second, as DEAR may read UpdatedUntil).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = h.job.run(&short_run()).await;
    assert_eq!(
        second.outcome,
        Outcome::StoppedAtDeadline,
        "still a backlog: {second:?}"
    );
    assert!(
        h.sink.sale_ids().iter().any(|id| *id == edited.to_string()),
        "the sale changed during the backlog waits for it: {second:?}"
    );
    // The backlog still drains, each sale exactly once.
    h.server.sim.clear_faults(ACCOUNT);
    assert_eq!(run(&h).await.outcome, Outcome::Completed);
    let all = h.sink.sale_ids();
    assert_eq!(all.len(), ids(&all).len(), "no duplicates");
    // No backlog left: a run lists once, with no fresh window before it.
    let quiet = run(&h).await;
    assert_eq!((quiet.delivered, quiet.dear_calls), (0, 1), "{quiet:?}");
}

#[tokio::test]
async fn a_resend_delivers_the_current_version_again_under_a_new_id_the_warehouse_can_tell_apart() {
    let server = sim(60).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    run(&h).await;
    let first = h.sink.orders.lock().unwrap()[0].clone();
    let sale: Uuid = first.sale_id.parse().unwrap();
    // Downloading it again sends nothing: the warehouse has this version.
    assert_eq!(h.job.download_one(sale).await.delivered, 0);
    let resent = h.job.resend(sale).await;
    assert_eq!((resent.delivered, resent.resent), (1, 1), "{resent:?}");
    let again = h.sink.orders.lock().unwrap().last().unwrap().clone();
    assert_eq!(again.sale_id, first.sale_id);
    assert_eq!(again.version, first.version, "the same content");
    assert_ne!(again.delivery_id, first.delivery_id, "a new delivery id");
    assert_eq!(again.resend_of.as_deref(), Some(first.delivery_id.as_str()));
    assert_eq!(first.resend_of, None, "a first delivery is no resend");
    // A second resend repeats the first delivery too, under yet another id.
    h.job.resend(sale).await;
    let third = h.sink.orders.lock().unwrap().last().unwrap().clone();
    assert!(third.delivery_id != again.delivery_id && third.delivery_id != first.delivery_id);
    // The ledger counts the resends; polls go on as before (nothing new to send).
    let rec = h
        .store
        .record(&RecordKey::new(
            &TenantId::new("acme").unwrap(),
            Job::OrderDownload,
            sale.to_string(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, RecordState::Done);
    assert!(rec.detail.unwrap().contains("\"resends\":2"));
    assert_eq!(run(&h).await.delivered, 0);
    // An unknown sale is not resent, and says why.
    let unknown = h.job.resend(Uuid::new_v4()).await;
    assert_eq!(unknown.resent, 0);
    assert_eq!(unknown.not_resent.len(), 1, "{unknown:?}");
}

fn void(server: &SimServer, id: Uuid) {
    server
        .sim
        .edit_sale(
            ACCOUNT,
            id,
            &SaleEdit {
                void: true,
                ..Default::default()
            },
        )
        .unwrap();
}

#[tokio::test]
async fn a_sale_voided_after_delivery_is_cancelled_at_the_warehouse_exactly_once() {
    let server = sim(150).await;
    let (store, clock) = memory();
    let h = harness(
        server,
        store,
        clock,
        settings("sale_status = \"ORDERED\"\n"),
    );
    run(&h).await;
    // Delivered sales none of which began shipping (advanced sales stay ORDERED as they ship).
    let unshipped: std::collections::HashSet<String> = all_rows(&h.server)
        .await
        .into_iter()
        .filter(|r| r.combined_shipping_status.as_deref() == Some("NOT SHIPPED"))
        .map(|r| r.sale_id.to_string())
        .collect();
    let delivered: Vec<_> = h
        .sink
        .orders
        .lock()
        .unwrap()
        .iter()
        .filter(|o| unshipped.contains(&o.sale_id))
        .cloned()
        .collect();
    assert!(delivered.len() >= 3, "{}", delivered.len());
    let (polled, hooked) = (&delivered[0], &delivered[1]);
    // Voided in DEAR: the next poll sends one cancellation of the version the warehouse has.
    void(&h.server, polled.sale_id.parse().unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = run(&h).await;
    assert_eq!(s.cancelled, 1, "{s:?}");
    let cancels = h.sink.cancels.lock().unwrap().clone();
    assert_eq!(cancels.len(), 1);
    let c = &cancels[0];
    assert_eq!(
        (c.schema.as_str(), c.sale_id.as_str(), c.version.as_str()),
        (
            "dear-sync.order-cancel/v1",
            polled.sale_id.as_str(),
            polled.version.as_str()
        )
    );
    assert_eq!(
        (c.reason, c.order_number.as_str()),
        (
            dearsync_order_download::CancelReason::Voided,
            polled.order_number.as_str()
        )
    );
    assert_eq!(c.cancel_id, format!("{}:cancel", polled.delivery_id));
    assert_eq!(c.delivery_id, polled.delivery_id);
    // Polled again (the sale still in the overlap window): nothing sent twice.
    assert_eq!(run(&h).await.cancelled, 0);
    assert_eq!(h.sink.cancels.lock().unwrap().len(), 1);
    let key = RecordKey::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        polled.sale_id.clone(),
    );
    let rec = h.store.record(&key).await.unwrap().unwrap();
    assert!(
        rec.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("cancelled (voided)"),
        "{rec:?}"
    );
    // Inventory Sync no longer subtracts it: the warehouse will not ship it.
    let facts = dearsync_core::delivered::DeliveryFacts::of(&rec);
    assert!(
        facts.delivered_at.is_none() && facts.lines.is_empty(),
        "{facts:?}"
    );

    // A DEAR webhook for the void (`Sale/Voided`): cancelled at once, by that one sale's download.
    let hooked_id: Uuid = hooked.sale_id.parse().unwrap();
    void(&h.server, hooked_id);
    let s = h.job.download_one(hooked_id).await;
    assert_eq!(s.cancelled, 1, "{s:?}");
    assert_eq!(h.sink.cancels.lock().unwrap().len(), 2);

    // A cancellation the warehouse refuses is retried by a later run, and sent once.
    let third = &delivered[2];
    h.sink
        .fail_cancel_once
        .lock()
        .unwrap()
        .insert(third.sale_id.clone());
    void(&h.server, third.sale_id.parse().unwrap());
    let s = h.job.download_one(third.sale_id.parse().unwrap()).await;
    assert_eq!((s.cancelled, s.failed), (0, 1), "{s:?}");
    h.clock.advance(chrono::Duration::minutes(5));
    run(&h).await;
    let sent: Vec<_> = h
        .sink
        .cancels
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.sale_id == third.sale_id)
        .cloned()
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");

    // A sale voided before it was ever delivered: no order, no cancellation.
    let never = all_rows(&h.server)
        .await
        .into_iter()
        .find(|r| {
            r.status == SaleStatus::Ordered && !h.sink.sale_ids().contains(&r.sale_id.to_string())
        })
        .map(|r| r.sale_id);
    if let Some(id) = never {
        void(&h.server, id);
        let s = h.job.download_one(id).await;
        assert_eq!((s.delivered, s.cancelled), (0, 0), "{s:?}");
    }
}

/// Sets the pick of `id`'s first fulfilment to `stage`, as a DEAR user undoing (or redoing) it.
fn set_pick(server: &SimServer, id: Uuid, stage: dear_sim::model::Stage) {
    server
        .sim
        .with_data_mut(ACCOUNT, |d| {
            let s = d.sales.get_mut(&id).unwrap();
            s.fulfilments[0].pick_status = stage;
            s.updated = chrono::Utc::now().naive_utc();
        })
        .unwrap();
}

#[tokio::test]
async fn an_undone_pick_cancels_the_order_and_a_new_pick_sends_it_again_as_a_new_delivery() {
    let server = sim(150).await;
    let (store, clock) = memory();
    // The default filter: PICKED.
    let h = harness(server, store, clock, settings(""));
    run(&h).await;
    let picked = all_rows(&h.server)
        .await
        .into_iter()
        .find(|r| {
            r.status == SaleStatus::Picked
                && r.sale_type == SaleType::Simple
                && h.sink.sale_ids().contains(&r.sale_id.to_string())
        })
        .expect("a delivered simple PICKED sale");
    let id = picked.sale_id;
    let first = h
        .sink
        .orders
        .lock()
        .unwrap()
        .iter()
        .find(|o| o.sale_id == id.to_string())
        .cloned()
        .unwrap();
    // The merchant undoes the pick in DEAR (PICKED → PICKING): the warehouse is told to stop.
    set_pick(&h.server, id, dear_sim::model::Stage::Draft);
    let s = h.job.download_one(id).await;
    assert_eq!(s.cancelled, 1, "{s:?}");
    let cancel = h.sink.cancels.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (cancel.reason, cancel.delivery_id.as_str()),
        (
            dearsync_order_download::CancelReason::Undone,
            first.delivery_id.as_str()
        )
    );
    // Picked again: delivered again, under a new id (the warehouse cancelled the first one).
    set_pick(&h.server, id, dear_sim::model::Stage::Authorised);
    let s = h.job.download_one(id).await;
    assert_eq!(s.delivered, 1, "{s:?}");
    let again = h.sink.orders.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (again.sale_id.as_str(), again.version.as_str()),
        (first.sale_id.as_str(), first.version.as_str())
    );
    assert_ne!(again.delivery_id, first.delivery_id);
    // And that delivery can be cancelled in its turn.
    void(&h.server, id);
    assert_eq!(h.job.download_one(id).await.cancelled, 1);
    let last = h.sink.cancels.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.cancel_id, format!("{}:cancel", again.delivery_id));
    // Moving on is not undoing: a delivered sale packed in DEAR is no cancellation.
    let packed = all_rows(&h.server)
        .await
        .into_iter()
        .find(|r| {
            r.status == SaleStatus::Picked
                && r.sale_type == SaleType::Simple
                && r.sale_id != id
                && h.sink.sale_ids().contains(&r.sale_id.to_string())
        })
        .map(|r| r.sale_id);
    if let Some(other) = packed {
        h.server
            .sim
            .with_data_mut(ACCOUNT, |d| {
                let s = d.sales.get_mut(&other).unwrap();
                s.fulfilments[0].pack_status = dear_sim::model::Stage::Draft;
                s.updated = chrono::Utc::now().naive_utc();
            })
            .unwrap();
        assert_eq!(h.job.download_one(other).await.cancelled, 0);
    }
}

#[tokio::test]
async fn a_sale_voided_after_the_warehouse_shipped_it_is_recorded_and_alarmed_not_sent() {
    let server = sim(150).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    run(&h).await;
    // A delivered sale DEAR shows shipped, then voided.
    let shipped = all_rows(&h.server)
        .await
        .into_iter()
        .find(|r| {
            r.combined_shipping_status.as_deref() == Some("SHIPPED")
                && h.sink.sale_ids().contains(&r.sale_id.to_string())
        })
        .expect("a delivered, shipped sale");
    void(&h.server, shipped.sale_id);
    let s = h.job.download_one(shipped.sale_id).await;
    assert_eq!((s.cancelled, s.cancelled_after_shipping), (0, 1), "{s:?}");
    assert!(h.sink.cancels.lock().unwrap().is_empty(), "not sent");
    let emf: serde_json::Value = serde_json::from_str(&s.emf(0)).unwrap();
    assert_eq!(emf["CancelledAfterShipping"], 1);
    let key = RecordKey::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        shipped.sale_id.to_string(),
    );
    let rec = h.store.record(&key).await.unwrap().unwrap();
    assert!(rec.reason.unwrap().starts_with("cancelled_after_shipping"));
    // Once recorded, it stays recorded: not alarmed again by every poll.
    assert_eq!(
        h.job
            .download_one(shipped.sale_id)
            .await
            .cancelled_after_shipping,
        0
    );
}

#[tokio::test]
async fn a_backfill_delivers_what_a_narrower_filter_left_out_and_nothing_twice() {
    let server = sim(150).await;
    let rows = all_rows(&server).await;
    let main_id = location_id(&server, "Main Warehouse");
    let (store, clock) = memory();
    let mut h = harness(
        server,
        store,
        clock,
        settings("sale_status = \"Any\"\nlocation_name = \"Main Warehouse\"\n"),
    );
    run(&h).await;
    let main_only = ids(h.sink.sale_ids());
    let everything = ids(rows
        .iter()
        .filter(|r| deliverable(&h.server, r.sale_id))
        .map(|r| r.sale_id));
    assert!(!main_only.is_empty() && main_only.len() < everything.len());
    assert!(main_only.iter().all(|id| {
        rows.iter()
            .any(|r| r.sale_id.to_string() == *id && r.order_location_id == Some(main_id))
    }));

    widen_then_backfill(&mut h, &main_only, &everything).await;
}

/// After a run with a narrow filter delivered `narrow`: widening the filter and running normally
/// leaves most of `everything` behind; a backfill delivers exactly the rest; nothing goes twice.
async fn widen_then_backfill(
    h: &mut Harness,
    narrow: &HashSet<String>,
    everything: &HashSet<String>,
) {
    // A normal run lists only what changed since the cursor (less its overlap window).
    h.job.settings = settings("sale_status = \"Any\"\n");
    let widened = run(h).await.delivered as usize;
    let left_behind = everything.len() - narrow.len() - widened;
    assert!(left_behind > 10, "{left_behind}");

    let backfill = RunOptions {
        since: Some("2020-01-01T00:00:00Z".parse().unwrap()),
        ..RunOptions::default()
    };
    let s = h.job.run(&backfill).await;
    assert_eq!(s.delivered as usize, left_behind, "{s:?}");
    let delivered = h.sink.sale_ids();
    assert_eq!(
        delivered.len(),
        everything.len(),
        "no order delivered twice"
    );
    assert_eq!(&ids(delivered), everything);
    assert_eq!(run(h).await.delivered, 0);
}

#[tokio::test]
async fn a_backfill_looks_again_at_sales_a_narrower_attribute_filter_skipped() {
    let server = sim(150).await;
    let rows = all_rows(&server).await;
    let everything = ids(rows
        .iter()
        .filter(|r| deliverable(&server, r.sale_id))
        .map(|r| r.sale_id));
    let tagged = tag_wholesale(&server, &rows, 4);
    let (store, clock) = memory();
    let mut h = harness(
        server,
        store,
        clock,
        settings(
            "sale_status = \"Any\"\nadditional_attribute_filters = { \"5\" = \"wholesale\" }\n",
        ),
    );
    let s = run(&h).await;
    assert_eq!(ids(h.sink.sale_ids()), ids(&tagged));
    assert!(
        s.skipped.get("attribute_filter").copied().unwrap_or(0) > 10,
        "{s:?}"
    );
    widen_then_backfill(&mut h, &ids(&tagged), &everything).await;
}

/// A simulator playing `reading` for shipped, un-invoiced simple sales.
async fn sim_reading(sales: usize, reading: dear_sim::rules::ShippedSaleStatus) -> SimServer {
    let config = SimConfig {
        rate_limit: 0,
        retry_after_secs: Some(0),
        shipped_sale_status: reading,
        ..Default::default()
    };
    let spec = SeedSpec {
        seed: 7,
        sales,
        products: 80,
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec)
        .await
        .expect("simulator starts")
}

/// Sales whose shipping DEAR shows complete (the test's own reading of the simulator's data).
fn shipped_sales(server: &SimServer) -> HashSet<String> {
    server
        .sim
        .with_data(ACCOUNT, |d| {
            d.sales
                .values()
                .filter(|s| {
                    let first_shipped = !s.advanced
                        && s.fulfilments
                            .iter()
                            .find(|f| f.is_live())
                            .is_some_and(|f| f.ship_status.is_authorised());
                    first_shipped || dear_sim::rules::combined_statuses(s).shipping == "SHIPPED"
                })
                .map(|s| s.id.to_string())
                .collect()
        })
        .unwrap()
}

/// A shipped sale is never sent for a status before shipping, whichever `Status` DEAR shows for a
/// shipped simple sale that is not invoiced yet (both readings of the simulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_sale_is_never_delivered_for_a_status_before_shipping() {
    for reading in [
        dear_sim::rules::ShippedSaleStatus::Invoicing,
        dear_sim::rules::ShippedSaleStatus::Packed,
    ] {
        let server = sim_reading(1_000, reading).await;
        let shipped = shipped_sales(&server);
        assert!(shipped.len() > 20, "the seed has shipped sales");
        let rows = all_rows(&server).await;
        let shown_packed = rows
            .iter()
            .filter(|r| r.status == SaleStatus::Packed && shipped.contains(&r.sale_id.to_string()))
            .count();
        assert_eq!(
            shown_packed > 0,
            reading == dear_sim::rules::ShippedSaleStatus::Packed,
            "{reading:?}: shipped simple sales show PACKED only in that reading"
        );
        let mut h = harness(
            server,
            memory().0,
            Arc::new(OffsetClock::default()),
            settings(""),
        );
        for filter in ["PACKED", "Packed & Shipping", "SHIPPING"] {
            let (store, clock) = memory();
            h.store = store.clone();
            h.job.ctx.store = store;
            h.job.ctx.clock = clock;
            h.sink = Arc::new(CollectingSink::default());
            h.job.sink = h.sink.clone();
            h.job.settings = settings(&format!("sale_status = \"{filter}\"\n"));
            let s = run(&h).await;
            let delivered = ids(h.sink.sale_ids());
            let reshipped: Vec<_> = delivered.intersection(&shipped).collect();
            assert!(
                reshipped.is_empty(),
                "{reading:?} {filter}: shipped sales delivered: {reshipped:?}"
            );
            if filter != "SHIPPING" {
                assert!(!delivered.is_empty(), "{reading:?} {filter}: {s:?}");
            }
            // Listed shipped sales are skipped with their reason, visibly.
            let skipped_shipped = s.skipped.get("already_shipped").copied().unwrap_or(0) as usize;
            if reading == dear_sim::rules::ShippedSaleStatus::Packed && filter != "SHIPPING" {
                assert!(
                    skipped_shipped >= shown_packed,
                    "{reading:?} {filter}: {s:?}"
                );
                let skipped = ledger_entities(&h.store, RecordState::Skipped).await;
                assert!(
                    skipped.is_superset(
                        &rows
                            .iter()
                            .filter(|r| r.status == SaleStatus::Packed
                                && shipped.contains(&r.sale_id.to_string()))
                            .map(|r| r.sale_id.to_string())
                            .collect()
                    )
                );
            }
        }
    }
}

/// A simple sale listing `Fulfilments: []` before any fulfilment work (a reference example) or its
/// first, empty fulfilment (the simulator's default): the same orders, with the same contents and
/// versions, under the default settings and under a status past picking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_the_same_whether_an_untouched_simple_sale_lists_its_fulfilment_or_none() {
    let spec = SeedSpec {
        seed: 7,
        sales: 300,
        products: 80,
        ..Default::default()
    };
    let config = SimConfig {
        rate_limit: 0,
        ..Default::default()
    };
    let server = dear_sim::start_seeded(config.clone(), &spec).await.unwrap();
    let (store, clock) = memory();
    let mut h = harness(server, store, clock, settings(""));
    let mut delivered: Vec<BTreeMap<String, (String, String)>> = Vec::new();
    let mut listing_none_counts = Vec::new();
    for listing_none in [false, true] {
        // The same account, read under each reading.
        h.server.sim.set_config(SimConfig {
            simple_sale_lists_no_fulfilment_before_work: listing_none,
            ..config.clone()
        });
        let mut orders = BTreeMap::new();
        for filter in ["", "sale_status = \"Any\"\n"] {
            let (store, clock) = memory();
            h.store = store.clone();
            h.job.ctx.store = store;
            h.job.ctx.clock = clock;
            h.sink = Arc::new(CollectingSink::default());
            h.job.sink = h.sink.clone();
            h.job.settings = settings(filter);
            let s = run(&h).await;
            assert!(s.delivered > 0, "{listing_none} {filter:?}: {s:?}");
            for o in h.sink.orders.lock().unwrap().iter() {
                let lines = serde_json::to_string(&o.lines).unwrap();
                orders.insert(
                    format!("{filter}/{}", o.sale_id),
                    (o.version.clone(), lines),
                );
            }
        }
        // The reading is in force: more delivered sales list no fulfilment under it.
        let mut listing_nothing = 0;
        for key in orders.keys() {
            let id: Uuid = key.rsplit('/').next().unwrap().parse().unwrap();
            if h.job
                .ctx
                .dear
                .sale(id)
                .await
                .unwrap()
                .fulfilments
                .is_empty()
            {
                listing_nothing += 1;
            }
        }
        listing_none_counts.push(listing_nothing);
        delivered.push(orders);
    }
    // (Sales before authorisation list none under both.)
    assert!(
        listing_none_counts[1] > listing_none_counts[0],
        "the reading hides untouched fulfilments: {listing_none_counts:?}"
    );
    let differing: Vec<&String> = delivered[0]
        .keys()
        .chain(delivered[1].keys())
        .filter(|k| delivered[0].get(*k) != delivered[1].get(*k))
        .collect();
    assert!(
        differing.is_empty(),
        "{} orders differ (of {} and {}), first: {:?} vs {:?}",
        differing.len(),
        delivered[0].len(),
        delivered[1].len(),
        differing.first().map(|k| delivered[0].get(*k)),
        differing.first().map(|k| delivered[1].get(*k)),
    );
}

/// A sale delivered when PACKED and then shipped in DEAR stays delivered once: the next run sends
/// nothing, and the ledger keeps it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_sale_that_ships_is_not_sent_again() {
    // The reading in which DEAR still lists the shipped sale as PACKED.
    let server = sim_reading(300, dear_sim::rules::ShippedSaleStatus::Packed).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"PACKED\"\n"));
    let first = run(&h).await;
    assert!(first.delivered > 0, "{first:?}");
    let target: Uuid = h.sink.sale_ids()[0].parse().unwrap();
    // DEAR ships it (and the sale changes, so the next run reads it again).
    h.server
        .sim
        .with_data_mut(ACCOUNT, |d| {
            let sale = d.sales.get_mut(&target).unwrap();
            for f in sale.fulfilments.iter_mut().filter(|f| f.is_live()) {
                f.ship_status = dear_sim::model::Stage::Authorised;
            }
            sale.updated += chrono::Duration::minutes(1);
        })
        .unwrap();
    h.clock.advance(chrono::Duration::minutes(2));
    run(&h).await;
    let again = run(&h).await;
    assert_eq!(again.delivered, 0, "{again:?}");
    let sent = h
        .sink
        .sale_ids()
        .iter()
        .filter(|id| **id == target.to_string())
        .count();
    assert_eq!(sent, 1, "delivered once");
    let rec = h
        .store
        .record(&RecordKey::new(
            &TenantId::new("acme").unwrap(),
            Job::OrderDownload,
            target.to_string(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, RecordState::Done, "{rec:?}");
}

/// A first run with the default settings looks back 30 days; when that finds nothing, the summary
/// says how many matching sales are older and names `--since`.
#[tokio::test]
async fn a_first_run_that_finds_nothing_says_what_the_cut_off_left_out() {
    let spec = SeedSpec {
        seed: 7,
        sales: 120,
        products: 40,
        base_time: chrono::NaiveDate::from_ymd_opt(2025, 6, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap(),
    };
    let config = SimConfig {
        rate_limit: 0,
        ..Default::default()
    };
    let server = dear_sim::start_seeded(config, &spec).await.unwrap();
    let picked = all_rows(&server)
        .await
        .iter()
        .filter(|r| r.status == SaleStatus::Picked)
        .count() as u64;
    assert!(picked > 0);
    let (store, clock) = memory();
    let defaults = TenantSettings::default().order_download;
    let h = harness(server, store, clock, defaults);
    let s = run(&h).await;
    assert_eq!((s.listed, s.delivered), (0, 0), "{s:?}");
    assert_eq!(s.older_than_first_run, Some(picked), "{s:?}");
    let note = s.first_run_note().expect("a note");
    assert!(
        note.contains("--since") && note.contains(&format!("{picked} matching sales")),
        "{note}"
    );
}

/// With the simulator's default data set (dated relative to now), a first run with every default
/// finds the recent PICKED sales.
#[tokio::test]
async fn a_first_run_with_defaults_finds_the_simulators_recent_sales() {
    let server = dear_sim::start_seeded(
        SimConfig {
            rate_limit: 0,
            ..Default::default()
        },
        &SeedSpec::default(),
    )
    .await
    .unwrap();
    let (store, clock) = memory();
    let h = harness(
        server,
        store,
        clock,
        TenantSettings::default().order_download,
    );
    let s = run(&h).await;
    assert!(s.delivered > 0, "{s:?}");
    assert!(
        s.first_run_since.is_some() && s.older_than_first_run.is_none(),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_failed_read_of_a_delivered_sale_never_delivers_that_version_again() {
    let server = sim(120).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let first = run(&h).await;
    assert!(first.delivered > 10, "{first:?}");
    let order = h.sink.orders.lock().unwrap()[0].clone();
    let sale_id: Uuid = order.sale_id.parse().unwrap();
    let location = order.location.clone().expect("a location");
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let tenant = TenantId::new("acme").unwrap();
    let before =
        dearsync_core::delivered::delivered_since(h.store.as_ref(), &tenant, since, &location)
            .await
            .unwrap();
    // DEAR's Updated moves (an attribute the order does not carry), and reading the sale then
    // fails with an answer that is not transient.
    h.server
        .sim
        .edit_sale(
            ACCOUNT,
            sale_id,
            &SaleEdit {
                attributes: [(7u8, "internal".to_owned())].into(),
                ..Default::default()
            },
        )
        .unwrap();
    h.server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "sale".into(),
            method: Some("GET".into()),
            sequence: [Fault::Status(404)].into(),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = run(&h).await;
    assert_eq!(second.failed, 1, "{second:?}");
    // The delivered order still counts as delivered for Inventory Sync.
    let during =
        dearsync_core::delivered::delivered_since(h.store.as_ref(), &tenant, since, &location)
            .await
            .unwrap();
    assert_eq!(during, before, "the delivered order is still subtracted");
    h.server.sim.clear_faults(ACCOUNT);
    h.clock.advance(chrono::Duration::minutes(5));
    let third = run(&h).await;
    assert_eq!((third.retried, third.delivered), (1, 0), "{third:?}");
    let sent = h
        .sink
        .sale_ids()
        .iter()
        .filter(|s| **s == order.sale_id)
        .count();
    assert_eq!(sent, 1, "the same version is not delivered again");
    let key = RecordKey::new(&tenant, Job::OrderDownload, order.sale_id.clone());
    assert_eq!(
        h.store.record(&key).await.unwrap().unwrap().state,
        RecordState::Done
    );
}

#[tokio::test]
async fn content_that_goes_back_to_an_earlier_version_is_a_new_delivery() {
    let server = sim(120).await;
    let (store, clock) = memory();
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    run(&h).await;
    let first = h.sink.orders.lock().unwrap()[0].clone();
    let sale_id: Uuid = first.sale_id.parse().unwrap();
    assert_eq!(
        first.delivery_id,
        format!("{}:{}", first.sale_id, first.version)
    );
    let memo = |text: Option<&str>| SaleEdit {
        order_memo: Some(text.unwrap_or_default().to_owned()),
        ..Default::default()
    };
    let original = first.notes.clone();
    // A → B → A.
    for edit in [
        memo(Some("Call before delivery")),
        memo(original.as_deref()),
    ] {
        h.server.sim.edit_sale(ACCOUNT, sale_id, &edit).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(run(&h).await.delivered, 1);
    }
    let all: Vec<_> = h
        .sink
        .orders
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.sale_id == first.sale_id)
        .cloned()
        .collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].version, first.version, "the content is A again");
    let ids: HashSet<_> = all.iter().map(|o| o.delivery_id.clone()).collect();
    assert_eq!(ids.len(), 3, "three deliveries, three ids: {ids:?}");
    assert_eq!(
        all[2].delivery_id,
        format!("{}:{}:3", first.sale_id, first.version)
    );
}

#[tokio::test]
async fn a_crashed_runs_delivery_is_taken_over_in_minutes_and_an_edit_made_meanwhile_is_delivered()
{
    // Its claim listed (a retry's) or unlisted (the listing's own): found by the in-flight
    // listing, or by the next listing from the cursor.
    for unlisted in [false, true] {
        a_crashed_runs_delivery_is_taken_over(unlisted).await;
    }
}

async fn a_crashed_runs_delivery_is_taken_over(unlisted: bool) {
    let server = sim(60).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("orders.ndjson");
    let (store, clock) = memory();
    let mut h = harness(
        server,
        store.clone(),
        clock.clone(),
        settings("sale_status = \"Any\"\n"),
    );
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::file(&out).unwrap());
    run(&h).await;
    let first = deliveries_in(&out);
    // A run claimed the delivery, wrote the line and died: its claim runs 15 more minutes.
    let (sale, _) = first[0].split_once(':').unwrap();
    let key = RecordKey::new(&TenantId::new("acme").unwrap(), Job::OrderDownload, sale);
    let done = store.record(&key).await.unwrap().unwrap();
    let mut detail: serde_json::Value =
        serde_json::from_str(done.detail.as_deref().unwrap()).unwrap();
    detail["claimed_by"] = serde_json::json!("run-that-died");
    let mut claim = dearsync_core::state::Transition::to(RecordState::InFlight)
        .due_at(clock.now_plus(15 * 60))
        .detail(detail.to_string());
    claim.unlisted = unlisted;
    store.transition(&done, claim).await.unwrap();
    // Meanwhile the sale is edited in DEAR.
    h.server
        .sim
        .edit_sale(
            ACCOUNT,
            sale.parse().unwrap(),
            &SaleEdit {
                order_memo: Some("Edited while the run was down".into()),
                ..Default::default()
            },
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A run two minutes later (longer than the longest delivery the default settings allow, 90 s;
    // the claim itself would run 13 more minutes): the dead run's claim is settled now, and the
    // edit delivered.
    h.clock.advance(chrono::Duration::minutes(2));
    let s = run(&h).await;
    assert_eq!(
        (s.recovered, s.delivered),
        (1, 1),
        "unlisted {unlisted}: {s:?}"
    );
    let after = deliveries_in(&out);
    assert_eq!(after.len(), first.len() + 1, "the edit, once");
    assert!(after.last().unwrap().starts_with(sale), "{after:?}");
    assert_eq!(
        store.record(&key).await.unwrap().unwrap().state,
        RecordState::Done
    );
}

#[tokio::test]
async fn a_delivery_a_killed_run_left_unwritten_to_its_file_is_delivered_by_the_next_run_at_once() {
    // The CLI's file sink is locked while a run has it open: the next run to open it knows the
    // dead run's delivery is over (no waiting out the longest delivery), and delivers it.
    let server = sim(60).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("orders.ndjson");
    let (store, clock) = memory();
    let mut h = harness(
        server,
        store.clone(),
        clock.clone(),
        settings("sale_status = \"Any\"\n"),
    );
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::file(&out).unwrap());
    run(&h).await;
    let first = deliveries_in(&out);
    // While the file is open as a sink, nobody else can open it as one.
    let second = dearsync_order_download::NdjsonSink::file(&out);
    assert!(
        matches!(
            second,
            Err(dearsync_order_download::SinkOpenError::InUse { .. })
        ),
        "the orders file is locked"
    );
    // A run claimed a delivery and was killed before writing its line.
    let (sale, _) = first[0].split_once(':').unwrap();
    let key = RecordKey::new(&TenantId::new("acme").unwrap(), Job::OrderDownload, sale);
    let done = store.record(&key).await.unwrap().unwrap();
    let mut detail: serde_json::Value =
        serde_json::from_str(done.detail.as_deref().unwrap()).unwrap();
    detail["claimed_by"] = serde_json::json!("run-that-died");
    detail["delivery_sequence"] = serde_json::json!(7);
    // The claim names the sink it delivered to: this file (the first run's claim recorded it).
    let this_file = detail["claimed_sink"].clone();
    assert!(
        this_file.as_str().is_some_and(|s| s.starts_with("file:")),
        "{detail}"
    );
    // A claim made for another sink (another file, a webhook) is not known to be over: waited out.
    detail["claimed_sink"] = serde_json::json!("file:0:0");
    let in_flight = store
        .transition(
            &done,
            dearsync_core::state::Transition::to(RecordState::InFlight)
                .due_at(clock.now_plus(15 * 60))
                .detail(detail.to_string()),
        )
        .await
        .unwrap();
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::stdout());
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::file(&out).unwrap());
    let s = run(&h).await;
    assert_eq!(s.delivered, 0, "another sink's claim is waited out: {s:?}");
    detail["claimed_sink"] = this_file;
    store
        .transition(
            &in_flight,
            dearsync_core::state::Transition::to(RecordState::InFlight)
                .due_at(clock.now_plus(15 * 60))
                .detail(detail.to_string()),
        )
        .await
        .unwrap();
    // The next run, the moment it has the file (the killed process's lock went with it).
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::stdout());
    h.job.sink = Arc::new(dearsync_order_download::NdjsonSink::file(&out).unwrap());
    let s = run(&h).await;
    assert_eq!((s.recovered, s.delivered), (0, 1), "{s:?}");
    let after = deliveries_in(&out);
    assert_eq!(after.len(), first.len() + 1, "delivered once more");
    assert!(after.last().unwrap().starts_with(sale), "{after:?}");
    assert_eq!(
        store.record(&key).await.unwrap().unwrap().state,
        RecordState::Done
    );
}

#[tokio::test]
async fn an_edit_skipped_by_the_attribute_filter_is_delivered_once_the_filter_matches_again() {
    let server = sim(120).await;
    let rows = all_rows(&server).await;
    let tagged = tag_wholesale(&server, &rows, 3);
    let (store, clock) = memory();
    let h = harness(
        server,
        store,
        clock,
        settings(
            "sale_status = \"Any\"\nadditional_attribute_filters = { \"5\" = \"wholesale\" }\n",
        ),
    );
    run(&h).await;
    let id = tagged[0];
    let first = h
        .sink
        .orders
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.sale_id == id.to_string())
        .count();
    assert_eq!(first, 1, "version A delivered");
    // Content A → B, and in the same edit the attribute no longer matches: B is skipped.
    let edit = SaleEdit {
        order_memo: Some("version B".into()),
        attributes: [(5u8, "Retail".to_owned())].into(),
        ..Default::default()
    };
    h.server.sim.edit_sale(ACCOUNT, id, &edit).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s = run(&h).await;
    assert_eq!(s.skipped.get("attribute_filter").copied(), Some(1), "{s:?}");
    // The attribute matches again (the version, which does not hash it, is still B): B goes.
    let back = SaleEdit {
        attributes: [(5u8, "Wholesale".to_owned())].into(),
        ..Default::default()
    };
    h.server.sim.edit_sale(ACCOUNT, id, &back).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s = run(&h).await;
    assert_eq!(s.delivered, 1, "{s:?}");
    let sent: Vec<_> = h
        .sink
        .orders
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.sale_id == id.to_string())
        .cloned()
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].notes.as_deref(), Some("version B"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_webhook_is_retried_on_5xx_and_never_on_4xx_counting_every_post() {
    use std::sync::Mutex;
    // The warehouse answers 503 to the first two posts of each delivery, then 200 — except for one
    // sale it refuses with 400 every time.
    let posts: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let (p, r) = (posts.clone(), refused.clone());
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (p, r) = (p.clone(), r.clone());
            async move {
                let id = headers["idempotency-key"].to_str().unwrap().to_owned();
                let order: serde_json::Value = serde_json::from_str(&body).unwrap();
                let sale = order["sale_id"].as_str().unwrap().to_owned();
                let n = {
                    let mut p = p.lock().unwrap();
                    let n = p.entry(id).or_default();
                    *n += 1;
                    *n
                };
                let mut r = r.lock().unwrap();
                if r.get_or_insert(sale.clone()) == &sale {
                    return axum::http::StatusCode::BAD_REQUEST;
                }
                if n <= 2 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Few sales: every retry waits its backoff (0.5 s, then 1 s, with jitter).
    let server = sim(4).await;
    let sink = dearsync_order_download::WebhookSink::new(
        &url,
        b"order-signing-key",
        Duration::from_secs(5),
        3,
        dearsync_outbound::OutboundPolicy {
            allow_loopback: true,
        },
    )
    .unwrap();
    let job = OrderDownload {
        ctx: JobContext::new(
            TenantId::new("acme").unwrap(),
            client(&server),
            Arc::new(MemoryStore::new(Arc::new(OffsetClock::default()))),
            Arc::new(OffsetClock::default()),
        ),
        settings: settings("sale_status = \"Any\"\n"),
        sink: Arc::new(sink),
    };
    let summary = job.run(&RunOptions::default()).await;
    let posts = posts.lock().unwrap().clone();
    assert!(summary.delivered >= 2, "{summary:?}");
    assert_eq!(summary.failed, 1, "the refused sale: {summary:?}");
    let counts: Vec<u32> = posts.values().copied().collect();
    assert_eq!(
        counts.iter().filter(|n| **n == 1).count(),
        1,
        "the 400 is posted once: {posts:?}"
    );
    assert!(
        counts.iter().filter(|n| **n != 1).all(|n| *n == 3),
        "every other delivery takes exactly 3 posts: {posts:?}"
    );
}

/// Hangs on one sale's delivery (a run that dies there); collects the rest.
struct HangsOn {
    sale: String,
    rest: Arc<CollectingSink>,
}

#[async_trait::async_trait]
impl dearsync_order_download::OrderSink for HangsOn {
    async fn deliver(
        &self,
        order: &dearsync_order_download::CanonicalOrder,
    ) -> Result<dearsync_order_download::Receipt, dearsync_order_download::SinkError> {
        if order.sale_id == self.sale {
            futures::future::pending::<()>().await;
        }
        self.rest.deliver(order).await
    }

    async fn cancel(
        &self,
        cancel: &dearsync_order_download::OrderCancel,
    ) -> Result<(), dearsync_order_download::SinkError> {
        self.rest.cancel(cancel).await
    }
}

/// A run's claim is kept out of the ledger's listings (two writes fewer per order): the cursor's
/// next listing is what finds it again. So a run that finds a claim still live — its claimant lost
/// the lease mid-delivery and may yet finish — delivers what comes after it but saves the cursor
/// before it, and a run after the claim lapsed delivers it, once.
async fn a_live_claim_holds_the_cursor_until_it_is_taken_over(kind: common::StoreKind) {
    let server = sim(40).await;
    let clock = Arc::new(OffsetClock::default());
    let store = common::store_of(kind, clock.clone() as Arc<dyn dearsync_core::Clock>).await;
    let mut h = harness(
        server,
        store.store.clone(),
        clock.clone(),
        settings("sale_status = \"Any\"\n"),
    );
    run(&h).await;
    let first = h.sink.sale_ids();
    let (x, y): (Uuid, Uuid) = (first[0].parse().unwrap(), first[1].parse().unwrap());
    // Both edited after the cursor, 19 minutes apart: more than the listing's 10-minute overlap.
    let t0 = chrono::Utc::now().naive_utc();
    for (id, minutes) in [(x, 1), (y, 20)] {
        let edit = SaleEdit {
            order_memo: Some(format!("edited at +{minutes} min")),
            ..Default::default()
        };
        h.server.sim.edit_sale(ACCOUNT, id, &edit).unwrap();
        h.server.sim.with_data_mut(ACCOUNT, |d| {
            d.sales.get_mut(&id).unwrap().updated = t0 + chrono::Duration::minutes(minutes);
        });
    }
    h.clock.advance(chrono::Duration::minutes(25));

    // A run with a 10 s lease claims X's delivery and hangs there; it is killed.
    let collecting = h.sink.clone();
    h.job.sink = Arc::new(HangsOn {
        sale: x.to_string(),
        rest: collecting.clone(),
    });
    let short_lease = RunOptions {
        lease_ttl: chrono::Duration::seconds(10),
        ..Default::default()
    };
    let killed = tokio::time::timeout(Duration::from_secs(3), h.job.run(&short_lease)).await;
    assert!(killed.is_err(), "{kind:?}: the run hangs on {x}");
    h.job.sink = collecting.clone();
    let key = RecordKey::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        x.to_string(),
    );
    let claim = h.store.record(&key).await.unwrap().unwrap();
    assert_eq!(claim.state, RecordState::InFlight, "{kind:?}");
    assert!(!claim.is_listed(), "{kind:?}: a run's claim is unlisted");
    assert!(
        !ledger_entities(&h.store, RecordState::InFlight)
            .await
            .contains(&x.to_string()),
        "{kind:?}"
    );

    // 30 s on, its lease has lapsed but its delivery may still end (the longest one takes 90 s):
    // X is left to it, Y is delivered, and the cursor stays before X.
    h.clock.advance(chrono::Duration::seconds(30));
    let held = run(&h).await;
    assert_eq!(held.delivered, 1, "{kind:?}: {held:?}");
    assert_eq!(collecting.sale_ids().last(), Some(&y.to_string()));
    let cursor = held.cursor_after.as_deref().expect("a cursor");
    let cursor = chrono::DateTime::parse_from_rfc3339(cursor).unwrap();
    assert!(
        cursor.naive_utc() < t0 + chrono::Duration::minutes(1),
        "{kind:?}: the cursor {cursor} passed the sale in flight"
    );

    // Three minutes on, the claim is over: X's edit is delivered, once, and the cursor moves on.
    h.clock.advance(chrono::Duration::minutes(3));
    let taken = run(&h).await;
    assert_eq!(
        (taken.retried, taken.delivered),
        (1, 1),
        "{kind:?}: {taken:?}"
    );
    let all = collecting.sale_ids();
    let count = |id: Uuid| all.iter().filter(|s| **s == id.to_string()).count();
    assert_eq!((count(x), count(y)), (2, 2), "{kind:?}: {all:?}");
    let done = h.store.record(&key).await.unwrap().unwrap();
    assert_eq!(done.state, RecordState::Done, "{kind:?}");
    assert!(done.is_listed(), "{kind:?}");
    let again = run(&h).await;
    assert_eq!(
        (again.delivered, again.fetched),
        (0, 0),
        "{kind:?}: {again:?}"
    );
}

#[tokio::test]
async fn a_live_claim_holds_the_cursor_on_every_store() {
    for kind in [
        common::StoreKind::Memory,
        common::StoreKind::Sqlite,
        common::StoreKind::Dynamo,
    ] {
        a_live_claim_holds_the_cursor_until_it_is_taken_over(kind).await;
    }
}

/// What a delivered order costs DynamoDB in write units, measured on the AWS emulator through the
/// write model (moto reports none per index): a run's claim stays out of the state index, so a
/// delivery costs 4 units of ledger — the claim (1) with its order-number entry (1), the outcome
/// (1) entering the done listing (1) — where a listed claim, as a webhook's still is, costs 6 (its
/// state entry added, then moved).
#[tokio::test]
async fn a_delivered_order_costs_four_write_units_of_ledger_a_webhooks_six() {
    use dearsync_aws::testing;
    use dearsync_aws::write_units::WriteMeter;
    let server = sim(40).await;
    let meter = WriteMeter::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&testing::sdk_config())
            .interceptor(meter.clone())
            .build(),
    );
    let table = testing::fresh_table().await;
    let clock = Arc::new(OffsetClock::default());
    let store: Arc<dyn StateStore> = Arc::new(dearsync_aws::DynamoStore::new(
        client,
        &table,
        clock.clone(),
    ));
    let h = harness(server, store, clock, settings("sale_status = \"Any\"\n"));
    let first = run(&h).await;
    let after_first = meter.units();
    // A first run from `earliest_order_date`: each delivered order 2 table writes and one entry
    // in each index; each skipped one a record entering both.
    let records = first.delivered + first.skipped_total();
    assert!(first.delivered > 10, "{first:?}");
    assert_eq!(
        (
            after_first.ledger_table,
            after_first.ledger_gsi1,
            after_first.ledger_gsi2
        ),
        (first.delivered + records, records, records),
        "{first:?}"
    );

    let delivered = h.sink.sale_ids();
    let edit = |id: &str, memo: &str| {
        let edit = SaleEdit {
            order_memo: Some(memo.into()),
            ..Default::default()
        };
        h.server
            .sim
            .edit_sale(ACCOUNT, id.parse().unwrap(), &edit)
            .unwrap();
    };
    // An edit the next run delivers again.
    edit(&delivered[0], "polled edit");
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.clock.advance(chrono::Duration::minutes(1));
    let polled = run(&h).await;
    assert_eq!(polled.delivered, 1, "{polled:?}");
    let cost = meter.units().since(&after_first);
    assert_eq!(
        (cost.ledger_table, cost.ledger_gsi1, cost.ledger_gsi2),
        (2, 2, 0),
        "a polled delivery: {cost:?}"
    );

    // The same through the order webhook.
    edit(&delivered[1], "webhook edit");
    let before = meter.units();
    let hooked = h.job.download_one(delivered[1].parse().unwrap()).await;
    assert_eq!(hooked.delivered, 1, "{hooked:?}");
    let cost = meter.units().since(&before);
    assert_eq!(
        (cost.ledger_table, cost.ledger_gsi1, cost.ledger_gsi2),
        (2, 4, 0),
        "a webhook's delivery: {cost:?}"
    );
}

/// A run dies mid-delivery, and its sale then leaves the filters (here: voided), so no listing
/// from the cursor finds its claim again. The next run, taking over the lapsed lease, searches
/// the records for unlisted claims and settles it: the warehouse, which may hold the order, is
/// told to cancel it.
async fn a_dead_runs_claim_is_found_though_its_sale_left_the_filters(kind: common::StoreKind) {
    let server = sim(150).await;
    let clock = Arc::new(OffsetClock::default());
    let store = common::store_of(kind, clock.clone() as Arc<dyn dearsync_core::Clock>).await;
    // The default filter: PICKED.
    let mut h = harness(server, store.store.clone(), clock.clone(), settings(""));
    run(&h).await;
    let delivered = h.sink.sale_ids();
    let picked: Vec<Uuid> = all_rows(&h.server)
        .await
        .into_iter()
        .filter(|r| {
            r.status == SaleStatus::Picked
                && r.sale_type == SaleType::Simple
                && delivered.contains(&r.sale_id.to_string())
        })
        .map(|r| r.sale_id)
        .take(2)
        .collect();
    let [x, y] = picked[..] else {
        panic!("{kind:?}: two delivered PICKED sales")
    };
    let t0 = chrono::Utc::now().naive_utc();
    let touch = |id: Uuid, memo: Option<&str>, void: bool, minutes: i64| {
        let edit = SaleEdit {
            order_memo: memo.map(str::to_owned),
            void,
            ..Default::default()
        };
        h.server.sim.edit_sale(ACCOUNT, id, &edit).unwrap();
        h.server.sim.with_data_mut(ACCOUNT, |d| {
            d.sales.get_mut(&id).unwrap().updated = t0 + chrono::Duration::minutes(minutes);
        });
    };
    touch(x, Some("edited"), false, 1);
    h.clock.advance(chrono::Duration::minutes(25));

    // A run claims X's new version and dies delivering it.
    let collecting = h.sink.clone();
    h.job.sink = Arc::new(HangsOn {
        sale: x.to_string(),
        rest: collecting.clone(),
    });
    let killed =
        tokio::time::timeout(Duration::from_secs(3), h.job.run(&RunOptions::default())).await;
    assert!(killed.is_err(), "{kind:?}: the run hangs on {x}");
    h.job.sink = collecting.clone();
    // X is voided in DEAR (out of the PICKED filter); Y changes long after it.
    touch(x, None, true, 2);
    touch(y, Some("edited"), false, 20);

    // Three minutes on: the next run takes over the lapsed lease and finds X's claim. A
    // cancellation waits for the claim's own deadline, so X stays in flight; Y is delivered,
    // and the cursor moves past X by more than the overlap.
    h.clock.advance(chrono::Duration::minutes(3));
    let next = run(&h).await;
    assert_eq!(next.delivered, 1, "{kind:?}: {next:?}");
    let key = RecordKey::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        x.to_string(),
    );
    assert_eq!(
        h.store.record(&key).await.unwrap().unwrap().state,
        RecordState::InFlight
    );
    // That run handed its lease over instead of releasing it: a run at once is not kept out
    // for the lease's two minutes, and it searches again (X is still not due).
    let at_once = run(&h).await;
    assert_eq!(
        (at_once.delivered, at_once.cancelled),
        (0, 0),
        "{kind:?}: {at_once:?}"
    );
    assert_eq!(
        h.store.record(&key).await.unwrap().unwrap().state,
        RecordState::InFlight
    );

    // Past the claim's deadline: a run searches again and has the warehouse cancel X.
    h.clock.advance(chrono::Duration::minutes(13));
    let last = run(&h).await;
    assert_eq!(last.cancelled, 1, "{kind:?}: {last:?}");
    let cancels = collecting.cancels.lock().unwrap().clone();
    assert!(
        cancels.iter().any(|c| c.sale_id == x.to_string()),
        "{kind:?}: {cancels:?}"
    );
    let settled = h.store.record(&key).await.unwrap().unwrap();
    assert_ne!(
        settled.state,
        RecordState::InFlight,
        "{kind:?}: {settled:?}"
    );
    // Nothing left to search for: the run released its lease.
    let again = run(&h).await;
    assert_eq!(
        (again.delivered, again.cancelled),
        (0, 0),
        "{kind:?}: {again:?}"
    );
}

#[tokio::test]
async fn a_dead_runs_claim_is_found_on_every_store_though_its_sale_left_the_filters() {
    for kind in [
        common::StoreKind::Memory,
        common::StoreKind::Sqlite,
        common::StoreKind::Dynamo,
    ] {
        a_dead_runs_claim_is_found_though_its_sale_left_the_filters(kind).await;
    }
}

/// A webhook URL may carry a secret (a token in its path or query): a failed delivery's reason,
/// kept in the ledger and shown by `dearsync orders`, names only its host.
#[tokio::test]
async fn a_webhook_urls_secret_is_never_kept_in_a_failed_deliverys_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/hooks/path-SECRET?token=query-SECRET");
    let server = sim(4).await;
    let sink = dearsync_order_download::WebhookSink::new(
        &url,
        b"order-signing-key",
        Duration::from_secs(2),
        1,
        dearsync_outbound::OutboundPolicy {
            allow_loopback: true,
        },
    )
    .unwrap();
    let (store, clock) = memory();
    let job = OrderDownload {
        ctx: JobContext::new(
            TenantId::new("acme").unwrap(),
            client(&server),
            store.clone(),
            clock,
        ),
        settings: settings("sale_status = \"Any\"\n"),
        sink: Arc::new(sink),
    };
    let summary = job.run(&RunOptions::default()).await;
    assert!(summary.failed >= 1, "{summary:?}");
    let mut q = LedgerQuery::new(
        &TenantId::new("acme").unwrap(),
        Job::OrderDownload,
        RecordState::Failed,
    );
    q.limit = 100;
    let failed = store.list(&q).await.unwrap().records;
    assert!(!failed.is_empty());
    for rec in failed {
        let reason = rec.reason.unwrap_or_default();
        assert!(reason.contains("could not be reached"), "{reason}");
        assert!(
            !reason.contains("SECRET"),
            "the URL's secret is in the reason: {reason}"
        );
    }
}
