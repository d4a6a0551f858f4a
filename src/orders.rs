//! `dearsync orders show|list`: one order's whole story across the jobs, and the records that
//! need looking at, from the state store (the embedded one, or the stack's table with `--table`).

use chrono::{DateTime, SecondsFormat, Utc};
use dearsync_core::state::{LedgerQuery, LedgerRecord, PageToken, RecordState};
use dearsync_core::story::StoryEvent;
use dearsync_core::{Job, TenantId};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::exit::{CliError, Ended};
use crate::local::{LocalContext, LocalOptions};

/// `dearsync orders …`.
#[derive(clap::Subcommand)]
pub enum OrdersCommand {
    /// One order's story: every job's records of it in time order (listed, skipped, delivered,
    /// shipments applied, cancellations, failures and what retries next).
    Show(ShowArgs),
    /// Ledger records across states and jobs, problems first (failed, in flight, skipped).
    List(ListArgs),
}

/// Options of `dearsync orders show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// DEAR's order number (`SO-00123`) or SaleID.
    order: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `dearsync orders list`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    local: LocalOptions,
    /// Only this job (order-download, shipment-confirmation, inventory-sync); default all.
    #[arg(long, value_parser = crate::parse_job)]
    job: Option<Job>,
    /// Only these states (repeatable: pending, in_flight, done, failed, skipped); default all.
    #[arg(long, value_parser = crate::parse_state)]
    state: Vec<RecordState>,
    /// Only records that changed (or are due) at or after this instant (RFC 3339).
    #[arg(long, value_parser = parse_instant)]
    since: Option<DateTime<Utc>>,
    /// At most this many records.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Go on from where a cut list stopped (the token it printed, with the same filters).
    #[arg(long)]
    after: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs an `orders` command.
pub async fn run(command: OrdersCommand) -> Result<Ended, CliError> {
    match command {
        OrdersCommand::Show(args) => show(&args).await,
        OrdersCommand::List(args) => list(&args).await,
    }
}

// ---------------------------------------------------------------------------------------------
// show

async fn show(args: &ShowArgs) -> Result<Ended, CliError> {
    let ctx = args.local.open_existing().await?;
    let records = records_of(&ctx, args.order.trim()).await?;
    let mut events: Vec<StoryEvent> = records.iter().flat_map(story_of).collect();
    events.sort_by(|a, b| a.at.cmp(&b.at).then(a.job.cmp(&b.job)));
    let number = records.iter().find_map(|r| r.order_number.clone());
    if args.json {
        let out = json!({
            "tenant": ctx.tenant.as_str(),
            "order_number": number,
            "events": events,
            "records": records.iter().map(record_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_story(&ctx.tenant, number.as_deref(), &records, &events);
    }
    Ok(Ended::attention_if(records.iter().any(needs_attention)))
}

/// Every record of the order `wanted` names: by order number (one indexed query), or by SaleID
/// (its order-download record, then the order number it holds).
async fn records_of(ctx: &LocalContext, wanted: &str) -> Result<Vec<LedgerRecord>, CliError> {
    let store_error = |e| CliError::with(format!("cannot read the records of {wanted}"), e);
    let number = match Uuid::parse_str(wanted) {
        Ok(sale_id) => {
            let key = dearsync_core::state::RecordKey::new(
                &ctx.tenant,
                Job::OrderDownload,
                sale_id.to_string(),
            );
            match ctx.store.record(&key).await.map_err(store_error)? {
                Some(rec) if rec.order_number.is_none() => return Ok(vec![rec]),
                Some(rec) => rec.order_number.unwrap_or_default(),
                None => return Err(not_found(&ctx.tenant, &format!("sale {wanted}"))),
            }
        }
        Err(_) => wanted.to_owned(),
    };
    let records = ctx
        .store
        .records_of_order(&ctx.tenant, &number, 1000)
        .await
        .map_err(store_error)?;
    if records.is_empty() {
        return Err(not_found(&ctx.tenant, &format!("order {number}")));
    }
    Ok(records)
}

fn not_found(tenant: &TenantId, what: &str) -> CliError {
    format!(
        "no record of {what} for tenant {tenant}: no job has seen it. If it should have been \
         downloaded, check that its status and location are selected ([order_download] \
         sale_status, location), that it changed after the first run's look-back, and the \
         tenant's last run (`dearsync status --tenant {tenant}`); order numbers are matched \
         exactly (SO-00123)"
    )
    .into()
}

fn story_of(record: &LedgerRecord) -> Vec<StoryEvent> {
    match record.key.job {
        Job::OrderDownload => dearsync_order_download::story(record),
        Job::ShipmentConfirmation => dearsync_shipment_confirmation::story(record),
        // Inventory records are per snapshot, never about one order.
        Job::InventorySync => Vec::new(),
    }
}

fn needs_attention(record: &LedgerRecord) -> bool {
    matches!(record.state, RecordState::Failed | RecordState::Skipped)
}

fn print_story(
    tenant: &TenantId,
    number: Option<&str>,
    records: &[LedgerRecord],
    events: &[StoryEvent],
) {
    let sales: Vec<&str> = records
        .iter()
        .filter(|r| r.key.job == Job::OrderDownload)
        .map(|r| r.key.entity.as_str())
        .collect();
    println!(
        "order {} (tenant {tenant}; sale {})",
        number.unwrap_or("(number not known)"),
        if sales.is_empty() {
            "not downloaded".to_owned()
        } else {
            sales.join(", ")
        }
    );
    for e in events {
        println!(
            "{}  {:<21}  {:<24}  {}",
            time(e.at),
            e.job.as_str(),
            e.event,
            e.text
        );
    }
    let now: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.key.job, r.key.entity, r.state))
        .collect();
    println!("now: {}", now.join("; "));
}

// ---------------------------------------------------------------------------------------------
// list

/// Problems first: what needs a person, then what is under way, then the rest.
const LIST_ORDER: [RecordState; 5] = [
    RecordState::Failed,
    RecordState::InFlight,
    RecordState::Skipped,
    RecordState::Pending,
    RecordState::Done,
];

/// Where a cut list goes on: the listing (job and state) it stopped in and the position in it.
/// Printed as one `--after` token, `<job>/<state>/<position>`, that resumes the whole list there
/// (the listings after it included), whatever `--job` and `--state` narrow it to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cut {
    job: Job,
    state: RecordState,
    after: Option<PageToken>,
}

