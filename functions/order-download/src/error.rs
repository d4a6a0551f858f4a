//! Why a tenant's run failed or could not start.

use dearsync_core::TenantId;
use dearsync_function_support::{HandlerError, TenantError};
use dearsync_order_download::SinkError;

/// Why a tenant's run failed or could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotRun {
    /// The tenant cannot be worked for (disabled, unknown, settings, credentials).
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The tenant's order sink cannot be set up (no webhook URL, no signing secret, a URL the
    /// outbound policy refuses): an operator must fix it.
    #[error("tenant {tenant}: {why}")]
    NoSink {
        /// Whose.
        tenant: TenantId,
        /// What is missing.
        why: &'static str,
    },
    /// The tenant's webhook sink refused its settings (a URL the outbound policy refuses).
    #[error("tenant {tenant}: {source}")]
    Sink {
        /// Whose.
        tenant: TenantId,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// The tenants could not be listed.
    #[error("cannot list tenants: {0}")]
    Store(#[source] dearsync_core::StoreError),
    /// A queued message is not a run request.
    #[error("{0}")]
    BadMessage(String),
    /// Runs ended with failures (deliveries kept for retry, or aborted runs), each named.
    #[error("{0}")]
    Failures(String),
}

impl NotRun {
    /// True when the same event may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotRun::Tenant(e) => e.is_retryable(),
            NotRun::NoSink { .. } | NotRun::Sink { .. } | NotRun::BadMessage(_) => false,
            NotRun::Store(e) => e.is_transient(),
            NotRun::Failures(_) => true,
        }
    }
}

impl From<NotRun> for HandlerError {
    fn from(error: NotRun) -> Self {
        let retryable = error.is_retryable();
        HandlerError::failed(error, retryable)
    }
}
