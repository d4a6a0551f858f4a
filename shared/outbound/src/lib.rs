//! HTTP to URLs a tenant configures (the order webhook, the snapshot URL): a Lambda must not be
//! talked into calling its own Runtime API (127.0.0.1:9001), the metadata service (169.254.169.254)
//! or anything else inside the network. So:
//! - https only; plain http only to loopback, and only under [`OutboundPolicy::allow_loopback`]
//!   (development and tests; the Lambdas take it from `DEARSYNC_ALLOW_LOOPBACK_URLS`, which the
//!   template never sets);
//! - every address a host name resolves to is checked when connecting (not only when the URL is
//!   validated, so a name that re-resolves to an inner address is refused too), and literal IPs in
//!   URLs are checked before the request;
//! - redirects are followed only to the same scheme, host and port (at most 3);
//! - no proxy from the environment (it would resolve the host instead of us);
//! - answers are read up to a size cap.
//!
//! Each refusal is an [`OutboundError`] naming the rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which destinations are allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Also loopback addresses (127.0.0.0/8, ::1), over http or https: development and tests.
    pub allow_loopback: bool,
}

impl OutboundPolicy {
    /// Public addresses only, https only (production).
    pub const PUBLIC: OutboundPolicy = OutboundPolicy {
        allow_loopback: false,
    };

    /// The policy from the environment: loopback allowed when `DEARSYNC_ALLOW_LOOPBACK_URLS` is
    /// `1` or `true` (never set by the SAM template).
    pub fn from_env() -> OutboundPolicy {
        let allow = std::env::var("DEARSYNC_ALLOW_LOOPBACK_URLS")
            .is_ok_and(|v| v.trim() == "1" || v.trim().eq_ignore_ascii_case("true"));
        OutboundPolicy {
            allow_loopback: allow,
        }
    }

    /// Why `ip` may not be connected to, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = canonical(ip);
        // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses reach the IPv4 address inside them.
        if let Some(inner) = embedded_v4(ip) {
            return self.refuses(IpAddr::V4(inner));
        }
        if ip.is_loopback() {
            return (!self.allow_loopback).then_some("a loopback address");
        }
        reserved(ip)
    }
}

/// The IPv4 address a NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::`) address leads to.
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        None
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why an address that is not loopback is no public destination.
fn reserved(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => reserved_v6(v6),
    }
}

fn reserved_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the instance metadata service")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 0 || ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
        Some("a documentation or benchmarking address")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("an IETF protocol address")
    } else {
        None
    }
}

fn reserved_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("the instance metadata service")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if (first & 0xfe00) == 0xfc00 {
        Some("a unique-local address")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("a documentation address")
    } else if first == 0x2001 && ip.segments()[1] == 0 {
        Some("a Teredo address")
    } else if first == 0x64 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1 {
        Some("a local-use NAT64 address")
    } else if ip.segments()[..4] == [0x100, 0, 0, 0] {
        Some("a discard-only address")
    } else if ip.to_ipv4().is_some() && ip.to_ipv4_mapped().is_none() && first == 0 {
        // IPv4-compatible (::a.b.c.d) and the like: never a public destination.
        Some("a reserved address")
    } else {
        None
    }
}

