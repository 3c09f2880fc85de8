//! lametun's integration tests, in one binary (faster to link than one per file).
//!
//! - `configs`: every file in `configs/` loads; bad files give the messages they must.
//! - `cli`: the binary's exit codes and messages, without a device.
//! - `filter`: the filter stage's example configs on real devices, in namespaces.
//! - `netns`: real tunnels between network namespaces (needs root and /dev/net/tun; each
//!   test prints why it skips otherwise, and fails instead when
//!   `LAMETUN_REQUIRE_NETNS=1`, as in CI).
//! - `encrypted`: the same for the `chacha20poly1305` stage, with an attacker on the
//!   link who captures (tcpdump), replays and forges datagrams.
//! - `stats`: the stats stage's endpoint and table against real traffic (namespaces too).

mod cli;
mod configs;
mod encrypted;
mod fastpath;
mod filter;
mod netns;
mod readme;
mod stats;

/// The binary under test.
pub(crate) fn lametun_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lametun")
}

/// The stage types the `lametun` binary must have registered (a missing `use crate as _`
/// in `src/lib.rs` makes one vanish silently; this catches it).
pub(crate) const BUNDLED_STAGES: &[&str] = &["chacha20poly1305", "filter", "passthrough", "stats"];

#[test]
fn the_bundled_stages_are_all_registered() {
    // The library links them; this test binary links the library.
    let _ = lametun_core::registry::names;
    assert_eq!(lametun_core::registry::names(), BUNDLED_STAGES);
    assert!(lametun_core::registry::duplicates().is_empty());
}
