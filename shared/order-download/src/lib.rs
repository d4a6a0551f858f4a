//! dear-sync's Order Download: DEAR sales selected by CartRover's filters, mapped to a documented
//! canonical order, validated, and delivered exactly once per version through a sink.

pub mod address;
pub mod cancel;
pub mod canonical;
pub mod filter;
pub mod job;
pub mod sink;
pub mod story;

pub use address::address_mismatch;
pub use cancel::{CANCEL_SCHEMA, CancelReason, OrderCancel};
pub use canonical::{CanonicalOrder, map_sale, validate};
pub use job::{OrderDownload, Outcome, Progress, RunOptions, RunSummary};
pub use sink::{NdjsonSink, OrderSink, Receipt, SinkError, SinkOpenError, WebhookSink};
pub use story::story;
