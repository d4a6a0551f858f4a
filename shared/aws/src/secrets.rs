//! DEAR credentials from AWS Secrets Manager: one secret per tenant, named `<prefix><tenant>`,
//! holding `{"account_id": "...", "api_key": "..."}`, cached in memory for a while.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use dearsync_core::{CredentialSource, Credentials, CredentialsError, TenantId};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::sdk_error_text;

/// [`CredentialSource`] over Secrets Manager.
pub struct SecretsManagerCredentials {
    client: Client,
    prefix: String,
    ttl: Duration,
    stale_for: Duration,
    cache: Mutex<HashMap<TenantId, (Instant, Credentials)>>,
}

impl SecretsManagerCredentials {
    /// How long a secret is cached by default: a rotated key is picked up within this.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    /// How long past its TTL a cached secret still serves while Secrets Manager cannot be reached:
    /// an outage of Secrets Manager alone does not stop a tenant that was working.
    pub const DEFAULT_STALE_FOR: Duration = Duration::from_secs(3600);

    /// Reads secrets named `prefix` + tenant id (e.g. `dear-sync/` → `dear-sync/acme`).
    pub fn new(client: Client, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            ttl,
            stale_for: Self::DEFAULT_STALE_FOR,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Serves a cached secret for `stale_for` past its TTL while Secrets Manager is unreachable
    /// (a deleted or malformed secret is never served from the cache).
    pub fn with_stale_for(mut self, stale_for: Duration) -> Self {
        self.stale_for = stale_for;
        self
    }

    /// The secret name for `tenant`.
    pub fn secret_name(&self, tenant: &TenantId) -> String {
        format!("{}{}", self.prefix, tenant)
    }

    async fn fetch(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError> {
        let name = self.secret_name(tenant);
        let out = self
            .client
            .get_secret_value()
            .secret_id(&name)
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
                let location = format!("secret {name}");
                let tenant = tenant.to_string();
                match e.as_service_error() {
                    Some(s) if s.is_resource_not_found_exception() => {
                        CredentialsError::Missing { tenant, location }
                    }
                    // An answer that is not an outage: the secret is marked for deletion
                    // (InvalidRequest), cannot be decrypted, or this role may no longer read it.
                    // Never served from the cache.
                    Some(s)
                        if !s.is_internal_service_error()
                            && s.code() != Some("ThrottlingException") =>
                    {
                        CredentialsError::Refused {
                            tenant,
                            location,
                            detail: sdk_error_text(&e),
                        }
                    }
                    _ => CredentialsError::Unavailable {
                        tenant,
                        location,
                        detail: sdk_error_text(&e),
                    },
                }
            })?;
        let Some(text) = out.secret_string() else {
            return Err(CredentialsError::Malformed {
                tenant: tenant.to_string(),
                location: format!("secret {name}"),
                detail: "the secret has no text value (a binary secret?)".to_owned(),
            });
        };
        Credentials::from_secret_json(text, tenant, &format!("secret {name}"))
    }
}

#[async_trait]
impl CredentialSource for SecretsManagerCredentials {
    async fn credentials(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError> {
        // The lock is held across the fetch so that concurrent callers make one request.
        let mut cache = self.cache.lock().await;
        let cached = cache.get(tenant).cloned();
        if let Some((at, creds)) = &cached
            && at.elapsed() < self.ttl
        {
            return Ok(creds.clone());
        }
        match self.fetch(tenant).await {
            Ok(creds) => {
                tracing::debug!(tenant = %tenant, account_id = %creds.account_id, "DEAR credentials read from Secrets Manager");
                cache.insert(tenant.clone(), (Instant::now(), creds.clone()));
                Ok(creds)
            }
            Err(error) if error.is_unavailable() => match cached {
                Some((at, creds)) if at.elapsed() < self.ttl + self.stale_for => {
                    tracing::warn!(tenant = %tenant, %error, age_s = at.elapsed().as_secs(), "Secrets Manager unavailable: using the secret read before");
                    Ok(creds)
                }
                _ => Err(error),
            },
            // Gone, refused or malformed: what was cached must not serve later either.
            Err(error) => {
                cache.remove(tenant);
                Err(error)
            }
        }
    }

    /// Forgets a cached secret (after DEAR rejected the key, say).
    async fn forget(&self, tenant: &TenantId) {
        self.cache.lock().await.remove(tenant);
    }
}
