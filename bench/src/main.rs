//! The `roost-bench` command: runs the suite and writes its report.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = roost_bench::Config::parse();
    if let Err(e) = config.check() {
        eprintln!("roost-bench: {e}");
        return ExitCode::from(2);
    }
    let command = std::env::var("ROOST_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    if config.swarm_only() {
        let slice = std::time::Duration::from_millis(config.slice_ms * 3);
        let home = match std::fs::canonicalize(&config.home) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("roost-bench: {}: {e}", config.home.display());
                return ExitCode::FAILURE;
            }
        };
        return match roost_bench::swarm::run(&home, &config.docker_socket, &config.base_image, config.rounds as usize, slice).await {
            Ok(text) => {
                println!("Command: `{command}`\n\n{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("roost-bench: the swarm scenario failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let out = config.out.clone();
    let home = config.home.clone();
    match roost_bench::run(config, command).await {
        Ok((report, complete)) => {
            let text = report.render();
            println!("{text}");
            if out != "-" {
                let path = home.join(&out);
                let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
                if let Err(e) = std::fs::write(&path, roost_bench::report::splice(&doc, &text)) {
                    eprintln!("roost-bench: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("roost-bench: wrote {}", path.display());
            }
            if complete {
                ExitCode::SUCCESS
            } else {
                eprintln!("roost-bench: some scenarios failed; their rows say why");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("roost-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
