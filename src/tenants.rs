//! `dearsync tenants put|list|show`: the tenants the Lambdas serve, with their settings, in the
//! state store (the deployed table with `--table`, or the embedded store). Settings are validated
//! before they are stored, so a bad key fails here rather than at the next scheduled run.

use crate::exit::CliError;
use dearsync_core::TenantSettings;
use dearsync_core::state::TenantEntry;

use crate::local::LocalOptions;

/// `dearsync tenants …`.
#[derive(clap::Subcommand)]
pub enum TenantsCommand {
    /// Create or replace a tenant (`--tenant`) with the settings of `--config`.
    Put(PutArgs),
    /// List the tenants: enabled or not, and what each downloads and where it sends it.
    List(ListArgs),
    /// Print a tenant's stored settings (TOML).
    Show(LocalOptions),
}

/// Options of `dearsync tenants list`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `dearsync tenants put`.
#[derive(clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// Store the tenant disabled: scheduled runs skip it, pushes to its URLs are refused.
    #[arg(long)]
    disabled: bool,
}

/// Runs a `tenants` command.
pub async fn run(command: TenantsCommand) -> Result<(), CliError> {
    match command {
        TenantsCommand::Put(args) => put(args).await,
        TenantsCommand::List(args) => list(args).await,
        TenantsCommand::Show(local) => show(local).await,
    }
}

async fn put(args: PutArgs) -> Result<(), CliError> {
    let path = args
        .local
        .config
        .as_ref()
        .ok_or("--config: the tenant's settings file (TOML) is required")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the settings file {}: {e}", path.display()))?;
    TenantSettings::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if args.local.tenant.is_none() {
        return Err("--tenant: which tenant to store the settings for is required".into());
    }
    let ctx = args.local.open().await?;
    ctx.store
        .put_tenant(&TenantEntry {
            tenant: ctx.tenant.clone(),
            enabled: !args.disabled,
            settings_toml: text,
        })
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "tenant {}: {}, settings from {} stored",
        ctx.tenant,
        if args.disabled { "disabled" } else { "enabled" },
        path.display()
    );
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let ctx = args.local.open_existing().await?;
    let tenants = ctx.store.tenants().await.map_err(|e| e.to_string())?;
    if args.json {
        let rows: Vec<serde_json::Value> = tenants
            .iter()
            .map(|t| match TenantSettings::from_toml(&t.settings_toml) {
                Ok(s) => serde_json::json!({
                    "tenant": t.tenant.as_str(), "enabled": t.enabled,
                    "sale_status": s.order_download.sale_status.to_string(),
                    "webhook": s.order_download.webhook_url.is_some(),
                    "inventory_pull": s.inventory_sync.snapshot_url.is_some(),
                }),
                Err(e) => serde_json::json!({
                    "tenant": t.tenant.as_str(), "enabled": t.enabled,
                    "invalid_settings": e.to_string(),
                }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:<20} {:<8} inventory pull",
        "tenant", "enabled", "sale status", "webhook"
    );
    for t in &tenants {
        // A stored file that no longer parses (edited by hand) is shown, not hidden.
        match TenantSettings::from_toml(&t.settings_toml) {
            Ok(s) => println!(
                "{:<24} {:<8} {:<20} {:<8} {}",
                t.tenant.as_str(),
                if t.enabled { "yes" } else { "no" },
                s.order_download.sale_status.to_string(),
                if s.order_download.webhook_url.is_some() {
                    "set"
                } else {
                    "-"
                },
                if s.inventory_sync.snapshot_url.is_some() {
                    "set"
                } else {
                    "-"
                },
            ),
            Err(e) => println!(
                "{:<24} {:<8} INVALID SETTINGS: {e}",
                t.tenant.as_str(),
                if t.enabled { "yes" } else { "no" }
            ),
        }
    }
    if tenants.is_empty() {
        eprintln!("no tenants; add one with `dearsync tenants put --tenant ID --config FILE`");
    }
    Ok(())
}

async fn show(local: LocalOptions) -> Result<(), CliError> {
    let ctx = local.open_existing().await?;
    let entry = ctx
        .store
        .tenant(&ctx.tenant)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("tenant {} is not configured", ctx.tenant))?;
    println!(
        "# tenant {} ({})",
        entry.tenant,
        if entry.enabled { "enabled" } else { "disabled" }
    );
    print!("{}", entry.settings_toml);
    Ok(())
}
