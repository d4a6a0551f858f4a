//! The Order Download Lambda: builds its dependencies once, then serves events.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dearsync_function_support::init_lambda_tracing;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use order_download::{Deps, handle};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_lambda_tracing();
    let deps = Deps::from_env().await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = deadline_instant(event.context.deadline);
        handle(deps, event.payload, &event.context.request_id, deadline).await
    }))
    .await
}

/// Lambda's deadline (ms since the epoch) as a tokio instant.
fn deadline_instant(deadline_ms: u64) -> Option<tokio::time::Instant> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(tokio::time::Instant::now() + Duration::from_millis(deadline_ms.checked_sub(now_ms)?))
}
