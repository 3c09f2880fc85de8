//! Running a tunnel: from a resolved config to threads moving packets, and back down.
//!
//! Start-up does everything that can fail before any traffic: resolve the server, build
//! the stage chain, compute the MTU, open the TUN device and the socket. Each failure is
//! one clear message and exit code 2. Then the driver threads start (see
//! [`crate::driver`]) and this thread keeps the time: once a second it gives the
//! stages a tick and sends a keepalive when one is due, until SIGINT or SIGTERM.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lametun_core::config::{MtuSetting, Role, TunnelConfig};
use lametun_core::mtu::{IPV6_MIN_MTU, MtuBudget, OuterIp};
use lametun_core::ratelimit::LogLimiter;
use lametun_core::{
    BuildContext, Forwarder, ForwarderConfig, PacketBuf, PeerMode, Pipeline, TelemetryHandle,
};
use quinn_udp::{Transmit, UdpSockRef};
use tokio_util::sync::CancellationToken;

use crate::device::{self, Configured};
use crate::driver::{self, Shared};
use crate::udp;

/// Why the tunnel did not run, with the exit code the process should return.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags, a bad config, or a start-up failure the user must fix: exit code 2.
    Setup(String),
    /// The tunnel ran and failed (the device or socket went away): exit code 1.
    Runtime(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Setup(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Setup(m) | Self::Runtime(m) => f.write_str(m),
        }
    }
}

impl From<device::SetupError> for Failure {
    fn from(e: device::SetupError) -> Self {
        Self::Setup(e.0)
    }
}

/// The article's message when neither end was chosen.
pub const NO_ROLE: &str =
    "You must specify the server or mark this host to listen (-listen, or -server HOST)";

/// Where the peer is and how to reach it, once names are resolved.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    /// Local address of the socket.
    pub bind: SocketAddr,
    /// The server, on the connecting side.
    pub server: Option<SocketAddr>,
    /// IP version of the outer packets, for the MTU.
    pub outer: OuterIp,
}

/// Resolves the role into socket addresses. A listener bound to the dual-stack wildcard
/// takes peers of both families; its MTU starts from the IPv4 header, like the client of
/// an IPv4 server, and is lowered while its peer is an IPv6 address (see [`MtuFollower`]).
pub fn endpoints(config: &TunnelConfig) -> Result<Endpoints, Failure> {
    let role = config
        .peer
        .role
        .as_ref()
        .ok_or_else(|| Failure::Setup(NO_ROLE.into()))?;
    Ok(match role {
        Role::Listen => {
            let bind = udp::bind_address(config.peer.bind, config.peer.port);
            Endpoints {
                bind,
                server: None,
                outer: if bind.ip().is_unspecified() {
                    OuterIp::V4
                } else {
                    outer_of(bind.ip())
                },
            }
        }
        Role::Connect(host) => {
            let server = udp::resolve(host, config.peer.port, config.peer.bind)?;
            Endpoints {
                bind: udp::bind_address(config.peer.bind, 0),
                server: Some(server),
                outer: outer_of(server.ip().to_canonical()),
            }
        }
    })
}

fn outer_of(ip: IpAddr) -> OuterIp {
    match ip {
        IpAddr::V4(_) => OuterIp::V4,
        IpAddr::V6(_) => OuterIp::V6,
    }
}

/// Builds the stage chain of `config`; errors are the config's own, with file and line.
pub fn build_pipeline(
    config: &TunnelConfig,
    telemetry: &TelemetryHandle,
) -> Result<Pipeline, Failure> {
    build_with(config, build_context(config, telemetry))
}

/// Builds the stage chain of `config` only to check it (`lametun check-config`): a dry
/// run, in which stages create no file and bind no socket (see
/// [`BuildContext::dry_run`]), so that checking the file of a running tunnel is harmless.
pub fn check_pipeline(
    config: &TunnelConfig,
    telemetry: &TelemetryHandle,
) -> Result<Pipeline, Failure> {
    build_with(config, build_context(config, telemetry).into_dry_run())
}

fn build_context(config: &TunnelConfig, telemetry: &TelemetryHandle) -> BuildContext {
    let dir = config
        .file()
        .and_then(|f| f.parent())
        .map(|d| d.to_path_buf());
    BuildContext::new(dir, telemetry.clone())
}

fn build_with(config: &TunnelConfig, cx: BuildContext) -> Result<Pipeline, Failure> {
    config
        .build_pipeline(&cx)
        .map_err(|e| Failure::Setup(e.to_string()))
}

