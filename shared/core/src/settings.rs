//! Tenant settings: every setting of the three jobs, typed, with CartRover's defaults, read from
//! TOML (the CLI's `--config` file, and the same text stored per tenant for the Lambda functions).
//!
//! Every key is optional; an unknown key or a bad value is an error naming the key, e.g.
//! `settings: order_download.ship_code_attribute: must be 1-10, got 12`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use dear_client::SaleStatus;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sku::SkuAliases;

/// A bad settings file: which key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("settings: {path}: {message}")]
pub struct SettingsError {
    /// The key, dotted (`order_download.sale_status`), or `(file)` for a syntax error.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl SettingsError {
    pub(crate) fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// `message` with the line and column `span` starts at (1-based), when the parser gave one.
fn with_line(text: &str, span: Option<std::ops::Range<usize>>, message: &str) -> String {
    let Some(start) = span.map(|s| s.start.min(text.len())) else {
        return message.to_owned();
    };
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}: {message}")
}

/// All of one tenant's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// How to call DEAR.
    pub dear: DearSettings,
    /// Order Download.
    pub order_download: OrderDownloadSettings,
    /// Shipment Confirmation – Detailed.
    pub shipment_confirmation: ShipmentConfirmationSettings,
    /// Inventory Sync.
    pub inventory_sync: InventorySyncSettings,
    /// `[sku_aliases]`: DEAR SKU = warehouse SKU, applied by every job (orders out, shipments and
    /// snapshots in). Each job's section carries a copy.
    pub sku_aliases: SkuAliases,
}

impl TenantSettings {
    /// Reads and validates settings from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            SettingsError::new("(file)", with_line(text, e.span(), e.message().trim()))
        })?;
        let settings: TenantSettings = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            SettingsError::new(
                if path == "." { "(file)" } else { &path },
                with_line(text, e.inner().span(), e.inner().message().trim()),
            )
        })?;
        settings.validate()?;
        Ok(settings.with_aliases_in_each_job())
    }

    /// Copies `[sku_aliases]` into each job's section, where the jobs read it.
    pub fn with_aliases_in_each_job(mut self) -> Self {
        self.order_download.sku_aliases = self.sku_aliases.clone();
        self.shipment_confirmation.sku_aliases = self.sku_aliases.clone();
        self.inventory_sync.sku_aliases = self.sku_aliases.clone();
        self
    }

    /// Checks the values serde cannot (ranges, non-empty names).
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.sku_aliases.validate()?;
        self.dear.validate()?;
        self.order_download.validate()?;
        self.shipment_confirmation.validate()?;
        self.inventory_sync.validate()
    }
}

impl DearSettings {
    /// `[dear]`: the budget stays within DEAR's 60 calls a minute.
    fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=60).contains(&self.calls_per_minute) {
            return Err(SettingsError::new(
                "dear.calls_per_minute",
                format!(
                    "must be 1-60 (DEAR allows 60), got {}",
                    self.calls_per_minute
                ),
            ));
        }
        in_range("dear.burst", self.burst, 1, 10)?;
        if u64::from(self.burst) + u64::from(self.calls_per_minute) > 60 {
            return Err(SettingsError::new(
                "dear.burst",
                format!(
                    "burst {} + calls_per_minute {} exceeds DEAR's 60 calls per minute",
                    self.burst, self.calls_per_minute
                ),
            ));
        }
        Ok(())
    }
}

