//! Keeps the model in Redis so that a restarted control plane gives Envoy back an equal
//! configuration: loaded once before the xDS server starts, saved after every change.

use crate::model::Model;
use crate::store::Store;
use redis::AsyncCommands;
use roost_common::keys::CONTROL_PLANE_STATE;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the saver checks that Redis still holds the saved state.
const RECHECK: Duration = Duration::from_secs(1);

/// Why the saved state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The Redis URL is malformed.
    #[error("invalid Redis URL {url:?}: {source}; use redis://host:port/")]
    BadUrl {
        /// The URL given.
        url: String,
        /// The parser's complaint.
        source: redis::RedisError,
    },
    /// Redis could not be reached in time.
    #[error("cannot load the saved state from Redis at {url} within {waited:?}: {source}; start Redis, or unset ROOST_REDIS_URL to run without restart recovery")]
    Unreachable {
        /// The URL used.
        url: String,
        /// How long it tried.
        waited: Duration,
        /// The last error.
        source: redis::RedisError,
    },
    /// The saved state is not valid JSON for the model.
    #[error("the state saved in Redis key {CONTROL_PLANE_STATE} is unreadable ({0}); delete the key to start empty, and let the orchestrator re-register its functions")]
    Corrupt(serde_json::Error),
    /// Shut down while waiting.
    #[error("shut down before the saved state was loaded")]
    Cancelled,
}

/// A connection to the Redis holding the state.
#[derive(Clone)]
pub struct StateStore {
    url: String,
    conn: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("url", &self.url).finish()
    }
}

impl StateStore {
    /// Connects to Redis and loads the saved model (`None` if none is saved: a first
    /// start, or a Redis that lost its data), retrying with backoff for up to `wait`.
    pub async fn connect_and_load(
        url: &str,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(StateStore, Option<Model>), PersistError> {
        let client = redis::Client::open(url).map_err(|source| PersistError::BadUrl { url: url.to_string(), source })?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let mut conn = client.get_connection_manager().await?;
                let saved: Option<String> = conn.get(CONTROL_PLANE_STATE).await?;
                Ok::<_, redis::RedisError>((conn, saved))
            };
            let err = match attempt.await {
                Ok((conn, saved)) => {
                    let model: Option<Model> = match saved {
                        Some(json) => Some(serde_json::from_str(&json).map_err(PersistError::Corrupt)?),
                        None => None,
                    };
                    match &model {
                        Some(m) => info!(functions = m.functions.len(), "state loaded from Redis"),
                        None => info!("no saved state in Redis: the model starts empty, unconfirmed (Envoy keeps its configuration until the orchestrator confirms one)"),
                    }
                    let store = StateStore { url: url.to_string(), conn };
                    return Ok((store, model));
                }
                Err(e) => e,
            };
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(PersistError::Unreachable { url: url.to_string(), waited: wait, source: err });
            }
            warn!(error = %err, retry_in = ?backoff, "Redis not reachable yet");
            tokio::select! {
                _ = shutdown.cancelled() => return Err(PersistError::Cancelled),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Saves every new model until shutdown, from the moment the model is confirmed (an
    /// unconfirmed one, partly re-registered, must never be loaded as the truth by a
    /// later start); a failed save is retried with backoff, and only the newest model is
    /// ever written.
    pub async fn run(mut self, store: Arc<Store>, mut confirmed: watch::Receiver<bool>, shutdown: CancellationToken) {
        let mut changes = store.changes();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = confirmed.wait_for(|c| *c) => if r.is_err() { return },
        }
        let mut check = tokio::time::interval(RECHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = true;
        loop {
            if dirty {
                changes.borrow_and_update();
                let (model, _) = store.model();
                if let Err(e) = self.save(&model).await {
                    warn!(error = %e, "cannot save state to Redis; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
                dirty = false;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => match r {
                    Ok(()) => dirty = true,
                    Err(_) => return,
                },
                _ = check.tick() => {
                    // A Redis that lost its data (a new volume, a FLUSHALL) gets the model
                    // back within a second, not only at the next change.
                    let exists: redis::RedisResult<bool> = self.conn.exists(CONTROL_PLANE_STATE).await;
                    if let Ok(false) = exists {
                        warn!("the saved state is gone from Redis; saving it again");
                        dirty = true;
                    }
                }
            }
        }
    }

    async fn save(&mut self, model: &Model) -> redis::RedisResult<()> {
        let json = serde_json::to_string(model).expect("the model always serializes");
        self.conn.set(CONTROL_PLANE_STATE, json).await
    }
}
