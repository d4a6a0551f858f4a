//! Builds a tenant's DEAR client: its credentials, the base URL, and the account's shared rate budget.

use std::sync::Arc;

use dear_client::{DearClient, DearConfig, DearError};

use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::rate::{SharedBudgetConfig, SharedRateBudget};
use crate::settings::DearSettings;
use crate::state::{BucketSpec, TokenBuckets};

/// The environment variable naming DEAR's API root (default: DEAR's production URL).
pub const BASE_URL_VAR: &str = "DEAR_BASE_URL";

/// DEAR's API root from `DEAR_BASE_URL`, else production.
pub fn base_url_from_env() -> String {
    std::env::var(BASE_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| dear_client::DEFAULT_BASE_URL.to_owned())
}

/// A DEAR client for `credentials` at `base_url`, whose calls are paced by the account's bucket in
/// `buckets` (shared with every other process calling that account).
pub fn dear_client(
    credentials: &Credentials,
    base_url: &str,
    settings: &DearSettings,
    buckets: Arc<dyn TokenBuckets>,
    clock: Arc<dyn Clock>,
) -> Result<DearClient, DearError> {
    let mut config = DearConfig::new(credentials.account_id.clone(), credentials.api_key.clone())
        .with_base_url(base_url)?;
    config.calls_per_minute = settings.calls_per_minute;
    config.validate()?;
    let budget = SharedRateBudget::new(buckets, clock, budget_config(settings));
    DearClient::with_budget(config, Arc::new(budget))
}

/// The shared budget a tenant's `[dear]` settings ask for.
pub fn budget_config(settings: &DearSettings) -> SharedBudgetConfig {
    SharedBudgetConfig {
        spec: BucketSpec {
            capacity: settings.burst,
            per_minute: settings.calls_per_minute,
        },
        batch: settings.burst.min(3),
        ..SharedBudgetConfig::default()
    }
}

/// A DEAR client with no rate budget at all: only for a simulator with its limit switched off
/// (tests, benchmarks, demos). Real DEAR would throttle it.
pub fn unlimited_dear_client(
    credentials: &Credentials,
    base_url: &str,
) -> Result<DearClient, DearError> {
    let mut config = DearConfig::new(credentials.account_id.clone(), credentials.api_key.clone())
        .with_base_url(base_url)?;
    config.calls_per_minute = 0;
    config.validate()?;
    DearClient::new(config)
}

/// [`dear_client`], or with `unlimited` (simulators only) [`unlimited_dear_client`].
pub fn dear_client_or_unlimited(
    credentials: &Credentials,
    base_url: &str,
    settings: &DearSettings,
    buckets: Arc<dyn TokenBuckets>,
    clock: Arc<dyn Clock>,
    unlimited: bool,
) -> Result<DearClient, DearError> {
    if unlimited {
        unlimited_dear_client(credentials, base_url)
    } else {
        dear_client(credentials, base_url, settings, buckets, clock)
    }
}
