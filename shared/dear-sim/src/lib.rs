//! # dear-sim
#![recursion_limit = "512"]
//!
//! A stateful, in-memory stand-in for the DEAR / Cin7 Core Inventory API v2 (the blueprint of
//! `shared/dear-api.md` §11): authentication, a per-account sliding-window rate limit answered with
//! 429 or 503, case-insensitive paths and query keys, HTML for unknown paths, `saleList` in an order
//! that is not by `Updated`, the pick → pack → ship state machine with DEAR's rejections, stock
//! adjustments as absolute targets, and fault injection. Admin endpoints live under `/admin/`.
#![warn(missing_docs)]

pub mod api;
pub mod body;
pub mod model;
pub mod render;
pub mod rules;
pub mod seed;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query as AxQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::model::Dataset;
use crate::rules::ApiError;
use crate::seed::SeedSpec;

/// The default account of `dearsync sim`.
pub const DEFAULT_ACCOUNT_ID: &str = "sim-account";
/// The default API key of `dearsync sim`.
pub const DEFAULT_API_KEY: &str = "sim-api-key";
/// The default port of `dearsync sim`.
pub const DEFAULT_PORT: u16 = 4780;
/// The API prefix, matched case-insensitively.
pub const API_PREFIX: &str = "/externalapi/v2/";

/// Simulator settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Calls per 60 s per account; 0 = unlimited.
    pub rate_limit: u32,
    /// 429 (current docs, seen live) or 503 (older docs).
    pub throttle_status: u16,
    /// Send `Retry-After: N` with throttling answers (DEAR documents none).
    pub retry_after_secs: Option<u64>,
    /// Status of the HTML page for unknown paths (404, or 200 as DEAR sometimes does).
    pub unknown_path_status: u16,
    /// List `saleList` in a stable pseudo-random order (default), or by order number.
    pub shuffle_sales: bool,
    /// How long a "timeout" fault hangs before answering 504.
    pub hang_ms: u64,
    /// Scale of DEAR's webhook retry schedule (1.0 = real minutes; 0.001 makes a minute 60 ms).
    pub webhook_time_scale: f64,
    /// The `Status` of a shipped simple sale not yet invoiced (undocumented; see `docs/simulator.md`).
    pub shipped_sale_status: rules::ShippedSaleStatus,
    /// `GET me`'s `MaximumDecimalPlacesInQuantity` as DEAR's reference shows it, a format string
    /// (`"N4"`, default), or as a number (`4`).
    pub quantity_places_as_text: bool,
    /// Refuse a stock adjustment line without `UnitCost` on every line (DEAR's reference marks it
    /// required, a live 400 is reported; default), or only for products with no stock there.
    pub unit_cost_on_every_line: bool,
    /// List no fulfilment for a simple sale before any fulfilment work (`Fulfilments: []`, as a
    /// reference example shows; its task is then the SaleID), instead of its first, empty one
    /// (default).
    pub simple_sale_lists_no_fulfilment_before_work: bool,
    /// Open a DRAFT pack holding the picked lines when a pick is authorised (reference examples
    /// show a DRAFT pack right after an authorised pick), instead of leaving it NOT AVAILABLE
    /// (default).
    pub draft_pack_after_pick: bool,
    /// Refuse a `PUT` of a pack while the pack is NOT AVAILABLE (there is nothing to replace),
    /// instead of taking it as the pack (default: the reference lists the same exceptions for
    /// `POST` and `PUT`, and NOT AVAILABLE is not one of them).
    pub put_needs_an_open_stage: bool,
    /// DEAR's Error Model as an array of `{ErrorCode, Exception}` (the reference; default) or as one
    /// object (reported live).
    pub errors_as_object: bool,
    /// Apply a rate-limited write and then answer it "throttled", as a gateway or a limiter behind
    /// the application would; by default (the docs' reading) a throttled call is not processed.
    pub throttled_writes_applied: bool,
    /// `ref/productavailability`'s `Bin: null` row is the location's total, bins included, instead
    /// of the stock outside bins (default: one row per stock cell).
    pub bin_null_row_is_total: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            rate_limit: 60,
            throttle_status: 429,
            retry_after_secs: None,
            unknown_path_status: 404,
            shuffle_sales: true,
            hang_ms: 30_000,
            webhook_time_scale: 1.0,
            shipped_sale_status: rules::ShippedSaleStatus::default(),
            quantity_places_as_text: true,
            unit_cost_on_every_line: true,
            simple_sale_lists_no_fulfilment_before_work: false,
            draft_pack_after_pick: false,
            put_needs_an_open_stage: false,
            errors_as_object: false,
            throttled_writes_applied: false,
            bin_null_row_is_total: false,
        }
    }
}

