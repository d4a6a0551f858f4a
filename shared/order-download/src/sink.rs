//! Where canonical orders go: a port, with an NDJSON sink (file or stdout, for the CLI) and an
//! HTTPS webhook sink signed with HMAC-SHA256 (for Lambda).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::cancel::OrderCancel;
use crate::canonical::CanonicalOrder;

/// A delivery that did not happen, or a sink that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The order could not be encoded as JSON.
    #[error("cannot encode the order: {0}")]
    Encode(#[source] serde_json::Error),
    /// Writing to the file or stdout failed.
    #[error("cannot write to {target}: {source}")]
    Write {
        /// `stdout` or the file's path.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the orders file back failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The webhook URL is not one this deployment calls.
    #[error("webhook URL: {0}")]
    Url(#[source] dearsync_outbound::OutboundError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] dearsync_outbound::OutboundError),
    /// The warehouse did not take it: its answer, or why it could not be reached, after the
    /// retries that could help.
    #[error("{0}")]
    NotTaken(String),
}

/// Why the NDJSON file sink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SinkOpenError {
    /// Another process has the file open as its sink (it holds the file's lock).
    #[error("another dearsync run is writing orders to {}; try again when it ends", path.display())]
    InUse {
        /// The orders file.
        path: PathBuf,
    },
    /// The file cannot be opened or locked.
    #[error("cannot open {} for orders: {source}", path.display())]
    Io {
        /// The orders file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The id of one delivery ([`CanonicalOrder::delivery_id`]).
pub fn delivery_id(order: &CanonicalOrder) -> String {
    order.delivery_id.clone()
}

/// What the warehouse side answered a delivery: kept in the ledger, shown by `orders show`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The answer, briefly (`HTTP 202 Accepted: {"id":"W-1"}`, `appended to orders.ndjson`).
    pub answer: Option<String>,
}

impl Receipt {
    /// A receipt saying `answer`.
    pub fn says(answer: impl Into<String>) -> Receipt {
        Receipt {
            answer: Some(answer.into()),
        }
    }
}

/// Receives orders.
#[async_trait]
pub trait OrderSink: Send + Sync {
    /// Delivers one order; an error leaves it to be retried later.
    async fn deliver(&self, order: &CanonicalOrder) -> Result<Receipt, SinkError>;

    /// Tells the warehouse an order it was sent is cancelled; an error leaves it to be retried.
    async fn cancel(&self, cancel: &OrderCancel) -> Result<(), SinkError>;

    /// Whether the delivery `id` ([`delivery_id`]) already arrived, if the sink can tell
    /// (`None`: it cannot). Used after a crash between delivering and recording it.
    async fn was_delivered(&self, id: &str) -> Result<Option<bool>, SinkError> {
        let _ = id;
        Ok(None)
    }

    /// The sink's identity when no other process can be delivering through it while it is open
    /// (the NDJSON file, locked for the sink's life): a delivery another run left in flight *to
    /// this same sink* is then over, and is taken over at once instead of after the longest
    /// delivery time. `None`: others may deliver through it too (a webhook).
    fn sole_deliverer(&self) -> Option<String> {
        None
    }
}

/// Orders as JSON lines, to a file (appended and synced per order) or stdout.
pub struct NdjsonSink {
    target: Target,
}

enum Target {
    Stdout(Mutex<std::io::Stdout>),
    /// The path, the open file, and its identity (device and inode: a file put in the path's
    /// place is another sink).
    File(PathBuf, Mutex<std::fs::File>, String),
}

impl NdjsonSink {
    /// Orders to stdout (a crash between delivery and its record may repeat one order).
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout(Mutex::new(std::io::stdout())),
        }
    }

    /// Orders appended to `path` (created if missing), locked for the sink's life so that two
    /// runs never write the same file at once; the lock goes with the process, even a killed one.
    pub fn file(path: impl AsRef<Path>) -> Result<Self, SinkOpenError> {
        let path = path.as_ref().to_path_buf();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SinkOpenError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(SinkOpenError::InUse { path }),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(SinkOpenError::Io { path, source });
            }
        }
        let identity = file_identity(&file, &path)?;
        end_a_torn_line(&mut file, &path)?;
        Ok(Self {
            target: Target::File(path, Mutex::new(file), identity),
        })
    }
}

