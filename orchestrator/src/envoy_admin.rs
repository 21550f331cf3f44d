//! Reads Envoy's admin API to learn when a draining replica has no request in flight
//! (Envoy's per-host `rq_active`), so a drain ends as soon as it safely can.
//!
//! The admin URL's host may name several Envoys (a Swarm stack's `tasks.envoy` resolves
//! to every Envoy task's address): on each check the name is resolved again and every
//! address is asked; the host is idle only when every Envoy says so
//! ([`every_envoy_idle`]). A name with one address is one Envoy, as before.

use futures::future::join_all;
use roost_common::auth::ControlToken;
use roost_common::naming::cluster_name;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Why Envoy's admin API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyAdminError {
    /// No answer.
    #[error("Envoy's admin API at {url} did not answer: {source}; check that Envoy runs and that ROOST_ENVOY_ADMIN_URL names it")]
    Unreachable {
        /// What was asked.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// An answer that is not 200.
    #[error("Envoy's admin API at {url} answered {status}; check that the orchestrator and Envoy share the control token")]
    Refused {
        /// What was asked.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
    },
    /// The URL's host name did not resolve to any address.
    #[error("the host of Envoy's admin URL {url} does not resolve ({reason}); check ROOST_ENVOY_ADMIN_URL and that Envoy runs")]
    Unresolved {
        /// The admin URL.
        url: String,
        /// The resolver's error, or that it found no address.
        reason: String,
    },
}

/// What one Envoy said about a host, in one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// No request in flight on the host (`rq_active` 0, or the host not listed).
    Idle,
    /// This many requests in flight on the host.
    Busy(u64),
    /// That Envoy could not be read (no answer, refused): it may still have some.
    Unreadable,
}

/// The drain's decision from one check: the host is idle only when at least one Envoy
/// was asked and every one said idle. An Envoy that could not be read, or no Envoy at all
/// (the name resolved to nothing), means: ask again.
pub fn every_envoy_idle(readings: &[Reading]) -> bool {
    !readings.is_empty() && readings.iter().all(|r| *r == Reading::Idle)
}

/// One Envoy's `/clusters` text (or its error) as a [`Reading`] of `host` in `cluster`.
pub fn reading<E>(clusters: Result<&str, E>, cluster: &str, host: SocketAddr) -> Reading {
    match clusters {
        Ok(text) => match host_rq_active(text, cluster, host) {
            Some(0) | None => Reading::Idle,
            Some(n) => Reading::Busy(n),
        },
        Err(_) => Reading::Unreadable,
    }
}

/// Envoy admin API access (optional).
#[derive(Debug, Clone)]
pub struct EnvoyAdmin {
    base: Option<Base>,
    http: reqwest::Client,
}

/// The admin URL as configured, and its host and port apart (to resolve every address).
#[derive(Debug, Clone)]
struct Base {
    /// The URL without a trailing slash.
    url: String,
    /// Parsed, with a host and a port; `None` when it cannot be parsed: then the URL is
    /// asked as given (and fails, as a wrong URL always did).
    parsed: Option<(reqwest::Url, String, u16)>,
}

impl Base {
    fn new(url: String) -> Base {
        let url = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url).ok().and_then(|u| {
            let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = u.port_or_known_default()?;
            Some((u, host, port))
        });
        if parsed.is_none() {
            warn!(%url, "Envoy's admin URL has no host and port (want http://host:port); drains will wait their whole deadline");
        }
        Base { url, parsed }
    }

    /// The `/clusters` URL of every Envoy the host name resolves to now.
    async fn cluster_urls(&self) -> Result<Vec<String>, EnvoyAdminError> {
        let Some((url, host, port)) = &self.parsed else {
            return Ok(vec![format!("{}/clusters", self.url)]);
        };
        let unresolved = |reason: String| EnvoyAdminError::Unresolved { url: self.url.clone(), reason };
        let mut addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((host.as_str(), *port)).await.map_err(|e| unresolved(e.to_string()))?.collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(unresolved("no address".into()));
        }
        let mut urls = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let mut one = url.clone();
            // An http(s) URL with a host always takes an IP host and a port.
            if one.set_ip_host(addr.ip()).is_err() || one.set_port(Some(addr.port())).is_err() {
                return Err(unresolved(format!("cannot put {addr} into the URL")));
            }
            urls.push(format!("{}/clusters", one.as_str().trim_end_matches('/')));
        }
        Ok(urls)
    }
}