/// An injected fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this HTTP status and an Error Model.
    Status(u16),
    /// Hang for `hang_ms`, then 504.
    Timeout,
    /// Send headers, then break the connection.
    Drop,
    /// HTTP 200 with an Error Model carrying this ErrorCode.
    ErrorModel200(i64),
    /// HTTP 200 with an HTML page.
    Html200,
}

/// When a route's calls fail.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultRule {
    /// Route, lower case, relative to the API root (e.g. `salelist`); `*` for all.
    pub route: String,
    /// HTTP method, or all when absent.
    pub method: Option<String>,
    /// Faults for the next calls, in order; then `probability` applies.
    pub sequence: VecDeque<Fault>,
    /// Chance (0–1) that a later call gets `fault`.
    pub probability: f64,
    /// The fault drawn by `probability`.
    pub fault: Option<Fault>,
    /// Extra latency for every matching call.
    pub latency_ms: u64,
    /// Apply the request first, then fail (a write whose outcome is unknown to the client).
    pub after_apply: bool,
}

/// Call counters of one account.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CallStats {
    /// Every authenticated call, throttled ones included.
    pub total: u64,
    /// Calls answered "throttled".
    pub throttled: u64,
    /// Calls per `METHOD route`.
    pub by_route: BTreeMap<String, u64>,
    /// Largest number of accepted calls seen in any 60-second window.
    pub max_in_window: u64,
    /// Calls answered with an injected fault.
    pub faulted: u64,
}

struct Tenant {
    api_key: String,
    data: Dataset,
    window: VecDeque<Instant>,
    stats: CallStats,
    faults: Vec<FaultRule>,
}

/// The simulator: shared state behind the HTTP server.
pub struct Sim {
    config: Mutex<SimConfig>,
    deliveries: Mutex<Vec<Delivery>>,
    http: reqwest::Client,
    tenants: Mutex<HashMap<String, Tenant>>,
    rng: Mutex<fastrand::Rng>,
    salt: u64,
}

impl Sim {
    /// A simulator with one account holding `data`.
    pub fn new(config: SimConfig, account_id: &str, api_key: &str, data: Dataset) -> Arc<Self> {
        let sim = Arc::new(Self {
            config: Mutex::new(config),
            deliveries: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            tenants: Mutex::new(HashMap::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(7)),
            salt: 0x5eed,
        });
        sim.add_account(account_id, api_key, data);
        sim
    }