impl OrderDownloadSettings {
    /// `[order_download]`.
    fn validate(&self) -> Result<(), SettingsError> {
        in_range(
            "order_download.ship_code_attribute",
            self.ship_code_attribute,
            1,
            10,
        )?;
        for (n, values) in &self.additional_attribute_filters {
            let path = format!("order_download.additional_attribute_filters.{n}");
            if !matches!(n.parse::<u8>(), Ok(1..=10)) {
                return Err(SettingsError::new(
                    &path,
                    "the key must be an attribute number 1-10",
                ));
            }
            if values.0.is_empty() || values.0.iter().any(|v| v.trim().is_empty()) {
                return Err(SettingsError::new(&path, "values must not be empty"));
            }
        }
        non_empty_items("order_download.shipping_accounts", &self.shipping_accounts)?;
        non_blank(
            "order_download.location_name",
            self.location_name.as_deref(),
        )?;
        non_blank(
            "order_download.ship_method_default",
            self.ship_method_default.as_deref(),
        )?;
        for (from, to) in &self.ship_method_map {
            if from.trim().is_empty() || to.trim().is_empty() {
                return Err(SettingsError::new(
                    "order_download.ship_method_map",
                    format!("{from:?} = {to:?}: neither a method nor its code may be blank"),
                ));
            }
        }
        in_range(
            "order_download.overlap_minutes",
            self.overlap_minutes,
            1,
            1440,
        )?;
        in_range(
            "order_download.poll_interval_minutes",
            self.poll_interval_minutes,
            1,
            1440,
        )?;
        if let Some(url) = &self.webhook_url {
            check_webhook_url("order_download.webhook_url", url)?;
        }
        in_range(
            "order_download.webhook_timeout_secs",
            self.webhook_timeout_secs,
            1,
            60,
        )?;
        in_range(
            "order_download.webhook_attempts",
            self.webhook_attempts,
            1,
            10,
        )
    }
}

impl ShipmentConfirmationSettings {
    /// `[shipment_confirmation]`.
    fn validate(&self) -> Result<(), SettingsError> {
        non_blank("shipment_confirmation.location", self.location.as_deref())?;
        non_blank("shipment_confirmation.pick_bin", self.pick_bin.as_deref())?;
        for (from, to) in &self.carrier_map {
            if from.trim().is_empty() || to.trim().is_empty() {
                return Err(SettingsError::new(
                    "shipment_confirmation.carrier_map",
                    format!("{from:?} = {to:?}: neither side may be empty"),
                ));
            }
        }
        Ok(())
    }
}

impl InventorySyncSettings {
    /// `[inventory_sync]`.
    fn validate(&self) -> Result<(), SettingsError> {
        non_blank("inventory_sync.location", self.location.as_deref())?;
        non_blank(
            "inventory_sync.price_tier_name",
            self.price_tier_name.as_deref(),
        )?;
        non_blank(
            "inventory_sync.adjustment_account",
            self.adjustment_account.as_deref(),
        )?;
        non_blank(
            "inventory_sync.adjustment_reference",
            Some(&self.adjustment_reference),
        )?;
        if self.minimum_level.is_sign_negative() {
            return Err(SettingsError::new(
                "inventory_sync.minimum_level",
                format!("must not be negative, got {}", self.minimum_level),
            ));
        }
        above_zero(
            "inventory_sync.drift_threshold_units",
            self.drift_threshold_units,
        )?;
        above_zero(
            "inventory_sync.drift_threshold_percent",
            self.drift_threshold_percent,
        )?;
        in_range(
            "inventory_sync.hold_if_zeroing_percent",
            self.hold_if_zeroing_percent,
            Decimal::ZERO,
            Decimal::ONE_HUNDRED,
        )?;
        if let Some(url) = &self.snapshot_url {
            check_webhook_url("inventory_sync.snapshot_url", url)?;
        }
        in_range(
            "inventory_sync.pull_interval_minutes",
            self.pull_interval_minutes,
            1,
            10080,
        )?;
        in_range(
            "inventory_sync.max_lines_per_adjustment",
            self.max_lines_per_adjustment,
            1,
            10_000,
        )
    }
}

/// `key` must lie in `lo..=hi`: "must be lo-hi, got value".
fn in_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), SettingsError> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(SettingsError::new(
            key,
            format!("must be {lo}-{hi}, got {value}"),
        ))
    }
}

/// `key`, when set, must be above 0.
fn above_zero(key: &str, value: Option<Decimal>) -> Result<(), SettingsError> {
    match value {
        Some(v) if v <= Decimal::ZERO => {
            Err(SettingsError::new(key, format!("must be above 0, got {v}")))
        }
        _ => Ok(()),
    }
}