/// `file:<device>:<inode>` of the open file.
fn file_identity(file: &std::fs::File, path: &Path) -> Result<String, SinkOpenError> {
    let meta = file.metadata().map_err(|source| SinkOpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(format!("file:{}:{}", meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(format!("file:{}", canonical.display()))
    }
}

/// A run killed mid-write leaves a last line without its newline: end it, so the next order
/// starts on a line of its own (the torn line is then skipped as no delivery).
fn end_a_torn_line(file: &mut std::fs::File, path: &Path) -> Result<(), SinkOpenError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| SinkOpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut reader = std::fs::File::open(path).map_err(io)?;
    reader.seek(SeekFrom::Start(len - 1)).map_err(io)?;
    let mut last = [0u8; 1];
    reader.read_exact(&mut last).map_err(io)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")
            .and_then(|_| file.sync_data())
            .map_err(io)?;
    }
    Ok(())
}

#[async_trait]
impl OrderSink for NdjsonSink {
    async fn deliver(&self, order: &CanonicalOrder) -> Result<Receipt, SinkError> {
        self.write_line(serde_json::to_vec(order).map_err(SinkError::Encode)?)?;
        Ok(Receipt::says(match &self.target {
            Target::File(path, _, _) => format!("appended to {}", path.display()),
            Target::Stdout(_) => "written to standard output".to_owned(),
        }))
    }

    async fn cancel(&self, cancel: &OrderCancel) -> Result<(), SinkError> {
        self.write_line(serde_json::to_vec(cancel).map_err(SinkError::Encode)?)
    }

    fn sole_deliverer(&self) -> Option<String> {
        match &self.target {
            Target::File(_, _, identity) => Some(identity.clone()),
            Target::Stdout(_) => None,
        }
    }

    async fn was_delivered(&self, id: &str) -> Result<Option<bool>, SinkError> {
        let Target::File(path, _, _) = &self.target else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Ids {
            /// Orders only: a cancellation line is no delivery.
            schema: String,
            sale_id: String,
            version: String,
            /// Absent in lines written before deliveries had their own id.
            #[serde(default)]
            delivery_id: Option<String>,
        }
        let file = std::fs::File::open(path).map_err(|source| SinkError::Read {
            path: path.clone(),
            source,
        })?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|source| SinkError::Read {
                path: path.clone(),
                source,
            })?;
            // A torn last line (the crash hit mid-write) is not a delivery.
            if let Ok(ids) = serde_json::from_str::<Ids>(&line)
                && ids.schema == crate::canonical::SCHEMA
                && ids
                    .delivery_id
                    .unwrap_or_else(|| format!("{}:{}", ids.sale_id, ids.version))
                    == id
            {
                return Ok(Some(true));
            }
        }
        Ok(Some(false))
    }
}

impl NdjsonSink {
    /// Appends one JSON line.
    fn write_line(&self, mut line: Vec<u8>) -> Result<(), SinkError> {
        line.push(b'\n');
        match &self.target {
            Target::Stdout(out) => {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                out.write_all(&line)
                    .and_then(|_| out.flush())
                    .map_err(|source| SinkError::Write {
                        target: "stdout".into(),
                        source,
                    })
            }
            Target::File(path, file, _) => {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                // Synced before the ledger says "done", so a crash can only leave it delivered
                // and not yet recorded — which `was_delivered` then finds.
                file.write_all(&line)
                    .and_then(|_| file.sync_data())
                    .map_err(|source| SinkError::Write {
                        target: path.display().to_string(),
                        source,
                    })
            }
        }
    }
}

/// The header carrying the HMAC-SHA256 of the body: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-DearSync-Signature";
/// The header carrying the delivery id (also sent as `Idempotency-Key`).
pub const DELIVERY_HEADER: &str = "X-DearSync-Delivery";

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Orders POSTed as JSON to an HTTPS endpoint, signed, with bounded retries.
pub struct WebhookSink {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    attempts: u32,
}

impl WebhookSink {
    /// POSTs to `url`, signing with `secret`; each POST times out after `timeout`; up to
    /// `attempts` tries per delivery (5xx, 408, 429 and network errors are retried). `url` must
    /// lead where `policy` allows (public https), checked now and at every connection.
    pub fn new(
        url: &str,
        secret: &[u8],
        timeout: Duration,
        attempts: u32,
        policy: dearsync_outbound::OutboundPolicy,
    ) -> Result<Self, SinkError> {
        let url = dearsync_outbound::check_url(url, policy).map_err(SinkError::Url)?;
        let http = dearsync_outbound::client(policy, timeout).map_err(SinkError::Client)?;
        Ok(Self {
            http,
            url,
            secret: secret.to_vec(),
            attempts: attempts.max(1),
        })
    }
}

