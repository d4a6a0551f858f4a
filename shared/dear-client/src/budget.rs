//! Rate budgets: how many DEAR calls an account may make, and when.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::DearError;

/// Which kind of work a call is for: a budget shared by several jobs serves the lanes in this
/// order of priority, each keeping a guaranteed share of the calls so that none starves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Shipment confirmations: a warehouse waits on each, and a carrier's tracking with it.
    Shipments,
    /// A single sale a webhook named: someone just changed it in DEAR.
    Webhook,
    /// Order polls, backfills and resends (the default).
    #[default]
    Poll,
    /// Inventory sync: a count that can wait a minute.
    Inventory,
}

impl Lane {
    /// Every lane, highest priority first.
    pub const ALL: [Lane; 4] = [Lane::Shipments, Lane::Webhook, Lane::Poll, Lane::Inventory];

    /// The lane's place in [`Lane::ALL`] (0 = highest priority).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The share of an account's calls the lane keeps when every lane wants more (percent; the
    /// four add up to 100): a lane below it is served before any lane above its own.
    pub fn guaranteed_percent(self) -> u32 {
        match self {
            Lane::Shipments => 40,
            Lane::Webhook => 20,
            Lane::Poll => 25,
            Lane::Inventory => 15,
        }
    }

    /// Its name in logs and benchmarks.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Shipments => "shipments",
            Lane::Webhook => "webhook",
            Lane::Poll => "poll",
            Lane::Inventory => "inventory",
        }
    }
}

/// Gates every call to DEAR for one account.
///
/// The default is [`SlidingWindowBudget`], in process. A budget shared by several processes (all the
/// Lambda functions of one DEAR account) implements this trait over a shared store.
#[async_trait]
pub trait RateBudget: Send + Sync {
    /// Waits until one more call for `account`, for work of `lane`, fits in the budget, and
    /// takes it.
    async fn acquire(&self, account: &str, lane: Lane) -> Result<(), DearError>;

    /// DEAR answered "throttled": take no more calls for `account` until `pause` has passed.
    async fn throttled(&self, account: &str, pause: Duration);
}

/// An exact in-process limit: at most `limit` calls in any `window` per account.
///
/// DEAR counts 60 calls in a sliding minute. A token bucket with a burst allows up to twice its rate
/// in one window, so instead the start times of the last `limit` calls are kept, and a call waits
/// until the oldest leaves the window. Memory: `limit` instants per account.
#[derive(Debug)]
pub struct SlidingWindowBudget {
    limit: usize,
    window: Duration,
    accounts: Mutex<HashMap<String, WindowState>>,
}

#[derive(Debug, Default)]
struct WindowState {
    started: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl SlidingWindowBudget {
    /// `limit` calls per `window`; 0 means unlimited.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit as usize,
            window,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// `limit` calls per 60 seconds.
    pub fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    /// Takes a slot now, or says how long to wait before trying again.
    fn try_take(&self, account: &str, now: Instant) -> Result<(), Instant> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let state = accounts.entry(account.to_owned()).or_default();
        if let Some(until) = state.paused_until {
            if now < until {
                return Err(until);
            }
            state.paused_until = None;
        }
        if self.limit == 0 {
            return Ok(());
        }
        while let Some(&oldest) = state.started.front() {
            if now.duration_since(oldest) >= self.window {
                state.started.pop_front();
            } else {
                break;
            }
        }
        if state.started.len() < self.limit {
            state.started.push_back(now);
            Ok(())
        } else {
            // Full: the earliest start leaves the window at `oldest + window`.
            Err(state.started[0] + self.window)
        }
    }
}

#[async_trait]
impl RateBudget for SlidingWindowBudget {
    /// One process, one kind of work: lanes are for budgets shared across processes.
    async fn acquire(&self, account: &str, _lane: Lane) -> Result<(), DearError> {
        loop {
            match self.try_take(account, Instant::now()) {
                Ok(()) => return Ok(()),
                Err(ready_at) => tokio::time::sleep_until(ready_at).await,
            }
        }
    }

    async fn throttled(&self, account: &str, pause: Duration) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let state = accounts.entry(account.to_owned()).or_default();
        let until = Instant::now() + pause;
        if state.paused_until.is_none_or(|u| u < until) {
            state.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_any_window() {
        let budget = SlidingWindowBudget::new(5, Duration::from_secs(10));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..17 {
            budget.acquire("a", Lane::Poll).await.unwrap();
            times.push(Instant::now() - start);
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(10))
                .count();
            assert!(in_window <= 5, "{in_window} calls in the window from {t:?}");
        }
        // 17 calls at 5 per 10 s: the last batch starts at 30 s.
        assert_eq!(times[16], Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn accounts_are_independent_and_throttle_pauses() {
        let budget = SlidingWindowBudget::new(1, Duration::from_secs(60));
        let start = Instant::now();
        budget.acquire("a", Lane::Poll).await.unwrap();
        budget.acquire("b", Lane::Poll).await.unwrap();
        assert_eq!(Instant::now(), start);
        budget.throttled("b", Duration::from_secs(90)).await;
        budget.acquire("b", Lane::Poll).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(90));
    }
}
