//! Why a shipment was not confirmed.

use dearsync_core::TenantId;
use dearsync_function_support::{HandlerError, TenantError};
use dearsync_shipment_confirmation::ConfirmError;

/// Why a shipment was not confirmed: its envelope is malformed, its tenant cannot be worked for,
/// or the confirmation failed.
#[derive(Debug, thiserror::Error)]
pub enum NotConfirmed {
    /// The envelope (or the shipment in it) is malformed: fix and resend.
    #[error("{0}")]
    Bad(String),
    /// The tenant cannot be worked for.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The confirmation failed.
    #[error("tenant {tenant}, shipment {shipment_id}: {source}")]
    Confirm {
        /// Whose.
        tenant: TenantId,
        /// Which.
        shipment_id: String,
        /// Why.
        #[source]
        source: Box<ConfirmError>,
    },
}

impl NotConfirmed {
    /// True when the same message may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotConfirmed::Bad(_) => false,
            NotConfirmed::Tenant(e) => e.is_retryable(),
            NotConfirmed::Confirm { source, .. } => source.is_retryable(),
        }
    }
}

impl From<NotConfirmed> for HandlerError {
    fn from(error: NotConfirmed) -> Self {
        let retryable = error.is_retryable();
        HandlerError::failed(error, retryable)
    }
}
