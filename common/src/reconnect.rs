//! A service's Redis connection at start: tried with the doubling back-off until Redis
//! answers or the service is told to stop.

use crate::backoff::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A connection manager over `client` (each command waits at most `response_timeout`),
/// once Redis answers; `None` when `shutdown` comes first.
pub async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<redis::aio::ConnectionManager> {
    let mut backoff = Backoff::default();
    loop {
        let delay = backoff.next_delay();
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(response_timeout));
        match client.get_connection_manager_with_config(config).await {
            Ok(conn) => return Some(conn),
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "Redis not reachable yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