/// A webhook URL must be HTTPS; plain HTTP only to this machine (tests, local receivers).
fn check_webhook_url(path: &str, url: &str) -> Result<(), SettingsError> {
    let t = url.trim();
    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| t.starts_with(p));
    let host_ok = t
        .split_once("://")
        .map(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'))
        .unwrap_or(false);
    if !(t.starts_with("https://") || local) || !host_ok {
        return Err(SettingsError::new(
            path,
            format!("{t:?} must be an https:// URL (http:// only for 127.0.0.1 or localhost)"),
        ));
    }
    Ok(())
}

fn non_blank(path: &str, value: Option<&str>) -> Result<(), SettingsError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(SettingsError::new(
            path,
            "must not be blank (leave the key out instead)",
        )),
        _ => Ok(()),
    }
}

fn non_empty_items(path: &str, values: &[String]) -> Result<(), SettingsError> {
    match values.iter().position(|v| v.trim().is_empty()) {
        Some(i) => Err(SettingsError::new(
            &format!("{path}[{i}]"),
            "must not be empty",
        )),
        None => Ok(()),
    }
}

/// `[dear]`: the DEAR account's call budget, shared by the three jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DearSettings {
    /// Calls per minute the jobs together may make (DEAR allows 60); default 57 (with the burst of 2, never more than 60 in any sliding minute).
    pub calls_per_minute: u32,
    /// Calls that may go at once after a pause; burst + calls_per_minute ≤ 60. Default 2.
    pub burst: u32,
}

impl Default for DearSettings {
    fn default() -> Self {
        Self {
            calls_per_minute: 57,
            burst: 2,
        }
    }
}

/// CartRover's "Sale Status" filter: one status, "Packed & Shipping", or "Any".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaleStatusFilter {
    /// Sales in this status (advanced sales matched on their `Combined*` statuses).
    Status(SaleStatus),
    /// PACKED or SHIPPING.
    PackedAndShipping,
    /// Every status.
    Any,
}

impl Default for SaleStatusFilter {
    fn default() -> Self {
        SaleStatusFilter::Status(SaleStatus::Picked)
    }
}

impl SaleStatusFilter {
    /// Reads a setting value: a DEAR status in any case, `Packed & Shipping`, or `Any`.
    pub fn parse(text: &str) -> Result<Self, crate::InvalidValue> {
        let t = text.trim();
        let squashed: String = t
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if squashed == "any" {
            return Ok(SaleStatusFilter::Any);
        }
        if squashed == "packedshipping" || squashed == "packedandshipping" {
            return Ok(SaleStatusFilter::PackedAndShipping);
        }
        match SaleStatus::parse(t) {
            SaleStatus::Other(_) => Err(crate::InvalidValue::new(
                t,
                "a DEAR sale status: one of DRAFT, VOIDED, ESTIMATING, ESTIMATED, ORDERING, \
                 ORDERED, BACKORDERED, PICKING, PICKED, PACKING, PACKED, SHIPPING, INVOICING, \
                 INVOICED, CREDITED, COMPLETED, \"Packed & Shipping\", \"Any\"",
            )),
            status => Ok(SaleStatusFilter::Status(status)),
        }
    }
}

impl fmt::Display for SaleStatusFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaleStatusFilter::Status(s) => f.write_str(s.as_str()),
            SaleStatusFilter::PackedAndShipping => f.write_str("Packed & Shipping"),
            SaleStatusFilter::Any => f.write_str("Any"),
        }
    }
}

impl Serialize for SaleStatusFilter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SaleStatusFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SaleStatusFilter::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where order lines come from ("Take Order Lines From").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineSource {
    /// The order's lines.
    #[default]
    Order,
    /// The pick lines (falling back to order lines).
    Pick,
    /// The pack lines (falling back to order lines).
    Pack,
    /// The invoice lines (falling back to order lines).
    Invoice,
}

