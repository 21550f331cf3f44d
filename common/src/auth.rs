//! The shared secrets of Roost's control surfaces: the control token that the
//! orchestrator's API and the control plane's admin API require (`Authorization: Bearer`),
//! the axum layer that checks it, and Redis's password read from a file into a Redis URL.
//!
//! The token comes from `ROOST_CONTROL_TOKEN` (the value) or `ROOST_CONTROL_TOKEN_FILE` (a
//! file holding it; compose's `secrets` service and `roost up` write one). Without one an
//! API stays open and says so in a warning at start.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The one route an API answers without the token: liveness, which says nothing.
pub const OPEN_PATH: &str = "/healthz";

/// The shared secret of the control surfaces. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlToken(Arc<str>);

impl fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlToken(***)")
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read {what} from {path} (set by {var}): {source}; check the path and that this user may read it")]
    Read {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The variable that named it.
        var: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The value (or file) is empty or holds characters a header or URL cannot carry.
    #[error("{what} given by {var} is {problem}; give 16 or more printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)")]
    Invalid {
        /// What the value is.
        what: &'static str,
        /// Where it came from.
        var: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Checks a secret's text (trimmed of surrounding white space): at least 16 characters,
/// printable ASCII, no spaces.
fn validate(text: &str, what: &'static str, var: &'static str) -> Result<String, SecretError> {
    let t = text.trim();
    let problem = if t.is_empty() {
        "empty"
    } else if t.len() < 16 {
        "shorter than 16 characters"
    } else if !t.bytes().all(|b| b.is_ascii_graphic()) {
        "not printable ASCII without spaces"
    } else {
        return Ok(t.to_string());
    };
    Err(SecretError::Invalid { what, var, problem })
}

fn read_file(path: &Path, what: &'static str, var: &'static str) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read { what, path: path.to_path_buf(), var, source })?;
    validate(&text, what, var)
}

impl ControlToken {
    /// A token from its text (tests, `roost up`), checked like one read from a variable.
    pub fn new(text: &str) -> Result<ControlToken, SecretError> {
        validate(text, "the control token", crate::env::CONTROL_TOKEN).map(|t| ControlToken(t.into()))
    }

    /// The configured token: `value` (`ROOST_CONTROL_TOKEN`) when set and not empty, else
    /// the file `file` (`ROOST_CONTROL_TOKEN_FILE`) when set, else none.
    pub fn configured(value: Option<&str>, file: Option<&Path>) -> Result<Option<ControlToken>, SecretError> {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            return ControlToken::new(v).map(Some);
        }
        match file {
            Some(path) => read_file(path, "the control token", crate::env::CONTROL_TOKEN_FILE).map(|t| Some(ControlToken(t.into()))),
            None => Ok(None),
        }
    }

    /// The token's text, for a client's header or a file `roost up` writes.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Authorization: Bearer <token>`, as a client's default headers (marked sensitive,
    /// so HTTP libraries keep it out of their logs).
    pub fn headers(&self) -> HeaderMap {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.0)).expect("a validated token is a valid header value");
        v.set_sensitive(true);
        HeaderMap::from_iter([(header::AUTHORIZATION, v)])
    }
}

/// Why a request was refused: what it lacks, for the 401's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// A bearer token that is not the configured one.
    Wrong,
}

impl Refusal {
    /// The refusal's text, naming what to send and where the token is.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "missing Authorization: Bearer <control token>; the token is in ROOST_CONTROL_TOKEN, the file ROOST_CONTROL_TOKEN_FILE names, `roost up`'s .roost/control-token, or compose's roost-secrets volume",
            Refusal::NotBearer => "the Authorization header is not `Bearer <control token>`",
            Refusal::Wrong => "the bearer token is not this platform's control token",
        }
    }
}

/// Compares two byte strings in time that depends on their lengths only, not on where
/// they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request with `authorization` (its `Authorization` header, if any) may pass
/// an API guarded by `token`.
pub fn check(token: &ControlToken, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    check_secret(&token.0, authorization)
}

