//! The typed contracts of every wire between two Roost parts, used by both ends: the
//! orchestrator's HTTP API ([`status`], and its log lines: [`logs`]), the control plane's
//! admin API ([`admin`]), asynchronous calls ([`calls`]), the management API on the public port ([`system`]) and what
//! goes through Redis ([`redis`]; the key names are in [`crate::keys`]).
//!
//! A change to a type here changes both sides at once; the Lua gate, the one part not in
//! Rust, spells its side out by hand and names the type it follows.

pub mod admin;
pub mod calls;
pub mod logs;
pub mod redis;
pub mod status;
pub mod system;
