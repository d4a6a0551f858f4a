//! The run log: per tenant and job, how the last run ended, when one last succeeded, and running
//! totals: what `dearsync status` shows and what the heartbeat metric is computed from.
//!
//! One small item per tenant and job, rewritten at the end of each run (a read and a conditional
//! write), so its cost does not grow with the orders a run handles.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Job, StoreError, TenantId};

/// How a run ended, as far as the run log cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// It did its work (individual records may still have failed: see the counts).
    Completed,
    /// It stopped at its deadline; the next run resumes.
    StoppedAtDeadline,
    /// DEAR, the store or the settings stopped it.
    Aborted,
}

impl RunOutcome {
    /// True when the run reached DEAR and did its work (for the heartbeat).
    pub fn succeeded(self) -> bool {
        !matches!(self, RunOutcome::Aborted)
    }
}

/// What one run reports at its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Why it was aborted, or any note for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What it did, by name (`delivered`, `skipped`, `failed`, `dear_calls`…).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
}

/// The stored run log of one tenant and job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHistory {
    /// The last run.
    pub last: RunReport,
    /// When a run last succeeded ([`RunOutcome::succeeded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
    /// Runs recorded.
    pub runs: u64,
    /// Every run's counts summed.
    #[serde(default)]
    pub totals: BTreeMap<String, u64>,
    /// +1 on every write; the condition of the next one.
    #[serde(default)]
    pub revision: u64,
}

impl RunHistory {
    /// The history after `report` (what every adapter writes).
    pub fn after(previous: Option<&RunHistory>, report: &RunReport) -> RunHistory {
        let mut totals = previous.map(|p| p.totals.clone()).unwrap_or_default();
        for (name, n) in &report.counts {
            *totals.entry(name.clone()).or_default() += n;
        }
        RunHistory {
            last: report.clone(),
            // The latest success, whatever order two runs' reports arrive in.
            last_success_at: previous
                .and_then(|p| p.last_success_at)
                .into_iter()
                .chain(report.outcome.succeeded().then_some(report.ended_at))
                .max(),
            runs: previous.map_or(0, |p| p.runs) + 1,
            totals,
            revision: previous.map_or(0, |p| p.revision) + 1,
        }
    }
}

/// Where runs are logged.
#[async_trait]
pub trait RunLog: Send + Sync {
    /// Adds `report` to `tenant`'s `job` history; returns the history written. Concurrent runs of
    /// one tenant and job (a webhook beside a poll) are both counted.
    async fn record_run(
        &self,
        tenant: &TenantId,
        job: Job,
        report: &RunReport,
    ) -> Result<RunHistory, StoreError>;

    /// The history of `tenant`'s `job`; `None` before its first run.
    async fn run_history(
        &self,
        tenant: &TenantId,
        job: Job,
    ) -> Result<Option<RunHistory>, StoreError>;
}

/// Logs `report` for `tenant`'s `job`. A store that fails here is only warned about: the run's
/// work is done and recorded in the ledger; only `dearsync status` would show an older run.
pub async fn record_or_warn(log: &dyn RunLog, tenant: &TenantId, job: Job, report: &RunReport) {
    if let Err(e) = log.record_run(tenant, job, report).await {
        tracing::warn!(tenant = %tenant, job = %job, error = %e, "could not log the run");
    }
}

impl RunReport {
    /// A report of a run from `started_at` to `ended_at` that ended as `outcome`, with `counts`
    /// (zeros left out).
    pub fn new<'a>(
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        outcome: RunOutcome,
        counts: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> RunReport {
        RunReport {
            started_at,
            ended_at,
            outcome,
            note: None,
            counts: counts
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_owned(), n))
                .collect(),
        }
    }

    /// The report with `note`.
    pub fn note(mut self, note: impl Into<String>) -> RunReport {
        self.note = Some(note.into());
        self
    }
}

/// How many times an adapter re-reads and retries a run-log write that lost a race.
pub const RECORD_RUN_ATTEMPTS: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: RunOutcome, at: i64, delivered: u64) -> RunReport {
        RunReport {
            started_at: DateTime::from_timestamp(at - 5, 0).unwrap(),
            ended_at: DateTime::from_timestamp(at, 0).unwrap(),
            outcome,
            note: None,
            counts: BTreeMap::from([("delivered".to_owned(), delivered)]),
        }
    }

    #[test]
    fn an_aborted_run_keeps_the_last_success_and_every_run_adds_its_counts() {
        let first = RunHistory::after(None, &report(RunOutcome::Completed, 100, 3));
        assert_eq!(first.runs, 1);
        assert_eq!(first.last_success_at.unwrap().timestamp(), 100);
        let second = RunHistory::after(Some(&first), &report(RunOutcome::Aborted, 200, 1));
        assert_eq!(second.last.outcome, RunOutcome::Aborted);
        assert_eq!(second.last_success_at.unwrap().timestamp(), 100);
        assert_eq!(second.totals["delivered"], 4);
        assert_eq!((second.runs, second.revision), (2, 2));
        let third = RunHistory::after(
            Some(&second),
            &report(RunOutcome::StoppedAtDeadline, 300, 0),
        );
        assert_eq!(third.last_success_at.unwrap().timestamp(), 300);
    }
}