/// Where the shipping method comes from ("Ship Method Selection").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipMethodSelection {
    /// An invoice additional charge whose Account is one of `shipping_accounts`.
    #[default]
    ShippingAccount,
    /// Additional Attribute `ship_code_attribute`.
    AdditionalAttribute,
    /// No shipping method.
    None,
}

/// What fills the canonical order's `source_channel` ("Override Order Source").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderSource {
    /// DEAR's `SourceChannel` (e.g. `Amazon_US`).
    #[default]
    SourceChannel,
    /// The sale's `DefaultAccount` (its account code).
    Account,
    /// The sale's `SalesRepresentative`.
    SalesRep,
}

/// What becomes of a sale whose ship-to display lines disagree with its address fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressMismatch {
    /// Held for a person: skipped `address_mismatch` until the address is fixed in DEAR.
    #[default]
    Hold,
    /// Sent as the fields say, with a warning in the logs.
    Warn,
}

/// Which memo becomes the order's notes ("Notes Field").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotesField {
    /// The order memo.
    #[default]
    Order,
    /// The quote memo.
    Quote,
    /// The invoice memo.
    Invoice,
    /// The credit note memo.
    CreditNote,
}

/// One value or several, for attribute filters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d) {
            Ok(Raw::One(v)) => Ok(OneOrMany(vec![v])),
            Ok(Raw::Many(v)) => Ok(OneOrMany(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a text value or a list of text values",
            )),
        }
    }
}

/// An instant given as `2026-11-01` (midnight UTC) or an RFC 3339 date-time, quoted or bare TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettingInstant(pub DateTime<Utc>);

impl SettingInstant {
    /// Reads `2026-11-01` or `2026-11-01T08:00:00Z`.
    pub fn parse(text: &str) -> Result<Self, crate::InvalidValue> {
        let t = text.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return Ok(SettingInstant(dt.with_timezone(&Utc)));
        }
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(SettingInstant(d.and_time(chrono::NaiveTime::MIN).and_utc()));
        }
        Err(crate::InvalidValue::new(
            t,
            "a date (2026-11-01) or a date-time with an offset (2026-11-01T08:00:00Z)",
        ))
    }
}

impl Serialize for SettingInstant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

impl<'de> Deserialize<'de> for SettingInstant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SettingInstant;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date (2026-11-01) or an RFC 3339 date-time")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SettingInstant, E> {
                SettingInstant::parse(v).map_err(E::custom)
            }
            // A bare TOML date arrives as a one-entry map holding its text.
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SettingInstant, A::Error> {
                let Some((_, text)) = map.next_entry::<String, String>()? else {
                    return Err(serde::de::Error::custom("empty date"));
                };
                SettingInstant::parse(&text).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A quantity setting: a TOML integer, a decimal string (`"12.5"`), or a float taken at its
/// shortest decimal text, so `0.1` is exactly 0.1.
mod quantity {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Decimal, E> {
                Ok(Decimal::from(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal::from(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Decimal, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                v.trim()
                    .parse::<Decimal>()
                    .map_err(|_| E::custom(format!("{v:?} is not a number")))
            }
        }
        d.deserialize_any(V)
    }

    pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub mod opt {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            super::deserialize(d).map(Some)
        }

        pub fn serialize<S: Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }
    }
}

