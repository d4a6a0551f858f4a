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

use dearsync_core::{
    Clock, CredentialSource, StateStore, TenantId, TenantSettings, connect,
    credentials::secrets_match,
};
use dearsync_order_download::{
    OrderDownload, OrderSink, Outcome, RunOptions, RunSummary, WebhookSink,
};
use serde_json::{Value, json};

/// The header a DEAR webhook (or any caller) must carry: the tenant's `inbound_secret`.
pub const SECRET_HEADER: &str = "x-dearsync-secret";

/// What the handler is built from, once per cold start.
pub struct Deps {
    /// State (DynamoDB in Lambda).
    pub store: Arc<dyn StateStore>,
    /// Tenant credentials (Secrets Manager in Lambda).
    pub credentials: Arc<dyn CredentialSource>,
    /// DEAR's API root.
    pub base_url: String,
    /// Now.
    pub clock: Arc<dyn Clock>,
}

/// Why an invocation failed (reported to Lambda as the error type and message).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is not one this function understands.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// A tenant's run failed or could not start (settings, credentials, DEAR, state).
    #[error("{0}")]
    RunFailed(String),
}

/// Handles one event; `deadline` is when Lambda stops the invocation.
pub async fn handle(
    deps: &Deps,
    event: Value,
    request_id: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<Value, HandlerError> {
    if event
        .get("requestContext")
        .and_then(|c| c.get("http"))
        .is_some()
    {
        return Ok(handle_http(deps, &event).await);
    }
    let tenant = scheduled_tenant(&event)?;
    let opts = RunOptions {
        run_id: format!("run-{request_id}"),
        deadline,
        ..RunOptions::default()
    };
    match tenant {
        Some(t) => {
            let summary = run_tenant(deps, &t, &opts).await?;
            report(&summary, deps);
            if summary.has_failures() {
                return Err(HandlerError::RunFailed(failure_text(&summary)));
            }
            Ok(json!({ "tenants": [summary] }))
        }
        None => run_all(deps, &opts).await,
    }
}

/// Reads the tenant of a scheduled event; `None` = every enabled tenant.
fn scheduled_tenant(event: &Value) -> Result<Option<TenantId>, HandlerError> {
    let field = event.get("tenant").map(|v| ("tenant", v)).or_else(|| {
        event
            .get("detail")
            .and_then(|d| d.get("tenant"))
            .map(|v| ("detail.tenant", v))
    });
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

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

async fn run_all(deps: &Deps, opts: &RunOptions) -> Result<Value, HandlerError> {
    let tenants = deps
        .store
        .tenants()
        .await
        .map_err(|e| HandlerError::RunFailed(format!("cannot list tenants: {e}")))?;
    let mut results = Vec::new();
    let mut failures = Vec::new();
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
                failures.push(e.to_string());
                results.push(json!({ "tenant": entry.tenant, "outcome": "aborted", "detail": e.to_string() }));
            }
        }
    }
    if failures.is_empty() {
        Ok(json!({ "tenants": results }))
    } else {
        Err(HandlerError::RunFailed(format!(
            "{} of {} tenants failed: {}",
            failures.len(),
            results.len(),
            failures.join("; ")
        )))
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
async fn job_for(deps: &Deps, tenant: &TenantId) -> Result<OrderDownload, HandlerError> {
    let fail = |m: String| HandlerError::RunFailed(format!("tenant {tenant}: {m}"));
    let entry = deps
        .store
        .tenant(tenant)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("not configured (no settings in the state table)".into()))?;
    let settings =
        TenantSettings::from_toml(&entry.settings_toml).map_err(|e| fail(e.to_string()))?;
    let creds = deps
        .credentials
        .credentials(tenant)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let od = &settings.order_download;
    let url = od.webhook_url.as_deref().ok_or_else(|| {
        fail("order_download.webhook_url is not set: nowhere to deliver orders".into())
    })?;
    let secret = creds.order_webhook_secret.as_ref().ok_or_else(|| {
        fail("the tenant secret has no \"order_webhook_secret\" to sign orders with".into())
    })?;
    let sink: Arc<dyn OrderSink> = Arc::new(
        WebhookSink::new(
            url,
            secret.expose().as_bytes(),
            Duration::from_secs(u64::from(od.webhook_timeout_secs)),
            od.webhook_attempts,
        )
        .map_err(|e| fail(e.to_string()))?,
    );
    let dear = connect::dear_client(
        &creds,
        &deps.base_url,
        &settings.dear,
        deps.store.clone(),
        deps.clock.clone(),
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(OrderDownload {
        tenant: tenant.clone(),
        settings: settings.order_download,
        dear: Arc::new(dear),
        store: deps.store.clone(),
        sink,
        clock: deps.clock.clone(),
    })
}

async fn run_tenant(
    deps: &Deps,
    tenant: &TenantId,
    opts: &RunOptions,
) -> Result<RunSummary, HandlerError> {
    let job = job_for(deps, tenant).await?;
    Ok(job.run(opts).await)
}

fn http(status: u16, body: Value) -> Value {
    json!({
        "statusCode": status,
        "headers": { "content-type": "application/json" },
        "body": body.to_string(),
    })
}

fn http_error(status: u16, message: impl Into<String>) -> Value {
    http(status, json!({ "error": message.into() }))
}

/// A Function URL request: a DEAR webhook for one sale.
async fn handle_http(deps: &Deps, event: &Value) -> Value {
    let method = event["requestContext"]["http"]["method"]
        .as_str()
        .unwrap_or("");
    if method != "POST" {
        return http_error(405, format!("{method} is not allowed; DEAR webhooks POST"));
    }
    let path = event["rawPath"].as_str().unwrap_or("");
    let Some(tenant_text) = path.strip_prefix("/dear/").map(|t| t.trim_end_matches('/')) else {
        return http_error(
            404,
            format!("no such path {path:?}; DEAR webhooks go to /dear/<tenant>"),
        );
    };
    let Ok(tenant) = TenantId::new(tenant_text) else {
        return http_error(404, format!("{tenant_text:?} is not a tenant id"));
    };
    match deps.store.tenant(&tenant).await {
        Ok(Some(_)) => {}
        Ok(None) => return http_error(404, format!("tenant {tenant} is not configured")),
        Err(e) => return http_error(503, format!("state store unavailable: {e}")),
    }
    let creds = match deps.credentials.credentials(&tenant).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(tenant = %tenant, error = %e, "cannot read the tenant's credentials");
            return http_error(503, "the tenant's credentials cannot be read");
        }
    };
    let given = header(event, SECRET_HEADER);
    let Some(expected) = creds.inbound_secret.as_ref() else {
        return http_error(
            401,
            "this tenant has no inbound_secret configured; webhooks are refused",
        );
    };
    if !given.is_some_and(|g| secrets_match(g, expected.expose())) {
        return http_error(401, format!("missing or wrong {SECRET_HEADER} header"));
    }
    let body = match body_text(event) {
        Ok(b) => b,
        Err(e) => return http_error(400, e),
    };
    let payload: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return http_error(400, format!("the body is not JSON: {e}")),
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
    let job = match job_for(deps, &tenant).await {
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

fn header<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn body_text(event: &Value) -> Result<String, String> {
    let body = event["body"].as_str().unwrap_or("");
    if event["isBase64Encoded"].as_bool().unwrap_or(false) {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| format!("the body is not valid base64: {e}"))?;
        String::from_utf8(bytes).map_err(|_| "the body is not UTF-8".to_owned())
    } else {
        Ok(body.to_owned())
    }
}
