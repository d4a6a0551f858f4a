//! What every local (CLI) run shares: the state store (the embedded one, or the deployed stack's
//! DynamoDB table with `--table`) and the tenant's settings from a TOML file.

use crate::exit::CliError;
use std::path::PathBuf;
use std::sync::Arc;

use dearsync_core::{
    CredentialSource, Credentials, EnvCredentials, JobContext, StateStore, SystemClock, TenantId,
    TenantSettings, connect,
};
use dearsync_store_sqlite::SqliteStore;

/// Options every local job takes.
#[derive(clap::Args, Clone, Debug)]
pub struct LocalOptions {
    /// Directory of the embedded state store.
    #[arg(long, env = "DEARSYNC_STATE_DIR", default_value = dearsync_store_sqlite::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    /// Tenant settings (TOML); absent = every default.
    #[arg(long, env = "DEARSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// The tenant id state is kept under (one local store can hold several); default `local`,
    /// required by commands that write a tenant's settings.
    #[arg(long, env = "DEARSYNC_TENANT")]
    pub tenant: Option<String>,
    /// Use the deployed stack's DynamoDB state table instead of the embedded store (its
    /// `StateTableName` output; AWS credentials and region from the usual AWS_* variables or
    /// profile).
    #[arg(long, env = "DEARSYNC_STATE_TABLE")]
    pub table: Option<String>,
    /// Read the tenant's DEAR credentials from the Secrets Manager secret `<prefix><tenant>` (the
    /// stack's `SecretPrefix`, e.g. `dear-sync/`) instead of DEAR_ACCOUNT_ID / DEAR_API_KEY.
    #[arg(long, env = "DEARSYNC_SECRET_PREFIX")]
    pub secret_prefix: Option<String>,
}

/// An opened local context.
pub struct LocalContext {
    /// The tenant.
    pub tenant: TenantId,
    /// The state store.
    pub store: Arc<dyn StateStore>,
}

impl LocalOptions {
    /// Reads and validates the settings file (or the defaults).
    pub fn settings(&self) -> Result<TenantSettings, CliError> {
        let Some(path) = &self.config else {
            return Ok(TenantSettings::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the settings file {}: {e}", path.display()))?;
        TenantSettings::from_toml(&text).map_err(|e| CliError::with(path.display(), e))
    }

    /// The tenant named by `--tenant`, else `local`.
    pub fn tenant_id(&self) -> Result<TenantId, CliError> {
        TenantId::new(self.tenant.as_deref().unwrap_or(DEFAULT_TENANT))
            .map_err(|e| CliError::with("--tenant", e))
    }

    /// Opens a store that must exist already (commands that only read): the embedded store of
    /// `--state-dir`, or the table of `--table`.
    pub async fn open_existing(&self) -> Result<LocalContext, CliError> {
        if self.table.is_none() {
            let file = self.state_dir.join(dearsync_store_sqlite::FILE_NAME);
            if !file.is_file() {
                return Err(format!(
                    "no state store in {} (no {} there): run a job first, or name the right \
                     folder with --state-dir (or the stack's table with --table)",
                    self.state_dir.display(),
                    dearsync_store_sqlite::FILE_NAME
                )
                .into());
            }
        }
        self.open().await
    }

    /// Opens everything a local run needs.
    pub async fn open(&self) -> Result<LocalContext, CliError> {
        let tenant = self.tenant_id()?;
        let clock = Arc::new(SystemClock);
        let store: Arc<dyn StateStore> = match &self.table {
            Some(table) => {
                let config = dearsync_aws::load_sdk_config().await;
                Arc::new(dearsync_aws::DynamoStore::new(
                    aws_sdk_dynamodb::Client::new(&config),
                    table.clone(),
                    clock,
                ))
            }
            None => {
                Arc::new(SqliteStore::open_dir(&self.state_dir, clock).map_err(|e| e.to_string())?)
            }
        };
        Ok(LocalContext { tenant, store })
    }
}

/// The tenant id of runs without `--tenant`.
pub const DEFAULT_TENANT: &str = "local";

/// A tenant stored disabled (`tenants put --disabled`) gets no work done by the CLI either: its
/// shipments, stock and orders are not written to DEAR or the warehouse.
async fn refuse_if_disabled(ctx: &LocalContext) -> Result<(), CliError> {
    match ctx
        .store
        .tenant(&ctx.tenant)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(entry) if !entry.enabled => Err(format!(
            "tenant {} is disabled: nothing is done for it (`dearsync tenants put` without \
             --disabled enables it)",
            ctx.tenant
        )
        .into()),
        _ => Ok(()),
    }
}

/// Everything a local job run needs: the job context (its DEAR client has the credentials from
/// the tenant's secret or `DEAR_ACCOUNT_ID` / `DEAR_API_KEY`, at `DEAR_BASE_URL`) and the settings.
pub struct LocalJob {
    /// The tenant, DEAR, the state store and the clock.
    pub ctx: JobContext,
    /// The validated settings.
    pub settings: TenantSettings,
}

impl LocalOptions {
    /// The tenant's DEAR credentials: from its secret under `--secret-prefix`, else from the
    /// environment.
    pub async fn credentials(&self, tenant: &TenantId) -> Result<Credentials, CliError> {
        let source: Box<dyn CredentialSource> = match &self.secret_prefix {
            Some(prefix) => {
                let config = dearsync_aws::load_sdk_config().await;
                Box::new(dearsync_aws::SecretsManagerCredentials::new(
                    aws_sdk_secretsmanager::Client::new(&config),
                    prefix.clone(),
                    dearsync_aws::SecretsManagerCredentials::DEFAULT_TTL,
                ))
            }
            None => Box::new(EnvCredentials::from_env()),
        };
        source.credentials(tenant).await.map_err(CliError::of)
    }

    /// Opens the store, reads the settings and credentials, and builds the DEAR client, paced by
    /// the account's budget in the store (or not at all with `no_rate_limit`: simulators only).
    pub async fn job(&self, no_rate_limit: bool) -> Result<LocalJob, CliError> {
        let ctx = self.open().await?;
        refuse_if_disabled(&ctx).await?;
        let settings = self.settings()?;
        let clock = Arc::new(SystemClock);
        let credentials = self.credentials(&ctx.tenant).await?;
        let base_url = connect::base_url_from_env();
        let dear = connect::dear_client_or_unlimited(
            &credentials,
            &base_url,
            &settings.dear,
            ctx.store.clone(),
            clock.clone(),
            no_rate_limit,
        )
        .map_err(|e| e.to_string())?;
        Ok(LocalJob {
            ctx: JobContext::new(ctx.tenant, Arc::new(dear), ctx.store, clock),
            settings,
        })
    }
}