/// `[order_download]`: CartRover's Order Download settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderDownloadSettings {
    /// Only sales in this status; default PICKED.
    pub sale_status: SaleStatusFilter,
    /// Only sales of this DEAR location; absent = all.
    pub location_name: Option<String>,
    /// Only sales whose Additional Attribute N (the key, 1–10) is one of the values (case-insensitive).
    pub additional_attribute_filters: BTreeMap<String, OneOrMany>,
    /// Where lines come from; default the order's.
    pub take_order_lines_from: LineSource,
    /// Where the ship method comes from; default a shipping-account charge.
    pub ship_method_selection: ShipMethodSelection,
    /// Account codes whose invoice additional charge gives the ship method.
    pub shipping_accounts: Vec<String>,
    /// Which Additional Attribute holds the ship code (1–10); default 1.
    pub ship_code_attribute: u8,
    /// Which memo becomes the notes; default the order memo.
    pub notes_field: NotesField,
    /// What fills the order's `source_channel`; default DEAR's source channel.
    pub order_source: OrderSource,
    /// DEAR's shipping method (as `ship_method_selection` picks it) → the warehouse's carrier /
    /// service code. Set, an order whose method it lacks is skipped (`unmapped_ship_method`)
    /// unless `ship_method_default` is set; empty (default), methods go as DEAR has them.
    pub ship_method_map: BTreeMap<String, String>,
    /// The code for a method `ship_method_map` lacks (or an order with none).
    pub ship_method_default: Option<String>,
    /// A ship-to address typed over on the order (display lines ≠ fields): held (default) or
    /// sent with a warning.
    pub address_mismatch: AddressMismatch,
    /// Only lines whose SKU matches one of these (exact, or a glob with `*` and `?`); empty: all.
    pub include_skus: Vec<String>,
    /// Lines whose SKU matches one of these are left out of the order.
    pub exclude_skus: Vec<String>,
    /// The tenant's `[sku_aliases]` (copied here when the settings are read).
    #[serde(skip)]
    pub sku_aliases: SkuAliases,
    /// Split the ship-to name into first and last name; default yes.
    pub split_names: bool,
    /// The first run looks back to this; absent = 30 days before the first run.
    pub earliest_order_date: Option<SettingInstant>,
    /// Each poll re-reads this many minutes before the cursor (DEAR's `Updated` is not
    /// strictly ordered); default 10.
    pub overlap_minutes: u32,
    /// Where the Lambda function POSTs orders (HTTPS; the CLI writes NDJSON instead). Signed with
    /// HMAC-SHA256 of the body under the tenant secret's `order_webhook_secret`.
    pub webhook_url: Option<String>,
    /// Seconds before one POST times out; default 10.
    pub webhook_timeout_secs: u32,
    /// POSTs per delivery attempt before it is left to a later run; default 3.
    pub webhook_attempts: u32,
    /// Minutes between scheduled polls of this tenant, when the schedule fans out to a queue
    /// (the deployed stack); default 5, the schedule's default rate. The schedule's rate is the
    /// shortest interval: a smaller value polls at every firing.
    pub poll_interval_minutes: u32,
}

impl Default for OrderDownloadSettings {
    fn default() -> Self {
        Self {
            sale_status: SaleStatusFilter::default(),
            location_name: None,
            additional_attribute_filters: BTreeMap::new(),
            take_order_lines_from: LineSource::Order,
            ship_method_selection: ShipMethodSelection::ShippingAccount,
            shipping_accounts: Vec::new(),
            ship_code_attribute: 1,
            notes_field: NotesField::Order,
            order_source: OrderSource::SourceChannel,
            ship_method_map: BTreeMap::new(),
            ship_method_default: None,
            address_mismatch: AddressMismatch::Hold,
            include_skus: Vec::new(),
            exclude_skus: Vec::new(),
            sku_aliases: SkuAliases::default(),
            split_names: true,
            earliest_order_date: None,
            overlap_minutes: 10,
            webhook_url: None,
            webhook_timeout_secs: 10,
            webhook_attempts: 3,
            poll_interval_minutes: 5,
        }
    }
}

/// What shipment confirmation writes to DEAR ("Ship Order Action").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipOrderAction {
    /// Pick, pack (a box per package) and ship.
    #[default]
    MarkPackedAndShipped,
    /// Only ship the boxes the merchant packed in DEAR.
    MarkShipped,
}

/// `[shipment_confirmation]`: CartRover's Shipment Confirmation settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShipmentConfirmationSettings {
    /// What to write; default pick, pack and ship.
    pub ship_order_action: ShipOrderAction,
    /// The warehouse's DEAR location (a shipment may name another); absent = the sale's.
    pub location: Option<String>,
    /// Warehouse carrier (`"UPS"`) or carrier and service (`"UPS/Ground"`) → DEAR carrier name.
    pub carrier_map: BTreeMap<String, String>,
    /// Create a carrier in DEAR when the mapped name is not in `ref/carrier`; default no.
    pub create_missing_carriers: bool,
    /// The bin the warehouse's stock is kept in at a location with bins: pick and pack lines then
    /// name `"<location>: <bin>"`, as DEAR addresses a bin; absent = the bare location.
    pub pick_bin: Option<String>,
    /// The tenant's `[sku_aliases]` (copied here when the settings are read).
    #[serde(skip)]
    pub sku_aliases: SkuAliases,
}

