//! Each function's asynchronous-call settings as the orchestrator published them, read
//! from Redis at most every [`FRESH_FOR`] per function.

use crate::store::Store;
use roost_common::wire::calls::AsyncSettings;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a reading of a function's settings is used.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// The settings read so far.
#[derive(Debug, Default)]
pub struct SettingsCache {
    read: RwLock<HashMap<String, (AsyncSettings, Instant)>>,
}

impl SettingsCache {
    /// A function's settings: the last reading if fresh, else Redis's (the defaults when
    /// none are published, or Redis does not answer).
    pub async fn get(&self, store: &Store, function: &str) -> AsyncSettings {
        if let Some((s, at)) = self.read.read().unwrap_or_else(|e| e.into_inner()).get(function) {
            if at.elapsed() < FRESH_FOR {
                return *s;
            }
        }
        let read = store.settings(&[function.to_string()]).await;
        let settings = read.ok().and_then(|mut v| v.pop().flatten()).unwrap_or_else(AsyncSettings::fallback);
        self.put(function, settings);
        settings
    }

    /// The last reading of a function's settings, however old.
    pub fn peek(&self, function: &str) -> Option<AsyncSettings> {
        self.read.read().unwrap_or_else(|e| e.into_inner()).get(function).map(|(s, _)| *s)
    }

    /// Records a reading.
    pub fn put(&self, function: &str, settings: AsyncSettings) {
        self.read.write().unwrap_or_else(|e| e.into_inner()).insert(function.to_string(), (settings, Instant::now()));
    }
}
