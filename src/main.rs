//! The `lametun` binary: the command line of the library, with the bundled stages.

fn main() -> std::process::ExitCode {
    lametun::main()
}