    /// Adds (or replaces) an account.
    pub fn add_account(&self, account_id: &str, api_key: &str, data: Dataset) {
        self.lock().insert(
            account_id.to_owned(),
            Tenant {
                api_key: api_key.to_owned(),
                data,
                window: VecDeque::new(),
                stats: CallStats::default(),
                faults: Vec::new(),
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tenant>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads an account's data.
    pub fn with_data<R>(&self, account: &str, f: impl FnOnce(&Dataset) -> R) -> Option<R> {
        self.lock().get(account).map(|t| f(&t.data))
    }

    /// Changes an account's data.
    pub fn with_data_mut<R>(&self, account: &str, f: impl FnOnce(&mut Dataset) -> R) -> Option<R> {
        self.lock().get_mut(account).map(|t| f(&mut t.data))
    }

    /// An account's call counters.
    pub fn calls(&self, account: &str) -> Option<CallStats> {
        self.lock().get(account).map(|t| t.stats.clone())
    }

    /// Adds a fault rule to an account.
    pub fn add_fault(&self, account: &str, rule: FaultRule) {
        if let Some(t) = self.lock().get_mut(account) {
            t.faults.push(rule);
        }
    }

    /// Removes every fault rule of an account.
    pub fn clear_faults(&self, account: &str) {
        if let Some(t) = self.lock().get_mut(account) {
            t.faults.clear();
        }
    }

    /// Changes the settings.
    pub fn set_config(&self, config: SimConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The settings.
    pub fn config(&self) -> SimConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every webhook delivery attempt so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queues `events` for every active subscription of their type on `account`.
    pub fn dispatch(self: &Arc<Self>, account: &str, events: Vec<api::Event>) {
        if events.is_empty() {
            return;
        }
        let hooks: Vec<model::SimWebhook> = self
            .with_data(account, |d| d.webhooks.clone())
            .unwrap_or_default();
        for event in events {
            for hook in hooks
                .iter()
                .filter(|h| h.is_active && h.event_type.eq_ignore_ascii_case(&event.event_type))
            {
                let sim = self.clone();
                let account = account.to_owned();
                let hook = hook.clone();
                let event = event.clone();
                tokio::spawn(async move { sim.deliver(&account, hook, event).await });
            }
        }
    }

    /// DEAR's schedule: 1 minute after the event, then +5, +10, +15, +20, +25; after six failed
    /// attempts the subscription is deactivated.
    async fn deliver(&self, account: &str, hook: model::SimWebhook, event: api::Event) {
        const MINUTES: [u64; 6] = [1, 5, 10, 15, 20, 25];
        let scale = self.config().webhook_time_scale.max(0.0);
        for (i, minutes) in MINUTES.iter().enumerate() {
            tokio::time::sleep(Duration::from_secs_f64(*minutes as f64 * 60.0 * scale)).await;
            let active = self
                .with_data(account, |d| {
                    d.webhooks.iter().any(|w| w.id == hook.id && w.is_active)
                })
                .unwrap_or(false);
            if !active {
                return;
            }
            let mut request = self.http.post(&hook.url).json(&event.payload);
            match hook.auth_type.as_str() {
                "basicauth" => {
                    request = request
                        .basic_auth(hook.user.clone().unwrap_or_default(), hook.password.clone())
                }
                "bearerauth" => {
                    request = request.bearer_auth(hook.token.clone().unwrap_or_default())
                }
                _ => {}
            }
            for (k, v) in &hook.headers {
                request = request.header(k, v);
            }
            let (ok, status, error) = match request.send().await {
                Ok(r) => (r.status().is_success(), Some(r.status().as_u16()), None),
                Err(e) => (false, None, Some(e.to_string())),
            };
            self.deliveries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Delivery {
                    webhook_id: hook.id,
                    event_type: event.event_type.clone(),
                    attempt: i as u32 + 1,
                    ok,
                    status,
                    error,
                    payload: event.payload.clone(),
                });
            if ok {
                return;
            }
        }
        self.with_data_mut(account, |d| {
            if let Some(w) = d.webhooks.iter_mut().find(|w| w.id == hook.id) {
                w.is_active = false;
            }
        });
    }

    /// The router: DEAR's API plus `/admin/*`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin/health", get(|| async { "ok" }))
            .route("/admin/calls", get(admin_calls).delete(admin_reset_calls))
            .route(
                "/admin/faults",
                post(admin_add_fault).delete(admin_clear_faults),
            )
            .route("/admin/seed", post(admin_seed))
            .route("/admin/load", post(admin_load))
            .route("/admin/state", get(admin_state))
            .route("/admin/config", get(admin_get_config).put(admin_put_config))
            .route("/admin/webhook-deliveries", get(admin_deliveries))
            .route("/admin/sales/{id}", axum::routing::patch(admin_edit_sale))
            .fallback(dear_api)
            .with_state(self.clone())
    }
}

/// One webhook delivery attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// Subscription.
    pub webhook_id: uuid::Uuid,
    /// Event type.
    pub event_type: String,
    /// 1–6.
    pub attempt: u32,
    /// 2xx received.
    pub ok: bool,
    /// HTTP status received.
    pub status: Option<u16>,
    /// Transport error.
    pub error: Option<String>,
    /// What was sent.
    pub payload: Value,
}

/// A running simulator.
pub struct SimServer {
    /// The shared state (for in-process tests).
    pub sim: Arc<Sim>,
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SimServer {
    /// The API root to give the client.
    pub fn base_url(&self) -> String {
        format!("http://{}/ExternalApi/v2/", self.addr)
    }

    /// The admin root.
    pub fn admin_url(&self) -> String {
        format!("http://{}/admin/", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a simulator on `addr` (port 0 picks a free one) and serves until dropped.
pub async fn start(sim: Arc<Sim>, addr: SocketAddr) -> std::io::Result<SimServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = sim.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(SimServer {
        sim,
        addr,
        shutdown: Some(tx),
    })
}

/// A simulator with one seeded account (`DEFAULT_ACCOUNT_ID` / `DEFAULT_API_KEY`) on 127.0.0.1:0.
pub async fn start_seeded(config: SimConfig, spec: &SeedSpec) -> std::io::Result<SimServer> {
    let sim = Sim::new(
        config,
        DEFAULT_ACCOUNT_ID,
        DEFAULT_API_KEY,
        seed::generate(spec),
    );
    start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

fn error_model(status: u16, message: &str, as_object: bool) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        code,
        axum::Json(error_body(i64::from(status), message, as_object)),
    )
        .into_response()
}

/// `[{ErrorCode, Exception}]`, or the one object.
fn error_body(code: i64, message: &str, as_object: bool) -> Value {
    let one = json!({"ErrorCode": code, "Exception": message});
    if as_object { one } else { json!([one]) }
}

/// DEAR's rate-limit answer, with `Retry-After` when configured.
fn throttled(config: &SimConfig) -> Response {
    let mut r = error_model(
        config.throttle_status,
        "You reached 60 calls per minute API limit",
        config.errors_as_object,
    );
    if let Some(s) = config.retry_after_secs
        && let Ok(v) = s.to_string().parse()
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn html(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!DOCTYPE html><html><head><title>Page not found</title></head><body><h1>Oops! Page not found</h1></body></html>",
    )
        .into_response()
}

fn fault_response(fault: &Fault, config: &SimConfig) -> Option<Response> {
    Some(match fault {
        Fault::Status(s) if *s == 429 || *s == 503 => error_model(
            *s,
            "You reached 60 calls per minute API limit",
            config.errors_as_object,
        ),
        Fault::Status(s) => error_model(
            *s,
            "The object passed to the API could not be parsed or some unexpected error occurred",
            config.errors_as_object,
        ),
        Fault::ErrorModel200(code) => (
            StatusCode::OK,
            axum::Json(error_body(*code, "Injected error", config.errors_as_object)),
        )
            .into_response(),
        Fault::Html200 => html(200),
        Fault::Drop => {
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other(
                    "connection dropped by fault injection",
                ))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .ok()?
        }
        Fault::Timeout => {
            let _ = config;
            return None;
        }
    })
}

async fn fail(fault: &Fault, config: &SimConfig) -> Response {
    match fault_response(fault, config) {
        Some(r) => r,
        None => {
            tokio::time::sleep(Duration::from_millis(config.hang_ms)).await;
            error_model(504, "Gateway timeout", config.errors_as_object)
        }
    }
}

/// Every DEAR call goes through here.
async fn dear_api(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = sim.config();
    let path = uri.path().to_ascii_lowercase();
    let Some(route) = path
        .strip_prefix(API_PREFIX)
        .map(|r| r.trim_end_matches('/').to_owned())
    else {
        return html(config.unknown_path_status);
    };
    if !api::ROUTES.contains(&route.as_str()) {
        return html(config.unknown_path_status);
    }
    let account = headers
        .get("api-auth-accountid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let key = headers
        .get("api-auth-applicationkey")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let now = Instant::now();
    let mut applied_then_throttled = false;
    let chosen = {
        let mut tenants = sim.lock();
        let Some(t) = tenants
            .get_mut(&account)
            .filter(|t| !key.is_empty() && t.api_key == key)
        else {
            return error_model(403, "Incorrect credentials!", config.errors_as_object);
        };
        t.stats.total += 1;
        *t.stats
            .by_route
            .entry(format!("{method} {route}"))
            .or_default() += 1;
        if config.rate_limit > 0 {
            while t
                .window
                .front()
                .is_some_and(|s| now.duration_since(*s) >= Duration::from_secs(60))
            {
                t.window.pop_front();
            }
            if t.window.len() >= config.rate_limit as usize {
                t.stats.throttled += 1;
                if !(config.throttled_writes_applied && method != Method::GET) {
                    return throttled(&config);
                }
                applied_then_throttled = true;
            }
        }
        if !applied_then_throttled {
            t.window.push_back(now);
        }
        t.stats.max_in_window = t.stats.max_in_window.max(t.window.len() as u64);
        // Faults: the first matching rule decides (a call already throttled gets none).
        let mut chosen: Option<(Fault, bool, u64)> = None;
        let mut latency = 0;
        for rule in t.faults.iter_mut().filter(|_| !applied_then_throttled) {
            let route_ok = rule.route == "*" || rule.route.eq_ignore_ascii_case(&route);
            let method_ok = rule
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
            if !(route_ok && method_ok) {
                continue;
            }
            latency = latency.max(rule.latency_ms);
            let fault = match rule.sequence.pop_front() {
                Some(f) => Some(f),
                None if rule.probability > 0.0 => {
                    let roll = sim.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
                    if roll < rule.probability {
                        rule.fault.clone()
                    } else {
                        None
                    }
                }
                None => None,
            };
            if let Some(f) = fault {
                chosen = Some((f, rule.after_apply, rule.latency_ms));
                break;
            }
        }
        if chosen.is_some() {
            t.stats.faulted += 1;
        }
        (chosen, latency)
    };
    let (fault, latency) = chosen;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some((f, false, _)) = &fault {
        return fail(f, &config).await;
    }
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error_model(
                    400,
                    &format!("The request was not in a correct form: {e}"),
                    config.errors_as_object,
                );
            }
        }
    };
    let q = body::Query::parse(uri.query());
    let ctx = api::Ctx {
        now: chrono::Utc::now().naive_utc(),
        shuffle: config.shuffle_sales,
        salt: sim.salt,
        shipped_sale_status: config.shipped_sale_status,
        quantity_places_as_text: config.quantity_places_as_text,
        unit_cost_on_every_line: config.unit_cost_on_every_line,
        hide_untouched_simple_fulfilment: config.simple_sale_lists_no_fulfilment_before_work,
        draft_pack_after_pick: config.draft_pack_after_pick,
        put_needs_an_open_stage: config.put_needs_an_open_stage,
        bin_null_row_is_total: config.bin_null_row_is_total,
    };
    let mut events = Vec::new();
    let result = {
        let mut tenants = sim.lock();
        match tenants.get_mut(&account) {
            Some(t) => api::handle(
                &mut t.data,
                &ctx,
                method.as_str(),
                &route,
                &q,
                &parsed,
                &mut events,
            ),
            None => Err(ApiError {
                status: 403,
                message: "Incorrect credentials!".into(),
            }),
        }
    };
    sim.dispatch(&account, events);
    if applied_then_throttled {
        return throttled(&config);
    }
    if let Some((f, true, _)) = &fault {
        return fail(f, &config).await;
    }
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => error_model(e.status, &e.message, config.errors_as_object),
    }
}

