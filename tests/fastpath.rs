//! The fast paths, checked rather than assumed: coalesced TUN writes on a real device
//! (also from slots with no spare room), datagrams of mixed sizes (GSO grouping) across
//! real tunnels in both modes, with and without offloads, over IPv4 and IPv6, and the
//! start-up line that says which fast paths are on.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use lametun::driver::TunWriter;
use lametun::testnet::{self, Bench, SERVER_TUN, SERVER_TUN6, Side};
use lametun_core::testing::packets;

use crate::encrypted;
use crate::netns::{
    bench, count_in, few_allocations_while_forwarding, io_counted_per_thread, port_on_queue,
    start_pair, summary, tcp_intact, tcp_intact_from, thread_io,
};

/// One datagram of the mixed-size streams: its index, then a pattern of its own.
fn datagram(i: u32, size: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..size)
        .map(|k| (k as u32 ^ i.wrapping_mul(31)) as u8)
        .collect();
    d[..4].copy_from_slice(&i.to_be_bytes());
    d
}

/// Sizes that make every shape of GSO run: full-size trains, a short tail, single small
/// ones between big ones, runs of equal small ones.
fn mixed_sizes(max: usize) -> impl Iterator<Item = usize> {
    [
        max,
        max,
        max,
        max - 1,
        64,
        64,
        64,
        4,
        max,
        500,
        500,
        1000,
        max,
        4,
        max,
        max,
    ]
    .into_iter()
    .cycle()
}

