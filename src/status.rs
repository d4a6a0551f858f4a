//! `dearsync status`: per tenant and job, the last run and how it ended, how far behind the
//! order cursor is, the records in flight, failed, skipped and held, inventory snapshots applied
//! and held, and (with `--queue-url`) the queues' depths.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dearsync_core::state::{CursorKey, LedgerQuery, RecordState};
use dearsync_core::{Job, RunHistory, TenantId};
use serde_json::{Value, json};

use crate::exit::{CliError, Ended};
use crate::local::{LocalContext, LocalOptions};
use crate::orders::time;

/// Options of `dearsync status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// Every tenant of the directory (default: `--tenant`, else every tenant the directory holds,
    /// else `local`).
    #[arg(long)]
    all: bool,
    /// An SQS queue to report the depth of (repeatable): the stack's `TenantRunQueueUrl`,
    /// `ShipmentQueueUrl`… outputs and their dead-letter queues. Default with `--table`: every
    /// queue of the table's stack (`<stack>-…`).
    #[arg(long = "queue-url", env = "DEARSYNC_QUEUE_URLS", value_delimiter = ',')]
    queue_urls: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Records counted per state before the count says "at least".
const COUNT_CAP: usize = 10_000;

/// The states `status` counts (done records are history, not work).
const COUNTED: [RecordState; 4] = [
    RecordState::InFlight,
    RecordState::Failed,
    RecordState::Skipped,
    RecordState::Pending,
];

/// Runs `dearsync status`.
pub async fn run(args: StatusArgs) -> Result<Ended, CliError> {
    let ctx = args.local.open_existing().await?;
    let now = Utc::now();
    let mut tenants = Vec::new();
    for tenant in tenants_to_show(&ctx, &args).await? {
        tenants.push(tenant_status(&ctx, &tenant, now).await?);
    }
    let queues = queue_depths(&queue_urls(&args).await?).await?;
    let attention = tenants.iter().any(|t| t["needs_attention"] == true)
        || queues
            .iter()
            .any(|q| q["dead_letter"] == true && q["visible"].as_u64() > Some(0));
    let out = json!({ "at": time(now), "tenants": tenants, "queues": queues });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_text(&out);
    }
    Ok(Ended::attention_if(attention))
}

async fn tenants_to_show(ctx: &LocalContext, args: &StatusArgs) -> Result<Vec<TenantId>, CliError> {
    if args.local.tenant.is_some() && !args.all {
        return Ok(vec![ctx.tenant.clone()]);
    }
    let listed: Vec<TenantId> = ctx
        .store
        .tenants()
        .await
        .map_err(|e| CliError::with("cannot list the tenants", e))?
        .into_iter()
        .map(|e| e.tenant)
        .collect();
    Ok(if listed.is_empty() {
        vec![ctx.tenant.clone()]
    } else {
        listed
    })
}

async fn tenant_status(
    ctx: &LocalContext,
    tenant: &TenantId,
    now: DateTime<Utc>,
) -> Result<Value, CliError> {
    let read = |what: &str, e| CliError::with(format!("cannot read {what} of {tenant}"), e);
    let entry = ctx
        .store
        .tenant(tenant)
        .await
        .map_err(|e| read("the entry", e))?;
    let mut jobs = Vec::new();
    let mut attention = false;
    for job in Job::ALL {
        let history = ctx
            .store
            .run_history(tenant, job)
            .await
            .map_err(|e| read("the run log", e))?;
        let counts = count_records(ctx, tenant, job).await?;
        let lag = match job {
            Job::OrderDownload => cursor_lag(ctx, tenant, now).await?,
            _ => None,
        };
        attention |= counts
            .get("failed")
            .is_some_and(|c| c["count"].as_u64() > Some(0))
            || history
                .as_ref()
                .is_some_and(|h| !h.last.outcome.succeeded());
        jobs.push(job_status(job, history.as_ref(), counts, lag));
    }
    Ok(json!({
        "tenant": tenant.as_str(),
        "enabled": entry.as_ref().map(|e| e.enabled),
        "in_directory": entry.is_some(),
        "jobs": jobs,
        "needs_attention": attention,
    }))
}

