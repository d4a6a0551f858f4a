//! Which of a snapshot's SKUs DEAR already holds as counted, told from the availability pages
//! alone, so the catalogue is read only for the SKUs that may change (their unit cost, FEFO
//! flag, batch tracking) — at 10,000 SKUs, ten product pages fewer on a run where little moved.

use std::collections::{BTreeMap, HashMap, HashSet};

use dearsync_core::settings::{InventorySyncSettings, QuantityIs};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{Item, Level, Levels, level_of};
use crate::snapshot::{Snapshot, SnapshotLine};

/// DEAR's SKU of each product listed at the location, as the availability rows name it.
pub(super) type RowSkus = HashMap<Uuid, String>;

/// The snapshot split by what the plan needs to know of each SKU.
pub(super) struct Settled {
    /// SKUs (lower case) DEAR already holds as counted, whatever the product's batch tracking:
    /// an item built from the availability rows, enough for the plan to count them unchanged.
    pub items: HashMap<String, Item>,
    /// SKUs whose catalogue entry the plan needs, spelt as the snapshot or the rows spell them
    /// (trimmed; one per SKU compared without case).
    pub needed: Vec<String>,
    /// A stocked product has no SKU on its rows: only the whole catalogue names it (for the
    /// sanity guard, a full snapshot's zeroing and a zero count of it).
    pub needs_catalogue: bool,
    /// SKUs (lower case) counted zero that DEAR lists nowhere at the location (it lists no
    /// product without stock there): nothing to change whether DEAR knows them or not, so they
    /// are not looked up (and an unknown one among them is not reported).
    pub absent_zero: HashSet<String>,
}

/// Splits the snapshot's SKUs into those DEAR holds as counted (under both readings of batch
/// tracking, so the catalogue cannot change the answer) and those whose catalogue entry is
/// needed; `zero_unlisted` adds the stocked products the snapshot leaves out (a full snapshot
/// zeroes them).
pub(super) fn settle(
    snapshot: &Snapshot,
    levels: &Levels,
    row_skus: &RowSkus,
    orders: &BTreeMap<String, Decimal>,
    settings: &InventorySyncSettings,
    zero_unlisted: bool,
) -> Settled {
    let mut ids_of: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (id, sku) in row_skus {
        ids_of
            .entry(sku.trim().to_ascii_lowercase())
            .or_default()
            .push(*id);
    }
    let ordered: HashSet<String> = orders
        .keys()
        .map(|k| k.trim().to_ascii_lowercase())
        .collect();
    let mut lines_of: BTreeMap<String, Vec<&SnapshotLine>> = BTreeMap::new();
    for line in &snapshot.lines {
        lines_of
            .entry(line.sku.trim().to_ascii_lowercase())
            .or_default()
            .push(line);
    }
    let stocked =
        |rows: &Vec<(Option<String>, Level)>| rows.iter().any(|(_, l)| !l.on_hand.is_zero());
    let mut settled = Settled {
        items: HashMap::new(),
        needed: Vec::new(),
        needs_catalogue: levels
            .iter()
            .any(|(id, rows)| stocked(rows) && !row_skus.contains_key(id)),
        absent_zero: HashSet::new(),
    };
    for (sku, lines) in &lines_of {
        let item = match ids_of.get(sku).map(Vec::as_slice) {
            Some([id]) if !ordered.contains(sku) => unchanged_item(*id, lines, levels, settings)
                .map(|batch_tracked| Item {
                    id: *id,
                    sku: row_skus[id].clone(),
                    batch_tracked,
                    expiry_dated: false,
                    average_cost: None,
                    new_stock_cost: None,
                }),
            None if total_is_zero(lines, settings) => {
                settled.absent_zero.insert(sku.clone());
                continue;
            }
            _ => None,
        };
        match item {
            Some(item) => {
                settled.items.insert(sku.clone(), item);
            }
            None => settled.needed.push(lines[0].sku.trim().to_owned()),
        }
    }
    if zero_unlisted {
        let listed: HashSet<Uuid> = lines_of
            .keys()
            .filter_map(|sku| ids_of.get(sku))
            .flatten()
            .copied()
            .collect();
        for (id, rows) in levels {
            if listed.contains(id) || !stocked(rows) {
                continue;
            }
            if let Some(sku) = row_skus.get(id) {
                settled.needed.push(sku.trim().to_owned());
            }
        }
    }
    settled.needed.sort_by_key(|s| s.to_ascii_lowercase());
    settled.needed.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    settled
}

/// Whether the lines ask for nothing (their total is zero or below `minimum_level`; counts are
/// never negative, so then every batch's is too).
fn total_is_zero(lines: &[&SnapshotLine], s: &InventorySyncSettings) -> bool {
    let total: Decimal = lines.iter().map(|l| l.quantity).sum();
    total.is_zero() || total < s.minimum_level
}

