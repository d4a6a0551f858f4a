//! The Shipment Confirmation Lambda: builds its dependencies once, then serves events.

use dearsync_function_support::init_lambda_tracing;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use shipment_confirmation::{Deps, handle};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_lambda_tracing();
    let deps = Deps::from_env().await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle(deps, event.payload).await
    }))
    .await
}
