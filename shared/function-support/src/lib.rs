//! What dear-sync's Lambda handlers share, apart from the Lambda runtime itself: the dependencies
//! built once per cold start, a tenant's context (settings, credentials, DEAR client), and Function
//! URL request and response helpers.

use std::collections::HashMap;
use std::sync::Arc;

pub mod handler;
pub use handler::{HandlerError, SqsBatchResponse, SqsEvent, as_sqs, sqs_batch};

use dear_client::DearClient;
use dearsync_core::{
    Clock, CredentialSource, Credentials, CredentialsError, JobContext, StateStore, TenantId,
    TenantSettings, connect,
    credentials::{Caller, secrets_match},
    push_signature,
    state::{Claim, ClaimTerms, IdempotencyKey, TenantEntry},
};
use serde_json::{Value, json};

/// The header a caller of a Function URL must carry: the tenant's `inbound_secret`.
pub use dearsync_core::credentials::INBOUND_SECRET_HEADER as SECRET_HEADER;

/// What a handler is built from, once per cold start.
pub struct Deps {
    /// State (DynamoDB in Lambda).
    pub store: Arc<dyn StateStore>,
    /// Tenant credentials (Secrets Manager in Lambda).
    pub credentials: Arc<dyn CredentialSource>,
    /// DEAR's API root.
    pub base_url: String,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// Where tenant-configured URLs (order webhook, snapshot URL) may lead: public https only in
    /// production (`DEARSYNC_ALLOW_LOOPBACK_URLS` adds loopback, for tests and development).
    pub outbound: dearsync_outbound::OutboundPolicy,
    /// Where a schedule's run of every tenant fans out to (`TENANT_RUN_QUEUE_URL`): one message
    /// per due tenant, run by parallel workers. Absent, a schedule walks the tenants in turn.
    pub run_queue: Option<Arc<dyn dearsync_core::dispatch::RunQueue>>,
    /// DEAR clients kept across invocations of a warm sandbox (their connections and TLS sessions
    /// with them), one per tenant.
    clients: std::sync::Mutex<HashMap<TenantId, KeptClient>>,
}

/// A tenant's DEAR client and what it was built from: rebuilt when any of that changes, or after
/// DEAR refused its key.
struct KeptClient {
    account_id: String,
    key_hash: String,
    settings: dearsync_core::settings::DearSettings,
    base_url: String,
    client: Arc<DearClient>,
}

impl KeptClient {
    fn fits(
        &self,
        credentials: &Credentials,
        settings: &dearsync_core::settings::DearSettings,
        base_url: &str,
    ) -> bool {
        self.account_id == credentials.account_id
            && self.key_hash == dearsync_core::sha256_hex(credentials.api_key.expose().as_bytes())
            && &self.settings == settings
            && self.base_url == base_url
            && self.client.stats().refused_credentials == 0
    }
}

