//! The YAML config file: its model, its parsing, and errors that say where.
//!
//! One file per host. Every key is optional; the empty file is the Go lametun's defaults
//! (device `tun0`, port 1234, passthrough), and flags on the command line override it.
//!
//! ```yaml
//! device:
//!   name: tun0                 # attached if it exists, else created
//!   address: 172.31.255.7/24   # optional; one CIDR or a list (IPv4 and IPv6)
//!   mtu: auto                  # or a number; see `lametun_core::mtu`
//!   packet_info: true          # the Go lametun's 4-byte header in every datagram
//!   routes: [172.16.0.0/12]    # optional
//! peer:
//!   listen: true               # or: server: HOST (a name, IPv4 or IPv6 address)
//!   port: 1234
//!   keepalive: 25s             # the connecting side's default; `off` to disable
//! pipeline: []                 # `- type: NAME` plus that stage's keys; empty = passthrough
//! ```
//!
//! Errors name the file, the line, the key path and what is wrong, all at once: those
//! of the file's own keys ([`TunnelConfig::from_yaml`]), then, once these are right,
//! those of the stages ([`TunnelConfig::build_pipeline`]):
//!
//! ```text
//! server.yaml:3: device.mtu: expected "auto" or a number from 68 to 65535, found 20
//! server.yaml:9: pipeline[0] (filter): rules[3].dst: invalid CIDR "10.0.0.0/33"
//! ```
//!
//! Every direct use of the YAML crate sits in this module (and `registry`), so that
//! changing it is a local change (`serde_yaml`, the crate everyone used, is deprecated).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::mtu::{ETHERNET_MTU, IPV4_MIN_MTU, MAX_MTU, MtuBudget, OuterIp};
use crate::pipeline::Pipeline;
use crate::registry::{self, BuildContext};

/// The Go lametun's port.
pub const DEFAULT_PORT: u16 = 1234;
/// The Go lametun's device name.
pub const DEFAULT_DEVICE: &str = "tun0";
/// Keepalive interval of the connecting side unless configured (WireGuard's usual 25 s,
/// below the 30 s that the shortest common NAT UDP timeouts allow).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(25);
/// Socket buffer size asked for unless configured (both directions).
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

/// A whole config: what the file said, with defaults filled in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TunnelConfig {
    /// The TUN device.
    pub device: DeviceConfig,
    /// The peer and the UDP socket.
    pub peer: PeerConfig,
    /// The stage chain, top (TUN side) to bottom (wire side).
    pub pipeline: Vec<StageSpec>,
    /// How the driver does IO.
    pub io: IoConfig,
    source: Source,
}

/// The `device:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// Addresses to set on the device; empty = leave the device's addresses alone.
    pub addresses: Vec<IpNet>,
    /// The TUN MTU.
    pub mtu: MtuSetting,
    /// Whether the 4-byte packet-information header rides in every datagram.
    pub packet_info: bool,
    /// Routes to add through the device.
    pub routes: Vec<IpNet>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_DEVICE.to_owned(),
            addresses: Vec::new(),
            mtu: MtuSetting::Auto,
            packet_info: true,
            routes: Vec::new(),
        }
    }
}

/// `mtu: auto` or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuSetting {
    /// Computed from the underlay MTU and every overhead (see [`mtu`](crate::mtu)).
    Auto,
    /// This value, as given.
    Fixed(u16),
}

/// Which end of the tunnel this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `-listen`: wait for the peer and learn its address.
    Listen,
    /// `-server HOST`: send to HOST (a name, an IPv4 or an IPv6 address).
    Connect(String),
}

