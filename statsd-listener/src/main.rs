//! The `statsd-listener` binary: placeholder until issue 3 builds it.

fn main() -> std::process::ExitCode {
    eprintln!("roost statsd-listener: not implemented yet (tracked in issue 3)");
    std::process::ExitCode::from(2)
}
