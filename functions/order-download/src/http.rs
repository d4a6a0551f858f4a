//! `POST /dear/<tenant>`: a DEAR `Sale/...` webhook for one sale.

use dearsync_core::Caller;
use dearsync_function_support::{Deps, UrlRequest, http, http_error, method};
use dearsync_order_download::Outcome;
use serde_json::Value;

use crate::{job_from, report};

/// A Function URL request: a DEAR webhook for one sale.
pub(crate) async fn handle_http(deps: &Deps, event: &UrlRequest) -> Value {
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
    let job = match job_from(deps, ctx, dearsync_core::Lane::Webhook) {
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
