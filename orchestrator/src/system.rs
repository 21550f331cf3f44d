//! The management API, `/system/...` on the platform's public port (Envoy routes it here)
//! behind the API token: list, describe, deploy (a bundle, one source file, or a
//! definition of an image), scale, remove, a function's logs, and the asynchronous calls
//! ([`crate::calls`]). Deploys are written to the data directory's store and handed to the
//! supervisor, which rolls replicas over as it does for an edit of the definitions file.
//! One deploy, scale or removal at a time.

use crate::api::{self, Api};
use crate::deployed::{self, bundle, store::Store, DeployError, Payload};
use crate::shared::{ask, source_of, unavailable, Failure};
use crate::supervisor::Request;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roost_common::wire::calls;
use roost_common::wire::status::{FunctionStatus, Status};
use roost_common::wire::system::{DeployQuery, Describe, FunctionInfo, FunctionList, Removed, Scale, Source};

/// The management routes (to be guarded by the API token).
pub fn router(api: Api) -> Router {
    let max_body = api.deploys.max_body;
    Router::new()
        .route("/system/functions", get(list))
        .route("/system/functions/{name}", get(describe).put(deploy).delete(remove))
        .route("/system/functions/{name}/scale", post(scale))
        .route("/system/functions/{name}/logs", get(api::function_logs))
        .route("/system/metrics", get(metrics))
        .route(calls::LIST_PATH, get(async_calls))
        .route("/system/console", get(crate::console::page))
        .route("/system/console/live", get(crate::console::live_part))
        .route(roost_common::auth::CONSOLE_LOGIN_PATH, get(crate::console::login))
        .layer(DefaultBodyLimit::max(usize::try_from(max_body).unwrap_or(usize::MAX)))
        .with_state(api)
}

type Answer = Result<Response, Failure>;

/// Runs blocking file work (the store) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work).await.map_err(|_| unavailable())
}

fn info(status: &Status, f: FunctionStatus) -> FunctionInfo {
    FunctionInfo { source: source_of(status, &f.name), status: f }
}

async fn list(State(api): State<Api>) -> Answer {
    let mut status = ask(&api.tx, Request::Status).await?;
    let functions = std::mem::take(&mut status.functions).into_iter().map(|f| info(&status, f)).collect();
    Ok(Json(FunctionList { functions, definitions_error: status.definitions_error }).into_response())
}

fn not_found(name: &str) -> Failure {
    Failure(StatusCode::NOT_FOUND, format!("no function {name:?}; `roost ls` (GET /system/functions) lists them"))
}

/// The function's describe answer, or `None` if it is not declared.
async fn described(api: &Api, name: &str) -> Result<Option<Describe>, Failure> {
    let mut status = ask(&api.tx, Request::Status).await?;
    let Some(i) = status.functions.iter().position(|f| f.name == name) else { return Ok(None) };
    let f = status.functions.swap_remove(i);
    let spec = ask(&api.tx, |r| Request::Definition(name.to_string(), r)).await?;
    let definition = spec.map(|s| serde_json::to_value(&*s).expect("definitions serialize"));
    Ok(Some(Describe { info: info(&status, f), definition, path: format!("/{name}") }))
}

async fn describe(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let d = described(&api, &name).await?.ok_or_else(|| not_found(&name))?;
    Ok(Json(d).into_response())
}

/// The store, or why there is none.
fn store(api: &Api) -> Result<Store, Failure> {
    api.deploys.store.clone().ok_or_else(|| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "this orchestrator has no data directory, so it cannot keep deployed functions; start it with --data-dir / ROOST_DATA_DIR (`roost up` and compose set it)".into(),
        )
    })
}

/// The function's [`Source`] now (`None`: not declared); a function of the definitions
/// file is refused (409 naming the file): the API neither replaces nor removes it.
async fn deployed_or_new(api: &Api, name: &str) -> Result<Option<Source>, Failure> {
    let status = ask(&api.tx, Request::Status).await?;
    let source = status.function(name).map(|_| source_of(&status, name));
    if source == Some(Source::File) {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!(
                "{name:?} is declared in the definitions file {}; change or remove it there, or deploy under another name",
                status.definitions
            ),
        ));
    }
    Ok(source)
}

