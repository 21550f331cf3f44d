//! Function names and the Envoy names derived from them.
//!
//! A function name is one URL path segment (`/hello`), an Envoy cluster name
//! (`fn-hello`), a statsd metric segment and a Docker label, so it is kept to a safe
//! alphabet: lowercase ASCII letters, digits, `-` and `_`, starting with a letter or a
//! digit, at most [`MAX_FUNCTION_NAME_LEN`] characters. No dots: Envoy's statsd names
//! separate segments with dots, and a dot in a cluster name would make the function
//! impossible to read back from a metric.

use std::fmt;

/// Longest function name accepted.
pub const MAX_FUNCTION_NAME_LEN: usize = 63;

/// Names the platform's own paths take on the public port (`/system/...`, the
/// management API and console; `/async/...` and `/async-function/...`, asynchronous
/// calls, whose status is at `/async/calls/<id>`): no function may be called so.
pub const RESERVED_NAMES: &[&str] = &["system", "async", "async-function", "calls"];

/// Prefix of the Envoy cluster of every function.
pub const CLUSTER_PREFIX: &str = "fn-";

/// Why a string is not a valid function name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// The rejected name.
    pub name: String,
    /// What is wrong with it, in words a user can act on.
    pub reason: &'static str,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid function name {:?}: {}; use 1-{} characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
            self.name, self.reason, MAX_FUNCTION_NAME_LEN
        )
    }
}

impl std::error::Error for InvalidName {}

/// Checks that `name` can be used as a function name (see the module docs).
pub fn validate_function_name(name: &str) -> Result<(), InvalidName> {
    let fail = |reason| Err(InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_FUNCTION_NAME_LEN {
        return fail("it is too long");
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return fail("it must start with a lowercase letter or a digit");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return fail("it contains a character outside a-z, 0-9, '-' and '_'");
    }
    if RESERVED_NAMES.contains(&name) {
        return fail("it is reserved for the platform's own paths (/system/..., /async/..., /async/calls/...); pick another name");
    }
    Ok(())
}

/// The Envoy cluster (and ClusterLoadAssignment) name of a function.
pub fn cluster_name(function: &str) -> String {
    format!("{CLUSTER_PREFIX}{function}")
}

/// The function a cluster name belongs to, if it is a Roost function cluster.
pub fn function_of_cluster(cluster: &str) -> Option<&str> {
    cluster.strip_prefix(CLUSTER_PREFIX).filter(|f| validate_function_name(f).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_safe_names() {
        for name in ["hello", "add", "a", "0day", "my-fn_2", &"x".repeat(63)] {
            assert_eq!(validate_function_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_unsafe_names_with_a_reason() {
        for name in ["", "Hello", "-x", "_x", "a.b", "a/b", "a b", "é", "a%2F", &"x".repeat(64)] {
            let err = validate_function_name(name).unwrap_err();
            assert!(err.to_string().contains("invalid function name"), "{err}");
        }
    }

    #[test]
    fn the_platforms_own_paths_are_no_function_names() {
        let err = validate_function_name("system").unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        assert_eq!(validate_function_name("systems"), Ok(()));
    }

    #[test]
    fn cluster_names_round_trip() {
        assert_eq!(cluster_name("hello"), "fn-hello");
        assert_eq!(function_of_cluster("fn-hello"), Some("hello"));
        assert_eq!(function_of_cluster("fn-"), None);
        assert_eq!(function_of_cluster("xds"), None);
        assert_eq!(function_of_cluster("fn-a.b"), None);
    }
}