fn job_status(
    job: Job,
    history: Option<&RunHistory>,
    records: BTreeMap<&'static str, Value>,
    cursor_lag_seconds: Option<i64>,
) -> Value {
    let mut out = json!({
        "job": job,
        "last_run": history.map(|h| json!({
            "started_at": time(h.last.started_at),
            "ended_at": time(h.last.ended_at),
            "outcome": h.last.outcome,
            "note": h.last.note,
            "counts": h.last.counts,
        })),
        "last_success_at": history.and_then(|h| h.last_success_at).map(time),
        "runs": history.map_or(0, |h| h.runs),
        "records": records,
    });
    if job == Job::OrderDownload {
        out["cursor_lag_seconds"] = json!(cursor_lag_seconds);
    }
    if job == Job::InventorySync {
        let total = |name: &str| {
            history
                .and_then(|h| h.totals.get(name))
                .copied()
                .unwrap_or(0)
        };
        // Totals since the first logged run (a held snapshot applied later stays counted).
        out["snapshots_since_first_run"] = json!({
            "applied": total("snapshots_applied"),
            "held": total("snapshots_held"),
            "lines_held_for_review": total("held_for_review"),
        });
    }
    out
}

/// How far behind now the order cursor is (the greatest `Updated` fully worked through).
async fn cursor_lag(
    ctx: &LocalContext,
    tenant: &TenantId,
    now: DateTime<Utc>,
) -> Result<Option<i64>, CliError> {
    let key = CursorKey::new(
        tenant,
        Job::OrderDownload,
        dearsync_order_download::job::CURSOR_NAME,
    );
    let cursor = ctx
        .store
        .cursor(&key)
        .await
        .map_err(|e| CliError::with(format!("cannot read {key}"), e))?;
    Ok(cursor
        .and_then(|c| DateTime::parse_from_rfc3339(&c.value).ok())
        .map(|at| (now - at.with_timezone(&Utc)).num_seconds()))
}

/// The records in each counted state (`at_least` when the count stopped at [`COUNT_CAP`]), and
/// for skipped ones, how many per reason (the category before the reason's first colon).
async fn count_records(
    ctx: &LocalContext,
    tenant: &TenantId,
    job: Job,
) -> Result<BTreeMap<&'static str, Value>, CliError> {
    let mut out = BTreeMap::new();
    for state in COUNTED {
        let mut query = LedgerQuery::new(tenant, job, state);
        query.limit = 1000;
        let mut count = 0usize;
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let capped = loop {
            let page =
                ctx.store.list(&query).await.map_err(|e| {
                    CliError::with(format!("cannot count {job} {state} records"), e)
                })?;
            count += page.records.len();
            for r in &page.records {
                let reason = r.reason.as_deref().unwrap_or("");
                let category = reason.split(':').next().unwrap_or("").trim();
                *reasons.entry(category.to_owned()).or_default() += 1;
            }
            match page.next {
                Some(_) if count >= COUNT_CAP => break true,
                Some(next) => query.after = Some(next),
                None => break false,
            }
        };
        let mut entry = json!({ "count": count, "at_least": capped });
        if state == RecordState::Skipped && !reasons.is_empty() {
            entry["by_reason"] = json!(reasons);
        }
        out.insert(state.as_str(), entry);
    }
    Ok(out)
}

