//! dear-sync's domain core: the state ports every job works through, tenant settings and
//! credentials, a shared DEAR rate budget over the state store, and an in-memory store.
//!
//! Nothing here knows about Lambda or AWS: adapters (DynamoDB, SQLite) implement the ports in
//! their own crates, and the conformance suite (feature `conformance`) holds them all to the same
//! behaviour.

pub mod clock;
pub mod connect;
pub mod credentials;
pub mod delivered;
pub mod dispatch;
mod error;
pub mod held_claim;
mod ids;
mod invalid;
mod job_context;
pub mod memory;
pub mod metrics;
pub mod push_signature;
pub mod rate;
pub mod run_lease;
pub mod run_log;
pub mod settings;
pub mod sku;
pub mod state;
pub mod story;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use clock::{Clock, ManualClock, OffsetClock, SystemClock};
pub use credentials::{Caller, CredentialSource, Credentials, CredentialsError, EnvCredentials};
pub use dear_client::Lane;
pub use error::StoreError;
pub use held_claim::{ClaimLost, HeldClaim};
pub use ids::{Job, TenantId};
pub use invalid::InvalidValue;
pub use job_context::JobContext;
pub use memory::MemoryStore;
pub use rate::{BudgetStats, SharedBudgetConfig, SharedRateBudget};
pub use run_lease::{RunLease, RunStart};
pub use run_log::{RunHistory, RunLog, RunOutcome, RunReport};
pub use settings::{SettingsError, TenantSettings};
pub use state::StateStore;

/// SHA-256 of `bytes`, hex: the input and payload hashes kept in the ledger and idempotency records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
