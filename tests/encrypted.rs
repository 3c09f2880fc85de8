//! Encrypted mode (`type: chacha20poly1305`) on real devices: TUN devices in network
//! namespaces, the real binary at both ends, and an attacker on the veth who captures,
//! replays and forges datagrams.
//!
//! Needs root, /dev/net/tun, `ip`, `ping` (like every namespace test) and `tcpdump` for
//! the captures; each test prints why it skips otherwise, or fails with
//! `LAMETUN_REQUIRE_NETNS=1` (CI).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lametun::testnet::{self, Bench, CLIENT_TUN, CLIENT_UL, SERVER_TUN, SERVER_UL, Side};
use lametun_stage_chacha20poly1305::generate_key;

use crate::lametun_bin;
use crate::netns::{bench, count_in, summary, tcp_intact};

/// The MTU of an encrypted tunnel over IPv4 without the packet-information header:
/// 1500 - 20 (IPv4) - 8 (UDP) - 16 (header) - 16 (tag).
const ENCRYPTED_MTU: usize = 1440;

/// Writes a key file with mode 600 (lametun refuses anything more open).
fn key_file(b: &Bench, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = b.dir().join(name);
    std::fs::write(&path, format!("{}\n", generate_key())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Writes the config of one end: the article's addresses, and the encryption stage with
/// `key` (plaintext without), without the packet-information header.
pub(crate) fn config(b: &Bench, side: Side, key: Option<&Path>) -> String {
    let (name, address, peer) = match side {
        Side::Server => ("server", "172.31.255.13/24", "listen: true".to_owned()),
        Side::Client => ("client", "172.31.255.7/24", format!("server: {SERVER_UL}")),
    };
    let pipeline = match key {
        Some(key) => format!(
            "\n  - type: chacha20poly1305\n    key_file: {}\n",
            key.display()
        ),
        None => " []\n".to_owned(),
    };
    let text = format!(
        "device:\n  name: tun0\n  address: {address}\n  mtu: auto\n  packet_info: false\n\
         peer:\n  {peer}\n  port: 1234\npipeline:{pipeline}"
    );
    let suffix = if key.is_some() { "enc" } else { "plain" };
    let path = b.dir().join(format!("{name}-{suffix}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Starts an encrypted server and client ("server", "client") with a new key file,
/// waits until the tunnel carries a ping, and returns the key file.
pub(crate) fn start_pair(b: &mut Bench) -> PathBuf {
    start_pair_with(b, &[]).0
}

/// [`start_pair`] with `extra` arguments for both ends; also returns the PIDs of the
/// server and the client.
pub(crate) fn start_pair_with(b: &mut Bench, extra: &[&str]) -> (PathBuf, u32, u32) {
    let key = key_file(b, "psk");
    let server = start_with(b, Side::Server, "server", Some(&key), extra);
    let client = start_with(b, Side::Client, "client", Some(&key), extra);
    assert!(
        wait_up(b, Duration::from_secs(10)),
        "the encrypted tunnel did not come up\n{}",
        logs(b, &["server", "client"])
    );
    (key, server, client)
}

/// Starts lametun as `name` on `side` with the config for `key`.
fn start(b: &mut Bench, side: Side, name: &str, key: Option<&Path>) {
    start_with(b, side, name, key, &[]);
}

/// [`start`] with `extra` arguments; returns the PID.
fn start_with(b: &mut Bench, side: Side, name: &str, key: Option<&Path>, extra: &[&str]) -> u32 {
    let config = config(b, side, key);
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    b.lametun(side, name, &args).unwrap()
}

/// Waits until a ping from the client crosses the tunnel.
fn wait_up(b: &Bench, within: Duration) -> bool {
    b.wait_for_ping(Side::Client, SERVER_TUN, within)
}

fn logs(b: &Bench, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("---- {n} ----\n{}", b.log(n)))
        .collect()
}

fn mtu_of(b: &Bench, side: Side) -> usize {
    let out = b.exec(side, &["cat", "/sys/class/net/tun0/mtu"]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Whether `tcpdump` can run here (CI installs it).
fn have_tcpdump() -> bool {
    let found = Command::new("tcpdump")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("LAMETUN_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LAMETUN_REQUIRE_NETNS=1 but `tcpdump` is not installed"
        );
        eprintln!("skipped: this test needs `tcpdump` (package tcpdump)");
    }
    found
}

/// Starts capturing the tunnel's UDP datagrams on `side`'s veth, as process `name`;
/// returns the pcap file once tcpdump listens.
fn start_capture(b: &mut Bench, side: Side, name: &str) -> PathBuf {
    let file = b.dir().join(format!("{name}.pcap"));
    let veth = b.veth(side);
    let file_arg = file.to_string_lossy().into_owned();
    b.binary = "tcpdump".into();
    let spawned = b.spawn(
        side,
        name,
        &[
            "-i",
            &veth,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            &file_arg,
            "udp",
            "port",
            "1234",
        ],
    );
    b.binary = lametun_bin().into();
    spawned.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.log(name).contains("listening on") {
        assert!(
            Instant::now() < deadline,
            "tcpdump did not start: {}",
            b.log(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    file
}

/// Stops capture `name` and returns the IPv4 UDP datagrams it saw: (from, to, payload).
fn stop_capture(b: &mut Bench, name: &str, file: &Path) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    b.stop(name);
    udp_datagrams(&std::fs::read(file).unwrap())
}

/// Parses a classic pcap file of Ethernet frames into its IPv4 UDP datagrams.
fn udp_datagrams(pcap: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    assert!(pcap.len() >= 24, "not a pcap file");
    let magic = [pcap[0], pcap[1], pcap[2], pcap[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        other => panic!("not a pcap file (magic {other:02x?})"),
    };
    let u32_at = |at: usize| {
        let b = [pcap[at], pcap[at + 1], pcap[at + 2], pcap[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type should be Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32_at(at + 8) as usize;
        let Some(frame) = pcap.get(at + 16..at + 16 + len) else {
            break;
        };
        at += 16 + len;
        // Ethernet, then IPv4 (no fragments), then UDP.
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
        if ip[9] != 17 || fragmented || total > ip.len() || ihl + 8 > total {
            continue;
        }
        let addr = |a: &[u8], p: &[u8]| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                u16::from_be_bytes([p[0], p[1]]),
            ))
        };
        let udp = &ip[ihl..total];
        out.push((
            addr(&ip[12..16], &udp[0..2]),
            addr(&ip[16..20], &udp[2..4]),
            udp[8..].to_vec(),
        ));
    }
    out
}

/// Sends each of `datagrams` `times` times to `to`, from a new socket on `from_ip` in
/// `side`'s namespace (so from another port than the tunnel's). Returns how many went out.
fn send_from(
    b: &Bench,
    side: Side,
    from_ip: &str,
    to: SocketAddr,
    datagrams: Vec<Vec<u8>>,
    times: usize,
) -> usize {
    let from: SocketAddr = testnet::addr(from_ip, 0);
    b.in_netns(side, move || {
        let sock = UdpSocket::bind(from).unwrap();
        let mut sent = 0;
        for _ in 0..times {
            for d in &datagrams {
                if sock.send_to(d, to).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
    .unwrap()
}

fn server_port() -> SocketAddr {
    testnet::addr(SERVER_UL, 1234)
}

#[test]
fn encrypted_mode_carries_ping_and_tcp_intact_without_fragments() {
    let Some(mut b) = bench("enc") else { return };
    start_pair(&mut b);
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    let t = tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 5101), 20 << 20);
    eprintln!(
        "encrypted: 20 MB in {:.2} s: {:.0} Mbit/s",
        t.seconds,
        t.mbit_per_s()
    );

    // `mtu: auto` leaves room for the 32 bytes of header and tag: the largest
    // don't-fragment ping passes both ways and nothing is fragmented.
    assert_eq!(mtu_of(&b, Side::Client), ENCRYPTED_MTU);
    assert_eq!(mtu_of(&b, Side::Server), ENCRYPTED_MTU);
    let before =
        b.fragment_counters(Side::Server).unwrap() + b.fragment_counters(Side::Client).unwrap();
    let largest = Some(ENCRYPTED_MTU - 28);
    assert_eq!(
        b.ping(Side::Client, SERVER_TUN, 3, largest, true).unwrap(),
        3
    );
    assert_eq!(
        b.ping(Side::Server, CLIENT_TUN, 3, largest, true).unwrap(),
        3
    );
    let after =
        b.fragment_counters(Side::Server).unwrap() + b.fragment_counters(Side::Client).unwrap();
    assert_eq!(after, before, "IP fragmentation happened in a namespace");

    assert_eq!(b.stop("client"), Some(0));
    assert_eq!(b.stop("server"), Some(0));
    let log = b.log("server");
    assert!(log.contains("accepted a new session of the peer"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_marker_crosses_the_wire_in_clear_only_without_encryption() {
    let Some(mut b) = bench("mark") else { return };
    if !have_tcpdump() {
        return;
    }
    const MARKER: &[u8] = b"lametun-marker-7f3c9a-must-not-be-seen";
    let key = key_file(&b, "psk");
    for encrypted in [false, true] {
        let mode = if encrypted { "encrypted" } else { "plaintext" };
        let key = encrypted.then_some(key.as_path());
        let (server, client) = (format!("server-{mode}"), format!("client-{mode}"));
        start(&mut b, Side::Server, &server, key);
        start(&mut b, Side::Client, &client, key);
        assert!(
            wait_up(&b, Duration::from_secs(10)),
            "{mode}: no tunnel\n{}",
            logs(&b, &[&server, &client])
        );
        let capture = format!("capture-{mode}");
        let file = start_capture(&mut b, Side::Server, &capture);
        // A UDP datagram through the tunnel, to a port where nothing listens.
        let sent = send_from(
            &b,
            Side::Client,
            CLIENT_TUN,
            testnet::addr(SERVER_TUN, 7777),
            vec![MARKER.to_vec()],
            3,
        );
        assert_eq!(sent, 3);
        std::thread::sleep(Duration::from_millis(300));
        let datagrams = stop_capture(&mut b, &capture, &file);
        let tunnel: Vec<_> = datagrams
            .iter()
            .filter(|(_, to, _)| *to == server_port())
            .collect();
        assert!(
            tunnel.len() >= 3,
            "{mode}: the capture missed the tunnel's datagrams"
        );
        let pcap = std::fs::read(&file).unwrap();
        let seen = pcap.windows(MARKER.len()).any(|w| w == MARKER);
        assert_eq!(seen, !encrypted, "{mode}: marker seen on the wire: {seen}");
        assert_eq!(b.stop(&client), Some(0));
        assert_eq!(b.stop(&server), Some(0));
    }
}

#[test]
fn captured_datagrams_sent_again_never_reach_the_servers_tun() {
    let Some(mut b) = bench("rply") else { return };
    if !have_tcpdump() {
        return;
    }
    start_pair(&mut b);
    let file = start_capture(&mut b, Side::Server, "capture");
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 5, None, false).unwrap(), 5);
    let recorded: Vec<Vec<u8>> = stop_capture(&mut b, "capture", &file)
        .into_iter()
        .filter(|(_, to, _)| *to == server_port())
        .map(|(_, _, payload)| payload)
        .collect();
    assert!(
        recorded.len() >= 5,
        "captured {} datagrams ({} bytes)\n{}",
        recorded.len(),
        std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
        b.log("capture")
    );

    let server_rx = b.link_counter(Side::Server, "tun0", "rx_packets").unwrap();
    let client_tx = b.link_counter(Side::Client, "tun0", "tx_packets").unwrap();
    // The attacker replays every captured datagram three times, from the client's own
    // address (another port) and from the server's side of the link.
    let n = recorded.len();
    assert_eq!(
        send_from(
            &b,
            Side::Client,
            CLIENT_UL,
            server_port(),
            recorded.clone(),
            3
        ),
        3 * n
    );
    std::thread::sleep(Duration::from_millis(500));
    let server_rx_delta = b.link_counter(Side::Server, "tun0", "rx_packets").unwrap() - server_rx;
    let client_tx_delta = b.link_counter(Side::Client, "tun0", "tx_packets").unwrap() - client_tx;
    // Only what the client's own kernel sent meanwhile (usually nothing) may arrive.
    assert_eq!(
        server_rx_delta, client_tx_delta,
        "replayed datagrams reached the server's TUN device"
    );
    // The server still answers the real client, at its real address.
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 2, None, false).unwrap(), 2);
    assert_eq!(b.stop("client"), Some(0));
    assert_eq!(b.stop("server"), Some(0));
    let summary = summary(&b, "server");
    assert!(
        count_in(&summary, "chacha20poly1305 in replayed") >= 2 * n as u64,
        "{summary}"
    );
    assert!(
        !b.log("server").contains("peer address changed"),
        "{}",
        b.log("server")
    );
}

#[test]
fn ends_with_different_keys_deliver_nothing() {
    let Some(mut b) = bench("keys") else { return };
    let (server_key, client_key) = (key_file(&b, "psk-server"), key_file(&b, "psk-client"));
    start(&mut b, Side::Server, "server", Some(&server_key));
    start(&mut b, Side::Client, "client", Some(&client_key));
    assert!(
        !wait_up(&b, Duration::from_secs(3)),
        "a ping crossed between different keys"
    );
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 2, None, false).unwrap(), 0);
    assert_eq!(
        b.link_counter(Side::Server, "tun0", "rx_packets").unwrap(),
        0
    );
    assert_eq!(
        b.link_counter(Side::Client, "tun0", "rx_packets").unwrap(),
        0
    );
    assert_eq!(b.stop("client"), Some(0));
    assert_eq!(b.stop("server"), Some(0));
    let log = b.log("server");
    assert!(!log.contains("learned the peer's address"), "{log}");
    // Said once at warn (rate-limited), though many datagrams failed.
    assert_eq!(log.matches("failed authentication").count(), 1, "{log}");
    let summary = summary(&b, "server");
    assert!(
        count_in(&summary, "chacha20poly1305 in bad_tag") >= 3,
        "{summary}"
    );
}

#[test]
fn restarting_either_end_resumes_traffic_within_2_seconds() {
    let Some(mut b) = bench("rst") else { return };
    let key = start_pair(&mut b);

    // The client restarts; the server is not touched.
    assert_eq!(b.stop("client"), Some(0));
    let t = Instant::now();
    start(&mut b, Side::Client, "client-2", Some(&key));
    assert!(
        wait_up(&b, Duration::from_secs(2)),
        "no traffic 2 s after the client restarted\n{}",
        logs(&b, &["server", "client-2"])
    );
    eprintln!("client restart: traffic again after {:?}", t.elapsed());
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 2, None, false).unwrap(), 2);

    // The server restarts; the client is not touched.
    assert_eq!(b.stop("server"), Some(0));
    let t = Instant::now();
    start(&mut b, Side::Server, "server-2", Some(&key));
    assert!(
        wait_up(&b, Duration::from_secs(2)),
        "no traffic 2 s after the server restarted\n{}",
        logs(&b, &["server-2", "client-2"])
    );
    eprintln!("server restart: traffic again after {:?}", t.elapsed());
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 2, None, false).unwrap(), 2);
    let log = b.log("server");
    assert_eq!(log.matches("accepted a new session").count(), 2, "{log}");
}

#[test]
fn forged_datagrams_from_a_third_address_do_not_move_the_peer() {
    let Some(mut b) = bench("forge") else { return };
    start_pair(&mut b);
    // A third host on the link.
    const THIRD: &str = "10.99.0.3";
    let veth = b.veth(Side::Client);
    let out = b
        .exec(
            Side::Client,
            &["ip", "addr", "add", &format!("{THIRD}/24"), "dev", &veth],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Garbage, and datagrams shaped like ours (kind 0x01, any session, counter, tag).
    let mut rng = lametun_core::testing::Rng::new(0xf0_4ed);
    let forged: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let len = match i % 4 {
                0 => rng.below(32),
                1 => 32,
                _ => 32 + rng.below(1400),
            };
            let mut d = vec![0u8; len];
            rng.fill(&mut d);
            if i % 2 == 0 && len > 0 {
                d[0] = 0x01;
            }
            d
        })
        .collect();
    assert_eq!(
        send_from(&b, Side::Client, THIRD, server_port(), forged, 2),
        2000
    );
    std::thread::sleep(Duration::from_millis(300));
    // The server still sends to the client, which still answers.
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.stop("client"), Some(0));
    assert_eq!(b.stop("server"), Some(0));
    let log = b.log("server");
    assert!(!log.contains("peer address changed"), "{log}");
    // The third address shows up only as the source of rejected datagrams: in the
    // wrong-key hint, or in the wrong-cipher hint (a forged header may name the other
    // cipher; that hint has its own rate limit), never as a peer.
    assert!(
        !log.lines().any(|l| l.contains(THIRD)
            && !l.contains("failed authentication")
            && !l.contains("set the same `cipher` on both ends")),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // 500 of each kind were sent; a loaded machine may lose some in the socket.
    let summary = summary(&b, "server");
    assert!(
        count_in(&summary, "chacha20poly1305 in bad_tag") >= 400,
        "{summary}"
    );
    assert!(
        count_in(&summary, "chacha20poly1305 in too_short") >= 150,
        "{summary}"
    );
}
