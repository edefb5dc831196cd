//! Where deliveries may go: endpoint URLs are http(s) only, and no request reaches
//! loopback, link-local, private or other non-public addresses unless the operator
//! allows them (`WABRIDGE_ALLOW_PRIVATE_ENDPOINTS=true`) — checked when the
//! endpoint is saved and again on every connection (the resolver of the delivery
//! client refuses such addresses, so a name that later resolves to one, DNS
//! rebinding, gets nowhere).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Whether an address is one a public endpoint can have.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 (embeds v4)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[0] == 0x2002 // 6to4 (embeds v4)
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
            // v4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// Why an endpoint URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not a URL, or not http(s), or with credentials in it.
    #[error("{0}")]
    Invalid(String),
    /// It names (or resolves to) an address that is not public.
    #[error("{0}")]
    Private(String),
    /// Its host does not resolve.
    #[error("{0}")]
    Unresolvable(String),
}

/// Checks an endpoint URL: http(s), a host, no user info, at most 2,048 bytes; and
/// unless `allow_private`, every address its host resolves to is public.
pub async fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, TargetError> {
    if url.len() > 2048 {
        return Err(TargetError::Invalid("url is longer than 2048 bytes".into()));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| TargetError::Invalid(format!("url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Invalid(format!(
            "url must be http or https, not {}",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Invalid(
            "url must not carry credentials (put a secret in the path, or verify our signature)"
                .into(),
        ));
    }
    let Some(host) = parsed.host_str() else {
        return Err(TargetError::Invalid("url has no host".into()));
    };
    if allow_private {
        return Ok(parsed);
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                TargetError::Unresolvable(format!("url's host {host} does not resolve: {e}"))
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable(format!(
            "url's host {host} does not resolve"
        )));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(TargetError::Private(format!(
            "url's host {host} is (or resolves to) {}, a loopback, link-local or private address; set WABRIDGE_ALLOW_PRIVATE_ENDPOINTS=true to allow such endpoints",
            bad.ip()
        )));
    }
    Ok(parsed)
}

/// The delivery client's resolver: refuses names that resolve to non-public
/// addresses (unless allowed).
pub struct PublicOnly {
    /// Whether private addresses are allowed after all.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether the URL's host is an IP literal that is not public (the resolver is not
/// asked for literals, so every request checks them too).
pub fn literal_is_private(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "93.184.216.34"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(matches!(
            check_url("ftp://example.com/", false).await,
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            check_url("not a url", false).await,
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            check_url("https://u:p@example.com/", false).await,
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            check_url("http://127.0.0.1:9/x", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(matches!(
            check_url("http://[::1]:9/x", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(matches!(
            check_url("http://localhost:9/x", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(matches!(
            check_url("http://169.254.169.254/latest/meta-data", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(check_url("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(check_url("https://8.8.8.8/hook", false).await.is_ok());
    }

    #[test]
    fn literals_are_recognised() {
        let u = reqwest::Url::parse("http://10.0.0.1/x").unwrap();
        assert!(literal_is_private(&u));
        let u = reqwest::Url::parse("http://[::ffff:7f00:1]/x").unwrap();
        assert!(literal_is_private(&u));
        let u = reqwest::Url::parse("http://example.com/x").unwrap();
        assert!(!literal_is_private(&u));
    }
}
