//! DEAR credentials per tenant: an Account ID and an API Key, never logged.

use async_trait::async_trait;
use dear_client::ApiKey;

use crate::TenantId;

/// The header that carries a tenant's `inbound_secret`: checked by the Function URLs, and set on
/// the DEAR webhook subscriptions that call them.
pub const INBOUND_SECRET_HEADER: &str = "x-dearsync-secret";

/// A tenant's DEAR credentials. `Debug` shows the account, never the key.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// DEAR's `api-auth-accountid`.
    pub account_id: String,
    /// DEAR's `api-auth-applicationkey`.
    pub api_key: ApiKey,
    /// The HMAC key orders POSTed to the warehouse are signed with (secret key
    /// `order_webhook_secret`; CLI: `DEARSYNC_ORDER_WEBHOOK_SECRET`).
    pub order_webhook_secret: Option<ApiKey>,
    /// The shared secret DEAR webhooks and warehouse pushes must carry (secret key
    /// `inbound_secret`; CLI: `DEARSYNC_INBOUND_SECRET`), unless the caller has its own below.
    pub inbound_secret: Option<ApiKey>,
    /// DEAR's webhooks' own secret (`dear_webhook_secret`): when set, DEAR's calls must carry it
    /// and `inbound_secret` no longer admits them.
    pub dear_webhook_secret: Option<ApiKey>,
    /// The warehouse's own secret for shipment and inventory pushes (`warehouse_secret`), likewise.
    pub warehouse_secret: Option<ApiKey>,
    /// The secrets being rotated out, still accepted until removed: `<key>_previous` of each of
    /// the three above (`inbound_secret_previous`, …), in that order.
    pub previous: [Option<ApiKey>; 3],
    /// The key warehouse pushes are signed with (`warehouse_signing_secret`, and
    /// `warehouse_signing_secret_previous` during a rotation): when set, a push must carry a fresh
    /// signature (see [`crate::push_signature`]) and a secret header alone no longer admits it.
    pub warehouse_signing_secrets: [Option<ApiKey>; 2],
}

/// Who calls a Function URL, so which of a tenant's secrets admit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// DEAR's webhooks (sale events).
    DearWebhook,
    /// The warehouse (shipments, inventory snapshots).
    Warehouse,
}

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Nothing is stored where they should be.
    #[error("no DEAR credentials for tenant {tenant}: {location} does not exist")]
    Missing {
        /// Whose.
        tenant: String,
        /// Where they were looked for (a secret name, environment variables).
        location: String,
    },
    /// Something is stored but it is not usable.
    #[error("DEAR credentials for tenant {tenant} in {location} are malformed: {detail}")]
    Malformed {
        /// Whose.
        tenant: String,
        /// Where.
        location: String,
        /// What is wrong (never the values).
        detail: String,
    },
    /// The secret store answered, but not with the secret: it is marked for deletion, cannot be
    /// decrypted, or this role may not read it. An operator must act; not an outage.
    #[error("DEAR credentials for tenant {tenant} could not be read from {location}: {detail}")]
    Refused {
        /// Whose.
        tenant: String,
        /// Where.
        location: String,
        /// The store's answer.
        detail: String,
    },
    /// The secret store failed; retrying later may work.
    #[error("DEAR credentials for tenant {tenant} could not be read from {location}: {detail}")]
    Unavailable {
        /// Whose.
        tenant: String,
        /// Where.
        location: String,
        /// The store's error.
        detail: String,
    },
}

impl CredentialsError {
    /// True when the secret store failed (retrying later may work), not the secret itself.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CredentialsError::Unavailable { .. })
    }
}

