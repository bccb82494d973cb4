//! Who is calling: the client address (the peer, or what trusted proxies say in
//! `X-Forwarded-For`) and the per-endpoint CIDR allowlist.
//!
//! `X-Forwarded-For` is read only when the peer is a trusted proxy, and then from the right: each
//! proxy appends the address it received the request from, so the rightmost entry that is not a
//! trusted proxy is the first address nobody we trust could have forged. Entries left of it are
//! whatever the client sent. An entry that is not an address makes the client unknown, and an
//! unknown client is refused (fail closed).

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// A set of networks (empty: matches nothing).
#[derive(Debug, Clone, Default)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `ip` (IPv4-mapped IPv6 read as IPv4) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// An endpoint's allowlist: everyone when empty.
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Networks);

impl Allowlist {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(Networks::new(nets))
    }

    /// True when `client` may call.
    pub fn permits(&self, client: IpAddr) -> bool {
        self.0.is_empty() || self.0.contains(client)
    }
}

/// The client address could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Forwarded-For from a trusted proxy holds an entry that is not an address")]
pub struct UnknownClient;

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy (or the leftmost entry when all
/// are trusted). `forwarded_for` are the header's values in the order received.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a [u8]>,
    trusted: &Networks,
) -> Result<IpAddr, UnknownClient> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    let mut entries: Vec<&[u8]> = Vec::new();
    for value in forwarded_for {
        entries.extend(value.split(|b| *b == b','));
    }
    let mut client = peer;
    for entry in entries.iter().rev() {
        let ip = parse_entry(entry).ok_or(UnknownClient)?;
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    Ok(client)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::settings::parse_networks;

    fn nets(list: &[&str]) -> Networks {
        Networks::new(
            parse_networks(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(peer: &str, xff: &[&str], trusted: &[&str]) -> Result<IpAddr, UnknownClient> {
        client_ip(ip(peer), xff.iter().map(|v| v.as_bytes()), &nets(trusted))
    }

    #[test]
    fn without_a_trusted_proxy_the_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(
            client("203.0.113.9", &["10.0.0.1"], &[]),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            client("203.0.113.9", &["10.0.0.1"], &["10.0.0.0/8"]),
            Ok(ip("203.0.113.9")),
            "an untrusted peer cannot claim an address"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            client("10.0.0.5", &["198.51.100.7"], &trusted),
            Ok(ip("198.51.100.7"))
        );
        // A client forging an allowed address on the left gains nothing.
        assert_eq!(
            client("10.0.0.5", &["192.0.2.1, 198.51.100.7, 10.0.0.9"], &trusted),
            Ok(ip("198.51.100.7"))
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client("10.0.0.5", &["192.0.2.1", "198.51.100.7"], &trusted),
            Ok(ip("198.51.100.7"))
        );
        // Ports and IPv6 forms.
        assert_eq!(
            client("10.0.0.5", &["198.51.100.7:4711"], &trusted),
            Ok(ip("198.51.100.7"))
        );
        assert_eq!(
            client("10.0.0.5", &["[2001:db8::1]:443"], &trusted),
            Ok(ip("2001:db8::1"))
        );
        // All trusted: the leftmost; no header: the proxy itself.
        assert_eq!(
            client("10.0.0.5", &["10.1.1.1, 10.2.2.2"], &trusted),
            Ok(ip("10.1.1.1"))
        );
        assert_eq!(client("10.0.0.5", &[], &trusted), Ok(ip("10.0.0.5")));
    }

    #[test]
    fn garbage_from_a_trusted_proxy_makes_the_client_unknown() {
        assert_eq!(
            client("10.0.0.5", &["198.51.100.7, unknown"], &["10.0.0.0/8"]),
            Err(UnknownClient)
        );
        // Garbage left of the client is never read.
        assert_eq!(
            client("10.0.0.5", &["junk, 198.51.100.7"], &["10.0.0.0/8"]),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn allowlist_matches_cidrs_and_mapped_addresses() {
        let allow = Allowlist::new(
            parse_networks(&["198.51.100.0/24".to_string(), "2001:db8::/32".to_string()]).unwrap(),
        );
        assert!(allow.permits(ip("198.51.100.200")));
        assert!(allow.permits(ip("::ffff:198.51.100.200")));
        assert!(allow.permits(ip("2001:db8:1::5")));
        assert!(!allow.permits(ip("198.51.101.1")));
        assert!(Allowlist::default().permits(ip("192.0.2.1")));
        let trusted = nets(&["127.0.0.1"]);
        assert_eq!(
            client_ip(
                ip("::ffff:127.0.0.1"),
                ["192.0.2.3".as_bytes()].into_iter(),
                &trusted
            ),
            Ok(ip("192.0.2.3"))
        );
    }
}
