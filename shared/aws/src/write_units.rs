//! DynamoDB's write billing, modelled from the writes one client makes: an SDK interceptor for
//! tests and benchmarks. moto answers every write with one capacity unit and none per index, so
//! what a ledger record costs is measured here, by the rules AWS documents for on-demand tables:
//! a table write costs 1 unit per KB of the larger of the item before and after (a failed
//! conditional write is billed too); an index entry added or removed costs 1 per KB of its
//! projection, one whose key changed 2 (removed, added), one kept with a projected attribute
//! changed 1, else nothing.
//!
//! Only ledger records (`sk` = `R#…`) are modelled in detail; every other write request (rate
//! buckets, leases, claims, cursors, run logs: small items) counts as [`WriteUnits::other`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

type Item = HashMap<String, AttributeValue>;

/// Write request units counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteUnits {
    /// Ledger records' table writes.
    pub ledger_table: u64,
    /// Their writes to `gsi1` (state listings; every attribute projected).
    pub ledger_gsi1: u64,
    /// Their writes to `gsi2` (every record of an order; keys only).
    pub ledger_gsi2: u64,
    /// Every other write request, one unit each (transactions: two per item).
    pub other: u64,
}

impl WriteUnits {
    /// What the ledger's records cost, table and indexes.
    pub fn ledger(&self) -> u64 {
        self.ledger_table + self.ledger_gsi1 + self.ledger_gsi2
    }

    /// The units counted since `before`.
    pub fn since(&self, before: &WriteUnits) -> WriteUnits {
        WriteUnits {
            ledger_table: self.ledger_table - before.ledger_table,
            ledger_gsi1: self.ledger_gsi1 - before.ledger_gsi1,
            ledger_gsi2: self.ledger_gsi2 - before.ledger_gsi2,
            other: self.other - before.other,
        }
    }
}

/// The interceptor: add it to a client's config (`.interceptor(meter.clone())`), then read
/// [`WriteMeter::units`]. It remembers each ledger record the client wrote, so it models a table
/// only this client writes ledger records to.
#[derive(Clone, Debug, Default)]
pub struct WriteMeter {
    inner: Arc<Mutex<Meter>>,
}

#[derive(Debug, Default)]
struct Meter {
    records: HashMap<(String, String), Item>,
    units: WriteUnits,
}

/// The ledger record a `PutItem` writes, kept for the request's end.
#[derive(Clone, Debug)]
struct PendingPut(Item);

impl Storable for PendingPut {
    type Storer = StoreReplace<Self>;
}

impl WriteMeter {
    /// The units counted so far.
    pub fn units(&self) -> WriteUnits {
        self.lock().units
    }

    fn lock(&self) -> MutexGuard<'_, Meter> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Intercept for WriteMeter {
    fn name(&self) -> &'static str {
        "WriteMeter"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let ledger = input
            .downcast_ref::<PutItemInput>()
            .and_then(|p| p.item())
            .filter(|i| is_ledger_record(i));
        match ledger {
            Some(item) => {
                cfg.interceptor_state().store_put(PendingPut(item.clone()));
            }
            None => {
                // Any other write, by its kind.
                let units = if let Some(put) = input.downcast_ref::<PutItemInput>() {
                    put.item().map(|i| kb(item_size(i))).unwrap_or(1)
                } else if input.downcast_ref::<UpdateItemInput>().is_some()
                    || input.downcast_ref::<DeleteItemInput>().is_some()
                {
                    1
                } else if let Some(t) = input.downcast_ref::<TransactWriteItemsInput>() {
                    2 * t.transact_items().len() as u64
                } else if let Some(b) = input.downcast_ref::<BatchWriteItemInput>() {
                    b.request_items()
                        .map(|r| r.values().map(Vec::len).sum::<usize>() as u64)
                        .unwrap_or(0)
                } else {
                    0
                };
                self.lock().units.other += units;
            }
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(PendingPut(new)) = cfg.load::<PendingPut>() else {
            return Ok(());
        };
        let written = matches!(context.output_or_error(), Some(Ok(_)));
        let key = (text(new, "pk"), text(new, "sk"));
        let mut meter = self.lock();
        let old = meter.records.get(&key).cloned();
        let larger = item_size(new).max(old.as_ref().map(item_size).unwrap_or(0));
        meter.units.ledger_table += kb(larger);
        if written {
            meter.units.ledger_gsi1 += index_units(old.as_ref(), new, GSI1, true);
            meter.units.ledger_gsi2 += index_units(old.as_ref(), new, GSI2, false);
            meter.records.insert(key, new.clone());
        }
        Ok(())
    }
}

