//! The Shipment Confirmation Lambda: builds its dependencies once, then serves events.

use std::sync::Arc;

use dearsync_aws::{DynamoStore, SecretsManagerCredentials, load_sdk_config};
use dearsync_core::{SystemClock, connect};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use shipment_confirmation::{Deps, handle};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time()
        .init();
    let table = std::env::var("STATE_TABLE")
        .map_err(|_| "STATE_TABLE (the DynamoDB state table) is not set")?;
    let prefix = std::env::var("SECRET_PREFIX").unwrap_or_else(|_| "dear-sync/".to_owned());
    let aws = load_sdk_config().await;
    let clock = Arc::new(SystemClock);
    let deps = Deps {
        store: Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            table,
            clock.clone(),
        )),
        credentials: Arc::new(SecretsManagerCredentials::new(
            aws_sdk_secretsmanager::Client::new(&aws),
            prefix,
            SecretsManagerCredentials::DEFAULT_TTL,
        )),
        base_url: connect::base_url_from_env(),
        clock,
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle(deps, event.payload).await.map_err(Error::from)
    }))
    .await
}