/// The `rq_active` of one host in Envoy's `/clusters` text output, if listed.
pub fn host_rq_active(clusters: &str, cluster: &str, host: SocketAddr) -> Option<u64> {
    let prefix = format!("{cluster}::{host}::rq_active::");
    clusters.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

impl EnvoyAdmin {
    /// `base` like `http://127.0.0.1:9901`, or a name with one address per Envoy
    /// (`http://tasks.envoy:9902` in a Swarm stack); `None` when Envoy's admin API is not
    /// reachable from the orchestrator. `token` goes with every request: compose's Envoy
    /// serves `/clusters` to the orchestrator on a guarded listener that wants it
    /// (envoy/bootstrap.yaml); a plain admin API ignores it.
    pub fn new(base: Option<String>, token: Option<&ControlToken>) -> EnvoyAdmin {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .default_headers(token.map(ControlToken::headers).unwrap_or_default())
            .build()
            .expect("a plain HTTP client always builds");
        EnvoyAdmin { base: base.map(Base::new), http }
    }

    /// One Envoy's `/clusters` text (per-host stats of every cluster).
    async fn clusters(&self, url: &str) -> Result<String, EnvoyAdminError> {
        let unreachable = |source| EnvoyAdminError::Unreachable { url: url.to_string(), source };
        let resp = self.http.get(url).send().await.map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(EnvoyAdminError::Refused { status: resp.status(), url: url.to_string() });
        }
        resp.text().await.map_err(unreachable)
    }

    /// Every Envoy's reading of `host` in `cluster` now (empty when the name resolves
    /// to nothing).
    async fn readings(&self, base: &Base, function: &str, cluster: &str, host: SocketAddr) -> Vec<Reading> {
        let urls = match base.cluster_urls().await {
            Ok(urls) => urls,
            Err(e) => {
                debug!(error = %e, "cannot find the Envoys; asking again");
                return Vec::new();
            }
        };
        let answers = join_all(urls.iter().map(|u| self.clusters(u))).await;
        urls.iter()
            .zip(answers)
            .map(|(url, answer)| {
                let r = reading(answer.as_deref(), cluster, host);
                match (&r, &answer) {
                    (Reading::Busy(n), _) => debug!(function, %host, envoy = %url, in_flight = n, "waiting for in-flight requests"),
                    (_, Err(e)) => debug!(error = %e, "cannot read Envoy's in-flight requests; asking again"),
                    _ => {}
                }
                r
            })
            .collect()
    }

    /// Waits until no Envoy has a request in flight on `host` of `function`, or
    /// `deadline`. Without an admin URL it waits the whole deadline (the function's
    /// request timeout bounds every request, so that is always safe, just slower). True
    /// when idle was seen.
    pub async fn wait_host_idle(&self, function: &str, host: SocketAddr, deadline: Duration) -> bool {
        let Some(base) = &self.base else {
            tokio::time::sleep(deadline).await;
            return true;
        };
        let cluster = cluster_name(function);
        let start = Instant::now();
        while start.elapsed() < deadline {
            if every_envoy_idle(&self.readings(base, function, &cluster, host).await) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_per_host_active_requests() {
        let text = "fn-hello::default_priority::max_connections::1\n\
                    fn-hello::127.0.0.1:5000::cx_active::1\n\
                    fn-hello::127.0.0.1:5000::rq_active::2\n\
                    fn-hello::127.0.0.1:5001::rq_active::0\n";
        assert_eq!(host_rq_active(text, "fn-hello", h("127.0.0.1:5000")), Some(2));
        assert_eq!(host_rq_active(text, "fn-hello", h("127.0.0.1:5001")), Some(0));
        assert_eq!(host_rq_active(text, "fn-hello", h("127.0.0.1:5002")), None);
        assert_eq!(host_rq_active(text, "fn-other", h("127.0.0.1:5000")), None);
    }

    #[test]
    fn one_envoys_answer_is_a_reading() {
        let text = "fn-hello::10.0.1.5:8080::rq_active::3\nfn-hello::10.0.1.6:8080::rq_active::0\n";
        let ok = |t| Ok::<&str, ()>(t);
        assert_eq!(reading(ok(text), "fn-hello", h("10.0.1.5:8080")), Reading::Busy(3));
        assert_eq!(reading(ok(text), "fn-hello", h("10.0.1.6:8080")), Reading::Idle);
        // A host Envoy does not list (already removed there) has nothing in flight.
        assert_eq!(reading(ok(text), "fn-hello", h("10.0.1.7:8080")), Reading::Idle);
        assert_eq!(reading(Err::<&str, _>("refused"), "fn-hello", h("10.0.1.5:8080")), Reading::Unreadable);
    }

    #[test]
    fn idle_only_when_every_envoy_says_so() {
        use Reading::*;
        // One Envoy (a name with one address): as before.
        assert!(every_envoy_idle(&[Idle]));
        assert!(!every_envoy_idle(&[Busy(1)]));
        assert!(!every_envoy_idle(&[Unreadable]));
        // Several: all idle, or wait.
        assert!(every_envoy_idle(&[Idle, Idle]));
        assert!(!every_envoy_idle(&[Idle, Busy(2)]));
        assert!(!every_envoy_idle(&[Busy(1), Idle]));
        // One that cannot be read may still have requests in flight: ask again.
        assert!(!every_envoy_idle(&[Idle, Unreadable]));
        // No Envoy found (the name resolved to nothing): nobody said idle.
        assert!(!every_envoy_idle(&[]));
    }

    #[tokio::test]
    async fn an_ip_url_is_one_envoy_and_a_name_is_each_of_its_addresses() {
        let one = Base::new("http://127.0.0.1:9901/".into());
        assert_eq!(one.cluster_urls().await.unwrap(), ["http://127.0.0.1:9901/clusters"]);
        let v6 = Base::new("http://[::1]:9902".into());
        assert_eq!(v6.cluster_urls().await.unwrap(), ["http://[::1]:9902/clusters"]);
        // `localhost` resolves through the machine's resolver: every address it gives is
        // asked, each with the URL's port.
        let named = Base::new("http://localhost:9902".into()).cluster_urls().await.unwrap();
        assert!(!named.is_empty() && named.iter().all(|u| u.ends_with(":9902/clusters") && !u.contains("localhost")), "{named:?}");
        // A URL with no host is asked as given (and fails like any wrong URL).
        let bad = Base::new("not a url".into());
        assert_eq!(bad.cluster_urls().await.unwrap(), ["not a url/clusters"]);
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_no_envoy() {
        let base = Base::new("http://roost-no-such-host.invalid:9902".into());
        let err = base.cluster_urls().await.unwrap_err();
        assert!(err.to_string().contains("does not resolve"), "{err}");
        let admin = EnvoyAdmin::new(Some("http://roost-no-such-host.invalid:9902".into()), None);
        assert!(!admin.wait_host_idle("hello", h("10.0.1.5:8080"), Duration::from_millis(200)).await);
    }
}