impl Cut {
    fn token(&self) -> String {
        format!(
            "{}/{}/{}",
            self.job,
            self.state,
            self.after.as_ref().map_or("", PageToken::position)
        )
    }

    fn parse(text: &str) -> Result<Cut, CliError> {
        let bad = || -> CliError {
            format!("--after `{text}` is not a token a cut list printed (<job>/<state>/<position>)")
                .into()
        };
        let mut parts = text.splitn(3, '/');
        let job = parts.next().and_then(Job::parse).ok_or_else(bad)?;
        let state = parts.next().and_then(RecordState::parse).ok_or_else(bad)?;
        let position = parts.next().ok_or_else(bad)?;
        Ok(Cut {
            job,
            state,
            after: (!position.is_empty()).then(|| PageToken::from_store(position)),
        })
    }
}

/// The listings a list walks, in order: each job, and in it each state, problems first.
fn listings(args: &ListArgs) -> Vec<(Job, RecordState)> {
    let jobs = args.job.map_or(Job::ALL.to_vec(), |j| vec![j]);
    let states: Vec<RecordState> = LIST_ORDER
        .into_iter()
        .filter(|s| args.state.is_empty() || args.state.contains(s))
        .collect();
    jobs.into_iter()
        .flat_map(|j| states.iter().map(move |s| (j, *s)))
        .collect()
}

async fn list(args: &ListArgs) -> Result<Ended, CliError> {
    let resume = args.after.as_deref().map(Cut::parse).transpose()?;
    let ctx = args.local.open_existing().await?;
    let mut walk = listings(args);
    if let Some(r) = &resume {
        let at = walk
            .iter()
            .position(|l| *l == (r.job, r.state))
            .ok_or_else(|| -> CliError {
                format!(
                    "--after points into {} {} records, which this --job / --state leave out",
                    r.job, r.state
                )
                .into()
            })?;
        walk.drain(..at);
    }
    let limit = args.limit.max(1);
    let mut rows = Vec::new();
    let mut cut = None;
    'listings: for (i, &(job, state)) in walk.iter().enumerate() {
        let mut query = LedgerQuery::new(&ctx.tenant, job, state);
        query.changed_since = args.since;
        if i == 0 {
            query.after = resume.as_ref().and_then(|r| r.after.clone());
        }
        loop {
            if rows.len() >= limit {
                let here = Cut {
                    job,
                    state,
                    after: query.after.clone(),
                };
                // Cut where nothing follows (a page that ended exactly at the limit): not cut.
                if let Some(next) = next_record_from(&ctx, args, &walk[i..], here).await? {
                    cut = Some(next);
                }
                break 'listings;
            }
            query.limit = (limit - rows.len()).min(1000);
            let page = ctx
                .store
                .list(&query)
                .await
                .map_err(|e| CliError::with(format!("cannot list {job} {state} records"), e))?;
            rows.extend(page.records);
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
    }
    if args.json {
        print_list_json(&rows, cut.as_ref(), args);
    } else {
        print_list(&rows, cut.as_ref(), args);
    }
    Ok(Ended::Ok)
}

