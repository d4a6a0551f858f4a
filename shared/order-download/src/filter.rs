//! Which sales the settings select: the saleList queries that find them, and the same rules
//! checked on each listed row and again on the sale detail.
//!
//! DEAR's PICKING…SHIPPING statuses exist for simple sales only; an advanced sale stays ORDERED and
//! progresses in its `Combined*` statuses. So a stage filter runs two queries — `Status=<stage>`
//! for simple sales, and the matching `Combined…Status` for advanced ones — and an advanced sale
//! matches a stage when that stage is complete and the next has not started:
//!
//! | Filter | Advanced sale matches when |
//! |---|---|
//! | PICKING | CombinedPickingStatus = PICKING |
//! | PICKED | CombinedPickingStatus = PICKED and CombinedPackingStatus is NOT PACKED / NOT AVAILABLE |
//! | PACKING | CombinedPackingStatus = PACKING |
//! | PACKED | CombinedPackingStatus = PACKED and CombinedShippingStatus is NOT SHIPPED / NOT AVAILABLE |
//! | SHIPPING | CombinedShippingStatus = SHIPPING |

use dear_client::{Sale, SaleListQuery, SaleStatus, SaleType, StageStatus};
use dearsync_core::settings::{OrderDownloadSettings, SaleStatusFilter};

/// The status fields a filter looks at (from a saleList row or a sale detail).
#[derive(Clone, Copy, Debug)]
pub struct StatusView<'a> {
    /// `Status`.
    pub status: &'a SaleStatus,
    /// `Type`.
    pub sale_type: &'a SaleType,
    /// `CombinedPickingStatus`.
    pub pick: Option<&'a str>,
    /// `CombinedPackingStatus`.
    pub pack: Option<&'a str>,
    /// `CombinedShippingStatus`.
    pub ship: Option<&'a str>,
}

fn is(value: Option<&str>, want: &str) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn is_any(value: Option<&str>, wanted: &[&str]) -> bool {
    wanted.iter().any(|w| is(value, w))
}

/// The advanced-sale rule for one stage status (see the module docs); `None` for statuses that
/// advanced sales share with simple ones.
fn advanced_stage_matches(status: &SaleStatus, v: &StatusView<'_>) -> Option<bool> {
    Some(match status {
        SaleStatus::Picking => is(v.pick, "PICKING"),
        SaleStatus::Picked => {
            is_any(v.pick, &["PICKED", "PARTIALLY PICKED"])
                && !is_any(v.pack, &["PACKED", "PACKING"])
        }
        SaleStatus::Packing => is(v.pack, "PACKING"),
        SaleStatus::Packed => {
            is_any(v.pack, &["PACKED", "PARTIALLY PACKED"])
                && !is_any(v.ship, &["SHIPPED", "SHIPPING"])
        }
        SaleStatus::Shipping => is(v.ship, "SHIPPING"),
        _ => return None,
    })
}

fn status_matches(status: &SaleStatus, v: &StatusView<'_>) -> bool {
    match (v.sale_type, advanced_stage_matches(status, v)) {
        (SaleType::Advanced, Some(matches)) => matches,
        _ => v.status == status,
    }
}

/// True if a sale with these statuses is selected by the filter.
pub fn matches_status(filter: &SaleStatusFilter, v: &StatusView<'_>) -> bool {
    match filter {
        SaleStatusFilter::Any => true,
        SaleStatusFilter::Status(s) => status_matches(s, v),
        SaleStatusFilter::PackedAndShipping => {
            status_matches(&SaleStatus::Packed, v) || status_matches(&SaleStatus::Shipping, v)
        }
    }
}

/// True when the filter names exactly `status` (a tenant that downloads VOIDED sales wants them
/// as orders, not as cancellations).
pub fn selects_exactly(filter: &SaleStatusFilter, status: &SaleStatus) -> bool {
    matches!(filter, SaleStatusFilter::Status(s) if s == status)
}

/// True if the filter selects sales before they ship (a status up to SHIPPING, or "Packed &
/// Shipping"): such a sale must never reach the warehouse once DEAR shows it shipped.
pub fn selects_before_shipping(filter: &SaleStatusFilter) -> bool {
    match filter {
        SaleStatusFilter::Any => false,
        SaleStatusFilter::PackedAndShipping => true,
        SaleStatusFilter::Status(s) => matches!(
            s,
            SaleStatus::Draft
                | SaleStatus::Estimating
                | SaleStatus::Estimated
                | SaleStatus::Ordering
                | SaleStatus::Ordered
                | SaleStatus::Backordered
                | SaleStatus::Picking
                | SaleStatus::Picked
                | SaleStatus::Packing
                | SaleStatus::Packed
                | SaleStatus::Shipping
        ),
    }
}

