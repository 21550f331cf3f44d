//! Roost's control plane.
pub mod ads;
pub mod model;
pub mod resources;
