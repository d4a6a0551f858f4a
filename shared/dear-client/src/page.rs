//! DEAR's list envelopes: `{"Total": n, "Page": p, "<ListKey>": [...]}`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::models::*;

/// DEAR's maximum page size.
pub const MAX_LIMIT: u32 = 1000;

/// A type that DEAR returns in a list envelope under a fixed key.
pub trait Listed: DeserializeOwned + Send + 'static {
    /// The envelope key, e.g. `SaleList` (matched case-insensitively).
    const LIST_KEY: &'static str;
}

impl Listed for SaleListItem {
    const LIST_KEY: &'static str = "SaleList";
}
impl Listed for ProductAvailability {
    const LIST_KEY: &'static str = "ProductAvailabilityList";
}
impl Listed for Product {
    const LIST_KEY: &'static str = "Products";
}
impl Listed for Location {
    const LIST_KEY: &'static str = "LocationList";
}
impl Listed for Carrier {
    const LIST_KEY: &'static str = "CarrierList";
}
impl Listed for StockAdjustmentListItem {
    const LIST_KEY: &'static str = "StockAdjustmentList";
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq)]
pub struct ListPage<T> {
    /// Rows across all pages.
    pub total: u64,
    /// This page's number (1-based).
    pub page: u32,
    /// This page's rows.
    pub items: Vec<T>,
}

impl<'de, T: Listed> Deserialize<'de> for ListPage<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PageVisitor<T>(PhantomData<T>);

        impl<'de, T: Listed> Visitor<'de> for PageVisitor<T> {
            type Value = ListPage<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an object with Total, Page and {}", T::LIST_KEY)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut total = None;
                let mut page = None;
                let mut items = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key.eq_ignore_ascii_case("Total") {
                        total = map.next_value::<Option<u64>>()?;
                    } else if key.eq_ignore_ascii_case("Page") {
                        page = map.next_value::<Option<u32>>()?;
                    } else if key.eq_ignore_ascii_case(T::LIST_KEY) {
                        items = map.next_value::<Option<Vec<T>>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                let items = items.unwrap_or_default();
                Ok(ListPage {
                    // A missing Total would make paging endless; the page's own length is a floor.
                    total: total.unwrap_or(items.len() as u64),
                    page: page.unwrap_or(1),
                    items,
                })
            }
        }

        deserializer.deserialize_map(PageVisitor(PhantomData))
    }
}

impl<T> ListPage<T> {
    /// True when no page follows this one (`page * limit >= Total`, or a short page).
    pub fn is_last(&self, limit: u32) -> bool {
        let seen = u64::from(self.page) * u64::from(limit);
        seen >= self.total || (self.items.len() as u64) < u64::from(limit)
    }
}