/// Hands the store's new contents to the supervisor and waits until they are applied.
async fn apply(api: &Api, store: &Store) -> Result<(), Failure> {
    let s = store.clone();
    let stored = blocking(move || s.load()).await?;
    ask(&api.tx, |r| Request::Deployed(stored, r)).await
}

fn refused(e: DeployError) -> Failure {
    if e.is_callers() {
        return Failure(StatusCode::BAD_REQUEST, e.to_string());
    }
    tracing::error!(error = %e, "a deploy could not be stored");
    Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The deploy's payload from its query and content type.
fn payload(q: DeployQuery, headers: &HeaderMap, body: Bytes) -> Result<Payload, Failure> {
    if let Some(file) = q.file {
        return Ok(Payload::Source { file, code: body.to_vec() });
    }
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let kind = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match kind.as_str() {
        "application/gzip" | "application/x-gzip" | "application/x-tar+gzip" | "application/tar+gzip" => Ok(Payload::Bundle(body.to_vec())),
        "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml" => String::from_utf8(body.to_vec())
            .map(Payload::Definition)
            .map_err(|_| Failure(StatusCode::BAD_REQUEST, "the definition is not UTF-8 text".into())),
        other => Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "cannot deploy a body of type {other:?}: send a bundle (Content-Type: application/gzip, a tar.gz of the function's folder with function.yml), one source file (?file=NAME), or a definition of an image (Content-Type: application/json or application/yaml)"
            ),
        )),
    }
}

/// The function's describe answer after a change, with `code`.
async fn changed(api: &Api, name: &str, code: StatusCode) -> Answer {
    let d = described(api, name).await?.ok_or_else(|| {
        Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{name:?} was stored but the orchestrator does not list it; see its log"))
    })?;
    Ok((code, Json(d)).into_response())
}

async fn deploy(State(api): State<Api>, Path(name): Path<String>, Query(q): Query<DeployQuery>, headers: HeaderMap, body: Bytes) -> Answer {
    let store = store(&api)?;
    let payload = payload(q, &headers, body)?;
    let _one = api.deploys.lock.lock().await;
    let before = deployed_or_new(&api, &name).await?;
    let kind = payload.kind();
    let (s, n) = (store.clone(), name.clone());
    let spec = blocking(move || {
        let staged = deployed::stage(&s, &n, payload, bundle::Limits::default())?;
        s.commit(&n, &staged.dir)?;
        Ok::<_, DeployError>(staged.spec)
    })
    .await?
    .map_err(refused)?;
    tracing::info!(function = %name, kind, version = %spec.version, updated = before.is_some(), "function deployed");
    apply(&api, &store).await?;
    changed(&api, &name, if before.is_some() { StatusCode::OK } else { StatusCode::CREATED }).await
}

async fn remove(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    let store = store(&api)?;
    let _one = api.deploys.lock.lock().await;
    deployed_or_new(&api, &name).await?;
    let (s, n) = (store.clone(), name.clone());
    let removed = blocking(move || s.remove(&n))
        .await?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove {name:?}: {e}")))?;
    if !removed {
        return Err(not_found(&name));
    }
    tracing::info!(function = %name, "deployed function removed; its replicas drain");
    apply(&api, &store).await?;
    Ok((StatusCode::ACCEPTED, Json(Removed { removed: name })).into_response())
}

async fn scale(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> Answer {
    let store = store(&api)?;
    let want: Scale = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("the body is not a scale ({e}); send {{\"min_replicas\": 0, \"max_replicas\": 5}} (either may be left out)"),
        )
    })?;
    if want == Scale::default() {
        return Err(Failure(StatusCode::BAD_REQUEST, "nothing to scale: give min_replicas, max_replicas or both".into()));
    }
    let _one = api.deploys.lock.lock().await;
    if deployed_or_new(&api, &name).await?.is_none() {
        return Err(not_found(&name));
    }
    let (s, n) = (store.clone(), name.clone());
    blocking(move || {
        let new = deployed::rescale(&s.definition(&n)?, &s.current_dir(&n)?, &n, want.min_replicas, want.max_replicas)?;
        Ok::<_, DeployError>(s.rewrite_definition(&n, &new)?)
    })
    .await?
    .map_err(refused)?;
    tracing::info!(function = %name, min = ?want.min_replicas, max = ?want.max_replicas, "deployed function scaled");
    apply(&api, &store).await?;
    changed(&api, &name, StatusCode::OK).await
}

