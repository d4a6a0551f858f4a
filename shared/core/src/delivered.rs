//! "Orders delivered since": the read model Order Download writes into its done ledger records and
//! Inventory Sync reads, so neither job imports the other.
//!
//! Order Download keeps, in each done record's `detail` JSON, the keys of [`DeliveryFacts`]
//! (`location`, `lines`, `delivered_at`) next to its own. This module owns those keys: the writer
//! embeds a `DeliveryFacts` (serde `flatten`), the reader parses only them.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::state::{Ledger, LedgerQuery, LedgerRecord, RecordState};
use crate::{Job, StoreError, TenantId};

/// What a delivered order says about stock, as stored in its ledger record's `detail`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFacts {
    /// The DEAR location the order ships from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Quantity per SKU, as exact decimal text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lines: BTreeMap<String, String>,
    /// When the warehouse took the order (RFC 3339, milliseconds); absent until delivered.
    #[serde(default)]
    pub delivered_at: Option<String>,
}

impl DeliveryFacts {
    /// The facts of an order shipping from `location` with these quantities (summed per SKU).
    pub fn new<'a>(
        location: Option<String>,
        lines: impl IntoIterator<Item = (&'a str, Decimal)>,
    ) -> Self {
        let mut per_sku: BTreeMap<String, Decimal> = BTreeMap::new();
        for (sku, quantity) in lines {
            *per_sku.entry(sku.to_owned()).or_default() += quantity;
        }
        DeliveryFacts {
            location,
            lines: per_sku
                .into_iter()
                .map(|(sku, q)| (sku, q.normalize().to_string()))
                .collect(),
            delivered_at: None,
        }
    }

    /// Marks the order delivered at `at`.
    pub fn delivered(&mut self, at: DateTime<Utc>) {
        self.delivered_at = Some(at.to_rfc3339_opts(SecondsFormat::Millis, true));
    }

    /// The facts in a ledger record's detail (empty when it has none).
    pub fn of(record: &LedgerRecord) -> DeliveryFacts {
        record
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default()
    }

    /// When it was delivered, if it was.
    pub fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.delivered_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    }

    /// True if the order ships from `location` (case-insensitive).
    pub fn ships_from(&self, location: &str) -> bool {
        self.location
            .as_deref()
            .is_some_and(|l| l.trim().eq_ignore_ascii_case(location.trim()))
    }
}

/// The quantity per SKU of orders delivered to the warehouse after `since` that ship from
/// `location`: what Inventory Sync subtracts from a snapshot taken at `since`. Reads only the done
/// order records that changed since then (a delivery is a change), a page at a time.
pub async fn delivered_since(
    ledger: &dyn Ledger,
    tenant: &TenantId,
    since: DateTime<Utc>,
    location: &str,
) -> Result<BTreeMap<String, Decimal>, StoreError> {
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    // Done records, and failed ones whose delivered version a later read could not refresh (they
    // keep `delivered_at`; a failed delivery has none).
    for state in [RecordState::Done, RecordState::Failed] {
        let mut query = LedgerQuery::new(tenant, Job::OrderDownload, state);
        query.limit = 1000;
        query.changed_since = Some(since);
        loop {
            let page = ledger.list(&query).await?;
            for record in &page.records {
                add_if_delivered_after(&mut totals, &DeliveryFacts::of(record), since, location)?;
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
    }
    Ok(totals)
}

/// Adds one order's quantities when it shipped from `location` after `since`.
fn add_if_delivered_after(
    totals: &mut BTreeMap<String, Decimal>,
    facts: &DeliveryFacts,
    since: DateTime<Utc>,
    location: &str,
) -> Result<(), StoreError> {
    if !facts.ships_from(location) || facts.delivered_at().is_none_or(|t| t <= since) {
        return Ok(());
    }
    for (sku, text) in &facts.lines {
        // Written by DeliveryFacts::new from a Decimal: unreadable text is a damaged record.
        let quantity = text.parse::<Decimal>().map_err(|_| {
            StoreError::Invalid(format!(
                "a delivered order's quantity for {sku:?} is not a decimal: {text:?}"
            ))
        })?;
        *totals.entry(sku.clone()).or_default() += quantity;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn facts_sum_per_sku_and_round_trip_through_a_detail() {
        let mut facts = DeliveryFacts::new(
            Some("Main Warehouse".into()),
            [
                ("A", Decimal::new(15, 1)),
                ("B", Decimal::ONE),
                ("A", Decimal::new(25, 1)),
            ],
        );
        assert_eq!(facts.lines["A"], "4");
        let at = DateTime::parse_from_rfc3339("2026-11-20T06:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        facts.delivered(at);
        // Other keys of the writer's detail are ignored by the reader.
        let mut detail = serde_json::to_value(&facts).unwrap();
        detail["order_number"] = "SO-1".into();
        let back: DeliveryFacts = serde_json::from_value(detail).unwrap();
        assert_eq!(back, facts);
        assert_eq!(back.delivered_at(), Some(at));
    }

    #[test]
    fn only_orders_from_the_location_delivered_after_the_instant_count() {
        let since = Utc::now();
        let mut totals = BTreeMap::new();
        let mut here = DeliveryFacts::new(Some("main warehouse".into()), [("A", Decimal::TWO)]);
        here.delivered(since + Duration::seconds(1));
        let mut elsewhere = DeliveryFacts::new(Some("East".into()), [("A", Decimal::TEN)]);
        elsewhere.delivered(since + Duration::seconds(1));
        let mut before = DeliveryFacts::new(Some("Main Warehouse".into()), [("A", Decimal::TEN)]);
        before.delivered(since);
        let undelivered = DeliveryFacts::new(Some("Main Warehouse".into()), [("A", Decimal::TEN)]);
        for f in [&here, &elsewhere, &before, &undelivered] {
            add_if_delivered_after(&mut totals, f, since, " Main Warehouse ").unwrap();
        }
        assert_eq!(totals, BTreeMap::from([("A".to_owned(), Decimal::TWO)]));

        let mut damaged = here.clone();
        damaged.lines.insert("B".into(), "two".into());
        let e = add_if_delivered_after(&mut totals, &damaged, since, "Main Warehouse").unwrap_err();
        assert!(e.to_string().contains("\"B\""), "{e}");
    }
}
