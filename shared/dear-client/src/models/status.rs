//! DEAR's status vocabularies, as enums that keep unknown values instead of failing.

/// Defines a string enum: known values (matched case-insensitively, spaces/underscores alike) and
/// `Other(String)` for anything DEAR adds later.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this client does not know.
            Other(String),
        }

        impl $name {
            /// DEAR's spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(s) => s,
                }
            }

            /// Reads DEAR's text, tolerating case and `_` for space.
            pub fn parse(text: &str) -> Self {
                let norm = text.trim().replace('_', " ");
                $(if norm.eq_ignore_ascii_case($text) { return Self::$variant; })+
                Self::Other(text.trim().to_owned())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::parse(s))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = Option::<String>::deserialize(d)?.unwrap_or_default();
                Ok(Self::parse(&text))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::Other(String::new())
            }
        }
    };
}

#[allow(unused_imports)]
pub(crate) use string_enum;

string_enum!(
    /// A sale's overall `Status` (the reference's §2.1).
    SaleStatus {
        /// Nothing entered yet.
        Draft => "DRAFT",
        /// Voided.
        Voided => "VOIDED",
        /// Quote in draft.
        Estimating => "ESTIMATING",
        /// Quote authorised.
        Estimated => "ESTIMATED",
        /// Order in draft.
        Ordering => "ORDERING",
        /// Order authorised, all in stock.
        Ordered => "ORDERED",
        /// Order authorised, something backordered.
        Backordered => "BACKORDERED",
        /// Pick in draft (simple sales).
        Picking => "PICKING",
        /// Pick authorised (simple sales).
        Picked => "PICKED",
        /// Pack in draft (simple sales).
        Packing => "PACKING",
        /// Pack authorised (simple sales).
        Packed => "PACKED",
        /// Ship in draft (simple sales).
        Shipping => "SHIPPING",
        /// Invoice in draft.
        Invoicing => "INVOICING",
        /// Invoice authorised, not fully paid.
        Invoiced => "INVOICED",
        /// Credit note authorised.
        Credited => "CREDITED",
        /// Paid and shipped.
        Completed => "COMPLETED",
    }
);

string_enum!(
    /// The status of one stage: quote, order, invoice, pick, pack or ship.
    StageStatus {
        /// The stage has not started.
        NotAvailable => "NOT AVAILABLE",
        /// Started, not authorised.
        Draft => "DRAFT",
        /// Authorised (final for the stage).
        Authorised => "AUTHORISED",
        /// Ship only: some packed boxes shipped.
        PartiallyAuthorised => "PARTIALLY AUTHORISED",
        /// Voided.
        Voided => "VOIDED",
        /// Order only: authorised without stock allocation.
        AuthNoAlloc => "AUTH_NO_ALLOC",
        /// Order only: no further fulfilments required.
        Fulfilled => "FULFILLED",
        /// Order only: invoice and shipment completed.
        Closed => "CLOSED",
        /// Invoice only: paid.
        Paid => "PAID",
    }
);

impl StageStatus {
    /// True once the stage is AUTHORISED (or beyond it, for orders and invoices).
    pub fn is_authorised(&self) -> bool {
        matches!(
            self,
            Self::Authorised | Self::AuthNoAlloc | Self::Fulfilled | Self::Closed | Self::Paid
        )
    }

    /// True while the stage may still be written (NOT AVAILABLE or DRAFT).
    pub fn is_open(&self) -> bool {
        matches!(self, Self::NotAvailable | Self::Draft) || self.as_str().is_empty()
    }
}

string_enum!(
    /// The status of a stock adjustment.
    AdjustmentStatus {
        /// Saved, not applied.
        Draft => "DRAFT",
        /// Applied to stock.
        Completed => "COMPLETED",
        /// Voided.
        Voided => "VOIDED",
    }
);

string_enum!(
    /// The kind of sale.
    SaleType {
        /// One fulfilment and invoice.
        Simple => "Simple Sale",
        /// Several fulfilments or invoices.
        Advanced => "Advanced Sale",
        /// Services only.
        Service => "Service Sale",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively_and_keeps_unknowns() {
        assert_eq!(
            StageStatus::parse("partially authorised"),
            StageStatus::PartiallyAuthorised
        );
        assert_eq!(
            StageStatus::parse("NOT_AVAILABLE"),
            StageStatus::NotAvailable
        );
        assert_eq!(SaleStatus::parse("Voided"), SaleStatus::Voided);
        assert_eq!(
            SaleStatus::parse("SOMETHING NEW"),
            SaleStatus::Other("SOMETHING NEW".into())
        );
        let t: SaleType = serde_json::from_str("\"Advanced Sale\"").unwrap();
        assert_eq!(t, SaleType::Advanced);
    }
}
