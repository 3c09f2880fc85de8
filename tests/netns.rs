//! Real tunnels: TUN devices in network namespaces, the real binary at both ends, real
//! traffic (ping, TCP transfers whose SHA-256 is compared).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lametun::testnet::{
    self, Bench, CLIENT_TUN, CLIENT_TUN6, SERVER_TUN, SERVER_TUN6, SERVER_UL, SERVER_UL6, Side,
    Transfer,
};

use crate::{encrypted, lametun_bin};

/// A bench, or `None` (after saying why) where namespaces or TUN are not available.
/// With `LAMETUN_REQUIRE_NETNS=1` (CI) a missing capability fails the test instead.
pub(crate) fn bench(tag: &str) -> Option<Bench> {
    if let Some(why) = testnet::unavailable() {
        assert!(
            std::env::var("LAMETUN_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LAMETUN_REQUIRE_NETNS=1 but this machine cannot run the namespace tests: {why}"
        );
        eprintln!("skipped: this test {why}");
        return None;
    }
    Some(Bench::new(tag, lametun_bin()).expect("creating the namespace bench"))
}

const SERVER_CIDR: &str = "172.31.255.13/24";
const CLIENT_CIDR: &str = "172.31.255.7/24";
const SERVER_CIDR6: &str = "fd31::13/64";
const CLIENT_CIDR6: &str = "fd31::7/64";

/// Whether the kernel counts IO per thread (`/proc/<pid>/task/<tid>/io`); says why the
/// test skips when it does not, and fails under `LAMETUN_REQUIRE_NETNS=1` (CI).
pub(crate) fn io_counted_per_thread() -> bool {
    if std::path::Path::new("/proc/self/task").exists()
        && std::path::Path::new("/proc/self/io").exists()
    {
        return true;
    }
    let why = "this kernel does not count IO per thread (/proc/<pid>/task/<tid>/io)";
    assert!(
        std::env::var("LAMETUN_REQUIRE_NETNS").as_deref() != Ok("1"),
        "LAMETUN_REQUIRE_NETNS=1 but {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// What thread `name` of process `pid` read and wrote, as the kernel counts it per
/// thread: read calls (`syscr`), bytes read (`rchar`) and bytes written (`wchar`) with
/// read/write calls (TUN reads and writes; socket receives and sends are not counted).
pub(crate) struct ThreadIo {
    pub(crate) read_calls: u64,
    pub(crate) read: u64,
    pub(crate) written: u64,
}

pub(crate) fn thread_io(pid: u32, name: &str) -> ThreadIo {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        if std::fs::read_to_string(dir.join("comm"))
            .unwrap_or_default()
            .trim()
            != name
        {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io")).unwrap();
        let field = |key: &str| -> u64 {
            io.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {io}"))
        };
        return ThreadIo {
            read_calls: field("syscr:"),
            read: field("rchar:"),
            written: field("wchar:"),
        };
    }
    panic!("process {pid} has no thread {name}");
}

/// The shutdown summary of process `name` (after [`Bench::stop`]).
pub(crate) fn summary(b: &Bench, name: &str) -> String {
    b.log(name)
        .lines()
        .find(|l| l.contains("stopped:"))
        .unwrap_or_else(|| panic!("no summary in the log of {name}:\n{}", b.log(name)))
        .to_owned()
}

/// The count after `what` (e.g. "chacha20poly1305 in replayed") in a summary, 0 if absent.
pub(crate) fn count_in(summary: &str, what: &str) -> u64 {
    summary
        .split(what)
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).find(|s| !s.is_empty()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Asserts that process `name` (after [`Bench::stop`]) moved at least `packets` packets
/// through its TUN device (both ways together) and reported hardly any heap allocation on
/// its forwarding threads: none per packet or per batch, only a few dozen in all (log
/// lines, a new peer session, buffers growing to the largest batch in the first
/// batches; see `lametun::alloc`).
pub(crate) fn few_allocations_while_forwarding(b: &Bench, name: &str, packets: u64) {
    let summary = summary(b, name);
    assert!(
        summary.contains("heap allocations while forwarding"),
        "the binary counts its allocations: {summary}"
    );
    let allocations = count_in(&summary, "heap allocations while forwarding");
    let (rx, tx) = (count_in(&summary, "tun rx"), count_in(&summary, "tx"));
    assert!(rx + tx >= packets, "too little traffic: {summary}");
    // 10-30 are seen; one per batch would be thousands.
    assert!(allocations <= 100, "{summary}");
}

/// The first TCP source port from `from` on whose flow from `src` to `dst:dst_port`
/// (IPv4 addresses) `flow_queue` puts on queue `queue` of `queues`: the queue where the
/// flow's packets are written, and read by that queue's outbound thread.
pub(crate) fn port_on_queue(
    (src, dst, dst_port): (&str, &str, u16),
    queue: usize,
    queues: usize,
    from: u16,
) -> u16 {
    let ip = |s: &str| match s.parse() {
        Ok(std::net::IpAddr::V4(a)) => a.octets(),
        _ => panic!("{s}: not an IPv4 address"),
    };
    (from..=u16::MAX)
        .find(|&port| {
            let p = lametun_core::testing::packets::tcp_syn_v4(ip(src), ip(dst), port, dst_port);
            lametun::gro::flow_queue(&p, queues) == queue
        })
        .expect("a port on every queue")
}

/// Sends `bytes` over TCP to a listener on `listen` in `receiver`'s namespace from the
/// other namespace, and checks by SHA-256 that they arrived intact.
pub(crate) fn tcp_intact(b: &Bench, receiver: Side, listen: SocketAddr, bytes: usize) -> Transfer {
    tcp_intact_from(b, receiver, listen, None, bytes)
}

/// [`tcp_intact`] from source port `port` of the sender (`None`: any).
pub(crate) fn tcp_intact_from(
    b: &Bench,
    receiver: Side,
    listen: SocketAddr,
    port: Option<u16>,
    bytes: usize,
) -> Transfer {
    let sender = match receiver {
        Side::Server => Side::Client,
        Side::Client => Side::Server,
    };
    let t = b
        .tcp_transfer_from(
            receiver,
            listen,
            sender,
            port,
            bytes,
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(
        t.intact(),
        "SHA-256 of what was sent and what arrived differ"
    );
    t
}

/// Starts a server and a client with the article's addresses (plus IPv6 ones) and the
/// extra arguments, and waits until a ping crosses the tunnel. Returns their PIDs.
pub(crate) fn start_pair(
    b: &mut Bench,
    server_extra: &[&str],
    client_extra: &[&str],
) -> (u32, u32) {
    let mut server = vec![
        "-listen",
        "-device",
        "tun0",
        "--address",
        SERVER_CIDR,
        "--address",
        SERVER_CIDR6,
    ];
    server.extend_from_slice(server_extra);
    let mut client = vec![
        "-server",
        SERVER_UL,
        "-device",
        "tun0",
        "--address",
        CLIENT_CIDR,
        "--address",
        CLIENT_CIDR6,
    ];
    client.extend_from_slice(client_extra);
    let server = b.lametun(Side::Server, "server", &server).unwrap();
    let client = b.lametun(Side::Client, "client", &client).unwrap();
    wait_up(b);
    (server, client)
}

/// Starts the client ("client": IPv4 inside, the server's IPv4 underlay address, `extra`)
/// and waits until it reaches the server. Returns its PID.
fn start_client(b: &mut Bench, extra: &[&str]) -> u32 {
    start_client_to(b, SERVER_UL, extra)
}

/// [`start_client`] to the server's underlay address `server` (IPv4 or IPv6).
fn start_client_to(b: &mut Bench, server: &str, extra: &[&str]) -> u32 {
    let mut args = vec![
        "-server",
        server,
        "-device",
        "tun0",
        "--address",
        CLIENT_CIDR,
    ];
    args.extend_from_slice(extra);
    let pid = b.lametun(Side::Client, "client", &args).unwrap();
    wait_up(b);
    pid
}

/// Waits (at most 10 s) until the client reaches the server through the tunnel.
pub(crate) fn wait_up(b: &Bench) {
    assert!(
        b.wait_for_ping(Side::Client, SERVER_TUN, Duration::from_secs(10)),
        "the tunnel did not come up\nserver:\n{}\nclient:\n{}",
        b.log("server"),
        b.log("client")
    );
}

fn mtu_of(b: &Bench, side: Side, dev: &str) -> usize {
    let out = b
        .exec(side, &["cat", &format!("/sys/class/net/{dev}/mtu")])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn ping_both_ways_and_50_mb_over_tcp_arrive_intact() {
    let Some(mut b) = bench("tcp") else { return };
    start_pair(&mut b, &[], &[]);
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    let t = tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 5001), 50 << 20);
    eprintln!("50 MB in {:.2} s: {:.0} Mbit/s", t.seconds, t.mbit_per_s());
}

#[test]
fn ipv6_inside_the_tunnel() {
    let Some(mut b) = bench("in6") else { return };
    start_pair(&mut b, &[], &[]);
    assert!(
        b.wait_for_ping(Side::Client, SERVER_TUN6, Duration::from_secs(5)),
        "no IPv6 ping"
    );
    assert_eq!(
        b.ping(Side::Server, CLIENT_TUN6, 3, None, false).unwrap(),
        3
    );
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN6, 5002), 10 << 20);
}

#[test]
fn ipv6_outer_transport() {
    let Some(mut b) = bench("out6") else { return };
    b.lametun(
        Side::Server,
        "server",
        &["-listen", "-device", "tun0", "--address", SERVER_CIDR],
    )
    .unwrap();
    start_client_to(&mut b, SERVER_UL6, &[]);
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 5003), 10 << 20);
    let log = b.log("server");
    assert!(
        log.contains("learned the peer's address peer=[fd99::2]:"),
        "{log}"
    );
    // The client's MTU accounts for the 40-byte IPv6 header: 1500 - 40 - 8 - 4; the
    // server lowers its own to match once it learned an IPv6 peer.
    assert_eq!(mtu_of(&b, Side::Client, "tun0"), 1448);
    let deadline = Instant::now() + Duration::from_secs(3);
    while mtu_of(&b, Side::Server, "tun0") != 1448 {
        assert!(
            Instant::now() < deadline,
            "the server kept MTU {}",
            mtu_of(&b, Side::Server, "tun0")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before =
        b.fragment_counters(Side::Server).unwrap() + b.fragment_counters(Side::Client).unwrap();
    assert_eq!(
        b.ping(Side::Client, SERVER_TUN, 3, Some(1448 - 28), true)
            .unwrap(),
        3
    );
    assert_eq!(
        b.ping(Side::Server, CLIENT_TUN, 3, Some(1448 - 28), true)
            .unwrap(),
        3
    );
    let after =
        b.fragment_counters(Side::Server).unwrap() + b.fragment_counters(Side::Client).unwrap();
    assert_eq!(after, before, "IP fragmentation happened in a namespace");
}

/// A dual-stack server whose IPv6-peer MTU would fall below 1280 keeps 1280: below it
/// the kernel removes the device's IPv6 addresses and routes (and does not put them
/// back when the MTU rises again), which would end IPv6 inside the tunnel for good.
#[test]
fn the_server_keeps_ipv6_in_the_tunnel_when_an_ipv6_peer_lowers_its_mtu() {
    let Some(mut b) = bench("v6min") else { return };
    // 1320 - 20 - 8 - 4 = 1288 for IPv4 peers; 1320 - 40 - 8 - 4 = 1268 for IPv6 ones.
    let config = b.dir().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "device: {{name: tun0, address: [{SERVER_CIDR}, \"{SERVER_CIDR6}\"]}}\n\
             peer: {{listen: true, underlay_mtu: 1320}}\n"
        ),
    )
    .unwrap();
    b.lametun(
        Side::Server,
        "server",
        &["--config", config.to_str().unwrap()],
    )
    .unwrap();
    start_client_to(&mut b, SERVER_UL6, &["--mtu", "1268"]);
    assert!(b.log("server").contains("MTU 1288"), "{}", b.log("server"));
    // The follower runs once a second; give it a few.
    std::thread::sleep(Duration::from_secs(3));
    let mtu = mtu_of(&b, Side::Server, "tun0");
    let addrs = b
        .exec(Side::Server, &["ip", "-6", "addr", "show", "dev", "tun0"])
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        addrs.contains(SERVER_CIDR6),
        "the server lost {SERVER_CIDR6} at MTU {mtu}: {addrs}\n{}",
        b.log("server")
    );
    assert_eq!(mtu, 1280, "{}", b.log("server"));
    assert!(
        b.log("server").contains("below 1280"),
        "{}",
        b.log("server")
    );
}

