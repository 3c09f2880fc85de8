//! `pcap`: a lametun stage that writes the packets passing it to a pcap file, which
//! Wireshark and `tcpdump -r` open.
//!
//! ```yaml
//! pipeline:
//!   - type: pcap
//!     path: tunnel.pcap     # relative to the config file's directory
//!     direction: both       # or: outbound, inbound
//!     snaplen: 65535        # bytes kept of each packet
//!     max_packets: 100000   # optional: stop capturing after this many
//!     max_size: 100 MiB     # optional: stop before the file grows past this
//!     queue: 4096           # packets waiting for the writer thread at most
//! ```
//!
//! # Why a capture tap
//!
//! `tcpdump -i tun0` shows what the kernel hands the tunnel, and `tcpdump` on the
//! underlay shows finished datagrams. Neither shows what happens *inside* the chain.
//! A tap can stand anywhere in it: first in the list it records the inner packets
//! exactly as they leave and arrive (after decryption, after a filter had its say);
//! between two stages it shows what one stage hands the next, which is the tool a
//! stage author wants while debugging. It also works on hosts without tcpdump, and in
//! a namespace where nobody can attach one.
//!
//! # Where it sits, what it sees
//!
//! ```text
//!  TUN ──► [pcap] ► [filter] ► [chacha20poly1305] ──► UDP     outbound: top to bottom
//!  TUN ◄── [pcap] ◄ [filter] ◄ [chacha20poly1305] ◄── UDP     inbound: bottom to top
//! ```
//!
//! First in the list (as above), it records every inner packet both ways: what the
//! host sent into the tunnel and what the tunnel delivered to the host. The file uses
//! `LINKTYPE_RAW` (bare IPv4 and IPv6 packets), which is what the TUN end carries.
//! So it records only what looks like IP (version 4 or 6): below an encrypting stage
//! it would see ciphertext, and inbound it sees whatever anyone sent to the port
//! before the core's IP checks drop it. Such packets pass, uncaptured, and are counted
//! in `pcap_not_ip` (a warning is logged once). Empty packets (lametun's keepalives)
//! pass and are not recorded either: a record of zero bytes is no IP packet.
//!
//! # How it stays off the packet path
//!
//! A stage must never block: it runs on the threads that move every packet. So the
//! stage only copies a packet (at most `snaplen` bytes) into a bounded queue and
//! returns [`Verdict::Pass`]; a writer thread does the file IO (see `src/writer.rs`'s
//! comments). If the writer falls behind, the queue fills and packets are *not
//! captured* (counted in `pcap_queue_full`); they are never dropped from the tunnel.
//! Time comes from [`PacketMeta::now`], a monotonic instant, converted to wall-clock
//! time with one anchor taken at start-up, so the packet path reads no clock.
//!
//! # Linking
//!
//! The stage registers itself with [`lametun_core::register_stage!`]. A binary that
//! wants it must refer to this crate once (`use lametun_pcap as _;`), or the linker
//! leaves the crate, and the registration with it, out: see `src/main.rs`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod format;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lametun_core::{
    BuildContext, BuildError, Direction, Metric, MetricKind, PacketBuf, PacketMeta, Stage,
    StageConfig, Verdict,
};
use serde::Deserialize;

use crate::format::{MAX_SNAPLEN, Record};
use crate::writer::{Limits, Writer};

/// Which packets the tap records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// Both directions (the default).
    #[default]
    Both,
    /// Only packets on their way from the TUN device to the peer.
    Outbound,
    /// Only packets on their way from the peer to the TUN device.
    Inbound,
}

impl Capture {
    fn includes(self, direction: Direction) -> bool {
        match self {
            Self::Both => true,
            Self::Outbound => direction == Direction::Outbound,
            Self::Inbound => direction == Direction::Inbound,
        }
    }
}

/// A size in bytes: a number, or a string such as `100 MiB` or `5MB`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// A number of bytes.
    Bytes(u64),
    /// A number with a unit: B, kB, MB, GB (powers of 1000) or KiB, MiB, GiB (of 1024).
    Text(String),
}

