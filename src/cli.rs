//! The command line, compatible with the Go lametun's.
//!
//! Go's `flag` package takes `-listen` and `--listen` alike, and `-port=1234` as well as
//! `-port 1234`; the article's commands must keep working, so single-dash long flags are
//! rewritten to double-dash before `clap` sees them. Flags override the config file.
//!
//! ```text
//! lametun -listen   [-port 1234] [-device tun0] [--address CIDR] [--config FILE]
//! lametun -server HOST [-port 1234] [-device tun0] [--address CIDR] [--config FILE]
//! lametun check-config FILE
//! lametun stages
//! lametun demo
//! lametun genkey [FILE]
//! lametun stats [ADDR] [--watch]
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lametun_core::config::{MtuSetting, Role, TunnelConfig, Workers, check_ifname};
use lametun_core::registry;

use crate::run::{self, Failure};

/// Long flags that may be written with one dash, as Go's flag package allows.
const LONG_FLAGS: &[&str] = &[
    "listen",
    "server",
    "port",
    "device",
    "address",
    "config",
    "mtu",
    "keepalive",
    "workers",
    "sockets",
    "no-offload",
    "help",
    "version",
    "watch",
    "interval",
    "examples",
];

/// Rewrites `-flag` and `-flag=value` to `--flag…` for the long flags above.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        match arg.to_str() {
            Some(s) if s.starts_with('-') && !s.starts_with("--") => {
                let name = s[1..].split('=').next().unwrap_or("");
                if LONG_FLAGS.contains(&name) {
                    out.push(format!("-{s}").into());
                } else {
                    out.push(arg);
                }
            }
            _ => out.push(arg),
        }
    }
    out
}

/// A boolean flag's value as Go's `flag` package reads it (`strconv.ParseBool`), so that
/// `-listen=1` and `-listen=t` work as with the Go lametun.
fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!(
            "expected true or false (or 1, 0, t, f), found {s:?}"
        )),
    }
}

/// lametun: a userspace VPN tunnel. IP packets from a TUN device cross a chain of
/// stages (passthrough by default) and travel to the peer in UDP datagrams.
#[derive(Debug, Parser)]
#[command(
    name = "lametun",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Be the server: wait for the peer and learn its address.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL", value_parser = go_bool)]
    pub listen: Option<bool>,
    /// Be the client of the server at HOST (a name, an IPv4 or an IPv6 address).
    #[arg(long, value_name = "HOST")]
    pub server: Option<String>,
    /// UDP port (the server listens on it; the client sends to it). Default 1234.
    #[arg(long)]
    pub port: Option<u16>,
    /// TUN device name. Default tun0.
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Address to put on the device, e.g. 172.31.255.7/24 (repeat for IPv4 and IPv6).
    #[arg(long, value_name = "CIDR")]
    pub address: Vec<String>,
    /// YAML config file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TUN MTU instead of the computed one.
    #[arg(long)]
    pub mtu: Option<u16>,
    /// Keepalive interval, e.g. 25s, or "off".
    #[arg(long, value_name = "DURATION")]
    pub keepalive: Option<String>,
    /// Number of workers: TUN queues, each with a sending thread ("auto" or a number).
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// UDP sockets: "auto" (one per worker on a server, one on a client), "one", or
    /// "per-worker" (on a client: only against a lametun server with as many workers).
    #[arg(long, value_name = "HOW")]
    pub sockets: Option<String>,
    /// Turn off TUN and UDP offloads (TSO/GRO, GSO/GRO).
    #[arg(long)]
    pub no_offload: bool,
    /// What to do instead of running a tunnel.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file: print the resolved chain, overheads and MTU (exit 0 or 2).
    CheckConfig {
        /// The YAML file.
        file: PathBuf,
    },
    /// List the stage types this binary knows.
    Stages {
        /// Also print each type's YAML example.
        #[arg(long)]
        examples: bool,
    },
    /// As root: run a tunnel between two network namespaces on this machine, send
    /// traffic through it, print what happened, and remove everything again.
    Demo,
    /// Print a fresh 32-byte pre-shared key (base64, from the OS random generator) for the
    /// chacha20poly1305 stage, or write it to FILE with mode 0600.
    Genkey {
        /// Write the key here (refuses to overwrite) instead of printing it.
        file: Option<PathBuf>,
    },
    /// Read a running tunnel's stats endpoint (the stats stage's `listen:`) and print a
    /// table of traffic, drops by stage and reason, and errors.
    Stats {
        /// Where the endpoint listens: a port, HOST:PORT or an http:// URL.
        #[arg(default_value = lametun_stage_stats::DEFAULT_ADDR)]
        addr: String,
        /// Refresh the table top-style, with rates, until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
}