impl Deps {
    /// Dependencies from their parts.
    pub fn new(
        store: Arc<dyn StateStore>,
        credentials: Arc<dyn CredentialSource>,
        base_url: impl Into<String>,
        clock: Arc<dyn Clock>,
        outbound: dearsync_outbound::OutboundPolicy,
    ) -> Self {
        Deps {
            store,
            credentials,
            base_url: base_url.into(),
            clock,
            outbound,
            run_queue: None,
            clients: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The same, fanning schedules out to `queue`.
    pub fn with_run_queue(mut self, queue: Arc<dyn dearsync_core::dispatch::RunQueue>) -> Self {
        self.run_queue = Some(queue);
        self
    }

    /// The tenant's credentials; if DEAR refused the key its kept client used, the cached secret
    /// is forgotten first, so a rotated key is read at once rather than after the cache's TTL.
    async fn credentials_of(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError> {
        let refused = self
            .kept_clients()
            .get(tenant)
            .is_some_and(|kept| kept.client.stats().refused_credentials > 0);
        if refused {
            tracing::info!(tenant = %tenant, "DEAR refused the key: reading the secret again");
            self.credentials.forget(tenant).await;
            self.kept_clients().remove(tenant);
        }
        self.credentials.credentials(tenant).await
    }

    fn kept_clients(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, KeptClient>> {
        // A panic while holding it leaves only a cache behind: use it as it is.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tenant's kept DEAR client, or a new one (kept) when there is none that fits.
    fn client_for(
        &self,
        tenant: &TenantId,
        credentials: &Credentials,
        settings: &dearsync_core::settings::DearSettings,
    ) -> Result<Arc<DearClient>, dear_client::DearError> {
        let mut kept = self.kept_clients();
        if let Some(k) = kept.get(tenant)
            && k.fits(credentials, settings, &self.base_url)
        {
            return Ok(k.client.clone());
        }
        let client = Arc::new(connect::dear_client(
            credentials,
            &self.base_url,
            settings,
            self.store.clone(),
            self.clock.clone(),
        )?);
        kept.insert(
            tenant.clone(),
            KeptClient {
                account_id: credentials.account_id.clone(),
                key_hash: dearsync_core::sha256_hex(credentials.api_key.expose().as_bytes()),
                settings: settings.clone(),
                base_url: self.base_url.clone(),
                client: client.clone(),
            },
        );
        Ok(client)
    }
}

#[cfg(feature = "aws")]
impl Deps {
    /// The production dependencies from the Lambda environment: `STATE_TABLE` (the DynamoDB state
    /// table), `SECRET_PREFIX` (default `dear-sync/`), `DEAR_BASE_URL` (default DEAR's),
    /// `TENANT_RUN_QUEUE_URL` (optional: the queue schedules fan out to), and the AWS SDK's own
    /// variables.
    pub async fn from_env() -> Result<Self, SetupError> {
        use dearsync_aws::{DynamoStore, SecretsManagerCredentials, load_sdk_config};
        let table = std::env::var("STATE_TABLE").map_err(|_| SetupError::MissingEnv {
            name: "STATE_TABLE",
            what: "the DynamoDB state table",
        })?;
        let prefix = std::env::var("SECRET_PREFIX").unwrap_or_else(|_| "dear-sync/".to_owned());
        let aws = load_sdk_config().await;
        let clock = Arc::new(dearsync_core::SystemClock);
        let deps = Deps::new(
            Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&aws),
                table,
                clock.clone(),
            )),
            Arc::new(SecretsManagerCredentials::new(
                aws_sdk_secretsmanager::Client::new(&aws),
                prefix,
                SecretsManagerCredentials::DEFAULT_TTL,
            )),
            connect::base_url_from_env(),
            clock,
            dearsync_outbound::OutboundPolicy::from_env(),
        );
        Ok(match std::env::var("TENANT_RUN_QUEUE_URL") {
            Ok(url) if !url.trim().is_empty() => deps.with_run_queue(Arc::new(
                dearsync_aws::SqsRunQueue::new(aws_sdk_sqs::Client::new(&aws), url.trim()),
            )),
            _ => deps,
        })
    }
}

impl Deps {
    /// A schedule's fan-out: enqueues `job` on `queue` for every enabled tenant due by `interval`
    /// of its settings (`None`: the tenant does not take the job). Tenants left out (unreadable
    /// settings, a store or queue failure) are named in a retryable error; the ones enqueued run
    /// anyway, and the rest are due again at the next firing.
    pub async fn dispatch(
        &self,
        queue: &dyn dearsync_core::dispatch::RunQueue,
        job: dearsync_core::Job,
        interval: impl Fn(&TenantSettings) -> Option<chrono::Duration>,
    ) -> Result<dearsync_core::dispatch::DispatchSummary, HandlerError> {
        let summary = dearsync_core::dispatch::dispatch(
            self.store.as_ref(),
            queue,
            job,
            self.clock.now(),
            interval,
        )
        .await
        .map_err(|e| {
            let retryable = e.0.is_transient();
            HandlerError::failed(e, retryable)
        })?;
        for line in summary.emf_lines(self.clock.now().timestamp_millis()) {
            println!("{line}");
        }
        tracing::info!(
            job = job.as_str(),
            enqueued = summary.enqueued.len(),
            not_due = summary.not_due,
            failed = summary.failed.len(),
            "dispatched"
        );
        if summary.failed.is_empty() {
            return Ok(summary);
        }
        Err(HandlerError::failed(
            format!(
                "{} tenants not dispatched: {:?}",
                summary.failed.len(),
                summary.failed
            ),
            true,
        ))
    }
}

/// Why a function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A required environment variable is not set (the template sets it).
    #[error("{name} ({what}) is not set")]
    MissingEnv {
        /// The variable.
        name: &'static str,
        /// What it names.
        what: &'static str,
    },
}

/// JSON logs for CloudWatch (level from `RUST_LOG`, default info), without timestamps (Lambda adds them).
///
/// Whatever `RUST_LOG` says, lambda_runtime's trace line with the raw event is never written: a
/// Function URL event carries the caller's `x-dearsync-secret` header.
#[cfg(feature = "aws")]
pub fn init_lambda_tracing() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .without_time()
        .with_filter(lambda_log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        // A second filter the environment cannot widen (an EnvFilter's span directives can
        // re-enable any target inside a span, and lambda_runtime traces inside its own).
        .with_filter(tracing_subscriber::filter::filter_fn(|m| !is_raw_event(m)));
    tracing_subscriber::registry().with(logs).init();
}

/// lambda_runtime's TRACE line with the raw event (Function URL events carry the caller's secret).
#[cfg(feature = "aws")]
fn is_raw_event(m: &tracing::Metadata<'_>) -> bool {
    *m.level() == tracing::Level::TRACE && m.target().starts_with(RAW_EVENT_TARGET)
}

/// Where lambda_runtime logs each raw event.
#[cfg(feature = "aws")]
const RAW_EVENT_TARGET: &str = "lambda_runtime::layers::api_response";

/// The log filter for `rust_log` (default info), with the raw-event trace of lambda_runtime cut.
#[cfg(feature = "aws")]
fn lambda_log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let base = rust_log
        .and_then(|r| tracing_subscriber::EnvFilter::try_new(r).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    match RAW_EVENT_TARGET_CAP.parse() {
        Ok(cap) => base.add_directive(cap),
        // A constant that parses (unit-tested); never reached.
        Err(_) => base,
    }
}

/// lambda_runtime logs each raw event at TRACE under this target: capped at DEBUG.
#[cfg(feature = "aws")]
const RAW_EVENT_TARGET_CAP: &str = "lambda_runtime::layers::api_response=debug";

/// One tenant, ready to work.
pub struct TenantContext {
    /// Who.
    pub tenant: TenantId,
    /// Its validated settings.
    pub settings: TenantSettings,
    /// Its secrets.
    pub credentials: Credentials,
    /// DEAR for it, paced by the account's shared budget.
    pub dear: Arc<DearClient>,
}

/// Why a tenant cannot be worked for. Each names the tenant and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// No settings are stored for it.
    #[error("tenant {0} is not configured (no settings in the state table)")]
    NotConfigured(TenantId),
    /// An operator switched it off: nothing is read from or written to DEAR for it.
    #[error(
        "tenant {0} is disabled: nothing is done for it until it is enabled again \
         (`dearsync tenants put` without --disabled)"
    )]
    Disabled(TenantId),
    /// Its stored settings do not validate.
    #[error("tenant {tenant}: {source}")]
    Settings {
        /// Whose.
        tenant: TenantId,
        /// What is wrong.
        #[source]
        source: dearsync_core::SettingsError,
    },
    /// Its secret is missing, malformed or unreadable.
    #[error("tenant {tenant}: {source}")]
    Credentials {
        /// Whose.
        tenant: TenantId,
        /// What went wrong.
        #[source]
        source: dearsync_core::CredentialsError,
    },
    /// The state store could not be read.
    #[error("tenant {tenant}: state store: {source}")]
    Store {
        /// Whose.
        tenant: TenantId,
        /// What went wrong.
        #[source]
        source: dearsync_core::StoreError,
    },
    /// A DEAR client could not be built from its settings (e.g. a bad base URL).
    #[error("tenant {tenant}: cannot set up the DEAR client: {source}")]
    Client {
        /// Whose.
        tenant: TenantId,
        /// What went wrong.
        #[source]
        source: dear_client::DearError,
    },
}

