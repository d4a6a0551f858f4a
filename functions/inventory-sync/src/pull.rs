//! Pull mode: a schedule names a tenant (or none: every enabled tenant with a `snapshot_url`), and
//! its snapshot is read from its URL and synced.

use std::collections::BTreeMap;

use dearsync_core::dispatch::{RunQueue, TenantRun};
use dearsync_core::{Job, TenantId, TenantSettings};
use dearsync_function_support::{Deps, HandlerError, TenantError};
use dearsync_inventory_sync::SyncOptions;
use serde_json::{Value, json};

use crate::{NotSynced, job, run};

/// GETs the tenant's snapshot and syncs it. A pull that fails before its sync (the tenant, the
/// snapshot URL) is logged as an aborted run: `dearsync status` shows why, the heartbeat counts it.
pub(crate) async fn pull(
    deps: &Deps,
    tenant: &TenantId,
    options: SyncOptions,
) -> Result<Value, NotSynced> {
    let started_at = deps.clock.now();
    let pulled = async {
        let job = job(deps, deps.tenant(tenant).await?);
        let snapshot = job
            .pull(deps.outbound)
            .await
            .map_err(|source| NotSynced::Pull {
                tenant: tenant.clone(),
                source,
            })?;
        Ok::<_, NotSynced>((job, snapshot))
    }
    .await;
    let (job, snapshot) = match pulled {
        Ok(pulled) => pulled,
        // An unknown or disabled tenant has no runs to log (any id a message names would get one).
        Err(e @ NotSynced::Tenant(TenantError::NotConfigured(_) | TenantError::Disabled(_))) => {
            return Err(e);
        }
        Err(e) => {
            let report = dearsync_core::RunReport::new(
                started_at,
                deps.clock.now(),
                dearsync_core::RunOutcome::Aborted,
                [("failed", 1)],
            )
            .note(e.to_string());
            dearsync_core::run_log::record_or_warn(
                deps.store.as_ref(),
                tenant,
                Job::InventorySync,
                &report,
            )
            .await;
            return Err(e);
        }
    };
    run(deps, &job, &snapshot, options)
        .await
        .map(|s| s.to_json())
}

/// Pulls every enabled tenant whose settings set `inventory_sync.snapshot_url`, each isolated (one
/// tenant's failure never stops another); a tenant whose stored settings do not parse is a failure
/// named, not skipped.
pub(crate) async fn pull_all(deps: &Deps) -> Result<Value, HandlerError> {
    let tenants = deps.store.tenants().await.map_err(|e| {
        let retryable = e.is_transient();
        HandlerError::failed(e, retryable)
    })?;
    let mut results = Vec::new();
    let mut failures = BTreeMap::new();
    let mut retryable = true;
    for t in tenants.into_iter().filter(|t| t.enabled) {
        let outcome = match TenantSettings::from_toml(&t.settings_toml) {
            Ok(settings) if settings.inventory_sync.snapshot_url.is_none() => continue,
            Ok(_) => pull(deps, &t.tenant, SyncOptions::default()).await,
            Err(source) => Err(NotSynced::Tenant(TenantError::Settings {
                tenant: t.tenant.clone(),
                source,
            })),
        };
        match outcome {
            Ok(s) => results.push(s),
            Err(e) => {
                tracing::error!(tenant = %t.tenant, error = %e, "inventory pull failed");
                retryable &= e.is_retryable();
                failures.insert(t.tenant.to_string(), e.to_string());
            }
        }
    }
    if failures.is_empty() {
        Ok(json!({ "tenants": results }))
    } else {
        Err(HandlerError::failed(
            format!("{} tenants failed: {failures:?}", failures.len()),
            retryable,
        ))
    }
}

/// Enqueues a pull of every enabled tenant with a `snapshot_url` whose `pull_interval_minutes`
/// has passed.
pub(crate) async fn dispatch_pulls(
    deps: &Deps,
    queue: &dyn RunQueue,
) -> Result<Value, HandlerError> {
    let summary = deps
        .dispatch(queue, Job::InventorySync, |s| {
            let every = i64::from(s.inventory_sync.pull_interval_minutes);
            s.inventory_sync
                .snapshot_url
                .as_ref()
                .map(|_| chrono::Duration::minutes(every))
        })
        .await?;
    Ok(json!(summary))
}

/// A queued `{"tenant": "acme"}`: that tenant's pull.
pub(crate) async fn queued_pull(deps: &Deps, body: Value) -> Result<Value, NotSynced> {
    let run = serde_json::from_value::<TenantRun>(body).map_err(|e| {
        NotSynced::Bad(format!(
            "expected {{\"tenant\", \"snapshot\"}}, {{\"tenant\", \"chunk\"}} or a pull {{\"tenant\"}}: {e}"
        ))
    })?;
    if run.since.is_some() {
        return Err(NotSynced::Bad(
            "since is an order-download backfill; a pull takes the tenant alone".into(),
        ));
    }
    pull(deps, &run.tenant, SyncOptions::default()).await
}
