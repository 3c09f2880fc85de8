//! The UDP edge: the sockets that carry the tunnel's datagrams.
//!
//! The Go lametun listens with `net.ListenUDP("udp4", …)`: IPv4 only, kernel-default
//! buffers, one datagram per system call. Ours is an IPv6 socket that also takes IPv4
//! (dual stack), so `-server` may name an IPv6 host, or several such sockets, one per
//! worker ([`bind_paths`]); their buffers are large (most of the
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

/// One of the tunnel's UDP sockets and its offload state.
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

fn open(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // One socket for both families: IPv4 peers appear as ::ffff:a.b.c.d.
        socket.set_only_v6(false)?;
    }
    if reuse_port {
        setsockopt(&socket, sockopt::ReusePort, &true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// [`open`], falling back to IPv4 on a host without IPv6 when nothing more specific than
/// the dual-stack wildcard was asked for.
fn open_any(addr: SocketAddr, reuse_port: bool) -> Result<Socket, SetupError> {
    match open(addr, reuse_port) {
        Ok(s) => Ok(s),
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
        {
            open(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                reuse_port,
            )
            .map_err(|e| explain(addr, &e))
        }
        Err(e) => Err(explain(addr, &e)),
    }
}

/// Opens the tunnel socket on `addr` with `buffer` bytes of socket buffer each way.
/// `offload` enables UDP GSO/GRO where the kernel has them.
pub fn bind(addr: SocketAddr, buffer: usize, offload: bool) -> Result<Udp, SetupError> {
    finish(open_any(addr, false)?, buffer, offload)
}

/// Opens `count` tunnel sockets on `addr`, one per path (see
/// `lametun_core::forwarder`'s "Paths"), each as [`bind`] does.
///
/// - A listener's sockets share its port (`SO_REUSEPORT`), and a small classic BPF
///   program makes the kernel hand each datagram to socket *source port mod count*
///   (without it, a hash of the addresses picks one, and two client sockets land on
///   the same one half the time). Before the group is bound, one socket without
///   `SO_REUSEPORT` checks that the port is free, so that a second lametun on the
///   same port fails as it does with one path, rather than sharing its datagrams. (Two
///   lametuns started in the same instant could both pass the probe, and another
///   program of the same user that sets `SO_REUSEPORT` can join the group: the kernel
///   allows it.)
/// - A client's sockets take consecutive ports from a multiple of `count` when they are
///   free: socket *i* has a port equal to *i* mod `count`, so a listener with as many
///   sockets receives its datagrams on socket *i* too. The flows that the client sends
///   from socket *i* are those of its TUN queue *i*, which the listener writes on its
///   queue *i* and answers from its socket *i*, to the address its path *i* learned:
///   client socket *i* again. Both directions of a flow keep to one socket pair, and the
///   path that answers a flow is kept fresh by the flow itself. When no such block of
///   ports is free after a few tries, consecutive ports, or any (logged).
pub fn bind_paths(
    addr: SocketAddr,
    count: usize,
    buffer: usize,
    offload: bool,
) -> Result<Vec<Udp>, SetupError> {
    match count {
        0 | 1 => Ok(vec![bind(addr, buffer, offload)?]),
        _ if addr.port() != 0 => listener_sockets(addr, count, buffer, offload),
        _ => client_sockets(addr, count, buffer, offload),
    }
}

/// A listener's `count` sockets on one port (see [`bind_paths`]): a probe without
/// `SO_REUSEPORT` first, then the group, steered by source port.
fn listener_sockets(
    addr: SocketAddr,
    count: usize,
    buffer: usize,
    offload: bool,
) -> Result<Vec<Udp>, SetupError> {
    let local = open_any(addr, false)?
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    // The probe is closed here; the group binds where it bound.
    (0..count)
        .map(|i| {
            let socket = open_any(local, true)?;
            if i == 0 {
                steer_by_source_port(&socket, count);
            }
            finish(socket, buffer, offload)
        })
        .collect()
}

/// A client's `count` sockets (see [`bind_paths`]): the block of `count` ports from a
/// multiple of `count` around an ephemeral port the kernel picks, if all are free (a
/// few tries); else consecutive ports from an ephemeral one; else any.
fn client_sockets(
    addr: SocketAddr,
    count: usize,
    buffer: usize,
    offload: bool,
) -> Result<Vec<Udp>, SetupError> {
    const TRIES: usize = 8;
    let any = SocketAddr::new(addr.ip(), 0);
    let port_of = |s: &Socket| s.local_addr().ok().and_then(|a| a.as_socket());
    for _ in 0..TRIES {
        let probe = open_any(any, false)?;
        let Some(local) = port_of(&probe) else { break };
        let base = usize::from(local.port()) / count * count;
        let mut probe = Some(probe);
        let block: Option<Vec<Socket>> = (base..base + count)
            .map(|port| match u16::try_from(port).ok()? {
                p if p == local.port() => probe.take(),
                p => open(SocketAddr::new(local.ip(), p), false).ok(),
            })
            .collect();
        if let Some(block) = block {
            return block
                .into_iter()
                .map(|s| finish(s, buffer, offload))
                .collect();
        }
    }
    let first = bind(any, buffer, offload)?;
    let (ip, from) = (first.local.ip(), usize::from(first.local.port()));
    let mut sockets = vec![first];
    for i in 1..count {
        let next = u16::try_from(from + i)
            .ok()
            .and_then(|port| open(SocketAddr::new(ip, port), false).ok());
        sockets.push(match next {
            Some(socket) => finish(socket, buffer, offload)?,
            None => bind(SocketAddr::new(ip, 0), buffer, offload)?,
        });
    }
    let ports: Vec<u16> = sockets.iter().map(|s| s.local.port()).collect();
    tracing::info!(
        ?ports,
        "no free block of {count} UDP ports from a multiple of {count}: a server with as many sockets may answer a flow on another socket pair"
    );
    Ok(sockets)
}

/// Attaches to a `SO_REUSEPORT` group the classic BPF program that picks the socket
/// *UDP source port mod `count`* (IPv4 with any header length; IPv6 without extension
/// headers, else it reads two bytes of the extension header, which still picks a
/// socket of the group). A load past the end of a packet makes the program return 0:
/// socket 0. Not fatal: a kernel without it spreads by hash (logged).
fn steer_by_source_port(socket: &Socket, count: usize) {
    use nix::libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IMM, BPF_IND, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K,
        BPF_LD, BPF_LDX, BPF_MOD, BPF_MSH, BPF_RET, BPF_RSH, BPF_W, SKF_NET_OFF, sock_filter,
        sock_fprog,
    };
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // The program runs with the data past the UDP header; the IP header is at SKF_NET_OFF.
    let net = SKF_NET_OFF as u32;
    let mut program = [
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, net), // A = first byte of the IP header
        op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),  // A = IP version
        op(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, 4),  // IPv4?
        op(BPF_LDX | BPF_B | BPF_MSH, 0, 0, net), //   X = IPv4 header length
        op(BPF_JMP | BPF_JA, 0, 0, 1),
        op(BPF_LDX | BPF_W | BPF_IMM, 0, 0, 40), // IPv6: X = 40
        op(BPF_LD | BPF_H | BPF_IND, 0, 0, net), // A = UDP source port
        op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, count as u32),
        op(BPF_RET | BPF_A, 0, 0, 0),
    ];
    let fprog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    if let Err(e) = setsockopt(socket, sockopt::AttachReusePortCbpf, &fprog) {
        tracing::info!(error = %e, "no steering by source port: the kernel's hash spreads the datagrams over the sockets");
    }
}