/// The TUN MTU for `config` and the sum behind it.
pub fn mtu(
    config: &TunnelConfig,
    outer: OuterIp,
    pipeline: &Pipeline,
) -> Result<(u16, MtuBudget), Failure> {
    let budget = config.mtu_budget(outer, pipeline.overhead());
    let mtu = config
        .tun_mtu(&budget)
        .map_err(|e| Failure::Setup(format!("device.mtu: {e}")))?;
    if mtu < IPV6_MIN_MTU
        && let Some(net) = first_ipv6(config)
    {
        return Err(Failure::Setup(ipv6_needs_more(config, mtu, &budget, net)));
    }
    Ok((mtu, budget))
}

/// The first IPv6 address or route of the device, if it has any.
fn first_ipv6(config: &TunnelConfig) -> Option<&ipnet::IpNet> {
    let device = &config.device;
    device
        .addresses
        .iter()
        .chain(&device.routes)
        .find(|n| matches!(n, ipnet::IpNet::V6(_)))
}

/// Why an MTU below the IPv6 minimum cannot work on a device with IPv6 on it: the
/// kernel refuses IPv6 addresses and routes on such a link (`EINVAL`, `ENODEV`), and
/// removes those it had when its MTU drops below 1280.
fn ipv6_needs_more(
    config: &TunnelConfig,
    mtu: u16,
    budget: &MtuBudget,
    net: &ipnet::IpNet,
) -> String {
    let what = if config.device.addresses.contains(net) {
        "address"
    } else {
        "route"
    };
    let fix = match config.device.mtu {
        MtuSetting::Fixed(_) => format!("set device.mtu (--mtu) to at least {IPV6_MIN_MTU}"),
        MtuSetting::Auto => format!(
            "IPv6 in the tunnel needs an underlay MTU of at least {} (peer.underlay_mtu)",
            usize::from(IPV6_MIN_MTU) + budget.overhead()
        ),
    };
    format!(
        "device.mtu: the device's MTU would be {mtu}{}, below {IPV6_MIN_MTU}, the smallest \
         MTU of an IPv6 link, and the kernel refuses IPv6 {what} {net} on it: {fix}, or \
         leave IPv6 out of device.address and device.routes",
        match config.device.mtu {
            MtuSetting::Fixed(_) => String::new(),
            MtuSetting::Auto => format!(" ({budget})"),
        }
    )
}

/// Runs the tunnel described by `config` until SIGINT or SIGTERM.
pub fn run(config: TunnelConfig) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run_async(config))
}

