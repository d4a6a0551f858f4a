//! Fan-out: a schedule without a tenant enqueues one run per due tenant (when the deployment has a
//! run queue), and each queued message runs one tenant, in parallel with the others.

use chrono::{DateTime, Utc};
use dearsync_core::dispatch::{DispatchSummary, RunQueue, TenantRun};
use dearsync_core::{Job, TenantId};
use dearsync_function_support::{Deps, HandlerError, SqsBatchResponse, SqsEvent, sqs_batch};
use dearsync_order_download::RunOptions;
use serde_json::Value;

use crate::event::backfill_since;
use crate::{NotRun, report, run_tenant};

/// Enqueues a run of every enabled tenant whose `poll_interval_minutes` has passed.
pub(crate) async fn dispatch_runs(
    deps: &Deps,
    queue: &dyn RunQueue,
) -> Result<DispatchSummary, HandlerError> {
    deps.dispatch(queue, Job::OrderDownload, |s| {
        Some(chrono::Duration::minutes(i64::from(
            s.order_download.poll_interval_minutes,
        )))
    })
    .await
}

/// Runs each queued tenant. A run that started is done with its message whatever it found (its
/// failed deliveries are in the ledger, retried by later runs); a tenant that cannot be worked
/// for returns its message, so it is retried and, if it never can be, kept in the DLQ.
pub(crate) async fn run_queued(
    deps: &Deps,
    batch: SqsEvent,
    opts: &RunOptions,
) -> SqsBatchResponse {
    sqs_batch(batch, "order-download", async |body: Value| {
        let (tenant, since) = queued_run(&body)?;
        let opts = RunOptions {
            since,
            ..opts.clone()
        };
        let summary = run_tenant(deps, &tenant, &opts).await?;
        report(&summary, deps);
        Ok::<(), NotRun>(())
    })
    .await
}

/// The tenant a queued message names, and a backfill's start if it asks for one.
fn queued_run(body: &Value) -> Result<(TenantId, Option<DateTime<Utc>>), NotRun> {
    let run = serde_json::from_value::<TenantRun>(body.clone()).map_err(|e| {
        NotRun::BadMessage(format!(
            "expected {{\"tenant\": \"<id>\", \"since\"?: \"<date>\"}}: {e}"
        ))
    })?;
    let since = backfill_since(body).map_err(|e| NotRun::BadMessage(e.to_string()))?;
    Ok((run.tenant, since))
}
