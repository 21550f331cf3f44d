//! The control plane's configuration: command-line flags, each also read from a
//! `ROOST_...` environment variable.

use roost_common::env;
use roost_common::telemetry::LogFormat;
use std::net::SocketAddr;

/// Roost's xDS control plane.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "control-plane",
    version,
    about = "Roost's xDS control plane: serves Envoy's listeners, routes, clusters and endpoints over ADS (state of the world and delta), with an HTTP/JSON admin API."
)]
pub struct Config {
    /// Address of the gRPC ADS server that Envoy connects to.
    #[arg(long, env = env::XDS_BIND, default_value = "0.0.0.0:18000")]
    pub xds_bind: SocketAddr,

    /// Address of the HTTP/JSON admin API.
    #[arg(long, env = env::ADMIN_BIND, default_value = "0.0.0.0:18001")]
    pub admin_bind: SocketAddr,

    /// Where Envoy's public listener binds (ip:port), pushed to Envoy; default: the
    /// deprecated --listener-address and --listener-port below, 0.0.0.0:10000.
    #[arg(long, env = env::LISTENER_BIND)]
    pub listener_bind: Option<SocketAddr>,

    /// Deprecated (use --listener-bind / ROOST_LISTENER_BIND): IP address of Envoy's
    /// public listener, read when --listener-bind is unset.
    #[arg(long, env = env::old::LISTENER_ADDRESS, default_value = "0.0.0.0")]
    pub listener_address: std::net::IpAddr,

    /// Deprecated (use --listener-bind / ROOST_LISTENER_BIND): port of Envoy's public
    /// listener, read when --listener-bind is unset.
    #[arg(long, env = env::old::LISTENER_PORT, default_value_t = 10000, value_parser = clap::value_parser!(u16).range(1..))]
    pub listener_port: u16,

    /// Where Envoy's public listener binds (ip:port): the platform's entry, which sends a
    /// function's requests straight to its replicas while it has one and everything else
    /// to the gate (--gate-addr). Unset: no public listener (the gate is the entry).
    #[arg(long, env = env::PUBLIC_BIND, requires = "gate_addr")]
    pub public_bind: Option<SocketAddr>,

    /// The gate behind the public listener, `host:port` (a host name is looked up by
    /// Envoy, every second).
    #[arg(long, env = env::GATE_ADDR, requires = "public_bind", value_parser = parse_host_port)]
    pub gate_addr: Option<(String, u16)>,

    /// The orchestrator's API, `host:port`: the public listener sends the management
    /// API's paths (`/system/...`) there. Unset: they go to the gate (404).
    #[arg(long, env = env::SYSTEM_ADDR, requires = "public_bind", value_parser = parse_host_port)]
    pub system_addr: Option<(String, u16)>,

    /// The async worker, `host:port`: the public listener sends asynchronous calls
    /// (`/async/...`, `/async-function/...`, a call's status at `/async/calls/<id>`) there.
    /// Unset: they go to the gate (404).
    #[arg(long, env = env::ASYNC_ADDR, requires = "public_bind", value_parser = parse_host_port)]
    pub async_addr: Option<(String, u16)>,

    /// The gate's body limit (bytes, or 64k, 10m): the public listener sends a request
    /// declaring a larger body to the gate, which answers 413.
    #[arg(long, env = env::GATE_MAX_BODY, default_value = "10m", value_parser = parse_body_limit)]
    pub gate_max_body: u64,

    /// Timeout for Envoy to connect to a function replica, in milliseconds (at most 1000).
    #[arg(long, env = env::CONNECT_TIMEOUT_MS, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub connect_timeout_ms: u64,

    /// Retries of a request that never reached a replica (connect failure, refused stream,
    /// reset before the request was sent), each on another replica when there is one.
    #[arg(long, env = env::RETRIES, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,

    /// Redis URL where the model is saved so a restarted control plane restores it (for
    /// example redis://redis:6379/). Without it, state lives in memory only and the
    /// orchestrator must register everything again after a restart.
    #[arg(long, env = env::REDIS_URL)]
    pub redis_url: Option<String>,

    /// A file holding Redis's password, put into --redis-url (compose's secrets volume).
    #[arg(long, env = env::REDIS_PASSWORD_FILE)]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// The control token every admin API request but GET /healthz must carry
    /// (`Authorization: Bearer`); without one (nor --control-token-file) the admin API is
    /// open to anyone who can reach it.
    #[arg(long, env = env::CONTROL_TOKEN, hide_env_values = true)]
    pub control_token: Option<String>,

    /// A file holding the control token, read when --control-token is unset.
    #[arg(long, env = env::CONTROL_TOKEN_FILE)]
    pub control_token_file: Option<std::path::PathBuf>,

    /// How long to keep trying to reach Redis at start-up before giving up, in seconds.
    /// The xDS server does not start before the saved state is loaded, so Envoy never
    /// gets an empty configuration from a control plane that has merely restarted.
    #[arg(long, env = env::REDIS_STARTUP_TIMEOUT_S, default_value_t = 60)]
    pub redis_startup_timeout_s: u64,

    /// Envoys that must be connected and in sync before a wait for ACK succeeds.
    #[arg(long, env = env::MIN_ENVOYS, default_value_t = 1)]
    pub min_envoys: usize,

    /// Default time a change waits for every Envoy's ACK, in milliseconds.
    #[arg(long, env = env::SYNC_TIMEOUT_MS, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=60000))]
    pub sync_timeout_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not host:port: give an address like gate:8081 or 127.0.0.1:8081");
    let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', ' ']) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn parse_body_limit(s: &str) -> Result<u64, String> {
    roost_common::spec::parse_size(s).ok_or_else(|| format!("{s:?} is not a size: give bytes, or a number with k or m (64k, 10m)"))
}