#[test]
fn the_largest_dont_fragment_ping_passes_and_nothing_fragments() {
    let Some(mut b) = bench("mtu") else { return };
    start_pair(&mut b, &[], &[]);
    let client_mtu = mtu_of(&b, Side::Client, "tun0");
    let server_mtu = mtu_of(&b, Side::Server, "tun0");
    // The article's arithmetic plus the 4-byte header it forgot, at both ends.
    assert_eq!(client_mtu, 1468);
    assert_eq!(server_mtu, 1468);
    let before =
        b.fragment_counters(Side::Server).unwrap() + b.fragment_counters(Side::Client).unwrap();
    assert_eq!(
        b.ping(Side::Client, SERVER_TUN, 3, Some(client_mtu - 28), true)
            .unwrap(),
        3
    );
    assert_eq!(
        b.ping(Side::Server, CLIENT_TUN, 3, Some(server_mtu - 28), true)
            .unwrap(),
        3
    );
    // One byte more does not fit the TUN device with DF set.
    assert_eq!(
        b.ping(Side::Client, SERVER_TUN, 1, Some(client_mtu - 27), true)
            .unwrap(),
        0
    );
    let after =
        b.fragment_counters(Side::Server).unwrap() + b.fragment_counters(Side::Client).unwrap();
    assert_eq!(after, before, "IP fragmentation happened in a namespace");
}

