//! The `orchestrator` binary: parses its configuration, sets up tracing, runs until
//! SIGTERM or SIGINT (then stops every replica it started).

use clap::Parser;
use roost_orchestrator::{start, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log_format = config.log_format;
    roost_common::service::run("orchestrator", "orchestrator failed", log_format, |shutdown| async move {
        start(config, shutdown).await?.wait().await
    })
    .await
}
