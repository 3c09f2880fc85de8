//! The custom binary, run for real: its command line knows the `pcap` stage, its config
//! files load, and a tunnel of two `lametun-pcap` processes in network namespaces
//! passes traffic and captures it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use lametun::testnet::{
    self, Bench, CLIENT_TUN, CLIENT_TUN6, SERVER_TUN, SERVER_TUN6, SERVER_UL, Side,
};
use lametun_pcap::format::{self, Capture, LINKTYPE_RAW};

// The linker pitfall again: an integration test is a crate of its own, and rustc links
// `lametun_pcap` into it only because of this line (the `format` import above would do
// too; this one says why it must stay). Without it `registry::names()` below would
// lack "pcap".
use lametun_pcap as _;

/// The custom binary: Cargo builds it for this package's integration tests.
const BINARY: &str = env!("CARGO_BIN_EXE_lametun-pcap");

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the custom binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lametun-pcap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn this_test_binary_links_the_stage_too() {
    let names = lametun_core::registry::names();
    assert!(
        names.contains(&"pcap"),
        "pcap is not registered in {names:?}: is `use lametun_pcap as _;` still at the top \
         of this file?"
    );
    // The bundled stages come through the `lametun` library, which names them.
    assert!(names.contains(&"passthrough"), "{names:?}");
    assert!(lametun_core::registry::duplicates().is_empty());
}

#[test]
fn stages_lists_pcap_beside_the_bundled_stages() {
    let o = run(&["stages"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for name in ["passthrough", "pcap"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing from:\n{out}"
        );
    }
    assert!(out.contains("pcap file"), "{out}");
}

#[test]
fn check_config_accepts_the_shipped_configs_and_creates_no_capture() {
    let dir = Scratch::new("check");
    for (file, capture) in [
        ("pcap-server.yaml", "server.pcap"),
        ("pcap-client.yaml", "client.pcap"),
    ] {
        // A copy, so that the capture path (relative to the file) points into `dir`.
        let copy = dir.0.join(file);
        std::fs::copy(configs_dir().join(file), &copy).unwrap();
        let o = run(&["check-config", copy.to_str().unwrap()]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{file}:\n{out}{}", stderr(&o));
        assert!(out.contains("[0] pcap"), "{out}");
        assert!(
            out.contains(&format!("to {}", dir.0.join(capture).display())),
            "{out}"
        );
        assert!(out.ends_with("ok\n"), "{out}");
        // check-config is a dry run: a tunnel running with this file keeps its capture.
        assert!(
            !dir.0.join(capture).exists(),
            "check-config created {capture}"
        );
    }
}

#[test]
fn an_unknown_type_names_the_registered_ones_and_the_fix() {
    let dir = Scratch::new("unknown");
    let bad = dir.0.join("bad.yaml");
    std::fs::write(&bad, "peer: {listen: true}\npipeline:\n  - type: pcapng\n").unwrap();
    let o = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    let prefix = format!(
        "{}:3: pipeline[0].type: unknown stage type \"pcapng\"; this binary knows: ",
        bad.display()
    );
    let known = e
        .split_once(&prefix)
        .and_then(|(_, rest)| rest.split_once(". "))
        .unwrap_or_else(|| panic!("want: {prefix}…\ngot:\n{e}"));
    let names: Vec<&str> = known.0.split(", ").collect();
    // The list is the registry of this binary: the bundled stages, and pcap.
    assert!(
        names.contains(&"pcap") && names.contains(&"passthrough"),
        "{e}"
    );
    assert!(
        known
            .1
            .starts_with("A stage from another crate needs a binary that links it"),
        "{e}"
    );
}

#[test]
fn every_mistake_in_the_stage_config_is_reported_with_its_line() {
    let dir = Scratch::new("mistakes");
    let bad = dir.0.join("bad.yaml");
    std::fs::write(
        &bad,
        "peer: {listen: true}\n\
         pipeline:\n\
         \x20 - type: pcap\n\
         \x20   path: nowhere/x.pcap\n\
         \x20   snaplen: 0\n\
         \x20   max_size: huge\n\
         \x20 - type: pcap\n\
         \x20   path: y.pcap\n\
         \x20   snaplength: 100\n",
    )
    .unwrap();
    for args in [
        vec!["check-config", bad.to_str().unwrap()],
        vec!["--config", bad.to_str().unwrap()],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        let f = bad.display();
        for want in [
            format!("{f}:4: pipeline[0] (pcap): path: the directory "),
            format!("{f}:5: pipeline[0] (pcap): snaplen: 0 is not from 1 to 262144"),
            format!("{f}:6: pipeline[0] (pcap): max_size: \"huge\" is not a size"),
            format!("{f}:9: pipeline[1] (pcap): snaplength: unknown field `snaplength`"),
        ] {
            assert!(e.contains(&want), "want: {want}\ngot:\n{e}");
        }
        assert!(!dir.0.join("y.pcap").exists(), "a capture was started");
    }
}

// ===== a real tunnel in network namespaces =====

/// A bench running the custom binary, or `None` (after saying why) where namespaces or
/// TUN are not available. With `LAMETUN_REQUIRE_NETNS=1` (CI) that fails instead.
fn bench(tag: &str) -> Option<Bench> {
    if let Some(why) = testnet::unavailable() {
        assert!(
            std::env::var("LAMETUN_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LAMETUN_REQUIRE_NETNS=1 but this machine cannot run the namespace tests: {why}"
        );
        eprintln!("skipped: this test {why}");
        return None;
    }
    Some(Bench::new(tag, BINARY).expect("creating the namespace bench"))
}

/// An ICMP or ICMPv6 echo in a captured packet: (source, destination, is_request, id,
/// sequence).
type Echo = (String, String, bool, u16, u16);

fn echo_of(p: &[u8]) -> Option<Echo> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]));
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if *p.get(9)? != 1 || p.len() < ihl + 8 {
                return None;
            }
            let addr = |at: usize| Ipv4Addr::from(<[u8; 4]>::try_from(&p[at..at + 4]).unwrap());
            let kind = match p[ihl] {
                8 => true,
                0 => false,
                _ => return None,
            };
            Some((
                addr(12).to_string(),
                addr(16).to_string(),
                kind,
                be16(ihl + 4)?,
                be16(ihl + 6)?,
            ))
        }
        6 => {
            if *p.get(6)? != 58 || p.len() < 48 {
                return None;
            }
            let addr = |at: usize| {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&p[at..at + 16]).unwrap())
            };
            let kind = match p[40] {
                128 => true,
                129 => false,
                _ => return None,
            };
            Some((
                addr(8).to_string(),
                addr(24).to_string(),
                kind,
                be16(44)?,
                be16(46)?,
            ))
        }
        _ => None,
    }
}

