//! `dearsync`: the local runner and operator CLI of dear-sync.

use crate::exit::CliError;
use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use dearsync_core::Job;
use dearsync_core::state::{LedgerQuery, RecordState};

mod confirm_shipment;
mod demo;
mod exit;
mod inventory_sync;
mod local;
mod order_download;
mod orders;
mod status;
mod tenants;
mod webhooks;

/// dear-sync: DEAR Systems / Cin7 Core ↔ warehouse integration.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// See the whole integration work on this machine: a simulated DEAR account, order download,
    /// shipments (partial, multi-box), inventory sync, and a report. No AWS or DEAR account needed.
    Demo(demo::DemoArgs),
    /// Run the DEAR API simulator on 127.0.0.1 with a seeded data set.
    Sim(SimArgs),
    /// Download orders from DEAR (one run): NDJSON orders to --out or stdout, summary on stderr.
    OrderDownload(order_download::OrderDownloadArgs),
    /// Apply one warehouse shipment (JSON file, or - for stdin) to DEAR: pick, pack, ship.
    ConfirmShipment(confirm_shipment::ConfirmShipmentArgs),
    /// Set DEAR's stock at one location to a warehouse snapshot (JSON or CSV); --dry-run prints the plan.
    InventorySync(inventory_sync::InventorySyncArgs),
    /// Check a settings file and print the effective settings (every default filled in).
    Settings(local::LocalOptions),
    /// Manage the tenants the Lambdas serve and their settings (use --table for the deployed stack).
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Manage DEAR's webhook subscriptions to the Order Download function.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// One order's story (`orders show SO-00123`), or the records that need looking at
    /// (`orders list`).
    #[command(subcommand)]
    Orders(orders::OrdersCommand),
    /// Per tenant and job: the last run, cursor lag, records in flight, failed, skipped and held,
    /// inventory snapshots, queue depths.
    Status(status::StatusArgs),
    /// List the ledger records of one job in one state (the low-level view `orders list` builds on).
    Records(RecordsArgs),
}

#[derive(clap::Args)]
struct RecordsArgs {
    #[command(flatten)]
    local: local::LocalOptions,
    /// The job: order-download, shipment-confirmation or inventory-sync.
    #[arg(long, value_parser = parse_job)]
    job: Job,
    /// The state: pending, in_flight, done, failed or skipped.
    #[arg(long, value_parser = parse_state)]
    state: RecordState,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], dear_sim::DEFAULT_PORT)))]
    listen: SocketAddr,
    /// The simulated DEAR Account ID.
    #[arg(long, default_value = dear_sim::DEFAULT_ACCOUNT_ID)]
    account_id: String,
    /// The simulated API Application Key.
    #[arg(long, default_value = dear_sim::DEFAULT_API_KEY)]
    api_key: String,
    /// Seed of the generated data set.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of generated sales.
    #[arg(long, default_value_t = 200)]
    sales: usize,
    /// Number of generated products.
    #[arg(long, default_value_t = 50)]
    products: usize,
    /// Calls per 60 s per account (0 = unlimited).
    #[arg(long, default_value_t = 60)]
    rate_limit: u32,
    /// Status of a throttled answer: 429 or 503.
    #[arg(long, default_value_t = 429, value_parser = parse_throttle_status)]
    throttle_status: u16,
    /// Readings of what DEAR leaves uncertain (docs/simulator.md); each flag plays the other one.
    #[command(flatten)]
    readings: SimReadings,
}

/// `dearsync sim` flags that switch the simulator to the non-default reading of an uncertain DEAR
/// behaviour (`docs/simulator.md`, "Readings").
#[derive(clap::Args, Default)]
struct SimReadings {
    /// A shipped simple sale not yet invoiced stays PACKED (default: it shows INVOICING).
    #[arg(long)]
    shipped_sale_stays_packed: bool,
    /// `GET me` sends MaximumDecimalPlacesInQuantity as a number (default: text, "N4").
    #[arg(long)]
    quantity_places_as_number: bool,
    /// Refuse a stock adjustment line without UnitCost only for products with no stock there
    /// (default: on every line).
    #[arg(long)]
    unit_cost_only_for_new_stock: bool,
    /// A simple sale lists `Fulfilments: []` until its fulfilment work starts (default: its first,
    /// empty fulfilment).
    #[arg(long)]
    simple_sales_list_no_fulfilment: bool,
    /// Authorising a pick opens a DRAFT pack holding the picked lines (default: NOT AVAILABLE).
    #[arg(long)]
    draft_pack_after_pick: bool,
    /// DEAR's Error Model as one object (default: an array).
    #[arg(long)]
    errors_as_object: bool,
    /// Unknown paths answer their HTML page with status 200 (default: 404).
    #[arg(long)]
    unknown_paths_answer_200: bool,
    /// A write over the rate limit is applied, then answered "throttled" (default: refused untouched).
    #[arg(long)]
    throttled_writes_applied: bool,
    /// `ref/productavailability`'s `Bin: null` row is the location's total, bins included
    /// (default: the stock outside bins).
    #[arg(long)]
    bin_null_row_is_total: bool,
}

