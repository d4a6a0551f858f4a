//! Fan-out: a schedule's one invocation enqueues one run per due tenant, and workers run tenants in
//! parallel, each on its own DEAR budget; a slow or failing tenant never delays another.
//!
//! A tenant is due when its last dispatch of the job is at least its interval old (less a little,
//! so a tenant polled every five minutes by a five-minute schedule is not skipped every other time
//! for a schedule that fires a second early). Each dispatch is recorded under a cursor with a
//! conditional write, so two dispatchers firing at once enqueue a tenant once; a duplicate message
//! would still be harmless (the run lease keeps a tenant's runs from overlapping).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::settings::TenantSettings;
use crate::state::{CursorKey, StateStore};
use crate::{Job, RunHistory, StoreError, TenantId};

/// The cursor recording a job's last dispatch for a tenant.
pub const DISPATCHED_CURSOR: &str = "dispatched";

/// How much earlier than its interval a tenant counts as due: schedules fire up to a minute
/// late or early, and an interval equal to the schedule's rate must not skip every other period.
pub const DUE_TOLERANCE_SECS: i64 = 30;

/// A message asking a worker to run one tenant's job now: `{"tenant": "acme"}`, or an operator's
/// backfill `{"tenant": "acme", "since": "2026-10-01"}`. Any other field is refused, not ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRun {
    /// Whose run.
    pub tenant: TenantId,
    /// A backfill's start, as the operator wrote it (the job reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Why a message could not be enqueued.
#[derive(Debug, thiserror::Error)]
#[error("cannot enqueue the run of tenant {tenant}: {detail}")]
pub struct QueueError {
    /// Whose run.
    pub tenant: TenantId,
    /// What the queue answered.
    pub detail: String,
}

/// Where runs are enqueued (SQS in Lambda; in memory in tests).
#[async_trait]
pub trait RunQueue: Send + Sync {
    /// Enqueues one message per run; answers the runs that could not be enqueued, each with why.
    async fn enqueue(&self, runs: &[TenantRun]) -> Vec<QueueError>;
}

/// What one dispatch did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DispatchSummary {
    /// The job.
    pub job: String,
    /// Tenants whose run was enqueued.
    pub enqueued: Vec<String>,
    /// Enabled tenants not due yet.
    pub not_due: u64,
    /// Disabled tenants.
    pub disabled: u64,
    /// Tenants left out, with why: unreadable settings, a store or queue failure.
    pub failed: BTreeMap<String, String>,
    /// The heartbeat: per enabled tenant, how many of its intervals have passed since its last
    /// successful run of the job ([`periods_missed`]).
    pub periods_missed: BTreeMap<String, u64>,
}

impl DispatchSummary {
    /// The dispatch as CloudWatch EMF lines: one `<job>-dispatch` line (its presence is the
    /// dispatcher's own heartbeat) and one `PollPeriodsMissed` line per tenant.
    pub fn emf_lines(&self, timestamp_ms: i64) -> Vec<String> {
        let dispatcher = format!("{}-dispatch", self.job);
        let mut lines = vec![crate::metrics::emf_line(
            timestamp_ms,
            &[("Job", &dispatcher)],
            &[
                ("TenantsDue", self.enqueued.len() as u64),
                ("TenantsNotDue", self.not_due),
                ("TenantsFailed", self.failed.len() as u64),
            ],
        )];
        for (tenant, missed) in &self.periods_missed {
            lines.push(crate::metrics::emf_line(
                timestamp_ms,
                &[("Tenant", tenant), ("Job", &self.job)],
                &[("PollPeriodsMissed", *missed)],
            ));
        }
        lines
    }
}

/// How many `every` intervals have passed since `history`'s last successful run: 0 before a
/// first run (nothing to miss yet); every run so far when none succeeded.
pub fn periods_missed(history: Option<&RunHistory>, every: Duration, now: DateTime<Utc>) -> u64 {
    let Some(history) = history else {
        return 0;
    };
    match history.last_success_at {
        Some(at) => {
            let gone = (now - at).num_seconds().max(0);
            u64::try_from(gone / every.num_seconds().max(1)).unwrap_or(0)
        }
        None => history.runs,
    }
}