/// The platform's Prometheus metrics: the statsd-listener's `/metrics` (Envoy's and the
/// orchestrator's series per function, the listener's own), behind the API token.
async fn metrics(State(api): State<Api>) -> Answer {
    let text = api.deploys.metrics_text().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /system/async/calls[?function=NAME][&failed=true][&limit=N]`: the newest
/// asynchronous calls (or failed ones), their records as the async worker keeps them.
async fn async_calls(State(api): State<Api>, query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Answer {
    let Query(pairs) = query.map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("cannot read the query: {e}")))?;
    let q = crate::calls::ListQuery::parse(&pairs).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    let list = api.deploys.calls.list(&q).await.map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(list).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Logs;
    use roost_common::auth::ApiToken;
    use tokio_util::sync::CancellationToken;

    /// The management API on a port of its own, behind `token` as `lib.rs` serves it, with
    /// no supervisor behind it, reading the asynchronous calls from `redis` when given.
    async fn serve(token: &ApiToken, redis: Option<&redis::Client>) -> (String, CancellationToken) {
        let (tx, _rx) = tokio::sync::mpsc::channel::<Request>(1);
        let shutdown = CancellationToken::new();
        let deploys = crate::shared::deploys(None, 1024, None, Some(token.clone()));
        if let Some(client) = redis {
            deploys.calls.use_redis(client);
        }
        let api = Api::new(tx, std::sync::Arc::default(), Logs::default(), shutdown.clone(), deploys);
        let app = roost_common::auth::guard_api(router(api), token.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = shutdown.clone();
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.unwrap() });
        (base, shutdown)
    }

    #[tokio::test]
    async fn the_call_list_wants_the_token_and_names_a_bad_query() {
        let token = ApiToken::new("api0123456789abcdef").unwrap();
        let (base, shutdown) = serve(&token, None).await;
        let http = reqwest::Client::new();
        let get = |query: &str| http.get(format!("{base}{}{query}", calls::LIST_PATH));
        assert_eq!(get("").send().await.unwrap().status(), 401, "behind the API token");
        for (query, says) in [
            ("?limit=0", "limit=\"0\" is not a whole number from 1 to 1000"),
            ("?failed=maybe", "failed=\"maybe\" is neither true nor false"),
            ("?function=No", "function: invalid function name \"No\""),
            ("?since=1", "unknown query parameter \"since\""),
        ] {
            let r = get(query).bearer_auth(token.expose()).send().await.unwrap();
            assert_eq!(r.status(), 400, "{query}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains(says), "{query}: {body}");
        }
        // Without a Redis connection handed over: a JSON 503 that says so.
        let r = get("?limit=5").bearer_auth(token.expose()).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("asynchronous calls"), "{body}");
        shutdown.cancel();
    }

    #[tokio::test]
    #[ignore = "needs redis-server: full tier (scripts/test.sh)"]
    async fn the_call_list_answers_the_records_in_redis() {
        use roost_common::keys;
        use roost_common::wire::calls::{CallList, CallRecord};
        let server = roost_testkit::redis::Redis::start().await;
        let client = redis::Client::open(server.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut pipe = redis::pipe();
        for (i, function) in ["a", "b", "a"].into_iter().enumerate() {
            let id = format!("c{i}");
            pipe.zadd(keys::ASYNC_RECENT, &id, i).ignore();
            pipe.set(keys::async_call(&id), CallRecord::queued(&id, function, i as u64, None).to_json()).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
        let token = ApiToken::new("api0123456789abcdef").unwrap();
        let (base, shutdown) = serve(&token, Some(&client)).await;
        let http = reqwest::Client::new();
        let list = |query: &'static str| {
            let r = http.get(format!("{base}{}{query}", calls::LIST_PATH)).bearer_auth(token.expose()).send();
            async move {
                let r = r.await.unwrap();
                assert_eq!(r.status(), 200, "{query}");
                r.json::<CallList>().await.unwrap().calls.into_iter().map(|c| c.id).collect::<Vec<_>>()
            }
        };
        assert_eq!(list("").await, ["c2", "c1", "c0"]);
        assert_eq!(list("?function=a&limit=1").await, ["c2"]);
        assert_eq!(list("?failed=true").await, Vec::<String>::new());
        shutdown.cancel();
    }
}
