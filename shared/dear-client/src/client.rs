//! The HTTP client: authentication, rate budget, retries, error classification, endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::Stream;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::budget::{Lane, RateBudget, SlidingWindowBudget};
use crate::config::DearConfig;
use crate::error::DearError;
use crate::models::*;
use crate::page::{ListPage, Listed, MAX_LIMIT};

/// Whether a request changes DEAR's state: decides what may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// A DEAR API v2 client for one account.
///
/// Cheap to clone (shared connection pool and budget). Every request takes one slot of the rate
/// budget, including retries.
#[derive(Clone)]
pub struct DearClient {
    http: reqwest::Client,
    config: Arc<DearConfig>,
    budget: Arc<dyn RateBudget>,
    counters: Arc<Counters>,
    lane: Lane,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    throttled: AtomicU64,
    failed_attempts: AtomicU64,
    refused_credentials: AtomicU64,
}

/// What this client (and its clones) sent to DEAR so far: for run summaries and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent, retries included (each took one slot of the rate budget).
    pub calls: u64,
    /// Answers that said "throttled" (429/503).
    pub throttled: u64,
    /// Attempts that failed transiently (5xx, timeouts, dropped connections).
    pub failed_attempts: u64,
    /// Answers that refused the credentials (403): a client kept across invocations is rebuilt
    /// from a fresh read of the secret after one.
    pub refused_credentials: u64,
}

impl std::fmt::Debug for DearClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DearClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Vec<u8>),
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// A failure after which a read may be retried; a write's outcome is unknown.
    Transient {
        reason: String,
        sent: bool,
        /// An answer came from DEAR's side, so it is done with the request (a timeout, a dropped
        /// connection or a gateway's 502/504 leave it possibly still working on it).
        settled: bool,
    },
    Fatal(DearError),
}

#[derive(serde::Deserialize)]
struct ErrorModel {
    #[serde(rename = "ErrorCode", alias = "errorCode")]
    code: i64,
    #[serde(rename = "Exception", alias = "exception", default)]
    exception: Option<String>,
}