impl ByteSize {
    /// The size in bytes, or why the text is not one.
    pub fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Self::Bytes(n) => return Ok(*n),
            Self::Text(t) => t.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let not_a_size = || format!("{text:?} is not a size such as 100 MiB or 5000000");
        if number.is_empty() {
            return Err(not_a_size());
        }
        let unit = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1_000,
            "mb" | "m" => 1_000_000,
            "gb" | "g" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?} (use B, kB, MB, GB, KiB, MiB or GiB)"
                ));
            }
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or_else(not_a_size)
    }
}

fn default_snaplen() -> u32 {
    65_535
}

fn default_queue() -> usize {
    4096
}

/// The config of `type: pcap`: the YAML keys of its pipeline entry.
///
/// `deny_unknown_fields` turns a misspelt key (`snaplength: 100`) into an error that
/// names it, instead of a setting silently ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcapConfig {
    /// The capture file, created or truncated at start-up. Relative paths are relative
    /// to the directory of the config file.
    pub path: PathBuf,
    /// Which packets to record.
    #[serde(default)]
    pub direction: Capture,
    /// Bytes kept of each packet (1 to 262144); the record still says how long the
    /// packet was.
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// Stop capturing after this many packets.
    #[serde(default)]
    pub max_packets: Option<u64>,
    /// Stop capturing before the file would grow past this size.
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// Packets waiting for the writer thread at most (1 to 1000000); more are not
    /// captured, and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl StageConfig for PcapConfig {
    const TYPE: &'static str = "pcap";
    const SUMMARY: &'static str =
        "write the packets passing this point of the chain to a pcap file (Wireshark, tcpdump -r)";
    const EXAMPLE: &'static str = "\
- type: pcap
  path: tunnel.pcap        # relative to the config file's directory
  direction: both          # or: outbound, inbound
  max_size: 100 MiB        # optional: stop capturing there
";
    type Stage = Pcap;

    fn build(self, cx: &BuildContext) -> Result<Pcap, BuildError> {
        // Check everything and report every problem at once, not one per attempt.
        let mut errors = BuildError::default();
        let path = cx.resolve_path(&self.path);
        if self.path.as_os_str().is_empty() {
            errors.push("path", "empty: name the capture file, e.g. tunnel.pcap");
        } else {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                errors.push(
                    "path",
                    format!("the directory {} does not exist", dir.display()),
                );
            }
            if path.is_dir() {
                errors.push("path", format!("{} is a directory", path.display()));
            }
        }
        if !(1..=MAX_SNAPLEN).contains(&self.snaplen) {
            errors.push(
                "snaplen",
                format!(
                    "{} is not from 1 to {MAX_SNAPLEN} (Wireshark's limit)",
                    self.snaplen
                ),
            );
        }
        if self.max_packets == Some(0) {
            errors.push(
                "max_packets",
                "0 would capture nothing; leave the key out for no limit",
            );
        }
        let min_size = (format::FILE_HEADER_LEN + format::RECORD_HEADER_LEN) as u64;
        let max_size = match self.max_size.as_ref().map(ByteSize::bytes) {
            None => None,
            Some(Ok(n)) if n >= min_size => Some(n),
            Some(Ok(n)) => {
                errors.push(
                    "max_size",
                    format!("{n} bytes holds no packet (at least {min_size})"),
                );
                None
            }
            Some(Err(e)) => {
                errors.push("max_size", e);
                None
            }
        };
        if !(1..=1_000_000).contains(&self.queue) {
            errors.push("queue", format!("{} is not from 1 to 1000000", self.queue));
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // `lametun check-config` builds the chain only to check it, maybe while a
        // tunnel runs with the same file: then create nothing (the capture of the
        // running tunnel would be truncated).
        let writer = if cx.dry_run() {
            None
        } else {
            let file = std::fs::File::create(&path).map_err(|e| {
                BuildError::field("path", format!("cannot create {}: {e}", path.display()))
            })?;
            let limits = Limits {
                packets: self.max_packets,
                bytes: max_size,
            };
            let writer = Writer::start(file, path.clone(), self.snaplen, limits, self.queue, None)
                .map_err(|e| {
                    BuildError::field("path", format!("cannot write {}: {e}", path.display()))
                })?;
            Some(writer)
        };
        Ok(Pcap {
            direction: self.direction,
            snaplen: self.snaplen as usize,
            clock: WallClock::now(),
            path,
            writer,
            limits: (self.max_packets, max_size),
            not_ip: AtomicU64::new(0),
            warned_not_ip: AtomicBool::new(false),
        })
    }
}

