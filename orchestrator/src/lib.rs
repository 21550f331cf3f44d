//! Roost's orchestrator: reconciles the function definitions and the load in Redis against
//! the running replicas. Not built yet: issue 4 tracks it. The crate exists so the
//! workspace has its final shape; it holds no logic.