/// True if DEAR shows the sale's shipping complete: `CombinedShippingStatus` SHIPPED, or every
/// fulfilment that is not voided has its ship stage authorised (unless DEAR says only part of the
/// sale shipped). Either one is enough: which of the two DEAR keeps current after a ship is not
/// settled for simple sales (`docs/simulator.md`).
pub fn shipping_complete(sale: &Sale) -> bool {
    let combined = sale.combined_shipping_status.as_deref();
    if is(combined, "SHIPPED") {
        return true;
    }
    let mut live = sale
        .fulfilments
        .iter()
        .filter(|f| f.ship.status != StageStatus::Voided)
        .peekable();
    live.peek().is_some()
        && live.all(|f| f.ship.status == StageStatus::Authorised)
        && !is(combined, "PARTIALLY SHIPPED")
}

/// The saleList queries (without dates, paging or location) that together find every sale the
/// filter selects. Rows must still be checked with [`matches_status`]: the advanced-sale queries
/// also return simple sales and sales past the stage.
pub fn status_queries(filter: &SaleStatusFilter) -> Vec<SaleListQuery> {
    let by_status = |s: SaleStatus| SaleListQuery {
        status: Some(s),
        ..Default::default()
    };
    let combined = |s: &SaleStatus| -> Vec<SaleListQuery> {
        let pick = |v: &str| SaleListQuery {
            combined_pick_status: Some(v.into()),
            ..Default::default()
        };
        let pack = |v: &str| SaleListQuery {
            combined_pack_status: Some(v.into()),
            ..Default::default()
        };
        match s {
            SaleStatus::Picking => vec![pick("PICKING")],
            SaleStatus::Picked => vec![pick("PICKED"), pick("PARTIALLY PICKED")],
            SaleStatus::Packing => vec![pack("PACKING")],
            SaleStatus::Packed => vec![pack("PACKED"), pack("PARTIALLY PACKED")],
            SaleStatus::Shipping => vec![SaleListQuery {
                combined_shipping_status: Some("SHIPPING".into()),
                ..Default::default()
            }],
            _ => Vec::new(),
        }
    };
    let for_status = |s: SaleStatus| -> Vec<SaleListQuery> {
        let mut qs = vec![by_status(s.clone())];
        qs.extend(combined(&s));
        qs
    };
    match filter {
        SaleStatusFilter::Any => vec![SaleListQuery::default()],
        SaleStatusFilter::Status(s) => for_status(s.clone()),
        SaleStatusFilter::PackedAndShipping => {
            let mut qs = for_status(SaleStatus::Packed);
            qs.extend(for_status(SaleStatus::Shipping));
            qs
        }
    }
}

/// A sale's Additional Attribute that is not one the filters want.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Additional Attribute {index} is {actual:?}, not one of {wanted:?} (additional_attribute_filters)"
)]
pub struct AttributeMismatch {
    /// Which attribute (1-10).
    pub index: u8,
    /// The sale's value.
    pub actual: String,
    /// The values the filter takes.
    pub wanted: Vec<String>,
}

