//! Webhook subscriptions (`webhooks`).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::serde_util::{lenient_bool, opt_id};

/// One header DEAR adds to its deliveries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct WebhookHeader {
    /// Header name.
    pub key: String,
    /// Header value (often a shared secret: never printed).
    pub value: String,
}

impl fmt::Debug for WebhookHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ***", self.key)
    }
}

/// A webhook subscription. `Debug` hides passwords, tokens and header values.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Webhook {
    /// Server-assigned; omit when creating.
    #[serde(
        rename = "ID",
        with = "opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<Uuid>,
    /// Event type, e.g. `Sale/OrderAuthorised`.
    #[serde(rename = "Type")]
    pub event_type: String,
    /// Read-only description DEAR assigns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// False once DEAR deactivated it (after 6 failed deliveries) or by choice.
    #[serde(deserialize_with = "lenient_bool")]
    pub is_active: bool,
    /// Where DEAR POSTs.
    #[serde(rename = "ExternalURL")]
    pub external_url: String,
    /// `noauth`, `basicauth` or `bearerauth`.
    pub external_authorization_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Basic auth user.
    pub external_user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Basic auth password.
    pub external_password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Bearer token.
    pub external_bearer_token: Option<String>,
    /// Extra headers on every delivery.
    pub external_headers: Vec<WebhookHeader>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("name", &self.name)
            .field("is_active", &self.is_active)
            .field("external_url", &self.external_url)
            .field(
                "external_authorization_type",
                &self.external_authorization_type,
            )
            .field("external_user_name", &self.external_user_name)
            .field("external_password", &hidden(&self.external_password))
            .field(
                "external_bearer_token",
                &hidden(&self.external_bearer_token),
            )
            .field("external_headers", &self.external_headers)
            .finish()
    }
}

/// `{"Webhooks": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WebhookList {
    /// The subscriptions.
    pub webhooks: Vec<Webhook>,
}