/// The `peer:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Listen or connect; `None` if neither the file nor the flags said.
    pub role: Option<Role>,
    /// The UDP port, local (listening side) and remote (connecting side), as in the Go
    /// lametun where both ends use the same port.
    pub port: u16,
    /// Local address to bind; default: every address, IPv6 and IPv4.
    pub bind: Option<IpAddr>,
    /// Keepalive interval; `None` = off. Default: 25 s when connecting, off when listening.
    pub keepalive: Option<Option<Duration>>,
    /// MTU of the path to the peer (1500 on Ethernet; less on PPPoE or inside another tunnel).
    pub underlay_mtu: u16,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            role: None,
            port: DEFAULT_PORT,
            bind: None,
            keepalive: None,
            underlay_mtu: ETHERNET_MTU,
        }
    }
}

impl PeerConfig {
    /// The effective keepalive: as configured, else 25 s for the connecting side and
    /// off for the listening side (it answers; the client keeps the path open).
    pub fn keepalive(&self) -> Option<Duration> {
        match self.keepalive {
            Some(k) => k,
            None => match self.role {
                Some(Role::Connect(_)) => Some(DEFAULT_KEEPALIVE),
                _ => None,
            },
        }
    }
}

/// `workers: auto` or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per two CPUs (a busy worker can use two: see [`Workers::resolve`]), at least
    /// one, at most [`Workers::AUTO_MAX`].
    Auto,
    /// Exactly this many (TUN queues, each with a sending thread; the sockets follow
    /// [`Sockets`]).
    Count(u16),
}

impl Workers {
    /// The most queues `auto` picks: past that a single peer gains nothing.
    pub const AUTO_MAX: usize = 4;

    /// How many workers for a machine with `cpus` CPUs.
    ///
    /// Each worker is a TUN queue with an outbound thread, and (on a server, or with
    /// [`Sockets::PerWorker`]) a UDP socket with an inbound thread: a busy worker keeps
    /// two CPUs busy. On 2 CPUs two workers were no faster than one for a single TCP
    /// stream (plaintext and encrypted, within noise), and 5-11% faster plaintext, 0-3%
    /// encrypted, for four streams with a socket each: too little to give up the CPUs
    /// that the applications need.
    pub fn resolve(self, cpus: usize) -> usize {
        match self {
            Self::Auto => (cpus / 2).clamp(1, Self::AUTO_MAX),
            Self::Count(n) => usize::from(n),
        }
    }
}

/// `sockets:` how many UDP sockets carry the tunnel (see [`Sockets::resolve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sockets {
    /// One per worker on a listener, one on a client.
    Auto,
    /// One, however many workers.
    One,
    /// One per worker, also on a client.
    PerWorker,
}

impl Sockets {
    /// How many sockets a `listening` (or connecting) end with `workers` workers opens.
    ///
    /// Each socket has a receiving thread. A listener's sockets share its port, and the
    /// kernel hands each one the datagrams of some client ports: that costs nothing
    /// when the client has one socket, hence one per worker by default. A client with
    /// one socket per worker sends from several ports, which spreads the server's
    /// receiving work only if the server is a lametun with as many workers; a server
    /// that learns one address (the Go lametun, or a lametun with one worker) answers
    /// one of the ports. So a client opens several only when told to (`per-worker`).
    pub fn resolve(self, listening: bool, workers: usize) -> usize {
        match self {
            Self::Auto if listening => workers,
            Self::Auto | Self::One => 1,
            Self::PerWorker => workers,
        }
    }
}

/// The `io:` section: how the driver moves packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoConfig {
    /// Use TUN and UDP offloads (TSO/GRO, GSO/GRO) where the kernel has them.
    pub offload: bool,
    /// Number of workers (a TUN queue each, with its threads).
    pub workers: Workers,
    /// How many UDP sockets.
    pub sockets: Sockets,
    /// `SO_SNDBUF`/`SO_RCVBUF` to ask for, in bytes.
    pub socket_buffer: usize,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            offload: true,
            workers: Workers::Auto,
            sockets: Sockets::Auto,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
        }
    }
}

/// One `pipeline` entry: a stage type and its keys, not yet built.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSpec {
    /// The `type:` value.
    pub type_name: String,
    keys: yaml_serde::Value,
}

