//! The one error type of the DEAR client.

use std::time::Duration;

/// Everything that can go wrong talking to DEAR.
///
/// Variants say what the caller should do: [`DearError::OutcomeUnknown`] means "re-read DEAR before
/// writing again"; [`DearError::Rejected`] means DEAR looked at the request and refused it.
#[derive(Debug, thiserror::Error)]
pub enum DearError {
    /// A bad client setting.
    #[error("invalid DEAR client configuration: {0}")]
    Config(String),

    /// 403: DEAR refused the Account ID / API Key pair.
    #[error(
        "DEAR refused the credentials (HTTP 403 on {method} {path}): check the Account ID and API \
         Application Key under Integrations → Cin7 Core API{detail}"
    )]
    Credentials {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// DEAR's message, prefixed with ": " when present.
        detail: String,
    },

    /// Still throttled (429/503) after every allowed retry.
    #[error(
        "DEAR kept throttling {method} {path} (HTTP {status}, {attempts} attempts); the account's \
         60 calls/minute budget is exhausted"
    )]
    Throttled {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// 429 or 503.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The last `Retry-After`, if DEAR sent one.
        retry_after: Option<Duration>,
    },

    /// DEAR answered with its Error Model (`{ErrorCode, Exception}`) — with any HTTP status, 200
    /// included — or with another 4xx.
    #[error("DEAR rejected {method} {path} (HTTP {status}, ErrorCode {code}): {message}")]
    Rejected {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// HTTP status of the answer.
        status: u16,
        /// DEAR's ErrorCode (the HTTP status when DEAR sent none).
        code: i64,
        /// DEAR's Exception text (all of them, joined with "; ").
        message: String,
    },

    /// A write whose fate is unknown: it timed out, the connection dropped, or DEAR failed with a
    /// 5xx after receiving it. DEAR has no idempotency keys, so it may have been applied: re-read
    /// DEAR's state before writing again.
    #[error(
        "outcome of {method} {path} is unknown ({reason}); it may have been applied — re-read DEAR \
         before retrying"
    )]
    OutcomeUnknown {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// What happened.
        reason: String,
        /// An answer came, so DEAR is done with the request; without one (a timeout, a dropped
        /// connection, a gateway's 502/504) it may still be applying it, and a read-back now may
        /// not see it yet.
        settled: bool,
    },

    /// A read that kept failing (5xx, timeouts, dropped connections) after every retry, or a write
    /// that could not even connect.
    #[error("DEAR is unavailable for {method} {path} after {attempts} attempts: {reason}")]
    Unavailable {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },

    /// The body was not JSON (e.g. DEAR's HTML page for an unknown path, sometimes with HTTP 200).
    #[error("DEAR answered {method} {path} with HTTP {status} and a non-JSON body: {snippet}")]
    NotJson {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },

    /// JSON that does not fit the expected shape.
    #[error("cannot read DEAR's answer to {method} {path}: {reason}")]
    Decode {
        /// HTTP method.
        method: String,
        /// API path.
        path: String,
        /// The decoder's message (names the field).
        reason: String,
    },

    /// The rate budget could not be taken (e.g. its shared store failed).
    #[error("rate budget unavailable: {0}")]
    Budget(String),
}

/// How many times a caller writes, reads DEAR back and writes again when each write's outcome is
/// unknown, before it gives the error to its own retry (a queue, the next run).
pub const READ_BACK_ROUNDS: u32 = 3;

impl DearError {
    /// True when a write may have been applied and state must be re-read before retrying.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Self::OutcomeUnknown { .. })
    }

    /// True when a write's outcome is unknown and DEAR may still be applying it: a read-back now
    /// proves nothing yet, so writing again at once could apply it twice.
    pub fn may_still_be_applying(&self) -> bool {
        matches!(self, Self::OutcomeUnknown { settled: false, .. })
    }

    /// True for a transient condition worth retrying later (throttling, outage).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Unavailable { .. } | Self::OutcomeUnknown { .. }
        )
    }

    /// DEAR's Exception text when DEAR rejected the request.
    pub fn rejection_message(&self) -> Option<&str> {
        match self {
            Self::Rejected { message, .. } => Some(message),
            _ => None,
        }
    }
}