/// Whether the warehouse's quantity is on-hand or available stock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantityIs {
    /// On hand (`UpdateOnHand: true`).
    #[default]
    OnHand,
    /// Available (`UpdateOnHand: false`).
    Available,
}

/// Whether a snapshot lists every SKU of the location.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotScope {
    /// Only the SKUs listed are touched.
    #[default]
    Partial,
    /// SKUs the snapshot leaves out are set to zero.
    Full,
}

/// What DEAR's `Bin: null` availability row of a product holds at a location that has bins. DEAR
/// does not document it; the job reads it from the data where the data can tell (a `Bin: null` row
/// smaller than the product's bin rows cannot be a total) and uses this setting otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinNullRow {
    /// The stock outside bins: the location's level is every row summed (default: one row per
    /// stock cell, as DEAR's availability list is described).
    #[default]
    Remainder,
    /// The location's total, bins included: the bin rows are a breakdown of it.
    Total,
}

/// The status stock adjustments are posted in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AdjustmentStatusSetting {
    /// Applied at once.
    #[default]
    Completed,
    /// Left for review in DEAR.
    Draft,
}

/// `[inventory_sync]`: CartRover's Inventory Sync settings and ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventorySyncSettings {
    /// The DEAR location the warehouse's stock is written to; absent = the snapshot's.
    pub location: Option<String>,
    /// What the warehouse's quantities are; default on hand.
    pub quantity_is: QuantityIs,
    /// Whether SKUs missing from a snapshot are zeroed; default partial (they are left alone).
    pub snapshot: SnapshotScope,
    /// Price tier whose price is the unit cost of lines for zero-stock SKUs; absent = AverageCost.
    pub price_tier_name: Option<String>,
    /// COMPLETED (default) or DRAFT.
    pub adjustment_status: AdjustmentStatusSetting,
    /// The adjustment's account code; absent = DEAR's default.
    pub adjustment_account: Option<String>,
    /// The adjustment's reference; `{snapshot_id}` is replaced by the snapshot's id.
    pub adjustment_reference: String,
    /// Quantities below this are sent as 0; default 0.
    #[serde(with = "quantity")]
    pub minimum_level: Decimal,
    /// Changes larger than this many units are held for review (DRAFT).
    #[serde(with = "quantity::opt", skip_serializing_if = "Option::is_none")]
    pub drift_threshold_units: Option<Decimal>,
    /// Changes larger than this percent of DEAR's level are held for review (DRAFT).
    #[serde(with = "quantity::opt", skip_serializing_if = "Option::is_none")]
    pub drift_threshold_percent: Option<Decimal>,
    /// At most this many lines per adjustment; default 1000.
    pub max_lines_per_adjustment: u32,
    /// Subtract orders delivered to the warehouse after the snapshot was taken; default yes.
    pub subtract_orders_since_snapshot: bool,
    /// A snapshot that would set more than this percent of DEAR's stocked SKUs at the location to
    /// zero is held for a person, nothing written (an override applies it); default 20.
    #[serde(with = "quantity")]
    pub hold_if_zeroing_percent: Decimal,
    /// Pull mode (the Lambda's schedule): where to GET the warehouse's JSON snapshot (HTTPS).
    pub snapshot_url: Option<String>,
    /// Minutes between scheduled pulls of `snapshot_url` when the schedule fans out to a queue
    /// (the deployed stack); default 60, the schedule's default rate.
    pub pull_interval_minutes: u32,
    /// What DEAR's `Bin: null` availability row holds when the data cannot tell; default
    /// remainder.
    pub bin_null_row: BinNullRow,
    /// The tenant's `[sku_aliases]` (copied here when the settings are read).
    #[serde(skip)]
    pub sku_aliases: SkuAliases,
}

