//! Free ports: the one place a Roost part asks the system for an unused port.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

/// A TCP port free on `ip` right now (the system picks it; another process may still take
/// it before the caller binds it).
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()?.port())
}

/// A UDP port free on `ip` right now.
pub fn free_udp_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(UdpSocket::bind(SocketAddr::new(ip, 0))?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_free_port_is_a_port_the_kernel_gave() {
        // Binding it again here would race with every other test of the process that
        // opens a socket (the port is free only until someone takes it), so this checks
        // what the function itself guarantees: a port the kernel chose (not 0).
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let tcp = free_port(ip).unwrap();
        assert_ne!(tcp, 0);
        let udp = free_udp_port(ip).unwrap();
        assert_ne!(udp, 0);
    }
}
