// Names the stage crate once, so that the linker keeps it and its registration.
use lametun_xor as _;

fn main() -> std::process::ExitCode {
    lametun::main() // the whole lametun command line
}
