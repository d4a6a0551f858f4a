//! A DEAR rate budget shared by every process of one DEAR account, over [`TokenBuckets`].
//!
//! DEAR allows 60 calls in any sliding minute per account, and the three functions share that.
//! Tokens are taken from the shared bucket a few at a time (one store write per batch, not per
//! call), and a token not used within `hold` is given back to the bucket (held tokens cannot pile
//! up into a burst, and none is wasted: another process spends it). A caller that comes back
//! slower than `hold` takes one token at a time, so it has none to give back. Each call is for a
//! [`Lane`]; the bucket serves a waiting lane that outranks the asking one first
//! ([`crate::state::LaneState`]). In any 60 s window an account then makes at most
//! `capacity + per_minute × (60 s + hold) / 60 s` calls: 2 + 57 × 61/60 ≈ 59.95 with the defaults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dear_client::{DearError, Lane, RateBudget};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::state::{BucketSpec, TokenBuckets};

/// How the shared budget behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedBudgetConfig {
    /// The bucket: refill per minute and burst capacity.
    pub spec: BucketSpec,
    /// Tokens taken per store write (at most `spec.capacity`).
    pub batch: u32,
    /// A held token is dropped after this.
    pub hold: Duration,
    /// Ask for one token at a time while the caller comes back slower than `hold` (its second
    /// token would be dropped unspent); default on. Off: always `batch` (the budget benchmark's
    /// comparison).
    pub adaptive: bool,
}

impl Default for SharedBudgetConfig {
    fn default() -> Self {
        Self {
            spec: BucketSpec {
                capacity: 2,
                per_minute: 57,
            },
            batch: 2,
            hold: Duration::from_secs(1),
            adaptive: true,
        }
    }
}

impl SharedBudgetConfig {
    /// `per_minute` calls per minute with the default burst, batch and hold.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            spec: BucketSpec {
                per_minute,
                ..Self::default().spec
            },
            ..Self::default()
        }
    }

    /// The most calls this allows in any sliding minute.
    pub fn worst_case_per_minute(&self) -> f64 {
        f64::from(self.spec.capacity)
            + f64::from(self.spec.per_minute) * (60.0 + self.hold.as_secs_f64()) / 60.0
    }
}

#[derive(Debug)]
struct Held {
    tokens: u32,
    taken_at: Instant,
    // After an empty take: nobody in this process asks the store again before this.
    next_poll: Option<Instant>,
    // When this process last got a token for a call: how fast its calls come.
    served_at: Option<Instant>,
}

