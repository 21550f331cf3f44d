//! The `roost` command's library: each subcommand is a module, `main.rs` only parses.
//!
//! # Layout
//!
//! - [`up`]: runs the whole platform on this machine as processes, stops it on Ctrl-C.
//! - [`drain`]: drains Envoy (requests in flight finish) before `up` stops it.
//! - [`client`]: talks to the orchestrator's API and the gate.
//! - [`endpoints`]: where the platform answers: flag or variable, `roost up`'s
//!   `endpoints.env`, or the default.
//! - [`logs`]: `roost logs`, a function's output.
//! - [`commands`]: `ls`, `invoke`, `status`, `validate`.
//! - [`calls`]: asynchronous calls: `invoke --async` (and `--wait`), `calls`.
//! - [`manage`]: `deploy`, `rm`, `describe`, `scale` (the management API) and `new`.
//! - [`load`]: the load generator that prints requests per second, errors, latency and
//!   replicas every second.

pub mod calls;
pub mod client;
pub mod commands;
pub mod drain;
pub mod endpoints;
pub mod load;
pub mod logs;
pub mod manage;
pub mod up;