/// Reads a config file; errors name the file.
pub fn load_config(path: &Path) -> Result<TunnelConfig, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Setup(format!(
            "{}: cannot read the config file: {e}",
            path.display()
        ))
    })?;
    TunnelConfig::from_yaml(&text, Some(path)).map_err(|e| Failure::Setup(e.to_string()))
}

impl Cli {
    /// The config file (or the defaults) with the flags applied on top.
    pub fn tunnel_config(&self) -> Result<TunnelConfig, Failure> {
        let mut config = match &self.config {
            Some(path) => load_config(path)?,
            None => TunnelConfig::default(),
        };
        let listen = self.listen == Some(true);
        // As in Go, `-server ""` is no server.
        let server = self.server.as_ref().filter(|host| !host.is_empty());
        match (listen, server) {
            (true, Some(_)) => {
                return Err(Failure::Setup(
                    "Cannot listen and set server flag (-listen and -server exclude each other)"
                        .into(),
                ));
            }
            (true, None) => config.peer.role = Some(Role::Listen),
            (false, Some(host)) => config.peer.role = Some(Role::Connect(host.clone())),
            // `-listen=false` takes back a file's `listen: true`.
            (false, None)
                if self.listen == Some(false) && config.peer.role == Some(Role::Listen) =>
            {
                config.peer.role = None;
            }
            (false, None) => {}
        }
        if let Some(port) = self.port {
            if port == 0 {
                return Err(Failure::Setup("-port: 0 is not a port".into()));
            }
            config.peer.port = port;
        }
        if let Some(dev) = &self.device {
            check_ifname(dev).map_err(|e| Failure::Setup(format!("-device: {e}")))?;
            config.device.name = dev.clone();
        }
        if !self.address.is_empty() {
            config.device.addresses = self
                .address
                .iter()
                .map(|a| {
                    a.parse().map_err(|_| {
                        Failure::Setup(format!(
                            "--address: invalid CIDR {a:?} (expected e.g. 172.31.255.7/24)"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(mtu) = self.mtu {
            if mtu < lametun_core::mtu::IPV4_MIN_MTU {
                return Err(Failure::Setup(format!(
                    "--mtu {mtu}: below the IPv4 minimum of 68"
                )));
            }
            config.device.mtu = MtuSetting::Fixed(mtu);
        }
        if let Some(k) = &self.keepalive {
            let parsed = TunnelConfig::from_yaml(&format!("peer: {{keepalive: {k:?}}}"), None)
                .map_err(|e| Failure::Setup(format!("--keepalive: {}", e.0[0].message)))?;
            config.peer.keepalive = parsed.peer.keepalive;
        }
        if let Some(w) = &self.workers {
            config.io.workers = match (w.as_str(), w.parse::<u16>()) {
                ("auto", _) => Workers::Auto,
                (_, Ok(n @ 1..=64)) => Workers::Count(n),
                _ => {
                    return Err(Failure::Setup(format!(
                        "--workers: expected \"auto\" or a number from 1 to 64, found {w:?}"
                    )));
                }
            };
        }
        if let Some(v) = &self.sockets {
            let parsed = TunnelConfig::from_yaml(&format!("io: {{sockets: {v:?}}}"), None)
                .map_err(|e| Failure::Setup(format!("--sockets: {}", e.0[0].message)))?;
            config.io.sockets = parsed.io.sockets;
        }
        if self.no_offload {
            config.io.offload = false;
        }
        Ok(config)
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The `--interval` of `lametun stats`, in seconds: at least 0.1, and no longer than a
/// [`Duration`](std::time::Duration) holds (`1e20` is an error, not a panic).
fn stats_interval(secs: f64) -> Result<std::time::Duration, Failure> {
    if !(secs.is_finite() && secs >= 0.1) {
        return Err(Failure::Setup("--interval: at least 0.1 seconds".into()));
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| Failure::Setup(format!("--interval: {secs} seconds is too long")))
}

fn fail(f: &Failure) -> ExitCode {
    eprintln!("lametun: {f}");
    ExitCode::from(f.exit_code())
}

/// Parses the process arguments and runs the command. The whole CLI, for `main` and for
/// custom binaries that link extra stages.
pub fn main() -> ExitCode {
    init_logging();
    let args = normalize_args(std::env::args_os());
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match &cli.command {
        Some(Command::CheckConfig { file }) => check_config(file),
        Some(Command::Stages { examples }) => {
            print_stages(*examples);
            Ok(())
        }
        Some(Command::Demo) => crate::demo::run().map_err(Failure::Runtime),
        Some(Command::Genkey { file }) => genkey(file.as_deref()),
        Some(Command::Stats {
            addr,
            watch,
            interval,
        }) => stats_interval(*interval).and_then(|interval| {
            lametun_stage_stats::run_stats_command(addr, *watch, interval)
                .map_err(|e| Failure::Setup(format!("stats: {e}")))
        }),
        None => cli.tunnel_config().and_then(|config| {
            if config.peer.role.is_none() {
                return Err(Failure::Setup(run::NO_ROLE.into()));
            }
            run::run(config)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(&f),
    }
}

/// `lametun genkey [FILE]`: a new key on stdout, or in a new file only its owner can read.
fn genkey(file: Option<&Path>) -> Result<(), Failure> {
    let key = lametun_stage_chacha20poly1305::generate_key();
    let Some(path) = file else {
        println!("{key}");
        return Ok(());
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Failure::Setup(format!(
                "{}: cannot create the key file: {e}",
                path.display()
            ))
        })?;
    writeln!(f, "{key}").map_err(|e| Failure::Setup(format!("{}: {e}", path.display())))?;
    eprintln!(
        "wrote a new key to {} (mode 0600); copy it to the other end over a secure channel",
        path.display()
    );
    Ok(())
}

fn print_stages(examples: bool) {
    let regs = registry::registrations();
    let width = regs.iter().map(|r| r.type_name.len()).max().unwrap_or(0);
    for r in &regs {
        println!("{:width$}  {}", r.type_name, r.summary);
        if examples && !r.example.is_empty() {
            for line in r.example.lines() {
                println!("{:width$}    {line}", "");
            }
            println!();
        }
    }
    let dups = registry::duplicates();
    if !dups.is_empty() {
        println!("warning: registered more than once: {}", dups.join(", "));
    }
}

/// `lametun check-config FILE`: parse, build every stage, and print what would run.
pub fn check_config(file: &Path) -> Result<(), Failure> {
    let config = load_config(file)?;
    let telemetry = lametun_core::TelemetryHandle::default();
    let pipeline = run::check_pipeline(&config, &telemetry)?;
    println!("config: {}", file.display());
    let (role, outer, note) = match &config.peer.role {
        None => (
            "no role: give -listen or -server HOST on the command line".to_owned(),
            lametun_core::mtu::OuterIp::V4,
            "",
        ),
        Some(Role::Listen) => {
            let bind = crate::udp::bind_address(config.peer.bind, config.peer.port);
            let wildcard6 = bind.is_ipv6() && bind.ip().is_unspecified();
            let outer = if bind.is_ipv4() || wildcard6 {
                lametun_core::mtu::OuterIp::V4
            } else {
                lametun_core::mtu::OuterIp::V6
            };
            (
                format!("listen on {bind}, learn the peer from its datagrams"),
                outer,
                if wildcard6 {
                    " (lowered by 20 while the peer is an IPv6 address)"
                } else {
                    ""
                },
            )
        }
        Some(Role::Connect(host)) => {
            let literal = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .ok();
            let outer = match literal {
                Some(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                    lametun_core::mtu::OuterIp::V6
                }
                _ => lametun_core::mtu::OuterIp::V4,
            };
            (
                format!("connect to {host} port {}", config.peer.port),
                outer,
                if literal.is_none() {
                    " (IPv4 outer header assumed for a host name)"
                } else {
                    ""
                },
            )
        }
    };
    println!("role: {role}");
    let addresses: Vec<String> = config
        .device
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "device: {}{}, packet info {}",
        config.device.name,
        if addresses.is_empty() {
            String::new()
        } else {
            format!(", address {}", addresses.join(" "))
        },
        if config.device.packet_info {
            "on (Go lametun wire format)"
        } else {
            "off"
        }
    );
    if !config.device.routes.is_empty() {
        let routes: Vec<String> = config
            .device
            .routes
            .iter()
            .map(ToString::to_string)
            .collect();
        println!("routes: {}", routes.join(" "));
    }
    if pipeline.is_empty() {
        println!("pipeline: passthrough (empty)");
    } else {
        println!("pipeline (outbound top to bottom, inbound bottom to top):");
        for (i, s) in pipeline.describe().iter().enumerate() {
            println!(
                "  [{i}] {:<18} overhead {:>2}+{:<2} {}",
                s.label, s.overhead.head, s.overhead.tail, s.details
            );
        }
    }
    let (mtu, budget) = run::mtu(&config, outer, &pipeline)?;
    match config.device.mtu {
        MtuSetting::Auto => println!("mtu: auto: {budget}{note}"),
        MtuSetting::Fixed(_) => println!("mtu: {mtu} (set); auto would be {budget}{note}"),
    }
    println!(
        "keepalive: {}",
        config
            .peer
            .keepalive()
            .map_or("off".to_owned(), |d| humantime_secs(d.as_secs()))
    );
    println!("ok");
    Ok(())
}

fn humantime_secs(s: u64) -> String {
    if s % 60 == 0 && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        normalize_args(list.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            args(&[
                "lametun",
                "-listen",
                "-port=4000",
                "-device",
                "tun1",
                "--server",
                "h",
                "-h",
                "-x"
            ]),
            [
                "lametun",
                "--listen",
                "--port=4000",
                "--device",
                "tun1",
                "--server",
                "h",
                "-h",
                "-x"
            ]
        );
        assert_eq!(
            args(&["lametun", "--", "-listen"]),
            ["lametun", "--", "-listen"]
        );
    }

    fn parse(list: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(list.iter().map(OsString::from)))
    }

    #[test]
    fn the_articles_command_lines_parse() {
        let c = parse(&["lametun", "-listen"])
            .unwrap()
            .tunnel_config()
            .unwrap();
        assert_eq!(c.peer.role, Some(Role::Listen));
        assert_eq!(c.peer.port, 1234);
        assert_eq!(c.device.name, "tun0");
        let c = parse(&[
            "lametun",
            "-server",
            "54.219.126.112",
            "-port",
            "4321",
            "-device",
            "tun7",
        ])
        .unwrap()
        .tunnel_config()
        .unwrap();
        assert_eq!(c.peer.role, Some(Role::Connect("54.219.126.112".into())));
        assert_eq!((c.peer.port, c.device.name.as_str()), (4321, "tun7"));
        let c = parse(&["lametun", "-listen=true", "--address", "172.31.255.13/24"])
            .unwrap()
            .tunnel_config()
            .unwrap();
        assert_eq!(c.device.addresses.len(), 1);
        let c = parse(&["lametun", "-listen=false"])
            .unwrap()
            .tunnel_config()
            .unwrap();
        assert_eq!(c.peer.role, None);
    }

    #[test]
    fn listen_and_server_together_is_an_error() {
        let e = parse(&["lametun", "-listen", "-server", "h"])
            .unwrap()
            .tunnel_config()
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("Cannot listen and set server flag"));
    }

    #[test]
    fn booleans_and_empty_server_are_read_as_go_reads_them() {
        let role = |args: &[&str]| parse(args).unwrap().tunnel_config().map(|c| c.peer.role);
        for yes in ["1", "t", "T", "true", "TRUE", "True"] {
            let flag = format!("-listen={yes}");
            assert_eq!(
                role(&["lametun", &flag]).unwrap(),
                Some(Role::Listen),
                "{yes}"
            );
        }
        for no in ["0", "f", "F", "false", "FALSE", "False"] {
            let flag = format!("-listen={no}");
            assert_eq!(role(&["lametun", &flag]).unwrap(), None, "{no}");
        }
        assert!(parse(&["lametun", "-listen=yes"]).is_err());
        // Go's `-server ""` is no server: with -listen it listens, alone it has no role.
        assert_eq!(
            role(&["lametun", "-listen", "-server", ""]).unwrap(),
            Some(Role::Listen)
        );
        assert_eq!(role(&["lametun", "-server", ""]).unwrap(), None);
    }

    #[test]
    fn listen_false_takes_back_the_files_listen() {
        let dir = std::env::temp_dir().join(format!("lametun-cli-lf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(&file, "peer: {listen: true}\n").unwrap();
        let path = file.to_str().unwrap();
        let role = |args: &[&str]| parse(args).unwrap().tunnel_config().unwrap().peer.role;
        assert_eq!(role(&["lametun", "--config", path]), Some(Role::Listen));
        assert_eq!(role(&["lametun", "--config", path, "-listen=false"]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_flag_values_are_errors_with_exit_code_2() {
        for bad in [
            &["lametun", "-listen", "--address", "10.0.0.1/33"][..],
            &["lametun", "-listen", "-device", "a/b"],
            &["lametun", "-listen", "--keepalive", "soon"],
            &["lametun", "-listen", "--workers", "0"],
            &["lametun", "-listen", "--workers", ""],
            &["lametun", "-listen", "--workers", "3,4"],
            &["lametun", "-listen", "--workers", "2}"],
            &["lametun", "-listen", "--workers", "65"],
            &["lametun", "-listen", "--sockets", "many"],
            &["lametun", "-listen", "-port", "0"],
        ] {
            let e = parse(bad).unwrap().tunnel_config().unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            if bad[2] == "--workers" {
                assert_eq!(
                    e.to_string(),
                    format!(
                        "--workers: expected \"auto\" or a number from 1 to 64, found {:?}",
                        bad[3]
                    )
                );
            }
        }
        let c = parse(&["lametun", "-listen", "--workers", "3"])
            .unwrap()
            .tunnel_config()
            .unwrap();
        assert_eq!(c.io.workers, Workers::Count(3));
        assert!(parse(&["lametun", "-port", "70000"]).is_err());
    }

    #[test]
    fn stats_interval_is_checked_not_a_panic() {
        assert_eq!(
            stats_interval(2.0).unwrap(),
            std::time::Duration::from_secs(2)
        );
        for bad in [0.05, -1.0, f64::NAN, f64::INFINITY, 1e20, 1e300] {
            let e = stats_interval(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("--interval"), "{bad}: {e}");
        }
    }

    #[test]
    fn keepalive_takes_a_number_of_seconds_as_its_message_says() {
        let c = parse(&["lametun", "-server", "h", "--keepalive", "30"])
            .unwrap()
            .tunnel_config()
            .unwrap();
        assert_eq!(c.peer.keepalive(), Some(std::time::Duration::from_secs(30)));
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("lametun-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            "peer: {listen: true, port: 5000}\ndevice: {name: lt9}\n",
        )
        .unwrap();
        let c = parse(&[
            "lametun",
            "--config",
            file.to_str().unwrap(),
            "-server",
            "192.0.2.1",
            "-port",
            "6000",
        ])
        .unwrap()
        .tunnel_config()
        .unwrap();
        assert_eq!(c.peer.role, Some(Role::Connect("192.0.2.1".into())));
        assert_eq!(c.peer.port, 6000);
        assert_eq!(c.device.name, "lt9");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
