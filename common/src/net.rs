//! Free ports: the one place a Roost part asks the system for an unused port.
//!
//! A port is picked below the kernel's ephemeral range (`ip_local_port_range`): a port
//! the kernel hands out for binding port 0 can be taken, between the check and the
//! caller's own bind, by any outgoing connection on the machine (seen: a component of
//! `roost up` failing with "Address already in use" under a test's load); a port below
//! that range is only ever taken by someone binding it on purpose.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// The lowest port picked.
const LOWEST: u16 = 10_000;
/// Ports handed out recently by this process, not handed out again.
static RECENT: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());
const REMEMBERED: usize = 4096;

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// Picks a port in `LOWEST..below` that `bind` accepts and this process has not handed out
/// recently; falls back to the kernel's choice (`bind(0)`) when none is found.
fn pick(below: u16, bind: impl Fn(u16) -> std::io::Result<u16>) -> std::io::Result<u16> {
    if below > LOWEST + 1000 {
        let span = u64::from(below - LOWEST);
        for _ in 0..200 {
            let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
            let port = LOWEST + (random % span) as u16;
            let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
            if recent.contains(&port) {
                continue;
            }
            if bind(port).is_ok() {
                recent.push_back(port);
                if recent.len() > REMEMBERED {
                    recent.pop_front();
                }
                return Ok(port);
            }
        }
    }
    bind(0)
}

/// A TCP port free on `ip` right now, below the ephemeral range (another process may
/// still bind it on purpose before the caller does).
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    pick(ephemeral_start(), |p| Ok(TcpListener::bind(SocketAddr::new(ip, p))?.local_addr()?.port()))
}

/// A UDP port free on `ip` right now, below the ephemeral range.
pub fn free_udp_port(ip: IpAddr) -> std::io::Result<u16> {
    pick(ephemeral_start(), |p| Ok(UdpSocket::bind(SocketAddr::new(ip, p))?.local_addr()?.port()))
}

/// A port free on `ip` for both UDP and TCP right now, below the ephemeral range (statsd
/// takes both on one port).
pub fn free_udp_and_tcp_port(ip: IpAddr) -> std::io::Result<u16> {
    pick(ephemeral_start(), |p| {
        let udp = UdpSocket::bind(SocketAddr::new(ip, p))?;
        let port = udp.local_addr()?.port();
        TcpListener::bind(SocketAddr::new(ip, port))?;
        Ok(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_free_port_is_below_the_ephemeral_range_and_not_handed_out_twice() {
        // Binding it again here would race with every other test of the process that
        // opens a socket (the port is free only until someone takes it), so this checks
        // what the function itself guarantees.
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let start = ephemeral_start();
        let ports: Vec<u16> = (0..50).map(|_| free_port(ip).unwrap()).collect();
        assert!(ports.iter().all(|&p| (LOWEST..start).contains(&p)), "{ports:?} (ephemeral from {start})");
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice: {ports:?}");
        let udp = free_udp_port(ip).unwrap();
        assert!((LOWEST..start).contains(&udp), "{udp}");
        let both = free_udp_and_tcp_port(ip).unwrap();
        assert!((LOWEST..start).contains(&both), "{both}");
    }

    #[test]
    fn no_room_below_the_range_falls_back_to_the_kernels_choice() {
        assert_eq!(pick(LOWEST + 10, |p| Ok(if p == 0 { 40_000 } else { p })).unwrap(), 40_000);
    }
}
