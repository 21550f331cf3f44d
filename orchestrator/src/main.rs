//! The `orchestrator` binary: parses its configuration, sets up tracing, runs until
//! SIGTERM or SIGINT (then stops every replica it started).

use clap::Parser;
use roost_orchestrator::{start, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    roost_common::telemetry::init_tracing(config.log_format, "info");
    let shutdown = roost_common::shutdown::on_signal();
    match start(config, shutdown).await {
        Ok(running) => {
            running.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "orchestrator failed to start");
            eprintln!("orchestrator: {e}");
            ExitCode::FAILURE
        }
    }
}
