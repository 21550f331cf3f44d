//! The `control-plane` binary: parses its configuration, sets up tracing, serves until
//! SIGTERM or SIGINT.

use clap::Parser;
use roost_control_plane::{run, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log_format = config.log_format;
    roost_common::service::run("control-plane", "control plane failed", log_format, |shutdown| run(config, shutdown)).await
}
