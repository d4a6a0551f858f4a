//! `dearsync order-download`: one Order Download run against DEAR, state in the embedded store,
//! orders as NDJSON to a file or stdout, the summary on stderr.

use crate::exit::CliError;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use dearsync_order_download::{
    NdjsonSink, OrderDownload, OrderSink, Progress, RunOptions, RunSummary, SinkOpenError,
};

use crate::exit::Ended;
use crate::local::LocalOptions;

/// Options of `dearsync order-download`.
#[derive(clap::Args)]
pub struct OrderDownloadArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// Append orders (NDJSON) to this file; default stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Download just this sale (a SaleID) instead of polling.
    #[arg(long, conflicts_with = "since")]
    sale: Option<uuid::Uuid>,
    /// With --sale: deliver it again at its current version under a new delivery id, even if the
    /// warehouse has it (the order's `resend_of` names the delivery it repeats).
    #[arg(long, requires = "sale")]
    resend: bool,
    /// Backfill: list sales changed since this date (2026-10-01) or instant (RFC 3339) rather
    /// than since the last run. Orders already delivered at their current version are not sent
    /// again; the cursor only moves forward.
    #[arg(long, value_parser = parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds a crashed run keeps the next one waiting (the run lease, renewed while it works).
    #[arg(long, default_value_t = 120)]
    lease_ttl_secs: u32,
    /// No DEAR rate budget at all: only against a simulator with its limit off (real DEAR throttles).
    #[arg(long)]
    no_rate_limit: bool,
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

/// Runs it: an error when a delivery failed or the run aborted; needs attention when orders were
/// skipped or another run holds the lease.
pub async fn run(args: OrderDownloadArgs) -> Result<Ended, CliError> {
    let local = args.local.job(args.no_rate_limit).await?;
    let sink: Arc<dyn OrderSink> = match &args.out {
        Some(path) => match NdjsonSink::file(path) {
            Ok(sink) => Arc::new(sink),
            Err(e @ SinkOpenError::InUse { .. }) => {
                eprintln!("nothing done: {e}");
                return Ok(Ended::Busy);
            }
            Err(e) => return Err(e.to_string().into()),
        },
        None => Arc::new(NdjsonSink::stdout()),
    };
    let job = OrderDownload {
        ctx: local.ctx,
        settings: local.settings.order_download,
        sink,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} sales {pos}/{len} {wide_bar} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let opts = RunOptions {
        progress: bar.clone().map(|b| Arc::new(Bar(b)) as Arc<dyn Progress>),
        lease_ttl: chrono::Duration::seconds(i64::from(args.lease_ttl_secs.max(1))),
        since: args.since,
        ..RunOptions::default()
    };
    let summary = match args.sale {
        Some(id) if args.resend => job.resend(id).await,
        Some(id) => job.download_one(id).await,
        None => job.run(&opts).await,
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_summary(&summary);
    if summary.has_failures() {
        return Err(format!(
            "order download for {}: {} deliveries failed{}",
            summary.tenant,
            summary.failed,
            match &summary.outcome {
                dearsync_order_download::Outcome::Aborted(why) => format!(", run aborted: {why}"),
                _ => String::new(),
            }
        )
        .into());
    }
    if matches!(
        summary.outcome,
        dearsync_order_download::Outcome::LeaseBusy(_)
    ) {
        return Ok(Ended::Busy);
    }
    if let Some((sale, why)) = summary.not_resent.iter().next() {
        return Err(format!("sale {sale} was not resent: {why}").into());
    }
    Ok(Ended::attention_if(summary.skipped_total() > 0))
}

fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, dearsync_core::InvalidValue> {
    dearsync_core::settings::SettingInstant::parse(text).map(|i| i.0)
}

fn print_summary(s: &RunSummary) {
    eprintln!("order download ({}): {}", s.tenant, outcome_text(s));
    eprintln!(
        "  listed {}  unchanged {}  fetched {}  delivered {}  same version {}  failed {}  retried {}",
        s.listed, s.unchanged, s.fetched, s.delivered, s.same_version, s.failed, s.retried
    );
    if !s.skipped.is_empty() {
        let reasons: Vec<String> = s.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("  skipped {} ({})", s.skipped_total(), reasons.join(", "));
    }
    eprintln!(
        "  DEAR calls {}  throttled {}  cursor {} -> {}",
        s.dear_calls,
        s.throttled,
        s.cursor_before.as_deref().unwrap_or("(none)"),
        s.cursor_after.as_deref().unwrap_or("(none)")
    );
    if let Some(note) = s.first_run_note() {
        eprintln!("  {note}");
    }
    if s.resent > 0 {
        eprintln!("  resent {}", s.resent);
    }
    for (sale, why) in &s.not_resent {
        eprintln!("  not resent {sale}: {why}");
    }
    eprintln!(
        "  summary: {}",
        serde_json::to_string(s).unwrap_or_default()
    );
}

fn outcome_text(s: &RunSummary) -> String {
    use dearsync_order_download::Outcome;
    match &s.outcome {
        Outcome::Completed => "completed".into(),
        Outcome::StoppedAtDeadline => "stopped at the deadline; the next run resumes".into(),
        Outcome::LeaseBusy(why) => why.clone(),
        Outcome::Aborted(why) => format!("ABORTED: {why}"),
    }
}
