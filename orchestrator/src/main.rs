//! The `orchestrator` binary. Not built yet (issue 4): it says so and exits non-zero,
//! so nothing mistakes it for a working orchestrator.

fn main() -> std::process::ExitCode {
    eprintln!("roost orchestrator: not implemented yet (tracked in issue 4)");
    std::process::ExitCode::from(2)
}