impl SimReadings {
    /// The simulator settings these flags choose, on top of `base`.
    fn apply(&self, base: dear_sim::SimConfig) -> dear_sim::SimConfig {
        dear_sim::SimConfig {
            shipped_sale_status: if self.shipped_sale_stays_packed {
                dear_sim::rules::ShippedSaleStatus::Packed
            } else {
                base.shipped_sale_status
            },
            quantity_places_as_text: base.quantity_places_as_text
                && !self.quantity_places_as_number,
            unit_cost_on_every_line: base.unit_cost_on_every_line
                && !self.unit_cost_only_for_new_stock,
            simple_sale_lists_no_fulfilment_before_work: base
                .simple_sale_lists_no_fulfilment_before_work
                || self.simple_sales_list_no_fulfilment,
            draft_pack_after_pick: base.draft_pack_after_pick || self.draft_pack_after_pick,
            errors_as_object: base.errors_as_object || self.errors_as_object,
            unknown_path_status: if self.unknown_paths_answer_200 {
                200
            } else {
                base.unknown_path_status
            },
            throttled_writes_applied: base.throttled_writes_applied
                || self.throttled_writes_applied,
            bin_null_row_is_total: base.bin_null_row_is_total || self.bin_null_row_is_total,
            ..base
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    restore_default_sigpipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error {
                std::process::ExitCode::from(exit::USAGE)
            } else {
                std::process::ExitCode::SUCCESS // --help, --version
            };
        }
    };
    exit::status(match cli.command {
        Command::Demo(args) => demo::run(args).await.map(|()| exit::Ended::Ok),
        Command::Sim(args) => run_sim(args).await,
        Command::OrderDownload(args) => order_download::run(args).await,
        Command::ConfirmShipment(args) => confirm_shipment::run(args).await,
        Command::InventorySync(args) => inventory_sync::run(args).await,
        Command::Settings(opts) => show_settings(&opts).map(|()| exit::Ended::Ok),
        Command::Records(args) => list_records(&args).await.map(|()| exit::Ended::Ok),
        Command::Orders(command) => orders::run(command).await,
        Command::Status(args) => status::run(args).await,
        Command::Webhooks(command) => webhooks::run(command).await.map(|()| exit::Ended::Ok),
        Command::Tenants(command) => tenants::run(command).await.map(|()| exit::Ended::Ok),
    })
}

fn show_settings(opts: &local::LocalOptions) -> Result<(), CliError> {
    let settings = opts.settings()?;
    let text = toml::to_string(&settings).map_err(|e| format!("cannot print the settings: {e}"))?;
    print!("{text}");
    Ok(())
}