async fn run_async(config: TunnelConfig) -> Result<(), Failure> {
    let ends = endpoints(&config)?;
    let telemetry = TelemetryHandle::default();
    let pipeline = build_pipeline(&config, &telemetry)?;
    let (mtu, budget) = mtu(&config, ends.outer, &pipeline)?;
    if let Ok(auto) = budget.tun_mtu()
        && mtu > auto
    {
        tracing::warn!(
            mtu,
            fits = auto,
            "device.mtu is larger than the underlay allows: full-size packets will not fit"
        );
    }
    tracing::info!(
        listen = ends.server.is_none(),
        server = ?config.peer.role.as_ref().and_then(|r| match r { Role::Connect(h) => Some(h.as_str()), Role::Listen => None }),
        dev = %config.device.name,
        port = config.peer.port,
        stages = pipeline.len(),
        "lametun starting"
    );

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = config.io.workers.resolve(cpus);
    let (tun, configured) = open_device(&config, workers, mtu).await?;
    // The sockets (paths): one per worker on a listener, one on a client by default.
    let listening = ends.server.is_none();
    let sockets = udp::bind_paths(
        ends.bind,
        config.io.sockets.resolve(listening, tun.queues.len()),
        config.io.socket_buffer,
        config.io.offload,
    )?;
    tracing::info!(
        "{}: MTU {mtu} ({})",
        tun.name,
        if matches!(config.device.mtu, MtuSetting::Auto) {
            budget.to_string()
        } else {
            "set in the config".to_owned()
        }
    );
    tracing::info!(
        local = %sockets[0].local,
        queues = tun.queues.len(),
        sockets = sockets.len(),
        tun_offload = tun.offload,
        tun_udp_offload = tun.udp_offload,
        udp_gso = sockets[0].gso,
        udp_gro = sockets[0].gro,
        "fast paths"
    );

    let fwd = Forwarder::new(
        pipeline,
        ForwarderConfig {
            packet_info: config.device.packet_info,
            peer: match ends.server {
                Some(addr) => PeerMode::Fixed(addr),
                None => PeerMode::Learn,
            },
            keepalive: config.peer.keepalive(),
            paths: sockets.len(),
        },
        &telemetry,
        Instant::now(),
    );
    let cancel = CancellationToken::new();
    let shared = Arc::new(Shared {
        fwd: fwd.clone(),
        sockets,
        mtu: usize::from(mtu),
        cancel: cancel.clone(),
        error_log: LogLimiter::new(5),
        sending: Default::default(),
    });

    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut threads = Vec::new();
    // An outbound thread per TUN queue, sending on the path of its queue; an inbound
    // thread per socket, writing to every queue (each flow on its own).
    for (i, queue) in tun.queues.iter().enumerate() {
        let (q, s, off) = (queue.clone(), shared.clone(), tun.offload);
        threads.push(spawn_worker(
            format!("lametun-out{i}"),
            &exit_tx,
            move || driver::outbound(i, q, off, s),
        )?);
    }
    for path in 0..shared.sockets.len() {
        let (q, s, off) = (tun.queues.clone(), shared.clone(), tun.offload);
        threads.push(spawn_worker(
            format!("lametun-in{path}"),
            &exit_tx,
            move || driver::inbound(path, q, off, s),
        )?);
    }

    let mut background = tokio::task::JoinSet::new();
    for (label, task) in fwd.pipeline().background_tasks() {
        tracing::debug!(stage = %label, "starting a stage's background task");
        background.spawn(task);
    }

    let follower = (ends.server.is_none()
        && configured == Configured::Done
        && ends.bind.ip().is_unspecified()
        && ends.bind.is_ipv6()
        && config.device.mtu == MtuSetting::Auto)
        .then(|| {
            let mut v6 = config
                .mtu_budget(OuterIp::V6, fwd.pipeline().overhead())
                .tun_mtu()
                .ok()?;
            if v6 < IPV6_MIN_MTU
                && let Some(net) = first_ipv6(&config)
            {
                // Below 1280 the kernel would remove the device's IPv6 addresses and
                // routes (for good: they do not come back with a larger MTU).
                tracing::warn!(
                    "{}: an IPv6 peer would need MTU {v6}, below {IPV6_MIN_MTU}, which IPv6 \
                     on the device ({net}) needs: the device keeps {IPV6_MIN_MTU} for such a \
                     peer, and its full-size packets will not fit the underlay MTU of {}",
                    tun.name,
                    config.peer.underlay_mtu
                );
                v6 = IPV6_MIN_MTU;
            }
            Some(MtuFollower {
                index: tun.index,
                name: tun.name.clone(),
                v4: mtu,
                v6,
                current: mtu,
            })
        })
        .flatten();
    let outcome = control_loop(&fwd, &shared.sockets[0], follower, &mut exit_rx).await;
    cancel.cancel();
    background.abort_all();
    for t in threads {
        let _ = t.join();
    }
    tracing::info!(
        "stopped: {}",
        summary(&lametun_core::telemetry::SnapshotSource::snapshot(&*fwd))
    );
    outcome
}

/// Opens the TUN device and configures its link: with offloads where the device's
/// segment cap holds, and left as it is when this process may not change it and no
/// address or route was asked for.
async fn open_device(
    config: &TunnelConfig,
    workers: usize,
    mtu: u16,
) -> Result<(device::Tun, Configured), Failure> {
    let mut tun = device::open(&config.device.name, workers, config.io.offload)?;
    let configured =
        device::configure(&tun, mtu, &config.device.addresses, &config.device.routes).await?;
    if configured == Configured::NotPermitted {
        tracing::warn!(
            "{}: no permission to configure it (root or CAP_NET_ADMIN), and no address \
             to set: leaving it as it is. Its MTU should be {mtu}: `sudo ip link set dev {} mtu {mtu} up`",
            tun.name,
            tun.name
        );
    }
    if tun.offload
        && let Some(segs) = device::segment_cap_missing(&tun).await
    {
        // Offloads need the cap on the segments per superpacket: without it a tiny TCP
        // MSS could make superpackets larger than a read can split. It is missing when
        // the link could not be configured, or on a kernel that ignores the attribute.
        // Reopen without them.
        let name = tun.name.clone();
        drop(tun);
        tun = device::open(&name, workers, false)?;
        if configured == Configured::Done {
            // A device this run created vanished with its last descriptor, and the one
            // just opened is new: set it up again (on a persistent one this repeats
            // what is already there).
            device::configure(&tun, mtu, &config.device.addresses, &config.device.routes).await?;
        }
        tracing::info!(
            "{name}: offloads off: the device allows {segs} segments per superpacket, \
             and the cap of {} could not be set{}",
            device::GSO_MAX_SEGS,
            if configured == Configured::NotPermitted {
                " (it needs CAP_NET_ADMIN)"
            } else {
                ""
            }
        );
    }
    Ok((tun, configured))
}