#[async_trait]
impl OrderSink for WebhookSink {
    async fn deliver(&self, order: &CanonicalOrder) -> Result<Receipt, SinkError> {
        let body = serde_json::to_vec(order).map_err(SinkError::Encode)?;
        self.post(&body, &delivery_id(order))
            .await
            .map(Receipt::says)
    }

    async fn cancel(&self, cancel: &OrderCancel) -> Result<(), SinkError> {
        let body = serde_json::to_vec(cancel).map_err(SinkError::Encode)?;
        self.post(&body, &cancel.cancel_id).await.map(|_| ())
    }
}

impl WebhookSink {
    /// POSTs `body` under the delivery `id`, signed, retried as far as retrying can help;
    /// answers the warehouse's answer, briefly.
    async fn post(&self, body: &[u8], id: &str) -> Result<String, SinkError> {
        use backon::{ExponentialBuilder, Retryable};
        let sig = signature(&self.secret, body);
        // Up to `attempts` posts, 0.5 s, 1 s, 2 s … (at most 8 s) apart, each wait plus a random
        // jitter of up to as much again (backon's `std` feature seeds it randomly), so many tenants'
        // retries to one warehouse do not arrive in step; an answer or a refusal that retrying
        // cannot change ends them at once.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(8))
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter();
        (|| self.post_once(body, &sig, id))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|failed: &FailedPost| failed.retryable)
            .await
            .map_err(|failed| SinkError::NotTaken(failed.message))
    }
}

/// One post that did not deliver: why, and whether posting again may.
struct FailedPost {
    message: String,
    retryable: bool,
}

impl WebhookSink {
    /// Posts the order once; answers the status and the start of the answer's body.
    async fn post_once(&self, body: &[u8], sig: &str, id: &str) -> Result<String, FailedPost> {
        let result = self
            .http
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header(DELIVERY_HEADER, id)
            .header("Idempotency-Key", id)
            .body(body.to_vec())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                let status = resp.status();
                // Taken: the answer's start is only noted, and never waited on for long.
                let page = tokio::time::timeout(
                    Duration::from_secs(2),
                    dearsync_outbound::read_prefix(resp, 1024),
                )
                .await
                .unwrap_or_default();
                let text: String = String::from_utf8_lossy(&page)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                Ok(match text.trim() {
                    "" => format!("HTTP {status}"),
                    text => format!("HTTP {status}: {text}"),
                })
            }
            Ok(resp) => {
                let status = resp.status();
                // Only the start of an error page is read.
                let page = dearsync_outbound::read_prefix(resp, 1024).await;
                let text: String = String::from_utf8_lossy(&page).chars().take(200).collect();
                Err(FailedPost {
                    message: format!("the order webhook answered HTTP {status}: {text}"),
                    retryable: status.is_server_error()
                        || status.as_u16() == 408
                        || status.as_u16() == 429,
                })
            }
            Err(e) => {
                let refusal =
                    dearsync_outbound::OutboundError::refusal_in(&e).map(ToString::to_string);
                Err(match refusal {
                    // An address or redirect the rules refuse stays refused: not retried.
                    Some(refusal) => FailedPost {
                        message: format!("the order webhook was not called: {refusal}"),
                        retryable: false,
                    },
                    // The URL may hold a secret: the error chain goes without it.
                    None => FailedPost {
                        message: format!(
                            "the order webhook could not be reached: {}",
                            dear_client::error_chain(&e.without_url())
                        ),
                        retryable: true,
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_ended_before_the_next_order_and_the_file_is_one_runs_alone() {
        let path = std::env::temp_dir().join(format!(
            "dearsync-sink-{}-{}.ndjson",
            std::process::id(),
            nanos_now()
        ));
        std::fs::write(
            &path,
            b"{\"sale_id\":\"a\",\"version\":\"1\"}\n{\"sale_id\":\"b\",\"ver",
        )
        .unwrap();
        let sink = NdjsonSink::file(&path).unwrap();
        assert!(std::fs::read(&path).unwrap().ends_with(b"\"ver\n"));
        assert!(
            sink.sole_deliverer()
                .is_some_and(|id| id.starts_with("file:"))
        );
        assert!(matches!(
            NdjsonSink::file(&path),
            Err(SinkOpenError::InUse { .. })
        ));
        drop(sink);
        // Reopened: nothing more is added to a file that ends in a newline.
        let again = NdjsonSink::file(&path).unwrap();
        assert!(std::fs::read(&path).unwrap().ends_with(b"\"ver\n"));
        drop(again);
        let _ = std::fs::remove_file(&path);
    }

    fn nanos_now() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    }
}
