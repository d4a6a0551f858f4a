//! The Order Download Lambda's handler, apart from the runtime so tests can drive it directly.
//!
//! Events:
//! * an EventBridge schedule: `{"tenant": "acme"}` (Scheduler input or a rule's constant input) or
//!   `{"detail": {"tenant": "acme"}, ...}`: one tenant's run; without a tenant, every enabled
//!   tenant in turn, each isolated (one tenant's failure never stops another);
//! * a Function URL request `POST /dear/<tenant>` from a DEAR `Sale/...` webhook, carrying the
//!   tenant's inbound secret in the `x-dearsync-secret` header: downloads that one sale at once.
//!   The scheduled poll stays the source of truth.

use std::sync::Arc;
use std::time::Duration;

use dearsync_core::settings::SettingInstant;
use dearsync_core::{Caller, TenantId};
use dearsync_function_support::TenantContext;
pub use dearsync_function_support::{Deps, HandlerError, SECRET_HEADER, TenantError};
use dearsync_function_support::{UrlRequest, as_url_request, http, http_error, kind, method};
use dearsync_order_download::{
    OrderDownload, OrderSink, Outcome, RunOptions, RunSummary, WebhookSink,
};
use serde_json::{Value, json};

/// Why a tenant's run failed or could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotRun {
    /// The tenant cannot be worked for (disabled, unknown, settings, credentials).
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The tenant's order sink cannot be set up (no webhook URL, no signing secret, a URL the
    /// outbound policy refuses): an operator must fix it.
    #[error("tenant {tenant}: {why}")]
    Sink {
        /// Whose.
        tenant: TenantId,
        /// What is missing or refused.
        why: String,
    },
    /// The tenants could not be listed.
    #[error("cannot list tenants: {0}")]
    Store(#[source] dearsync_core::StoreError),
    /// Runs ended with failures (deliveries kept for retry, or aborted runs), each named.
    #[error("{0}")]
    Failures(String),
}

impl NotRun {
    /// True when the same event may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotRun::Tenant(e) => e.is_retryable(),
            NotRun::Sink { .. } => false,
            NotRun::Store(e) => e.is_transient(),
            NotRun::Failures(_) => true,
        }
    }
}

impl From<NotRun> for HandlerError {
    fn from(error: NotRun) -> Self {
        let retryable = error.is_retryable();
        HandlerError::failed(error, retryable)
    }
}

/// Handles one event; `deadline` is when Lambda stops the invocation.
pub async fn handle(
    deps: &Deps,
    event: Value,
    request_id: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<Value, HandlerError> {
    if let Some(request) = as_url_request(&event) {
        return Ok(match request {
            Ok(request) => handle_http(deps, &request).await,
            Err(response) => response,
        });
    }
    let tenant = scheduled_tenant(&event)?;
    let opts = RunOptions {
        run_id: format!("run-{request_id}"),
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
        None => run_all(deps, &opts).await,
    }
}

/// Reads the tenant of a scheduled event; `None` = every enabled tenant.
fn scheduled_tenant(event: &Value) -> Result<Option<TenantId>, HandlerError> {
    let field = event_field(event, "tenant");
    match field {
        None => {
            if !event.is_object() {
                return Err(HandlerError::BadEvent(format!(
                    "expected a JSON object (a scheduled event or a Function URL request), got {}",
                    kind(event)
                )));
            }
            Ok(None)
        }
        Some((name, Value::String(t))) => TenantId::new(t.clone())
            .map(Some)
            .map_err(|e| HandlerError::BadEvent(format!("{name}: {e}"))),
        Some((name, other)) => Err(HandlerError::BadEvent(format!(
            "{name} must be a tenant id string, got {}",
            kind(other)
        ))),
    }
}

/// `name` at the top of the event (an operator's or a Scheduler target's input), else in an
/// EventBridge event's `detail`; with the dotted name errors should use.
fn event_field<'a>(event: &'a Value, name: &str) -> Option<(String, &'a Value)> {
    match event.get(name) {
        Some(v) => Some((name.to_owned(), v)),
        None => event
            .get("detail")
            .and_then(|d| d.get(name))
            .map(|v| (format!("detail.{name}"), v)),
    }
}

