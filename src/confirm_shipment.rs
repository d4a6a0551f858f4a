//! `dearsync confirm-shipment FILE`: applies one warehouse shipment to DEAR and prints the result
//! as JSON; exits non-zero when it was not applied.

use crate::exit::CliError;
use std::path::PathBuf;

use dearsync_shipment_confirmation::{
    ConfirmError, Shipment, ShipmentConfirmation, confirmations_report,
};

use crate::exit::Ended;
use crate::local::LocalOptions;

/// Options of `dearsync confirm-shipment`.
#[derive(clap::Args)]
pub struct ConfirmShipmentArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// The shipment (JSON, `docs/canonical-shipment.md`); `-` for stdin.
    file: PathBuf,
    /// No DEAR rate budget at all: only against a simulator with its limit off.
    #[arg(long)]
    no_rate_limit: bool,
}

/// Runs it; an error when the shipment was not applied (the JSON on stdout says why).
pub async fn run(args: ConfirmShipmentArgs) -> Result<Ended, CliError> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read stdin: {e}"))?
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?
    };
    let shipment = Shipment::from_json(&text)
        .map_err(|e| format!("{}: invalid shipment: {e}", args.file.display()))?;
    let local = args.local.job(args.no_rate_limit).await?;
    let job = ShipmentConfirmation {
        ctx: local.ctx.in_lane(dearsync_core::Lane::Shipments),
        settings: local.settings.shipment_confirmation,
    };
    let (started_at, before) = (job.ctx.clock.now(), job.ctx.dear.stats());
    let outcome = job.confirm(&shipment).await;
    let report = confirmations_report(
        started_at,
        job.ctx.clock.now(),
        u64::from(outcome.is_ok()),
        u64::from(outcome.is_err()),
        job.ctx.dear.stats().throttled - before.throttled,
    );
    let (tenant, job_kind) = (&job.ctx.tenant, dearsync_core::Job::ShipmentConfirmation);
    dearsync_core::run_log::record_or_warn(job.ctx.store.as_ref(), tenant, job_kind, &report).await;
    match outcome {
        Ok(c) => {
            println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
            Ok(Ended::Ok)
        }
        Err(e) => {
            let out = serde_json::json!({
                "shipment_id": shipment.shipment_id,
                "error": e.to_string(),
                "retryable": e.is_retryable(),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            if matches!(e, ConfirmError::InProgress(_)) {
                eprintln!("shipment {}: {e}", shipment.shipment_id);
                return Ok(Ended::Busy);
            }
            Err(format!("shipment {} not applied: {e}", shipment.shipment_id).into())
        }
    }
}
