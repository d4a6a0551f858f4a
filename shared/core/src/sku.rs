//! SKU rules shared by the jobs: a tenant's alias table between DEAR's SKUs and the warehouse's,
//! applied both ways (orders out; shipments and inventory snapshots in), and SKU patterns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::settings::SettingsError;

/// `[sku_aliases]`: DEAR SKU → warehouse SKU. SKUs compare without case or surrounding spaces; a
/// SKU in neither column is the same on both sides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SkuAliases(pub BTreeMap<String, String>);

impl SkuAliases {
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The warehouse's SKU for DEAR's `sku`.
    pub fn to_warehouse<'a>(&'a self, sku: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|(dear, _)| same(dear, sku))
            .map_or(sku, |(_, wms)| wms.trim())
    }

    /// DEAR's SKU for the warehouse's `sku`.
    pub fn to_dear<'a>(&'a self, sku: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|(_, wms)| same(wms, sku))
            .map_or(sku, |(dear, _)| dear.trim())
    }

    /// No blank SKU, and each SKU on one side maps to one on the other: the table reads both ways.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut warehouse: BTreeMap<String, &str> = BTreeMap::new();
        for (dear, wms) in &self.0 {
            if dear.trim().is_empty() || wms.trim().is_empty() {
                return Err(SettingsError::new(
                    "sku_aliases",
                    format!("{dear:?} = {wms:?}: neither SKU may be blank"),
                ));
            }
            if let Some(other) = warehouse.insert(wms.trim().to_lowercase(), dear) {
                return Err(SettingsError::new(
                    "sku_aliases",
                    format!(
                        "{other:?} and {dear:?} both map to the warehouse SKU {wms:?}: a shipment or \
                         count of it could not be told apart"
                    ),
                ));
            }
        }
        let dear: Vec<String> = self.0.keys().map(|k| k.trim().to_lowercase()).collect();
        for (i, d) in dear.iter().enumerate() {
            if dear[i + 1..].contains(d) {
                return Err(SettingsError::new(
                    "sku_aliases",
                    format!("the DEAR SKU {d:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

fn same(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Whether `sku` matches `pattern`: exact (without case), or a glob where `*` stands for any run
/// of characters and `?` for one.
pub fn sku_matches(pattern: &str, sku: &str) -> bool {
    let p: Vec<char> = pattern.trim().to_lowercase().chars().collect();
    let s: Vec<char> = sku.trim().to_lowercase().chars().collect();
    glob(&p, &s)
}

fn glob(p: &[char], s: &[char]) -> bool {
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases(pairs: &[(&str, &str)]) -> SkuAliases {
        SkuAliases(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn an_alias_reads_both_ways_and_other_skus_pass_unchanged() {
        let a = aliases(&[("BREAD-WHITE", "WMS-0001")]);
        assert_eq!(a.to_warehouse("bread-white "), "WMS-0001");
        assert_eq!(a.to_dear("wms-0001"), "BREAD-WHITE");
        assert_eq!(a.to_warehouse("JAM"), "JAM");
        assert_eq!(a.to_dear("JAM"), "JAM");
    }

    #[test]
    fn a_table_that_cannot_read_both_ways_is_refused() {
        assert!(aliases(&[("A", "X"), ("B", "X")]).validate().is_err());
        assert!(aliases(&[("A", " ")]).validate().is_err());
        assert!(aliases(&[("A", "X"), ("B", "Y")]).validate().is_ok());
    }

    #[test]
    fn patterns_match_exactly_or_as_globs_without_case() {
        assert!(sku_matches("SKU-001", "sku-001"));
        assert!(!sku_matches("SKU-001", "SKU-0011"));
        assert!(sku_matches("GIFT-*", "gift-card-50"));
        assert!(sku_matches("*-SAMPLE", "TEA-SAMPLE"));
        assert!(sku_matches("T?A", "TEA"));
        assert!(!sku_matches("T?A", "TEEA"));
        assert!(sku_matches("*", "anything"));
        assert!(sku_matches("A*B*C", "AxxBxxC"));
        assert!(!sku_matches("A*B*C", "AxxBxx"));
    }
}