/// DEAR's Error Model, as one object or an array, if the body is one.
fn error_model(body: &[u8]) -> Option<(i64, String)> {
    // Error bodies are small and start with the key; skip the parse for data pages.
    let head = &body[..body.len().min(256)];
    if !head
        .windows(9)
        .any(|w| w == b"ErrorCode" || w == b"errorCode")
    {
        return None;
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    let models: Vec<ErrorModel> = match first {
        b'[' => serde_json::from_slice(body).ok()?,
        b'{' => vec![serde_json::from_slice(body).ok()?],
        _ => return None,
    };
    let code = models.first()?.code;
    let message = models
        .iter()
        .filter_map(|m| m.exception.as_deref())
        .collect::<Vec<_>>()
        .join("; ");
    Some((code, message))
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl DearClient {
    /// A client with the default in-process budget of `config.calls_per_minute`.
    pub fn new(config: DearConfig) -> Result<Self, DearError> {
        let budget = Arc::new(SlidingWindowBudget::per_minute(config.calls_per_minute));
        Self::with_budget(config, budget)
    }

    /// A client whose calls are gated by `budget` (e.g. one shared by several processes).
    pub fn with_budget(config: DearConfig, budget: Arc<dyn RateBudget>) -> Result<Self, DearError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .timeout(config.retry.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("dear-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DearError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            config: Arc::new(config),
            budget,
            counters: Arc::default(),
            lane: Lane::default(),
        })
    }

    /// The same client (connection pool, budget, counters) whose calls are for work of `lane`.
    pub fn in_lane(&self, lane: Lane) -> Self {
        Self {
            lane,
            ..self.clone()
        }
    }

    /// The lane its calls are for.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Calls, throttled answers and failed attempts so far (shared by clones).
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            calls: self.counters.calls.load(Ordering::Relaxed),
            throttled: self.counters.throttled.load(Ordering::Relaxed),
            failed_attempts: self.counters.failed_attempts.load(Ordering::Relaxed),
            refused_credentials: self.counters.refused_credentials.load(Ordering::Relaxed),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DearConfig {
        &self.config
    }

    /// One attempt, classified.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Attempt {
        let mut url = match self.config.base_url.join(path) {
            Ok(u) => u,
            Err(e) => return Attempt::Fatal(DearError::Config(format!("bad path `{path}`: {e}"))),
        };
        if !params.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut request = self
            .http
            .request(method.clone(), url)
            .header("api-auth-accountid", &self.config.account_id)
            .header("api-auth-applicationkey", self.config.api_key.expose())
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.body(body.to_vec());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                // A connect failure means DEAR never saw the request: safe to retry even a write.
                let sent = !e.is_connect();
                return Attempt::Transient {
                    reason: error_chain(&e),
                    sent,
                    settled: false,
                };
            }
        };
        let status = response.status();
        let wait = retry_after(response.headers());
        let bytes = match response.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                return Attempt::Transient {
                    reason: format!(
                        "HTTP {} but the body broke off: {}",
                        status.as_u16(),
                        error_chain(&e)
                    ),
                    sent: true,
                    settled: true,
                };
            }
        };
        self.classify(method, path, status, wait, bytes)
    }

    fn classify(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        wait: Option<Duration>,
        body: Vec<u8>,
    ) -> Attempt {
        let code = status.as_u16();
        let model = error_model(&body);
        // With HTTP 200 the Error Model's own code says what happened.
        let effective = match (&model, status.is_success()) {
            (Some((ec, _)), true) if (100..600).contains(ec) => *ec as u16,
            (Some(_), true) => 400,
            _ => code,
        };
        if effective == 429 || effective == 503 {
            return Attempt::Throttled {
                status: effective,
                retry_after: wait,
            };
        }
        if effective == 403 {
            let detail = model
                .as_ref()
                .map(|(_, m)| format!(": DEAR says \"{m}\""))
                .unwrap_or_default();
            return Attempt::Fatal(DearError::Credentials {
                method: method.to_string(),
                path: path.to_owned(),
                detail,
            });
        }
        if effective >= 500 {
            let reason = match &model {
                Some((ec, m)) => format!("HTTP {code}, ErrorCode {ec}: {m}"),
                None => format!("HTTP {code}: {}", snippet(&body)),
            };
            // A gateway's 502/504 may be answered while DEAR still works on the request.
            let settled = !matches!(code, 502 | 504);
            return Attempt::Transient {
                reason,
                sent: true,
                settled,
            };
        }
        if let Some((ec, message)) = model {
            return Attempt::Fatal(DearError::Rejected {
                method: method.to_string(),
                path: path.to_owned(),
                status: code,
                code: ec,
                message,
            });
        }
        if !body.is_empty() && !looks_like_json(&body) {
            return Attempt::Fatal(DearError::NotJson {
                method: method.to_string(),
                path: path.to_owned(),
                status: code,
                snippet: snippet(&body),
            });
        }
        if !status.is_success() {
            return Attempt::Fatal(DearError::Rejected {
                method: method.to_string(),
                path: path.to_owned(),
                status: code,
                code: i64::from(code),
                message: if body.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    snippet(&body)
                },
            });
        }
        Attempt::Done(body)
    }

    /// Sends a request with budget, retries and tracing; returns the body of a successful answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        body: Option<Vec<u8>>,
        access: Access,
    ) -> Result<Vec<u8>, DearError> {
        let policy = &self.config.retry;
        let account = self.config.account_id.as_str();
        let mut transient_failures = 0u32;
        let mut throttles = 0u32;
        let mut attempt_no = 0u32;
        loop {
            attempt_no += 1;
            self.budget.acquire(account, self.lane).await?;
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let outcome =
                page_instead_of_json(self.attempt(&method, path, params, body.as_deref()).await);
            let latency_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Attempt::Done(bytes) => {
                    tracing::debug!(%method, path, status = "ok", latency_ms, attempt = attempt_no, "dear call");
                    return Ok(bytes);
                }
                Attempt::Fatal(err) => {
                    tracing::debug!(%method, path, status = "error", latency_ms, attempt = attempt_no, error = %err, "dear call");
                    return Err(self.fatal(err, access));
                }
                Attempt::Throttled {
                    status,
                    retry_after,
                } => {
                    throttles += 1;
                    self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                    let pause = retry_after.unwrap_or(policy.throttle_pause);
                    tracing::warn!(%method, path, status, latency_ms, attempt = attempt_no, pause_ms = pause.as_millis() as u64, "dear throttled");
                    if access == Access::Write {
                        // DEAR's docs say a throttled call is not processed, but a 503 may come
                        // from in front of DEAR after it applied the write: the caller reads DEAR
                        // back (after the pause) instead of the client resending blindly.
                        self.budget.throttled(account, pause).await;
                        return Err(throttled_write(&method, path, status));
                    }
                    if throttles > policy.max_throttle_retries {
                        return Err(DearError::Throttled {
                            method: method.to_string(),
                            path: path.to_owned(),
                            status,
                            attempts: attempt_no,
                            retry_after,
                        });
                    }
                    self.budget.throttled(account, pause).await;
                }
                Attempt::Transient {
                    reason,
                    sent,
                    settled,
                } => {
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%method, path, latency_ms, attempt = attempt_no, reason = %reason, "dear call failed");
                    if access == Access::Write && sent {
                        return Err(DearError::OutcomeUnknown {
                            method: method.to_string(),
                            path: path.to_owned(),
                            reason,
                            settled,
                        });
                    }
                    transient_failures += 1;
                    if transient_failures > policy.max_read_retries {
                        return Err(DearError::Unavailable {
                            method: method.to_string(),
                            path: path.to_owned(),
                            attempts: attempt_no,
                            reason,
                        });
                    }
                    tokio::time::sleep(self.backoff(transient_failures)).await;
                }
            }
        }
    }

    /// An answer no retry changes, counted when DEAR refused the credentials; a write's is
    /// an unknown outcome unless DEAR's answer proves it was refused untouched.
    fn fatal(&self, err: DearError, access: Access) -> DearError {
        if matches!(err, DearError::Credentials { .. }) {
            self.counters
                .refused_credentials
                .fetch_add(1, Ordering::Relaxed);
        }
        match access {
            Access::Write => unknown_unless_refused(err),
            Access::Read => err,
        }
    }

    /// Full-jitter exponential backoff: uniform in [0, min(max, base * 2^(n-1))].
    fn backoff(&self, failures: u32) -> Duration {
        let policy = &self.config.retry;
        let exp = policy
            .base_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let cap = exp.min(policy.max_delay);
        cap.mul_f64(fastrand::f64())
    }

    fn decode<T: DeserializeOwned>(
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<T, DearError> {
        serde_json::from_slice(body).map_err(|e| DearError::Decode {
            method: method.to_string(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<T, DearError> {
        let body = self
            .call(Method::GET, path, params, None, Access::Read)
            .await?;
        Self::decode(&Method::GET, path, &body)
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        payload: Option<&B>,
    ) -> Result<T, DearError> {
        let body = match payload {
            Some(p) => Some(serde_json::to_vec(p).map_err(|e| DearError::Decode {
                method: method.to_string(),
                path: path.to_owned(),
                reason: format!("cannot encode the request: {e}"),
            })?),
            None => None,
        };
        let answer = self
            .call(method.clone(), path, params, body, Access::Write)
            .await?;
        // 204: decode from `null` so that `()`/Option callers work and others say what is missing.
        let body: &[u8] = if answer.is_empty() { b"null" } else { &answer };
        // DEAR took the write and answered success, but not with the object it sends: whether it
        // applied the write cannot be told from this answer.
        Self::decode(&method, path, body).map_err(unknown_unless_refused)
    }

    /// One page of a list endpoint.
    pub async fn list_page<T: Listed>(
        &self,
        path: &str,
        params: &[(&'static str, String)],
        page: u32,
        limit: u32,
    ) -> Result<ListPage<T>, DearError> {
        let mut p = params.to_vec();
        p.push(("Page", page.to_string()));
        p.push(("Limit", limit.clamp(1, MAX_LIMIT).to_string()));
        let mut result: ListPage<T> = self.get(path, &p).await?;
        result.page = page;
        Ok(result)
    }

    /// Every page of a list endpoint, in order, as a stream; ends when `Total` is reached or a page
    /// comes back short.
    pub fn pages<T: Listed>(
        &self,
        path: &'static str,
        params: Vec<(&'static str, String)>,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<T>, DearError>> + Send + '_ {
        let limit = limit.clamp(1, MAX_LIMIT);
        futures::stream::try_unfold(Some(1u32), move |next| {
            let params = params.clone();
            async move {
                let Some(page_no) = next else { return Ok(None) };
                let page: ListPage<T> = self.list_page(path, &params, page_no, limit).await?;
                let next = if page.is_last(limit) {
                    None
                } else {
                    Some(page_no + 1)
                };
                Ok(Some((page, next)))
            }
        })
    }

    // ---- account -------------------------------------------------------------------------------

    /// `GET me`: the cheapest credentials check.
    pub async fn me(&self) -> Result<Me, DearError> {
        self.get("me", &[]).await
    }

    // ---- sales ---------------------------------------------------------------------------------

    /// `GET saleList`, every page.
    pub fn sale_list(
        &self,
        query: &SaleListQuery,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<SaleListItem>, DearError>> + Send + '_ {
        self.pages("saleList", query.to_params(), limit)
    }

    /// `GET sale?ID=`.
    pub async fn sale(&self, id: Uuid) -> Result<Sale, DearError> {
        self.get(
            "sale",
            &[
                ("ID", id.to_string()),
                ("HideInventoryMovements", "true".into()),
            ],
        )
        .await
    }

    // ---- fulfilment ----------------------------------------------------------------------------

    /// `GET sale/fulfilment?SaleID=`.
    pub async fn fulfilments(&self, sale_id: Uuid) -> Result<SaleFulfilments, DearError> {
        self.get("sale/fulfilment", &[("SaleID", sale_id.to_string())])
            .await
    }

    /// `POST sale/fulfilment`: opens another fulfilment (the sale becomes an Advanced Sale).
    pub async fn create_fulfilment(&self, sale_id: Uuid) -> Result<SaleFulfilments, DearError> {
        #[derive(Serialize)]
        struct Body {
            #[serde(rename = "SaleID")]
            sale_id: Uuid,
        }
        self.write(
            Method::POST,
            "sale/fulfilment",
            &[],
            Some(&Body { sale_id }),
        )
        .await
    }

    /// `DELETE sale/fulfilment?TaskID=&Void=`: undo (or void) an Advanced Sale's fulfilment.
    pub async fn delete_fulfilment(&self, task_id: Uuid, void: bool) -> Result<(), DearError> {
        let _: serde_json::Value = self
            .write::<(), _>(
                Method::DELETE,
                "sale/fulfilment",
                &[("TaskID", task_id.to_string()), ("Void", void.to_string())],
                None,
            )
            .await?;
        Ok(())
    }

    /// `GET sale/fulfilment/pick?TaskID=`.
    pub async fn pick(&self, task_id: Uuid) -> Result<PickPack, DearError> {
        self.get("sale/fulfilment/pick", &[("TaskID", task_id.to_string())])
            .await
    }

    /// `POST sale/fulfilment/pick` (or `PUT` with `replace`).
    pub async fn write_pick(&self, pick: &PickPack, replace: bool) -> Result<PickPack, DearError> {
        let method = if replace { Method::PUT } else { Method::POST };
        self.write(method, "sale/fulfilment/pick", &[], Some(pick))
            .await
    }

    /// `GET sale/fulfilment/pack?TaskID=`.
    pub async fn pack(&self, task_id: Uuid) -> Result<PickPack, DearError> {
        self.get("sale/fulfilment/pack", &[("TaskID", task_id.to_string())])
            .await
    }

    /// `POST sale/fulfilment/pack` (or `PUT` with `replace`).
    pub async fn write_pack(&self, pack: &PickPack, replace: bool) -> Result<PickPack, DearError> {
        let method = if replace { Method::PUT } else { Method::POST };
        self.write(method, "sale/fulfilment/pack", &[], Some(pack))
            .await
    }

    /// `GET sale/fulfilment/ship?TaskID=`.
    pub async fn ship(&self, task_id: Uuid) -> Result<Ship, DearError> {
        self.get("sale/fulfilment/ship", &[("TaskID", task_id.to_string())])
            .await
    }

    /// `POST sale/fulfilment/ship` (or `PUT` with `replace`; set `add_tracking_numbers` to edit an
    /// authorised shipment's tracking and carrier).
    pub async fn write_ship(&self, ship: &Ship, replace: bool) -> Result<Ship, DearError> {
        let method = if replace { Method::PUT } else { Method::POST };
        self.write(method, "sale/fulfilment/ship", &[], Some(ship))
            .await
    }

    // ---- stock ---------------------------------------------------------------------------------

    /// `POST stockadjustment`.
    pub async fn create_stock_adjustment(
        &self,
        adjustment: &StockAdjustmentWrite,
    ) -> Result<StockAdjustment, DearError> {
        self.write(Method::POST, "stockadjustment", &[], Some(adjustment))
            .await
    }

    /// `PUT stockadjustment` (the body carries the TaskID).
    pub async fn update_stock_adjustment(
        &self,
        adjustment: &StockAdjustmentWrite,
    ) -> Result<StockAdjustment, DearError> {
        self.write(Method::PUT, "stockadjustment", &[], Some(adjustment))
            .await
    }

    /// `GET stockadjustment?TaskID=`.
    pub async fn stock_adjustment(&self, task_id: Uuid) -> Result<StockAdjustment, DearError> {
        self.get("stockadjustment", &[("TaskID", task_id.to_string())])
            .await
    }

    /// `GET stockadjustmentList`, every page (optionally one status).
    pub fn stock_adjustment_list(
        &self,
        status: Option<AdjustmentStatus>,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<StockAdjustmentListItem>, DearError>> + Send + '_ {
        let params = status
            .map(|s| vec![("Status", s.to_string())])
            .unwrap_or_default();
        self.pages("stockadjustmentList", params, limit)
    }

    /// `DELETE stockadjustment?ID=&Void=`.
    pub async fn delete_stock_adjustment(
        &self,
        task_id: Uuid,
        void: bool,
    ) -> Result<StockAdjustment, DearError> {
        self.write::<(), _>(
            Method::DELETE,
            "stockadjustment",
            &[("ID", task_id.to_string()), ("Void", void.to_string())],
            None,
        )
        .await
    }

    /// `GET ref/productavailability`, every page.
    pub fn product_availability(
        &self,
        query: &AvailabilityQuery,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<ProductAvailability>, DearError>> + Send + '_ {
        self.pages("ref/productavailability", query.to_params(), limit)
    }

    // ---- reference -----------------------------------------------------------------------------

    /// `GET product`, every page.
    pub fn products(
        &self,
        query: &ProductQuery,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<Product>, DearError>> + Send + '_ {
        self.pages("product", query.to_params(), limit)
    }

    /// `GET ref/location`, every page (optionally names starting with `name`).
    pub fn locations(
        &self,
        name: Option<&str>,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<Location>, DearError>> + Send + '_ {
        let params = name
            .map(|n| vec![("Name", n.to_owned())])
            .unwrap_or_default();
        self.pages("ref/location", params, limit)
    }

    /// `GET ref/carrier`, every page.
    pub fn carriers(
        &self,
        limit: u32,
    ) -> impl Stream<Item = Result<ListPage<Carrier>, DearError>> + Send + '_ {
        self.pages("ref/carrier", Vec::new(), limit)
    }

    /// `POST ref/carrier {Description}`.
    pub async fn create_carrier(&self, description: &str) -> Result<Carrier, DearError> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "Description")]
            description: &'a str,
        }
        let value: serde_json::Value = self
            .write(
                Method::POST,
                "ref/carrier",
                &[],
                Some(&Body { description }),
            )
            .await?;
        // DEAR may answer with the carrier or with a CarrierList envelope: ours is the one with
        // our description, or the only one listed.
        let one = match value.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("CarrierList"))
                .map(|(_, v)| v.clone())
        }) {
            Some(serde_json::Value::Array(list)) => {
                let same = |c: &serde_json::Value| {
                    c.get("Description")
                        .and_then(|d| d.as_str())
                        .is_some_and(|d| d.trim().eq_ignore_ascii_case(description.trim()))
                };
                let only = (list.len() == 1).then(|| list[0].clone());
                list.iter()
                    .find(|c| same(c))
                    .cloned()
                    .or(only)
                    .unwrap_or_default()
            }
            _ => value,
        };
        serde_json::from_value(one)
            .map_err(|e| DearError::Decode {
                method: "POST".into(),
                path: "ref/carrier".into(),
                reason: e.to_string(),
            })
            .map_err(unknown_unless_refused)
    }

    /// `GET ref/priceTier`: the ten tier names.
    pub async fn price_tiers(&self) -> Result<Vec<PriceTier>, DearError> {
        #[derive(serde::Deserialize)]
        struct Envelope {
            #[serde(rename = "PriceTiers", default)]
            price_tiers: Vec<PriceTier>,
        }
        let e: Envelope = self.get("ref/priceTier", &[]).await?;
        Ok(e.price_tiers)
    }

    // ---- webhooks ------------------------------------------------------------------------------

    /// `GET webhooks`.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, DearError> {
        let list: WebhookList = self.get("webhooks", &[]).await?;
        Ok(list.webhooks)
    }

    /// `POST webhooks`; DEAR answers with the envelope or the bare subscription (both read).
    pub async fn create_webhook(&self, webhook: &Webhook) -> Result<Webhook, DearError> {
        let value: serde_json::Value = self
            .write(Method::POST, "webhooks", &[], Some(webhook))
            .await?;
        let decode = |v: serde_json::Value| {
            serde_json::from_value::<Webhook>(v).map_err(|e| DearError::Decode {
                method: "POST".into(),
                path: "webhooks".into(),
                reason: e.to_string(),
            })
        };
        match value.get("Webhooks").and_then(|w| w.as_array()) {
            Some(list) => list
                .iter()
                .find(|w| {
                    w.get("Type").and_then(|t| t.as_str()) == Some(webhook.event_type.as_str())
                        && w.get("ExternalURL").and_then(|u| u.as_str())
                            == Some(webhook.external_url.as_str())
                })
                .or(list.last())
                .cloned()
                .map(decode)
                .unwrap_or_else(|| {
                    Err(DearError::Decode {
                        method: "POST".into(),
                        path: "webhooks".into(),
                        reason: "the answer lists no webhook".into(),
                    })
                }),
            None => decode(value),
        }
    }

    /// `PUT webhooks`: replaces subscription `id` (URL, headers, active flag) with `webhook`.
    pub async fn update_webhook(&self, id: Uuid, webhook: &Webhook) -> Result<(), DearError> {
        let body = Webhook {
            id: Some(id),
            ..webhook.clone()
        };
        let _: serde_json::Value = self
            .write(Method::PUT, "webhooks", &[], Some(&body))
            .await?;
        Ok(())
    }

    /// `DELETE webhooks?ID=`.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), DearError> {
        let _: serde_json::Value = self
            .write::<(), _>(Method::DELETE, "webhooks", &[("ID", id.to_string())], None)
            .await?;
        Ok(())
    }
}