/// Why an outbound request was not made or not finished.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL cannot be parsed (it is not repeated: it may hold a secret).
    #[error("not a URL: {source}")]
    BadUrl {
        /// The parser's reason.
        #[source]
        source: url::ParseError,
    },
    /// Not https (and not loopback http under a policy that allows it).
    #[error("{url} must use https (plain http only to this machine, in development)")]
    NotHttps {
        /// The URL as [`shown`].
        url: String,
    },
    /// The URL's host is, or resolves to, an address that is not public.
    #[error("{host} is {why} ({ip}); only public addresses are called")]
    Forbidden {
        /// The URL's host.
        host: String,
        /// The address refused.
        ip: IpAddr,
        /// Which rule.
        why: &'static str,
    },
    /// A redirect to another scheme, host or port, or too many.
    #[error("the redirect from {from} to {to} was not followed: {why}")]
    Redirect {
        /// Where the redirect came from, as [`shown`].
        from: String,
        /// Where it pointed, as [`shown`].
        to: String,
        /// Which rule.
        why: &'static str,
    },
    /// The answer is larger than the cap.
    #[error("the answer from {url} is larger than {cap} bytes")]
    TooLarge {
        /// Whose answer, as [`shown`].
        url: String,
        /// The cap.
        cap: u64,
    },
    /// The HTTP client could not be built, or the request failed on the way (its URL removed).
    #[error("HTTP: {0}")]
    Http(reqwest::Error),
}

impl From<reqwest::Error> for OutboundError {
    fn from(e: reqwest::Error) -> Self {
        OutboundError::Http(e.without_url())
    }
}

/// A URL as errors and logs may show it: scheme, host and port only. Its user info, path and
/// query are left out (`/…`): a tenant's webhook or snapshot URL may carry a secret in any of
/// them (a token, a presigned signature).
pub fn shown(url: &Url) -> String {
    let mut text = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        text.push_str(&format!(":{port}"));
    }
    let more = url.path() != "/" || url.query().is_some() || url.fragment().is_some();
    text.push_str(if more { "/…" } else { "/" });
    text
}

impl OutboundError {
    /// The rule this error (or the first [`OutboundError`] in its source chain, as reqwest wraps
    /// a resolver's refusal) names, if it is a refusal by this crate's rules.
    pub fn refusal_in<'e>(
        error: &'e (dyn std::error::Error + 'static),
    ) -> Option<&'e OutboundError> {
        let mut current: Option<&'e (dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<OutboundError>()
                && !matches!(found, OutboundError::Http(_))
            {
                return Some(found);
            }
            current = e.source();
        }
        None
    }
}

/// Checks a URL before any request: scheme, and a literal IP host's address (a name's addresses
/// are checked when connecting).
pub fn check_url(url: &str, policy: OutboundPolicy) -> Result<Url, OutboundError> {
    let parsed = Url::parse(url.trim()).map_err(|source| OutboundError::BadUrl { source })?;
    let host = parsed.host();
    let literal = match &host {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(*v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let loopback_host = literal.is_some_and(|ip| canonical(ip).is_loopback())
        || parsed
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case("localhost"));
    let scheme_ok = match parsed.scheme() {
        "https" => true,
        "http" => policy.allow_loopback && loopback_host,
        _ => false,
    };
    if !scheme_ok || host.is_none() {
        return Err(OutboundError::NotHttps {
            url: shown(&parsed),
        });
    }
    if let Some(ip) = literal
        && let Some(why) = policy.refuses(ip)
    {
        return Err(OutboundError::Forbidden {
            host: parsed.host_str().unwrap_or_default().to_owned(),
            ip,
            why,
        });
    }
    Ok(parsed)
}

/// Resolves names as the system does, then refuses the whole name if any address is not allowed
/// (a name that mixes public and inner addresses is a rebinding attempt, not a fallback).
struct CheckedResolver {
    policy: OutboundPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| policy.refuses(a.ip()).map(|why| (a.ip(), why)))
            {
                return Err(Box::new(OutboundError::Forbidden { host, ip, why }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The most redirects followed.
const MAX_REDIRECTS: usize = 3;

/// An HTTP client for tenant-configured URLs under `policy`, each request timing out after
/// `timeout`.
pub fn client(policy: OutboundPolicy, timeout: Duration) -> Result<reqwest::Client, OutboundError> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let from = attempt
            .previous()
            .last()
            .cloned()
            .unwrap_or_else(|| attempt.url().clone());
        let to = attempt.url();
        let refuse = |why| OutboundError::Redirect {
            from: shown(&from),
            to: shown(to),
            why,
        };
        if attempt.previous().len() > MAX_REDIRECTS {
            let e = refuse("more than 3 redirects");
            return attempt.error(e);
        }
        if (to.scheme(), to.host_str(), to.port_or_known_default())
            != (from.scheme(), from.host_str(), from.port_or_known_default())
        {
            let e = refuse("it leads to another scheme, host or port");
            return attempt.error(e);
        }
        attempt.follow()
    });
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(redirects)
        .dns_resolver(Arc::new(CheckedResolver { policy }))
        .build()?)
}

