//! Which senders the listener believes: the allow-list parsed from
//! `ROOST_STATSD_ALLOWED_SOURCES` (IPs, CIDRs, host names) and the match of a datagram's
//! source against it. Pure code; resolving host names is the caller's I/O
//! ([`crate::refresh`]).
//!
//! # The default: loopback only
//!
//! Unset, the listener accepts datagrams from loopback addresses only (`127.0.0.0/8`,
//! `::1`). Issue 13 was a listener that believed anyone who could reach its UDP port; a
//! default of "anywhere, with a warning" would leave every deployment that forgets the
//! variable open to the same flood, and a warning at start is read by nobody. Both ways
//! Roost is started set the variable explicitly (`roost up`: `127.0.0.1`; compose.yaml:
//! `envoy,orchestrator`), so the default only decides for a hand-made deployment, where
//! a mistake shows at once and says what to do: `roost_statsd_denied_datagrams_total`
//! grows and a warning names the refused source and this variable. `*` (or `0.0.0.0/0,::/0`)
//! accepts from anywhere, for whoever wants that.

use std::collections::HashMap;
use std::net::IpAddr;

/// One entry of the allow-list, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Any sender (`*`).
    Any,
    /// An address or a network (`10.0.0.5`, `10.0.0.0/8`, `fd00::/8`).
    Net(Cidr),
    /// A host name, resolved at start and again periodically (`envoy`).
    Host(String),
}

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A single address.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }
    }

    /// Whether `ip` is inside the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(width - prefix);
    (bits >> keep) << keep
}

/// Why an entry of `ROOST_STATSD_ALLOWED_SOURCES` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// An empty entry.
    #[error("an empty entry in ROOST_STATSD_ALLOWED_SOURCES; write IPs, CIDRs or host names separated by commas")]
    Empty,
    /// A CIDR whose address or prefix does not parse.
    #[error("{0:?} in ROOST_STATSD_ALLOWED_SOURCES is not a network; write it as 10.0.0.0/8 or fd00::/8 (prefix up to 32 for IPv4, 128 for IPv6)")]
    BadCidr(String),
    /// Neither an address nor a host name.
    #[error("{0:?} in ROOST_STATSD_ALLOWED_SOURCES is neither an IP address nor a host name")]
    BadHost(String),
}

/// Parses one entry.
pub fn parse_source(s: &str) -> Result<Source, SourceError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(SourceError::Empty);
    }
    if s == "*" {
        return Ok(Source::Any);
    }
    if let Some((addr, prefix)) = s.split_once('/') {
        let bad = || SourceError::BadCidr(s.to_string());
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > width {
            return Err(bad());
        }
        return Ok(Source::Net(Cidr { addr, prefix }));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Source::Net(Cidr::host(ip)));
    }
    let host_ok = s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    if !host_ok {
        return Err(SourceError::BadHost(s.to_string()));
    }
    Ok(Source::Host(s.to_string()))
}

/// Parses every entry, reporting every bad one at once. An empty list means the
/// default: loopback only.
pub fn parse_sources(entries: &[String]) -> Result<Vec<Source>, Vec<SourceError>> {
    let (ok, bad): (Vec<_>, Vec<_>) = entries.iter().map(|e| parse_source(e)).partition(Result::is_ok);
    if !bad.is_empty() {
        return Err(bad.into_iter().filter_map(Result::err).collect());
    }
    let ok: Vec<Source> = ok.into_iter().filter_map(Result::ok).collect();
    if ok.is_empty() {
        return Ok(default_sources());
    }
    Ok(ok)
}

/// The default allow-list: loopback.
pub fn default_sources() -> Vec<Source> {
    vec![
        Source::Net(Cidr { addr: IpAddr::from([127, 0, 0, 0]), prefix: 8 }),
        Source::Net(Cidr::host(IpAddr::from(std::net::Ipv6Addr::LOCALHOST))),
    ]
}