fn check_secret(secret: &str, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    let value = authorization.ok_or(Refusal::Missing)?;
    let given = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer ")).ok_or(Refusal::NotBearer)?;
    let given = given.trim_ascii();
    if constant_time_eq(given, secret.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The management API's token (`/system/...`): what a platform's user presents to deploy,
/// scale or remove functions. Not the control token, which only Roost's own parts hold.
/// Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Arc<str>);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// `bytes` random bytes from the kernel, as lowercase hex: a new secret.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The API token's file in the platform's data directory.
pub const API_TOKEN_FILE: &str = "api-token";

impl ApiToken {
    /// A token from its text, checked like one read from `ROOST_API_TOKEN`.
    pub fn new(text: &str) -> Result<ApiToken, SecretError> {
        validate(text, "the API token", crate::env::API_TOKEN).map(|t| ApiToken(t.into()))
    }

    /// `value` (`ROOST_API_TOKEN`) when set and not empty; else the data directory's
    /// [`API_TOKEN_FILE`], made readable by its owner only, with 32 random bytes, when
    /// it does not exist yet.
    pub fn load_or_create(value: Option<&str>, data_dir: &Path) -> Result<ApiToken, SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            return ApiToken::new(v);
        }
        let path = data_dir.join(API_TOKEN_FILE);
        let what = "the API token";
        let io = |source| SecretError::Read { what, path: path.clone(), var: crate::env::DATA_DIR, source };
        if !path.exists() {
            let text = random_hex(32).map_err(io)?;
            std::fs::create_dir_all(data_dir).map_err(io)?;
            // create_new: two starts at once cannot both write one.
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(mut f) => {
                    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
                    tracing::info!(file = %path.display(), "made the management API's token");
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        read_file(&path, what, crate::env::DATA_DIR).map(|t| ApiToken(t.into()))
    }

    /// The token's text, for a client's header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A token of 32 random bytes that nobody else holds.
    pub fn random() -> std::io::Result<ApiToken> {
        Ok(ApiToken(random_hex(32)?.into()))
    }
}

/// The management API's refusal texts: what to send and where the token is.
fn api_refusal(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Missing => "missing Authorization: Bearer <API token>; `roost up` prints it, and it is in the data directory's api-token (compose: `docker compose exec orchestrator cat /var/lib/roost/api-token`) or ROOST_API_TOKEN",
        Refusal::NotBearer => "the Authorization header is not `Bearer <API token>`",
        Refusal::Wrong => "the bearer token is not this platform's API token",
    }
}

/// The cookie the web console's login sets: the API token, for the browser's requests
/// under `/system` (HttpOnly, SameSite=Strict: no other site's page can send it).
pub const CONSOLE_COOKIE: &str = "roost_api";

/// The console cookie's value among a request's `Cookie` headers, if any.
pub fn console_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(CONSOLE_COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

/// Whether `given` is the API token (compared in constant time).
pub fn is_api_token(token: &ApiToken, given: &str) -> bool {
    constant_time_eq(given.as_bytes(), token.0.as_bytes())
}

async fn require_api(State(token): State<ApiToken>, req: Request, next: Next) -> Response {
    // The console's login page is the one way in without the token.
    if req.uri().path() == CONSOLE_LOGIN_PATH || console_cookie(req.headers()).is_some_and(|c| is_api_token(&token, c)) {
        return next.run(req).await;
    }
    match check_secret(&token.0, req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(path = req.uri().path(), ?refusal, "management request refused: no valid API token");
            let body = axum::Json(serde_json::json!({ "error": api_refusal(refusal) }));
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        }
    }
}

/// The web console's login path: it checks the token it is given itself.
pub const CONSOLE_LOGIN_PATH: &str = "/system/login";

/// `router` behind the API token (a bearer header, or the console's cookie): every route
/// but the console's login answers 401 without it.
pub fn guard_api(router: Router, token: ApiToken) -> Router {
    router.layer(axum::middleware::from_fn_with_state(token, require_api))
}

/// The axum middleware: every request but `GET /healthz` needs the token.
async fn require(State(token): State<ControlToken>, req: Request, next: Next) -> Response {
    if req.uri().path() == OPEN_PATH {
        return next.run(req).await;
    }
    match check(&token, req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(path = req.uri().path(), ?refusal, "request refused: no valid control token");
            let body = axum::Json(serde_json::json!({ "error": refusal.message() }));
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        }
    }
}

/// `router` behind the control token when there is one (every route but `GET /healthz`
/// answers 401 without it); without one, `router` as it is, and a warning that `api`
/// takes requests from anyone who can reach it.
pub fn guard(router: Router, token: Option<ControlToken>, api: &'static str) -> Router {
    match token {
        Some(token) => {
            tracing::info!(api, "requests need the control token (Authorization: Bearer)");
            router.layer(axum::middleware::from_fn_with_state(token, require))
        }
        None => {
            tracing::warn!(
                api,
                "no control token configured: this API takes requests from anyone who can reach it; set {} or {}",
                crate::env::CONTROL_TOKEN,
                crate::env::CONTROL_TOKEN_FILE
            );
            router
        }
    }
}