impl TenantError {
    /// True when the same request may succeed later without anyone changing anything (a store or
    /// secret store outage).
    pub fn is_retryable(&self) -> bool {
        match self {
            TenantError::Store { source, .. } => source.is_transient(),
            TenantError::Credentials { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }

    /// The Function URL status for it: 403 disabled, 404 unknown, 503 when retrying may work, 500
    /// for a configuration an operator must fix.
    pub fn http_status(&self) -> u16 {
        match self {
            TenantError::NotConfigured(_) => 404,
            TenantError::Disabled(_) => 403,
            e if e.is_retryable() => 503,
            _ => 500,
        }
    }
}

impl TenantContext {
    /// What a job needs for this tenant: its DEAR client, and the deployment's store and clock.
    pub fn job_context(&self, deps: &Deps) -> JobContext {
        JobContext::new(
            self.tenant.clone(),
            self.dear.clone(),
            deps.store.clone(),
            deps.clock.clone(),
        )
    }
}

impl Deps {
    /// Loads an enabled tenant: stored settings (validated), its secret, and its DEAR client.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<TenantContext, TenantError> {
        let entry = self
            .store
            .tenant(tenant)
            .await
            .map_err(|source| TenantError::Store {
                tenant: tenant.clone(),
                source,
            })?
            .ok_or_else(|| TenantError::NotConfigured(tenant.clone()))?;
        if !entry.enabled {
            return Err(TenantError::Disabled(tenant.clone()));
        }
        let credentials =
            self.credentials_of(tenant)
                .await
                .map_err(|source| TenantError::Credentials {
                    tenant: tenant.clone(),
                    source,
                })?;
        self.context(&entry, credentials)
    }

    /// The context of a tenant whose entry and secret are already read.
    fn context(
        &self,
        entry: &TenantEntry,
        credentials: Credentials,
    ) -> Result<TenantContext, TenantError> {
        let tenant = &entry.tenant;
        let settings = TenantSettings::from_toml(&entry.settings_toml).map_err(|source| {
            TenantError::Settings {
                tenant: tenant.clone(),
                source,
            }
        })?;
        let dear = self
            .client_for(tenant, &credentials, &settings.dear)
            .map_err(|source| TenantError::Client {
                tenant: tenant.clone(),
                source,
            })?;
        Ok(TenantContext {
            tenant: tenant.clone(),
            settings,
            credentials,
            dear,
        })
    }

    /// Checks a Function URL request's tenant and secret; `Err` is the HTTP response to send.
    ///
    /// Every caller who does not prove the secret gets the same 401, whether the tenant exists or
    /// not (tenant names cannot be probed), and a request without a secret or signature header is
    /// refused before the state store or the secret store is read (it costs nothing). Only a caller
    /// who proves the secret learns that the tenant is disabled or misconfigured. A tenant with a
    /// `warehouse_signing_secret` admits warehouse pushes only signed (see
    /// [`dearsync_core::push_signature`]), each signature once.
    pub async fn authorise(
        &self,
        event: &UrlRequest,
        prefix: &str,
        caller: Caller,
    ) -> Result<TenantContext, Value> {
        let path = event.raw_path.as_deref().unwrap_or("");
        let Some(tenant_text) = path.strip_prefix(prefix).map(|t| t.trim_end_matches('/')) else {
            return Err(http_error(
                404,
                format!("no such path {path:?}; use {prefix}<tenant>"),
            ));
        };
        let present = |name| header(event, name).is_some_and(|v| !v.trim().is_empty());
        if !present(SECRET_HEADER) && !present(push_signature::SIGNATURE_HEADER) {
            return Err(unauthorised());
        }
        let refused = |why: &str| {
            tracing::warn!(tenant = %tenant_text, reason = why, "function URL request refused");
            unauthorised()
        };
        let Ok(tenant) = TenantId::new(tenant_text) else {
            return Err(refused("not a tenant id"));
        };
        let entry = match self.store.tenant(&tenant).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Err(refused("no such tenant")),
            Err(e) => return Err(http_error(503, format!("state store unavailable: {e}"))),
        };
        let credentials = match self.credentials_of(&tenant).await {
            Ok(c) => c,
            Err(source) if source.is_unavailable() => {
                return Err(tenant_error(&TenantError::Credentials {
                    tenant: tenant.clone(),
                    source,
                }));
            }
            Err(e) => return Err(refused(&e.to_string())),
        };
        match self.proof(event, &tenant, &credentials, caller).await {
            Ok(Proof::Proven) => {}
            Ok(Proof::Refused(why)) => return Err(refused(&why)),
            // The signature is proven, so the caller is told plainly (a retry must be signed
            // again); whoever replays a captured request learns nothing new from it.
            Ok(Proof::Replayed) => {
                tracing::warn!(tenant = %tenant, "a signed push was replayed; refused");
                // 400, not 409: the inventory URL answers 409 for a snapshot held for a person.
                return Err(http_error(
                    400,
                    "this signed request was received before: sign each attempt anew (a new X-DearSync-Timestamp)",
                ));
            }
            Err(e) => return Err(http_error(503, format!("state store unavailable: {e}"))),
        }
        if !entry.enabled {
            return Err(tenant_error(&TenantError::Disabled(tenant)));
        }
        self.context(&entry, credentials)
            .map_err(|e| tenant_error(&e))
    }

