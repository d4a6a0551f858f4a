//! Names of the things state is kept for: tenants and jobs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One merchant: one DEAR account, one warehouse connection, one set of settings.
///
/// Tenant ids appear in store keys and secret names, so they are restricted to
/// `[A-Za-z0-9._-]`, 1–64 characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Checks and wraps a tenant id.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(id))
        } else {
            Err(StoreError::Invalid(format!(
                "tenant id {id:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::new(text).map_err(serde::de::Error::custom)
    }
}

/// The three jobs; each keeps its own cursors, ledger and lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Job {
    /// DEAR sales → warehouse orders.
    OrderDownload,
    /// Warehouse shipments → DEAR pick, pack and ship.
    ShipmentConfirmation,
    /// Warehouse stock levels → DEAR stock adjustments.
    InventorySync,
}

impl Job {
    /// Every job.
    pub const ALL: [Job; 3] = [
        Job::OrderDownload,
        Job::ShipmentConfirmation,
        Job::InventorySync,
    ];

    /// The job's name in keys, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::OrderDownload => "order-download",
            Job::ShipmentConfirmation => "shipment-confirmation",
            Job::InventorySync => "inventory-sync",
        }
    }

    /// Reads a job name as written by [`Job::as_str`].
    pub fn parse(text: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.as_str() == text)
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_checked() {
        assert!(TenantId::new("acme-01.eu_1").is_ok());
        for bad in ["", "a b", "a/b", "a#b", &"x".repeat(65)] {
            let err = TenantId::new(bad).unwrap_err().to_string();
            assert!(err.contains("tenant id"), "{err}");
        }
    }

    #[test]
    fn job_names_round_trip() {
        for job in Job::ALL {
            assert_eq!(Job::parse(job.as_str()), Some(job));
        }
        assert_eq!(Job::parse("orders"), None);
    }
}