/// `url` (`redis://host:port/...`) with the password read from `password_file`
/// (`ROOST_REDIS_PASSWORD_FILE`) put in; `url` unchanged when no file is given.
pub fn redis_url_with_password_file(url: &str, password_file: Option<&Path>) -> Result<String, SecretError> {
    let Some(path) = password_file else { return Ok(url.to_string()) };
    let password = read_file(path, "Redis's password", crate::env::REDIS_PASSWORD_FILE)?;
    Ok(redis_url_with_password(url, &password))
}

/// `url` with `password` as its password (percent-encoded), replacing any user info
/// it had.
pub fn redis_url_with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let mut encoded = String::with_capacity(password.len());
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{scheme}://:{encoded}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ControlToken {
        ControlToken::new("0123456789abcdef0123").unwrap()
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = token();
        assert_eq!(check(&t, Some(b"Bearer 0123456789abcdef0123")), Ok(()));
        assert_eq!(check(&t, Some(b"bearer 0123456789abcdef0123 ")), Ok(()));
        assert_eq!(check(&t, None), Err(Refusal::Missing));
        assert_eq!(check(&t, Some(b"Basic abc")), Err(Refusal::NotBearer));
        assert_eq!(check(&t, Some(b"0123456789abcdef0123")), Err(Refusal::NotBearer));
        assert_eq!(check(&t, Some(b"Bearer 0123456789abcdef012")), Err(Refusal::Wrong));
        assert_eq!(check(&t, Some(b"Bearer 0123456789abcdef0124")), Err(Refusal::Wrong));
        assert_eq!(check(&t, Some(b"Bearer ")), Err(Refusal::Wrong));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn the_value_wins_over_the_file_and_bad_tokens_are_refused() {
        let dir = std::env::temp_dir().join(format!("roost-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "fromfile0123456789abcdef\n").unwrap();
        let got = ControlToken::configured(None, Some(&file)).unwrap().unwrap();
        assert_eq!(got.expose(), "fromfile0123456789abcdef", "trimmed of its newline");
        let got = ControlToken::configured(Some("fromvalue0123456789"), Some(&file)).unwrap().unwrap();
        assert_eq!(got.expose(), "fromvalue0123456789");
        assert_eq!(ControlToken::configured(Some(""), None).unwrap(), None, "an empty variable is unset");
        assert_eq!(ControlToken::configured(None, None).unwrap(), None);

        let e = ControlToken::configured(None, Some(&dir.join("absent"))).unwrap_err();
        assert!(e.to_string().contains("ROOST_CONTROL_TOKEN_FILE") && e.to_string().contains("absent"), "{e}");
        std::fs::write(&file, "  \n").unwrap();
        let e = ControlToken::configured(None, Some(&file)).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = ControlToken::configured(Some("short"), None).unwrap_err();
        assert!(e.to_string().contains("shorter than 16"), "{e}");
        assert!(ControlToken::new("has a space in it 0123").is_err());
        assert_eq!(format!("{:?}", token()), "ControlToken(***)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_client_header_is_the_bearer_token_and_sensitive() {
        let h = token().headers();
        let v = h.get(header::AUTHORIZATION).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer 0123456789abcdef0123");
        assert!(v.is_sensitive());
        assert_eq!(check(&token(), Some(v.as_bytes())), Ok(()));
    }

    #[test]
    fn a_redis_password_goes_into_the_url() {
        assert_eq!(redis_url_with_password("redis://redis:6379/", "abc123"), "redis://:abc123@redis:6379/");
        assert_eq!(redis_url_with_password("redis://:old@redis:6379/0", "new"), "redis://:new@redis:6379/0");
        assert_eq!(redis_url_with_password("redis://127.0.0.1:6379/", "a/b@c:d"), "redis://:a%2Fb%40c%3Ad@127.0.0.1:6379/");
        assert_eq!(redis_url_with_password_file("redis://r:1/", None).unwrap(), "redis://r:1/");
        let dir = std::env::temp_dir().join(format!("roost-auth-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            redis_url_with_password_file("redis://r:1/", Some(&dir.join("pw"))).unwrap(),
            "redis://:0123456789abcdef0123456789abcdef@r:1/"
        );
        let e = redis_url_with_password_file("redis://r:1/", Some(&dir.join("nope"))).unwrap_err();
        assert!(e.to_string().contains("ROOST_REDIS_PASSWORD_FILE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_console_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; roost_api=tok-0123456789abcdef; b=2"));
        assert_eq!(console_cookie(&h), Some("tok-0123456789abcdef"));
        let mut other = HeaderMap::new();
        other.append(header::COOKIE, HeaderValue::from_static("roost_apix=1"));
        assert_eq!(console_cookie(&other), None);
        let token = ApiToken::new("tok-0123456789abcdef").unwrap();
        assert!(is_api_token(&token, "tok-0123456789abcdef") && !is_api_token(&token, "tok-0123456789abcdeF"));
    }
}
