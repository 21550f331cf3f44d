//! The shape every Roost service binary shares: tracing, a shutdown token, the run, and
//! an exit code.

use crate::shutdown::{self, CancellationToken};
use crate::telemetry::{self, LogFormat};
use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Sets up tracing (`info` unless `RUST_LOG` says otherwise), hands `body` a token that
/// SIGTERM or SIGINT cancels, and awaits it. `Ok` is a clean exit; an error is logged
/// with `failure` as the message, printed to stderr as `<name>: <error>`, and exits 1.
///
/// Call it from the binary's `#[tokio::main]`, after parsing the configuration.
pub async fn run<F, Fut, E>(name: &str, failure: &str, log_format: LogFormat, body: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    telemetry::init_tracing(log_format, "info");
    match body(shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{failure}");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
