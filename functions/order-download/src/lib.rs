//! The Order Download Lambda's handler, apart from the runtime so tests can drive it directly.
//!
//! Events:
//! * an EventBridge schedule: `{"tenant": "acme"}` (Scheduler input or a rule's constant input) or
//!   `{"detail": {"tenant": "acme"}, ...}`: one tenant's run. Without a tenant: with a run queue
//!   (`TENANT_RUN_QUEUE_URL`, the deployed stack), one message per due tenant is enqueued; without
//!   one, every enabled tenant runs in turn, each isolated (one tenant's failure never stops
//!   another);
//! * SQS records `{"tenant": "acme"}` from the run queue: each one tenant's run;
//! * an operator's resend `{"tenant": "acme", "resend": ["<sale id>", …]}`: those sales delivered
//!   again at their current version under new delivery ids (`resend_of` names the one repeated);
//! * a Function URL request `POST /dear/<tenant>` from a DEAR `Sale/...` webhook, carrying the
//!   tenant's inbound secret in the `x-dearsync-secret` header: downloads that one sale at once.
//!   The scheduled poll stays the source of truth.

mod error;
mod event;
mod fanout;
mod http;
mod job;

use dearsync_core::TenantId;
pub use dearsync_function_support::{Deps, HandlerError, SECRET_HEADER, TenantError};
use dearsync_function_support::{as_sqs, as_url_request};
use dearsync_order_download::{Outcome, RunOptions, RunSummary};
use serde_json::{Value, json};

pub use error::NotRun;
use event::{backfill_since, resend_ids, scheduled_tenant};
use job::{job_for, job_from};

/// Handles one event; `deadline` is when Lambda stops the invocation.
pub async fn handle(
    deps: &Deps,
    event: Value,
    request_id: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<Value, HandlerError> {
    if let Some(request) = as_url_request(&event) {
        return Ok(match request {
            Ok(request) => http::handle_http(deps, &request).await,
            Err(response) => response,
        });
    }
    let run_id = format!("run-{request_id}");
    if let Some(batch) = as_sqs(&event) {
        let opts = RunOptions {
            run_id,
            deadline,
            ..RunOptions::default()
        };
        return Ok(json!(fanout::run_queued(deps, batch?, &opts).await));
    }
    let tenant = scheduled_tenant(&event)?;
    if let Some(sales) = resend_ids(&event)? {
        let tenant = tenant.ok_or_else(|| {
            HandlerError::BadEvent("a resend names its tenant: {\"tenant\", \"resend\"}".into())
        })?;
        return resend(deps, &tenant, &sales).await;
    }
    let opts = RunOptions {
        run_id,
        deadline,
        since: backfill_since(&event)?,
        ..RunOptions::default()
    };
    match tenant {
        Some(t) => {
            let summary = run_tenant(deps, &t, &opts).await?;
            report(&summary, deps);
            if summary.has_failures() {
                return Err(NotRun::Failures(failure_text(&summary)).into());
            }
            Ok(json!({ "tenants": [summary] }))
        }
        // The deployed stack fans out: one message per due tenant, run in parallel.
        None => match (&deps.run_queue, opts.since) {
            (Some(queue), None) => Ok(json!(fanout::dispatch_runs(deps, queue.as_ref()).await?)),
            _ => run_all(deps, &opts).await,
        },
    }
}

/// Resends each sale; a sale not resent is an error naming it and why (nothing to retry: the
/// operator decides), a DEAR or store outage one to retry.
async fn resend(
    deps: &Deps,
    tenant: &TenantId,
    sales: &[uuid::Uuid],
) -> Result<Value, HandlerError> {
    let job = job_for(deps, tenant).await?;
    let mut results = Vec::new();
    let mut refused = Vec::new();
    let mut aborted = false;
    for sale in sales {
        let summary = job.resend(*sale).await;
        report(&summary, deps);
        refused.extend(
            summary
                .not_resent
                .iter()
                .map(|(s, why)| format!("{s}: {why}")),
        );
        aborted |= matches!(summary.outcome, Outcome::Aborted(_));
        results.push(summary);
    }
    if refused.is_empty() && !aborted {
        return Ok(json!({ "tenants": [{ "tenant": tenant, "resends": results }] }));
    }
    let text = format!(
        "tenant {tenant}: {} of {} sales not resent: {}",
        refused.len()
            + results
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Aborted(_)))
                .count(),
        sales.len(),
        refused.join("; ")
    );
    Err(HandlerError::failed(NotRun::Failures(text), aborted))
}

async fn run_all(deps: &Deps, opts: &RunOptions) -> Result<Value, HandlerError> {
    let tenants = deps.store.tenants().await.map_err(NotRun::Store)?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut retryable = true;
    for entry in tenants.into_iter().filter(|t| t.enabled) {
        // Each tenant on its own: an error is recorded and the next tenant runs.
        match run_tenant(deps, &entry.tenant, opts).await {
            Ok(summary) => {
                report(&summary, deps);
                if summary.has_failures() {
                    failures.push(failure_text(&summary));
                }
                results.push(serde_json::to_value(&summary).unwrap_or(Value::Null));
            }
            Err(e) => {
                tracing::error!(tenant = %entry.tenant, error = %e, "tenant run could not start");
                retryable &= e.is_retryable();
                failures.push(e.to_string());
                results.push(json!({ "tenant": entry.tenant, "outcome": "aborted", "detail": e.to_string() }));
            }
        }
    }
    if failures.is_empty() {
        Ok(json!({ "tenants": results }))
    } else {
        let text = format!(
            "{} of {} tenants failed: {}",
            failures.len(),
            results.len(),
            failures.join("; ")
        );
        Err(HandlerError::failed(NotRun::Failures(text), retryable))
    }
}

fn failure_text(s: &RunSummary) -> String {
    match &s.outcome {
        Outcome::Aborted(why) => format!("tenant {}: run aborted: {why}", s.tenant),
        _ => format!(
            "tenant {}: {} deliveries failed (kept for retry)",
            s.tenant, s.failed
        ),
    }
}

/// The summary as a log line and as EMF metrics on stdout.
pub(crate) fn report(summary: &RunSummary, deps: &Deps) {
    tracing::info!(summary = %serde_json::to_string(summary).unwrap_or_default(), "order download run");
    println!("{}", summary.emf(deps.clock.now().timestamp_millis()));
}

pub(crate) async fn run_tenant(
    deps: &Deps,
    tenant: &TenantId,
    opts: &RunOptions,
) -> Result<RunSummary, NotRun> {
    let started_at = deps.clock.now();
    match job_for(deps, tenant).await {
        Ok(job) => Ok(job.run(opts).await),
        Err(not_run) => {
            // A run that cannot even start is a failed poll too: `dearsync status` shows why, and
            // the heartbeat counts it.
            let report = dearsync_core::RunReport::new(
                started_at,
                deps.clock.now(),
                dearsync_core::RunOutcome::Aborted,
                [],
            )
            .note(not_run.to_string());
            let job = dearsync_core::Job::OrderDownload;
            dearsync_core::run_log::record_or_warn(deps.store.as_ref(), tenant, job, &report).await;
            Err(not_run)
        }
    }
}
