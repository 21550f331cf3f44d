//! The `statsd-listener` binary: parses its configuration, sets up tracing, receives
//! until SIGTERM or SIGINT.

use clap::Parser;
use roost_statsd_listener::{start, Config};
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
            tracing::error!(error = %e, "statsd listener failed to start");
            eprintln!("statsd-listener: {e}");
            ExitCode::FAILURE
        }
    }
}