/// The first `n` bytes of an answer's body at most (the rest is not read): for error messages.
pub async fn read_prefix(mut response: reqwest::Response, n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < n {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(n - body.len())]),
            _ => break,
        }
    }
    body
}

/// Reads an answer's body, refusing one larger than `cap` bytes (as announced or as it arrives).
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: u64,
) -> Result<Vec<u8>, OutboundError> {
    let url = shown(response.url());
    let too_large = || OutboundError::TooLarge {
        url: url.clone(),
        cap,
    };
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, policy: OutboundPolicy) -> String {
        check_url(url, policy).unwrap_err().to_string()
    }

    #[test]
    fn only_https_to_public_addresses_unless_loopback_is_allowed() {
        let public = OutboundPolicy::PUBLIC;
        let dev = OutboundPolicy {
            allow_loopback: true,
        };
        assert!(check_url("https://wms.example.com/orders", public).is_ok());
        assert!(check_url("https://203.0.113.9.nip.io/x", public).is_ok());
        for (url, why) in [
            ("http://wms.example.com/orders", "must use https"),
            ("ftp://wms.example.com/", "must use https"),
            (
                "https://127.0.0.1:9001/2018-06-01/runtime",
                "a loopback address",
            ),
            ("https://[::1]/", "a loopback address"),
            ("https://[::ffff:127.0.0.1]/", "a loopback address"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "the instance metadata service",
            ),
            ("https://[fd00:ec2::254]/", "the instance metadata service"),
            ("https://169.254.10.1/", "a link-local address"),
            ("https://10.1.2.3/", "a private address"),
            ("https://172.16.0.1/", "a private address"),
            ("https://192.168.1.1/", "a private address"),
            ("https://100.64.0.1/", "carrier-grade NAT"),
            ("https://0.0.0.0/", "an unspecified address"),
            ("https://[fc00::1]/", "a unique-local address"),
            ("https://[fe80::1]/", "a link-local address"),
            ("https://224.0.0.1/", "multicast"),
            (
                "https://[64:ff9b::a9fe:a9fe]/",
                "the instance metadata service",
            ),
            ("https://[2002:7f00:1::]/", "a loopback address"),
            ("https://2130706433/", "a loopback address"),
            ("https://0x7f.1/", "a loopback address"),
            ("https://[2001::1]/", "a Teredo address"),
            ("https://[64:ff9b:1::a]/", "a local-use NAT64 address"),
            ("https://192.0.0.8/", "an IETF protocol address"),
        ] {
            let e = refused(url, public);
            assert!(e.contains(why), "{url}: {e}");
        }
        // Development: loopback over http or https, nothing else inner.
        assert!(check_url("http://127.0.0.1:8080/hook", dev).is_ok());
        assert!(check_url("http://localhost:8080/hook", dev).is_ok());
        assert!(check_url("https://127.0.0.1/hook", dev).is_ok());
        assert!(refused("http://10.0.0.1/", dev).contains("must use https"));
        assert!(refused("https://10.0.0.1/", dev).contains("a private address"));
        assert!(refused("http://localhost:8080/hook", public).contains("must use https"));
    }

    /// A webhook or snapshot URL may carry a secret in its user info, path or query (a signed or
    /// presigned URL): no error, and so no log line or ledger reason, repeats more than its host.
    #[tokio::test]
    async fn a_urls_secrets_never_reach_an_error_message() {
        let public = OutboundPolicy::PUBLIC;
        let dev = OutboundPolicy {
            allow_loopback: true,
        };
        let secrets = ["pw-SECRET", "path-SECRET", "query-SECRET"];
        let clean = |e: &dyn std::error::Error| {
            let mut text = format!("{e} {e:?}");
            let mut source = e.source();
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            for s in secrets {
                assert!(!text.contains(s), "{s} in {text}");
            }
            text
        };
        let url = "http://user:pw-SECRET@example.com/hook/path-SECRET?token=query-SECRET";
        let e = check_url(url, public).unwrap_err();
        assert!(clean(&e).contains("http://example.com/"), "{e}");
        let e = check_url(
            "https://user:pw-SECRET@exa mple.com/path-SECRET?t=query-SECRET",
            public,
        )
        .unwrap_err();
        clean(&e);
        // A transport error names the URL it failed on: not here.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let c = client(dev, Duration::from_secs(5)).unwrap();
        let url = format!("http://127.0.0.1:{port}/path-SECRET?token=query-SECRET");
        let err = c.get(&url).send().await.unwrap_err();
        clean(&OutboundError::from(err));
    }

    async fn serve(app: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_an_inner_address_is_refused_when_connecting() {
        let addr =
            serve(axum::Router::new().route("/", axum::routing::get(|| async { "hi" }))).await;
        let url = format!("https://localhost:{}/", addr.port());
        // The URL passes the check (a name), the connection does not.
        let c = client(OutboundPolicy::PUBLIC, Duration::from_secs(5)).unwrap();
        let err = c.get(&url).send().await.unwrap_err();
        let refusal = OutboundError::refusal_in(&err).expect("refused by the resolver");
        assert!(
            matches!(
                refusal,
                OutboundError::Forbidden {
                    why: "a loopback address",
                    ..
                }
            ),
            "{refusal}"
        );
        // Allowed in development (plain http to loopback).
        let dev = OutboundPolicy {
            allow_loopback: true,
        };
        let c = client(dev, Duration::from_secs(5)).unwrap();
        let url = format!("http://localhost:{}/", addr.port());
        assert_eq!(
            c.get(&url).send().await.unwrap().text().await.unwrap(),
            "hi"
        );
    }

    #[tokio::test]
    async fn redirects_stay_on_the_same_host_and_answers_are_capped() {
        use axum::response::Redirect;
        use axum::routing::get;
        let other = serve(axum::Router::new().route("/", get(|| async { "inner" }))).await;
        let to_other = format!("http://127.0.0.2:{}/", other.port());
        let app = axum::Router::new()
            .route("/same", get(|| async { Redirect::temporary("/final") }))
            .route("/final", get(|| async { "x".repeat(100) }))
            .route(
                "/away",
                get(move || {
                    let to = to_other.clone();
                    async move { Redirect::temporary(&to) }
                }),
            );
        let addr = serve(app).await;
        let dev = OutboundPolicy {
            allow_loopback: true,
        };
        let c = client(dev, Duration::from_secs(5)).unwrap();
        let base = format!("http://127.0.0.1:{}", addr.port());
        let r = c.get(format!("{base}/same")).send().await.unwrap();
        assert_eq!(read_capped(r, 100).await.unwrap().len(), 100);
        let r = c.get(format!("{base}/same")).send().await.unwrap();
        let e = read_capped(r, 99).await.unwrap_err();
        assert!(matches!(e, OutboundError::TooLarge { cap: 99, .. }), "{e}");
        let err = c.get(format!("{base}/away")).send().await.unwrap_err();
        let refusal = OutboundError::refusal_in(&err).expect("refused by the redirect rule");
        assert!(
            matches!(refusal, OutboundError::Redirect { .. }),
            "{refusal}"
        );
    }
}
