//! Outbound HTTP to addresses that users chose (webhook targets, organizations' sign-in
//! providers): the SSRF guard. A target must be a public address. IP literals are checked
//! before sending (`check_literal`); names are checked in the resolver reqwest connects
//! through, so the address checked is the address dialled (a name that resolves to a public
//! address when checked and a private one when dialled, DNS rebinding, cannot slip between the
//! two).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A target the guard refuses.
#[derive(Debug)]
pub struct PrivateTarget(pub String);

impl std::fmt::Display for PrivateTarget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} is not a public address", self.0)
    }
}

impl std::error::Error for PrivateTarget {}

/// Resolves names to their public addresses only (all, with `allow_private`).
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|address| allow_private || is_public(address.ip()))
                .collect();
            if allowed.is_empty() {
                let boxed: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(PrivateTarget(format!("{host} ({found:?})")));
                return Err(boxed);
            }
            let addresses: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

/// Refuses a URL whose host is a private IP literal (names go through `GuardedResolver`).
pub fn check_literal(url: &reqwest::Url) -> Result<(), PrivateTarget> {
    // The URL parser writes every IPv4 spelling (`127.1`, `2130706433`, `0x7f000001`) as
    // dotted decimal, and IPv6 in brackets.
    let literal = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    match literal {
        Some(ip) if !is_public(ip) => Err(PrivateTarget(ip.to_string())),
        _ => Ok(()),
    }
}

/// Whether a failed request failed on the guard (never worth retrying).
pub fn refused_by_guard(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<PrivateTarget>() {
            return Some(refused.to_string());
        }
        source = current.source();
    }
    None
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), multicast, documentation, benchmarking or reserved, including IPv4
/// addresses carried in IPv6 (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match segments {
        // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach an IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return is_public_v4(embedded(high, low)),
        [0x2002, high, low, ..] => return is_public_v4(embedded(high, low)),
        _ => {}
    }
    let first = segments[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // IPv4-compatible (::a.b.c.d, deprecated)
        || segments[..6] == [0; 6]
        // unique local fc00::/7, link-local fe80::/10, site-local fec0::/10
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // documentation 2001:db8::/32, Teredo 2001::/32, ORCHID and benchmarking 2001:2::/48
        || (first == 0x2001 && matches!(segments[1], 0x0db8 | 0x0000 | 0x0002)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_refused() {
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private} counted as public");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public} counted as private");
        }
    }
}
