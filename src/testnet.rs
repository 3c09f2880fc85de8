//! A bench of two network namespaces joined by a veth pair, for `lametun demo` and the
//! integration tests.
//!
//! ```text
//!  namespace <id>-s                                   namespace <id>-c
//!  ┌───────────────────────────┐                      ┌───────────────────────────┐
//!  │ lametun -listen           │   veth pair          │ lametun -server 10.99.0.1 │
//!  │  tun: 172.31.255.13/24    │ 10.99.0.1  10.99.0.2 │  tun: 172.31.255.7/24     │
//!  │       fd31::13/64         │ fd99::1    fd99::2   │       fd31::7/64          │
//!  └───────────────────────────┘                      └───────────────────────────┘
//! ```
//!
//! Names are unique per process and bench, so benches run in parallel. Everything a
//! bench made is removed when it is dropped, also when a test fails: the processes it
//! started are ended by PID (SIGTERM, then SIGKILL), then the namespaces are deleted.
//! Traffic stays inside the two namespaces.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Underlay address of the server end.
pub const SERVER_UL: &str = "10.99.0.1";
/// Underlay address of the client end.
pub const CLIENT_UL: &str = "10.99.0.2";
/// IPv6 underlay address of the server end.
pub const SERVER_UL6: &str = "fd99::1";
/// IPv6 underlay address of the client end.
pub const CLIENT_UL6: &str = "fd99::2";
/// Tunnel address of the server (the article's).
pub const SERVER_TUN: &str = "172.31.255.13";
/// Tunnel address of the client (the article's).
pub const CLIENT_TUN: &str = "172.31.255.7";
/// IPv6 tunnel address of the server.
pub const SERVER_TUN6: &str = "fd31::13";
/// IPv6 tunnel address of the client.
pub const CLIENT_TUN6: &str = "fd31::7";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why the bench cannot run here, if it cannot (not root, no TUN, no `ip` or `ping`).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, TUN devices)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{tool}` is not installed (package {package})"));
        }
    }
    None
}

/// Which end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The listening end, `<id>-s`.
    Server,
    /// The connecting end, `<id>-c`.
    Client,
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Two namespaces, a veth pair between them, and the processes started in them.
pub struct Bench {
    id: String,
    dir: PathBuf,
    procs: Vec<Proc>,
    /// The lametun binary to run.
    pub binary: PathBuf,
}

fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> io::Result<Output> {
    run_checked(Command::new("ip").args(args))
}

impl Bench {
    /// Creates the namespaces and the veth pair. `tag` (a few letters) helps tell
    /// benches apart in `ip netns list`; `binary` is the lametun to run.
    pub fn new(tag: &str, binary: impl Into<PathBuf>) -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("lt{tag}{:x}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("lametun-bench-{id}"));
        std::fs::create_dir_all(&dir)?;
        let bench = Self {
            id,
            dir,
            procs: Vec::new(),
            binary: binary.into(),
        };
        bench.setup()?;
        Ok(bench)
    }

    fn setup(&self) -> io::Result<()> {
        let (s, c) = (self.ns(Side::Server), self.ns(Side::Client));
        let (vs, vc) = (self.veth(Side::Server), self.veth(Side::Client));
        ip(&["netns", "add", &s])?;
        ip(&["netns", "add", &c])?;
        ip(&[
            "link", "add", &vs, "netns", &s, "type", "veth", "peer", "name", &vc, "netns", &c,
        ])?;
        for (ns, dev, v4, v6) in [
            (&s, &vs, SERVER_UL, SERVER_UL6),
            (&c, &vc, CLIENT_UL, CLIENT_UL6),
        ] {
            self.exec_ok(ns, &["ip", "link", "set", "lo", "up"])?;
            self.exec_ok(ns, &["ip", "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            self.exec_ok(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            )?;
            self.exec_ok(ns, &["ip", "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// The unique id of this bench (prefix of its namespace and device names).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Name of the namespace of `side`.
    pub fn ns(&self, side: Side) -> String {
        format!(
            "{}-{}",
            self.id,
            if side == Side::Server { "s" } else { "c" }
        )
    }

    /// Name of the veth end in `side`'s namespace (at most 15 bytes).
    pub fn veth(&self, side: Side) -> String {
        let n = self.id.len().min(12);
        format!(
            "{}{}",
            &self.id[self.id.len() - n..],
            if side == Side::Server { "s" } else { "c" }
        )
    }

    /// A directory for this bench's files (logs, keys, configs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command that runs `argv` inside namespace `ns`.
    pub fn command(&self, ns: &str, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(argv);
        cmd
    }

    /// Runs `argv` in `side`'s namespace and returns its output (whatever the status).
    pub fn exec(&self, side: Side, argv: &[&str]) -> io::Result<Output> {
        self.command(&self.ns(side), argv).output()
    }

    fn exec_ok(&self, ns: &str, argv: &[&str]) -> io::Result<Output> {
        run_checked(&mut self.command(ns, argv))
    }

    /// Starts `binary args…` in `side`'s namespace as process `name` (stdout and stderr
    /// go to a log file). Returns its PID.
    pub fn spawn(&mut self, side: Side, name: &str, args: &[&str]) -> io::Result<u32> {
        self.spawn_with(side, name, &[], args)
    }

    /// [`Bench::spawn`] as user and group `uid`, without supplementary groups or
    /// capabilities (through `setpriv`), the way a user runs the article's lametun.
    ///
    /// Distributions make `/dev/net/tun` readable and writable by all (0666), which that
    /// needs; some containers make it root's only. So the process gets a mount
    /// namespace of its own with a fresh tmpfs on `/dev/net` (not a `nodev` /tmp) and a
    /// 0666 node of the same device in it.
    pub fn spawn_as(&mut self, uid: u32, side: Side, name: &str, args: &[&str]) -> io::Result<u32> {
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let script = format!(
            "mount -t tmpfs -o mode=755 lametun-test /dev/net && \
             mknod -m 666 /dev/net/tun c 10 200 && \
             exec setpriv {reuid} {regid} --clear-groups \"$@\""
        );
        self.spawn_with(
            side,
            name,
            &["unshare", "--mount", "sh", "-c", &script, "sh"],
            args,
        )
    }

    fn spawn_with(
        &mut self,
        side: Side,
        name: &str,
        prefix: &[&str],
        args: &[&str],
    ) -> io::Result<u32> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let binary = self.binary.to_string_lossy().into_owned();
        let mut argv = prefix.to_vec();
        argv.push(binary.as_str());
        argv.extend_from_slice(args);
        let child = self
            .command(&self.ns(side), &argv)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let pid = child.id();
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(pid)
    }

    /// Starts lametun in `side`'s namespace with `args`, logging to `name.log`.
    pub fn lametun(&mut self, side: Side, name: &str, args: &[&str]) -> io::Result<u32> {
        self.spawn(side, name, args)
    }

    /// The log of process `name` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Whether process `name` still runs (and if not, its exit code).
    pub fn exit_status(&mut self, name: &str) -> Option<Option<i32>> {
        let p = self.procs.iter_mut().find(|p| p.name == name)?;
        match p.child.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }

    /// Waits up to `within` for process `name` to exit by itself: its exit code (as
    /// [`exit_status`](Self::exit_status)), or `None` if it still runs.
    pub fn wait_exit(&mut self, name: &str, within: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(code) = self.exit_status(name) {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends process `name`: SIGTERM, up to 5 s to exit, then SIGKILL. Returns its exit
    /// code if it exited by itself after SIGTERM.
    pub fn stop(&mut self, name: &str) -> Option<i32> {
        let i = self.procs.iter().position(|p| p.name == name)?;
        let mut p = self.procs.remove(i);
        terminate(&mut p.child)
    }

    /// Pings `target` from `side` until `count` replies to echo requests of `size`
    /// payload bytes (with the don't-fragment bit if `dont_fragment`) have come back,
    /// or `count + 2` seconds have passed. Returns the replies received.
    ///
    /// It runs `ping -c count -w count+2`, which sends another request for each one
    /// lost: the result is `count` as long as the losses leave enough time, so it tells
    /// a path that works from one that does not, but does not measure a loss rate.
    pub fn ping(
        &self,
        side: Side,
        target: &str,
        count: u32,
        size: Option<usize>,
        dont_fragment: bool,
    ) -> io::Result<u32> {
        let count_s = count.to_string();
        let deadline = (count + 2).to_string();
        let size_s = size.map(|s| s.to_string());
        let mut argv = vec![
            "ping", "-n", "-q", "-c", &count_s, "-i", "0.2", "-w", &deadline,
        ];
        if let Some(s) = &size_s {
            argv.extend(["-s", s]);
        }
        if dont_fragment {
            argv.extend(["-M", "do"]);
        }
        argv.push(target);
        let out = self.exec(side, &argv)?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "3 packets transmitted, 3 received, 0% packet loss"
        let received = text
            .split(',')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(" received")
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0);
        Ok(received)
    }

    /// Pings `target` from `side` once every 200 ms until it answers or `within` passes.
    pub fn wait_for_ping(&self, side: Side, target: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let out = self.exec(side, &["ping", "-n", "-q", "-c", "1", "-W", "1", target]);
            if out.is_ok_and(|o| o.status.success()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Reads a counter of interface `dev` in `side`'s namespace (e.g. `rx_packets`).
    pub fn link_counter(&self, side: Side, dev: &str, counter: &str) -> io::Result<u64> {
        let out = self.exec(
            side,
            &["cat", &format!("/sys/class/net/{dev}/statistics/{counter}")],
        )?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("no counter {counter} for {dev}")))
    }

    /// Sum of the IP fragmentation counters (FragCreates, FragFails, ReasmReqds, for IPv4
    /// and IPv6) of `side`'s namespace: 0 means no packet was fragmented there.
    pub fn fragment_counters(&self, side: Side) -> io::Result<u64> {
        let mut total = 0;
        let snmp = self.exec(side, &["cat", "/proc/net/snmp"])?;
        let text = String::from_utf8_lossy(&snmp.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Ip:")).collect();
        if lines.len() == 2 {
            let names: Vec<&str> = lines[0].split_whitespace().collect();
            let values: Vec<&str> = lines[1].split_whitespace().collect();
            for (n, v) in names.iter().zip(values) {
                if ["FragCreates", "FragFails", "ReasmReqds"].contains(n) {
                    total += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
        let snmp6 = self.exec(side, &["cat", "/proc/net/snmp6"])?;
        for line in String::from_utf8_lossy(&snmp6.stdout).lines() {
            let mut it = line.split_whitespace();
            if let (Some(name), Some(v)) = (it.next(), it.next())
                && ["Ip6FragCreates", "Ip6FragFails", "Ip6ReasmReqds"].contains(&name)
            {
                total += v.parse::<u64>().unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Sends `bytes` pseudo-random bytes over TCP from `client` to a listener on
    /// `listen` in `server`'s namespace; returns the SHA-256 of what was sent and of what
    /// arrived, and the seconds it took. Runs in this process, in threads that enter the
    /// namespaces. Bounded by `timeout` on every socket operation.
    pub fn tcp_transfer(
        &self,
        server: Side,
        listen: SocketAddr,
        client: Side,
        bytes: usize,
        timeout: Duration,
    ) -> io::Result<Transfer> {
        self.tcp_transfer_from(server, listen, client, None, bytes, timeout)
    }

    /// [`tcp_transfer`](Self::tcp_transfer) from source port `port` of the client
    /// (`None`: any).
    pub fn tcp_transfer_from(
        &self,
        server: Side,
        listen: SocketAddr,
        client: Side,
        port: Option<u16>,
        bytes: usize,
        timeout: Duration,
    ) -> io::Result<Transfer> {
        let server_ns = self.ns(server);
        let client_ns = self.ns(client);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let receiver = std::thread::spawn(move || -> io::Result<[u8; 32]> {
            enter_netns(&server_ns)?;
            let listener = TcpListener::bind(listen)?;
            let _ = ready_tx.send(());
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + timeout;
            let (mut stream, _) = loop {
                match listener.accept() {
                    Ok(s) => break s,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return Err(e),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
            Ok(hash.finish().as_ref().try_into().expect("32 bytes"))
        });
        ready_rx
            .recv_timeout(timeout)
            .map_err(|_| io::Error::other("the TCP receiver did not start"))?;
        let started = Instant::now();
        let sender = std::thread::spawn(move || -> io::Result<[u8; 32]> {
            enter_netns(&client_ns)?;
            let mut stream = match port {
                None => TcpStream::connect_timeout(&listen, timeout)?,
                Some(port) => {
                    let socket = socket2::Socket::new(
                        socket2::Domain::for_address(listen),
                        socket2::Type::STREAM,
                        None,
                    )?;
                    socket.set_reuse_address(true)?;
                    let any: IpAddr = if listen.is_ipv4() {
                        Ipv4Addr::UNSPECIFIED.into()
                    } else {
                        Ipv6Addr::UNSPECIFIED.into()
                    };
                    socket.bind(&SocketAddr::new(any, port).into())?;
                    socket.connect_timeout(&listen.into(), timeout)?;
                    socket.into()
                }
            };
            stream.set_write_timeout(Some(timeout))?;
            let mut rng = lametun_core::testing::Rng::new(0x7cb_5eed);
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 1 << 16];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len());
                rng.fill(&mut buf[..n]);
                stream.write_all(&buf[..n])?;
                hash.update(&buf[..n]);
                left -= n;
            }
            stream.shutdown(std::net::Shutdown::Write)?;
            Ok(hash.finish().as_ref().try_into().expect("32 bytes"))
        });
        let sent = sender
            .join()
            .map_err(|_| io::Error::other("sender panicked"))?;
        let received = receiver
            .join()
            .map_err(|_| io::Error::other("receiver panicked"))?;
        Ok(Transfer {
            sent: sent?,
            received: received?,
            seconds: started.elapsed().as_secs_f64(),
            bytes,
        })
    }

    /// Opens a TCP connection from `client`'s namespace to `target`; `Ok(true)` if it
    /// was accepted (something listens and the path is open), `Ok(false)` on refusal or
    /// timeout.
    pub fn tcp_connects(
        &self,
        client: Side,
        target: SocketAddr,
        timeout: Duration,
    ) -> io::Result<bool> {
        let ns = self.ns(client);
        std::thread::spawn(move || -> io::Result<bool> {
            enter_netns(&ns)?;
            Ok(TcpStream::connect_timeout(&target, timeout).is_ok())
        })
        .join()
        .map_err(|_| io::Error::other("connect thread panicked"))?
    }

    /// Runs `f` on a thread inside `side`'s namespace (sockets it creates live there).
    pub fn in_netns<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let ns = self.ns(side);
        std::thread::spawn(move || -> io::Result<T> {
            enter_netns(&ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in namespace panicked"))?
    }
}

/// What a TCP transfer saw.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// SHA-256 of the bytes sent.
    pub sent: [u8; 32],
    /// SHA-256 of the bytes received.
    pub received: [u8; 32],
    /// Wall-clock seconds from connect to the end of the receive.
    pub seconds: f64,
    /// Bytes sent.
    pub bytes: usize,
}

impl Transfer {
    /// Whether every byte arrived intact.
    pub fn intact(&self) -> bool {
        self.sent == self.received
    }

    /// Throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }
}

/// Moves the calling thread into network namespace `name` (for the rest of its life).
pub fn enter_netns(name: &str) -> io::Result<()> {
    let f = File::open(Path::new("/var/run/netns").join(name))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn terminate(child: &mut Child) -> Option<i32> {
    let pid = Pid::from_raw(child.id() as i32);
    if let Ok(Some(status)) = child.try_wait() {
        return status.code();
    }
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
    None
}

impl Drop for Bench {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for mut p in self.procs.drain(..) {
            terminate(&mut p.child);
            if failing {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {} ({}) last lines ----", p.name, p.log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for side in [Side::Server, Side::Client] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(side)])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses an address for [`Bench::tcp_transfer`]: `ip` and `port`.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("a literal address"), port)
}
