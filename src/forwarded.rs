//! Who the client is when the server sits behind proxies. Only a request
//! whose TCP peer is a trusted proxy (`TRUSTED_PROXIES`) has its
//! `Forwarded` or `X-Forwarded-For` header read, and then the client is the
//! rightmost address in it that is not a trusted proxy: every proxy appends
//! the address it received the request from, so everything left of the
//! first untrusted hop was written by the client and proves nothing.
//!
//! No HTTP framework here: the web layer passes the peer and the header
//! values in.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr as _;

use ipnet::IpNet;

/// The networks whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl TrustedProxies {
    /// Parses one entry: a network in CIDR form (`10.0.0.0/8`, `fd00::/8`)
    /// or one address (`10.1.2.3`, a /32 or /128). A network with host bits
    /// set (`10.1.2.3/8`) is refused rather than guessed at, and so is one
    /// that holds every address (`0.0.0.0/0`): it would let any client
    /// choose the address it is known by. IPv4-mapped IPv6 entries mean
    /// their IPv4 network, as peers are compared in that form.
    pub fn parse_entry(raw: &str) -> Result<IpNet, String> {
        if let Ok(ip) = IpAddr::from_str(raw) {
            return Ok(IpNet::from(ip.to_canonical()));
        }
        let net = IpNet::from_str(raw)
            .map_err(|_| "is neither an address nor a network like 10.0.0.0/8".to_owned())?;
        if net.trunc() != net {
            return Err(format!(
                "has bits set beyond its prefix; the network is {}",
                net.trunc()
            ));
        }
        if net.prefix_len() == 0 {
            return Err("holds every address, so any client could choose the address it is known by; list the proxies' own addresses or networks".to_owned());
        }
        if let IpNet::V6(v6) = net
            && let Some(v4) = v6.addr().to_ipv4_mapped()
            && v6.prefix_len() >= 96
        {
            let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map_err(|_| "is not a valid network".to_owned())?;
            return Ok(IpNet::V4(v4));
        }
        Ok(net)
    }

    /// The proxies of these networks.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: `peer`, unless `peer` is a trusted proxy; then
    /// the rightmost untrusted hop of the forwarding header.
    ///
    /// `forwarded` and `x_forwarded_for` are every value of those headers,
    /// in order. When both headers are present they must name the same
    /// client; otherwise one of them was written by the client (a proxy
    /// manages one and passes the other on), and the request counts as
    /// coming from `peer`, a bucket that no honest client shares with it.
    pub fn client(&self, peer: IpAddr, forwarded: &[&str], x_forwarded_for: &[&str]) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let by_forwarded = (!forwarded.is_empty())
            .then(|| self.rightmost_untrusted(peer, forwarded_hops(forwarded)));
        let by_xff = (!x_forwarded_for.is_empty())
            .then(|| self.rightmost_untrusted(peer, xff_hops(x_forwarded_for)));
        match (by_forwarded, by_xff) {
            (None, None) => peer,
            (Some(client), None) | (None, Some(client)) => client,
            (Some(a), Some(b)) if a == b => a,
            (Some(_), Some(_)) => peer,
        }
    }

    /// Walks `hops` from the right, past trusted proxies, to the first
    /// address that is not one. A hop that is not an address (`unknown`, an
    /// obfuscated name, garbage) ends the walk at the last address known:
    /// the proxy that passed it on.
    fn rightmost_untrusted(&self, peer: IpAddr, hops: Vec<Option<IpAddr>>) -> IpAddr {
        let mut last = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = hop else { return last };
            let ip = ip.to_canonical();
            if !self.contains(ip) {
                return ip;
            }
            last = ip;
        }
        // Every hop is a trusted proxy: the leftmost is the client.
        last
    }
}

/// The hops of `X-Forwarded-For` values: addresses separated by commas,
/// some proxies adding a port or brackets.
fn xff_hops(values: &[&str]) -> Vec<Option<IpAddr>> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .map(parse_node)
        .collect()
}