type ThreadExit = (String, std::io::Result<()>);

/// Starts a driver thread that reports how it ended on `exits`, also when it panics
/// (a bug: a stage that breaks its promises, say), so that the tunnel stops with an
/// error instead of running on with one direction dead.
fn spawn_worker<F, Fut>(
    name: String,
    exits: &tokio::sync::mpsc::UnboundedSender<ThreadExit>,
    job: F,
) -> Result<std::thread::JoinHandle<std::io::Result<()>>, Failure>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<()>>,
{
    let report = ExitReport {
        exits: Some(exits.clone()),
        name: name.clone(),
    };
    driver::spawn_thread(name, move || async move {
        let result = job().await;
        report.send(result);
        Ok(())
    })
    .map_err(|e| Failure::Runtime(format!("cannot start a thread: {e}")))
}

/// Reports how a driver thread ended; dropped unsent (the thread unwinds from a
/// panic), it reports the panic.
struct ExitReport {
    exits: Option<tokio::sync::mpsc::UnboundedSender<ThreadExit>>,
    name: String,
}

impl ExitReport {
    fn send(mut self, result: std::io::Result<()>) {
        if let Some(tx) = self.exits.take() {
            let _ = tx.send((std::mem::take(&mut self.name), result));
        }
    }
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        if let Some(tx) = self.exits.take() {
            let e = std::io::Error::other("panicked (a bug; the message is above)");
            let _ = tx.send((std::mem::take(&mut self.name), Err(e)));
        }
    }
}

/// Keeps the MTU of a dual-stack listener right for the family of its current peer:
/// the outer IPv6 header is 20 bytes longer than the IPv4 one, so while the peer is an
/// IPv6 address full-size packets must be 20 bytes smaller, or they would not fit the
/// underlay (the socket sets don't-fragment). TCP picks the new MTU up by itself.
pub struct MtuFollower {
    index: u32,
    name: String,
    v4: u16,
    v6: u16,
    current: u16,
}

impl MtuFollower {
    async fn follow(&mut self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let want = if peer.is_ipv6() { self.v6 } else { self.v4 };
        if want == self.current {
            return;
        }
        match device::set_mtu(self.index, want).await {
            Ok(()) => {
                tracing::info!(peer = %peer, "{}: MTU {want} for an {} peer", self.name, if peer.is_ipv6() { "IPv6" } else { "IPv4" });
                self.current = want;
            }
            Err(e) => tracing::warn!("{}: {e}", self.name),
        }
    }
}

async fn control_loop(
    fwd: &Arc<Forwarder>,
    udp: &udp::Udp,
    mut follower: Option<MtuFollower>,
    exits: &mut tokio::sync::mpsc::UnboundedReceiver<ThreadExit>,
) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Failure::Runtime(e.to_string()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Failure::Runtime(e.to_string()))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keepalive = vec![0u8; fwd.headroom() + fwd.tailroom()];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                fwd.handle_tick(now);
                if let Some(f) = follower.as_mut() {
                    f.follow(fwd.peer().map(|p| p.addr)).await;
                }
                let mut pkt = PacketBuf::new(&mut keepalive, fwd.headroom(), 0);
                if let Some(to) = fwd.poll_keepalive(&mut pkt, now) {
                    let t = Transmit { destination: to.addr, ecn: None, contents: pkt.as_slice(), segment_size: None, src_ip: to.local_ip };
                    match udp.state.try_send(UdpSockRef::from(&*udp.socket), &t) {
                        Ok(()) => {
                            fwd.counters().udp_tx_datagrams.inc();
                            fwd.counters().udp_tx_bytes.add(t.contents.len() as u64);
                        }
                        Err(e) => {
                            fwd.counters().udp_send_errors.inc();
                            tracing::debug!(error = %e, "keepalive not sent");
                        }
                    }
                }
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            Some((name, result)) = exits.recv() => {
                return match result {
                    Ok(()) => Err(Failure::Runtime(format!("{name} stopped unexpectedly"))),
                    Err(e) => Err(Failure::Runtime(format!("{name}: {e}"))),
                };
            }
        }
    }
}

