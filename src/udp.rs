//! The UDP edge: the socket that carries the tunnel's datagrams.
//!
//! The Go lametun listens with `net.ListenUDP("udp4", …)`: IPv4 only, kernel-default
//! buffers, one datagram per system call. Ours is one IPv6 socket that also takes IPv4
//! (dual stack), so `-server` may name an IPv6 host; its buffers are large (most of the
//! loss the per-packet tunnels show on this machine happens in a full receive buffer);
//! and `quinn-udp` drives it, which brings batched receives (`recvmmsg` with UDP GRO),
//! batched sends (UDP GSO, probed at run time, and switched off by itself if the kernel
//! or the NIC refuses it with `EIO`), and the local address each datagram arrived at, so
//! that a server with several addresses answers from the one the client used.
//!
//! `quinn-udp` also sets the don't-fragment bit on every outer packet: the MTU arithmetic
//! (see `lametun_core::mtu`) makes sure they fit, and a wrong MTU shows up as an error
//! instead of silent fragmentation.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::device::SetupError;

/// The tunnel's UDP socket and its offload state.
pub struct Udp {
    /// The socket (non-blocking).
    pub socket: Arc<UdpSocket>,
    /// quinn-udp's per-socket state (GSO/GRO support, fallbacks).
    pub state: Arc<UdpSocketState>,
    /// The address it is bound to.
    pub local: SocketAddr,
    /// Whether UDP GSO is used for sending.
    pub gso: bool,
    /// Whether UDP GRO is on for receiving.
    pub gro: bool,
}

/// Where to bind: `bind` if configured, else the unspecified address of the peer's
/// family (dual-stack IPv6 when possible).
pub fn bind_address(bind: Option<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), port)
}

fn open(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // One socket for both families: IPv4 peers appear as ::ffff:a.b.c.d.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Opens the tunnel socket on `addr` with `buffer` bytes of socket buffer each way.
/// `offload` enables UDP GSO/GRO where the kernel has them.
pub fn bind(addr: SocketAddr, buffer: usize, offload: bool) -> Result<Udp, SetupError> {
    let socket = match open(addr) {
        Ok(s) => s,
        // No IPv6 on this host: fall back to IPv4 when nothing more specific was asked.
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
        {
            open(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
                .map_err(|e| explain(addr, &e))?
        }
        Err(e) => return Err(explain(addr, &e)),
    };
    set_buffers(&socket, buffer);
    let socket: UdpSocket = socket.into();
    let local = socket
        .local_addr()
        .map_err(|e| SetupError(format!("UDP socket: {e}")))?;
    let state = UdpSocketState::new(UdpSockRef::from(&socket))
        .map_err(|e| SetupError(format!("UDP socket {local}: {e}")))?;
    let mut gro = state.gro_segments() > 1;
    if !offload && gro {
        // quinn-udp turned UDP_GRO on; the config says no offloads.
        let _ = setsockopt(&socket, sockopt::UdpGroSegment, &false);
        gro = false;
    }
    let gso = offload && state.max_gso_segments() > 1;
    Ok(Udp {
        socket: Arc::new(socket),
        state: Arc::new(state),
        local,
        gso,
        gro,
    })
}

fn explain(addr: SocketAddr, e: &io::Error) -> SetupError {
    SetupError(match e.raw_os_error() {
        Some(nix::libc::EADDRINUSE) => format!(
            "UDP port {} is in use on {} (another lametun, or another program, has it): pick another with -port",
            addr.port(),
            addr.ip()
        ),
        Some(nix::libc::EADDRNOTAVAIL) => format!("cannot bind {addr}: no such local address"),
        Some(nix::libc::EACCES) => {
            format!("cannot bind {addr}: permission denied (ports below 1024 need root)")
        }
        _ => format!("cannot bind UDP {addr}: {e}"),
    })
}

/// Asks for `bytes` of send and receive buffer. As root the `*BUFFORCE` options pass
/// the `net.core.[rw]mem_max` limits; otherwise the kernel caps the request.
fn set_buffers(socket: &Socket, bytes: usize) {
    if setsockopt(socket, sockopt::SndBufForce, &bytes).is_err() {
        let _ = socket.set_send_buffer_size(bytes);
    }
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = socket.set_recv_buffer_size(bytes);
    }
    tracing::debug!(
        send = socket.send_buffer_size().ok(),
        recv = socket.recv_buffer_size().ok(),
        "UDP socket buffers"
    );
}

/// Resolves `host` (a name, an IPv4 or an IPv6 address, optionally in brackets) to the
/// address the client sends to.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, SetupError> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (bare, port)
        .to_socket_addrs()
        .map_err(|e| SetupError(format!("cannot resolve {host:?}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| SetupError(format!("cannot resolve {host:?}: no addresses")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_hosts_resolve_without_dns() {
        assert_eq!(
            resolve("192.0.2.1", 1234).unwrap(),
            "192.0.2.1:1234".parse().unwrap()
        );
        assert_eq!(
            resolve("[2001:db8::1]", 7).unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
        assert_eq!(
            resolve("2001:db8::1", 7).unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
        assert_eq!(resolve("localhost", 9).unwrap().port(), 9);
        let e = resolve("no-such-host.invalid", 1).unwrap_err();
        assert!(e.0.contains("cannot resolve"), "{e}");
    }

    #[test]
    fn a_port_in_use_is_explained() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 16, true).unwrap();
        let Err(e) = bind(first.local, 1 << 16, true) else {
            panic!("bound a port in use")
        };
        assert!(e.0.contains("is in use"), "{e}");
    }

    #[test]
    fn dual_stack_by_default() {
        let udp = bind(bind_address(None, 0), 1 << 16, true).unwrap();
        assert!(udp.local.is_ipv6() || udp.local.is_ipv4());
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .send_to(b"x", (Ipv4Addr::LOCALHOST, udp.local.port()))
            .unwrap();
    }
}