async fn list_records(args: &RecordsArgs) -> Result<(), CliError> {
    let ctx = args.local.open_existing().await?;
    let mut query = LedgerQuery::new(&ctx.tenant, args.job, args.state);
    let mut left = args.limit;
    println!(
        "{:<40} {:<9} {:>8} {:<24} reason",
        "entity", "state", "attempts", "updated"
    );
    while left > 0 {
        query.limit = left.min(1000);
        let page = ctx.store.list(&query).await.map_err(|e| e.to_string())?;
        for r in &page.records {
            println!(
                "{:<40} {:<9} {:>8} {:<24} {}",
                r.key.entity,
                r.state,
                r.attempts,
                r.updated_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                r.reason.as_deref().unwrap_or("")
            );
        }
        left -= page.records.len().min(left);
        match page.next {
            Some(_) if left == 0 => {
                println!(
                    "-- cut at --limit {}; more records follow (dearsync orders list --job {} \
                     --state {} pages on)",
                    args.limit, args.job, args.state
                );
                break;
            }
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    Ok(())
}

pub(crate) fn parse_job(text: &str) -> Result<Job, CliError> {
    Job::parse(text).ok_or_else(|| {
        format!("`{text}` is not a job: order-download, shipment-confirmation or inventory-sync")
            .into()
    })
}

pub(crate) fn parse_state(text: &str) -> Result<RecordState, CliError> {
    RecordState::parse(text).ok_or_else(|| {
        format!("`{text}` is not a state: pending, in_flight, done, failed or skipped").into()
    })
}

async fn run_sim(args: SimArgs) -> Result<exit::Ended, CliError> {
    let spec = dear_sim::seed::SeedSpec {
        seed: args.seed,
        sales: args.sales,
        products: args.products,
        ..Default::default()
    };
    let config = args.readings.apply(dear_sim::SimConfig {
        rate_limit: args.rate_limit,
        throttle_status: args.throttle_status,
        ..Default::default()
    });
    let sim = dear_sim::Sim::new(
        config,
        &args.account_id,
        &args.api_key,
        dear_sim::seed::generate(&spec),
    );
    let server = dear_sim::start(sim, args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    println!("DEAR_BASE_URL={}", server.base_url());
    println!("DEAR_ACCOUNT_ID={}", args.account_id);
    println!("DEAR_API_KEY={}", args.api_key);
    println!(
        "# try: curl -s -H 'api-auth-accountid: {}' -H 'api-auth-applicationkey: {}' '{}saleList?Limit=2'",
        args.account_id,
        args.api_key,
        server.base_url()
    );
    println!("# admin: {}calls  (Ctrl-C to stop)", server.admin_url());
    let _ = tokio::signal::ctrl_c().await;
    drop(server);
    Ok(exit::Ended::Ok)
}

fn parse_throttle_status(text: &str) -> Result<u16, CliError> {
    match text.trim() {
        "429" => Ok(429),
        "503" => Ok(503),
        other => Err(format!("`{other}` is not 429 or 503").into()),
    }
}

/// Rust ignores SIGPIPE, so printing to a pipe whose reader has gone (`dearsync records | head`)
/// fails and `println!` panics. A command-line tool should end quietly then, as `cat` does.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread is started; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim_config(args: &[&str]) -> serde_json::Value {
        let cli = Cli::try_parse_from(["dearsync", "sim"].iter().chain(args)).expect("parses");
        let Command::Sim(sim) = cli.command else {
            panic!("not sim")
        };
        let config = sim.readings.apply(dear_sim::SimConfig::default());
        serde_json::to_value(config).expect("serialises")
    }

    #[test]
    fn each_sim_reading_flag_switches_its_own_setting_and_no_other() {
        let default = sim_config(&[]);
        assert_eq!(
            default,
            serde_json::to_value(dear_sim::SimConfig::default()).unwrap()
        );
        for (flag, field, value) in [
            (
                "--shipped-sale-stays-packed",
                "shipped_sale_status",
                serde_json::json!("packed"),
            ),
            (
                "--quantity-places-as-number",
                "quantity_places_as_text",
                serde_json::json!(false),
            ),
            (
                "--unit-cost-only-for-new-stock",
                "unit_cost_on_every_line",
                serde_json::json!(false),
            ),
            (
                "--simple-sales-list-no-fulfilment",
                "simple_sale_lists_no_fulfilment_before_work",
                serde_json::json!(true),
            ),
            (
                "--draft-pack-after-pick",
                "draft_pack_after_pick",
                serde_json::json!(true),
            ),
            (
                "--errors-as-object",
                "errors_as_object",
                serde_json::json!(true),
            ),
            (
                "--unknown-paths-answer-200",
                "unknown_path_status",
                serde_json::json!(200),
            ),
            (
                "--throttled-writes-applied",
                "throttled_writes_applied",
                serde_json::json!(true),
            ),
            (
                "--bin-null-row-is-total",
                "bin_null_row_is_total",
                serde_json::json!(true),
            ),
        ] {
            let mut want = default.clone();
            assert_ne!(want[field], value, "{flag} plays the non-default reading");
            want[field] = value;
            assert_eq!(sim_config(&[flag]), want, "{flag}");
        }
    }
}
