//! Work done under an idempotency claim with a short, renewed lapse time: the claim is renewed in
//! the background while the work runs, so a dead worker's claim lapses within seconds (and is
//! taken over) while a slow live worker keeps it as long as it needs.

use std::future::Future;
use std::time::Duration as StdDuration;

use chrono::Duration;

use crate::StoreError;
use crate::state::{Idempotency, IdempotencyKey};

/// A claim held by this worker, to renew while working.
pub struct HeldClaim<'a> {
    store: &'a dyn Idempotency,
    key: &'a IdempotencyKey,
    token: &'a str,
    in_progress_for: Duration,
}

/// The claim was taken over by another worker while this one worked (this one stalled past its
/// lapse time): the work was stopped, and the other worker finishes it.
#[derive(Debug, thiserror::Error)]
#[error("the claim on {key} was taken over by another worker; this worker stopped")]
pub struct ClaimLost {
    /// Which claim.
    pub key: String,
    /// The store's answer.
    #[source]
    pub source: StoreError,
}

impl<'a> HeldClaim<'a> {
    /// The claim on `key`, held with `token`, lapsing `in_progress_for` after each renewal.
    pub fn new(
        store: &'a dyn Idempotency,
        key: &'a IdempotencyKey,
        token: &'a str,
        in_progress_for: Duration,
    ) -> Self {
        Self {
            store,
            key,
            token,
            in_progress_for,
        }
    }

    /// Ends the claim: completes it with `result` when the work is done (a repeat is answered with
    /// it for `keep_for`), or releases it when `result` is `None` (the work failed or was held, and
    /// a retry may run it at once).
    pub async fn finish(&self, result: Option<&str>, keep_for: Duration) -> Result<(), StoreError> {
        match result {
            Some(text) => {
                self.store
                    .complete(self.key, self.token, text, keep_for)
                    .await
            }
            None => self.store.release_claim(self.key, self.token).await,
        }
    }

    /// How often the claim is renewed: three times per lapse period, so two renewals in a row may
    /// fail (a store blip) before the claim lapses.
    pub fn renew_every(&self) -> StdDuration {
        let third = self.in_progress_for.num_milliseconds().max(3) / 3;
        StdDuration::from_millis(third as u64)
    }

    /// Runs `work` while renewing the claim. If the store says the claim was lost, the work is
    /// dropped at its next await point (as a crash would stop it: the jobs converge from any such
    /// point) and [`ClaimLost`] is returned. A renewal the store cannot answer is logged and tried
    /// again at the next tick.
    pub async fn keep_while<F: Future>(&self, work: F) -> Result<F::Output, ClaimLost> {
        let mut work = std::pin::pin!(work);
        let mut ticks = tokio::time::interval(self.renew_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate: the claim was just taken
        loop {
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                _ = ticks.tick() => match self.store.renew_claim(self.key, self.token, self.in_progress_for).await {
                    Ok(_) => {}
                    Err(source @ StoreError::Conflict { .. }) => {
                        tracing::warn!(key = %self.key, "claim taken over while working; stopping");
                        return Err(ClaimLost { key: self.key.to_string(), source });
                    }
                    Err(e) => tracing::warn!(key = %self.key, error = %e, "claim renewal failed; trying again"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::{Claim, ClaimTerms};
    use crate::{Clock, ManualClock, MemoryStore, TenantId};

    fn terms() -> ClaimTerms {
        ClaimTerms {
            in_progress_for: Duration::milliseconds(300),
            keep_for: Duration::days(1),
        }
    }

    #[tokio::test]
    async fn a_live_worker_keeps_its_claim_past_the_lapse_time() {
        let clock = Arc::new(ManualClock::fixed());
        let store = MemoryStore::new(clock.clone());
        let key = IdempotencyKey::new(&TenantId::new("acme").unwrap(), "shipment", "S-1");
        let Claim::Acquired { token } = store.claim(&key, "h", terms()).await.unwrap() else {
            panic!("claim")
        };
        let held = HeldClaim::new(&store, &key, &token, terms().in_progress_for);
        let out = held
            .keep_while(async {
                // The store's clock moves on by several lapse periods while the work runs.
                for _ in 0..6 {
                    tokio::time::sleep(StdDuration::from_millis(150)).await;
                    clock.advance(Duration::milliseconds(150));
                    assert!(
                        matches!(
                            store.claim(&key, "h", terms()).await.unwrap(),
                            Claim::InProgress { .. }
                        ),
                        "a peer is kept out"
                    );
                }
                "done"
            })
            .await
            .unwrap();
        assert_eq!(out, "done");
        let rec = store.idempotency_record(&key).await.unwrap().unwrap();
        assert!(rec.in_progress_until > clock.now(), "renewed");
    }

    #[tokio::test]
    async fn a_worker_whose_claim_was_taken_over_stops() {
        let clock = Arc::new(ManualClock::fixed());
        let store = MemoryStore::new(clock.clone());
        let key = IdempotencyKey::new(&TenantId::new("acme").unwrap(), "snapshot", "S-1@main");
        let Claim::Acquired { token } = store.claim(&key, "h", terms()).await.unwrap() else {
            panic!("claim")
        };
        // The worker stalled: its claim lapsed and a peer took it over.
        clock.advance(Duration::seconds(1));
        let Claim::Acquired { .. } = store.claim(&key, "h", terms()).await.unwrap() else {
            panic!("takeover")
        };
        let held = HeldClaim::new(&store, &key, &token, terms().in_progress_for);
        let lost = held
            .keep_while(std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(lost.to_string().contains("taken over"), "{lost}");
    }
}
