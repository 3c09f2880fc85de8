//! The stage author's guide: how to write a stage of your own, from the trait to a
//! running tunnel. This module holds no code, only this text.
//!
//! A *stage* is one step of lametun's packet chain: it may look at a packet, change
//! it, wrap it, unwrap it, or drop it. Encryption, filtering, counting, compression,
//! obfuscation, traffic shaping, a capture tap: each is a stage, and each is a crate
//! that depends on `lametun-core` alone. Nothing in lametun has to change for a new
//! one; a small binary of your own links it in.
//!
//! The step-by-step version of this guide is the section "Writing a stage" of the
//! lametun README: a toy `xor` stage in a crate of its own (kept compiled and tested as
//! `examples/xor-stage`), from `cargo new` to a running tunnel. The complete worked
//! example is the `examples/custom-stage` crate of the lametun repository: a `pcap`
//! stage that writes what passes to a file Wireshark opens, its own binary, unit
//! tests, and a real tunnel test. The bundled stages are written the same way and are worth
//! reading too: `plugins/chacha20poly1305` (overhead, a nonce counter shared by every
//! thread, a replay window, `on_tick`), `plugins/filter` (parsing IP headers without
//! trusting them, per-rule metrics) and `plugins/stats` (a `background` HTTP
//! endpoint, a socket bound in `build`).
//!
//! - [1. Where a stage sits](#1-where-a-stage-sits)
//! - [2. A complete stage](#2-a-complete-stage)
//! - [3. The trait and its contract](#3-the-trait-and-its-contract)
//! - [4. Overhead, head room and tail room](#4-overhead-head-room-and-tail-room)
//! - [5. Verdicts and drop reasons](#5-verdicts-and-drop-reasons)
//! - [6. Configuration and its errors](#6-configuration-and-its-errors)
//! - [7. Registration, and the linker pitfall](#7-registration-and-the-linker-pitfall)
//! - [8. Time: ticks and timers](#8-time-ticks-and-timers)
//! - [9. Metrics, background tasks, IO](#9-metrics-background-tasks-io)
//! - [10. Keepalives](#10-keepalives)
//! - [11. Testing](#11-testing)
//! - [12. Checklist](#12-checklist)
//!
//! # 1. Where a stage sits
//!
//! ```text
//!            outbound: stages top to bottom as listed in the YAML
//!  TUN ──read──► [stage 1] ► [stage 2] ► … ► [stage n] ──send──► UDP peer
//!  TUN ◄─write── [stage 1] ◄ [stage 2] ◄ … ◄ [stage n] ◄──recv── UDP peer
//!            inbound: the same stages bottom to top
//! ```
//!
//! A packet read from the TUN device (an IPv4 or IPv6 packet) goes through the stages
//! in the order the config lists them, and what the last one leaves is the payload of
//! one UDP datagram. A datagram from the peer goes through them in reverse, and what
//! the first one leaves is written to the TUN device. So a chain reads like the
//! layers of a packet: in `[filter, stats, chacha20poly1305]` the filter and the
//! counters see inner packets, and the cipher is the layer closest to the wire. A
//! stage below an encrypting one sees ciphertext.
//!
//! The core adds what is not a stage's business: the 4-byte packet-information header
//! of the Go lametun's wire format (outside the chain), the IP checks on what the
//! chain delivers inbound, learning the peer's address, and the keepalives.
//!
//! # 2. A complete stage
//!
//! `pad` pads each outbound packet to a multiple of `block` bytes, so that someone
//! watching the encrypted datagrams learns less from their sizes, and takes the
//! padding off on the way in. Put it above the encryption: `[pad, chacha20poly1305]`.
//! Here it is whole: config, stage, registration, and tests, one of them with the
//! conformance kit. (This example runs as a test of `lametun-core`.)
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use lametun_core::testing::Conformance;
//! use lametun_core::{
//!     BuildContext, BuildError, DropReason, Metric, MetricKind, Overhead, PacketBuf,
//!     PacketMeta, Stage, StageConfig, Verdict,
//! };
//! use serde::Deserialize;
//!
//! /// The YAML keys of `- type: pad` (the registry removes `type`).
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)] // a misspelt key is an error, not ignored
//! pub struct PadConfig {
//!     /// Pad to a multiple of this many bytes.
//!     #[serde(default = "default_block")]
//!     block: usize,
//!     /// Packets longer than this are not padded (bulk transfers gain little).
//!     #[serde(default = "default_max_len")]
//!     max_len: usize,
//! }
//!
//! fn default_block() -> usize { 16 }
//! fn default_max_len() -> usize { 65_535 }
//!
//! impl StageConfig for PadConfig {
//!     const TYPE: &'static str = "pad";
//!     const SUMMARY: &'static str = "pad packets to a multiple of `block` bytes";
//!     const EXAMPLE: &'static str = "- type: pad\n  block: 16\n";
//!     type Stage = Pad;
//!
//!     fn build(self, _cx: &BuildContext) -> Result<Pad, BuildError> {
//!         // Check everything, then report every problem at once.
//!         let mut errors = BuildError::default();
//!         if !(1..=256).contains(&self.block) {
//!             // One trailer byte holds the padding length: at most 255.
//!             errors.push("block", format!("{} is not from 1 to 256", self.block));
//!         }
//!         if self.max_len < self.block {
//!             errors.push("max_len", format!("{} is less than block", self.max_len));
//!         }
//!         errors.or_ok(Pad { block: self.block, max_len: self.max_len, padded: AtomicU64::new(0) })
//!     }
//! }
//!
//! /// The stage: one instance serves every worker thread, so state is atomic.
//! pub struct Pad {
//!     block: usize,
//!     max_len: usize,
//!     padded: AtomicU64,
//! }
//!
//! impl Stage for Pad {
//!     fn overhead(&self) -> Overhead {
//!         // The worst case: block - 1 bytes of padding and the length byte, behind.
//!         Overhead::new(0, self.block)
//!     }
//!
//!     fn grows_inbound(&self) -> bool {
//!         false // inbound only strips the padding: no copy needed
//!     }
//!
//!     fn outbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
//!         let len = pkt.len();
//!         let pad = if len <= self.max_len { (self.block - len % self.block) % self.block } else { 0 };
//!         // `append` cannot fail here: the driver reserved the declared tail room.
//!         let tail = pkt.append(pad + 1);
//!         tail[..pad].fill(0);
//!         tail[pad] = pad as u8;
//!         self.padded.fetch_add(pad as u64, Ordering::Relaxed);
//!         Verdict::Pass
//!     }
//!
//!     fn inbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
//!         // What arrives from the network is hostile until proven otherwise: check
//!         // every length before using it, and drop (never panic) when it is wrong.
//!         let Some(trailer) = pkt.strip_back(1) else {
//!             return Verdict::Drop(DropReason::TooShort);
//!         };
//!         let pad = usize::from(trailer[0]);
//!         if pad >= self.block || pkt.strip_back(pad).is_none() {
//!             return Verdict::Drop(DropReason::Malformed);
//!         }
//!         Verdict::Pass
//!     }
//!
//!     fn describe(&self) -> String {
//!         format!("to a multiple of {} bytes, packets up to {} bytes", self.block, self.max_len)
//!     }
//!
//!     fn metrics(&self, out: &mut Vec<Metric>) {
//!         out.push(Metric {
//!             name: "pad_bytes",
//!             help: "padding bytes added to outbound packets",
//!             kind: MetricKind::Counter,
//!             labels: Vec::new(),
//!             value: self.padded.load(Ordering::Relaxed) as f64,
//!         });
//!     }
//! }
//!
//! // One line registers the stage under "pad". At module level, not in a function.
//! lametun_core::register_stage!(PadConfig);
//!
//! # fn main() {
//! // ---- tests (in a real crate: #[test] functions in the stage's crate) ----
//!
//! // A unit test on a packet in memory: 5 bytes become 16, plus the length byte.
//! let pad = PadConfig { block: 16, max_len: 1500 }.build(&BuildContext::default()).unwrap();
//! let meta = PacketMeta::new(std::time::Instant::now(), None);
//! let mut storage = [0u8; 64];
//! let mut pkt = PacketBuf::with_data(&mut storage, 0, b"hello");
//! assert_eq!(pad.outbound(&mut pkt, &meta), Verdict::Pass);
//! assert_eq!(pkt.len(), 17);
//! assert_eq!(pad.inbound(&mut pkt, &meta), Verdict::Pass);
//! assert_eq!(pkt.as_slice(), b"hello");
//!
//! // Hostile input is a drop, not a panic.
//! let mut pkt = PacketBuf::with_data(&mut storage, 0, &[0xff]);
//! assert_eq!(pad.inbound(&mut pkt, &meta), Verdict::Drop(DropReason::Malformed));
//!
//! // Every config problem is reported, each with its key.
//! let reg = lametun_core::registry::find("pad").expect("registered");
//! let err = reg.build_yaml("{block: 300, max_len: 100}", &BuildContext::default()).err().unwrap();
//! assert_eq!(err.to_string(), "block: 300 is not from 1 to 256; max_len: 100 is less than block");
//!
//! // The conformance kit: both ends built from YAML, every rule checked.
//! Conformance::from_yaml("pad", "block: 16").run_all();
//! Conformance::from_yaml("pad", "{block: 256, max_len: 600}").run_all();
//! # }
//! ```
//!
//! # 3. The trait and its contract
//!
//! [`Stage`](crate::Stage) has one method per event, every one with a default, so a
//! stage writes only what it needs:
//!
//! | method | called | for |
//! |---|---|---|
//! | [`overhead`](crate::Stage::overhead) | once, when the chain is built | bytes the stage may add (MTU, buffer room) |
//! | [`grows_inbound`](crate::Stage::grows_inbound) | once, when the chain is built | whether `inbound` may `append` (else no copy) |
//! | [`outbound`](crate::Stage::outbound) | per packet, TUN → peer | look, change, wrap, drop |
//! | [`inbound`](crate::Stage::inbound) | per datagram, peer → TUN | look, change, unwrap, drop |
//! | [`on_tick`](crate::Stage::on_tick) | about once a second | timers, aging, reports |
//! | [`describe`](crate::Stage::describe) | by `check-config` | one line of resolved settings (no secrets) |
//! | [`metrics`](crate::Stage::metrics) | when a snapshot of the counters is taken | the stage's own numbers |
//! | [`background`](crate::Stage::background) | once, at start | a future run beside the tunnel |
//!
//! **`&self`, `Send + Sync`.** One chain serves every thread of the driver: one per
//! TUN queue reading outbound packets, and one per UDP socket receiving inbound ones.
//! So `outbound` and `inbound` run on several threads at once, each with its own
//! packet. A stage keeps changing state in
//! atomics (`AtomicU64::fetch_add` for a counter or a nonce), or behind a lock it
//! holds briefly (a replay window), or in per-thread structures; it never needs
//! `&mut self`. The compiler enforces `Sync`; the conformance kit runs `outbound` on
//! four threads at once.
//!
//! **No IO, no clock, no blocking.** The per-packet methods run on the threads that
//! move every packet; a blocking call there stalls the tunnel. Time arrives as an
//! argument ([`PacketMeta::now`](crate::PacketMeta::now), the `now` of `on_tick`),
//! which also makes a stage testable with any time a test likes. IO belongs in
//! [`StageConfig::build`](crate::StageConfig::build) (read a key file, bind a socket),
//! in `background`, or in a thread of the stage's own fed by a bounded queue (see
//! section 9).
//!
//! **Never panic on input.** `inbound` sees whatever anyone on the internet sends to
//! the port. Every length and offset read from a packet is checked before use; a bad
//! packet is a [`Verdict::Drop`](crate::Verdict::Drop).
//!
//! # 4. Overhead, head room and tail room
//!
//! A [`PacketBuf`](crate::PacketBuf) is a packet inside a larger buffer, with *head
//! room* in front and *tail room* behind. Growing or shrinking a packet moves an
//! index; the bytes do not move (the kernel's `sk_buff` works so):
//!
//! ```text
//!  [ head room | packet ............ | tail room ]
//!   prepend(n) grows it in front        append(n) grows it behind
//!   strip_front(n) shrinks it in front  strip_back(n) shrinks it behind
//! ```
//!
//! The driver sizes the room from what the stages declare in
//! [`overhead`](crate::Stage::overhead): `Overhead::new(head, tail)`, the most the
//! stage adds *on the way out* in front and behind (a nonce in front, a 16-byte tag
//! behind: `Overhead::new(12, 16)`). The same sum lowers the TUN MTU, so that a
//! full-size packet with every stage's additions still fits one datagram on the path
//! (see [`mtu`](crate::mtu)). Hence the rules:
//!
//! - **Declare the worst case**, over every packet size, and never add more. `prepend`
//!   and `append` panic when the room is missing: that is a bug in the declaration,
//!   not bad input. A debug build also asserts after each stage that the growth stayed
//!   within the declaration.
//! - **Never use room just because it is there.** In a chain, the buffer holds the
//!   room of every stage; a stage that pads "as far as the tail room goes" would eat
//!   another stage's room and break the MTU. The kit checks this.
//! - **Keep the worst case small.** Every byte of overhead is a byte less of MTU for
//!   every packet. A stage that would add 1000 bytes to small packets only still costs
//!   1000 bytes of MTU: the declaration is static.
//! - **Inbound, shrink**: take off what `outbound` added with `strip_front` and
//!   `strip_back`, which return `None` (a drop, not a panic) when the datagram is too
//!   short. A stage whose `inbound` never appends (never moves the end of the packet
//!   further back than where it got it) says so:
//!   `fn grows_inbound(&self) -> bool { false }`, and the driver runs the chain on
//!   the datagrams where the socket received them, with no room behind them (one copy
//!   per packet saved). A stage that grows packets on the way in (decompression) keeps
//!   the default, `true`, and may `append` up to the MTU; there is no head room to
//!   count on inbound.
//! - Don't assume where the packet starts in the buffer: use the `PacketBuf` methods,
//!   never absolute offsets.
//!
//! # 5. Verdicts and drop reasons
//!
//! Each per-packet method returns a [`Verdict`](crate::Verdict): `Pass` hands the
//! packet on, `Drop(reason)` ends its journey. A drop is normal operation, not an
//! error: the pipeline counts it per stage, per direction and per
//! [`DropReason`](crate::DropReason), logs it at `debug` level, rate-limited, and goes
//! on. So a stage does not log per packet (an attacker controls how many there are).
//!
//! Pick the most specific reason, because it is what an operator reads in the
//! counters: `TooShort` (shorter than the header the stage expects), `Malformed`
//! (inconsistent), `BadTag` (authentication failed), `Replayed`, `Filtered` (a rule
//! said no), `TooLarge`, … and `DropReason::Custom("snake_case_name")` for anything
//! else.
//!
//! # 6. Configuration and its errors
//!
//! A pipeline entry is flat YAML: `- type: NAME` followed by that stage's own keys.
//! The registry removes `type` and deserializes the rest into the stage's config
//! struct with serde, then calls [`StageConfig::build`](crate::StageConfig::build):
//!
//! - `#[serde(deny_unknown_fields)]` on the config struct, always: a misspelt key is an
//!   error that names it. Give every optional key a `#[serde(default)]`, so that
//!   `- type: NAME` alone works when sensible defaults exist.
//! - Types do the first checks (a `u16` port, an enum of allowed words). What types
//!   cannot say (ranges, keys that depend on each other, files that must exist) is
//!   checked in `build`, and **every** problem is collected with
//!   [`BuildError::push`](crate::BuildError::push) under its key, then returned at once
//!   ([`BuildError::or_ok`](crate::BuildError::or_ok)). lametun prints them with the
//!   file, the line and the stage:
//!
//!   ```text
//!   lametun.yaml:5: pipeline[0] (pcap): snaplen: 0 is not from 1 to 262144
//!   lametun.yaml:6: pipeline[0] (pcap): max_size: "huge" is not a size such as 100 MiB
//!   ```
//! - Paths: resolve them with
//!   [`BuildContext::resolve_path`](crate::BuildContext::resolve_path), so that a path
//!   in a config file is relative to that file, not to wherever lametun was started.
//! - **Dry runs.** `lametun check-config` builds every stage to check it, maybe while a
//!   tunnel runs with the same file. When [`BuildContext::dry_run`](crate::BuildContext::dry_run)
//!   is true, check all you can (the directory exists, the key file is readable) but
//!   change nothing: create or truncate no file, bind no socket, start no thread.
//! - Set [`StageConfig::EXAMPLE`](crate::StageConfig::EXAMPLE): a YAML list with one
//!   entry of your type. The kit checks that it parses.
//!
//! # 7. Registration, and the linker pitfall
//!
//! `lametun_core::register_stage!(MyConfig);`, once, at module level of the stage
//! crate, registers the type under `MyConfig::TYPE`. It expands to
//! `inventory::submit!` through `lametun-core`, so the stage crate needs no
//! `inventory` dependency. The registrations of every linked crate are collected
//! before `main` runs; `lametun stages` lists them.
//!
//! **The pitfall: a crate that no code refers to is not linked.** rustc links a
//! dependency only if the code uses it, and a registration is not a use. A stage crate
//! listed in `Cargo.toml` but never named in code compiles fine, and is silently left
//! out of the binary together with its registration; the binary then says
//! `unknown stage type "mystage"`. The fix is one line in every binary that needs the
//! stage:
//!
//! ```text
//! // src/main.rs of your binary
//! use my_stage as _; // links the crate, and with it its register_stage!
//!
//! fn main() -> std::process::ExitCode {
//!     lametun::main() // the whole lametun command line
//! }
//! ```
//!
//! The reference may be indirect (a crate that uses a crate that uses the stage), and
//! it is needed in **every** binary: your `main.rs`, and each integration test in
//! `tests/` (each is a crate of its own), if it looks the stage up by name. The lib's
//! own unit tests are the crate itself and need nothing. To make a missing link loud,
//! test it: `assert!(lametun_core::registry::names().contains(&"mystage"))` in an
//! integration test, and run `my-binary stages` in another. Two crates registering
//! the same name is a start-up error.
//!
//! An unknown `type` in a config lists what the binary knows and hints that a stage
//! from another crate needs a binary that links it.
//!
//! # 8. Time: ticks and timers
//!
//! A stage never reads the clock. Each packet carries the time its batch was read
//! ([`PacketMeta::now`](crate::PacketMeta::now)), and
//! [`on_tick`](crate::Stage::on_tick) is called about once a second with the current
//! time, for timers, aging, rekeying, reports. Store instants as milliseconds since an
//! epoch in an atomic (or an `Instant` behind a short lock), and compare with
//! `saturating_duration_since`: a tick can be a little older than a packet another
//! thread stamped. Because time is an argument, a test drives a timer through an hour
//! in a microsecond:
//!
//! ```
//! use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
//! use std::time::{Duration, Instant};
//! use lametun_core::{PacketBuf, PacketMeta, Stage, Verdict};
//!
//! /// Warns once when nothing arrived from the peer for `quiet`.
//! struct Watchdog { epoch: Instant, quiet: Duration, last_ms: AtomicU64, warned: AtomicBool }
//!
//! impl Stage for Watchdog {
//!     fn inbound(&self, _pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
//!         let ms = meta.now.saturating_duration_since(self.epoch).as_millis() as u64;
//!         self.last_ms.fetch_max(ms, Ordering::Relaxed);
//!         self.warned.store(false, Ordering::Relaxed);
//!         Verdict::Pass
//!     }
//!     fn on_tick(&self, now: Instant) {
//!         let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
//!         if now.saturating_duration_since(last) > self.quiet && !self.warned.swap(true, Ordering::Relaxed) {
//!             tracing::warn!("nothing from the peer for {:?}", self.quiet);
//!         }
//!     }
//! }
//!
//! let t0 = Instant::now();
//! let w = Watchdog { epoch: t0, quiet: Duration::from_secs(60), last_ms: AtomicU64::new(0), warned: AtomicBool::new(false) };
//! w.on_tick(t0 + Duration::from_secs(30));
//! assert!(!w.warned.load(Ordering::Relaxed));
//! w.on_tick(t0 + Duration::from_secs(61)); // an hour of waiting, without waiting
//! assert!(w.warned.load(Ordering::Relaxed));
//! ```
//!
//! # 9. Metrics, background tasks, IO
//!
//! **Metrics.** The core counts passes and drops of every stage by reason already.
//! [`metrics`](crate::Stage::metrics) adds the stage's own numbers: a
//! [`Metric`](crate::Metric) with a snake_case `name` without the `lametun_` prefix
//! (`pad_bytes`, `filter_rule_drops` with a `rule` label), a one-line `help`, and a
//! kind: a `Counter` only goes up, a `Gauge` moves both ways. Read atomics there; it
//! runs on whatever thread asks (the stats stage, the shutdown summary).
//!
//! **Background tasks.** [`background`](crate::Stage::background) returns a future
//! the driver runs on its async runtime beside the tunnel: an HTTP endpoint, a
//! periodic export. It is called once, after the chain is built; the future is
//! dropped at shutdown *without a last poll*, so it must not hold data that has to be
//! written out. Bind sockets in `build` (a port in use is then a start-up error, and
//! `check-config` can skip it in a dry run), keep them in a `Mutex<Option<_>>` and
//! `take()` them in `background`, since it only gets `&self`.
//!
//! **IO on the side.** A stage that must write per packet (a capture, a log of
//! flows) copies what it needs into a bounded queue that never blocks
//! (`std::sync::mpsc::sync_channel` and `try_send`), counts what did not fit, and
//! lets a thread of its own write, flushing when the queue runs empty. Dropping the
//! stage (at shutdown) closes the queue and joins the thread, so the tail is written.
//! `examples/custom-stage` does exactly this.
//!
//! # 10. Keepalives
//!
//! When a tunnel is idle, lametun sends a keepalive: an **empty** inner packet that
//! crosses the whole chain, so that a stage that authenticates datagrams
//! authenticates keepalives too, and the peer learns the sender only from a
//! keepalive the chain accepted. Every stage must let the empty packet pass both
//! ways, and deliver it empty: a stage that parses IP headers checks `pkt.is_empty()`
//! first, a stage that wraps packets wraps the empty one like any other. The kit
//! checks it.
//!
//! # 11. Testing
//!
//! Three layers, fastest first:
//!
//! 1. **Unit tests on packets in memory**: build the stage from its config struct (or
//!    from YAML through `registry::find(TYPE).build_yaml`), put bytes in a
//!    [`PacketBuf::with_data`](crate::PacketBuf::with_data), call `outbound` and
//!    `inbound` with a [`PacketMeta`](crate::PacketMeta) of any time you like, and
//!    look at the bytes and the verdict. [`testing::packets`](crate::testing::packets)
//!    crafts valid IPv4 and IPv6 packets (ICMP echo, UDP, TCP SYN). Tamper with the
//!    bytes between the two ends to test the drops.
//! 2. **The conformance kit**, [`testing::Conformance`](crate::testing::Conformance):
//!    `Conformance::from_yaml("mystage", "key: value").run_all()` builds two ends and
//!    checks the round trip both ways, keepalives, the declared overhead for every
//!    packet size up to the MTU, more room than declared, hostile input (random,
//!    truncated, bit-flipped), four threads at once, ticks and metrics, unknown config
//!    keys and the example. Each check is also a method of its own; `from_yaml_pair`
//!    builds ends with different configs, `.mtu(9000)` tests jumbo packets.
//! 3. **A real tunnel.** `lametun::testnet::Bench` (in the `lametun` crate, which your
//!    binary depends on anyway) makes two network namespaces joined by a veth pair and
//!    starts your binary in each; the test pings and sends TCP through the tunnel and
//!    checks the stage's effect. It needs root and `/dev/net/tun`; skip with a message
//!    when `lametun::testnet::unavailable()` says why not. In an integration test,
//!    `env!("CARGO_BIN_EXE_<name>")` is the path of your binary:
//!
//!    ```text
//!    let mut bench = Bench::new("mine", env!("CARGO_BIN_EXE_lametun-mine"))?;
//!    bench.lametun(Side::Server, "server", &["--config", server_yaml])?;
//!    bench.lametun(Side::Client, "client", &["--config", client_yaml])?;
//!    assert!(bench.wait_for_ping(Side::Client, SERVER_TUN, Duration::from_secs(10)));
//!    let t = bench.tcp_transfer(Side::Server, testnet::addr(SERVER_TUN, 5001),
//!                               Side::Client, 10 << 20, Duration::from_secs(60))?;
//!    assert!(t.intact());
//!    ```
//!
//!    The bench ends its processes by PID and deletes its namespaces when dropped,
//!    also when the test fails.
//!
//! # 12. Checklist
//!
//! - [ ] Config struct: `Deserialize`, `#[serde(deny_unknown_fields)]`, defaults.
//! - [ ] `build` checks everything, pushes every problem, resolves paths, and changes
//!   nothing in a dry run.
//! - [ ] `overhead` is the worst case; `outbound` never adds more, whatever the room.
//! - [ ] `inbound` checks every length; bad input is a drop with a specific reason.
//! - [ ] `grows_inbound` is `false` unless `inbound` may `append`.
//! - [ ] The empty packet passes both ways.
//! - [ ] No IO, no clock, no blocking, no per-packet logging in the packet path.
//! - [ ] `register_stage!` once; every binary and integration test that needs the stage
//!   names the crate (`use my_stage as _;`), and a test checks `registry::names()`.
//! - [ ] `Conformance::from_yaml(...).run_all()` in the tests, and a real tunnel test.
//! - [ ] `#![forbid(unsafe_code)]`.
