//! dear-sync's AWS adapters: every state port over one DynamoDB table ([`DynamoStore`]), DEAR
//! credentials from Secrets Manager ([`SecretsManagerCredentials`]), and the run queue over SQS
//! ([`SqsRunQueue`]).
//!
//! The table design is in `docs/state-table.md`. The endpoint can be overridden for local use with
//! the SDK's standard `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_DYNAMODB` /
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER`) environment variables.

mod dynamo;
mod secrets;
mod sqs;

pub use dynamo::{DynamoStore, create_table};
pub use secrets::SecretsManagerCredentials;
pub use sqs::{QueueDepth, QueueDepthError, SqsRunQueue, queue_depth, stack_queue_urls};

/// Loads the AWS SDK configuration from the environment (region, credentials, endpoint overrides).
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// Renders an SDK error with its whole cause chain (the SDK's `Display` alone says only "service error").
pub(crate) fn sdk_error_text<E: std::error::Error>(e: &E) -> String {
    dear_client::error_chain(e)
}

#[cfg(feature = "test-support")]
pub mod testing;
#[cfg(feature = "test-support")]
pub mod write_units;