/// What a budget did with its tokens, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// Tokens the shared bucket granted.
    pub granted: u64,
    /// Of those, tokens spent on a call.
    pub used: u64,
    /// Of those, tokens not spent within `hold` and given back to the shared bucket.
    pub returned: u64,
    /// Of those, tokens lost unspent (the bucket could not take them back, or DEAR throttled).
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    granted: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU64,
    returned: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn add(&self, counter: &std::sync::atomic::AtomicU64, n: u32) {
        counter.fetch_add(u64::from(n), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Held tokens per account and lane.
type HeldTokens = Arc<tokio::sync::Mutex<HashMap<(String, Lane), Held>>>;

/// Gives a batch's unspent tokens back to the shared bucket once `hold` has passed since it was
/// taken, unless the process spent them or gave them back first.
struct GiveBack {
    store: Arc<dyn TokenBuckets>,
    held: HeldTokens,
    counters: Arc<Counters>,
    spec: crate::state::BucketSpec,
    hold: Duration,
    key: (String, Lane),
    taken_at: Instant,
}

impl GiveBack {
    async fn after(self) {
        tokio::time::sleep(self.hold).await;
        let unspent = {
            let mut held = self.held.lock().await;
            match held.get_mut(&self.key) {
                Some(h) if h.taken_at == self.taken_at && h.tokens > 0 => {
                    std::mem::take(&mut h.tokens)
                }
                _ => return,
            }
        };
        let terms = (self.spec, self.hold);
        give_back(
            &*self.store,
            &self.counters,
            terms,
            &self.key,
            (unspent, self.taken_at),
        )
        .await;
    }
}

/// Puts `unspent` tokens taken at `taken_at` back in the shared bucket (counted returned), or
/// counts them dropped: also when they are older than twice the hold (a process thawed after a
/// pause — Lambda freezes between invocations — must not add old tokens to a busy minute: DEAR's
/// limit holds only for tokens given back about when they would have been spent).
async fn give_back(
    store: &dyn TokenBuckets,
    counters: &Counters,
    (spec, hold): (crate::state::BucketSpec, Duration),
    (account, lane): &(String, Lane),
    (unspent, taken_at): (u32, Instant),
) {
    if taken_at.elapsed() > hold * 2 {
        counters.add(&counters.dropped, unspent);
        return;
    }
    match store.give_back(account, spec, unspent, *lane).await {
        Ok(()) => counters.add(&counters.returned, unspent),
        Err(e) => {
            tracing::warn!(error = %e, unspent, "could not give unspent DEAR tokens back; they lapse");
            counters.add(&counters.dropped, unspent);
        }
    }
}

/// A [`RateBudget`] over a shared [`TokenBuckets`] store.
pub struct SharedRateBudget {
    store: Arc<dyn TokenBuckets>,
    clock: Arc<dyn Clock>,
    config: SharedBudgetConfig,
    // Serialises store takes within a process (one batch at a time) and holds the unspent tokens,
    // per account and lane (a lane's tokens are not spent on another's calls).
    held: HeldTokens,
    counters: Arc<Counters>,
}

impl SharedRateBudget {
    /// A budget over `store`.
    pub fn new(
        store: Arc<dyn TokenBuckets>,
        clock: Arc<dyn Clock>,
        config: SharedBudgetConfig,
    ) -> Self {
        let batch = config.batch.clamp(1, config.spec.capacity.max(1));
        Self {
            store,
            clock,
            config: SharedBudgetConfig { batch, ..config },
            held: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// What this budget did with its tokens so far.
    pub fn stats(&self) -> BudgetStats {
        use std::sync::atomic::Ordering::Relaxed;
        BudgetStats {
            granted: self.counters.granted.load(Relaxed),
            used: self.counters.used.load(Relaxed),
            returned: self.counters.returned.load(Relaxed),
            dropped: self.counters.dropped.load(Relaxed),
        }
    }

    /// How many tokens to ask for: a batch while calls come faster than `hold` apart, one for a
    /// caller that asked `hold` or more after its last call (measured from when it asked, not
    /// from when a busy bucket let it through), whose second token would be dropped unspent.
    fn batch_for(&self, last: Option<&Held>, asked_at: Instant) -> u32 {
        let slow = last
            .and_then(|h| h.served_at)
            .is_some_and(|served| asked_at - served >= self.config.hold);
        if self.config.adaptive && slow {
            1
        } else {
            self.config.batch
        }
    }
}

#[async_trait]
impl RateBudget for SharedRateBudget {
    async fn acquire(&self, account: &str, lane: Lane) -> Result<(), DearError> {
        let mut store_errors = 0u32;
        let asked_at = Instant::now();
        let key = (account.to_owned(), lane);
        loop {
            let wait = {
                let mut held = self.held.lock().await;
                let now = Instant::now();
                if let Some(h) = held.get_mut(&key) {
                    if h.tokens > 0 && h.taken_at.elapsed() < self.config.hold {
                        h.tokens -= 1;
                        h.served_at = Some(now);
                        self.counters.add(&self.counters.used, 1);
                        return Ok(());
                    }
                    if h.tokens > 0 {
                        // Not spent within the hold (its timer has not run yet): back they go.
                        let unspent = (std::mem::take(&mut h.tokens), h.taken_at);
                        let terms = (self.config.spec, self.config.hold);
                        give_back(&*self.store, &self.counters, terms, &key, unspent).await;
                    }
                    if let Some(at) = h.next_poll
                        && at > now
                    {
                        let wait = at - now;
                        drop(held);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                let batch = self.batch_for(held.get(&key), asked_at);
                let served_at = held.get(&key).and_then(|h| h.served_at);
                match self
                    .store
                    .take(account, self.config.spec, batch, lane)
                    .await
                {
                    Ok(grant) if grant.granted > 0 => {
                        self.counters.add(&self.counters.granted, grant.granted);
                        self.counters.add(&self.counters.used, 1);
                        if grant.granted > 1 {
                            let timer = GiveBack {
                                store: self.store.clone(),
                                held: self.held.clone(),
                                counters: self.counters.clone(),
                                spec: self.config.spec,
                                hold: self.config.hold,
                                key: key.clone(),
                                taken_at: now,
                            };
                            tokio::spawn(timer.after());
                        }
                        // The bucket is empty until `retry_after`: this process's next caller
                        // waits for that rather than asking in vain.
                        let next_poll =
                            (!grant.retry_after.is_zero()).then(|| now + grant.retry_after);
                        held.insert(
                            key.clone(),
                            Held {
                                tokens: grant.granted - 1,
                                taken_at: now,
                                next_poll,
                                served_at: Some(Instant::now()),
                            },
                        );
                        return Ok(());
                    }
                    Ok(grant) => {
                        let wait = grant.retry_after.max(Duration::from_millis(50));
                        held.insert(
                            key.clone(),
                            Held {
                                tokens: 0,
                                taken_at: now,
                                next_poll: Some(now + wait),
                                served_at,
                            },
                        );
                        wait
                    }
                    Err(e) if e.is_transient() && store_errors < 3 => {
                        store_errors += 1;
                        tracing::warn!(error = %e, attempt = store_errors, "rate budget store failed; retrying");
                        Duration::from_millis(200 * u64::from(store_errors))
                    }
                    Err(e) => {
                        return Err(DearError::Budget(format!(
                            "the shared rate budget could not be read: {e}"
                        )));
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn throttled(&self, account: &str, pause: Duration) {
        let mut held = self.held.lock().await;
        let lanes: Vec<_> = held.keys().filter(|(a, _)| a == account).cloned().collect();
        for key in lanes {
            if let Some(h) = held.remove(&key) {
                self.counters.add(&self.counters.dropped, h.tokens);
            }
        }
        drop(held);
        let until = self.clock.now()
            + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::seconds(60));
        if let Err(e) = self.store.pause(account, until).await {
            tracing::warn!(error = %e, "could not record DEAR's throttle in the shared budget");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::state::{BucketSpec, Grant};
    use crate::{MemoryStore, StoreError};

    /// A clock that follows tokio's (paused, auto-advancing) time.
    struct TokioClock {
        start: Instant,
        base: DateTime<Utc>,
    }

    impl Clock for TokioClock {
        fn now(&self) -> DateTime<Utc> {
            self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
        }
    }

    /// Counts store takes, to check tokens are taken in batches. A take that grants nothing
    /// changes nothing, so a store can answer it with a read alone.
    struct Counting {
        inner: MemoryStore,
        takes: AtomicU32,
        grants: AtomicU32,
        tokens: AtomicU32,
    }

    #[async_trait]
    impl TokenBuckets for Counting {
        async fn take(
            &self,
            account: &str,
            spec: BucketSpec,
            want: u32,
            lane: Lane,
        ) -> Result<Grant, StoreError> {
            self.takes.fetch_add(1, Ordering::Relaxed);
            let grant = self.inner.take(account, spec, want, lane).await?;
            if grant.granted > 0 {
                self.grants.fetch_add(1, Ordering::Relaxed);
                self.tokens.fetch_add(grant.granted, Ordering::Relaxed);
            }
            Ok(grant)
        }
        async fn give_back(
            &self,
            account: &str,
            spec: BucketSpec,
            tokens: u32,
            lane: Lane,
        ) -> Result<(), StoreError> {
            self.inner.give_back(account, spec, tokens, lane).await
        }
        async fn pause(&self, account: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
            self.inner.pause(account, until).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_held_across_a_freeze_are_dropped_not_given_back() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock {
            start: Instant::now(),
            base: Utc::now(),
        });
        let store = MemoryStore::new(clock);
        let spec = BucketSpec {
            capacity: 2,
            per_minute: 1,
        };
        assert_eq!(
            store
                .take("acct", spec, 2, Lane::Poll)
                .await
                .unwrap()
                .granted,
            2
        );
        let taken_at = Instant::now();
        // Lambda froze the process for a while after its invocation; it thaws in a busy minute.
        tokio::time::advance(Duration::from_secs(5)).await;
        let counters = Counters::default();
        let key = ("acct".to_owned(), Lane::Poll);
        let hold = Duration::from_secs(1);
        give_back(&store, &counters, (spec, hold), &key, (1, taken_at)).await;
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            (
                counters.returned.load(Relaxed),
                counters.dropped.load(Relaxed)
            ),
            (0, 1)
        );
        let g = store.take("acct", spec, 1, Lane::Poll).await.unwrap();
        assert_eq!(g.granted, 0, "the bucket did not get the old token");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_left_unspent_goes_back_to_the_bucket_for_another_process() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock {
            start: Instant::now(),
            base: Utc::now(),
        });
        let store = Arc::new(MemoryStore::new(clock.clone()));
        let config = SharedBudgetConfig {
            spec: BucketSpec {
                capacity: 2,
                per_minute: 1,
            },
            ..SharedBudgetConfig::default()
        };
        let a = SharedRateBudget::new(store.clone(), clock.clone(), config);
        let one_at_a_time = SharedBudgetConfig { batch: 1, ..config };
        let b = SharedRateBudget::new(store.clone(), clock.clone(), one_at_a_time);
        // A takes a pair for one call and stops; B then finds the bucket empty...
        a.acquire("acct", Lane::Shipments).await.unwrap();
        let spec = config.spec;
        let g = store.take("acct", spec, 1, Lane::Poll).await.unwrap();
        assert_eq!(g.granted, 0);
        // ...until A's hold passes and its unspent token is back (the refill is 1 a minute).
        tokio::time::sleep(config.hold + Duration::from_millis(10)).await;
        let started = Instant::now();
        b.acquire("acct", Lane::Poll).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            (
                a.stats().granted,
                a.stats().used,
                a.stats().returned,
                a.stats().dropped
            ),
            (2, 1, 1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_processes_share_one_budget_and_never_exceed_60_per_minute() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock {
            start: Instant::now(),
            base: Utc::now(),
        });
        let store = Arc::new(Counting {
            inner: MemoryStore::new(clock.clone()),
            takes: AtomicU32::new(0),
            grants: AtomicU32::new(0),
            tokens: AtomicU32::new(0),
        });
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _process in 0..2 {
            let budget = Arc::new(SharedRateBudget::new(
                store.clone(),
                clock.clone(),
                SharedBudgetConfig::default(),
            ));
            for _worker in 0..3 {
                let budget = budget.clone();
                tasks.push(tokio::spawn(async move {
                    let mut at = Vec::new();
                    for _ in 0..50 {
                        budget.acquire("acct", Lane::Poll).await.unwrap();
                        at.push(Instant::now() - start);
                        // A DEAR call takes a little while.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    at
                }));
            }
        }
        let mut times: Vec<Duration> = Vec::new();
        for t in tasks {
            times.extend(t.await.unwrap());
        }
        times.sort();
        assert_eq!(times.len(), 300);
        let worst = times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                times[i..]
                    .iter()
                    .take_while(|u| **u < *t + Duration::from_secs(60))
                    .count()
            })
            .max()
            .unwrap();
        assert!(worst <= 60, "{worst} calls in one minute");
        assert!(
            worst >= 57,
            "the budget is used: {worst} calls in the busiest minute"
        );
        // Saturated, the bucket trickles single tokens and each is taken as it comes (waiting for
        // a pair would keep the bucket full, where its refill is lost): one write per call.
        let writes = store.grants.load(Ordering::Relaxed);
        assert!(writes <= 300, "{writes} store writes for 300 calls");
        let takes = store.takes.load(Ordering::Relaxed);
        // Two saturated processes poll for each batch: at most two round trips (reads) per call.
        assert!(takes <= 600, "{takes} store round trips for 300 calls");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_every_process() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock {
            start: Instant::now(),
            base: Utc::now(),
        });
        let store = Arc::new(MemoryStore::new(clock.clone()));
        let a = SharedRateBudget::new(store.clone(), clock.clone(), SharedBudgetConfig::default());
        let b = SharedRateBudget::new(store, clock, SharedBudgetConfig::default());
        a.acquire("acct", Lane::Poll).await.unwrap();
        let start = Instant::now();
        a.throttled("acct", Duration::from_secs(30)).await;
        b.acquire("acct", Lane::Poll).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_slower_than_the_hold_wastes_no_tokens_and_a_fast_one_still_takes_pairs() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock {
            start: Instant::now(),
            base: Utc::now(),
        });
        let roomy = SharedBudgetConfig::per_minute(600);
        for (think, config, most_writes) in [
            (
                Duration::from_millis(1500),
                SharedBudgetConfig::default(),
                40,
            ),
            // Five calls a second where the bucket refills ten: pairs, one write per two calls.
            (Duration::from_millis(200), roomy, 21),
        ] {
            let store = Arc::new(Counting {
                inner: MemoryStore::new(clock.clone()),
                takes: AtomicU32::new(0),
                grants: AtomicU32::new(0),
                tokens: AtomicU32::new(0),
            });
            let budget = SharedRateBudget::new(store.clone(), clock.clone(), config);
            for _ in 0..40 {
                budget.acquire("acct", Lane::Poll).await.unwrap();
                // The call, then whatever the job does before its next one (a webhook, a sink).
                tokio::time::sleep(think).await;
            }
            let granted = store.tokens.load(Ordering::Relaxed);
            assert!(
                granted <= 41,
                "think {think:?}: {granted} tokens taken for 40 calls: {} dropped unused",
                granted - 40
            );
            let writes = store.grants.load(Ordering::Relaxed);
            assert!(
                writes <= most_writes,
                "think {think:?}: {writes} store writes for 40 calls"
            );
            let stats = budget.stats();
            assert_eq!(stats.returned + stats.dropped, u64::from(granted - 40));
            assert_eq!(stats.dropped, 0, "every unspent token is given back");
        }
    }
}