#[derive(Deserialize)]
struct AccountParam {
    account: Option<String>,
}

impl AccountParam {
    fn id(&self) -> String {
        self.account
            .clone()
            .unwrap_or_else(|| DEFAULT_ACCOUNT_ID.to_owned())
    }
}

fn not_found(account: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": format!("no account {account}")})),
    )
        .into_response()
}

async fn admin_calls(State(sim): State<Arc<Sim>>, AxQuery(a): AxQuery<AccountParam>) -> Response {
    match sim.calls(&a.id()) {
        Some(c) => axum::Json(c).into_response(),
        None => not_found(&a.id()),
    }
}

async fn admin_reset_calls(
    State(sim): State<Arc<Sim>>,
    AxQuery(a): AxQuery<AccountParam>,
) -> Response {
    match sim.lock().get_mut(&a.id()) {
        Some(t) => {
            t.stats = CallStats::default();
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(&a.id()),
    }
}

async fn admin_add_fault(
    State(sim): State<Arc<Sim>>,
    AxQuery(a): AxQuery<AccountParam>,
    axum::Json(rule): axum::Json<FaultRule>,
) -> Response {
    sim.add_fault(&a.id(), rule);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_clear_faults(
    State(sim): State<Arc<Sim>>,
    AxQuery(a): AxQuery<AccountParam>,
) -> Response {
    sim.clear_faults(&a.id());
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_seed(
    State(sim): State<Arc<Sim>>,
    AxQuery(a): AxQuery<AccountParam>,
    axum::Json(spec): axum::Json<SeedSpec>,
) -> Response {
    let data = seed::generate(&spec);
    let counts = json!({"products": data.products.len(), "sales": data.sales.len()});
    match sim.with_data_mut(&a.id(), |d| *d = data) {
        Some(()) => axum::Json(counts).into_response(),
        None => not_found(&a.id()),
    }
}

async fn admin_load(
    State(sim): State<Arc<Sim>>,
    AxQuery(a): AxQuery<AccountParam>,
    axum::Json(data): axum::Json<Dataset>,
) -> Response {
    match sim.with_data_mut(&a.id(), |d| *d = data) {
        Some(()) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&a.id()),
    }
}

async fn admin_state(State(sim): State<Arc<Sim>>, AxQuery(a): AxQuery<AccountParam>) -> Response {
    match sim.with_data(&a.id(), |d| serde_json::to_value(d)) {
        Some(Ok(v)) => axum::Json(v).into_response(),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        None => not_found(&a.id()),
    }
}

async fn admin_get_config(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.config()).into_response()
}

async fn admin_put_config(
    State(sim): State<Arc<Sim>>,
    axum::Json(c): axum::Json<SimConfig>,
) -> Response {
    sim.set_config(c);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_deliveries(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.deliveries()).into_response()
}

/// What `PATCH /admin/sales/{id}` can change, as a user would in DEAR's UI.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SaleEdit {
    /// Authorise the order (allocates stock; fires `Sale/OrderAuthorised`).
    pub authorise_order: bool,
    /// Void the sale.
    pub void: bool,
    /// New order memo.
    pub order_memo: Option<String>,
    /// New customer reference.
    pub customer_reference: Option<String>,
    /// New ship-to display lines only, as an admin typing over the address on the order does:
    /// DEAR shows these, while the address fields keep the old address.
    pub shipping_display_lines: Option<[String; 2]>,
    /// New quantity per SKU on the order lines (while the order is not authorised).
    pub quantities: BTreeMap<String, rust_decimal::Decimal>,
    /// Additional attribute N (1–10) → value.
    pub attributes: BTreeMap<u8, String>,
}

