//! The `statsd-listener` binary: parses its configuration, sets up tracing, receives
//! until SIGTERM or SIGINT.

use clap::Parser;
use roost_statsd_listener::{start, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log_format = config.log_format;
    roost_common::service::run("statsd-listener", "statsd listener failed", log_format, |shutdown| async move {
        start(config, shutdown).await?.wait().await
    })
    .await
}