    /// Whether the request proves `caller`'s secret: a fresh signature seen for the first time
    /// when the tenant signs this caller's requests, else the secret header.
    async fn proof(
        &self,
        event: &UrlRequest,
        tenant: &TenantId,
        credentials: &Credentials,
        caller: Caller,
    ) -> Result<Proof, dearsync_core::StoreError> {
        let signing = credentials.signing_secrets(caller);
        if signing.is_empty() {
            return Ok(secret_header_proof(
                event,
                &credentials.accepted_secrets(caller),
            ));
        }
        let Ok(body) = body_bytes(event) else {
            return Ok(Proof::Refused("the body is not valid base64".into()));
        };
        let signature = header(event, push_signature::SIGNATURE_HEADER);
        if let Err(e) = push_signature::verify(
            &signing,
            header(event, push_signature::TIMESTAMP_HEADER),
            signature,
            &body,
            self.clock.now(),
        ) {
            return Ok(Proof::Refused(e.to_string()));
        }
        // Verified, so the header is there; its first acceptance is remembered for longer than
        // any timestamp stays fresh, and a second one is a replay.
        let seen = push_signature::replay_key(signature.unwrap_or_default());
        let key = IdempotencyKey::new(tenant, "signed-push", seen.clone());
        let window = push_signature::TOLERANCE * 2 + chrono::Duration::minutes(1);
        let terms = ClaimTerms {
            in_progress_for: window,
            keep_for: window,
        };
        match self.store.claim(&key, &seen, terms).await? {
            Claim::Acquired { .. } => Ok(Proof::Proven),
            _ => Ok(Proof::Replayed),
        }
    }
}

