//! Roost's shared library: the names and helpers that every Roost service agrees on.
//!
//! # Layout
//!
//! - [`auth`]: the control token the admin APIs require (an axum layer), and Redis's
//!   password read from a file.
//! - [`backoff`]: the doubling retry delay of every reconnect loop.
//! - [`clock`]: Unix milliseconds.
//! - [`env`]: every `ROOST_` environment variable the parts share, and the old spellings still read.
//! - [`hash`]: a stable hash for resource versions and definition fingerprints.
//! - [`keys`]: every Redis key and channel Roost uses, in one place, so the gate, the
//!   orchestrator, the statsd-listener and the control plane cannot drift apart.
//! - [`naming`]: function names, and the Envoy cluster name that belongs to each.
//! - [`net`]: free ports.
//! - [`process`]: signals and the stop of a child process (SIGTERM, grace, SIGKILL).
//! - [`reconnect`]: a service's Redis connection at start, retried until Redis answers.
//! - [`spec`]: the function definitions (`global-function-definition.yml`), parsed and validated.
//! - [`statsd`]: a service's own statsd metrics to the statsd-listener, found again by name.
//! - [`telemetry`]: tracing setup shared by the binaries.
//! - [`shutdown`]: one way to wait for SIGTERM/SIGINT and tell every task to stop.
//! - [`wire`]: the typed contracts of the wires between Roost's parts.
//! - [`scaling`]: the scale-up rule the statsd-listener and the orchestrator share.
//! - [`service`]: a service binary's `main` (tracing, shutdown token, exit code) in one call.

pub mod auth;
pub mod backoff;
pub mod clock;
pub mod env;
pub mod hash;
pub mod keys;
pub mod naming;
pub mod net;
pub mod process;
pub mod reconnect;
pub mod scaling;
pub mod service;
pub mod shutdown;
pub mod spec;
pub mod statsd;
pub mod telemetry;
pub mod wire;
