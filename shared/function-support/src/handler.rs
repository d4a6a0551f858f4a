//! What every handler reports the same way: an invocation's failure (as Lambda's `Diagnostic`,
//! `Retryable` or `NotRetryable`) and an SQS batch's partial failures.

pub use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;

/// A boxed error kept as the source of a failed invocation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an invocation failed. Lambda reports [`HandlerError::error_type`] as the invocation's
/// `errorType`, so failures can be told apart without parsing the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is not one this function understands.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// The work failed; whether the same event may succeed later.
    #[error("{source}")]
    Failed {
        /// True when retrying the event later may succeed.
        retryable: bool,
        /// Why.
        #[source]
        source: BoxError,
    },
}

impl HandlerError {
    /// A failure whose retryability the error itself decided.
    pub fn failed(source: impl Into<BoxError>, retryable: bool) -> Self {
        HandlerError::Failed {
            retryable,
            source: source.into(),
        }
    }

    /// `BadEvent`, `Retryable` or `NotRetryable`.
    pub fn error_type(&self) -> &'static str {
        match self {
            HandlerError::BadEvent(_) => "BadEvent",
            HandlerError::Failed {
                retryable: true, ..
            } => "Retryable",
            HandlerError::Failed { .. } => "NotRetryable",
        }
    }

    /// The failure's source, if it is an `E` (for callers and tests that need the typed error).
    pub fn source_as<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            HandlerError::Failed { source, .. } => source.downcast_ref(),
            HandlerError::BadEvent(_) => None,
        }
    }
}

#[cfg(feature = "aws")]
impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(error: HandlerError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: error.error_type().into(),
            error_message: error.to_string(),
        }
    }
}

/// Why one SQS message was not handled.
#[derive(Debug, thiserror::Error)]
pub enum MessageError<E> {
    /// The record has no body, or it is not JSON.
    #[error("{0}")]
    Unreadable(String),
    /// The handler failed.
    #[error(transparent)]
    Failed(E),
}

/// Handles each message of an SQS batch on its own, in order, with its JSON body; the messages
/// that failed are returned for SQS to redeliver (and, after the queue's maxReceiveCount, to move to
/// its DLQ) while the rest are deleted: one bad message never blocks the others, and none is
/// dropped silently (each failure is logged with its message id). `job` names the log lines.
pub async fn sqs_batch<E, F>(event: SqsEvent, job: &str, mut handle: F) -> SqsBatchResponse
where
    E: std::fmt::Display,
    F: AsyncFnMut(Value) -> Result<(), E>,
{
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let outcome = match message_body(&message) {
            Ok(body) => handle(body).await.map_err(MessageError::Failed),
            Err(unreadable) => Err(unreadable),
        };
        if let Err(error) = outcome {
            tracing::error!(job, message_id = %id, %error, "message failed; returned to the queue");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}

fn message_body<E>(message: &SqsMessage) -> Result<Value, MessageError<E>> {
    let body = message
        .body
        .as_deref()
        .ok_or_else(|| MessageError::Unreadable("the record has no body".into()))?;
    serde_json::from_str(body)
        .map_err(|e| MessageError::Unreadable(format!("the message body is not JSON: {e}")))
}

/// The event as an SQS batch, if it is one (a `Records` array of SQS messages).
pub fn as_sqs(event: &Value) -> Option<Result<SqsEvent, HandlerError>> {
    let records = event.get("Records")?.as_array()?;
    // SQS sets eventSource on every record; a record without one is read as SQS's.
    let from_sqs = records.iter().all(|r| {
        matches!(
            r.get("eventSource").and_then(Value::as_str),
            None | Some("aws:sqs")
        )
    });
    if !from_sqs {
        return Some(Err(HandlerError::BadEvent(
            "Records that are not all SQS messages (eventSource aws:sqs)".into(),
        )));
    }
    // Each record on its own: one that does not read as an SQS message is returned as a failure
    // (by its messageId) rather than failing the batch.
    let mut batch = SqsEvent::default();
    for record in records {
        let message = serde_json::from_value::<SqsMessage>(record.clone()).unwrap_or_else(|e| {
            let mut unreadable = SqsMessage::default();
            unreadable.message_id = record
                .get("messageId")
                .and_then(Value::as_str)
                .map(str::to_owned);
            tracing::error!(message_id = ?unreadable.message_id, error = %e, "an SQS record that does not read as one");
            unreadable
        });
        batch.records.push(message);
    }
    Some(Ok(batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(bodies: &[Option<&str>]) -> SqsEvent {
        let records: Vec<Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| json!({ "messageId": format!("m{i}"), "eventSource": "aws:sqs", "body": b }))
            .collect();
        match as_sqs(&json!({ "Records": records })) {
            Some(Ok(event)) => event,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn only_the_failed_or_unreadable_messages_go_back_in_order() {
        let event = batch(&[
            Some(r#"{"n":1}"#),
            Some("not json"),
            None,
            Some(r#"{"n":2}"#),
            Some(r#"{"n":3}"#),
        ]);
        let mut seen = Vec::new();
        let response = sqs_batch(event, "test", async |body: Value| {
            let n = body["n"].as_i64().unwrap();
            seen.push(n);
            if n == 2 { Err("two fails") } else { Ok(()) }
        })
        .await;
        let ids: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);
        assert_eq!(seen, [1, 2, 3], "every readable message handled, in order");
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({ "batchItemFailures": [
                { "itemIdentifier": "m1" }, { "itemIdentifier": "m2" }, { "itemIdentifier": "m3" }
            ] })
        );
    }

    #[test]
    fn a_record_that_does_not_read_fails_alone() {
        let event = json!({ "Records": [
            { "messageId": "m0", "eventSource": "aws:sqs", "body": "{}" },
            { "messageId": "m1", "eventSource": "aws:sqs", "body": 7 },
        ] });
        let Some(Ok(batch)) = as_sqs(&event) else {
            panic!("a batch")
        };
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[1].message_id.as_deref(), Some("m1"));
        assert_eq!(batch.records[1].body, None, "returned as unreadable");
    }

    #[test]
    fn records_of_another_service_are_a_bad_event_and_other_events_are_not_sqs() {
        let s3 = json!({ "Records": [{ "eventSource": "aws:s3" }] });
        assert!(matches!(as_sqs(&s3), Some(Err(HandlerError::BadEvent(_)))));
        assert!(as_sqs(&json!({ "tenant": "acme" })).is_none());
    }

    #[test]
    fn the_error_type_says_whether_to_retry() {
        let retry = HandlerError::failed("store down", true);
        let stop = HandlerError::failed("tenant disabled", false);
        assert_eq!(
            (retry.error_type(), stop.error_type()),
            ("Retryable", "NotRetryable")
        );
        assert_eq!(HandlerError::BadEvent("x".into()).error_type(), "BadEvent");
    }
}
