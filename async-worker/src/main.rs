//! The `async-worker` binary: parses its configuration, sets up tracing, serves and
//! delivers until SIGTERM or SIGINT.

use clap::Parser;
use roost_async_worker::{start, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let log_format = config.log_format;
    roost_common::service::run("async-worker", "async worker failed", log_format, |shutdown| async move {
        start(config, shutdown).await?.wait().await
    })
    .await
}
