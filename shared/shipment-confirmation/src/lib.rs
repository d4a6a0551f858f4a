//! dear-sync's Shipment Confirmation – Detailed: a warehouse shipment (boxes, carrier, a tracking
//! number per box) written to DEAR through pick → pack → ship, exactly once.

pub mod confirm;
pub mod shipment;
pub mod story;

pub use confirm::{
    BoxResult, ConfirmError, Confirmation, ShipmentConfirmation, confirmations_report,
};
pub use shipment::{Checked, Invalid, Shipment};
pub use story::story;