/// One line with the main counters and every drop, for the log at shutdown.
pub fn summary(snap: &lametun_core::TunnelSnapshot) -> String {
    let c = &snap.counters;
    let mut line = format!(
        "tun rx {} tx {} packets, udp rx {} tx {} datagrams, keepalives rx {} tx {}",
        c.tun_rx_packets,
        c.tun_tx_packets,
        c.udp_rx_datagrams,
        c.udp_tx_datagrams,
        c.keepalives_received,
        c.keepalives_sent
    );
    if c.peer_changes > 0 {
        line.push_str(&format!(", peer address changes {}", c.peer_changes));
    }
    if let Some(n) = crate::alloc::forwarding_allocations() {
        line.push_str(&format!(", heap allocations while forwarding {n}"));
    }
    let mut drops = Vec::new();
    for (dir, d) in [("out", &snap.core_outbound), ("in", &snap.core_inbound)] {
        for (reason, n) in &d.drops {
            drops.push(format!("core {dir} {reason} {n}"));
        }
    }
    for s in &snap.stages {
        for (dir, d) in [("out", &s.outbound), ("in", &s.inbound)] {
            for (reason, n) in &d.drops {
                drops.push(format!("{} {dir} {reason} {n}", s.label));
            }
        }
    }
    if !drops.is_empty() {
        line.push_str(", dropped: ");
        line.push_str(&drops.join(", "));
    }
    let errors = c.tun_read_errors + c.tun_write_errors + c.udp_send_errors + c.udp_recv_errors;
    if errors > 0 {
        line.push_str(&format!(
            ", errors: tun read {} write {}, udp send {} recv {}",
            c.tun_read_errors, c.tun_write_errors, c.udp_send_errors, c.udp_recv_errors
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtu_of(yaml: &str, outer: OuterIp) -> Result<u16, String> {
        let config = TunnelConfig::from_yaml(yaml, None).unwrap();
        let telemetry = TelemetryHandle::default();
        let pipeline = build_pipeline(&config, &telemetry).unwrap();
        mtu(&config, outer, &pipeline)
            .map(|(m, _)| m)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_mtu_below_the_ipv6_minimum_is_refused_when_the_device_has_ipv6() {
        // 1280 - 40 - 8 - 4 = 1228: the kernel would refuse fd31::1/64 on the device
        // with a bare EINVAL.
        let v6 = "device: {address: [\"fd31::1/64\"]}\npeer: {underlay_mtu: 1280}\n";
        let e = mtu_of(v6, OuterIp::V6).unwrap_err();
        assert!(e.contains("1228") && e.contains("below 1280"), "{e}");
        assert!(e.contains("address fd31::1/64"), "{e}");
        assert!(e.contains("underlay MTU of at least 1332"), "{e}");
        // An IPv6 route alone needs it too.
        let route = "device: {routes: [\"fd32::/64\"]}\npeer: {underlay_mtu: 1280}\n";
        let e = mtu_of(route, OuterIp::V6).unwrap_err();
        assert!(e.contains("route fd32::/64"), "{e}");
        // A fixed MTU.
        let fixed = "device: {mtu: 1200, address: [\"10.0.0.1/24\", \"fd31::1/64\"]}\n";
        let e = mtu_of(fixed, OuterIp::V4).unwrap_err();
        assert!(e.contains("set device.mtu (--mtu) to at least 1280"), "{e}");
        // IPv4 only: small MTUs are fine.
        let v4 = "device: {address: [\"10.0.0.1/24\"]}\npeer: {underlay_mtu: 1280}\n";
        assert_eq!(mtu_of(v4, OuterIp::V6), Ok(1228));
        // Enough room for IPv6.
        let room = "device: {address: [\"fd31::1/64\"]}\npeer: {underlay_mtu: 1332}\n";
        assert_eq!(mtu_of(room, OuterIp::V6), Ok(1280));
    }

    #[test]
    fn a_driver_thread_that_panics_is_reported_so_the_tunnel_stops() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ok = spawn_worker("fine".into(), &tx, || async { Ok(()) }).unwrap();
        let bad = spawn_worker("broken".into(), &tx, || async {
            panic!("a stage broke its promise");
        })
        .unwrap();
        let _ = ok.join();
        assert!(bad.join().is_err(), "the thread panicked");
        let mut exits: Vec<(String, String)> = (0..2)
            .map(|_| {
                let (name, result) = rx.try_recv().expect("every thread reports its end");
                (
                    name,
                    result.err().map(|e| e.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        exits.sort();
        assert_eq!(exits[0].0, "broken");
        assert!(exits[0].1.contains("panicked"), "{:?}", exits[0]);
        assert_eq!(exits[1], ("fine".to_owned(), String::new()));
    }
}