/// Why a dispatch could not run at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the tenants to dispatch: {0}")]
pub struct DispatchError(#[source] pub StoreError);

/// True when a job last dispatched at `last` is due again at `now`, every `interval`.
pub fn is_due(last: Option<DateTime<Utc>>, interval: Duration, now: DateTime<Utc>) -> bool {
    last.is_none_or(|last| now - last >= interval - Duration::seconds(DUE_TOLERANCE_SECS))
}

/// Enqueues `job` for every enabled tenant that is due by `interval` of its settings (`None`:
/// the tenant does not take this job, e.g. no snapshot URL to pull).
pub async fn dispatch(
    store: &dyn StateStore,
    queue: &dyn RunQueue,
    job: Job,
    now: DateTime<Utc>,
    interval: impl Fn(&TenantSettings) -> Option<Duration>,
) -> Result<DispatchSummary, DispatchError> {
    let mut summary = DispatchSummary {
        job: job.as_str().to_owned(),
        ..Default::default()
    };
    let mut runs = Vec::new();
    let mut claims = BTreeMap::new();
    for entry in store.tenants().await.map_err(DispatchError)? {
        if !entry.enabled {
            summary.disabled += 1;
            continue;
        }
        let every = match TenantSettings::from_toml(&entry.settings_toml) {
            Ok(settings) => match interval(&settings) {
                Some(every) => every,
                None => continue,
            },
            Err(e) => {
                summary
                    .failed
                    .insert(entry.tenant.to_string(), e.to_string());
                continue;
            }
        };
        match store.run_history(&entry.tenant, job).await {
            Ok(history) => {
                let missed = periods_missed(history.as_ref(), every, now);
                summary
                    .periods_missed
                    .insert(entry.tenant.to_string(), missed);
            }
            Err(e) => {
                tracing::warn!(tenant = %entry.tenant, error = %e, "cannot read the run log for the heartbeat");
            }
        }
        match claim_period(store, &entry.tenant, job, every, now).await {
            Ok(Some(claimed)) => {
                runs.push(TenantRun {
                    tenant: entry.tenant.clone(),
                    since: None,
                });
                claims.insert(entry.tenant, claimed);
            }
            Ok(None) => summary.not_due += 1,
            Err(e) => {
                summary
                    .failed
                    .insert(entry.tenant.to_string(), e.to_string());
            }
        }
    }
    let refused = queue.enqueue(&runs).await;
    for e in &refused {
        tracing::error!(tenant = %e.tenant, job = job.as_str(), error = %e.detail, "run not enqueued");
        summary.failed.insert(e.tenant.to_string(), e.to_string());
        // Not enqueued: the period is given back, so the next dispatch enqueues it.
        if let Some(claimed) = claims.get(&e.tenant)
            && let Err(undo) = claimed.give_back(store).await
        {
            tracing::warn!(tenant = %e.tenant, error = %undo, "the missed period stays recorded; the tenant is polled one interval later");
        }
    }
    summary.enqueued = runs
        .into_iter()
        .map(|r| r.tenant.to_string())
        .filter(|t| !summary.failed.contains_key(t))
        .collect();
    Ok(summary)
}

/// A period's dispatch, recorded: what to restore if the run could not be enqueued.
struct Claimed {
    key: CursorKey,
    version: u64,
    previous: Option<String>,
}

impl Claimed {
    /// Restores the previous dispatch time (or a time long past, when there was none).
    async fn give_back(&self, store: &dyn StateStore) -> Result<(), StoreError> {
        let value = self.previous.as_deref().unwrap_or(NEVER);
        store
            .save_cursor(&self.key, value, Some(self.version))
            .await
            .map(|_| ())
    }
}

/// The dispatch time of a tenant never dispatched, once a period was given back.
const NEVER: &str = "1970-01-01T00:00:00.000Z";

/// Records this period's dispatch of the tenant if it is due: `None` when it is not, or when
/// another dispatcher recorded it first.
async fn claim_period(
    store: &dyn StateStore,
    tenant: &TenantId,
    job: Job,
    every: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Claimed>, StoreError> {
    let key = CursorKey::new(tenant, job, DISPATCHED_CURSOR);
    let last = store.cursor(&key).await?;
    let last_at = last
        .as_ref()
        .and_then(|c| DateTime::parse_from_rfc3339(&c.value).ok())
        .map(|d| d.with_timezone(&Utc));
    if !is_due(last_at, every, now) {
        return Ok(None);
    }
    let value = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    match store
        .save_cursor(&key, &value, last.as_ref().map(|c| c.version))
        .await
    {
        Ok(saved) => Ok(Some(Claimed {
            key,
            version: saved.version,
            previous: last.map(|c| c.value),
        })),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs enqueued in memory, for tests and the CLI.
#[derive(Default)]
pub struct MemoryRunQueue {
    runs: std::sync::Mutex<Vec<TenantRun>>,
}

impl MemoryRunQueue {
    /// Takes the runs enqueued so far.
    pub fn take(&self) -> Vec<TenantRun> {
        std::mem::take(&mut *self.runs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl RunQueue for MemoryRunQueue {
    async fn enqueue(&self, runs: &[TenantRun]) -> Vec<QueueError> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(runs);
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn periods_missed_count_from_the_last_success_and_start_at_the_first_run() {
        use crate::{RunOutcome, RunReport};
        let at = |m: i64| DateTime::from_timestamp(1_800_000_000 + m * 60, 0).unwrap();
        let every = Duration::minutes(5);
        assert_eq!(
            periods_missed(None, every, at(100)),
            0,
            "never run: nothing missed yet"
        );
        let ok = RunReport::new(at(0), at(0), RunOutcome::Completed, []);
        let history = RunHistory::after(None, &ok);
        assert_eq!(periods_missed(Some(&history), every, at(4)), 0);
        assert_eq!(periods_missed(Some(&history), every, at(15)), 3);
        let failed = RunReport::new(at(0), at(0), RunOutcome::Aborted, []);
        let never_ok = RunHistory::after(Some(&RunHistory::after(None, &failed)), &failed);
        assert_eq!(periods_missed(Some(&never_ok), every, at(10)), 2);
    }
    use crate::state::{TenantDirectory, TenantEntry};
    use crate::{ManualClock, MemoryStore};

    fn at(minute: i64, second: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::minutes(minute)
            + Duration::seconds(second)
    }

    #[test]
    fn a_tenant_is_due_once_its_interval_has_passed_give_or_take_a_late_schedule() {
        let five = Duration::minutes(5);
        assert!(is_due(None, five, at(0, 0)));
        assert!(!is_due(Some(at(0, 0)), five, at(4, 0)));
        // A five-minute schedule that fires a few seconds early still polls every period.
        assert!(is_due(Some(at(0, 0)), five, at(4, 50)));
        assert!(is_due(Some(at(0, 0)), five, at(6, 0)));
    }

    async fn tenant(store: &MemoryStore, name: &str, enabled: bool, settings: &str) {
        store
            .put_tenant(&TenantEntry {
                tenant: TenantId::new(name).unwrap(),
                enabled,
                settings_toml: settings.to_owned(),
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn each_due_tenant_is_enqueued_once_per_its_interval_and_the_rest_are_counted() {
        let clock = Arc::new(ManualClock::at(at(0, 0)));
        let store = MemoryStore::new(clock.clone());
        tenant(&store, "every-5", true, "").await;
        tenant(
            &store,
            "hourly",
            true,
            "[order_download]\npoll_interval_minutes = 60\n",
        )
        .await;
        tenant(&store, "off", false, "").await;
        tenant(
            &store,
            "broken",
            true,
            "[order_download]\nsale_status = 7\n",
        )
        .await;
        let queue = MemoryRunQueue::default();
        let interval = |s: &TenantSettings| {
            Some(Duration::minutes(i64::from(
                s.order_download.poll_interval_minutes,
            )))
        };
        let run = |now| dispatch(&store, &queue, Job::OrderDownload, now, interval);
        let first = run(at(0, 0)).await.unwrap();
        assert_eq!(first.enqueued, ["every-5", "hourly"]);
        assert_eq!((first.disabled, first.not_due), (1, 0));
        assert!(first.failed.contains_key("broken"), "{first:?}");
        assert_eq!(queue.take().len(), 2);
        // Two dispatchers in the same minute: nothing is enqueued twice.
        let again = run(at(0, 10)).await.unwrap();
        assert!(again.enqueued.is_empty(), "{again:?}");
        assert_eq!(again.not_due, 2);
        let later = run(at(5, 0)).await.unwrap();
        assert_eq!(later.enqueued, ["every-5"]);
        assert_eq!(
            run(at(60, 0)).await.unwrap().enqueued,
            ["every-5", "hourly"]
        );
    }

    /// A queue that refuses every run.
    struct Down;

    #[async_trait]
    impl RunQueue for Down {
        async fn enqueue(&self, runs: &[TenantRun]) -> Vec<QueueError> {
            runs.iter()
                .map(|r| QueueError {
                    tenant: r.tenant.clone(),
                    detail: "ServiceUnavailable".into(),
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn a_run_the_queue_refused_is_named_and_enqueued_by_the_next_dispatch() {
        let clock = Arc::new(ManualClock::at(at(0, 0)));
        let store = MemoryStore::new(clock.clone());
        tenant(&store, "acme", true, "").await;
        let every = |_: &TenantSettings| Some(Duration::minutes(5));
        let down = dispatch(&store, &Down, Job::OrderDownload, at(0, 0), every)
            .await
            .unwrap();
        assert!(down.enqueued.is_empty());
        assert!(
            down.failed["acme"].contains("ServiceUnavailable"),
            "{down:?}"
        );
        let queue = MemoryRunQueue::default();
        let next = dispatch(&store, &queue, Job::OrderDownload, at(1, 0), every)
            .await
            .unwrap();
        assert_eq!(next.enqueued, ["acme"], "not left until the next interval");
        assert_eq!(queue.take().len(), 1);
    }
}
