//! The one error type of every state port.

/// What a state store can answer instead of a result.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the item was not in the state the caller expected. Someone else
    /// moved it first; re-read and decide again.
    #[error("{what}: {detail}")]
    Conflict {
        /// The item, e.g. `ledger record acme/order-download/SALE-1`.
        what: String,
        /// What was expected and not found.
        detail: String,
    },
    /// An idempotency key was reused with a different payload.
    #[error(
        "idempotency key {key} was first used with a different payload (hash {stored}, now {given})"
    )]
    PayloadMismatch {
        /// The key.
        key: String,
        /// Hash of the first payload.
        stored: String,
        /// Hash of this payload.
        given: String,
    },
    /// A caller's argument is not acceptable (bad id, oversized value…).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A stored item could not be read back (written by something else, or damaged).
    #[error("stored item {key} is unreadable: {detail}")]
    Corrupt {
        /// The item's key.
        key: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The store could not be reached or refused the request; retrying later may work.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// True for a lost conditional write.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// A conditional write's answer with a lost race read as "someone else got there first":
    /// `Some` the write's result, `None` a conflict, `Err` any other failure. For writes where the
    /// other writer's result is as good as this one's.
    pub fn unless_raced<T>(result: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The idempotency claim on `key` is no longer the caller's (it lapsed and was taken over, or
    /// it completed): what every store answers a stale token with.
    pub fn claim_lost(key: &impl std::fmt::Display) -> Self {
        StoreError::conflict(
            format!("idempotency key {key}"),
            "the claim was lost (it lapsed and was taken over, or completed)",
        )
    }

    /// A conflict on `what`.
    pub fn conflict(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StoreError::Conflict {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
