//! Docker runtime: being written (see helper brief); placeholder so the crate compiles.