/// `Some(batch_tracked)` when the SKU's lines equal DEAR's level both as one FIFO total and
/// batch by batch (the plan then counts them unchanged whichever the product is); the value
/// says which the availability rows suggest (any row with a batch).
fn unchanged_item(
    id: Uuid,
    lines: &[&SnapshotLine],
    levels: &Levels,
    s: &InventorySyncSettings,
) -> Option<bool> {
    let value = |l: &Level| match s.quantity_is {
        QuantityIs::OnHand => l.on_hand,
        QuantityIs::Available => l.available,
    };
    let floored = |t: Decimal| {
        if t < s.minimum_level {
            Decimal::ZERO
        } else {
            t
        }
    };
    let rows_batched = levels
        .get(&id)
        .is_some_and(|rows| rows.iter().any(|(b, _)| b.is_some()));
    let total: Decimal = lines.iter().map(|l| l.quantity).sum();
    if floored(total) != value(&level_of(levels, id, None, &None)) {
        return None;
    }
    let batches: Vec<Option<&String>> = lines
        .iter()
        .map(|l| l.batch.as_ref().filter(|b| !b.trim().is_empty()))
        .collect();
    if batches.iter().all(Option::is_none) {
        // No batch anywhere: a FIFO product (DEAR lists a tracked product's stock by batch).
        return (!rows_batched).then_some(false);
    }
    if batches.iter().any(Option::is_none) {
        return None; // which batch a bare line means is for the catalogue to say
    }
    let mut per_batch: BTreeMap<&String, Decimal> = BTreeMap::new();
    for (line, batch) in lines.iter().zip(&batches) {
        if let Some(b) = batch {
            *per_batch.entry(b).or_default() += line.quantity;
        }
    }
    let tracked = Item {
        id,
        sku: String::new(),
        batch_tracked: true,
        expiry_dated: false,
        average_cost: None,
        new_stock_cost: None,
    };
    per_batch
        .into_iter()
        .all(|(b, t)| floored(t) == value(&level_of(levels, id, Some(&tracked), &Some(b.clone()))))
        .then_some(rows_batched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dearsync_core::TenantSettings;

    fn level(on_hand: i64) -> Level {
        Level {
            on_hand: Decimal::from(on_hand),
            available: Decimal::from(on_hand),
            ..Level::default()
        }
    }

    fn snapshot(lines: &[(&str, i64, Option<&str>)]) -> Snapshot {
        let lines: Vec<_> = lines
            .iter()
            .map(|(s, q, b)| serde_json::json!({ "sku": s, "quantity": q, "batch": b }))
            .collect();
        let body = serde_json::json!({
            "snapshot_id": "S", "as_of": "2026-11-20T06:00:00Z", "location": "Main", "lines": lines
        });
        Snapshot::from_json_reader(body.to_string().as_bytes()).unwrap()
    }

    fn settings() -> InventorySyncSettings {
        TenantSettings::from_toml("").unwrap().inventory_sync
    }

    #[test]
    fn equal_counts_are_settled_and_differences_unknowns_and_orders_are_needed() {
        let (fifo, tracked, other) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let levels: Levels = HashMap::from([
            (fifo, vec![(None, level(5))]),
            (
                tracked,
                vec![(Some("B1".into()), level(2)), (Some("B2".into()), level(3))],
            ),
            (other, vec![(None, level(9))]),
        ]);
        let skus: RowSkus = HashMap::from([
            (fifo, "Fifo".to_owned()),
            (tracked, "Lot".to_owned()),
            (other, "Other".to_owned()),
        ]);
        let snap = snapshot(&[
            ("FIFO", 5, None),
            ("Lot", 2, Some("B1")),
            ("Lot", 3, Some("B2")),
            ("Other", 8, None),
            ("New", 1, None),
            ("Gone", 0, None),
        ]);
        let s = settle(&snap, &levels, &skus, &BTreeMap::new(), &settings(), false);
        assert_eq!(
            s.needed,
            ["New", "Other"],
            "spelt as given, for DEAR's Sku filter"
        );
        assert_eq!(s.absent_zero, HashSet::from(["gone".to_owned()]));
        assert!(!s.items["fifo"].batch_tracked && s.items["lot"].batch_tracked);
        assert_eq!(s.items["lot"].sku, "Lot");

        // An order delivered since the snapshot changes the target: the catalogue decides.
        let orders = BTreeMap::from([(" fifo ".to_owned(), Decimal::ONE)]);
        let s = settle(&snap, &levels, &skus, &orders, &settings(), false);
        assert!(s.needed.contains(&"FIFO".to_owned()), "{:?}", s.needed);
    }

    #[test]
    fn a_total_that_agrees_but_not_batch_by_batch_or_a_bare_line_is_needed() {
        let id = Uuid::from_u128(7);
        let levels: Levels = HashMap::from([(
            id,
            vec![(Some("B1".into()), level(2)), (Some("B2".into()), level(3))],
        )]);
        let skus: RowSkus = HashMap::from([(id, "Lot".to_owned())]);
        for lines in [
            vec![("Lot", 3, Some("B1")), ("Lot", 2, Some("B2"))],
            vec![("Lot", 5, None)],
            vec![("Lot", 2, Some("B1")), ("Lot", 3, None)],
        ] {
            let s = settle(
                &snapshot(&lines),
                &levels,
                &skus,
                &BTreeMap::new(),
                &settings(),
                false,
            );
            assert_eq!(s.needed, ["Lot"], "{lines:?}");
        }
    }

    #[test]
    fn a_full_snapshot_needs_the_stocked_products_it_leaves_out() {
        let (listed, left_out, empty, nameless) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let levels: Levels = HashMap::from([
            (listed, vec![(None, level(1))]),
            (left_out, vec![(None, level(4))]),
            (empty, vec![(None, level(0))]),
        ]);
        let skus: RowSkus = HashMap::from([
            (listed, "A".to_owned()),
            (left_out, "B".to_owned()),
            (empty, "C".to_owned()),
        ]);
        let snap = snapshot(&[("A", 1, None)]);
        let s = settle(&snap, &levels, &skus, &BTreeMap::new(), &settings(), true);
        assert_eq!(
            (s.needed.as_slice(), s.needs_catalogue),
            (&["B".to_owned()][..], false)
        );
        // A stocked product its rows do not name: the whole catalogue, whatever the scope (the
        // guard counts it, and a zero count of it must not pass for one DEAR lists nowhere).
        let mut levels = levels;
        levels.insert(nameless, vec![(None, level(2))]);
        for full in [true, false] {
            let s = settle(&snap, &levels, &skus, &BTreeMap::new(), &settings(), full);
            assert!(s.needs_catalogue);
        }
    }
}
