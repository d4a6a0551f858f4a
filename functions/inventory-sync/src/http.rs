//! `POST /inventory/<tenant>`: a snapshot or a chunk pushed by the warehouse.

use dearsync_core::Caller;
use dearsync_function_support::{
    Deps, UrlRequest, body_json, http, http_error, method, query_flag,
};
use dearsync_inventory_sync::SyncOutcome;
use serde_json::Value;

use crate::envelope::{SyncInput, options};
use crate::sync_input;

/// 202 with the summary; 409 when the snapshot is held for a person; 4xx/5xx with the reason.
pub(crate) async fn handle_http(deps: &Deps, event: &UrlRequest) -> Value {
    let method = method(event);
    if method != "POST" {
        return http_error(405, format!("{method} is not allowed; POST a snapshot"));
    }
    let ctx = match deps
        .authorise(event, "/inventory/", Caller::Warehouse)
        .await
    {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let (body, force) = match body_json(event).and_then(|b| Ok((b, query_flag(event, "force")?))) {
        Ok(read) => read,
        Err(e) => return http_error(400, e.to_string()),
    };
    // The tenant is the one the request proved; it is not loaded again.
    let input = if body.get("part").is_some() {
        SyncInput::chunk(&body)
    } else {
        SyncInput::snapshot(&body)
    };
    let outcome = match input {
        Ok(input) => sync_input(deps, ctx, input, options(force)).await,
        Err(e) => Err(e),
    };
    match outcome {
        // Held for a person: not applied, and resending it unchanged will not apply it either.
        Ok(summary) if summary["outcome"] == SyncOutcome::Held.as_str() => http(409, summary),
        Ok(summary) => http(202, summary),
        Err(e) => http_error(e.http_status(), e.to_string()),
    }
}
