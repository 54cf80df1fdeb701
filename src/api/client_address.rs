//! The client's address: the TCP peer, or, when the peer is a trusted proxy
//! (`KEEL_TRUSTED_PROXIES`), the nearest untrusted hop of `X-Forwarded-For`. Computed once per
//! request, so sessions and rate limits see the same address on every door.

use crate::domain::auth::ClientInfo;
use crate::domain::tenancy::ip_rules::AddressBlock;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Where a request came from: the address `attach` worked out, the user agent (at most 512
/// characters) and the request id (at most 128).
pub fn client_info(extensions: &http::Extensions, headers: &http::HeaderMap) -> ClientInfo {
    ClientInfo {
        request_id: headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(|id| id.chars().take(128).collect()),
        ip_address: extensions
            .get::<ClientAddress>()
            .map(|ClientAddress(address)| address.to_string()),
        user_agent: headers
            .get(http::header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(512).collect()),
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    blocks: Vec<AddressBlock>,
}

impl TrustedProxies {
    pub fn new(blocks: Vec<AddressBlock>) -> Self {
        Self { blocks }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(address))
    }

    fn client_address(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map_while(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect();
        hops.iter()
            .rev()
            .find(|hop| !self.trusts(**hop))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// Middleware that attaches the `ClientAddress` to every request.
pub async fn attach(
    State(trusted): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        let address = trusted.client_address(peer.ip(), request.headers());
        request.extensions_mut().insert(ClientAddress(address));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            forwarded.parse().unwrap_or_else(|_| panic!("header")),
        );
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| panic!("{text}"))
    }

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() -> anyhow::Result<()> {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse()?, "::1".parse()?]);
        let chain = headers("198.51.100.9, 203.0.113.7, 10.1.2.3");
        assert_eq!(
            trusted.client_address(ip("10.0.0.1"), &chain),
            ip("203.0.113.7")
        );
        assert_eq!(
            trusted.client_address(ip("192.0.2.1"), &chain),
            ip("192.0.2.1")
        );
        assert_eq!(
            trusted.client_address(ip("::1"), &headers("203.0.113.8")),
            ip("203.0.113.8")
        );
        assert_eq!(
            trusted.client_address(ip("10.0.0.1"), &http::HeaderMap::new()),
            ip("10.0.0.1")
        );
        assert_eq!(
            trusted.client_address(ip("10.0.0.1"), &headers("junk")),
            ip("10.0.0.1")
        );
        Ok(())
    }
}
