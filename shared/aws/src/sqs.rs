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

/// How many messages a queue holds (SQS's approximate counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received, not yet deleted.
    pub in_flight: u64,
    /// Sent with a delay not yet over.
    pub delayed: u64,
    /// True when the queue is another queue's dead-letter queue (its messages need a person).
    pub is_dead_letter_queue: bool,
}

/// Why a queue's depth could not be read.
#[derive(Debug, thiserror::Error)]
#[error("SQS: {detail}")]
pub struct QueueDepthError {
    detail: String,
}

/// Reads the depth of the queue at `url` (`sqs:GetQueueAttributes`; dead-letter queues are
/// recognised by the queues that name them: `sqs:ListDeadLetterSourceQueues`).
pub async fn queue_depth(
    config: &aws_config::SdkConfig,
    url: &str,
) -> Result<QueueDepth, QueueDepthError> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let client = Client::new(config);
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| QueueDepthError {
            detail: sdk_error_text(&e),
        })?;
    let count = |name: A| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let sources = client
        .list_dead_letter_source_queues()
        .queue_url(url)
        .send()
        .await
        .map_err(|e| QueueDepthError {
            detail: sdk_error_text(&e),
        })?;
    Ok(QueueDepth {
        visible: count(A::ApproximateNumberOfMessages),
        in_flight: count(A::ApproximateNumberOfMessagesNotVisible),
        delayed: count(A::ApproximateNumberOfMessagesDelayed),
        is_dead_letter_queue: !sources.queue_urls().is_empty(),
    })
}

/// The queues of the stack whose state table is `table`: CloudFormation names a stack's
/// resources `<stack>-<LogicalId>-<suffix>`, so the table `dear-sync-StateTable-1A2B` belongs to
/// the stack `dear-sync`, whose queues start `dear-sync-`. `None` for a table named otherwise.
/// (`sqs:ListQueues`.)
pub async fn stack_queue_urls(
    config: &aws_config::SdkConfig,
    table: &str,
) -> Result<Option<Vec<String>>, QueueDepthError> {
    let Some((stack, _)) = table.split_once("-StateTable-") else {
        return Ok(None);
    };
    let client = Client::new(config);
    let mut urls = Vec::new();
    let mut next = None;
    loop {
        let out = client
            .list_queues()
            .queue_name_prefix(format!("{stack}-"))
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| QueueDepthError {
                detail: sdk_error_text(&e),
            })?;
        // `<stack>-<LogicalId>-<suffix>`, neither of which has a `-`: another stack whose name
        // only starts with this one's (`dear-sync-staging`) has more.
        let own = |url: &&String| {
            url.rsplit('/')
                .next()
                .and_then(|name| name.strip_prefix(&format!("{stack}-")))
                .is_some_and(|rest| rest.matches('-').count() == 1)
        };
        urls.extend(out.queue_urls().iter().filter(own).cloned());
        match out.next_token() {
            Some(token) => next = Some(token.to_owned()),
            None => break,
        }
    }
    urls.sort();
    Ok(Some(urls))
}