impl StageSpec {
    /// An entry of type `type_name` with the keys of the YAML mapping `keys` (may be empty).
    pub fn from_yaml(type_name: &str, keys: &str) -> Result<Self, ConfigErrors> {
        let mut keys: yaml_serde::Value = yaml_serde::from_str(keys)
            .map_err(|e| ConfigErrors::one(ConfigError::new("pipeline", e.to_string())))?;
        if keys.is_null() {
            keys = yaml_serde::Value::Mapping(Default::default());
        }
        Ok(Self {
            type_name: type_name.to_owned(),
            keys,
        })
    }
}

/// The file a config came from, kept to point errors at lines.
#[derive(Clone, Debug, Default, PartialEq)]
struct Source {
    file: Option<PathBuf>,
    text: Option<String>,
}

impl Source {
    /// The line (1-based) of the node at `path` ("pipeline[0].rules[3].dst"), or of its
    /// nearest ancestor that exists.
    fn line_of(&self, path: &str) -> Option<usize> {
        use saphyr::{LoadableYamlNode, MarkedYaml};
        let text = self.text.as_deref()?;
        let docs = MarkedYaml::load_from_str(text).ok()?;
        let mut node = docs.first()?;
        let mut line = None;
        for seg in split_path(path) {
            let next = match seg {
                Seg::Key(k) => node.data.as_mapping_get(k),
                Seg::Index(i) => node.data.as_sequence_get(i),
            };
            match next {
                Some(n) => {
                    node = n;
                    line = Some(n.span.start.line());
                }
                None => break,
            }
        }
        line
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[3].c` into `a`, `b`, `3`, `c`.
fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some((idx, after)) = rest.split_once(']') {
            if let Ok(i) = idx.parse() {
                out.push(Seg::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// One problem in a config, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The file, if the config came from one.
    pub file: Option<PathBuf>,
    /// The line (1-based), where it could be found.
    pub line: Option<usize>,
    /// For a stage: its index and type.
    pub stage: Option<(usize, String)>,
    /// The key path (`device.mtu`; for a stage, the path inside the entry).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with the key at `path`, location unknown.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            stage: None,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if let Some((index, type_name)) = &self.stage {
            write!(f, "pipeline[{index}] ({type_name}): ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    fn one(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ===== parsing =====

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Option<String>,
    address: Option<yaml_serde::Value>,
    mtu: Option<yaml_serde::Value>,
    packet_info: Option<bool>,
    routes: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    listen: Option<bool>,
    server: Option<String>,
    port: Option<u16>,
    bind: Option<String>,
    keepalive: Option<yaml_serde::Value>,
    underlay_mtu: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIo {
    offload: Option<bool>,
    workers: Option<yaml_serde::Value>,
    sockets: Option<yaml_serde::Value>,
    socket_buffer: Option<usize>,
}

const SECTIONS: [&str; 4] = ["device", "peer", "pipeline", "io"];

struct Parser {
    source: Source,
    errors: Vec<ConfigError>,
}

impl Parser {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        self.errors.push(ConfigError {
            file: self.source.file.clone(),
            line: self.source.line_of(&path),
            stage: None,
            path,
            message: message.into(),
        });
    }

    fn section<T: DeserializeOwned>(
        &mut self,
        name: &str,
        value: Option<&yaml_serde::Value>,
    ) -> Option<T> {
        let value = match value {
            None | Some(yaml_serde::Value::Null) => &yaml_serde::Value::Mapping(Default::default()),
            Some(v @ yaml_serde::Value::Mapping(_)) => v,
            Some(other) => {
                self.error(
                    name,
                    format!(
                        "expected a mapping of `{name}` keys, found {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." {
                    name.to_owned()
                } else {
                    format!("{name}.{inner}")
                };
                self.error(path, e.into_inner().to_string());
                None
            }
        }
    }

    /// One CIDR or a list of them (`device.address`, `device.routes`).
    fn cidrs(&mut self, path: &str, value: &yaml_serde::Value) -> Vec<IpNet> {
        let expected = "expected a CIDR such as 172.31.255.7/24 or fd00::7/64";
        let items: Vec<(String, &yaml_serde::Value)> = match value {
            yaml_serde::Value::Sequence(list) if list.len() > 1 => list
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), v))
                .collect(),
            yaml_serde::Value::Sequence(list) => {
                list.iter().map(|v| (path.to_owned(), v)).collect()
            }
            one => vec![(path.to_owned(), one)],
        };
        let mut out = Vec::new();
        for (at, v) in items {
            let yaml_serde::Value::String(s) = v else {
                self.error(
                    at,
                    format!("{expected} (or a list of them), found {}", describe(v)),
                );
                continue;
            };
            match s.trim().parse::<IpNet>() {
                Ok(net) => out.push(net),
                Err(_) => self.error(
                    at,
                    format!("invalid CIDR {s:?} (expected e.g. 172.31.255.7/24 or fd00::7/64)"),
                ),
            }
        }
        out
    }
}

fn parse_mtu(value: &yaml_serde::Value) -> Result<MtuSetting, String> {
    let expected = format!("expected \"auto\" or a number from {IPV4_MIN_MTU} to {MAX_MTU}");
    match value {
        yaml_serde::Value::String(s) if s == "auto" => Ok(MtuSetting::Auto),
        yaml_serde::Value::Number(n) => match n.as_u64() {
            Some(m) if (u64::from(IPV4_MIN_MTU)..=u64::from(MAX_MTU)).contains(&m) => {
                Ok(MtuSetting::Fixed(m as u16))
            }
            _ => Err(format!("{expected}, found {n}")),
        },
        other => Err(format!("{expected}, found {}", describe(other))),
    }
}

fn parse_keepalive(value: &yaml_serde::Value) -> Result<Option<Duration>, String> {
    let expected = "expected a duration such as 25s or 1m, a number of seconds, or off";
    match value {
        yaml_serde::Value::Bool(false) => Ok(None),
        yaml_serde::Value::String(s) if s == "off" => Ok(None),
        // A number of seconds, quoted (or from `--keepalive 30`).
        yaml_serde::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u64>() {
                Ok(0) => Ok(None),
                Ok(secs) => Ok(Some(Duration::from_secs(secs))),
                Err(_) => Err(format!("{expected}, found {s:?}")),
            }
        }
        yaml_serde::Value::String(s) => humantime::parse_duration(s)
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|e| format!("{expected}: {s:?}: {e}")),
        yaml_serde::Value::Number(n) => match n.as_u64() {
            Some(0) => Ok(None),
            Some(secs) => Ok(Some(Duration::from_secs(secs))),
            None => Err(format!("{expected}, found {n}")),
        },
        other => Err(format!("{expected}, found {}", describe(other))),
    }
}

fn parse_sockets(value: &yaml_serde::Value) -> Result<Sockets, String> {
    match value {
        yaml_serde::Value::String(s) if s == "auto" => Ok(Sockets::Auto),
        yaml_serde::Value::String(s) if s == "one" => Ok(Sockets::One),
        yaml_serde::Value::String(s) if s == "per-worker" => Ok(Sockets::PerWorker),
        other => Err(format!(
            "expected \"auto\", \"one\" or \"per-worker\", found {}",
            describe(other)
        )),
    }
}

fn parse_workers(value: &yaml_serde::Value) -> Result<Workers, String> {
    match value {
        yaml_serde::Value::String(s) if s == "auto" => Ok(Workers::Auto),
        yaml_serde::Value::Number(n) => match n.as_u64() {
            Some(w @ 1..=64) => Ok(Workers::Count(w as u16)),
            _ => Err(format!(
                "expected \"auto\" or a number from 1 to 64, found {n}"
            )),
        },
        other => Err(format!(
            "expected \"auto\" or a number from 1 to 64, found {}",
            describe(other)
        )),
    }
}

fn describe(v: &yaml_serde::Value) -> String {
    match v {
        yaml_serde::Value::Null => "nothing".into(),
        yaml_serde::Value::Bool(b) => b.to_string(),
        yaml_serde::Value::Number(n) => n.to_string(),
        yaml_serde::Value::String(s) => format!("{s:?}"),
        yaml_serde::Value::Sequence(_) => "a list".into(),
        yaml_serde::Value::Mapping(_) => "a mapping".into(),
        yaml_serde::Value::Tagged(_) => "a tagged value".into(),
    }
}

/// Checks a Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?}: an interface name has 1 to 15 bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains('/')
        || name.contains(char::is_whitespace)
        || name.contains(':')
    {
        return Err(format!("{name:?}: not a valid interface name"));
    }
    Ok(())
}

impl TunnelConfig {
    /// Parses a config from YAML text. `file` is only used in error messages (and to
    /// resolve relative paths in stage configs). An empty document is the default config.
    pub fn from_yaml(text: &str, file: Option<&Path>) -> Result<Self, ConfigErrors> {
        let mut p = Parser {
            source: Source {
                file: file.map(Path::to_path_buf),
                text: Some(text.to_owned()),
            },
            errors: Vec::new(),
        };
        let root: yaml_serde::Value = match yaml_serde::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| l.line());
                let mut message = e.to_string();
                // The YAML crate appends "at line N column M"; we print the line ourselves.
                if let Some(i) = message.find(" at line ") {
                    message.truncate(i);
                }
                return Err(ConfigErrors::one(ConfigError {
                    file: p.source.file.clone(),
                    line,
                    stage: None,
                    path: String::new(),
                    message: format!("not valid YAML: {message}"),
                }));
            }
        };
        let empty = yaml_serde::Mapping::new();
        let map = match &root {
            yaml_serde::Value::Null => &empty,
            yaml_serde::Value::Mapping(m) => m,
            other => {
                p.error(
                    "",
                    format!(
                        "expected a mapping with the keys device, peer, pipeline, io; found {}",
                        describe(other)
                    ),
                );
                return Err(ConfigErrors(p.errors));
            }
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if SECTIONS.contains(&k) => {}
                _ => {
                    let name = key.as_str().map_or_else(|| describe(key), str::to_owned);
                    p.error(
                        name.clone(),
                        format!("unknown key `{name}`, expected one of `device`, `peer`, `pipeline`, `io`"),
                    );
                }
            }
        }

        let mut config = Self::default();
        if let Some(raw) = p.section::<RawDevice>("device", map.get("device")) {
            let d = &mut config.device;
            if let Some(name) = raw.name {
                match check_ifname(&name) {
                    Ok(()) => d.name = name,
                    Err(e) => p.error("device.name", e),
                }
            }
            if let Some(a) = raw.address {
                d.addresses = p.cidrs("device.address", &a);
            }
            if let Some(r) = raw.routes {
                d.routes = p
                    .cidrs("device.routes", &r)
                    .into_iter()
                    .map(|n| n.trunc())
                    .collect();
            }
            if let Some(m) = raw.mtu {
                match parse_mtu(&m) {
                    Ok(m) => d.mtu = m,
                    Err(e) => p.error("device.mtu", e),
                }
            }
            if let Some(pi) = raw.packet_info {
                d.packet_info = pi;
            }
        }
        if let Some(raw) = p.section::<RawPeer>("peer", map.get("peer")) {
            let peer = &mut config.peer;
            match (raw.listen, raw.server) {
                (Some(true), Some(_)) => p.error(
                    "peer",
                    "`listen: true` and `server` exclude each other: one end listens, the other names it",
                ),
                (_, Some(server)) if server.trim().is_empty() => p.error("peer.server", "empty host name"),
                (_, Some(server)) => peer.role = Some(Role::Connect(server.trim().to_owned())),
                (Some(true), None) => peer.role = Some(Role::Listen),
                (Some(false) | None, None) => {}
            }
            if let Some(port) = raw.port {
                if port == 0 {
                    p.error("peer.port", "port 0 is not a port (use 1 to 65535)");
                } else {
                    peer.port = port;
                }
            }
            if let Some(bind) = raw.bind {
                match bind.parse() {
                    Ok(ip) => peer.bind = Some(ip),
                    Err(_) => p.error("peer.bind", format!("invalid IP address {bind:?}")),
                }
            }
            if let Some(k) = raw.keepalive {
                match parse_keepalive(&k) {
                    Ok(k) => peer.keepalive = Some(k),
                    Err(e) => p.error("peer.keepalive", e),
                }
            }
            if let Some(m) = raw.underlay_mtu {
                if m < 576 {
                    p.error(
                        "peer.underlay_mtu",
                        format!("{m} is below 576, the smallest MTU every IPv4 path carries"),
                    );
                } else {
                    peer.underlay_mtu = m;
                }
            }
        }
        if let Some(raw) = p.section::<RawIo>("io", map.get("io")) {
            let io = &mut config.io;
            if let Some(o) = raw.offload {
                io.offload = o;
            }
            if let Some(w) = raw.workers {
                match parse_workers(&w) {
                    Ok(w) => io.workers = w,
                    Err(e) => p.error("io.workers", e),
                }
            }
            if let Some(v) = raw.sockets {
                match parse_sockets(&v) {
                    Ok(v) => io.sockets = v,
                    Err(e) => p.error("io.sockets", e),
                }
            }
            if let Some(b) = raw.socket_buffer {
                if !(64 << 10..=1 << 30).contains(&b) {
                    p.error(
                        "io.socket_buffer",
                        format!("{b} bytes: expected 65536 to 1073741824"),
                    );
                } else {
                    io.socket_buffer = b;
                }
            }
        }
        match map.get("pipeline") {
            None | Some(yaml_serde::Value::Null) => {}
            Some(yaml_serde::Value::Sequence(entries)) => {
                for (i, entry) in entries.iter().enumerate() {
                    let at = format!("pipeline[{i}]");
                    let yaml_serde::Value::Mapping(m) = entry else {
                        p.error(
                            at,
                            format!(
                                "expected a mapping starting with `type: NAME`, found {}",
                                describe(entry)
                            ),
                        );
                        continue;
                    };
                    let mut keys = m.clone();
                    match keys.remove("type") {
                        Some(yaml_serde::Value::String(t)) => config.pipeline.push(StageSpec {
                            type_name: t,
                            keys: yaml_serde::Value::Mapping(keys),
                        }),
                        Some(other) => p.error(
                            format!("{at}.type"),
                            format!("expected a stage type name, found {}", describe(&other)),
                        ),
                        None => p.error(
                            at,
                            "missing `type` (every pipeline entry starts with `- type: NAME`)",
                        ),
                    }
                }
            }
            Some(other) => p.error(
                "pipeline",
                format!("expected a list of stages, found {}", describe(other)),
            ),
        }
        config.source = p.source.clone();
        if p.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(p.errors))
        }
    }

    /// The file this config was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.source.file.as_deref()
    }

    /// Builds the stage chain, looking every `type` up in the registry. Reports every
    /// unknown type and every stage's config errors together, with lines.
    pub fn build_pipeline(&self, cx: &BuildContext) -> Result<Pipeline, ConfigErrors> {
        let mut pipeline = Pipeline::new();
        let mut errors = Vec::new();
        let dups = registry::duplicates();
        if !dups.is_empty() {
            errors.push(ConfigError::new(
                "",
                format!("stage types registered twice in this binary: {} (two linked crates use the same name)", dups.join(", ")),
            ));
        }
        for (i, spec) in self.pipeline.iter().enumerate() {
            let at = format!("pipeline[{i}]");
            let Some(reg) = registry::find(&spec.type_name) else {
                errors.push(ConfigError {
                    file: self.source.file.clone(),
                    line: self.source.line_of(&format!("{at}.type")),
                    stage: None,
                    path: format!("{at}.type"),
                    message: format!(
                        "unknown stage type {:?}; this binary knows: {}. A stage from another crate needs a binary that links it (see \"Writing a stage\" in the README)",
                        spec.type_name,
                        registry::names().join(", ")
                    ),
                });
                continue;
            };
            match reg.build_value(&spec.keys, &cx.for_stage(i)) {
                Ok(stage) => {
                    let label = if self
                        .pipeline
                        .iter()
                        .filter(|s| s.type_name == spec.type_name)
                        .count()
                        > 1
                    {
                        format!("{}#{i}", reg.type_name)
                    } else {
                        reg.type_name.to_owned()
                    };
                    pipeline.push(reg.type_name, label, stage);
                }
                Err(e) => {
                    for fe in e.errors {
                        let full = if fe.path.is_empty() {
                            at.clone()
                        } else {
                            format!("{at}.{}", fe.path)
                        };
                        errors.push(ConfigError {
                            file: self.source.file.clone(),
                            line: self.source.line_of(&full),
                            stage: Some((i, spec.type_name.clone())),
                            path: fe.path,
                            message: fe.message,
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(pipeline)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The MTU sum for this config, for packets crossing an underlay of `outer` IP.
    pub fn mtu_budget(&self, outer: OuterIp, stages: crate::Overhead) -> MtuBudget {
        MtuBudget {
            underlay: self.peer.underlay_mtu,
            outer,
            packet_info: self.device.packet_info,
            stages,
        }
    }

    /// The TUN MTU to use: the configured number, or the budget's result for `auto`.
    pub fn tun_mtu(&self, budget: &MtuBudget) -> Result<u16, crate::mtu::MtuError> {
        match self.device.mtu {
            MtuSetting::Fixed(m) => Ok(m),
            MtuSetting::Auto => budget.tun_mtu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_go_lametun_defaults() {
        for text in ["", "# nothing\n", "{}"] {
            let c = TunnelConfig::from_yaml(text, None).unwrap();
            assert_eq!(c.device.name, "tun0");
            assert_eq!(c.peer.port, 1234);
            assert!(c.device.packet_info);
            assert_eq!(c.device.mtu, MtuSetting::Auto);
            assert!(c.pipeline.is_empty());
            assert_eq!(c.peer.role, None);
        }
    }

    #[test]
    fn full_file_parses() {
        let text = "\
device:
  name: lt0
  address: [172.31.255.7/24, 'fd00:31::7/64']
  mtu: 1400
  packet_info: false
  routes: 172.16.0.0/12
peer:
  server: vpn.example.com
  port: 4000
  keepalive: 10s
  underlay_mtu: 1492
io:
  offload: false
  workers: 2
  sockets: per-worker
pipeline:
  - type: passthrough
";
        let c = TunnelConfig::from_yaml(text, None).unwrap();
        assert_eq!(c.device.name, "lt0");
        assert_eq!(c.device.addresses.len(), 2);
        assert_eq!(c.device.mtu, MtuSetting::Fixed(1400));
        assert!(!c.device.packet_info);
        assert_eq!(
            c.device.routes,
            vec!["172.16.0.0/12".parse::<IpNet>().unwrap()]
        );
        assert_eq!(c.peer.role, Some(Role::Connect("vpn.example.com".into())));
        assert_eq!(c.peer.keepalive(), Some(Duration::from_secs(10)));
        assert_eq!(c.peer.underlay_mtu, 1492);
        assert_eq!(c.io.workers, Workers::Count(2));
        assert_eq!(c.io.sockets, Sockets::PerWorker);
        assert!(!c.io.offload);
        assert_eq!(c.pipeline[0].type_name, "passthrough");
    }

    #[test]
    fn auto_workers_leave_a_cpu_for_the_inbound_thread() {
        let auto: Vec<usize> = [1, 2, 3, 4, 8, 64]
            .map(|n| Workers::Auto.resolve(n))
            .to_vec();
        assert_eq!(auto, [1, 1, 1, 2, 4, 4]);
        assert_eq!(Workers::Count(3).resolve(2), 3);
    }

    #[test]
    fn a_client_opens_one_socket_unless_told_to_open_one_per_worker() {
        assert_eq!(Sockets::Auto.resolve(true, 3), 3);
        assert_eq!(Sockets::Auto.resolve(false, 3), 1);
        assert_eq!(Sockets::One.resolve(true, 3), 1);
        assert_eq!(Sockets::PerWorker.resolve(false, 3), 3);
        let e = TunnelConfig::from_yaml("io:\n  sockets: 2\n", None).unwrap_err();
        assert_eq!(
            e.0[0].message,
            "expected \"auto\", \"one\" or \"per-worker\", found 2"
        );
    }

    #[test]
    fn keepalive_defaults_depend_on_the_role() {
        let c = TunnelConfig::from_yaml("peer: {server: 192.0.2.1}", None).unwrap();
        assert_eq!(c.peer.keepalive(), Some(DEFAULT_KEEPALIVE));
        let c = TunnelConfig::from_yaml("peer: {listen: true}", None).unwrap();
        assert_eq!(c.peer.keepalive(), None);
        let c = TunnelConfig::from_yaml("peer: {server: h, keepalive: off}", None).unwrap();
        assert_eq!(c.peer.keepalive(), None);
        let c = TunnelConfig::from_yaml("peer: {listen: true, keepalive: 5}", None).unwrap();
        assert_eq!(c.peer.keepalive(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_quoted_number_of_seconds_is_a_keepalive_too() {
        // `--keepalive 30` arrives as the string "30": the message promises "a number
        // of seconds", so it must not be refused for lacking a unit.
        for (text, want) in [
            (
                "peer: {server: h, keepalive: \"30\"}",
                Some(Duration::from_secs(30)),
            ),
            ("peer: {server: h, keepalive: \"0\"}", None),
        ] {
            let c = TunnelConfig::from_yaml(text, None).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.peer.keepalive(), want, "{text}");
        }
    }

    #[test]
    fn wrong_shapes_are_described_in_yaml_words() {
        // Not the names of the parser's Rust types.
        for (text, want) in [
            (
                "device:\n  address: [10.0.0.1/24, 5]\n",
                "line 2: device.address[1]: expected a CIDR such as 172.31.255.7/24 or fd00::7/64 (or a list of them), found 5",
            ),
            (
                "device:\n  routes:\n    via: 10.0.0.1\n",
                "line 3: device.routes: expected a CIDR such as 172.31.255.7/24 or fd00::7/64 (or a list of them), found a mapping",
            ),
            (
                "peer: 5\n",
                "line 1: peer: expected a mapping of `peer` keys, found 5",
            ),
            (
                "io: [offload]\n",
                "line 1: io: expected a mapping of `io` keys, found a list",
            ),
        ] {
            let e = TunnelConfig::from_yaml(text, None).unwrap_err();
            assert_eq!(e.to_string(), want, "for {text:?}");
        }
    }

    #[test]
    fn split_path_handles_indices() {
        let segs: Vec<String> = split_path("pipeline[0].rules[3].dst")
            .into_iter()
            .map(|s| match s {
                Seg::Key(k) => k.to_owned(),
                Seg::Index(i) => format!("#{i}"),
            })
            .collect();
        assert_eq!(segs, ["pipeline", "#0", "rules", "#3", "dst"]);
    }
}
