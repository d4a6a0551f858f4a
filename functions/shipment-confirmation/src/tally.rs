//! One event's counts, per tenant: a CloudWatch EMF line each and one run-log entry each.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dearsync_core::{Job, TenantId};
use dearsync_function_support::Deps;
use dearsync_shipment_confirmation::confirmations_report;

/// What one event's shipments did.
pub(crate) struct Tally {
    started_at: DateTime<Utc>,
    tenants: BTreeMap<TenantId, Counts>,
    /// Failures before a tenant was known (an unreadable message, an unknown tenant).
    unattributed_failed: u64,
}

#[derive(Default)]
struct Counts {
    confirmed: u64,
    failed: u64,
    dear_calls: u64,
    dear_throttled: u64,
}

impl Tally {
    /// An empty tally, started now.
    pub(crate) fn new(deps: &Deps) -> Self {
        Self {
            started_at: deps.clock.now(),
            tenants: BTreeMap::new(),
            unattributed_failed: 0,
        }
    }

    /// Counts one of `tenant`'s shipments.
    pub(crate) fn count(
        &mut self,
        tenant: &TenantId,
        confirmed: bool,
        dear_calls: u64,
        dear_throttled: u64,
    ) {
        let counts = self.tenants.entry(tenant.clone()).or_default();
        if confirmed {
            counts.confirmed += 1;
        } else {
            counts.failed += 1;
        }
        counts.dear_calls += dear_calls;
        counts.dear_throttled += dear_throttled;
    }

    /// Of `failed` messages in all, those no tenant's count holds failed before a tenant was known.
    pub(crate) fn settle_failures(&mut self, failed: u64) {
        let attributed: u64 = self.tenants.values().map(|c| c.failed).sum();
        self.unattributed_failed = failed.saturating_sub(attributed);
    }

    /// Prints the EMF lines (per tenant, with a roll-up per job) and logs each tenant's run.
    pub(crate) async fn finish(self, deps: &Deps) {
        let now = deps.clock.now();
        for (tenant, c) in &self.tenants {
            println!("{}", emf(now, Some(tenant), c));
            let report = confirmations_report(
                self.started_at,
                now,
                c.confirmed,
                c.failed,
                c.dear_throttled,
            );
            dearsync_core::run_log::record_or_warn(
                deps.store.as_ref(),
                tenant,
                Job::ShipmentConfirmation,
                &report,
            )
            .await;
        }
        if self.unattributed_failed > 0 {
            let unattributed = Counts {
                failed: self.unattributed_failed,
                ..Counts::default()
            };
            println!("{}", emf(now, None, &unattributed));
        }
    }
}

fn emf(now: DateTime<Utc>, tenant: Option<&TenantId>, c: &Counts) -> String {
    let job = ("Job", Job::ShipmentConfirmation.as_str());
    let dimensions = match tenant {
        Some(t) => vec![("Tenant", t.as_str()), job],
        None => vec![job],
    };
    dearsync_core::metrics::emf_line(
        now.timestamp_millis(),
        &dimensions,
        &[
            ("Confirmed", c.confirmed),
            ("Failed", c.failed),
            ("DearCalls", c.dear_calls),
            ("DearThrottled", c.dear_throttled),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_line_carries_its_tenant_and_an_unattributed_one_only_the_job() {
        let t = TenantId::new("acme").unwrap();
        let counts = Counts {
            confirmed: 2,
            failed: 1,
            dear_calls: 8,
            dear_throttled: 0,
        };
        let line: serde_json::Value =
            serde_json::from_str(&emf(Utc::now(), Some(&t), &counts)).unwrap();
        assert_eq!(line["Tenant"], "acme");
        assert_eq!(line["Confirmed"], 2);
        let unattributed = Counts {
            failed: 3,
            ..Counts::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(&emf(Utc::now(), None, &unattributed)).unwrap();
        assert!(line.get("Tenant").is_none());
        assert_eq!(line["Failed"], 3);
    }
}
