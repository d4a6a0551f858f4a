//! The run queue over SQS: one message per tenant run, sent ten to a batch.

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use dearsync_core::dispatch::{QueueError, RunQueue, TenantRun};

use crate::sdk_error_text;

/// SQS takes at most ten messages a batch.
const BATCH: usize = 10;

/// [`RunQueue`] over one SQS queue.
pub struct SqsRunQueue {
    client: Client,
    url: String,
}

impl SqsRunQueue {
    /// Sends to the queue at `url` (the template's `TenantRunQueue`).
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// Sends one batch; answers the runs SQS did not take.
    async fn send_batch(&self, runs: &[TenantRun]) -> Vec<QueueError> {
        let refused = |detail: String| {
            runs.iter()
                .map(|r| QueueError {
                    tenant: r.tenant.clone(),
                    detail: detail.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut entries = Vec::with_capacity(runs.len());
        for (i, run) in runs.iter().enumerate() {
            let body = match serde_json::to_string(run) {
                Ok(body) => body,
                Err(e) => return refused(format!("cannot encode the message: {e}")),
            };
            match SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .build()
            {
                Ok(entry) => entries.push(entry),
                Err(e) => return refused(format!("cannot build the message: {e}")),
            }
        }
        let answer = match self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(answer) => answer,
            Err(e) => return refused(sdk_error_text(&e)),
        };
        answer
            .failed()
            .iter()
            .filter_map(|f| {
                let run = runs.get(f.id().parse::<usize>().ok()?)?;
                Some(QueueError {
                    tenant: run.tenant.clone(),
                    detail: format!("{}: {}", f.code(), f.message().unwrap_or("no message")),
                })
            })
            .collect()
    }
}

#[async_trait]
impl RunQueue for SqsRunQueue {
    async fn enqueue(&self, runs: &[TenantRun]) -> Vec<QueueError> {
        let mut refused = Vec::new();
        for batch in runs.chunks(BATCH) {
            refused.extend(self.send_batch(batch).await);
        }
        refused
    }
}
