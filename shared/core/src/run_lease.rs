//! One run of a job at a time per tenant: a lease taken at the start of a run, renewed as it
//! works, released at the end; a run that finds the lease held exits cleanly, saying who holds it.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::StoreError;
use crate::state::{Lease, LeaseKey, LeaseOutcome, Leases};

/// A held run lease.
pub struct RunLease {
    store: Arc<dyn Leases>,
    lease: Lease,
    ttl: Duration,
}

/// What starting a run found.
pub enum RunStart {
    /// This run holds the lease.
    Acquired(RunLease),
    /// Another run does; this one should exit without working.
    Busy {
        /// The other run's id.
        holder: String,
        /// When its lease lapses unless renewed.
        until: DateTime<Utc>,
    },
}

impl RunStart {
    /// A line for the log when the run is skipped.
    pub fn busy_message(key: &LeaseKey, holder: &str, until: DateTime<Utc>) -> String {
        format!(
            "another run ({holder}) holds the {key} until {}; this run exits without working",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

impl RunLease {
    /// Tries to take `key` for `ttl` as `run_id`.
    pub async fn start(
        store: Arc<dyn Leases>,
        key: &LeaseKey,
        run_id: &str,
        ttl: Duration,
    ) -> Result<RunStart, StoreError> {
        match store.acquire(key, run_id, ttl).await? {
            LeaseOutcome::Acquired(lease) => Ok(RunStart::Acquired(RunLease { store, lease, ttl })),
            LeaseOutcome::Held { holder, expires_at } => Ok(RunStart::Busy {
                holder,
                until: expires_at,
            }),
        }
    }

    /// Extends the lease by its TTL from now. A [`StoreError::Conflict`] means this run lost it
    /// (it stalled past the expiry and another run took over): stop working at once.
    pub async fn renew(&mut self) -> Result<(), StoreError> {
        self.lease = self.store.renew(&self.lease, self.ttl).await?;
        Ok(())
    }

    /// Renews only if less than half the TTL is left at `now` (call it between units of work).
    pub async fn keep_alive(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        if self.lease.expires_at - now < self.ttl / 2 {
            self.renew().await?;
        }
        Ok(())
    }

    /// The lease as held.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Ends the run; `false` if the lease had already been lost.
    pub async fn finish(self) -> Result<bool, StoreError> {
        self.store.release_lease(&self.lease).await
    }

    /// Whether this run took the lease over from a run that never released it (see
    /// [`Lease::took_over`]).
    pub fn took_over(&self) -> bool {
        self.lease.took_over
    }

    /// Ends the run handing the lease over: free at once, and the next run is told it took over
    /// — for a run that leaves behind what only a successor's search finds. (Leaving the lease to
    /// lapse would do the same, but keep every run out for its TTL.) `false` if it was lost.
    pub async fn hand_over(self) -> Result<bool, StoreError> {
        self.store.hand_over_lease(&self.lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clock, Job, ManualClock, MemoryStore, TenantId};

    #[tokio::test]
    async fn a_second_run_is_told_who_is_working_and_a_stalled_run_learns_it_lost() {
        let clock = Arc::new(ManualClock::fixed());
        let store: Arc<dyn Leases> = Arc::new(MemoryStore::new(clock.clone()));
        let key = LeaseKey::new(&TenantId::new("acme").unwrap(), Job::OrderDownload);
        let ttl = Duration::minutes(10);
        let RunStart::Acquired(mut first) = RunLease::start(store.clone(), &key, "run-1", ttl)
            .await
            .unwrap()
        else {
            panic!("first run starts")
        };
        let RunStart::Busy { holder, until } = RunLease::start(store.clone(), &key, "run-2", ttl)
            .await
            .unwrap()
        else {
            panic!("second run is busy")
        };
        let msg = RunStart::busy_message(&key, &holder, until);
        assert!(
            msg.contains("run-1") && msg.contains("acme/order-download"),
            "{msg}"
        );

        clock.advance(Duration::minutes(3));
        first.keep_alive(clock.now()).await.unwrap();
        assert_eq!(
            first.lease().expires_at,
            ManualClock::fixed().now() + ttl,
            "not renewed yet"
        );
        clock.advance(Duration::minutes(3));
        first.keep_alive(clock.now()).await.unwrap();
        assert_eq!(
            first.lease().expires_at,
            clock.now() + ttl,
            "renewed past half-life"
        );

        // run-1 stalls past its expiry; run-3 takes over; run-1's next renewal fails.
        clock.advance(Duration::minutes(11));
        let RunStart::Acquired(third) = RunLease::start(store.clone(), &key, "run-3", ttl)
            .await
            .unwrap()
        else {
            panic!("takeover")
        };
        assert!(first.renew().await.unwrap_err().is_conflict());
        assert!(!first.finish().await.unwrap());
        assert!(third.finish().await.unwrap());
    }
}