impl Credentials {
    /// Reads the secret JSON `{"account_id": "...", "api_key": "..."}` (other keys are allowed).
    /// Errors say which key is missing or wrong, never what the values are.
    pub fn from_secret_json(
        text: &str,
        tenant: &TenantId,
        location: &str,
    ) -> Result<Self, CredentialsError> {
        let malformed = |detail: &str| CredentialsError::Malformed {
            tenant: tenant.to_string(),
            location: location.to_owned(),
            detail: detail.to_owned(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|_| {
            malformed(
                "the secret is not JSON; expected {\"account_id\": \"...\", \"api_key\": \"...\"}",
            )
        })?;
        let obj = value
            .as_object()
            .ok_or_else(|| malformed("the secret is not a JSON object"))?;
        let optional = |name: &str| -> Result<Option<ApiKey>, CredentialsError> {
            match obj.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    Ok(Some(ApiKey::new(s.trim())))
                }
                Some(serde_json::Value::String(_)) => {
                    Err(malformed(&format!("\"{name}\" is empty")))
                }
                Some(_) => Err(malformed(&format!("\"{name}\" is not a string"))),
            }
        };
        let field = |name: &str| -> Result<String, CredentialsError> {
            match obj.get(name) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    Ok(s.trim().to_owned())
                }
                Some(serde_json::Value::String(_)) => {
                    Err(malformed(&format!("\"{name}\" is empty")))
                }
                Some(_) => Err(malformed(&format!("\"{name}\" is not a string"))),
                None => Err(malformed(&format!("\"{name}\" is missing"))),
            }
        };
        let mut creds = Self::new(field("account_id")?, field("api_key")?, tenant, location)?;
        creds.order_webhook_secret = optional("order_webhook_secret")?;
        creds.inbound_secret = optional("inbound_secret")?;
        creds.dear_webhook_secret = optional("dear_webhook_secret")?;
        creds.warehouse_secret = optional("warehouse_secret")?;
        creds.previous = [
            optional("inbound_secret_previous")?,
            optional("dear_webhook_secret_previous")?,
            optional("warehouse_secret_previous")?,
        ];
        creds.warehouse_signing_secrets = [
            optional("warehouse_signing_secret")?,
            optional("warehouse_signing_secret_previous")?,
        ];
        Ok(creds)
    }

    /// The secrets that admit `caller`: its own (current and previous) when it has one, else the
    /// shared `inbound_secret` (current and previous). Empty: every request is refused.
    pub fn accepted_secrets(&self, caller: Caller) -> Vec<&ApiKey> {
        let [shared_previous, dear_previous, warehouse_previous] = &self.previous;
        let (own, own_previous) = match caller {
            Caller::DearWebhook => (&self.dear_webhook_secret, dear_previous),
            Caller::Warehouse => (&self.warehouse_secret, warehouse_previous),
        };
        let pair = if own.is_some() || own_previous.is_some() {
            [own, own_previous]
        } else {
            [&self.inbound_secret, shared_previous]
        };
        pair.into_iter().flatten().collect()
    }

    /// The keys a signed push from `caller` may be signed with; empty: pushes are not signed.
    pub fn signing_secrets(&self, caller: Caller) -> Vec<&ApiKey> {
        match caller {
            Caller::Warehouse => self.warehouse_signing_secrets.iter().flatten().collect(),
            Caller::DearWebhook => Vec::new(),
        }
    }

    /// The secret to give `caller` (e.g. on DEAR's webhook subscriptions): its own, else the
    /// shared one.
    pub fn secret_for(&self, caller: Caller) -> Option<&ApiKey> {
        match caller {
            Caller::DearWebhook => self.dear_webhook_secret.as_ref(),
            Caller::Warehouse => self.warehouse_secret.as_ref(),
        }
        .or(self.inbound_secret.as_ref())
    }

    /// Checks and wraps an account id and key.
    pub fn new(
        account_id: String,
        api_key: String,
        tenant: &TenantId,
        location: &str,
    ) -> Result<Self, CredentialsError> {
        if account_id.trim().is_empty() || api_key.trim().is_empty() {
            return Err(CredentialsError::Malformed {
                tenant: tenant.to_string(),
                location: location.to_owned(),
                detail: "the account id and the API key must not be empty".to_owned(),
            });
        }
        Ok(Self {
            account_id: account_id.trim().to_owned(),
            api_key: ApiKey::new(api_key.trim()),
            order_webhook_secret: None,
            inbound_secret: None,
            dear_webhook_secret: None,
            warehouse_secret: None,
            previous: [None, None, None],
            warehouse_signing_secrets: [None, None],
        })
    }
}

/// Where a tenant's credentials come from.
#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// The tenant's DEAR credentials.
    async fn credentials(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError>;

    /// Forgets what is cached for `tenant` (DEAR refused its key): the next read goes to the
    /// source. Sources that cache nothing need not implement it.
    async fn forget(&self, _tenant: &TenantId) {}
}

/// Credentials from `DEAR_ACCOUNT_ID` / `DEAR_API_KEY` (the CLI: one tenant, one account).
#[derive(Clone, Debug)]
pub struct EnvCredentials {
    account_id: Option<String>,
    api_key: Option<String>,
    order_webhook_secret: Option<String>,
    inbound_secret: Option<String>,
}

impl EnvCredentials {
    /// The account id variable.
    pub const ACCOUNT_ID_VAR: &'static str = "DEAR_ACCOUNT_ID";
    /// The API key variable.
    pub const API_KEY_VAR: &'static str = "DEAR_API_KEY";

    /// Reads the two variables now; they are checked when credentials are asked for.
    pub fn from_env() -> Self {
        Self {
            account_id: std::env::var(Self::ACCOUNT_ID_VAR).ok(),
            api_key: std::env::var(Self::API_KEY_VAR).ok(),
            order_webhook_secret: std::env::var("DEARSYNC_ORDER_WEBHOOK_SECRET").ok(),
            inbound_secret: std::env::var("DEARSYNC_INBOUND_SECRET").ok(),
        }
    }

    /// Fixed values (as if from the environment).
    pub fn fixed(account_id: Option<String>, api_key: Option<String>) -> Self {
        Self {
            account_id,
            api_key,
            order_webhook_secret: None,
            inbound_secret: None,
        }
    }
}