/// Where the next record after `from` is, looking through `rest` of the listings (the first of
/// which is `from`'s): `from` itself, or the start of a later listing that has any; `None` when
/// nothing follows.
async fn next_record_from(
    ctx: &LocalContext,
    args: &ListArgs,
    rest: &[(Job, RecordState)],
    from: Cut,
) -> Result<Option<Cut>, CliError> {
    for (i, &(job, state)) in rest.iter().enumerate() {
        let mut query = LedgerQuery::new(&ctx.tenant, job, state);
        query.changed_since = args.since;
        query.limit = 1;
        if i == 0 {
            query.after = from.after.clone();
        }
        let page = ctx
            .store
            .list(&query)
            .await
            .map_err(|e| CliError::with("cannot list records", e))?;
        if !page.records.is_empty() {
            return Ok(Some(Cut {
                job,
                state,
                after: query.after,
            }));
        }
    }
    Ok(None)
}

/// The command that goes on from `cut`, quoted for a POSIX shell.
fn page_on_command(cut: &Cut, args: &ListArgs) -> String {
    let mut command = "dearsync orders list".to_owned();
    // The same store and tenant, or the command would read another.
    let local = &args.local;
    match &local.table {
        Some(table) => command.push_str(&format!(" --table {}", shell_quoted(table))),
        None => command.push_str(&format!(
            " --state-dir {}",
            shell_quoted(&local.state_dir.display().to_string())
        )),
    }
    if let Some(tenant) = &local.tenant {
        command.push_str(&format!(" --tenant {}", shell_quoted(tenant)));
    }
    if let Some(job) = args.job {
        command.push_str(&format!(" --job {job}"));
    }
    for state in &args.state {
        command.push_str(&format!(" --state {state}"));
    }
    if let Some(since) = args.since {
        let exact = since.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        command.push_str(&format!(" --since {exact}"));
    }
    command.push_str(&format!(" --limit {}", args.limit));
    command.push_str(&format!(" --after {}", shell_quoted(&cut.token())));
    command
}

/// `text` in single quotes for a POSIX shell.
fn shell_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn print_list(rows: &[LedgerRecord], cut: Option<&Cut>, args: &ListArgs) {
    println!(
        "{:<21} {:<9} {:<14} {:<38} {:>8} {:<20} reason",
        "job", "state", "order", "entity", "attempts", "updated"
    );
    for r in rows {
        println!(
            "{:<21} {:<9} {:<14} {:<38} {:>8} {:<20} {}",
            r.key.job.as_str(),
            r.state.as_str(),
            r.order_number.as_deref().unwrap_or("-"),
            r.key.entity,
            r.attempts,
            time(r.updated_at),
            r.reason.as_deref().unwrap_or("")
        );
    }
    match cut {
        Some(cut) => println!(
            "-- cut at {} records (--limit); go on with: {}",
            rows.len(),
            page_on_command(cut, args)
        ),
        None => println!("-- {} records, all shown", rows.len()),
    }
}

fn print_list_json(rows: &[LedgerRecord], cut: Option<&Cut>, args: &ListArgs) {
    let out = json!({
        "records": rows.iter().map(record_json).collect::<Vec<_>>(),
        "cut": cut.is_some(),
        "next": cut.map(|c| json!({
            "after": c.token(),
            "command": page_on_command(c, args),
        })),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

/// A record as `--json` prints it (its detail is the job's own business, left out).
pub fn record_json(r: &LedgerRecord) -> Value {
    json!({
        "job": r.key.job,
        "entity": r.key.entity,
        "order_number": r.order_number,
        "state": r.state,
        "reason": r.reason,
        "attempts": r.attempts,
        "created_at": time(r.created_at),
        "updated_at": time(r.updated_at),
        "due_at": r.due_at.map(time),
    })
}

/// An instant as the commands print it.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("`{text}` is not an RFC 3339 instant (2026-12-01T00:00:00Z): {e}").into()
        })
}
