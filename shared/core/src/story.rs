//! One order's story: what each job's ledger record says happened to it, as dated events that
//! `dearsync orders show` merges into one time line. Each job tells its own records' events
//! (only it knows its record's detail); this is the shape they share.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::Job;

/// Something that happened to an order, as one job's record tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoryEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// Which job's record says so.
    pub job: Job,
    /// The record's entity (a SaleID, a warehouse shipment id).
    pub entity: String,
    /// What, as a stable snake_case name (`listed`, `delivered`, `skipped`, `failed`,
    /// `shipment_applied`…), for scripts.
    pub event: &'static str,
    /// What, for a person: the reason, the version, the boxes, what retries next.
    pub text: String,
}

impl StoryEvent {
    /// An event of `job`'s record of `entity`.
    pub fn new(
        at: DateTime<Utc>,
        job: Job,
        entity: &str,
        event: &'static str,
        text: impl Into<String>,
    ) -> Self {
        Self {
            at,
            job,
            entity: entity.to_owned(),
            event,
            text: text.into(),
        }
    }
}

/// Reads an RFC 3339 time a record's detail keeps as text.
pub fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