lametun_core::register_stage!(PcapConfig);

/// Converts the monotonic instants the pipeline hands stages into wall-clock time for
/// pcap timestamps, from one reading of both clocks at start-up.
///
/// Stages never read the clock on the packet path: time arrives as an argument
/// ([`PacketMeta::now`]), which keeps them testable (a test passes any instant it
/// likes). If the system clock is stepped while the tunnel runs, timestamps keep
/// counting from the start-up reading, which is what a capture wants: no jumps.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    instant: Instant,
    since_epoch: Duration,
}

impl WallClock {
    /// Reads both clocks now (at start-up, not per packet).
    pub fn now() -> Self {
        Self::anchored(
            Instant::now(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// A clock on which `instant` is `since_epoch` after 1970-01-01 UTC (for tests).
    pub fn anchored(instant: Instant, since_epoch: Duration) -> Self {
        Self {
            instant,
            since_epoch,
        }
    }

    /// The wall-clock time of `at`.
    pub fn at(&self, at: Instant) -> Duration {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.since_epoch + after,
            None => self
                .since_epoch
                .saturating_sub(self.instant.duration_since(at)),
        }
    }
}

/// The `pcap` stage: copies the packets passing it to the writer thread and lets them
/// pass, unchanged.
#[derive(Debug)]
pub struct Pcap {
    direction: Capture,
    snaplen: usize,
    clock: WallClock,
    path: PathBuf,
    /// `None` in a dry run (`lametun check-config`): nothing is written.
    writer: Option<Writer>,
    limits: (Option<u64>, Option<u64>),
    not_ip: AtomicU64,
    warned_not_ip: AtomicBool,
}

impl Pcap {
    /// The capture file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the packet for the writer thread, if this direction is recorded. Never
    /// blocks, never fails: the tunnel does not depend on the capture.
    fn tap(&self, pkt: &PacketBuf<'_>, meta: &PacketMeta, direction: Direction) {
        let Some(writer) = &self.writer else { return };
        // Keepalives are empty packets: they pass, but are no IP packet to record.
        if pkt.is_empty()
            || !self.direction.includes(direction)
            || writer.stats.stopped.load(Ordering::Relaxed)
        {
            return;
        }
        let data = pkt.as_slice();
        if !matches!(data[0] >> 4, 4 | 6) {
            self.not_ip.fetch_add(1, Ordering::Relaxed);
            // Once, not per packet: an attacker decides how many of these arrive.
            if !self.warned_not_ip.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "pcap: {}: a packet that is not IPv4 or IPv6 passed {direction} and is not                      captured (is the tap below an encrypting stage? inbound, it may be junk                      the core drops next); pcap_not_ip counts them",
                    self.path.display()
                );
            }
            return;
        }
        // One allocation per captured packet: cheap next to a syscall, and a tap is a
        // debugging tool. A pool of buffers returned by the writer would avoid it.
        writer.offer(Record {
            ts: self.clock.at(meta.now),
            orig_len: data.len() as u32,
            data: data[..data.len().min(self.snaplen)].to_vec(),
        });
    }
}

impl Stage for Pcap {
    // No `overhead`: the tap never changes a packet, so it keeps the default
    // `Overhead::NONE` and costs no MTU.

