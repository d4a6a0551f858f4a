//! DEAR credentials from Secrets Manager on the AWS emulator.

use std::time::Duration;

use aws_sdk_secretsmanager::primitives::Blob;
use dearsync_aws::{SecretsManagerCredentials, testing};
use dearsync_core::{CredentialSource, CredentialsError, TenantId};

/// A unique prefix per test, so that tests sharing the emulator never see each other's secrets.
fn prefix() -> String {
    format!("dear-sync-test/{}/", dearsync_core::memory::new_token())
}

async fn put_secret(name: &str, value: &str) {
    testing::secrets_manager()
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create secret");
}

#[tokio::test]
async fn reads_a_tenants_secret_and_caches_it() {
    let prefix = prefix();
    let tenant = TenantId::new("acme").unwrap();
    put_secret(
        &format!("{prefix}acme"),
        r#"{"account_id":"acct-1","api_key":"k3y-one"}"#,
    )
    .await;
    let source = SecretsManagerCredentials::new(
        testing::secrets_manager(),
        &prefix,
        Duration::from_secs(300),
    );
    let creds = source.credentials(&tenant).await.unwrap();
    assert_eq!(
        (creds.account_id.as_str(), creds.api_key.expose()),
        ("acct-1", "k3y-one")
    );
    assert!(
        !format!("{creds:?}").contains("k3y-one"),
        "the key never shows in Debug"
    );

    // Rotated in Secrets Manager: the cached value stays until the TTL passes or it is forgotten.
    testing::secrets_manager()
        .put_secret_value()
        .secret_id(format!("{prefix}acme"))
        .secret_string(r#"{"account_id":"acct-1","api_key":"k3y-two"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        source.credentials(&tenant).await.unwrap().api_key.expose(),
        "k3y-one"
    );
    source.forget(&tenant).await;
    assert_eq!(
        source.credentials(&tenant).await.unwrap().api_key.expose(),
        "k3y-two"
    );

    let uncached =
        SecretsManagerCredentials::new(testing::secrets_manager(), &prefix, Duration::ZERO);
    assert_eq!(
        uncached
            .credentials(&tenant)
            .await
            .unwrap()
            .api_key
            .expose(),
        "k3y-two"
    );
}

#[tokio::test]
async fn a_missing_secret_names_the_secret() {
    let prefix = prefix();
    let source = SecretsManagerCredentials::new(
        testing::secrets_manager(),
        &prefix,
        Duration::from_secs(300),
    );
    let err = source
        .credentials(&TenantId::new("nobody").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, CredentialsError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("{prefix}nobody")),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_secrets_say_what_is_wrong_and_never_show_the_key() {
    let prefix = prefix();
    put_secret(
        &format!("{prefix}nokey"),
        r#"{"account_id":"acct-1","apikey":"s3cr3t"}"#,
    )
    .await;
    put_secret(
        &format!("{prefix}notjson"),
        "account_id=acct-1 api_key=s3cr3t",
    )
    .await;
    testing::secrets_manager()
        .create_secret()
        .name(format!("{prefix}binary"))
        .secret_binary(Blob::new(b"s3cr3t".to_vec()))
        .send()
        .await
        .unwrap();
    let source = SecretsManagerCredentials::new(
        testing::secrets_manager(),
        &prefix,
        Duration::from_secs(300),
    );
    for (tenant, needle) in [
        ("nokey", "\"api_key\" is missing"),
        ("notjson", "not JSON"),
        ("binary", "no text value"),
    ] {
        let err = source
            .credentials(&TenantId::new(tenant).unwrap())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CredentialsError::Malformed { .. }),
            "{tenant}: {err:?}"
        );
        assert!(
            text.contains(needle) && text.contains(&format!("{prefix}{tenant}")),
            "{text}"
        );
        assert!(
            !text.contains("s3cr3t") && !format!("{err:?}").contains("s3cr3t"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_secrets_manager_is_reported_as_unavailable() {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        // Nothing listens on port 9 of 127.0.0.1.
        .endpoint_url("http://127.0.0.1:9")
        .credentials_provider(
            aws_sdk_secretsmanager::config::SharedCredentialsProvider::new(
                aws_sdk_secretsmanager::config::Credentials::new("t", "t", None, None, "test"),
            ),
        )
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let source = SecretsManagerCredentials::new(
        aws_sdk_secretsmanager::Client::new(&config),
        "dear-sync/",
        Duration::from_secs(300),
    );
    let err = source
        .credentials(&TenantId::new("acme").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CredentialsError::Unavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("dear-sync/acme"), "{err}");
}

/// A TCP relay to the emulator that can be cut: while cut, every connection (open or new) is
/// closed, as when Secrets Manager cannot be reached.
struct Relay {
    endpoint: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start() -> Relay {
        use std::sync::atomic::Ordering;
        let upstream = testing::endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let (upstream, flag) = (upstream.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async {
                            while !flag.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        } => {}
                    }
                });
            }
        });
        Relay { endpoint, cut }
    }

    fn client(&self) -> aws_sdk_secretsmanager::Client {
        let config = testing::sdk_config()
            .into_builder()
            .endpoint_url(&self.endpoint)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_secretsmanager::Client::new(&config)
    }
}

#[tokio::test]
async fn a_secret_read_before_serves_while_secrets_manager_is_unreachable_for_a_while() {
    let prefix = prefix();
    let tenant = TenantId::new("acme").unwrap();
    put_secret(
        &format!("{prefix}acme"),
        r#"{"account_id":"acct-1","api_key":"k3y-one"}"#,
    )
    .await;
    let relay = Relay::start().await;
    // No TTL: every call goes to Secrets Manager.
    let source = SecretsManagerCredentials::new(relay.client(), &prefix, Duration::ZERO)
        .with_stale_for(Duration::from_millis(1500));
    assert_eq!(
        source.credentials(&tenant).await.unwrap().api_key.expose(),
        "k3y-one"
    );

    relay.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = source.credentials(&tenant).await;
    assert_eq!(
        during
            .map(|c| c.api_key.expose().to_owned())
            .ok()
            .as_deref(),
        Some("k3y-one"),
        "served from before the outage"
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let err = source.credentials(&tenant).await.unwrap_err();
    assert!(err.is_unavailable(), "too old to serve: {err:?}");

    // A tenant never read before gets the outage.
    let other = TenantId::new("other").unwrap();
    assert!(
        source
            .credentials(&other)
            .await
            .unwrap_err()
            .is_unavailable()
    );
}

#[tokio::test]
async fn a_secret_marked_for_deletion_is_not_served_from_the_cache() {
    let prefix = prefix();
    let tenant = TenantId::new("acme").unwrap();
    let name = format!("{prefix}acme");
    put_secret(&name, r#"{"account_id":"acct-1","api_key":"k3y-one"}"#).await;
    // No TTL, an hour of stale-if-error: only an outage may serve the cached secret.
    let source =
        SecretsManagerCredentials::new(testing::secrets_manager(), &prefix, Duration::ZERO);
    source.credentials(&tenant).await.unwrap();
    testing::secrets_manager()
        .delete_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    let err = source.credentials(&tenant).await.unwrap_err();
    assert!(!err.is_unavailable(), "an answer, not an outage: {err:?}");
    assert!(err.to_string().contains(&name), "{err}");
}