/// Sizes the buffers of a bound socket and sets up its offloads.
fn finish(socket: Socket, buffer: usize, offload: bool) -> Result<Udp, SetupError> {
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
/// address the client sends to: the first one that a socket bound to `bind` (see
/// [`bind_address`]) can reach, an IPv4 one for a socket bound to an IPv4 address, an
/// IPv6 one for a socket bound to a particular IPv6 address.
pub fn resolve(host: &str, port: u16, bind: Option<IpAddr>) -> Result<SocketAddr, SetupError> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| SetupError(format!("cannot resolve {host:?}: {e}")))?
        .collect();
    pick(&addrs, bind).ok_or_else(|| {
        SetupError(match (addrs.is_empty(), bind) {
            (false, Some(bind)) => format!(
                "{host:?} has no {} address, and a socket bound to {bind} (peer.bind) reaches \
                 only those: found {}",
                if bind.to_canonical().is_ipv4() {
                    "IPv4"
                } else {
                    "IPv6"
                },
                addrs
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => format!("cannot resolve {host:?}: no addresses"),
        })
    })
}

/// The first of `addrs` that a socket bound to `bind` can send to: any for the dual-stack
/// wildcard (or no `bind`), IPv4 ones for an IPv4 address, IPv6 ones for an IPv6 one.
fn pick(addrs: &[SocketAddr], bind: Option<IpAddr>) -> Option<SocketAddr> {
    let v4 = |a: &SocketAddr| a.ip().to_canonical().is_ipv4();
    addrs.iter().copied().find(|a| match bind {
        None => true,
        Some(IpAddr::V6(ip)) if ip.is_unspecified() => true,
        Some(b) if b.to_canonical().is_ipv4() => v4(a),
        Some(_) => !v4(a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_hosts_resolve_without_dns() {
        assert_eq!(
            resolve("192.0.2.1", 1234, None).unwrap(),
            "192.0.2.1:1234".parse().unwrap()
        );
        assert_eq!(
            resolve("[2001:db8::1]", 7, None).unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
        assert_eq!(
            resolve("2001:db8::1", 7, None).unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
        assert_eq!(resolve("localhost", 9, None).unwrap().port(), 9);
        let e = resolve("no-such-host.invalid", 1, None).unwrap_err();
        assert!(e.0.contains("cannot resolve"), "{e}");
    }

    #[test]
    fn a_name_resolves_to_an_address_of_the_bound_family() {
        let v6: SocketAddr = "[2001:db8::1]:7".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:7".parse().unwrap();
        let both = [v6, v4];
        assert_eq!(pick(&both, None), Some(v6));
        assert_eq!(pick(&both, Some(Ipv6Addr::UNSPECIFIED.into())), Some(v6));
        // A socket bound to an IPv4 address cannot send to an IPv6 one (EAFNOSUPPORT).
        assert_eq!(pick(&both, Some([192, 0, 2, 9].into())), Some(v4));
        assert_eq!(pick(&both, Some(Ipv4Addr::UNSPECIFIED.into())), Some(v4));
        let v6_bind: IpAddr = "2001:db8::9".parse().unwrap();
        assert_eq!(pick(&[v4, v6], Some(v6_bind)), Some(v6));
        assert_eq!(pick(&[v6], Some([192, 0, 2, 9].into())), None);
    }

    #[test]
    fn a_port_in_use_is_explained() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 16, true).unwrap();
        let Err(e) = bind(first.local, 1 << 16, true) else {
            panic!("bound a port in use")
        };
        assert!(e.0.contains("is in use"), "{e}");
    }

    /// A free UDP port on `ip` (free when this returns; the tests bind it at once).
    fn free_port(ip: IpAddr) -> u16 {
        UdpSocket::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_listener_s_paths_share_its_port_and_a_second_listener_is_refused() {
        let ip = IpAddr::from(Ipv4Addr::LOCALHOST);
        let addr = SocketAddr::new(ip, free_port(ip));
        let paths = bind_paths(addr, 3, 1 << 16, true).unwrap();
        assert_eq!(paths.len(), 3);
        assert!(paths.iter().all(|p| p.local == addr), "{addr}");
        for count in [1, 2] {
            let Err(e) = bind_paths(addr, count, 1 << 16, true) else {
                panic!("a second listener with {count} paths shared the port")
            };
            assert!(e.0.contains("is in use"), "{e}");
        }
    }

    /// Each datagram goes to the listener's socket of its source port mod the number of
    /// sockets: the datagrams of a client whose sockets have consecutive ports reach
    /// different sockets. The listener is on `listen`, the client on `client`.
    fn steered_by_source_port(listen: IpAddr, client: IpAddr) {
        let port = free_port(listen);
        let paths = bind_paths(SocketAddr::new(listen, port), 2, 1 << 16, false).unwrap();
        let senders = bind_paths(SocketAddr::new(client, 0), 2, 1 << 16, false).unwrap();
        let ports: Vec<u16> = senders.iter().map(|c| c.local.port()).collect();
        // Socket i's port is i mod 2 (unless no block of two ports was free).
        assert_eq!(ports[0] % 2, 0, "{ports:?}");
        assert_eq!(ports[1], ports[0] + 1, "{ports:?}");
        for c in &senders {
            for i in 0..5u8 {
                c.socket.send_to(&[i], (client, port)).unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut received = 0;
        for (index, path) in paths.iter().enumerate() {
            let mut from_ports = Vec::new();
            let mut buf = [0u8; 8];
            let wait = Some(std::time::Duration::from_millis(100));
            path.socket.set_read_timeout(wait).unwrap();
            while let Ok((_, from)) = path.socket.recv_from(&mut buf) {
                from_ports.push(from.port());
            }
            assert!(
                from_ports.iter().all(|p| usize::from(*p) % 2 == index),
                "socket {index} got datagrams from ports {from_ports:?}"
            );
            assert_eq!(from_ports.len(), 5, "socket {index}: {from_ports:?}");
            received += from_ports.len();
        }
        assert_eq!(received, 10);
    }

    #[test]
    fn a_listener_steers_ipv4_datagrams_by_source_port() {
        let v4 = Ipv4Addr::LOCALHOST.into();
        steered_by_source_port(v4, v4);
    }

    #[test]
    fn a_dual_stack_listener_steers_ipv4_datagrams_by_source_port() {
        if UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).is_err() {
            eprintln!("skipped: no IPv6 here");
            return;
        }
        steered_by_source_port(Ipv6Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into());
    }

    #[test]
    fn a_listener_steers_ipv6_datagrams_by_source_port() {
        if UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        }
        let v6 = Ipv6Addr::LOCALHOST.into();
        steered_by_source_port(v6, v6);
    }

    #[test]
    fn dual_stack_by_default() {
        let udp = bind(bind_address(None, 0), 1 << 16, true).unwrap();
        // The IPv6 wildcard, unless this host has no IPv6 (then the IPv4 fallback).
        assert!(udp.local.ip().is_unspecified(), "{}", udp.local);
        // An IPv4 datagram reaches it (a send succeeds whether or not it does).
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .send_to(b"x", (Ipv4Addr::LOCALHOST, udp.local.port()))
            .unwrap();
        // The tunnel's socket is non-blocking; wait here, at most 5 s.
        udp.socket.set_nonblocking(false).unwrap();
        udp.socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = udp
            .socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no IPv4 datagram reached {}: {e}", udp.local));
        assert_eq!(&buf[..n], b"x");
        assert_eq!(
            lametun_core::forwarder::canonical(from),
            probe.local_addr().unwrap()
        );
    }
}