impl Sim {
    /// Edits a sale as a DEAR user would; bumps `Updated`.
    pub fn edit_sale(
        self: &Arc<Self>,
        account: &str,
        id: uuid::Uuid,
        edit: &SaleEdit,
    ) -> Result<(), ApiError> {
        let now = chrono::Utc::now().naive_utc();
        let events = self
            .with_data_mut(account, |d| -> Result<Vec<api::Event>, ApiError> {
                let mut events = Vec::new();
                {
                    let s = d
                        .sales
                        .get_mut(&id)
                        .ok_or_else(|| ApiError::bad(format!("Sale {id} not found")))?;
                    if let Some(m) = &edit.order_memo {
                        s.order_memo = m.clone();
                    }
                    if let Some(r) = &edit.customer_reference {
                        s.customer_reference = r.clone();
                    }
                    if let Some(lines) = &edit.shipping_display_lines {
                        s.shipping.display_lines = Some(lines.clone());
                    }
                    for (n, v) in &edit.attributes {
                        let slot = s
                            .attributes
                            .get_mut(usize::from(*n).wrapping_sub(1))
                            .ok_or_else(|| {
                                ApiError::bad(format!("AdditionalAttribute{n} does not exist"))
                            })?;
                        *slot = v.clone();
                    }
                    for (sku, q) in &edit.quantities {
                        if s.order_status.is_authorised() {
                            return Err(ApiError::bad("Order is AUTHORISED: lines cannot change"));
                        }
                        let line = s
                            .lines
                            .iter_mut()
                            .find(|l| l.sku.eq_ignore_ascii_case(sku))
                            .ok_or_else(|| {
                                ApiError::bad(format!("SKU {sku} is not on the order"))
                            })?;
                        line.quantity = *q;
                    }
                    if edit.void {
                        s.voided = true;
                        events.push(api::sale_event(s, None, "Sale/Voided"));
                    }
                    s.updated = now;
                }
                if edit.authorise_order {
                    rules::authorise_order(d, id, now)?;
                    events.push(api::sale_event(&d.sales[&id], None, "Sale/OrderAuthorised"));
                }
                Ok(events)
            })
            .ok_or_else(|| ApiError::bad(format!("no account {account}")))??;
        self.dispatch(account, events);
        Ok(())
    }
}

async fn admin_edit_sale(
    State(sim): State<Arc<Sim>>,
    axum::extract::Path(id): axum::extract::Path<uuid::Uuid>,
    AxQuery(a): AxQuery<AccountParam>,
    axum::Json(edit): axum::Json<SaleEdit>,
) -> Response {
    match sim.edit_sale(&a.id(), id, &edit) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        // The simulator's own admin API: always the reference's shape.
        Err(e) => error_model(e.status, &e.message, false),
    }
}
