//! # dear-client
//!
//! An async client for the DEAR Systems / Cin7 Core Inventory API v2, as described in the project's
//! `shared/dear-api.md`: typed, tolerant models with exact decimals; every list as a stream of pages;
//! one rate budget per account; retries that never repeat a write blindly; one error type.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dear_client::DearError> {
//! use dear_client::{ApiKey, DearClient, DearConfig, SaleListQuery, SaleStatus};
//! use futures::TryStreamExt;
//!
//! let config = DearConfig::new("account-id", ApiKey::new("api-key"));
//! let client = DearClient::new(config)?;
//! let query = SaleListQuery { status: Some(SaleStatus::Picked), ..Default::default() };
//! let mut pages = std::pin::pin!(client.sale_list(&query, 1000));
//! while let Some(page) = pages.try_next().await? {
//!     for row in page.items { println!("{} {:?}", row.sale_id, row.order_number); }
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod budget;
pub mod client;
pub mod config;
pub mod date;
pub mod error;
pub mod models;
pub mod page;
pub mod serde_util;

pub use budget::{Lane, RateBudget, SlidingWindowBudget};
pub use client::{ClientStats, DearClient, error_chain};
pub use config::{ApiKey, DEFAULT_BASE_URL, DearConfig, RetryPolicy};
pub use date::DearDateTime;
pub use error::{DearError, READ_BACK_ROUNDS};
pub use models::*;
pub use page::{ListPage, Listed, MAX_LIMIT};
