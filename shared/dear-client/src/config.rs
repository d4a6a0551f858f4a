//! Connection settings for one DEAR account.

use std::fmt;
use std::time::Duration;

use url::Url;

/// DEAR's production API root.
pub const DEFAULT_BASE_URL: &str = "https://inventory.dearsystems.com/ExternalApi/v2/";

/// A DEAR API Application Key. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where and as whom to call DEAR.
#[derive(Clone, Debug)]
pub struct DearConfig {
    /// API root, ending in `/` (e.g. [`DEFAULT_BASE_URL`] or a simulator's).
    pub base_url: Url,
    /// The DEAR Account ID (`api-auth-accountid`).
    pub account_id: String,
    /// The API Application Key (`api-auth-applicationkey`).
    pub api_key: ApiKey,
    /// How requests are retried and timed out.
    pub retry: RetryPolicy,
    /// Calls per 60 s allowed by the default in-process rate budget (DEAR allows 60).
    pub calls_per_minute: u32,
}

impl DearConfig {
    /// A config for DEAR's production URL with default retry and rate settings.
    pub fn new(account_id: impl Into<String>, api_key: ApiKey) -> Self {
        Self {
            base_url: Url::parse(DEFAULT_BASE_URL).expect("the default base URL is valid"),
            account_id: account_id.into(),
            api_key,
            retry: RetryPolicy::default(),
            calls_per_minute: 55,
        }
    }

    /// Sets the API root; a missing trailing `/` is added so relative paths join under it.
    pub fn with_base_url(mut self, base_url: &str) -> Result<Self, crate::DearError> {
        self.base_url = parse_base_url(base_url)?;
        Ok(self)
    }

    /// Checks the config, naming the first bad field.
    pub fn validate(&self) -> Result<(), crate::DearError> {
        if self.account_id.trim().is_empty() {
            return Err(crate::DearError::Config(
                "account_id (DEAR Account ID) is empty".into(),
            ));
        }
        if self.api_key.expose().trim().is_empty() {
            return Err(crate::DearError::Config(
                "api_key (DEAR API Application Key) is empty".into(),
            ));
        }
        if !matches!(self.base_url.scheme(), "http" | "https") {
            return Err(crate::DearError::Config(format!(
                "base_url `{}` is not an http(s) URL",
                self.base_url
            )));
        }
        Ok(())
    }
}

impl fmt::Display for DearConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DEAR account {} at {}", self.account_id, self.base_url)
    }
}

/// Parses an API root, adding the trailing `/` that `Url::join` needs.
pub fn parse_base_url(text: &str) -> Result<Url, crate::DearError> {
    let mut text = text.trim().to_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    Url::parse(&text)
        .map_err(|e| crate::DearError::Config(format!("base_url `{text}` is not a URL: {e}")))
}

/// Retry and timeout rules.
///
/// Reads are retried on 5xx, timeouts and dropped connections. Writes are retried only when DEAR
/// certainly did not process them: a throttling answer, or a connection that was never opened.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries of a read after a server error or transport failure.
    pub max_read_retries: u32,
    /// Retries after a throttling answer (429/503), reads and writes alike.
    pub max_throttle_retries: u32,
    /// First backoff delay; doubles per attempt, with full jitter.
    pub base_delay: Duration,
    /// Upper bound of one backoff delay.
    pub max_delay: Duration,
    /// Pause after a throttling answer without `Retry-After` (DEAR's window is 60 s).
    pub throttle_pause: Duration,
    /// Timeout of one HTTP request, body included.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_read_retries: 4,
            max_throttle_retries: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            throttle_pause: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_key() {
        let c = DearConfig::new("acc-1", ApiKey::new("super-secret-key"));
        assert!(!format!("{c:?}").contains("super-secret"));
        assert!(!format!("{c}").contains("super-secret"));
        assert!(format!("{c}").contains("acc-1"));
    }

    #[test]
    fn base_url_gets_its_trailing_slash() {
        let c = DearConfig::new("a", ApiKey::new("k"))
            .with_base_url("http://127.0.0.1:1/ExternalApi/v2")
            .unwrap();
        assert_eq!(
            c.base_url.join("saleList").unwrap().as_str(),
            "http://127.0.0.1:1/ExternalApi/v2/saleList"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let err = DearConfig::new(" ", ApiKey::new("k"))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("account_id"));
        let err = DearConfig::new("a", ApiKey::new(""))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("api_key"));
    }
}