/// What a request proved.
enum Proof {
    /// The caller holds the secret.
    Proven,
    /// It does not; why, for the log only.
    Refused(String),
    /// A valid signature already accepted once.
    Replayed,
}

/// The secret header checked against every accepted secret (a rotation's old and new), each in
/// constant time.
fn secret_header_proof(event: &UrlRequest, accepted: &[&dear_client::ApiKey]) -> Proof {
    let Some(given) = header(event, SECRET_HEADER).filter(|g| !g.trim().is_empty()) else {
        return Proof::Refused(format!("no {SECRET_HEADER} header"));
    };
    if accepted.is_empty() {
        return Proof::Refused("the tenant's secret has no inbound secret for this caller".into());
    }
    let matched = accepted
        .iter()
        .fold(false, |any, s| secrets_match(given, s.expose()) | any);
    if matched {
        Proof::Proven
    } else {
        Proof::Refused("wrong secret".into())
    }
}

/// The one answer to a caller who did not prove the tenant's secret.
fn unauthorised() -> Value {
    http_error(401, format!("missing or wrong {SECRET_HEADER} header"))
}

/// The Function URL response for a tenant that cannot be worked for.
pub fn tenant_error(error: &TenantError) -> Value {
    http_error(error.http_status(), error.to_string())
}

/// A Function URL request, typed (`aws_lambda_events`).
pub use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest as UrlRequest;

/// The event as a Function URL request, if it is one (it has `requestContext.http`); a request
/// that does not read as one is answered 400 (`Err`, the response).
pub fn as_url_request(event: &Value) -> Option<Result<UrlRequest, Value>> {
    event.get("requestContext")?.get("http")?;
    Some(
        serde_json::from_value(event.clone())
            .map_err(|e| http_error(400, format!("not a Function URL request: {e}"))),
    )
}

/// The request's method.
pub fn method(request: &UrlRequest) -> &str {
    request.request_context.http.method.as_deref().unwrap_or("")
}

/// A Function URL response, typed (`aws_lambda_events`).
pub use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlResponse as UrlResponse;

/// A Function URL response with a JSON body.
pub fn url_response(status: u16, body: &Value) -> UrlResponse {
    use aws_lambda_events::http::header::{CONTENT_TYPE, HeaderValue};
    let mut response = UrlResponse::default();
    response.status_code = i64::from(status);
    response
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.body = Some(body.to_string());
    response
}

