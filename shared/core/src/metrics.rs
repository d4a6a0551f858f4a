//! CloudWatch Embedded Metric Format: one JSON log line that CloudWatch turns into metrics, so a
//! Lambda reports its run summary without an API call.

use serde_json::{Map, Value, json};

/// The namespace dear-sync's metrics are published under.
pub const NAMESPACE: &str = "DearSync";

/// The dimension left out of the roll-up set, so alarms can watch a job across all tenants (a
/// CloudWatch alarm must name every dimension value of the metric it watches).
pub const ROLLED_UP_DIMENSION: &str = "Tenant";

/// An EMF line for `metrics` (name → count), with `dimensions` (name → value). Two dimension sets
/// are declared: all of `dimensions`, and all but [`ROLLED_UP_DIMENSION`] (when present).
pub fn emf_line(timestamp_ms: i64, dimensions: &[(&str, &str)], metrics: &[(&str, u64)]) -> String {
    let names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let mut sets = vec![names.clone()];
    if names.contains(&ROLLED_UP_DIMENSION) {
        sets.push(
            names
                .iter()
                .copied()
                .filter(|n| *n != ROLLED_UP_DIMENSION)
                .collect(),
        );
    }
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": sets,
                "Metrics": metrics.iter().map(|(name, _)| json!({"Name": name, "Unit": "Count"})).collect::<Vec<_>>(),
            }],
        }),
    );
    for (k, v) in dimensions {
        root.insert((*k).into(), Value::String((*v).into()));
    }
    for (k, v) in metrics {
        root.insert((*k).into(), json!(v));
    }
    Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_line_declares_its_metrics_and_carries_their_values() {
        let line = emf_line(
            1_700_000_000_000,
            &[("Tenant", "acme"), ("Job", "order-download")],
            &[("Delivered", 3), ("Failed", 0)],
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["Delivered"], 3);
        assert_eq!(v["Tenant"], "acme");
        let decl = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(decl["Namespace"], "DearSync");
        assert_eq!(decl["Dimensions"], json!([["Tenant", "Job"], ["Job"]]));
        assert_eq!(decl["Metrics"][1]["Name"], "Failed");

        let untenanted = emf_line(1, &[("Job", "shipment-confirmation")], &[("Failed", 1)]);
        let v: Value = serde_json::from_str(&untenanted).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Job"]])
        );
    }
}