impl Config {
    /// Envoy as the public entry, when a public listener is configured.
    pub fn public_entry(&self) -> Option<crate::resources::PublicEntry> {
        let (bind, (gate_host, gate_port)) = (self.public_bind?, self.gate_addr.clone()?);
        Some(crate::resources::PublicEntry {
            bind,
            gate_host,
            gate_port,
            max_body: self.gate_max_body,
            system: self.system_addr.clone(),
            async_worker: self.async_addr.clone(),
        })
    }

    /// Where Envoy's public listener binds: `listener_bind`, else the deprecated address
    /// and port.
    pub fn listener(&self) -> SocketAddr {
        self.listener_bind.unwrap_or(SocketAddr::new(self.listener_address, self.listener_port))
    }

    /// A configuration for tests: every port chosen by the system, in-memory state.
    pub fn for_tests() -> Config {
        Config {
            xds_bind: "127.0.0.1:0".parse().expect("literal address"),
            admin_bind: "127.0.0.1:0".parse().expect("literal address"),
            listener_bind: None,
            listener_address: "127.0.0.1".parse().expect("literal address"),
            listener_port: 10000,
            public_bind: None,
            gate_addr: None,
            system_addr: None,
            async_addr: None,
            gate_max_body: 10 * 1024 * 1024,
            connect_timeout_ms: 250,
            retries: 3,
            redis_url: None,
            redis_password_file: None,
            control_token: None,
            control_token_file: None,
            redis_startup_timeout_s: 10,
            min_envoys: 1,
            sync_timeout_ms: 5000,
            log_format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_parse_and_bad_values_are_refused() {
        let c = Config::try_parse_from(["control-plane"]).unwrap();
        assert_eq!(c.listener_port, 10000);
        assert_eq!(c.connect_timeout_ms, 250);
        let e = Config::try_parse_from(["control-plane", "--connect-timeout-ms", "5000"]).unwrap_err();
        assert!(e.to_string().contains("5000"), "{e}");
        assert!(Config::try_parse_from(["control-plane", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn the_public_entry_needs_both_addresses_and_says_what_is_wrong() {
        let c = Config::try_parse_from(["control-plane"]).unwrap();
        assert_eq!(c.public_entry(), None);
        assert!(Config::try_parse_from(["control-plane", "--public-bind", "0.0.0.0:8080"]).is_err(), "the gate is required with it");
        let c = Config::try_parse_from([
            "control-plane",
            "--public-bind",
            "0.0.0.0:8080",
            "--gate-addr",
            "gate:8081",
            "--gate-max-body",
            "64k",
        ])
        .unwrap();
        let e = c.public_entry().unwrap();
        assert_eq!((e.gate_host.as_str(), e.gate_port, e.max_body), ("gate", 8081, 65536));
        for bad in ["gate", "gate:0", ":8081", "gate:http"] {
            let err = Config::try_parse_from(["control-plane", "--public-bind", "0.0.0.0:8080", "--gate-addr", bad]).unwrap_err();
            assert!(err.to_string().contains("host:port"), "{bad}: {err}");
        }
        for flag in ["--system-addr", "--async-addr"] {
            for bad in ["worker", "worker:0", ":8083", "worker:http"] {
                let err = Config::try_parse_from(["control-plane", "--public-bind", "0.0.0.0:8080", "--gate-addr", "gate:8081", flag, bad])
                    .unwrap_err();
                assert!(err.to_string().contains("host:port"), "{flag} {bad}: {err}");
            }
            let err = Config::try_parse_from(["control-plane", flag, "worker:8083"]).unwrap_err();
            assert!(err.to_string().contains("--public-bind"), "{flag} wants the public listener: {err}");
        }
        let c = Config::try_parse_from([
            "control-plane",
            "--public-bind",
            "0.0.0.0:8080",
            "--gate-addr",
            "gate:8081",
            "--system-addr",
            "orchestrator:18002",
            "--async-addr",
            "async-worker:8083",
        ])
        .unwrap();
        let e = c.public_entry().unwrap();
        assert_eq!(e.system, Some(("orchestrator".to_string(), 18002)));
        assert_eq!(e.async_worker, Some(("async-worker".to_string(), 8083)));
        let err = Config::try_parse_from(["control-plane", "--gate-max-body", "ten"]).unwrap_err();
        assert!(err.to_string().contains("not a size"), "{err}");
    }

    #[test]
    fn the_listener_is_one_bind_address_and_the_old_pair_still_works() {
        let c = Config::try_parse_from(["control-plane"]).unwrap();
        assert_eq!(c.listener(), "0.0.0.0:10000".parse::<SocketAddr>().unwrap());
        let c = Config::try_parse_from(["control-plane", "--listener-bind", "127.0.0.1:10001"]).unwrap();
        assert_eq!(c.listener(), "127.0.0.1:10001".parse::<SocketAddr>().unwrap());
        let c = Config::try_parse_from(["control-plane", "--listener-address", "127.0.0.2", "--listener-port", "10002"]).unwrap();
        assert_eq!(c.listener(), "127.0.0.2:10002".parse::<SocketAddr>().unwrap());
        let c = Config::try_parse_from(["control-plane", "--listener-port", "10002", "--listener-bind", "127.0.0.1:10003"]).unwrap();
        assert_eq!(c.listener(), "127.0.0.1:10003".parse::<SocketAddr>().unwrap(), "the new name wins");
    }
}