/// Sends `count` datagrams of mixed sizes (up to `max`) in bursts from the client to
/// `to` across the tunnel, and checks that every one arrived once and intact.
fn mixed_sizes_arrive_intact(b: &Bench, to: SocketAddr, max: usize, count: u32) {
    let sizes: Vec<usize> = mixed_sizes(max).take(count as usize).collect();
    let count = sizes.len();
    let receiver = {
        let ns = b.ns(Side::Server);
        std::thread::spawn(move || -> Vec<Option<Vec<u8>>> {
            testnet::enter_netns(&ns).unwrap();
            let sock =
                socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::DGRAM, None)
                    .unwrap();
            sock.set_recv_buffer_size(8 << 20).unwrap();
            sock.bind(&to.into()).unwrap();
            let sock: UdpSocket = sock.into();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut got: Vec<Option<Vec<u8>>> = vec![None; count];
            let mut buf = vec![0u8; 65_536];
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut quiet = 0;
            while Instant::now() < deadline && got.iter().any(Option::is_none) && quiet < 15 {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 4 => {
                        quiet = 0;
                        let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        assert!(got[i].is_none(), "datagram {i} arrived twice");
                        got[i] = Some(buf[..n].to_vec());
                    }
                    Ok(_) => panic!("a runt datagram arrived"),
                    Err(_) => quiet += 1,
                }
            }
            got
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let to_send = sizes.clone();
    b.in_netns(Side::Client, move || {
        let bind: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(bind).unwrap();
        for (burst, chunk) in to_send.chunks(48).enumerate() {
            for (k, &size) in chunk.iter().enumerate() {
                let i = (burst * 48 + k) as u32;
                sock.send_to(&datagram(i, size), to).unwrap();
            }
            // Paced bursts: each one reaches the tunnel as a batch, without overrunning
            // the receiver.
            std::thread::sleep(Duration::from_millis(3));
        }
    })
    .unwrap();
    let got = receiver.join().expect("receiver");
    let mut missing = Vec::new();
    for (i, (d, &size)) in got.iter().zip(&sizes).enumerate() {
        match d {
            None => missing.push(i),
            Some(d) => assert_eq!(
                d,
                &datagram(i as u32, size),
                "datagram {i} ({size} bytes) changed"
            ),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {count} datagrams did not arrive: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}

/// The largest UDP payload that fits the TUN MTU in one packet.
fn max_payload(b: &Bench, v6: bool) -> usize {
    let out = b
        .exec(Side::Client, &["cat", "/sys/class/net/tun0/mtu"])
        .unwrap();
    let mtu: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    mtu - if v6 { 48 } else { 28 }
}

#[test]
fn mixed_sizes_and_a_tcp_transfer_cross_a_two_queue_plain_tunnel_with_offloads_on() {
    let Some(mut b) = bench("mix") else { return };
    // Two TUN queues at each end (the default on a 2-CPU machine is one).
    start_pair(&mut b, &["--workers", "2"], &["--workers", "2"]);
    let log = b.log("client");
    assert!(
        log.contains("tun_offload=true") && log.contains("udp_gso=true"),
        "the fast paths should be on here: {log}"
    );
    assert!(log.contains("queues=2"), "{log}");
    let max = max_payload(&b, false);
    mixed_sizes_arrive_intact(&b, testnet::addr(SERVER_TUN, 6001), max, 2000);
    let max = max_payload(&b, true);
    mixed_sizes_arrive_intact(&b, testnet::addr(SERVER_TUN6, 6002), max, 1000);
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 6006), 50 << 20);
    // The buffers are reused: no heap allocation per packet on the hot path.
    for end in ["server", "client"] {
        assert_eq!(b.stop(end), Some(0));
        few_allocations_while_forwarding(&b, end, 30_000);
    }
}

#[test]
fn mixed_sizes_cross_the_plain_tunnel_intact_with_offloads_off() {
    let Some(mut b) = bench("mixoff") else { return };
    start_pair(&mut b, &["--no-offload"], &["--no-offload"]);
    let log = b.log("client");
    assert!(
        log.contains("tun_offload=false") && log.contains("udp_gso=false"),
        "{log}"
    );
    let max = max_payload(&b, false);
    mixed_sizes_arrive_intact(&b, testnet::addr(SERVER_TUN, 6003), max, 1000);
}

#[test]
fn mixed_sizes_and_a_tcp_transfer_cross_the_encrypted_tunnel_intact() {
    let Some(mut b) = bench("mixenc") else { return };
    encrypted::start_pair(&mut b);
    let max = max_payload(&b, false);
    mixed_sizes_arrive_intact(&b, testnet::addr(SERVER_TUN, 6004), max, 2000);
    tcp_intact(&b, Side::Server, testnet::addr(SERVER_TUN, 6005), 50 << 20);
    for end in ["server", "client"] {
        assert_eq!(b.stop(end), Some(0));
        few_allocations_while_forwarding(&b, end, 30_000);
    }
}

/// On an idle tunnel the server's inbound thread sends the echo replies itself: the
/// kernel queues each reply in the TUN queue inside the write of the request, and the
/// inbound thread reads it from there (it reads nothing else from the TUN, so its read
/// calls and bytes, which the kernel counts per thread, are the replies it took) rather
/// than leave it to the outbound thread, which must be woken and scheduled first.
/// Without this path the inbound thread makes no read at all.
#[test]
fn the_inbound_thread_sends_the_echo_replies_of_an_idle_tunnel_itself() {
    if !io_counted_per_thread() {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        // On one CPU the outbound thread, woken by the reply, may preempt the writer.
        eprintln!("skipped: this test needs two CPUs");
        return;
    }
    let Some(mut b) = bench("answer") else { return };
    // One queue, so that where replies are queued does not depend on flow steering.
    let (server, _) = start_pair(&mut b, &["--workers", "1"], &["--workers", "1"]);
    let before = thread_io(server, "lametun-in0");
    let pings = 20;
    let replies = b
        .ping(Side::Client, SERVER_TUN, pings, Some(100), false)
        .unwrap();
    assert_eq!(replies, pings);
    let after = thread_io(server, "lametun-in0");
    let (calls, bytes) = (
        after.read_calls - before.read_calls,
        after.read - before.read,
    );
    // The outbound thread, which the reply wakes too, may be first now and then: the
    // inbound thread then leaves the reply to it, or finds the queue empty.
    assert!(
        calls >= u64::from(pings / 4),
        "{calls} TUN reads by the inbound thread for {pings} pings"
    );
    // A reply is 128 bytes (IP 20, ICMP 8, payload 100), after the virtio-net header.
    assert!(
        bytes >= u64::from(pings / 4) * 128,
        "{bytes} bytes read by the inbound thread for {pings} pings"
    );
}

/// With two workers, the flows of a busy tunnel spread over both workers of each end:
/// plaintext.
///
/// Client side, the outbound threads: the kernel queues a flow's outgoing packets on
/// the queue the flow's packets were last written on; the inbound threads pick that
/// queue per flow (`flow_queue`), so a flow that has received through the tunnel (every
/// TCP connection: its SYN-ACK, its ACKs) is read by the outbound thread of its queue.
/// When every write went to queue 0, the second thread read almost nothing.
///
/// Server side, the inbound threads: client outbound thread *i* sends from its own
/// socket (`--sockets per-worker`), whose port is *i* mod 2; the server's sockets share
/// the tunnel port and the kernel hands each datagram to the one of its source port mod
/// 2, so each server inbound thread receives one client socket's flows. With one socket
/// per end, one server thread received everything.
///
/// Sixteen connections send 32 MiB each from the client, from source ports chosen so
/// that `flow_queue` puts eight on each queue; each client outbound thread must read,
/// and each server inbound thread write to the TUN, over a third of what both did.
#[test]
fn the_flows_of_a_two_worker_tunnel_spread_over_both_workers_of_each_end() {
    if !io_counted_per_thread() {
        return;
    }
    let Some(mut b) = bench("spread") else { return };
    let pids = start_pair(
        &mut b,
        &["--workers", "2"],
        &["--workers", "2", "--sockets", "per-worker"],
    );
    assert!(b.log("client").contains("sockets=2"), "{}", b.log("client"));
    assert!(b.log("server").contains("sockets=2"), "{}", b.log("server"));
    flows_spread(&b, pids);
}

/// [`the_flows_of_a_two_worker_tunnel_spread_over_both_workers_of_each_end`], encrypted:
/// the two server threads share one replay window, each taking the counters of its
/// client socket, and neither falls so far behind the other that the window refuses
/// its datagrams as too old (with a window of 4032 counters, 1.6-4.3% were).
#[test]
fn the_flows_of_a_two_worker_encrypted_tunnel_spread_and_none_is_refused_as_replayed() {
    if !io_counted_per_thread() {
        return;
    }
    let Some(mut b) = bench("spreadenc") else {
        return;
    };
    let (_, server, client) =
        encrypted::start_pair_with(&mut b, &["--workers", "2", "--sockets", "per-worker"]);
    flows_spread(&b, (server, client));
    assert_eq!(b.stop("server"), Some(0));
    let summary = summary(&b, "server");
    // At most one datagram in a thousand (with the 4032 window: 16 to 43).
    let replayed = count_in(&summary, "chacha20poly1305 in replayed");
    let received = count_in(&summary, "udp rx");
    assert!(received > 0 && replayed * 1000 <= received, "{summary}");
}

/// A client with two sockets and a server with one: the server's one path hears both
/// ports, datagram after datagram, and keeps answering one while it is active. Moving
/// with every datagram, as the Go lametun does, would spread the replies of a flow over
/// both client sockets, where two threads receive them (and log and count a change per
/// datagram). It may move when the port it answers goes quiet: a few times at most.
#[test]
fn a_server_with_one_socket_keeps_to_one_port_of_a_client_with_two() {
    let Some(mut b) = bench("fewer") else { return };
    start_pair(
        &mut b,
        &["--workers", "1"],
        &["--workers", "2", "--sockets", "per-worker"],
    );
    assert!(b.log("server").contains("sockets=1"), "{}", b.log("server"));
    assert!(b.log("client").contains("sockets=2"), "{}", b.log("client"));
    transfer_all(&b, &sixteen_flows(), 4 << 20);
    assert_eq!(b.stop("server"), Some(0));
    let summary = summary(&b, "server");
    // With the Go lametun's rule: one per datagram from the other port (186 here).
    let changes = count_in(&summary, "peer address changes");
    assert!((1..=10).contains(&changes), "{summary}");
}

/// Sixteen flows, eight on each of two queues: (server port, client port).
fn sixteen_flows() -> Vec<(u16, u16)> {
    let mut from = 42_000;
    (0..16u16)
        .map(|i| {
            let server = 6100 + i;
            let queue = usize::from(i % 2);
            let port = port_on_queue((testnet::CLIENT_TUN, SERVER_TUN, server), queue, 2, from);
            from = port + 1;
            (server, port)
        })
        .collect()
}

/// A TCP transfer of `each` bytes from the client for each of `flows`, all at once,
/// each checked intact.
fn transfer_all(b: &Bench, flows: &[(u16, u16)], each: usize) {
    std::thread::scope(|scope| {
        let transfers: Vec<_> = flows
            .iter()
            .map(|&(server, port)| {
                scope.spawn(move || {
                    let to = testnet::addr(SERVER_TUN, server);
                    tcp_intact_from(b, Side::Server, to, Some(port), each)
                })
            })
            .collect();
        for t in transfers {
            t.join().expect("a transfer failed");
        }
    });
}

/// Sixteen TCP transfers from the client of `(server, client)` (PIDs), checked intact,
/// and how their bytes spread over the threads (see the tests above).
fn flows_spread(b: &Bench, (server_pid, client_pid): (u32, u32)) {
    let flows = sixteen_flows();
    // Client: bytes read from the TUN by each outbound thread, and by the inbound
    // threads (the answers they send themselves). Server: bytes each inbound thread
    // wrote to the TUN.
    let client = ["lametun-out0", "lametun-out1", "lametun-in0", "lametun-in1"];
    let server = ["lametun-in0", "lametun-in1"];
    let io = || {
        (
            client.map(|t| thread_io(client_pid, t).read),
            server.map(|t| thread_io(server_pid, t).written),
        )
    };
    let before = io();
    let each = 32 << 20;
    transfer_all(b, &flows, each);
    let after = io();
    let read: [u64; 4] = std::array::from_fn(|t| after.0[t] - before.0[t]);
    let written: [u64; 2] = std::array::from_fn(|t| after.1[t] - before.1[t]);
    eprintln!(
        "16 flows: client TUN reads {read:?} ({client:?}), server TUN writes {written:?} ({server:?}) bytes"
    );
    let sent = 16 * each as u64;
    assert!(
        read.iter().sum::<u64>() >= sent,
        "{read:?} bytes read for 16 x {each}"
    );
    assert!(
        written.iter().sum::<u64>() >= sent,
        "{written:?} bytes written for 16 x {each}"
    );
    let outbound = read[0] + read[1];
    for (q, n) in read[..2].iter().enumerate() {
        assert!(
            *n >= outbound / 3,
            "client outbound thread {q} read {n} of {outbound} bytes: the flows did not spread"
        );
    }
    let inbound = written[0] + written[1];
    for (q, n) in written.iter().enumerate() {
        assert!(
            *n >= inbound / 3,
            "server inbound thread {q} wrote {n} of {inbound} bytes: the sockets did not spread"
        );
    }
}

/// UDP datagrams of one flow written to a real TUN device through [`TunWriter`]: all
/// arrive, in order, intact; with USO on they are written as one superpacket, also when
/// every slot is exactly one datagram long, or when the datagrams lie back to back in a
/// receive buffer and the chain ran on them there (the headers come from the writer,
/// the payloads from where the packets are).
#[test]
fn coalesced_tun_writes_reach_a_socket_intact_even_from_slots_without_spare_room() {
    let Some(b) = bench("gro") else { return };
    let ns = b.ns(Side::Server);
    let report = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                testnet::enter_netns(&ns).unwrap();
                let tun = lametun::device::open("ltgro0", 1, true).expect("open TUN");
                let ip = |args: &[&str]| {
                    let st = Command::new("ip").args(args).status().unwrap();
                    assert!(st.success(), "ip {args:?}");
                };
                ip(&["addr", "add", "10.77.0.1/24", "dev", "ltgro0"]);
                ip(&["link", "set", "ltgro0", "up"]);
                let sock = UdpSocket::bind("10.77.0.1:7000").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let rx = || {
                    b.link_counter(Side::Server, "ltgro0", "rx_packets")
                        .unwrap()
                };
                let mut report = Vec::new();
                // `push`ed into slots of an MTU; received (back to back in a receive
                // buffer, as a GRO train) and copied into slots of exactly one full
                // datagram; received, with the chain run on them in place.
                for (round, spare_room, received, in_place) in [
                    (0u8, true, false, false),
                    (1, false, true, false),
                    (2, false, true, true),
                ] {
                    // 40 datagrams of 1000 bytes and a short last one, as a GRO train.
                    let payloads: Vec<Vec<u8>> = (0..41u8)
                        .map(|i| vec![round * 100 + i; if i == 40 { 300 } else { 1000 }])
                        .collect();
                    let pkts: Vec<Vec<u8>> = payloads
                        .iter()
                        .map(|p| packets::udp_v4([10, 77, 0, 2], [10, 77, 0, 1], 9000, 7000, p))
                        .collect();
                    let room = if spare_room { 1500 } else { pkts[0].len() };
                    let mut out = TunWriter::new(&tun.queues, room, (1, 65_536), in_place);
                    if received {
                        // Each datagram with a 4-byte header in front that the "chain"
                        // strips (as the packet-information header is), so the packets
                        // do not start where their datagrams do.
                        let train: Vec<u8> = pkts
                            .iter()
                            .flat_map(|p| [0xee; 4].iter().chain(p.iter()))
                            .copied()
                            .collect();
                        out.rx_mut()[0][..train.len()].copy_from_slice(&train);
                        let mut at = 0;
                        for p in &pkts {
                            out.push_received(0, at..at + 4 + p.len(), |pkt| {
                                pkt.strip_front(4).is_some()
                            });
                            at += 4 + p.len();
                        }
                    } else {
                        for p in &pkts {
                            out.push(p, |_| true);
                        }
                    }
                    let before = rx();
                    let r = out.flush().expect("write");
                    let writes = rx() - before;
                    assert_eq!((r.packets, r.lost), (41, 0));
                    let mut buf = [0u8; 2000];
                    for (i, want) in payloads.iter().enumerate() {
                        let n = sock
                            .recv(&mut buf)
                            .unwrap_or_else(|e| panic!("datagram {i}: {e}"));
                        assert_eq!(&buf[..n], &want[..], "datagram {i} of round {round}");
                    }
                    report.push((writes, r.writes, tun.udp_offload));
                }
                report
            })
            .join()
            .expect("namespace thread")
    });
    for (writes, planned, uso) in report {
        eprintln!("41 datagrams: {writes} writes (USO {uso})");
        assert_eq!(
            writes, planned as u64,
            "the device counts one packet per write"
        );
        assert_eq!(writes, if uso { 1 } else { 41 });
    }
}
