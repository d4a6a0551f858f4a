//! `POST /shipments/<tenant>`: a shipment pushed by the warehouse.

use dearsync_core::Caller;
use dearsync_function_support::{Deps, UrlRequest, body_text, http, http_error, method};
use dearsync_shipment_confirmation::{ConfirmError, Shipment};
use serde_json::{Value, json};

use crate::confirm;
use crate::tally::Tally;

/// 202 with the result; 400 for a malformed shipment, 409 for a changed one, 422 when DEAR
/// refused it, 503 when retrying may work.
pub(crate) async fn handle_http(deps: &Deps, event: &UrlRequest) -> Value {
    let method = method(event);
    if method != "POST" {
        return http_error(405, format!("{method} is not allowed; POST a shipment"));
    }
    let ctx = match deps
        .authorise(event, "/shipments/", Caller::Warehouse)
        .await
    {
        Ok(ctx) => ctx,
        Err(response) => return response,
    };
    let shipment = match body_text(event) {
        Ok(text) => match Shipment::from_json(&text) {
            Ok(s) => s,
            Err(e) => return http_error(400, format!("invalid shipment: {e}")),
        },
        Err(e) => return http_error(400, e.to_string()),
    };
    let mut tally = Tally::new(deps);
    let outcome = confirm(deps, &ctx, &shipment, &mut tally).await;
    tally.finish(deps).await;
    match outcome {
        Ok(c) => http(202, json!(c)),
        Err(e @ ConfirmError::Invalid(_)) => http_error(400, e.to_string()),
        Err(e @ ConfirmError::Changed { .. }) => http_error(409, e.to_string()),
        Err(e) if e.is_refused_by_dear() => http_error(422, e.to_string()),
        Err(e) => http_error(503, e.to_string()),
    }
}