impl Default for InventorySyncSettings {
    fn default() -> Self {
        Self {
            location: None,
            quantity_is: QuantityIs::OnHand,
            snapshot: SnapshotScope::Partial,
            price_tier_name: None,
            adjustment_status: AdjustmentStatusSetting::Completed,
            adjustment_account: None,
            adjustment_reference: "dear-sync {snapshot_id}".to_owned(),
            minimum_level: Decimal::ZERO,
            drift_threshold_units: None,
            drift_threshold_percent: None,
            max_lines_per_adjustment: 1000,
            subtract_orders_since_snapshot: true,
            hold_if_zeroing_percent: Decimal::from(20),
            snapshot_url: None,
            pull_interval_minutes: 60,
            bin_null_row: BinNullRow::Remainder,
            sku_aliases: SkuAliases::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> SettingsError {
        TenantSettings::from_toml(text).unwrap_err()
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let e = err("[order_download]\nsale_status = \"PICKED\"\nwebhook_url = https://x\n");
        assert_eq!(e.path, "(file)");
        assert!(e.message.starts_with("line 3, column "), "{}", e.message);
        let e = err("[order_download]\n\nsale_status = 5\n");
        assert!(
            e.message.starts_with("line 3, column 15: "),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_empty_file_gives_cartrovers_defaults() {
        let s = TenantSettings::from_toml("").unwrap();
        assert_eq!(s, TenantSettings::default());
        assert_eq!(
            s.order_download.sale_status,
            SaleStatusFilter::Status(SaleStatus::Picked)
        );
        assert!(s.order_download.split_names);
        assert_eq!(s.inventory_sync.max_lines_per_adjustment, 1000);
        assert_eq!(
            s.shipment_confirmation.ship_order_action,
            ShipOrderAction::MarkPackedAndShipped
        );
    }

    #[test]
    fn every_setting_is_read() {
        let s = TenantSettings::from_toml(
            r#"
            [dear]
            calls_per_minute = 50
            burst = 5
            [order_download]
            sale_status = "Packed & Shipping"
            location_name = "Main Warehouse"
            additional_attribute_filters = { "2" = "Wholesale", "3" = ["A", "B"] }
            take_order_lines_from = "pick"
            ship_method_selection = "additional_attribute"
            shipping_accounts = ["2095", "2096"]
            ship_code_attribute = 4
            notes_field = "credit_note"
            split_names = false
            earliest_order_date = 2026-10-01
            overlap_minutes = 15
            [shipment_confirmation]
            ship_order_action = "mark_shipped"
            location = "East Warehouse"
            carrier_map = { "UPS" = "UPS", "FEDEX/Ground" = "FedEx Ground" }
            create_missing_carriers = true
            [inventory_sync]
            location = "Main Warehouse"
            quantity_is = "available"
            snapshot = "full"
            price_tier_name = "Tier 2"
            adjustment_status = "DRAFT"
            adjustment_account = "5000"
            adjustment_reference = "WMS {snapshot_id}"
            minimum_level = 2
            drift_threshold_units = 0.1
            drift_threshold_percent = "25.5"
            max_lines_per_adjustment = 500
            subtract_orders_since_snapshot = false
            "#,
        )
        .unwrap();
        assert_eq!(s.dear.calls_per_minute, 50);
        let od = &s.order_download;
        assert_eq!(od.sale_status, SaleStatusFilter::PackedAndShipping);
        assert_eq!(od.additional_attribute_filters["3"].0, vec!["A", "B"]);
        assert_eq!(od.take_order_lines_from, LineSource::Pick);
        assert_eq!(od.notes_field, NotesField::CreditNote);
        assert_eq!(
            od.earliest_order_date.unwrap().0.to_rfc3339(),
            "2026-10-01T00:00:00+00:00"
        );
        assert_eq!(
            s.shipment_confirmation.carrier_map["FEDEX/Ground"],
            "FedEx Ground"
        );
        let inv = &s.inventory_sync;
        assert_eq!(inv.drift_threshold_units, Some("0.1".parse().unwrap()));
        assert_eq!(inv.drift_threshold_percent, Some("25.5".parse().unwrap()));
        assert_eq!(inv.adjustment_status, AdjustmentStatusSetting::Draft);
        assert_eq!(inv.snapshot, SnapshotScope::Full);
    }

    #[test]
    fn sale_status_accepts_dear_and_cartrover_spellings() {
        for (text, want) in [
            ("Picked", SaleStatusFilter::Status(SaleStatus::Picked)),
            (
                "BACKORDERED",
                SaleStatusFilter::Status(SaleStatus::Backordered),
            ),
            ("any", SaleStatusFilter::Any),
            ("packed_and_shipping", SaleStatusFilter::PackedAndShipping),
        ] {
            assert_eq!(SaleStatusFilter::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn each_section_checks_its_ranges_naming_the_key_and_the_range() {
        for (toml, want) in [
            ("[dear]\nburst = 11", "dear.burst: must be 1-10, got 11"),
            (
                "[dear]\ncalls_per_minute = 61",
                "dear.calls_per_minute: must be 1-60 (DEAR allows 60), got 61",
            ),
            (
                "[order_download]\nwebhook_attempts = 0",
                "order_download.webhook_attempts: must be 1-10, got 0",
            ),
            (
                "[inventory_sync]\nhold_if_zeroing_percent = \"101\"",
                "inventory_sync.hold_if_zeroing_percent: must be 0-100, got 101",
            ),
            (
                "[inventory_sync]\ndrift_threshold_units = \"0\"",
                "inventory_sync.drift_threshold_units: must be above 0, got 0",
            ),
            (
                "[inventory_sync]\nmax_lines_per_adjustment = 10001",
                "inventory_sync.max_lines_per_adjustment: must be 1-10000, got 10001",
            ),
        ] {
            let err = TenantSettings::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(want), "{toml}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[order_download]\nsale_status = \"PICKD\"",
                "order_download.sale_status",
                "PICKD",
            ),
            (
                "[order_download]\nship_code_attribute = 12",
                "order_download.ship_code_attribute",
                "1-10",
            ),
            (
                "[order_download]\nsale_statuss = \"PICKED\"",
                "order_download.sale_statuss",
                "unknown field",
            ),
            (
                "[order_download]\nsplit_names = \"yes\"",
                "order_download.split_names",
                "bool",
            ),
            (
                "[order_download]\ntake_order_lines_from = \"ship\"",
                "order_download.take_order_lines_from",
                "ship",
            ),
            (
                "[order_download]\nearliest_order_date = \"yesterday\"",
                "order_download.earliest_order_date",
                "yesterday",
            ),
            (
                "[order_download]\nadditional_attribute_filters = { \"11\" = \"x\" }",
                "order_download.additional_attribute_filters.11",
                "1-10",
            ),
            (
                "[inventory_sync]\nminimum_level = \"lots\"",
                "inventory_sync.minimum_level",
                "lots",
            ),
            (
                "[inventory_sync]\nminimum_level = -1",
                "inventory_sync.minimum_level",
                "negative",
            ),
            (
                "[inventory_sync]\nlocation = \" \"",
                "inventory_sync.location",
                "blank",
            ),
            (
                "[inventory_sync]\nmax_lines_per_adjustment = 0",
                "inventory_sync.max_lines_per_adjustment",
                "1-10000",
            ),
            (
                "[dear]\ncalls_per_minute = 61",
                "dear.calls_per_minute",
                "1-60",
            ),
            (
                "[dear]\ncalls_per_minute = 59\nburst = 3",
                "dear.burst",
                "exceeds",
            ),
            ("[warehouse]\nx = 1", "warehouse", "unknown field"),
            ("[order_download\n", "(file)", ""),
        ];
        for (text, path, needle) in cases {
            let e = err(text);
            assert_eq!(e.path, path, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }
}