#[test]
fn the_server_learns_a_client_on_another_port_and_reaches_it_first() {
    let Some(mut b) = bench("port") else { return };
    b.lametun(
        Side::Server,
        "server",
        &["-listen", "-device", "tun0", "--address", SERVER_CIDR],
    )
    .unwrap();
    b.lametun(
        Side::Client,
        "client",
        &[
            "-server",
            SERVER_UL,
            "-device",
            "tun0",
            "--address",
            CLIENT_CIDR,
        ],
    )
    .unwrap();
    // No traffic from the client: its keepalive alone must teach the server its address.
    let deadline = Instant::now() + Duration::from_secs(5);
    let learned = loop {
        let log = b.log("server");
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("learned the peer's address"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the server never learned the client:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let port: u16 = learned.rsplit(':').next().unwrap().trim().parse().unwrap();
    assert_ne!(port, 1234, "the client should use an ephemeral port here");
    // The server speaks first.
    assert!(
        b.wait_for_ping(Side::Server, CLIENT_TUN, Duration::from_secs(5)),
        "{}",
        b.log("server")
    );
}

/// Without the packet-information header and without encryption, a keepalive is an
/// empty datagram. (The inbound thread once skipped empty datagrams: the server never
/// heard a keepalive, and could not learn a client that had no traffic.)
#[test]
fn empty_keepalives_without_packet_info_reach_the_server() {
    let Some(mut b) = bench("pi0") else { return };
    let server = encrypted::config(&b, Side::Server, None);
    let client = encrypted::config(&b, Side::Client, None);
    let text = std::fs::read_to_string(&client).unwrap();
    std::fs::write(
        &client,
        text.replace("  port: 1234\n", "  port: 1234\n  keepalive: 1s\n"),
    )
    .unwrap();
    b.lametun(Side::Server, "server", &["--config", &server])
        .unwrap();
    b.lametun(Side::Client, "client", &["--config", &client])
        .unwrap();
    assert!(
        b.wait_for_ping(Side::Client, SERVER_TUN, Duration::from_secs(5)),
        "{}",
        b.log("client")
    );
    // Idle for three keepalive intervals (the once-a-second tick sends one every one
    // or two seconds).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(b.stop("client"), Some(0));
    assert_eq!(b.stop("server"), Some(0));
    let sent = count_in(&summary(&b, "client"), "keepalives rx 0 tx");
    let server = summary(&b, "server");
    let received = count_in(&server, "keepalives rx");
    assert!(sent >= 1, "{}", summary(&b, "client"));
    assert!(received >= 1 && received <= sent, "{server}");
}

/// The article's way: root makes the device for a user (`ip tuntap add ... user`), sets
/// it up, and the tunnel runs as that user. Without CAP_NET_ADMIN and with no address
/// to set, lametun leaves the link as it is (it used to fail bringing it up) and runs
/// without offloads, whose segment cap it cannot set.
#[test]
fn a_device_made_for_a_user_carries_the_tunnel_of_that_unprivileged_user() {
    let Some(log) = unprivileged_server(&[], "user") else {
        return;
    };
    assert!(log.contains("tun_offload=false"), "{log}");
}

/// The same, with the segment cap set by root: the unprivileged tunnel keeps offloads.
#[test]
fn a_device_made_for_a_user_with_the_segment_cap_keeps_offloads() {
    let Some(log) = unprivileged_server(&["gso_max_segs", "64"], "usercap") else {
        return;
    };
    assert!(log.contains("tun_offload=true"), "{log}");
}

/// Runs a server as uid 65534 on a device root made for it (MTU 1400, up, its address,
/// and `link` set on it), a root client against it, a ping and a TCP transfer with its
/// checksum compared. Returns the server's log (`None`: skipped, see [`bench`]).
fn unprivileged_server(link: &[&str], tag: &str) -> Option<String> {
    let mut b = bench(tag)?;
    let mut set = vec!["ip", "link", "set", "ltuser0", "mtu", "1400", "up"];
    set.extend_from_slice(link);
    for argv in [
        &[
            "ip", "tuntap", "add", "dev", "ltuser0", "mode", "tun", "user", "65534",
        ][..],
        &set,
        &["ip", "addr", "add", SERVER_CIDR, "dev", "ltuser0"],
    ] {
        let out = b.exec(Side::Server, argv).unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
    }
    if let Some(at) = link.iter().position(|&a| a == "gso_max_segs") {
        let shown = b
            .exec(Side::Server, &["ip", "-d", "link", "show", "ltuser0"])
            .unwrap();
        let want = format!("gso_max_segs {}", link[at + 1]);
        if !String::from_utf8_lossy(&shown.stdout).contains(&want) {
            eprintln!("skipped: this kernel ignores the GSO segment cap of a link");
            return None;
        }
    }
    b.spawn_as(
        65534,
        Side::Server,
        "server",
        &["-listen", "-device", "ltuser0"],
    )
    .unwrap();
    start_client(&mut b, &[]);
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 5301), 4 << 20);
    let log = b.log("server");
    assert!(log.contains("leaving it as it is"), "{log}");
    let mtu = b
        .exec(Side::Server, &["cat", "/sys/class/net/ltuser0/mtu"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1400");
    Some(log)
}

/// A multi-queue device made earlier (`ip tuntap add ... multi_queue`) can only be
/// opened as one; one worker opens it with one queue.
#[test]
fn a_multi_queue_device_made_earlier_opens_with_one_worker() {
    let Some(mut b) = bench("mq1") else { return };
    let out = b
        .exec(
            Side::Server,
            &[
                "ip",
                "tuntap",
                "add",
                "dev",
                "ltmq0",
                "mode",
                "tun",
                "multi_queue",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let server = b
        .lametun(
            Side::Server,
            "server",
            &[
                "-listen",
                "-device",
                "ltmq0",
                "--address",
                SERVER_CIDR,
                "--workers",
                "1",
            ],
        )
        .unwrap();
    start_client(&mut b, &[]);
    assert!(b.log("server").contains("queues=1"), "{}", b.log("server"));
    // A second tunnel on it would be attached as one more queue, and the kernel would
    // split the traffic between them: it is refused, naming the holder. (Bounded: a
    // second tunnel that starts would run until `timeout` ends it, and fail the test.)
    let out = b
        .exec(
            Side::Server,
            &[
                "timeout",
                "10",
                lametun_bin(),
                "-listen",
                "-port",
                "1240",
                "-device",
                "ltmq0",
                "--workers",
                "2",
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("TUN device ltmq0 is in use by process {server}")),
        "{err}"
    );
}

#[test]
fn a_burst_of_garbage_is_dropped_counted_and_survived() {
    let Some(mut b) = bench("junk") else { return };
    start_pair(&mut b, &[], &[]);
    let target: SocketAddr = format!("{SERVER_UL}:1234").parse().unwrap();
    let sent = b
        .in_netns(Side::Client, move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut rng = lametun_core::testing::Rng::new(42);
            let mut buf = [0u8; 1600];
            let mut sent = 0;
            for i in 0..5000 {
                let len = match i % 3 {
                    0 => rng.below(8),
                    1 => rng.below(64),
                    _ => rng.below(1600),
                };
                rng.fill(&mut buf[..len]);
                if sock.send_to(&buf[..len], target).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
        .unwrap();
    assert!(sent > 4000);
    // The tunnel still works (and the client is still the peer).
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(
        b.stop("server"),
        Some(0),
        "the server should exit cleanly on SIGTERM"
    );
    let log = b.log("server");
    let summary = log
        .lines()
        .find(|l| l.contains("stopped:"))
        .expect("a summary at shutdown");
    assert!(summary.contains("core in too_short"), "{summary}");
    assert!(summary.contains("core in malformed"), "{summary}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn sigterm_ends_both_ends_cleanly() {
    let Some(mut b) = bench("term") else { return };
    start_pair(&mut b, &[], &[]);
    assert_eq!(b.stop("client"), Some(0));
    assert_eq!(b.stop("server"), Some(0));
    assert!(b.log("server").contains("SIGTERM: shutting down"));
}

#[test]
fn a_device_in_use_is_refused() {
    let Some(mut b) = bench("busy") else { return };
    start_pair(&mut b, &[], &[]);
    b.lametun(
        Side::Server,
        "second",
        &["-listen", "-device", "tun0", "-port", "4321"],
    )
    .unwrap();
    let code = b
        .wait_exit("second", Duration::from_secs(5))
        .expect("a second lametun on the same device kept running");
    assert_eq!(code, Some(2));
    assert!(
        b.log("second").contains("TUN device tun0 is in use"),
        "{}",
        b.log("second")
    );
    // The first one is unharmed.
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 2, None, false).unwrap(), 2);
}

#[test]
fn without_offloads_the_plain_path_works() {
    let Some(mut b) = bench("nooff") else { return };
    start_pair(&mut b, &["--no-offload"], &["--no-offload"]);
    assert!(
        b.log("server").contains("tun_offload=false"),
        "{}",
        b.log("server")
    );
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 5004), 20 << 20);
}

#[test]
fn a_config_file_runs_a_tunnel() {
    let Some(mut b) = bench("cfg") else { return };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    b.lametun(
        Side::Server,
        "server",
        &["--config", &format!("{dir}/plain-server.yaml")],
    )
    .unwrap();
    b.lametun(
        Side::Client,
        "client",
        &["--config", &format!("{dir}/plain-client.yaml")],
    )
    .unwrap();
    wait_up(&b);
    let routes = b
        .exec(Side::Client, &["ip", "route", "show", "dev", "tun0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).contains("172.16.0.0/12"));
}

/// A route of `routes:` that the host has already through another device is not taken
/// over (it would be gone for good once the tunnel stops): lametun refuses to start and
/// says why. One that already goes through the device (a persistent device, a restart)
/// is fine.
#[test]
fn a_route_the_host_has_through_another_device_is_left_alone() {
    let Some(mut b) = bench("rte") else { return };
    let veth = b.veth(Side::Client);
    for (net, family) in [("172.16.0.0/12", "-4"), ("fd40::/64", "-6")] {
        b.exec(
            Side::Client,
            &["ip", family, "route", "add", net, "dev", &veth],
        )
        .unwrap();
        let config = b.dir().join(format!("conflict{family}.yaml"));
        std::fs::write(
            &config,
            format!(
                "device: {{name: tun0, address: [{CLIENT_CIDR}, \"{CLIENT_CIDR6}\"], routes: [\"{net}\"]}}\n\
                 peer: {{server: {SERVER_UL}}}\n"
            ),
        )
        .unwrap();
        let name = format!("conflict{family}");
        b.lametun(Side::Client, &name, &["--config", config.to_str().unwrap()])
            .unwrap();
        let code = b.wait_exit(&name, Duration::from_secs(5));
        let routes = b
            .exec(Side::Client, &["ip", family, "route", "show", net])
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(
            routes.contains(&format!("dev {veth}")),
            "the route to {net} through {veth} is gone: {routes}\n{}",
            b.log(&name)
        );
        assert_eq!(code, Some(Some(2)), "{}", b.log(&name));
        assert!(
            b.log(&name).contains(&format!("route {net} exists")),
            "{}",
            b.log(&name)
        );
    }
    // A persistent device keeps its route between runs: the second run finds it there.
    b.exec(
        Side::Client,
        &["ip", "tuntap", "add", "dev", "tun0", "mode", "tun"],
    )
    .unwrap();
    let config = b.dir().join("persistent.yaml");
    std::fs::write(
        &config,
        format!(
            "device: {{name: tun0, address: [{CLIENT_CIDR}], routes: [10.77.0.0/16]}}\n\
             peer: {{server: {SERVER_UL}}}\n"
        ),
    )
    .unwrap();
    for run in ["first", "second"] {
        b.lametun(Side::Client, run, &["--config", config.to_str().unwrap()])
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(b.exit_status(run), None, "{}", b.log(run));
        assert_eq!(b.stop(run), Some(0), "{}", b.log(run));
    }
    let routes = b
        .exec(Side::Client, &["ip", "route", "show", "10.77.0.0/16"])
        .unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).contains("dev tun0"));
}

// ===== interoperability with the article's Go program =====

/// The article's Go lametun, built once from the seed document, if a Go toolchain and
/// Debian's golang.org/x/sys are installed (CI installs them).
fn go_lametun() -> Option<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BIN.get_or_init(|| {
        let seed = std::env::var("LAMETUN_SEED").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/vpns-from-first-principles.md")
        });
        let text = std::fs::read_to_string(&seed).map_err(|e| format!("seed article {}: {e}", seed.display()))?;
        let code: String = text
            .split("```go\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .ok_or("no ```go block in the seed article")?
            .to_owned();
        let xsys = "/usr/share/gocode/src/golang.org/x/sys";
        if !std::path::Path::new(xsys).exists() {
            return Err("golang.org/x/sys is not installed (package golang-golang-x-sys-dev)".into());
        }
        // Kept in cargo's tmp dir under the hash of the source, and reused: a run
        // leaves one binary per version of the article's code, not a build per run.
        let hash = ring::digest::digest(&ring::digest::SHA256, code.as_bytes());
        let key: String = hash.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let bin = tmp.join(format!("lametun-go-{key}"));
        if bin.exists() {
            return Ok(bin);
        }
        // Built in a directory of this process (with its Go cache), removed afterwards
        // whether the build worked or not.
        let dir = tmp.join(format!("lametun-go-build-{}", std::process::id()));
        let built = (|| -> Result<(), String> {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("main.go"), &code).map_err(|e| e.to_string())?;
            std::fs::write(
                dir.join("go.mod"),
                format!("module lametun\n\ngo 1.19\n\nrequire golang.org/x/sys v0.3.0\n\nreplace golang.org/x/sys => {xsys}\n"),
            )
            .map_err(|e| e.to_string())?;
            let out = std::process::Command::new("go")
                .args(["build", "-o", "lametun-go", "."])
                .current_dir(&dir)
                .env("GOFLAGS", "-mod=mod")
                .env("GOPROXY", "off")
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", dir.join("cache"))
                .output()
                .map_err(|e| format!("`go` is not installed (package golang-go): {e}"))?;
            if !out.status.success() {
                return Err(format!("go build failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            // Atomic: a test process building the same code at once writes the same file.
            std::fs::rename(dir.join("lametun-go"), &bin).map_err(|e| e.to_string())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        built.map(|()| bin)
    });
    match built {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            assert!(
                std::env::var("LAMETUN_REQUIRE_NETNS").as_deref() != Ok("1"),
                "LAMETUN_REQUIRE_NETNS=1 but the Go lametun cannot be built: {why}"
            );
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Waits for device `dev` in `side`'s namespace and configures it the way the article
/// does by hand: address, the MTU that fits its wire format, up.
fn configure_go_device(b: &Bench, side: Side, cidr: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b
        .exec(side, &["ip", "link", "show", "tun0"])
        .unwrap()
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the Go lametun did not create tun0"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for cmd in [
        &["ip", "addr", "add", cidr, "dev", "tun0"][..],
        &["ip", "link", "set", "dev", "tun0", "mtu", "1468"],
        &["ip", "link", "set", "dev", "tun0", "up"],
    ] {
        let out = b.exec(side, cmd).unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_go_lametun_as_server_talks_to_ours() {
    let Some(go) = go_lametun() else { return };
    let Some(mut b) = bench("gos") else { return };
    b.binary = go;
    b.spawn(Side::Server, "server", &["-listen", "-device", "tun0"])
        .unwrap();
    configure_go_device(&b, Side::Server, SERVER_CIDR);
    b.binary = lametun_bin().into();
    start_client(&mut b, &["--workers", "2"]);
    // Two workers, one socket: the Go server answers the last address it heard from,
    // so a client that sent from two ports would get a flow's packets on both.
    assert!(b.log("client").contains("sockets=1"), "{}", b.log("client"));
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 5005), 5 << 20);
    // Our keepalive (a bare packet-information header) did not make it exit.
    assert!(
        b.exit_status("server").is_none(),
        "the Go server exited:\n{}",
        b.log("server")
    );
}

/// Our server with two workers (two sockets on the tunnel port) and the Go client's one
/// socket: the client's datagrams all reach one server socket, so the other path never
/// hears from it and answers the address the first learned. Two transfers from the
/// server, from source ports chosen so that one flow is sent by each path.
#[test]
fn our_server_talks_to_the_go_lametun_as_client() {
    let Some(go) = go_lametun() else { return };
    let Some(mut b) = bench("goc") else { return };
    let server = b
        .lametun(
            Side::Server,
            "server",
            &[
                "-listen",
                "-device",
                "tun0",
                "--address",
                SERVER_CIDR,
                "--workers",
                "2",
            ],
        )
        .unwrap();
    b.binary = go;
    b.spawn(
        Side::Client,
        "client",
        &["-server", SERVER_UL, "-device", "tun0"],
    )
    .unwrap();
    b.binary = lametun_bin().into();
    configure_go_device(&b, Side::Client, CLIENT_CIDR);
    wait_up(&b);
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    assert!(b.log("server").contains("sockets=2"), "{}", b.log("server"));
    let counted = io_counted_per_thread();
    for queue in [0, 1] {
        let thread = format!("lametun-out{queue}");
        let before = counted.then(|| thread_io(server, &thread).read);
        let port = port_on_queue((SERVER_TUN, CLIENT_TUN, 5006), queue, 2, 42_000);
        let to = testnet::addr(CLIENT_TUN, 5006);
        tcp_intact_from(&b, Side::Client, to, Some(port), 5 << 20);
        if let Some(before) = before {
            // The flow was read, and sent, by the outbound thread of its queue.
            let read = thread_io(server, &thread).read - before;
            assert!(read >= 5 << 20, "{thread} read {read} bytes");
        }
    }
}

#[test]
fn a_tap_device_of_that_name_is_refused_with_a_reason() {
    let Some(b) = bench("tap") else { return };
    b.exec(
        Side::Server,
        &["ip", "tuntap", "add", "dev", "lttap0", "mode", "tap"],
    )
    .unwrap();
    let out = b
        .exec(
            Side::Server,
            &[lametun_bin(), "-listen", "-device", "lttap0"],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lttap0 is a TAP device"), "{err}");
}

#[test]
fn a_port_in_use_is_refused() {
    let Some(mut b) = bench("port2") else { return };
    start_pair(&mut b, &[], &[]);
    b.lametun(
        Side::Server,
        "second",
        &["-listen", "-device", "tun1", "-port", "1234"],
    )
    .unwrap();
    let code = b
        .wait_exit("second", Duration::from_secs(5))
        .expect("a second lametun on a port in use kept running");
    assert_eq!(code, Some(2));
    assert!(
        b.log("second").contains("UDP port 1234 is in use"),
        "{}",
        b.log("second")
    );
}

#[test]
fn no_permission_for_the_tun_device_is_explained() {
    let Some(b) = bench("perm") else { return };
    // As an unprivileged user, inside the bench's namespace.
    let out = b
        .exec(
            Side::Server,
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                lametun_bin(),
                "-listen",
                "-device",
                "ltperm0",
            ],
        )
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no permission to open TUN device ltperm0"),
        "{err}"
    );
    assert!(
        err.contains("ip tuntap add dev ltperm0 mode tun user"),
        "{err}"
    );
}

/// `lametun demo` interrupted by Ctrl-C (SIGINT to its process group, as a terminal
/// sends it) at different steps: it stops within seconds, says it was interrupted (not
/// that the step under way failed), and leaves no namespace behind.
#[test]
fn demo_stops_promptly_and_cleans_up_on_ctrl_c() {
    use std::os::unix::process::CommandExt;
    if let Some(why) = testnet::unavailable() {
        assert!(
            std::env::var("LAMETUN_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LAMETUN_REQUIRE_NETNS=1 but this machine cannot run the demo: {why}"
        );
        eprintln!("skipped: this test {why}");
        return;
    }
    // While it starts the tunnels and waits for them, and during the pings.
    for delay_ms in [150, 250, 700] {
        let mut child = std::process::Command::new(lametun_bin())
            .arg("demo")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let sent = Instant::now();
        // The demo's own process group (it leads it): the demo, its tunnels, its pings.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-(pid as i32)),
            nix::sys::signal::Signal::SIGINT,
        );
        let mut status = None;
        while sent.elapsed() < Duration::from_secs(30) {
            if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = sent.elapsed();
        if status.is_none() {
            // The whole group, by its id: the demo and what it started (its tunnels).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-(pid as i32)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let namespaces = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let prefix = format!("ltdemo{pid:x}x");
        let left: Vec<String> = String::from_utf8_lossy(&namespaces.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
            .collect();
        for ns in &left {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
        assert!(left.is_empty(), "after {delay_ms} ms: left behind {left:?}");
        assert_eq!(out.status.code(), Some(1), "after {delay_ms} ms: {stderr}");
        assert!(
            stderr.contains("lametun: interrupted"),
            "after {delay_ms} ms, the demo should say it was interrupted:\n{stderr}"
        );
        assert!(
            took < Duration::from_secs(5),
            "after {delay_ms} ms, the demo took {took:?} to stop"
        );
    }
}
