//! The `control-plane` binary: parses its configuration, sets up tracing, serves until
//! SIGTERM or SIGINT.

use clap::Parser;
use roost_control_plane::{run, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    roost_common::telemetry::init_tracing(config.log_format, "info");
    let shutdown = roost_common::shutdown::on_signal();
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "control plane failed");
            eprintln!("control-plane: {e}");
            ExitCode::FAILURE
        }
    }
}