/// An operator's backfill: `{"tenant": "acme", "since": "2026-10-01"}` lists from that date
/// instead of the cursor (already delivered orders are not sent again).
fn backfill_since(event: &Value) -> Result<Option<chrono::DateTime<chrono::Utc>>, HandlerError> {
    let field = event_field(event, "since");
    match field {
        None | Some((_, Value::Null)) => Ok(None),
        Some((name, Value::String(text))) => SettingInstant::parse(text)
            .map(|i| Some(i.0))
            .map_err(|e| HandlerError::BadEvent(format!("{name}: {e}"))),
        Some((name, other)) => Err(HandlerError::BadEvent(format!(
            "{name} must be a date string (2026-10-01), got {}",
            kind(other)
        ))),
    }
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
fn report(summary: &RunSummary, deps: &Deps) {
    tracing::info!(summary = %serde_json::to_string(summary).unwrap_or_default(), "order download run");
    println!("{}", summary.emf(deps.clock.now().timestamp_millis()));
}

/// Builds the tenant's job from its stored settings and secret.
async fn job_for(deps: &Deps, tenant: &TenantId) -> Result<OrderDownload, NotRun> {
    job_from(deps, deps.tenant(tenant).await?)
}

/// Builds the job from a loaded tenant: its webhook sink and DEAR client.
fn job_from(deps: &Deps, ctx: TenantContext) -> Result<OrderDownload, NotRun> {
    let tenant = &ctx.tenant;
    let fail = |m: &str| NotRun::Sink {
        tenant: tenant.clone(),
        why: m.to_owned(),
    };
    let od = &ctx.settings.order_download;
    let url = od
        .webhook_url
        .as_deref()
        .ok_or_else(|| fail("order_download.webhook_url is not set: nowhere to deliver orders"))?;
    let secret = ctx
        .credentials
        .order_webhook_secret
        .as_ref()
        .ok_or_else(|| {
            fail("the tenant secret has no \"order_webhook_secret\" to sign orders with")
        })?;
    let sink: Arc<dyn OrderSink> = Arc::new(
        WebhookSink::new(
            url,
            secret.expose().as_bytes(),
            Duration::from_secs(u64::from(od.webhook_timeout_secs)),
            od.webhook_attempts,
            deps.outbound,
        )
        .map_err(|e| fail(&e.to_string()))?,
    );
    Ok(OrderDownload {
        ctx: ctx.job_context(deps),
        settings: ctx.settings.order_download,
        sink,
    })
}

async fn run_tenant(
    deps: &Deps,
    tenant: &TenantId,
    opts: &RunOptions,
) -> Result<RunSummary, NotRun> {
    let job = job_for(deps, tenant).await?;
    Ok(job.run(opts).await)
}

/// A Function URL request: a DEAR webhook for one sale.
async fn handle_http(deps: &Deps, event: &UrlRequest) -> Value {
    let method = method(event);
    if method != "POST" {
        return http_error(405, format!("{method} is not allowed; DEAR webhooks POST"));
    }
    let ctx = match deps.authorise(event, "/dear/", Caller::DearWebhook).await {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let payload = match dearsync_function_support::body_json(event) {
        Ok(v) => v,
        Err(e) => return http_error(400, e.to_string()),
    };
    let id_text = payload
        .get("SaleID")
        .or_else(|| payload.get("SaleTaskID"))
        .and_then(Value::as_str);
    let Some(sale_id) = id_text.and_then(|t| t.parse::<uuid::Uuid>().ok()) else {
        return http_error(
            400,
            format!(
                "not a DEAR sale event: no SaleID or SaleTaskID GUID (EventType {:?})",
                payload
                    .get("EventType")
                    .and_then(Value::as_str)
                    .unwrap_or("none")
            ),
        );
    };
    let job = match job_from(deps, ctx) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "webhook cannot be handled");
            return http_error(503, e.to_string());
        }
    };
    let summary = job.download_one(sale_id).await;
    report(&summary, deps);
    match &summary.outcome {
        // DEAR retries a failed webhook; the scheduled poll catches up anyway.
        Outcome::Aborted(why) => http_error(503, why.clone()),
        _ => http(200, serde_json::to_value(&summary).unwrap_or(Value::Null)),
    }
}