const GSI1: (&str, &str) = ("gsi1pk", "gsi1sk");
const GSI2: (&str, &str) = ("gsi2pk", "gsi2sk");

fn is_ledger_record(item: &Item) -> bool {
    text(item, "sk").starts_with("R#")
}

fn text(item: &Item, name: &str) -> String {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

/// What one write costs an index with these key attributes (`all`: every attribute projected,
/// else keys only).
fn index_units(old: Option<&Item>, new: &Item, (pk, sk): (&str, &str), all: bool) -> u64 {
    let keys = |i: &Item| Some((i.get(pk)?.clone(), i.get(sk)?.clone()));
    let projected = |i: &Item| {
        if all {
            item_size(i)
        } else {
            ["pk", "sk", pk, sk]
                .iter()
                .filter_map(|name| i.get(*name).map(|v| name.len() + value_size(v)))
                .sum()
        }
    };
    match (old.and_then(keys).zip(old), keys(new)) {
        (None, None) => 0,
        (None, Some(_)) => kb(projected(new)),
        (Some((_, old)), None) => kb(projected(old)),
        (Some((was, old)), Some(now)) if was != now => kb(projected(old)) + kb(projected(new)),
        (Some((_, old)), Some(_)) => {
            if all && old != new {
                kb(projected(new))
            } else {
                0
            }
        }
    }
}

/// Units of 1 KB, rounded up; every write costs at least one.
fn kb(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

/// An item's size as DynamoDB bills it: each attribute's name and value.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        // About one byte per two significant digits, plus one.
        AttributeValue::N(n) => {
            let digits = n.chars().filter(char::is_ascii_digit).count();
            digits.div_ceil(2) + 1
        }
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(l) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        AttributeValue::Ss(s) => s.iter().map(String::len).sum(),
        AttributeValue::Ns(s) => s.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(s) => s.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn record(state: &str, order: Option<&str>, listed: bool) -> Item {
        let mut i = Item::from([
            ("pk".to_owned(), s("T#a#J#order-download")),
            ("sk".to_owned(), s("R#sale-1")),
            ("state".to_owned(), s(state)),
        ]);
        if listed {
            i.insert(
                "gsi1pk".into(),
                s(&format!("T#a#J#order-download#S#{state}")),
            );
            i.insert("gsi1sk".into(), s("001#sale-1"));
        }
        if let Some(n) = order {
            i.insert("gsi2pk".into(), s(&format!("T#a#O#{n}")));
            i.insert("gsi2sk".into(), s("order-download#sale-1"));
        }
        i
    }

    #[test]
    fn index_entries_cost_one_to_add_or_remove_two_to_move_and_keys_only_nothing_to_keep() {
        let claim = record("in_flight", Some("SO-1"), true);
        let done = record("done", Some("SO-1"), true);
        assert_eq!(index_units(None, &claim, GSI1, true), 1, "added");
        assert_eq!(index_units(Some(&claim), &done, GSI1, true), 2, "moved");
        assert_eq!(index_units(Some(&done), &done, GSI1, true), 0, "unchanged");
        let mut noted = done.clone();
        noted.insert("reason".into(), s("a note"));
        assert_eq!(index_units(Some(&done), &noted, GSI1, true), 1, "projected");
        assert_eq!(
            index_units(Some(&claim), &done, GSI2, false),
            0,
            "keys kept"
        );
        assert_eq!(index_units(None, &claim, GSI2, false), 1);
        let quiet = record("in_flight", Some("SO-1"), false);
        assert_eq!(index_units(None, &quiet, GSI1, true), 0, "not in it");
        assert_eq!(index_units(Some(&quiet), &done, GSI1, true), 1, "entered");
        assert_eq!(index_units(Some(&done), &quiet, GSI1, true), 1, "left");
    }

    #[test]
    fn sizes_round_up_per_kilobyte() {
        let mut big = record("done", None, true);
        assert_eq!(kb(item_size(&big)), 1);
        big.insert("detail".into(), s(&"x".repeat(1500)));
        assert_eq!(kb(item_size(&big)), 2);
        assert_eq!(
            index_units(None, &big, GSI1, true),
            2,
            "ALL projects the detail"
        );
        assert_eq!(value_size(&AttributeValue::N("1796356578805".into())), 8);
    }
}