/// The queues to report: those named, else (with `--table`) the stack's own, found by name.
async fn queue_urls(args: &StatusArgs) -> Result<Vec<String>, CliError> {
    let Some(table) = args.local.table.as_deref() else {
        return Ok(args.queue_urls.clone());
    };
    if !args.queue_urls.is_empty() {
        return Ok(args.queue_urls.clone());
    }
    let config = dearsync_aws::load_sdk_config().await;
    match dearsync_aws::stack_queue_urls(&config, table).await {
        Ok(Some(urls)) => Ok(urls),
        Ok(None) => {
            eprintln!(
                "note: the table {table} is not named as the stack names it (<stack>-StateTable-…): \
                 name the queues with --queue-url to see their depths"
            );
            Ok(Vec::new())
        }
        Err(e) => {
            eprintln!(
                "note: cannot list the stack's queues ({e}); the status goes on without them"
            );
            Ok(Vec::new())
        }
    }
}

async fn queue_depths(urls: &[String]) -> Result<Vec<Value>, CliError> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let config = dearsync_aws::load_sdk_config().await;
    let mut out = Vec::new();
    for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        let depth = dearsync_aws::queue_depth(&config, url)
            .await
            .map_err(|e| CliError::with(format!("cannot read the depth of {url}"), e))?;
        out.push(json!({
            "url": url,
            "dead_letter": depth.is_dead_letter_queue,
            "visible": depth.visible,
            "in_flight": depth.in_flight,
            "delayed": depth.delayed,
        }));
    }
    Ok(out)
}

fn print_text(out: &Value) {
    println!("status at {}", out["at"].as_str().unwrap_or(""));
    for t in out["tenants"].as_array().into_iter().flatten() {
        let enabled = match t["enabled"].as_bool() {
            Some(true) => "enabled",
            Some(false) => "DISABLED",
            None => "not in the tenant directory",
        };
        let flag = if t["needs_attention"] == true {
            "  ← needs attention"
        } else {
            ""
        };
        println!(
            "\ntenant {} ({enabled}){flag}",
            t["tenant"].as_str().unwrap_or("")
        );
        for j in t["jobs"].as_array().into_iter().flatten() {
            print_job(j);
        }
    }
    let queues = out["queues"].as_array().cloned().unwrap_or_default();
    if !queues.is_empty() {
        println!("\nqueues");
        for q in queues {
            println!(
                "  {}{}: {} waiting, {} in flight, {} delayed",
                q["url"].as_str().unwrap_or(""),
                if q["dead_letter"] == true {
                    " (dead letters)"
                } else {
                    ""
                },
                q["visible"],
                q["in_flight"],
                q["delayed"]
            );
        }
    }
}

fn print_job(j: &Value) {
    let last = match &j["last_run"] {
        Value::Null => "never run".to_owned(),
        run => format!(
            "last run {} → {}{}",
            run["ended_at"].as_str().unwrap_or(""),
            run["outcome"].as_str().unwrap_or(""),
            run["note"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
    };
    let success = j["last_success_at"]
        .as_str()
        .map(|s| format!("; last success {s}"))
        .unwrap_or_default();
    println!("  {:<21} {last}{success}", j["job"].as_str().unwrap_or(""));
    let counts: Vec<String> = ["in_flight", "failed", "skipped", "pending"]
        .iter()
        .map(|s| {
            let c = &j["records"][s];
            let plus = if c["at_least"] == true { "+" } else { "" };
            format!("{} {s}{plus}", c["count"])
        })
        .collect();
    println!("  {:<21} records: {}", "", counts.join(", "));
    if let Some(reasons) = j["records"]["skipped"]["by_reason"].as_object() {
        let list: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {:<21} skipped by reason: {}", "", list.join(", "));
    }
    if let Some(lag) = j["cursor_lag_seconds"].as_i64() {
        println!(
            "  {:<21} order cursor {} behind now (the last change in DEAR worked through; a \
             quiet account's cursor falls behind too)",
            "",
            human_duration(lag)
        );
    }
    if let Some(s) = j.get("snapshots_since_first_run") {
        println!(
            "  {:<21} snapshots since the first run: {} applied, {} held for a person; {} lines \
             held for review",
            "", s["applied"], s["held"], s["lines_held_for_review"]
        );
    }
}

fn human_duration(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