/// The `for=` of each element of `Forwarded` values (RFC 7239): elements
/// separated by commas, pairs by semicolons, values tokens or quoted
/// strings with `\` escapes. An element without `for=` is a hop we know
/// nothing of, and so is one whose quotes never close: a client that opens
/// a quote must not swallow what the proxy appended after it.
fn forwarded_hops(values: &[&str]) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in values {
        let (elements, unterminated) = split_outside_quotes(value, ',');
        let last = elements.len().saturating_sub(1);
        for (i, element) in elements.into_iter().enumerate() {
            if unterminated && i == last {
                hops.push(None);
                continue;
            }
            if element.trim().is_empty() {
                continue;
            }
            let (pairs, _) = split_outside_quotes(element, ';');
            let node = pairs.into_iter().find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| unquote(value.trim()))
            });
            hops.push(node.and_then(|n| parse_node(&n)));
        }
    }
    hops
}

/// Splits at `separator`, except inside double-quoted strings (where `\`
/// escapes the next character). Also says whether a quote was left open.
fn split_outside_quotes(text: &str, separator: char) -> (Vec<&str>, bool) {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    (parts, quoted)
}

/// A token, or a quoted string without its quotes and escapes.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    IpAddr::from_str(node)
        .ok()
        .or_else(|| SocketAddr::from_str(node).ok().map(|a| a.ip()))
        .or_else(|| {
            node.strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .and_then(|n| IpAddr::from_str(n).ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            entries
                .iter()
                .map(|e| TrustedProxies::parse_entry(e).unwrap())
                .collect(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn entries_are_networks_or_single_addresses_and_host_bits_are_refused() {
        assert_eq!(
            TrustedProxies::parse_entry("10.0.0.0/8")
                .unwrap()
                .to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            TrustedProxies::parse_entry("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            TrustedProxies::parse_entry("::ffff:10.1.2.3")
                .unwrap()
                .to_string(),
            "10.1.2.3/32",
            "an IPv4-mapped address means the IPv4 one"
        );
        assert_eq!(
            TrustedProxies::parse_entry("fd00::/8").unwrap().to_string(),
            "fd00::/8"
        );
        let error = TrustedProxies::parse_entry("10.1.2.3/8").unwrap_err();
        assert!(error.contains("10.0.0.0/8"), "{error}");
        assert!(TrustedProxies::parse_entry("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse_entry("proxy.internal").is_err());
        assert!(TrustedProxies::parse_entry("*").is_err());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &["for=1.1.1.1"], &["1.1.1.1"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &[], &["1.1.1.1"]),
            ip("10.0.0.1"),
            "nothing is trusted by default"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.0.1"]);
        let peer = ip("10.0.0.2");
        // The client forged the leftmost entry; the proxy appended the truth.
        assert_eq!(
            trusted.client(peer, &[], &["6.6.6.6, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Two proxies: one more trusted hop to skip.
        assert_eq!(
            trusted.client(peer, &[], &["6.6.6.6, 198.51.100.7, 192.168.0.1"]),
            ip("198.51.100.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            trusted.client(peer, &[], &["6.6.6.6", "198.51.100.7", "10.9.9.9"]),
            ip("198.51.100.7")
        );
        // Ports and brackets as some proxies write them.
        assert_eq!(
            trusted.client(peer, &[], &["198.51.100.7:5555"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.client(peer, &[], &["[2001:db8::7]:5555"]),
            ip("2001:db8::7")
        );
        // The same through Forwarded.
        assert_eq!(
            trusted.client(
                peer,
                &["for=6.6.6.6;proto=https, for=\"[2001:db8::7]:4711\";by=10.0.0.2"],
                &[]
            ),
            ip("2001:db8::7")
        );
        assert_eq!(
            trusted.client(peer, &["For=198.51.100.7"], &[]),
            ip("198.51.100.7"),
            "parameter names are case-insensitive"
        );
    }

    #[test]
    fn a_hop_that_is_no_address_stops_at_the_proxy_that_passed_it_on() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        assert_eq!(trusted.client(peer, &["for=unknown"], &[]), peer);
        assert_eq!(
            trusted.client(peer, &["for=_hidden, for=10.0.0.5"], &[]),
            ip("10.0.0.5")
        );
        assert_eq!(trusted.client(peer, &[], &["1.1.1.1, garbage"]), peer);
        assert_eq!(trusted.client(peer, &["proto=https"], &[]), peer);
        assert_eq!(
            trusted.client(peer, &[], &[""]),
            peer,
            "an empty header names nobody"
        );
        // Every hop a proxy: the leftmost is the client.
        assert_eq!(
            trusted.client(peer, &[], &["10.1.1.1, 10.2.2.2"]),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn a_quote_a_client_leaves_open_or_escapes_cannot_swallow_the_proxys_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        // What a proxy that appends on the same line passes on.
        assert_eq!(
            trusted.client(peer, &[r#"for=6.6.6.6;x="\"", for=198.51.100.7"#], &[]),
            ip("198.51.100.7"),
            "an escaped quote does not end the string"
        );
        assert_eq!(
            trusted.client(peer, &[r#"for=6.6.6.6;x="open, for=198.51.100.7"#], &[]),
            peer,
            "an unterminated quote makes the rest unknown: the proxy counts"
        );
        assert_eq!(
            trusted.client(peer, &[r#"for="198.51.100.\7""#], &[]),
            ip("198.51.100.7"),
            "escapes inside a quoted value are undone"
        );
    }

    #[test]
    fn networks_of_every_address_are_refused_and_mapped_ones_mean_ipv4() {
        for all in ["0.0.0.0/0", "::/0"] {
            assert!(TrustedProxies::parse_entry(all).is_err(), "{all}");
        }
        assert_eq!(
            TrustedProxies::parse_entry("::ffff:10.0.0.0/104")
                .unwrap()
                .to_string(),
            "10.0.0.0/8"
        );
        let trusted = proxies(&["::ffff:10.0.0.0/104"]);
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn two_headers_that_disagree_count_as_the_proxy_itself() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        assert_eq!(
            trusted.client(peer, &["for=198.51.100.7"], &["198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.client(peer, &["for=6.6.6.6"], &["198.51.100.7"]),
            peer,
            "one of them is the client's own invention"
        );
    }

    #[test]
    fn ipv4_mapped_peers_and_hops_match_ipv4_networks() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.2"), &[], &["::ffff:198.51.100.7"]),
            ip("198.51.100.7")
        );
    }

    proptest! {
        #[test]
        fn whatever_a_client_prepends_it_cannot_choose_its_address(
            forged in proptest::collection::vec(any::<[u8; 4]>(), 0..6),
            junk in "[ -~]{0,40}",
        ) {
            let trusted = proxies(&["10.0.0.0/8"]);
            let real = ip("198.51.100.7");
            let mut chain: Vec<String> = forged.iter().map(|o| IpAddr::from(*o).to_string()).collect();
            chain.push(junk.replace(',', " "));
            let xff = format!("{}, {real}", chain.join(", "));
            prop_assert_eq!(trusted.client(ip("10.0.0.2"), &[], &[&xff]), real);
            // In Forwarded, a client's escape or open quote may make the
            // rest unreadable: then the proxy itself counts, never an
            // address of the client's choosing.
            let forwarded = format!("for=\"{}\";proto=http, for={real}", junk.replace('"', ""));
            let peer = ip("10.0.0.2");
            let client = trusted.client(peer, &[&forwarded], &[]);
            prop_assert!(client == real || client == peer, "{client}");
            // Whatever a Forwarded value holds, it parses without a panic.
            let _ = trusted.client(ip("10.0.0.2"), &[&junk], &[]);
        }
    }
}
