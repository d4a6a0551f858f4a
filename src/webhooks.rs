//! `dearsync webhooks register|list|delete`: DEAR's webhook subscriptions that point at the Order
//! Download function's URL, so a sale reaching the downloaded status is sent to the warehouse at
//! once rather than at the next poll (the poll stays the source of truth).
//!
//! DEAR cannot sign its deliveries, so each subscription carries the tenant's inbound secret in an
//! `x-dearsync-secret` header, which the function checks.

use crate::exit::CliError;
use dear_client::{DearClient, DearError, Webhook, WebhookHeader};
use dearsync_core::connect;
use dearsync_core::credentials::INBOUND_SECRET_HEADER;
use dearsync_core::settings::SaleStatusFilter;

use crate::local::LocalOptions;

/// `dearsync webhooks …`.
#[derive(clap::Subcommand)]
pub enum WebhooksCommand {
    /// Subscribe the Order Download function to DEAR's sale events (updates an existing
    /// subscription to the same URL instead of adding a second one).
    Register(RegisterArgs),
    /// List the account's webhook subscriptions (header values are not shown).
    List(LocalOptions),
    /// Remove subscriptions by ID, or every one delivering to a URL.
    Delete(DeleteArgs),
}

/// Options of `dearsync webhooks register`.
#[derive(clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// The Order Download function's URL (the stack's `DearWebhookUrl` output); `dear/<tenant>` is
    /// appended.
    #[arg(long)]
    url: String,
    /// DEAR event types to subscribe to (repeatable); default: the event of the settings'
    /// `order_download.sale_status` (e.g. PICKED → Sale/PickAuthorised).
    #[arg(long = "event")]
    events: Vec<String>,
}

/// Options of `dearsync webhooks delete`.
#[derive(clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// A subscription's ID (repeatable).
    #[arg(long = "id", required_unless_present = "url")]
    ids: Vec<uuid::Uuid>,
    /// Every subscription delivering to exactly this URL.
    #[arg(long, conflicts_with = "ids")]
    url: Option<String>,
}

/// Runs a `webhooks` command.
pub async fn run(command: WebhooksCommand) -> Result<(), CliError> {
    match command {
        WebhooksCommand::Register(args) => register(args).await,
        WebhooksCommand::List(local) => list(local).await,
        WebhooksCommand::Delete(args) => delete(args).await,
    }
}

/// DEAR with the tenant's credentials (`--secret-prefix`, else `DEAR_ACCOUNT_ID` / `DEAR_API_KEY`)
/// at `DEAR_BASE_URL`, and the tenant's inbound secret (from its secret, else
/// `DEARSYNC_INBOUND_SECRET`).
async fn dear(local: &LocalOptions) -> Result<(DearClient, Option<String>), CliError> {
    let tenant = local.tenant_id()?;
    let credentials = local.credentials(&tenant).await?;
    // A handful of calls: the client's own pacing is enough (a throttled write is read back).
    let client = connect::unlimited_dear_client(&credentials, &connect::base_url_from_env())
        .map_err(|e| e.to_string())?;
    let inbound = credentials
        .secret_for(dearsync_core::Caller::DearWebhook)
        .map(|s| s.expose().to_owned());
    Ok((client, inbound))
}

/// The DEAR events that announce a sale entering the downloaded status.
fn events_for(filter: &SaleStatusFilter) -> Result<Vec<&'static str>, CliError> {
    Ok(match filter {
        SaleStatusFilter::Any => vec![
            "Sale/OrderAuthorised",
            "Sale/Backordered",
            "Sale/PickAuthorised",
            "Sale/PackAuthorised",
            "Sale/ShipmentAuthorised",
            "Sale/InvoiceAuthorised",
        ],
        SaleStatusFilter::PackedAndShipping => {
            vec!["Sale/PackAuthorised", "Sale/ShipmentAuthorised"]
        }
        SaleStatusFilter::Status(status) => match status.as_str() {
            "ESTIMATED" => vec!["Sale/QuoteAuthorised"],
            "ORDERED" => vec!["Sale/OrderAuthorised"],
            "BACKORDERED" => vec!["Sale/Backordered"],
            "PICKING" | "PICKED" => vec!["Sale/PickAuthorised"],
            "PACKING" | "PACKED" => vec!["Sale/PackAuthorised"],
            "SHIPPING" => vec!["Sale/ShipmentAuthorised"],
            "INVOICED" => vec!["Sale/InvoiceAuthorised"],
            other => {
                return Err(format!(
                    "DEAR has no webhook for a sale becoming {other}; name the events with --event"
                )
                .into());
            }
        },
    })
}

