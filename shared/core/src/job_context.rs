//! What every job needs for one tenant, whatever runs it (a Lambda handler, the CLI, a test).

use std::sync::Arc;

use dear_client::DearClient;

use crate::{Clock, StateStore, TenantId};

/// One tenant's DEAR client, the state store and the clock: built once by whoever runs a job, and
/// handed to each job beside that job's own settings.
#[derive(Clone)]
pub struct JobContext {
    /// Whose work this is.
    pub tenant: TenantId,
    /// DEAR, with the tenant's credentials, paced by the account's shared budget.
    pub dear: Arc<DearClient>,
    /// Cursors, ledger, idempotency records, leases.
    pub store: Arc<dyn StateStore>,
    /// Now.
    pub clock: Arc<dyn Clock>,
}

impl JobContext {
    /// The context of `tenant`.
    pub fn new(
        tenant: TenantId,
        dear: Arc<DearClient>,
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tenant,
            dear,
            store,
            clock,
        }
    }
}

impl JobContext {
    /// The same context whose DEAR calls are for work of `lane` (the account's shared budget
    /// serves shipments first, every lane keeping its share).
    pub fn in_lane(mut self, lane: dear_client::Lane) -> Self {
        self.dear = Arc::new(self.dear.in_lane(lane));
        self
    }
}

impl std::fmt::Debug for JobContext {
    // The client and store are not printed: they hold connections, and the client credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}