/// The host names among the sources (to resolve).
pub fn host_names(sources: &[Source]) -> Vec<String> {
    sources.iter().filter_map(|s| if let Source::Host(h) = s { Some(h.clone()) } else { None }).collect()
}

/// The allow-list in force: the sources, with each host name's addresses as last resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    any: bool,
    nets: Vec<Cidr>,
}

impl AllowList {
    /// Builds the list from the sources and the addresses each host name resolved to
    /// (a name absent from `resolved`, or resolved to nothing, allows nothing yet).
    pub fn build(sources: &[Source], resolved: &HashMap<String, Vec<IpAddr>>) -> AllowList {
        let mut list = AllowList::default();
        for s in sources {
            match s {
                Source::Any => list.any = true,
                Source::Net(c) => list.nets.push(*c),
                Source::Host(h) => list.nets.extend(resolved.get(h).into_iter().flatten().map(|ip| Cidr::host(*ip))),
            }
        }
        list
    }

    /// Whether a datagram from `ip` is believed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.any || self.nets.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str], resolved: &[(&str, &[&str])]) -> AllowList {
        let sources = parse_sources(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let resolved = resolved.iter().map(|(h, ips)| (h.to_string(), ips.iter().map(|s| ip(s)).collect())).collect();
        AllowList::build(&sources, &resolved)
    }

    #[test]
    fn default_is_loopback_only() {
        let l = list(&[], &[]);
        assert!(l.allows(ip("127.0.0.1")));
        assert!(l.allows(ip("127.0.0.2")));
        assert!(l.allows(ip("::1")));
        assert!(l.allows(ip("::ffff:127.0.0.1")), "IPv4-mapped loopback on a dual-stack socket");
        assert!(!l.allows(ip("10.0.0.1")));
        assert!(!l.allows(ip("::2")));
    }

    #[test]
    fn addresses_and_cidrs_match() {
        let l = list(&["10.1.2.3", "172.16.0.0/12", "fd00::/8"], &[]);
        assert!(l.allows(ip("10.1.2.3")));
        assert!(!l.allows(ip("10.1.2.4")));
        assert!(l.allows(ip("172.16.0.1")));
        assert!(l.allows(ip("172.31.255.255")));
        assert!(!l.allows(ip("172.32.0.0")));
        assert!(!l.allows(ip("127.0.0.1")), "setting the list replaces the loopback default");
        assert!(l.allows(ip("fd12::1")));
        assert!(!l.allows(ip("fe80::1")));
        assert!(l.allows(ip("::ffff:172.20.0.9")));
        let all = list(&["0.0.0.0/0"], &[]);
        assert!(all.allows(ip("8.8.8.8")) && !all.allows(ip("::1")));
        let net32 = list(&["192.168.1.7/32"], &[]);
        assert!(net32.allows(ip("192.168.1.7")) && !net32.allows(ip("192.168.1.6")));
    }

    #[test]
    fn host_names_allow_what_they_resolved_to() {
        let l = list(&["envoy", "127.0.0.1"], &[("envoy", &["172.18.0.5"])]);
        assert!(l.allows(ip("172.18.0.5")));
        assert!(!l.allows(ip("172.18.0.6")));
        // Not resolved (yet): the name allows nothing, the rest still works.
        let l = list(&["envoy", "127.0.0.1"], &[]);
        assert!(!l.allows(ip("172.18.0.5")) && l.allows(ip("127.0.0.1")));
        assert_eq!(host_names(&parse_sources(&["envoy".into(), "10.0.0.0/8".into()]).unwrap()), ["envoy"]);
    }

    #[test]
    fn star_accepts_anyone() {
        let l = list(&["*"], &[]);
        assert!(l.allows(ip("203.0.113.9")) && l.allows(ip("2001:db8::1")));
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let entries: Vec<String> =
            ["10.0.0.0/33", "", "no way", "fd00::/129", "1.2.3.4/x", "ok-host"].iter().map(|s| s.to_string()).collect();
        let errs = parse_sources(&entries).unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(errs[0].to_string().contains("10.0.0.0/33"), "{}", errs[0]);
    }
}
