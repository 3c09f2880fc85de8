//! The `lametun` binary: the command line of the library, with the bundled stages.

// Counts the forwarding threads' heap allocations for the shutdown summary (none is
// expected on the hot path); otherwise the system allocator.
#[global_allocator]
static ALLOCATOR: lametun::alloc::CountingAllocator = lametun::alloc::CountingAllocator;

fn main() -> std::process::ExitCode {
    lametun::main()
}