/// A success status with a page instead of JSON (a proxy's or gateway's HTML) is not DEAR's
/// answer: like a 5xx, a read is retried and a write's outcome is unknown. (Our paths are fixed,
/// so it is never a mistyped endpoint.)
fn page_instead_of_json(attempt: Attempt) -> Attempt {
    match attempt {
        Attempt::Fatal(DearError::NotJson {
            status, snippet, ..
        }) if (200..300).contains(&status) => Attempt::Transient {
            reason: format!("HTTP {status} with a non-JSON body: {snippet}"),
            sent: true,
            settled: true,
        },
        other => other,
    }
}

/// A throttled write: DEAR's docs say a throttled call is not processed, but the answer may come
/// from in front of DEAR after it applied the write, so its outcome is unknown (and settled: the
/// pause has been waited).
fn throttled_write(method: &Method, path: &str, status: u16) -> DearError {
    DearError::OutcomeUnknown {
        method: method.to_string(),
        path: path.to_owned(),
        reason: format!("HTTP {status}, throttled: DEAR may have applied it before answering"),
        settled: true,
    }
}

/// What an answer to a write means when it is not a success DEAR could have sent: a refusal only
/// when DEAR said so (its Error Model, a 4xx, bad credentials); a success status whose body is not
/// the expected JSON (an HTML page from a proxy, a truncated or different object) leaves the write's
/// fate unknown, so the caller must read DEAR back before deciding.
fn unknown_unless_refused(err: DearError) -> DearError {
    match err {
        DearError::Decode {
            method,
            path,
            reason,
        } => DearError::OutcomeUnknown {
            method,
            path,
            reason: format!("the success answer is not the expected object: {reason}"),
            settled: true,
        },
        other => other,
    }
}

/// The error and its sources, one line (reqwest and the AWS SDK hide the useful part in the chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_model_as_object_or_array() {
        assert_eq!(
            error_model(
                br#"[{"ErrorCode":400,"Exception":"a"},{"ErrorCode":400,"Exception":"b"}]"#
            ),
            Some((400, "a; b".into()))
        );
        assert_eq!(
            error_model(
                br#"{"ErrorCode":400,"Exception":"Required attribute X is not provided."}"#
            ),
            Some((400, "Required attribute X is not provided.".into()))
        );
        assert_eq!(error_model(br#"{"Total":0,"Page":1,"SaleList":[]}"#), None);
    }
}
