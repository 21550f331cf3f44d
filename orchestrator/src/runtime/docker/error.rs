//! The Docker runtime's failures: of the engine ([`EngineError`]), of a function's image
//! ([`ImageError`]) and of one replica container ([`ContainerError`]), each with its cause.

use std::net::AddrParseError;
use std::path::PathBuf;
use std::time::Duration;

/// A call to the Docker engine outside a start failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The socket cannot be used at all.
    #[error("cannot use the Docker socket {socket}: {source}; is Docker running, and is the socket mounted?")]
    Socket {
        /// The socket's path.
        socket: String,
        /// The client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine does not answer on the socket.
    #[error("the Docker engine at {socket} does not answer: {source}")]
    Ping {
        /// The socket's path.
        socket: String,
        /// The client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The functions network is missing and cannot be created.
    #[error("cannot create network {network}: {source}")]
    Network {
        /// The network's name.
        network: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A stopped replica's container cannot be removed.
    #[error("cannot remove container {container}: {source}")]
    Remove {
        /// The container's id.
        container: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The containers cannot be listed.
    #[error("cannot list the containers: {0}")]
    List(#[source] bollard::errors::Error),
}

/// A function's image cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The build context (the runtime package and the function's folder) cannot be read.
    #[error("cannot pack {}: {source}", folder.display())]
    Pack {
        /// The function's folder.
        folder: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// An `image` function's image is not on the engine.
    #[error("image {image:?} is not on this Docker engine; load or build it first (no registry is used)")]
    Missing {
        /// The image the function names.
        image: String,
    },
    /// The build stopped: the engine or the client failed.
    #[error("image build failed: {source}; `roost logs` of the function shows the whole build; its last lines:\n{last_output}")]
    Engine {
        /// The client's error.
        #[source]
        source: bollard::errors::Error,
        /// The build's last lines (at most 20), one per line.
        last_output: String,
    },
    /// A build step failed (the engine reports its message): a bad `extra_dependencies`
    /// word, or pip could not reach its index (see the README on proxies).
    #[error("image build failed: {message}; fix the definition (or the folder) and the image is built again; the build's last lines:\n{last_output}")]
    Step {
        /// The engine's message.
        message: String,
        /// The build's last lines (at most 20), one per line.
        last_output: String,
    },
}

/// One replica container cannot be created, started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The function has no prepared image (its prepare failed or has not run).
    #[error("not prepared: the function's image was not built (see the error of its preparation)")]
    NotPrepared,
    /// The engine refused to create the container.
    #[error("create: {0}")]
    Create(#[source] bollard::errors::Error),
    /// The engine refused to start the container.
    #[error("start: {0}")]
    Start(#[source] bollard::errors::Error),
    /// The container cannot be inspected.
    #[error("inspect: {0}")]
    Inspect(#[source] bollard::errors::Error),
    /// The container is not on the functions network.
    #[error("the container has no address on network {network}")]
    NoAddress {
        /// The functions network.
        network: String,
    },
    /// The engine reports an address that is not an IP address.
    #[error("bad container address {address:?}: {source}")]
    BadAddress {
        /// What the engine reported.
        address: String,
        /// Why it does not parse.
        #[source]
        source: AddrParseError,
    },
    /// A spare being warmed up never answered its readiness path.
    #[error("the spare did not answer {path} within {deadline:?}")]
    NotReady {
        /// The readiness path.
        path: String,
        /// How long it was probed.
        deadline: Duration,
    },
    /// A spare being warmed up exited (its function fails at import, or at start): how,
    /// with its last lines.
    #[error("its container exited while it started: {0}")]
    ExitedWarmingUp(String),
    /// The engine refused to pause a warmed-up spare.
    #[error("pause: {0}")]
    Pause(#[source] bollard::errors::Error),
}
