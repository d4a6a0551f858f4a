//! Typed models of DEAR's JSON. Reading is tolerant: unknown fields are ignored, missing and `null`
//! fields become `None`/defaults, dates come in any of DEAR's shapes, GUIDs in any case.

pub mod reference;
pub mod sale;
pub mod status;
pub mod stock;
pub mod webhook;

pub use reference::*;
pub use sale::*;
pub use status::{AdjustmentStatus, SaleStatus, SaleType, StageStatus};
pub use stock::*;
pub use webhook::*;