fn echoes(c: &Capture, src: &str, dst: &str, request: bool) -> Vec<(u16, u16)> {
    c.records
        .iter()
        .filter_map(|r| echo_of(&r.data))
        .filter(|e| e.0 == src && e.1 == dst && e.2 == request)
        .map(|e| (e.3, e.4))
        .collect()
}

/// Whether a captured (possibly cut) IPv4 packet is a TCP segment with exactly `flags`
/// (ECN's ECE and CWR aside) from port `sport` to port `dport`.
fn is_tcp(p: &[u8], sport: Option<u16>, dport: Option<u16>, flags: u8) -> bool {
    if p.len() < 40 || p[0] >> 4 != 4 || p[9] != 6 {
        return false;
    }
    let t = &p[usize::from(p[0] & 0x0f) * 4..];
    let port = |at: usize| u16::from_be_bytes([t[at], t[at + 1]]);
    sport.is_none_or(|s| port(0) == s)
        && dport.is_none_or(|d| port(2) == d)
        && t[13] & 0x3f == flags
}

/// The length an IP packet says it has (the captured bytes may be fewer).
fn ip_len(p: &[u8]) -> usize {
    match p[0] >> 4 {
        4 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        v => panic!("IP version {v} in a capture"),
    }
}

fn read_capture(path: &Path) -> Capture {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn two_custom_binaries_run_a_tunnel_and_capture_what_crosses_it() {
    let Some(mut b) = bench("pcap") else { return };
    // The shipped configs, copied into the bench's directory: their relative capture
    // paths then land there too, and the bench removes everything at the end.
    let config = |end: &str| {
        let copy = b.dir().join(format!("{end}.yaml"));
        std::fs::copy(configs_dir().join(format!("pcap-{end}.yaml")), &copy).unwrap();
        copy.to_str().unwrap().to_owned()
    };
    let (server_yaml, client_yaml) = (config("server"), config("client"));
    let started = SystemTime::now();
    b.lametun(Side::Server, "server", &["--config", &server_yaml])
        .unwrap();
    b.lametun(Side::Client, "client", &["--config", &client_yaml])
        .unwrap();
    assert!(
        b.wait_for_ping(Side::Client, SERVER_TUN, Duration::from_secs(10)),
        "the tunnel did not come up\nserver:\n{}\nclient:\n{}",
        b.log("server"),
        b.log("client")
    );
    assert_eq!(b.ping(Side::Client, SERVER_TUN, 3, None, false).unwrap(), 3);
    assert_eq!(b.ping(Side::Server, CLIENT_TUN, 2, None, false).unwrap(), 2);
    assert!(
        b.wait_for_ping(Side::Client, SERVER_TUN6, Duration::from_secs(5)),
        "no IPv6 ping"
    );
    let t = b
        .tcp_transfer(
            Side::Server,
            testnet::addr(SERVER_TUN, 5101),
            Side::Client,
            4 << 20,
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(t.intact(), "the TCP transfer arrived damaged");
    // SIGTERM: the pipeline is dropped, the writer thread drains its queue and flushes.
    assert_eq!(b.stop("client"), Some(0), "{}", b.log("client"));
    assert_eq!(b.stop("server"), Some(0), "{}", b.log("server"));
    let finished = SystemTime::now();

    let server = read_capture(&b.dir().join("server.pcap"));
    let client = read_capture(&b.dir().join("client.pcap"));
    assert_eq!(
        (server.linktype, client.linktype),
        (LINKTYPE_RAW, LINKTYPE_RAW)
    );
    assert_eq!((server.snaplen, client.snaplen), (65_535, 128));

    // Every record is an IP packet, stamped during the run; the server keeps whole
    // packets, the client (snaplen 128) their first 128 bytes.
    let window = (
        started.duration_since(SystemTime::UNIX_EPOCH).unwrap() - Duration::from_secs(1),
        finished.duration_since(SystemTime::UNIX_EPOCH).unwrap() + Duration::from_secs(1),
    );
    for (name, c) in [("server", &server), ("client", &client)] {
        for r in &c.records {
            assert_eq!(
                ip_len(&r.data) as u32,
                r.orig_len,
                "{name}: a record's length"
            );
            assert_eq!(
                r.data.len(),
                (r.orig_len as usize).min(c.snaplen as usize),
                "{name}"
            );
            assert!(
                (window.0..=window.1).contains(&r.ts),
                "{name}: timestamp {:?} outside the run {window:?}",
                r.ts
            );
        }
    }

    // The client's pings: each end recorded the requests and the matching replies.
    for (name, c) in [("client", &client), ("server", &server)] {
        let requests = echoes(c, CLIENT_TUN, SERVER_TUN, true);
        let replies = echoes(c, SERVER_TUN, CLIENT_TUN, false);
        assert!(replies.len() >= 3, "{name}: {} replies", replies.len());
        for reply in &replies {
            assert!(
                requests.contains(reply),
                "{name}: a reply {reply:?} without request"
            );
        }
    }
    // The server's pings, the other way.
    for (name, c) in [("client", &client), ("server", &server)] {
        let requests = echoes(c, SERVER_TUN, CLIENT_TUN, true);
        let replies = echoes(c, CLIENT_TUN, SERVER_TUN, false);
        assert_eq!(requests.len(), 2, "{name}");
        assert_eq!(replies, requests, "{name}");
    }
    // IPv6 inside the tunnel, in the same file (LINKTYPE_RAW takes both versions).
    for c in [&client, &server] {
        let replies = echoes(c, SERVER_TUN6, CLIENT_TUN6, false);
        assert!(!replies.is_empty());
        assert!(echoes(c, CLIENT_TUN6, SERVER_TUN6, true).contains(&replies[0]));
    }
    // The TCP handshake: the SYN out of the client, the SYN-ACK out of the server.
    assert!(
        client
            .records
            .iter()
            .any(|r| is_tcp(&r.data, None, Some(5101), 0x02))
    );
    assert!(
        server
            .records
            .iter()
            .any(|r| is_tcp(&r.data, None, Some(5101), 0x02))
    );
    assert!(
        server
            .records
            .iter()
            .any(|r| is_tcp(&r.data, Some(5101), None, 0x12))
    );
    assert!(
        client
            .records
            .iter()
            .any(|r| is_tcp(&r.data, Some(5101), None, 0x12))
    );

    // A real reader agrees (CI installs tcpdump; skipped where it is missing).
    match Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(b.dir().join("server.pcap"))
        .arg("icmp or icmp6")
        .output()
    {
        Ok(o) if o.status.success() => {
            let text = stdout(&o);
            for want in [
                format!("IP {CLIENT_TUN} > {SERVER_TUN}: ICMP echo request"),
                format!("IP {SERVER_TUN} > {CLIENT_TUN}: ICMP echo reply"),
                format!("IP6 {CLIENT_TUN6} > {SERVER_TUN6}: ICMP6, echo request"),
            ] {
                assert!(
                    text.contains(&want),
                    "tcpdump did not show {want:?}:\n{text}"
                );
            }
        }
        Ok(o) => panic!("tcpdump cannot read the capture: {}", stderr(&o)),
        Err(e) => eprintln!("tcpdump not run ({e}); the capture was checked by our parser only"),
    }
    // The bench's client reached the server at its underlay address: the config's.
    assert!(
        std::fs::read_to_string(&client_yaml)
            .unwrap()
            .contains(&format!("server: {SERVER_UL}"))
    );
}