/// Checks the Additional Attribute filters on a sale detail; `Err` says which attribute differs.
pub fn matches_attributes(
    settings: &OrderDownloadSettings,
    attribute: impl Fn(u8) -> Option<String>,
) -> Result<(), AttributeMismatch> {
    for (n, wanted) in &settings.additional_attribute_filters {
        let Ok(index) = n.parse::<u8>() else { continue };
        let actual = attribute(index).unwrap_or_default();
        let actual = actual.trim();
        if !wanted
            .0
            .iter()
            .any(|w| w.trim().eq_ignore_ascii_case(actual))
        {
            return Err(AttributeMismatch {
                index,
                actual: actual.to_owned(),
                wanted: wanted.0.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        status: &'a SaleStatus,
        t: &'a SaleType,
        pick: &'a str,
        pack: &'a str,
        ship: &'a str,
    ) -> StatusView<'a> {
        StatusView {
            status,
            sale_type: t,
            pick: Some(pick),
            pack: Some(pack),
            ship: Some(ship),
        }
    }

    #[test]
    fn picked_matches_simple_by_status_and_advanced_by_combined_stages() {
        let picked = SaleStatusFilter::Status(SaleStatus::Picked);
        let simple = SaleType::Simple;
        let adv = SaleType::Advanced;
        let ordered = SaleStatus::Ordered;
        let s_picked = SaleStatus::Picked;
        assert!(matches_status(
            &picked,
            &view(&s_picked, &simple, "PICKED", "NOT PACKED", "NOT SHIPPED")
        ));
        // A simple sale past picking still shows CombinedPickingStatus PICKED: its Status decides.
        assert!(!matches_status(
            &picked,
            &view(
                &SaleStatus::Packed,
                &simple,
                "PICKED",
                "PACKED",
                "NOT SHIPPED"
            )
        ));
        assert!(matches_status(
            &picked,
            &view(&ordered, &adv, "PICKED", "NOT PACKED", "NOT SHIPPED")
        ));
        assert!(!matches_status(
            &picked,
            &view(&ordered, &adv, "PICKED", "PACKING", "NOT SHIPPED")
        ));
        assert!(matches_status(
            &picked,
            &view(
                &ordered,
                &adv,
                "PARTIALLY PICKED",
                "NOT PACKED",
                "NOT SHIPPED"
            )
        ));
        // The first fulfilment shipped, the second picked: waiting to be packed.
        assert!(matches_status(
            &picked,
            &view(
                &ordered,
                &adv,
                "PICKED",
                "PARTIALLY PACKED",
                "PARTIALLY SHIPPED"
            )
        ));
        assert!(!matches_status(
            &picked,
            &view(&ordered, &adv, "PICKED", "PACKED", "SHIPPED")
        ));
        let ps = SaleStatusFilter::PackedAndShipping;
        assert!(matches_status(
            &ps,
            &view(&ordered, &adv, "PICKED", "PACKED", "SHIPPING")
        ));
        assert!(matches_status(
            &ps,
            &view(
                &SaleStatus::Shipping,
                &simple,
                "PICKED",
                "PACKED",
                "SHIPPING"
            )
        ));
        assert!(!matches_status(
            &ps,
            &view(&ordered, &adv, "PICKED", "PACKED", "SHIPPED")
        ));
        // Statuses advanced sales share are matched on Status for both types.
        let ordered_f = SaleStatusFilter::Status(SaleStatus::Ordered);
        assert!(matches_status(
            &ordered_f,
            &view(&ordered, &adv, "NOT PICKED", "NOT PACKED", "NOT SHIPPED")
        ));
        assert!(matches_status(
            &SaleStatusFilter::Any,
            &view(&SaleStatus::Voided, &simple, "", "", "")
        ));
    }

    #[test]
    fn stage_filters_query_both_status_and_combined_status() {
        let qs = status_queries(&SaleStatusFilter::Status(SaleStatus::Picked));
        assert_eq!(qs.len(), 3);
        assert_eq!(qs[0].status, Some(SaleStatus::Picked));
        assert_eq!(qs[1].combined_pick_status.as_deref(), Some("PICKED"));
        assert_eq!(
            qs[2].combined_pick_status.as_deref(),
            Some("PARTIALLY PICKED")
        );
        assert_eq!(
            status_queries(&SaleStatusFilter::PackedAndShipping).len(),
            5
        );
        assert_eq!(
            status_queries(&SaleStatusFilter::Status(SaleStatus::Invoiced)).len(),
            1
        );
        assert_eq!(
            status_queries(&SaleStatusFilter::Any),
            vec![SaleListQuery::default()]
        );
    }

    #[test]
    fn attribute_filters_compare_case_insensitively_and_name_the_attribute() {
        let settings = dearsync_core::TenantSettings::from_toml(
            "[order_download]\nadditional_attribute_filters = { \"2\" = [\"Wholesale\", \"B2B\"] }\n",
        )
        .unwrap()
        .order_download;
        let attrs = |v: &'static str| move |n: u8| (n == 2).then(|| v.to_owned());
        assert!(matches_attributes(&settings, attrs("wholesale")).is_ok());
        let err = matches_attributes(&settings, attrs("Retail"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Additional Attribute 2 is \"Retail\""),
            "{err}"
        );
    }
}