#[async_trait]
impl CredentialSource for EnvCredentials {
    async fn credentials(&self, tenant: &TenantId) -> Result<Credentials, CredentialsError> {
        let location = format!("${} / ${}", Self::ACCOUNT_ID_VAR, Self::API_KEY_VAR);
        match (&self.account_id, &self.api_key) {
            (Some(a), Some(k)) => {
                let mut c = Credentials::new(a.clone(), k.clone(), tenant, &location)?;
                let secret = |v: &Option<String>| {
                    v.as_deref()
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(ApiKey::new)
                };
                c.order_webhook_secret = secret(&self.order_webhook_secret);
                c.inbound_secret = secret(&self.inbound_secret);
                Ok(c)
            }
            (None, _) => Err(CredentialsError::Missing {
                tenant: tenant.to_string(),
                location: format!("${}", Self::ACCOUNT_ID_VAR),
            }),
            (_, None) => Err(CredentialsError::Missing {
                tenant: tenant.to_string(),
                location: format!("${}", Self::API_KEY_VAR),
            }),
        }
    }
}

/// Compares a presented secret with the expected one in time independent of where they differ.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn a_secret_is_read_and_its_key_never_shown() {
        let c = Credentials::from_secret_json(
            r#"{"account_id": "a-1", "api_key": "s3cr3t-key", "note": "x", "order_webhook_secret": "hm4c"}"#,
            &tenant(),
            "dear-sync/acme",
        )
        .unwrap();
        assert_eq!(c.account_id, "a-1");
        assert_eq!(c.api_key.expose(), "s3cr3t-key");
        assert_eq!(
            c.order_webhook_secret.as_ref().map(|k| k.expose()),
            Some("hm4c")
        );
        assert!(c.inbound_secret.is_none());
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn malformed_secrets_say_what_is_wrong_without_the_values() {
        for (text, needle) in [
            ("not json s3cr3t", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"api_key": "s3cr3t"}"#, "\"account_id\" is missing"),
            (
                r#"{"account_id": "a", "api_key": 5}"#,
                "\"api_key\" is not a string",
            ),
            (
                r#"{"account_id": "a", "api_key": "  "}"#,
                "\"api_key\" is empty",
            ),
        ] {
            let e = Credentials::from_secret_json(text, &tenant(), "dear-sync/acme")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("dear-sync/acme"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn secrets_are_compared_whole() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abd", "abc"));
        assert!(!secrets_match("ab", "abc"));
        assert!(!secrets_match("", ""));
    }

    #[tokio::test]
    async fn env_credentials_name_the_missing_variable() {
        let e = EnvCredentials::fixed(Some("a".into()), None)
            .credentials(&tenant())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("$DEAR_API_KEY"), "{e}");
        let c = EnvCredentials::fixed(Some("a".into()), Some("k".into()))
            .credentials(&tenant())
            .await
            .unwrap();
        assert_eq!(c.account_id, "a");
    }
}

#[cfg(test)]
mod caller_tests {
    use super::*;

    fn creds(json: &str) -> Credentials {
        Credentials::from_secret_json(json, &TenantId::new("acme").unwrap(), "test").unwrap()
    }

    fn accepted(c: &Credentials, caller: Caller) -> Vec<String> {
        c.accepted_secrets(caller)
            .into_iter()
            .map(|k| k.expose().to_owned())
            .collect()
    }

    #[test]
    fn each_caller_has_its_own_secret_or_the_shared_one_and_a_rotation_accepts_both() {
        let shared = creds(
            r#"{"account_id":"a","api_key":"k","inbound_secret":"i","inbound_secret_previous":"i0"}"#,
        );
        assert_eq!(accepted(&shared, Caller::DearWebhook), ["i", "i0"]);
        assert_eq!(accepted(&shared, Caller::Warehouse), ["i", "i0"]);
        let split = creds(
            r#"{"account_id":"a","api_key":"k","inbound_secret":"i","dear_webhook_secret":"d","warehouse_secret":"w","warehouse_secret_previous":"w0"}"#,
        );
        // The shared secret no longer admits a caller with its own.
        assert_eq!(accepted(&split, Caller::DearWebhook), ["d"]);
        assert_eq!(accepted(&split, Caller::Warehouse), ["w", "w0"]);
        assert_eq!(split.secret_for(Caller::DearWebhook).unwrap().expose(), "d");
        let dear_only = creds(
            r#"{"account_id":"a","api_key":"k","inbound_secret":"i","dear_webhook_secret":"d"}"#,
        );
        assert_eq!(accepted(&dear_only, Caller::Warehouse), ["i"]);
        assert_eq!(
            dear_only.secret_for(Caller::Warehouse).unwrap().expose(),
            "i"
        );
        let none = creds(r#"{"account_id":"a","api_key":"k"}"#);
        assert!(accepted(&none, Caller::Warehouse).is_empty());
    }
}
