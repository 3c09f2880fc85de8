//! `lametun-pcap`: the whole lametun command line, plus the `pcap` stage.
//!
//! ```text
//! lametun-pcap stages                      # lists pcap beside the bundled stages
//! lametun-pcap check-config configs/pcap-server.yaml
//! sudo lametun-pcap --config configs/pcap-server.yaml
//! ```

#![forbid(unsafe_code)]

// THE LINKER PITFALL. `register_stage!` in the library puts the stage's registration
// into a static that the `inventory` crate collects before `main` runs. But rustc links
// a dependency crate only if some code *refers* to it, and a registration is not a
// reference: without the next line, `lametun_pcap` is listed in Cargo.toml, compiles,
// and is silently left out of this binary, taking its registration with it. The
// binary then answers `unknown stage type "pcap"`. Naming the crate once is enough;
// `as _` imports nothing. (Checked with rustc 1.95: delete the line and
// `lametun-pcap stages` no longer lists pcap; `tests/tunnel.rs` checks that it does.)
// The same holds for every other binary that needs the stage, integration tests
// included: see the top of `tests/tunnel.rs`.
use lametun_pcap as _;

fn main() -> std::process::ExitCode {
    lametun::main()
}