    /// Nor does it grow inbound packets: the chain may run where the datagrams landed.
    fn grows_inbound(&self) -> bool {
        false
    }

    fn outbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        self.tap(pkt, meta, Direction::Outbound);
        Verdict::Pass
    }

    fn inbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        self.tap(pkt, meta, Direction::Inbound);
        Verdict::Pass
    }

    fn describe(&self) -> String {
        let what = match self.direction {
            Capture::Both => "outbound and inbound packets",
            Capture::Outbound => "outbound packets",
            Capture::Inbound => "inbound packets",
        };
        let mut line = format!(
            "{what} to {} (snaplen {}",
            self.path.display(),
            self.snaplen
        );
        if let Some(n) = self.limits.0 {
            line.push_str(&format!(", at most {n} packets"));
        }
        if let Some(n) = self.limits.1 {
            line.push_str(&format!(", at most {n} bytes"));
        }
        line.push(')');
        line
    }

    fn metrics(&self, out: &mut Vec<Metric>) {
        let Some(writer) = &self.writer else { return };
        let s = &writer.stats;
        let metric = |name, help, kind, value: u64| Metric {
            name,
            help,
            kind,
            labels: Vec::new(),
            value: value as f64,
        };
        out.extend([
            metric(
                "pcap_packets_written",
                "packets written to the capture file",
                MetricKind::Counter,
                s.packets_written.load(Ordering::Relaxed),
            ),
            metric(
                "pcap_bytes_written",
                "bytes in the capture file, headers included",
                MetricKind::Counter,
                s.bytes_written.load(Ordering::Relaxed),
            ),
            metric(
                "pcap_queue_full",
                "packets not captured because the writer fell behind (they passed)",
                MetricKind::Counter,
                s.queue_full.load(Ordering::Relaxed),
            ),
            metric(
                "pcap_write_errors",
                "failed writes to the capture file (the capture stops at the first)",
                MetricKind::Counter,
                s.write_errors.load(Ordering::Relaxed),
            ),
            metric(
                "pcap_not_ip",
                "packets not captured because they are not IPv4 or IPv6 (they passed)",
                MetricKind::Counter,
                self.not_ip.load(Ordering::Relaxed),
            ),
            metric(
                "pcap_stopped",
                "1 once the capture stopped (a limit reached, or a write failed)",
                MetricKind::Gauge,
                u64::from(s.stopped.load(Ordering::Relaxed)),
            ),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lametun_core::testing::{Conformance, packets};
    use lametun_core::{TelemetryHandle, registry};

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("lametun-pcap-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// A build context whose config directory is this one: relative paths land here.
        fn cx(&self) -> BuildContext {
            BuildContext::new(Some(self.0.clone()), TelemetryHandle::default())
        }

        fn read(&self, file: &str) -> format::Capture {
            format::parse(&std::fs::read(self.0.join(file)).unwrap()).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn build(yaml: &str, cx: &BuildContext) -> Result<Box<dyn Stage>, BuildError> {
        registry::find("pcap")
            .expect("registered")
            .build_yaml(yaml, cx)
    }

    fn build_err(yaml: &str, cx: &BuildContext) -> BuildError {
        match build(yaml, cx) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e,
        }
    }

    fn meta(now: Instant) -> PacketMeta {
        PacketMeta::new(now, None)
    }

    #[test]
    fn conforms() {
        let dir = Scratch::new("conform");
        let cx = dir.cx();
        // Each end writes its own file: two writers must not share one.
        Conformance::from_yaml_pair_with("pcap", "path: a.pcap", "path: b.pcap", &cx).run_all();
        // A tiny snaplen, both limits, one direction, jumbo packets: conform as well.
        Conformance::from_yaml_pair_with(
            "pcap",
            "{path: c.pcap, snaplen: 1, max_packets: 3, max_size: 1 KiB}",
            "{path: d.pcap, direction: inbound}",
            &cx,
        )
        .mtu(9000)
        .run_all();
        // A queue of one overflows all the time: the packets pass regardless.
        Conformance::from_yaml_pair_with("pcap", "{path: e.pcap, queue: 1}", "path: f.pcap", &cx)
            .run_all();
        // The kit has dropped its stages, so the writers flushed: every file is whole.
        for f in ["a.pcap", "b.pcap", "c.pcap", "d.pcap", "e.pcap", "f.pcap"] {
            let c = dir.read(f);
            assert_eq!(c.linktype, format::LINKTYPE_RAW);
            assert!(!c.records.is_empty() || f == "e.pcap", "{f} is empty");
        }
        let c = dir.read("c.pcap");
        assert_eq!(c.records.len(), 3);
        assert!(c.records.iter().all(|r| r.data.len() == 1));
    }

    #[test]
    fn records_what_passes_with_its_time_and_cuts_at_the_snaplen() {
        let dir = Scratch::new("records");
        let stage = build("{path: t.pcap, snaplen: 40}", &dir.cx()).unwrap();
        let ping = packets::icmp_echo_v4([172, 31, 255, 7], [172, 31, 255, 13], 84);
        let reply = packets::udp_v6([0xfd; 16], [0xfe; 16], 53, 5353, b"answer");
        let t0 = Instant::now();
        let mut storage = vec![0u8; 200];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &ping);
        assert_eq!(stage.outbound(&mut pkt, &meta(t0)), Verdict::Pass);
        assert_eq!(pkt.as_slice(), &ping[..], "a tap changes nothing");
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &[]);
        assert_eq!(stage.inbound(&mut pkt, &meta(t0)), Verdict::Pass);
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &reply);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(stage.inbound(&mut pkt, &meta(t1)), Verdict::Pass);
        drop(stage);

        let c = dir.read("t.pcap");
        assert_eq!(c.snaplen, 40);
        assert_eq!(c.records.len(), 2, "the keepalive is not recorded");
        assert_eq!(c.records[0].data, &ping[..40]);
        assert_eq!(c.records[0].orig_len, 84);
        assert_eq!(c.records[1].data, &reply[..40]);
        assert_eq!(c.records[1].orig_len as usize, reply.len());
        assert_eq!(
            c.records[1].ts - c.records[0].ts,
            Duration::from_millis(1500)
        );
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(wall.abs_diff(c.records[0].ts) < Duration::from_secs(60));
    }

    #[test]
    fn what_is_not_ip_passes_uncaptured_and_is_counted() {
        let dir = Scratch::new("notip");
        let stage = build("{path: n.pcap}", &dir.cx()).unwrap();
        let mut junk = *b"\x17\x03\x03 not an IP packet";
        let len = junk.len();
        let mut pkt = PacketBuf::new(&mut junk, 0, len);
        assert_eq!(
            stage.inbound(&mut pkt, &meta(Instant::now())),
            Verdict::Pass
        );
        assert_eq!(pkt.len(), len);
        let mut m = Vec::new();
        stage.metrics(&mut m);
        let not_ip = m.iter().find(|m| m.name == "pcap_not_ip").unwrap();
        assert_eq!(not_ip.value, 1.0);
        drop(stage);
        assert!(dir.read("n.pcap").records.is_empty());
    }

    #[test]
    fn direction_selects_what_is_recorded() {
        let dir = Scratch::new("direction");
        let p = packets::icmp_echo_v4([10, 0, 0, 1], [10, 0, 0, 2], 60);
        for (direction, expect) in [("outbound", 0x01), ("inbound", 0x02), ("both", 0x03)] {
            let file = format!("{direction}.pcap");
            let stage = build(
                &format!("{{path: {file}, direction: {direction}}}"),
                &dir.cx(),
            )
            .unwrap();
            let mut storage = p.clone();
            // Mark which way each packet went in its last byte.
            *storage.last_mut().unwrap() = 0x01;
            let len = storage.len();
            let _ = stage.outbound(
                &mut PacketBuf::new(&mut storage, 0, len),
                &meta(Instant::now()),
            );
            *storage.last_mut().unwrap() = 0x02;
            let _ = stage.inbound(
                &mut PacketBuf::new(&mut storage, 0, len),
                &meta(Instant::now()),
            );
            drop(stage);
            let seen = dir
                .read(&file)
                .records
                .iter()
                .fold(0, |acc, r| acc | r.data.last().unwrap());
            assert_eq!(seen, expect, "direction: {direction}");
        }
    }

    #[test]
    fn every_config_problem_is_reported_at_once() {
        let dir = Scratch::new("errors");
        let err = build_err(
            "{path: no/such/dir/x.pcap, snaplen: 0, max_packets: 0, max_size: lots, queue: 0}",
            &dir.cx(),
        );
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["path", "snaplen", "max_packets", "max_size", "queue"],
            "{err}"
        );
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(err.to_string().contains("\"lots\" is not a size"), "{err}");
        // Nothing was created for a config that does not build.
        assert!(!dir.0.join("no").exists());

        let err = build_err("{path: x.pcap, snaplength: 100}", &dir.cx());
        assert!(
            err.to_string().contains("unknown field `snaplength`"),
            "{err}"
        );
        let err = build_err("{path: x.pcap, direction: sideways}", &dir.cx());
        assert!(
            err.to_string()
                .starts_with("direction: unknown variant `sideways`"),
            "{err}"
        );
        let err = build_err("{}", &dir.cx());
        assert!(err.to_string().contains("missing field `path`"), "{err}");
    }

    #[test]
    fn a_dry_run_checks_but_creates_nothing() {
        let dir = Scratch::new("dry");
        let cx = dir.cx().into_dry_run();
        let stage = build("{path: x.pcap}", &cx).unwrap();
        assert!(stage.describe().contains("x.pcap"));
        assert!(!dir.0.join("x.pcap").exists());
        // A problem is still found.
        assert!(build("{path: nope/x.pcap}", &cx).is_err());
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        let b = |s: &str| ByteSize::Text(s.into()).bytes();
        assert_eq!(b("100 MiB"), Ok(100 << 20));
        assert_eq!(b("5MB"), Ok(5_000_000));
        assert_eq!(b("1 kib"), Ok(1024));
        assert_eq!(b("2048"), Ok(2048));
        assert_eq!(ByteSize::Bytes(7).bytes(), Ok(7));
        assert!(b("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(b("MB").is_err());
        assert!(b("99999999999999999999 GiB").is_err());
    }

    #[test]
    fn the_wall_clock_follows_the_instants_both_ways() {
        let t = Instant::now();
        let clock = WallClock::anchored(t, Duration::from_secs(1000));
        assert_eq!(
            clock.at(t + Duration::from_millis(5)),
            Duration::from_millis(1_000_005)
        );
        assert_eq!(clock.at(t), Duration::from_secs(1000));
        if let Some(before) = t.checked_sub(Duration::from_secs(1)) {
            assert_eq!(clock.at(before), Duration::from_secs(999));
        }
    }

    #[test]
    fn metrics_count_what_was_written() {
        let dir = Scratch::new("metrics");
        let stage = build("{path: m.pcap, max_packets: 1}", &dir.cx()).unwrap();
        let p = packets::icmp_echo_v4([10, 0, 0, 1], [10, 0, 0, 2], 84);
        let mut storage = p.clone();
        for _ in 0..3 {
            let _ = stage.outbound(
                &mut PacketBuf::new(&mut storage, 0, 84),
                &meta(Instant::now()),
            );
        }
        // The writer thread works on its own time: wait for it, bounded.
        let value = |name: &str| {
            let mut m = Vec::new();
            stage.metrics(&mut m);
            m.iter().find(|m| m.name == name).map(|m| m.value).unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while value("pcap_stopped") == 0.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(value("pcap_stopped"), 1.0);
        assert_eq!(value("pcap_packets_written"), 1.0);
        assert_eq!(value("pcap_bytes_written"), (24 + 16 + 84) as f64);
    }
}