async fn register(args: RegisterArgs) -> Result<(), CliError> {
    // No state store: a subscription is DEAR's state, not ours.
    let tenant = args.local.tenant_id()?;
    let settings = args.local.settings()?;
    let base = args.url.trim();
    if !(base.starts_with("https://")
        || base.starts_with("http://127.0.0.1")
        || base.starts_with("http://localhost"))
    {
        return Err(format!(
            "--url {base:?}: DEAR must deliver over https (http only to localhost, for tests)"
        )
        .into());
    }
    let target = format!("{}/dear/{}", base.trim_end_matches('/'), tenant);
    let events: Vec<String> = if args.events.is_empty() {
        events_for(&settings.order_download.sale_status)?
            .into_iter()
            .map(str::to_owned)
            .collect()
    } else {
        args.events.clone()
    };
    let (client, inbound) = dear(&args.local).await?;
    let secret = inbound.ok_or(
        "no inbound secret: the function refuses deliveries without the tenant's inbound_secret; \
         set DEARSYNC_INBOUND_SECRET, or pass --secret-prefix to read the tenant's secret",
    )?;
    let existing = client.webhooks().await.map_err(|e| e.to_string())?;
    for event in &events {
        let wanted = Webhook {
            id: None,
            event_type: event.clone(),
            name: None,
            is_active: true,
            external_url: target.clone(),
            external_authorization_type: "noauth".into(),
            external_user_name: None,
            external_password: None,
            external_bearer_token: None,
            external_headers: vec![WebhookHeader {
                key: INBOUND_SECRET_HEADER.into(),
                value: secret.clone(),
            }],
        };
        let same = existing
            .iter()
            .find(|w| w.event_type.eq_ignore_ascii_case(event) && w.external_url == target);
        match same.and_then(|w| w.id) {
            Some(id) => {
                update_once(&client, id, &wanted)
                    .await
                    .map_err(|e| format!("update the {event} webhook {id}: {e}"))?;
                println!("updated  {id}  {event:<28} {target}");
            }
            None => {
                let id = create_once(&client, &wanted)
                    .await
                    .map_err(|e| format!("create the {event} webhook: {e}"))?;
                let id = id.map(|i| i.to_string()).unwrap_or_default();
                println!("created  {id}  {event:<28} {target}");
            }
        }
    }
    Ok(())
}

/// Creates a webhook once: when DEAR's answer leaves the outcome unknown (throttled, timed out),
/// DEAR's list is read back before creating it again (DEAR allows five per event type).
async fn create_once(
    client: &DearClient,
    wanted: &Webhook,
) -> Result<Option<uuid::Uuid>, DearError> {
    let mut writes = 1;
    loop {
        match client.create_webhook(wanted).await {
            Ok(made) => return Ok(made.id),
            Err(e) if e.is_outcome_unknown() && writes < dear_client::READ_BACK_ROUNDS => {
                let now = client.webhooks().await?;
                if let Some(made) = now.iter().find(|w| {
                    w.event_type.eq_ignore_ascii_case(&wanted.event_type)
                        && w.external_url == wanted.external_url
                }) {
                    return Ok(made.id);
                }
                writes += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Updates a webhook; the same update again is harmless, so an unknown outcome is simply retried.
async fn update_once(
    client: &DearClient,
    id: uuid::Uuid,
    wanted: &Webhook,
) -> Result<(), DearError> {
    let mut writes = 1;
    loop {
        match client.update_webhook(id, wanted).await {
            Err(e) if e.is_outcome_unknown() && writes < dear_client::READ_BACK_ROUNDS => {
                writes += 1
            }
            other => return other,
        }
    }
}

async fn list(local: LocalOptions) -> Result<(), CliError> {
    let (client, _) = dear(&local).await?;
    let hooks = client.webhooks().await.map_err(|e| e.to_string())?;
    println!("{:<36}  {:<6}  {:<28} url", "id", "active", "event");
    for w in &hooks {
        println!(
            "{:<36}  {:<6}  {:<28} {}",
            w.id.map(|i| i.to_string()).unwrap_or_default(),
            if w.is_active { "yes" } else { "NO" },
            w.event_type,
            w.external_url
        );
    }
    if hooks.iter().any(|w| !w.is_active) {
        eprintln!(
            "note: DEAR deactivates a webhook after 6 failed deliveries; run `dearsync webhooks register` again to reactivate it"
        );
    }
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let (client, _) = dear(&args.local).await?;
    let ids: Vec<uuid::Uuid> = match &args.url {
        Some(url) => client
            .webhooks()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|w| &w.external_url == url)
            .filter_map(|w| w.id)
            .collect(),
        None => args.ids.clone(),
    };
    if ids.is_empty() {
        return Err(format!(
            "no webhook delivers to {}",
            args.url.as_deref().unwrap_or("that URL")
        )
        .into());
    }
    for id in ids {
        client
            .delete_webhook(id)
            .await
            .map_err(|e| format!("delete webhook {id}: {e}"))?;
        println!("deleted  {id}");
    }
    Ok(())
}