/// A Function URL response with a JSON body, as the handlers return it: one `Value` answers every
/// kind of event a function takes.
pub fn http(status: u16, body: Value) -> Value {
    // A typed response always serialises (text fields, one static header).
    serde_json::to_value(url_response(status, &body)).unwrap_or(Value::Null)
}

/// A Function URL error response: `{"error": message}`.
pub fn http_error(status: u16, message: impl Into<String>) -> Value {
    http(status, json!({ "error": message.into() }))
}

/// A request header (names are case-insensitive), if it is text.
pub fn header<'a>(request: &'a UrlRequest, name: &str) -> Option<&'a str> {
    request.headers.get(name)?.to_str().ok()
}

/// Why a Function URL request's body or query cannot be read (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A flag in the query is neither true nor false.
    #[error("?{name}= must be true or false, got {got:?}")]
    BadFlag {
        /// The parameter.
        name: String,
        /// What it was.
        got: String,
    },
    /// The body is marked base64 but is not.
    #[error("the body is not valid base64: {0}")]
    BadBase64(#[source] base64::DecodeError),
    /// The body is not UTF-8 text.
    #[error("the body is not UTF-8")]
    NotUtf8,
    /// The body is not JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// A `?name=true|false` query parameter of a Function URL request (absent = false); anything else
/// is refused with a message naming it.
pub fn query_flag(request: &UrlRequest, name: &str) -> Result<bool, RequestError> {
    match request
        .query_string_parameters
        .get(name)
        .map(String::as_str)
    {
        None => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(RequestError::BadFlag {
            name: name.to_owned(),
            got: other.to_owned(),
        }),
    }
}

/// The request body's bytes (Function URLs base64-encode binary bodies).
pub fn body_bytes(request: &UrlRequest) -> Result<Vec<u8>, RequestError> {
    let body = request.body.as_deref().unwrap_or("");
    if request.is_base64_encoded {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(RequestError::BadBase64)
    } else {
        Ok(body.as_bytes().to_vec())
    }
}

/// The request body as text.
pub fn body_text(request: &UrlRequest) -> Result<String, RequestError> {
    String::from_utf8(body_bytes(request)?).map_err(|_| RequestError::NotUtf8)
}

/// The request body as JSON.
pub fn body_json(request: &UrlRequest) -> Result<Value, RequestError> {
    serde_json::from_str(&body_text(request)?).map_err(RequestError::NotJson)
}

/// The kind of a JSON value, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Test support: the production adapters on the AWS emulator, with a fresh table and secret prefix.
#[cfg(feature = "test-support")]
pub mod testing {
    use std::sync::Arc;

    use dearsync_aws::{DynamoStore, SecretsManagerCredentials, testing};
    use dearsync_core::state::TenantEntry;
    use dearsync_core::{SystemClock, TenantId};
    use serde_json::Value;

    use super::Deps;

    /// [`Deps`] on the emulator, and the secret prefix its credentials read.
    pub struct EmulatorDeps {
        /// The dependencies.
        pub deps: Deps,
        /// Secrets are named `<prefix><tenant>`.
        pub prefix: String,
        /// The state table's name (`STATE_TABLE` for a function process).
        pub table: String,
        /// The emulator's endpoint (`AWS_ENDPOINT_URL` for a function process).
        pub endpoint: String,
    }

    /// Fresh state table and secret prefix; DEAR at `base_url`.
    pub async fn emulator_deps(base_url: &str) -> EmulatorDeps {
        let table = testing::fresh_table().await;
        let prefix = format!("dear-sync-test/{}/", dearsync_core::memory::new_token());
        let clock = Arc::new(SystemClock);
        let deps = Deps::new(
            Arc::new(DynamoStore::new(
                testing::dynamodb(),
                table.clone(),
                clock.clone(),
            )),
            Arc::new(SecretsManagerCredentials::new(
                testing::secrets_manager(),
                &prefix,
                std::time::Duration::from_secs(60),
            )),
            base_url,
            clock,
            // The tests' sinks and snapshot servers listen on 127.0.0.1.
            dearsync_outbound::OutboundPolicy {
                allow_loopback: true,
            },
        );
        EmulatorDeps {
            deps,
            prefix,
            table,
            endpoint: testing::endpoint().to_owned(),
        }
    }

    impl EmulatorDeps {
        /// Stores `tenant`'s secret.
        pub async fn put_secret(&self, tenant: &str, secret: &Value) {
            testing::secrets_manager()
                .create_secret()
                .name(format!("{}{tenant}", self.prefix))
                .secret_string(secret.to_string())
                .send()
                .await
                .expect("create the tenant secret");
        }

        /// Replaces `tenant`'s secret (a rotation).
        pub async fn update_secret(&self, tenant: &str, secret: &Value) {
            testing::secrets_manager()
                .put_secret_value()
                .secret_id(format!("{}{tenant}", self.prefix))
                .secret_string(secret.to_string())
                .send()
                .await
                .expect("update the tenant secret");
        }

        /// Stores `tenant`'s settings.
        pub async fn put_tenant(&self, tenant: &str, enabled: bool, settings_toml: &str) {
            self.deps
                .store
                .put_tenant(&TenantEntry {
                    tenant: TenantId::new(tenant).expect("valid tenant id"),
                    enabled,
                    settings_toml: settings_toml.to_owned(),
                })
                .await
                .expect("store the tenant");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use dearsync_core::state::TenantDirectory;
    use dearsync_core::{CredentialsError, MemoryStore, SystemClock};

    use super::*;

    #[test]
    fn a_function_url_response_is_the_typed_shape_lambda_reads() {
        assert_eq!(
            http(409, json!({"outcome": "held"})),
            json!({
                "statusCode": 409,
                "headers": { "content-type": "application/json" },
                "body": "{\"outcome\":\"held\"}",
                "isBase64Encoded": false,
                "cookies": [],
            })
        );
    }

    /// One tenant's secret with `inbound_secret` "s3cret"; counts the reads.
    struct Secrets(AtomicU32);

    #[async_trait]
    impl CredentialSource for Secrets {
        async fn credentials(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Credentials::from_secret_json(
                r#"{"account_id":"a","api_key":"k","inbound_secret":"s3cret"}"#,
                tenant,
                "test",
            )
        }
    }

    fn request(path: &str, secret: Option<&str>) -> Value {
        let headers = match secret {
            Some(s) => json!({ SECRET_HEADER: s }),
            None => json!({}),
        };
        json!({
            "version": "2.0", "rawPath": path, "headers": headers, "isBase64Encoded": false,
            "requestContext": { "timeEpoch": 1795867200000i64, "http": { "method": "POST" } }
        })
    }

    /// The event as the handlers read it.
    fn url(event: Value) -> UrlRequest {
        as_url_request(&event)
            .expect("a Function URL event")
            .expect("it reads")
    }

    #[cfg(feature = "aws")]
    #[test]
    fn the_raw_event_trace_is_cut_whatever_rust_log_says() {
        assert!(
            RAW_EVENT_TARGET_CAP
                .parse::<tracing_subscriber::filter::Directive>()
                .is_ok()
        );
        for rust_log in [
            None,
            Some("trace"),
            Some("lambda_runtime=trace"),
            Some("not a filter["),
        ] {
            let filter = lambda_log_filter(rust_log).to_string();
            assert!(
                filter.contains(RAW_EVENT_TARGET_CAP),
                "{rust_log:?}: {filter}"
            );
        }
    }

    #[tokio::test]
    async fn callers_without_the_secret_all_get_the_same_401_and_cost_no_secret_read() {
        let clock = Arc::new(SystemClock);
        let store = Arc::new(MemoryStore::new(clock.clone()));
        store
            .put_tenant(&TenantEntry {
                tenant: TenantId::new("acme").unwrap(),
                enabled: false,
                settings_toml: String::new(),
            })
            .await
            .unwrap();
        let secrets = Arc::new(Secrets(AtomicU32::new(0)));
        let deps = Deps::new(
            store,
            secrets.clone(),
            "https://dear.invalid/",
            clock,
            dearsync_outbound::OutboundPolicy::PUBLIC,
        );
        let answer = |r: Result<TenantContext, Value>| r.err().expect("refused");
        let no_header = answer(
            deps.authorise(&url(request("/x/acme", None)), "/x/", Caller::Warehouse)
                .await,
        );
        assert_eq!(secrets.0.load(Ordering::Relaxed), 0, "no secret read");
        let unknown = answer(
            deps.authorise(
                &url(request("/x/nobody", Some("guess"))),
                "/x/",
                Caller::Warehouse,
            )
            .await,
        );
        let bad_id = answer(
            deps.authorise(
                &url(request("/x/NO BODY", Some("guess"))),
                "/x/",
                Caller::Warehouse,
            )
            .await,
        );
        let wrong = answer(
            deps.authorise(
                &url(request("/x/acme", Some("guess"))),
                "/x/",
                Caller::Warehouse,
            )
            .await,
        );
        for other in [&unknown, &bad_id, &wrong] {
            assert_eq!(other, &no_header);
        }
        assert_eq!(no_header["statusCode"], 401);
        // The secret's holder learns the tenant is disabled.
        let right = answer(
            deps.authorise(
                &url(request("/x/acme", Some("s3cret"))),
                "/x/",
                Caller::Warehouse,
            )
            .await,
        );
        assert_eq!(right["statusCode"], 403, "{right}");
    }

    #[test]
    fn a_function_url_event_is_read_typed_and_a_malformed_one_is_answered_400() {
        let good = url(request("/x/acme", Some("s3cret")));
        assert_eq!(
            (method(&good), header(&good, "X-DEARSYNC-SECRET")),
            ("POST", Some("s3cret")),
            "headers by any case"
        );
        let mut bad = request("/x/acme", None);
        bad["isBase64Encoded"] = json!("no");
        let answer = as_url_request(&bad).unwrap().unwrap_err();
        assert_eq!(answer["statusCode"], 400, "{answer}");
        assert!(as_url_request(&json!({ "tenant": "acme" })).is_none());
    }

    /// A tenant whose warehouse signs its pushes, rotating from `old-key` to `new-key`.
    struct SigningSecrets;

    #[async_trait]
    impl CredentialSource for SigningSecrets {
        async fn credentials(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError> {
            Credentials::from_secret_json(
                r#"{"account_id":"a","api_key":"k","inbound_secret":"s3cret",
                    "warehouse_signing_secret":"new-key",
                    "warehouse_signing_secret_previous":"old-key"}"#,
                tenant,
                "test",
            )
        }
    }

    fn signed(key: &str, at: i64, body: &str) -> Value {
        let mut event = request("/x/acme", None);
        event["body"] = json!(body);
        event["headers"] = json!({
            "X-DearSync-Timestamp": at.to_string(),
            "X-DearSync-Signature": push_signature::sign(key.as_bytes(), at, body.as_bytes()),
        });
        event
    }

    #[tokio::test]
    async fn a_signing_tenant_takes_each_fresh_signed_push_once_and_nothing_else() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = Arc::new(dearsync_core::ManualClock::at(now));
        let store = Arc::new(MemoryStore::new(clock.clone()));
        store
            .put_tenant(&TenantEntry {
                tenant: TenantId::new("acme").unwrap(),
                enabled: true,
                settings_toml: String::new(),
            })
            .await
            .unwrap();
        let deps = Deps::new(
            store,
            Arc::new(SigningSecrets),
            "https://dear.invalid/",
            clock,
            dearsync_outbound::OutboundPolicy::PUBLIC,
        );
        let status = |r: Result<TenantContext, Value>| match r {
            Ok(_) => 200,
            Err(answer) => answer["statusCode"].as_u64().unwrap(),
        };
        let t = now.timestamp();
        for (what, event, want) in [
            ("signed now", signed("new-key", t, "{}"), 200),
            ("the same request again", signed("new-key", t, "{}"), 400),
            (
                "signed with the previous key",
                signed("old-key", t - 10, "{}"),
                200,
            ),
            (
                "signed with another key",
                signed("guess", t, "{\"a\":1}"),
                401,
            ),
            (
                "signed 6 minutes ago",
                signed("new-key", t - 360, "{}"),
                401,
            ),
            (
                "the secret header alone",
                request("/x/acme", Some("s3cret")),
                401,
            ),
        ] {
            let got = status(deps.authorise(&url(event), "/x/", Caller::Warehouse).await);
            assert_eq!(got, want, "{what}");
        }
        let mut tampered = signed("new-key", t + 1, "{}");
        tampered["body"] = json!("{\"a\":1}");
        assert_eq!(
            status(
                deps.authorise(&url(tampered), "/x/", Caller::Warehouse)
                    .await
            ),
            401,
            "a changed body"
        );
        // DEAR's webhooks are not signed this way: their secret header still admits them.
        assert_eq!(
            status(
                deps.authorise(
                    &url(request("/x/acme", Some("s3cret"))),
                    "/x/",
                    Caller::DearWebhook
                )
                .await
            ),
            200
        );
    }
}
