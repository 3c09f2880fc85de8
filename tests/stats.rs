//! The `stats` stage on real devices: the endpoint's counters match the traffic that
//! crossed the tunnel (keepalives apart), `lametun stats`'s table shows them, and the
//! log summary appears.

use std::time::{Duration, Instant};

use lametun::testnet::{Bench, SERVER_TUN, Side};
use lametun_stage_stats::client;
use lametun_stage_stats::report::{self, Report};

use crate::netns::{bench, wait_up};

/// Where `configs/stats-server.yaml` serves its metrics (inside the server's namespace).
const URL: &str = "http://127.0.0.1:9100/metrics";
/// Size of the ICMP payload the test pings with: 1028-byte IP packets.
const PAYLOAD: usize = 1000;
const PACKET: u64 = PAYLOAD as u64 + 28;
const PINGS: u32 = 20;

fn fetch(b: &Bench) -> Report {
    b.in_netns(Side::Server, || client::fetch(URL))
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", b.log("server")))
}

/// A report once two scrapes in a row agree (nothing in flight), at most 3 s.
fn quiet(b: &Bench) -> Report {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = fetch(b);
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let mut now = fetch(b);
        let uptime = now.uptime;
        now.uptime = last.uptime;
        if now == last || Instant::now() > deadline {
            now.uptime = uptime;
            return now;
        }
        last = now;
    }
}

