//! Harness for the gate's tests (gateway-lua against real nginx and Redis).
//!
//! - [`Gate`]: the real gate (`gateway-lua/run.sh`: Debian's nginx with the Lua module,
//!   or OpenResty) on a given port, logging to a file, stopped on drop.
//! - [`FakeEnvoy`]: an HTTP/1.1 server in Envoy's place that records every request and
//!   answers 200, or a 503 the way Envoy or a function would.
//! - [`FakeOrchestrator`]: the orchestrator's side of the Redis contract: hears
//!   `roost:wake`, and after a delay sets the ready key, deletes the wake lock and
//!   publishes the ready notice (or stays mute, or "forgets" the notice).
//! - [`client`]: a small HTTP/1.1 client (fixed or chunked bodies) that still reads the
//!   answer when the server refuses the body early.
//! - [`redis_util`]: commands and call counters of a test Redis.
//!
//! Missing software fails the test with what to install; nothing is skipped.

pub mod client;
pub mod fake;
pub mod gate;
pub mod redis_util;

pub use fake::{Answer, Behaviour, FakeEnvoy, FakeOrchestrator, Seen};
pub use gate::Gate;

use std::future::Future;
use std::time::Duration;

/// Runs a test body with a deadline, so a hung gate fails the test instead of the run.
pub async fn bounded<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not finished within {limit:?}"),
    }
}
