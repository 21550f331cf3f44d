//! What every function task's executor shares: the runtime, the control plane, Redis,
//! Envoy's admin API, metrics and timing settings.

use crate::control_plane::ControlPlane;
use crate::envoy_admin::EnvoyAdmin;
use crate::metrics::Metrics;
use crate::redis_io::RedisIo;
use crate::runtime::ReplicaRuntime;
use std::sync::Arc;
use std::time::Duration;

/// Timing settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Readiness probe interval.
    pub probe_interval: Duration,
    /// Time a stopping replica gets between SIGTERM and the hard kill.
    pub stop_grace: Duration,
}

/// The shared context.
pub struct Ctx {
    /// Where replicas run.
    pub runtime: Arc<dyn ReplicaRuntime>,
    /// The replicas' and builds' output (the runtime's store).
    pub logs: crate::logs::Logs,
    /// The control plane's admin API.
    pub cp: ControlPlane,
    /// Redis.
    pub redis: RedisIo,
    /// Envoy's admin API, for drains.
    pub envoy: EnvoyAdmin,
    /// Metrics.
    pub metrics: Metrics,
    /// Timings.
    pub settings: Settings,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("runtime", &self.runtime.kind()).field("settings", &self.settings).finish()
    }
}
