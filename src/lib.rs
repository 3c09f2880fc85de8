//! `lametun`: a userspace VPN tunnel for Linux, and the library behind its binary.
//!
//! The tunnel logic lives in [`lametun_core`] and never touches a device or a socket.
//! This crate is its edges: the command line ([`cli`]), the TUN device ([`device`]), the
//! UDP socket ([`udp`]), the threads that move packets between them ([`driver`],
//! [`batch`]), start-up and shutdown ([`run`]), and a bench of network namespaces for
//! the demo and the tests ([`testnet`], [`demo`]), and the allocation count of the
//! forwarding threads ([`alloc`]).
//!
//! It also links the bundled stages. A custom binary that adds a stage of its own is:
//!
//! ```no_run
//! // use my_stage as _;   // links the crate, and with it its register_stage!
//! fn main() -> std::process::ExitCode {
//!     lametun::main()
//! }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod alloc;
pub mod batch;
pub mod cli;
pub mod demo;
pub mod device;
pub mod driver;
pub mod gro;
pub mod run;
pub mod testnet;
pub mod udp;

// Stage crates register themselves with `register_stage!`, but rustc only links a crate
// that some code refers to: without these lines the bundled stages would silently be
// missing from the registry (see `lametun_core::registry`). A test checks the list.
pub use lametun_core;
use lametun_stage_chacha20poly1305 as _;
use lametun_stage_filter as _;
use lametun_stage_stats as _;

/// The whole lametun command line: parse the arguments, run the command, return the
/// exit code. Custom binaries call this after linking their stage crates.
pub fn main() -> std::process::ExitCode {
    cli::main()
}
