//! One event's counts, as a CloudWatch EMF line.

use dearsync_core::Job;
use dearsync_function_support::Deps;

/// What one event's shipments did, for its CloudWatch EMF line.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) confirmed: u64,
    pub(crate) failed: u64,
    pub(crate) dear_throttled: u64,
}

impl Tally {
    pub(crate) fn count(&mut self, confirmed: bool) {
        if confirmed {
            self.confirmed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Prints the line (per job, not per tenant: a batch mixes tenants; the logs name each
    /// shipment's tenant).
    pub(crate) fn print(&self, deps: &Deps) {
        println!(
            "{}",
            dearsync_core::metrics::emf_line(
                deps.clock.now().timestamp_millis(),
                &[("Job", Job::ShipmentConfirmation.as_str())],
                &[
                    ("Confirmed", self.confirmed),
                    ("Failed", self.failed),
                    ("DearThrottled", self.dear_throttled),
                ],
            )
        );
    }
}