#[test]
fn the_stats_endpoint_counts_the_traffic_that_crossed_and_lametun_stats_prints_it() {
    let Some(mut b) = bench("stat") else { return };
    // The kernel sends IPv6 router solicitations on a new device; the stage would count
    // them (rightly), so keep IPv6 off the tunnel devices to count exactly the pings.
    for side in [Side::Server, Side::Client] {
        let out = b
            .exec(
                side,
                &[
                    "sh",
                    "-c",
                    "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    b.lametun(
        Side::Server,
        "server",
        &["--config", &format!("{dir}/stats-server.yaml")],
    )
    .unwrap();
    // The shipped client config, with a summary every second instead of every minute.
    let client_yaml = std::fs::read_to_string(format!("{dir}/stats-client.yaml"))
        .unwrap()
        .replace("interval: 1m", "interval: 1s");
    assert!(client_yaml.contains("interval: 1s"));
    let client_config = b.dir().join("stats-client.yaml");
    std::fs::write(&client_config, client_yaml).unwrap();
    b.lametun(
        Side::Client,
        "client",
        &["--config", client_config.to_str().unwrap()],
    )
    .unwrap();
    wait_up(&b);

    let before = quiet(&b);
    assert_eq!(
        b.ping(Side::Client, SERVER_TUN, PINGS, Some(PAYLOAD), false)
            .unwrap(),
        PINGS
    );
    let after = quiet(&b);

    // The server's stats stage saw the echo requests come in and the replies go out.
    let (p0, p1) = (&before.points[0], &after.points[0]);
    assert_eq!(p1.stage, "stats");
    let d_in = p1.inbound.packets - p0.inbound.packets;
    let d_out = p1.outbound.packets - p0.outbound.packets;
    assert_eq!(
        d_in,
        u64::from(PINGS),
        "inbound packets: {before:#?}\n{after:#?}"
    );
    assert_eq!(
        d_out,
        u64::from(PINGS),
        "outbound packets: {before:#?}\n{after:#?}"
    );
    assert_eq!(
        p1.inbound.bytes - p0.inbound.bytes,
        u64::from(PINGS) * PACKET
    );
    assert_eq!(
        p1.outbound.bytes - p0.outbound.bytes,
        u64::from(PINGS) * PACKET
    );

    // And the stage agrees with the tunnel's own counters, keepalives apart: every
    // datagram received is a packet or a keepalive at the stage (the chain is [stats],
    // nothing drops), each with the 4-byte packet-information header on the wire.
    let t = &after.tunnel;
    assert_eq!(t.keepalives_received, p1.inbound.keepalives);
    assert_eq!(
        t.udp_rx_datagrams,
        p1.inbound.packets + p1.inbound.keepalives
    );
    assert_eq!(
        t.udp_rx_bytes,
        p1.inbound.bytes + 4 * (p1.inbound.packets + p1.inbound.keepalives)
    );
    assert_eq!(t.tun_tx_packets, p1.inbound.packets);
    assert_eq!(t.tun_tx_bytes, p1.inbound.bytes);
    let core = after.stages.iter().find(|s| s.stage == "core").unwrap();
    assert_eq!(
        t.tun_rx_packets,
        p1.outbound.packets + core.outbound.dropped(),
        "packets read before the server knew its peer are dropped by the core (no_peer)"
    );
    assert_eq!(t.udp_tx_datagrams, p1.outbound.packets);
    assert_eq!(
        after.peer.as_deref().map(|p| p.starts_with("10.99.0.2:")),
        Some(true)
    );
    assert_eq!(
        t.tun_read_errors + t.tun_write_errors + t.udp_send_errors + t.udp_recv_errors,
        0
    );

    // What `lametun stats` prints: the same figures, in its table.
    let table = report::render(&after, None, URL);
    let row = |dir: &str| {
        table
            .lines()
            .find(|l| l.starts_with(dir) && l.contains("at stats"))
            .unwrap_or_else(|| panic!("no {dir} stats row in:\n{table}"))
            .split_whitespace()
            .nth(3)
            .unwrap()
            .replace(',', "")
    };
    assert_eq!(row("in "), p1.inbound.packets.to_string(), "{table}");
    assert_eq!(row("out "), p1.outbound.packets.to_string(), "{table}");
    assert!(table.contains("peer 10.99.0.2:"), "{table}");

    // And the binary prints that table: `lametun stats` run in the server's namespace.
    let out = b
        .exec(
            Side::Server,
            &[crate::lametun_bin(), "stats", "127.0.0.1:9100"],
        )
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let printed_row = printed
        .lines()
        .find(|l| l.starts_with("in ") && l.contains("at stats"))
        .unwrap_or_else(|| panic!("no inbound stats row in:\n{printed}"));
    assert_eq!(
        printed_row
            .split_whitespace()
            .nth(3)
            .map(|v| v.replace(',', "")),
        Some(p1.inbound.packets.to_string()),
        "{printed}"
    );

    // The logs: where the endpoint is, and the client's summary every second.
    assert!(
        b.log("server")
            .contains("stats: serving metrics at http://127.0.0.1:9100/metrics"),
        "{}",
        b.log("server")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = b.log("client");
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("out ") && l.contains(" | in "))
        {
            assert!(line.contains("INFO"), "{line}");
            assert!(line.contains("pkt/s") && line.contains("bit/s"), "{line}");
            assert!(line.contains("errors 0"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no summary line in:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stats_port_in_use_stops_the_tunnel_at_start_up() {
    let Some(mut b) = bench("sbusy") else { return };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let config = format!("{dir}/stats-server.yaml");
    b.lametun(Side::Server, "first", &["--config", &config])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.log("first").contains("serving metrics") {
        assert!(Instant::now() < deadline, "{}", b.log("first"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another device, another UDP port, the same metrics port.
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name: tun0", "name: tun1")
        .replace("port: 1234", "port: 4321");
    let second = b.dir().join("second.yaml");
    std::fs::write(&second, yaml).unwrap();
    b.lametun(
        Side::Server,
        "second",
        &["--config", second.to_str().unwrap()],
    )
    .unwrap();
    let code = b
        .wait_exit("second", Duration::from_secs(5))
        .expect("the second lametun kept running");
    assert_eq!(code, Some(2), "{}", b.log("second"));
    let log = b.log("second");
    assert!(
        log.contains("pipeline[0] (stats): listen: cannot listen on 127.0.0.1:9100")
            && log.contains("the port is in use"),
        "{log}"
    );
}

#[test]
fn lametun_stats_shows_which_filter_rule_dropped_what() {
    let Some(mut b) = bench("sfil") else { return };
    // The shipped filtered server, with a stats stage below the filter (so inbound it
    // sees packets before the filter decides).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut yaml = std::fs::read_to_string(format!("{dir}/filtered-server.yaml")).unwrap();
    yaml.push_str("  - type: stats\n    interval: off\n    listen: 127.0.0.1:9100\n");
    let server = b.dir().join("server.yaml");
    std::fs::write(&server, yaml).unwrap();
    b.lametun(
        Side::Server,
        "server",
        &["--config", server.to_str().unwrap()],
    )
    .unwrap();
    b.lametun(
        Side::Client,
        "client",
        // The plain client: the filtered one would refuse SSH on its own side already.
        &["--config", &format!("{dir}/plain-client.yaml")],
    )
    .unwrap();
    wait_up(&b);

    // SSH is refused by rule 1 (the SYN and its retransmissions are dropped).
    let ssh = lametun::testnet::addr(SERVER_TUN, 22);
    assert!(
        !b.tcp_connects(Side::Client, ssh, Duration::from_millis(1500))
            .unwrap()
    );
    let r = quiet(&b);

    let filter = r.stages.iter().find(|s| s.stage == "filter").unwrap();
    let filtered = filter
        .inbound
        .drops
        .iter()
        .find(|(reason, _)| reason == "filtered")
        .map_or(0, |d| d.1);
    assert!(filtered >= 1, "{r:#?}");
    let rule = |name: &str, direction: &str| {
        r.stage_metrics
            .iter()
            .find(|m| {
                m.stage == "filter"
                    && m.name == "filter_rule_matches_total"
                    && m.labels.iter().any(|(k, v)| k == "name" && v == name)
                    && m.labels
                        .iter()
                        .any(|(k, v)| k == "direction" && v == direction)
            })
            .unwrap_or_else(|| panic!("no {name}/{direction} rule metric in {r:#?}"))
            .value as u64
    };
    // Only the SSH rule denied anything, so it accounts for every filtered drop.
    assert_eq!(rule("no-ssh", "inbound"), filtered);
    assert!(rule("icmp", "inbound") >= 1, "the pings of wait_up");
    // The stats stage, below the filter, saw the dropped SYNs arrive.
    let stats = &r.points[0];
    assert!(stats.inbound.packets >= r.tunnel.tun_tx_packets + filtered);

    let table = report::render(&r, None, URL);
    let line = table
        .lines()
        .find(|l| l.contains("filter_rule_matches_total") && l.contains("name=no-ssh"))
        .unwrap_or_else(|| panic!("no SSH rule line in:\n{table}"));
    assert!(
        line.contains("action=deny") && line.contains("direction=inbound"),
        "{line}"
    );
    assert_eq!(
        line.split_whitespace().nth(6),
        Some(filtered.to_string().as_str()),
        "{line}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("filter") && l.contains(&format!("filtered {filtered}"))),
        "{table}"
    );
}
