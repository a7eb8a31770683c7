//! The checkpoint HTTP API that GPU workers push training checkpoints to.
//!
//! Routes (every error is JSON `{"error": CODE, "detail": TEXT}`):
//!
//! - `PUT /v1/checkpoints/{job}/{step}` (scope `push`): store a checkpoint.
//! - `GET /v1/checkpoints/{job}` (scope `read`): list a job's checkpoints.
//! - `GET /v1/checkpoints/{job}/latest` (scope `read`): the newest one as JSON.
//! - `GET /v1/checkpoints/{job}/{step}` (scope `read`): the content, with `Range`.
//! - `DELETE /v1/checkpoints/{job}/{step}` (scope `admin`): remove a checkpoint.
//! - `/healthz`, `/readyz` and `/metrics`, without a token.
//!
//! `docs/checkpoints.md` describes the API for client authors.

pub mod auth;
mod error;
pub mod metrics;
mod push;
mod read;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tracing::{error, field, info, info_span, warn, Instrument};

use crate::repository::{RepoError, Repository};
use crate::sources::checkpoint::Catalogue;
use auth::{AuthFailure, Scope, TokenSet};
pub use error::ApiError;
use error::Rejection;
use metrics::Metrics;
pub use push::{FINAL_HEADER, SHA256_HEADER};
pub use read::{parse_range, RangeRequest};

/// Default maximum checkpoint size: 20 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 20 * 1024 * 1024 * 1024;

/// Default time a push may go without receiving body data before it is
/// abandoned, so a stalled client does not hold its step forever.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the API.
pub struct ServerConfig {
    pub tokens: TokenSet,
    /// Largest checkpoint accepted, in bytes.
    pub max_size: u64,
    pub body_idle_timeout: Duration,
    /// Metrics shared with the controller, exported on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/readyz` also requires a loaded policy (serve with `--policy`).
    pub require_policy: bool,
}

impl ServerConfig {
    /// Settings with fresh metrics and no policy requirement.
    pub fn new(tokens: TokenSet, max_size: u64, body_idle_timeout: Duration) -> ServerConfig {
        ServerConfig { tokens, max_size, body_idle_timeout, metrics: Arc::new(Metrics::new()), require_policy: false }
    }
}

/// Listening address and transport settings.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    /// PEM certificate chain and private key; plain HTTP when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Allows plain HTTP on an address other than loopback.
    pub insecure_http: bool,
}

/// Start-up failure of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to serve plain HTTP on {addr}, which is not a loopback address: bearer tokens and checkpoints would cross the network unencrypted; pass --tls-cert and --tls-key, or --insecure-http when a VPN or port-forward encrypts the traffic")]
    PlainHttpOnNetwork { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the TLS certificate {cert} and key {key}: {source}")]
    Tls {
        cert: String,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the checkpoints of the repository: {0}")]
    Repository(#[from] RepoError),
}

/// Checks the rule that a non-loopback address needs TLS or `--insecure-http`.
pub fn check_listen(listen: &ListenConfig) -> Result<(), ServerError> {
    if !listen.addr.ip().is_loopback() && listen.tls.is_none() && !listen.insecure_http {
        return Err(ServerError::PlainHttpOnNetwork { addr: listen.addr });
    }
    Ok(())
}

/// Per-(job, step) mutexes, so one push or delete of a step runs at a time in
/// this process. Entries of steps that no request locks are dropped on insert.
#[derive(Default)]
struct StepLocks {
    map: std::sync::Mutex<HashMap<(String, String), Weak<tokio::sync::Mutex<()>>>>,
}

impl StepLocks {
    async fn lock(&self, job: &str, step: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = {
            let mut map = self.map.lock().expect("step lock map");
            let key = (job.to_owned(), step.to_owned());
            match map.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    map.retain(|_, weak| weak.strong_count() > 0);
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&m));
                    m
                }
            }
        };
        mutex.lock_owned().await
    }
}

/// State shared by the handlers.
pub(crate) struct AppState {
    repo: Arc<Repository>,
    tokens: TokenSet,
    max_size: u64,
    body_idle_timeout: Duration,
    catalogue: Catalogue,
    step_locks: StepLocks,
    metrics: Arc<Metrics>,
    require_policy: bool,
}

/// Checks the request's token for `needed`: 401 without a known token, 403
/// without the scope.
fn authorize(state: &AppState, headers: &HeaderMap, needed: Scope) -> Result<(), ApiError> {
    state.tokens.authorize(headers, needed).map_err(|failure| match failure {
        AuthFailure::Missing => unauthorized("the request has no `Authorization: Bearer TOKEN` header"),
        AuthFailure::Unknown => unauthorized("the bearer token is not listed in the server's tokens file"),
        AuthFailure::MissingScope(scope) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token lacks the `{}` scope that this request needs", scope.name()),
        ),
    })
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// Job and step from a two-segment path, before name checks.
fn path_names(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), ApiError> {
    let Path(names) = path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    Ok(names)
}

/// Builds the router and loads the repository's checkpoints.
pub async fn router(repo: Arc<Repository>, config: ServerConfig) -> Result<Router, ServerError> {
    let catalogue = Catalogue::new();
    catalogue.refresh(&repo).await?;
    let metrics = config.metrics;
    for (job, time) in catalogue.last_push_times().await {
        metrics.set_last_push(&job, time.timestamp_millis() as f64 / 1000.0);
    }
    let state = Arc::new(AppState {
        repo,
        tokens: config.tokens,
        max_size: config.max_size,
        body_idle_timeout: config.body_idle_timeout,
        catalogue,
        step_locks: StepLocks::default(),
        metrics,
        require_policy: config.require_policy,
    });
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/checkpoints/{job}", get(read::list_checkpoints))
        .route(
            "/v1/checkpoints/{job}/{step}",
            get(read::get_checkpoint).put(push::put_checkpoint).delete(read::delete_checkpoint),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Push bodies are streamed and limited by --max-size instead.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(state))
}

/// Opens one span per request and logs every rejection with its reason.
async fn trace_request(request: Request, next: Next) -> Response {
    let span = info_span!(
        "request",
        http.method = %request.method(),
        http.path = %request.uri().path(),
        checkpoint.job = field::Empty,
        checkpoint.step = field::Empty,
        http.status_code = field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.status_code", status.as_u16());
    let _entered = span.enter();
    if let Some(rejection) = response.extensions().get::<Rejection>() {
        if status.is_server_error() {
            error!(error.code = rejection.code, error.detail = %rejection.detail, "request failed");
        } else {
            warn!(error.code = rejection.code, error.detail = %rejection.detail, "request rejected");
        }
    }
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 when the policy is loaded (for serve with `--policy`) and the
/// repository's `config` object can be read.
async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.require_policy && !state.metrics.policy_loaded() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "no valid policy is loaded yet"));
    }
    match state.repo.backend().head("config").await {
        Ok(Some(_)) => Ok(Json(serde_json::json!({
            "status": "ready",
            "policy": if state.require_policy { "loaded" } else { "none" },
            "repository": "reachable",
        }))),
        Ok(None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the repository {} has no config object", state.repo.url()),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the repository {} is unreachable: {e}", state.repo.url()),
        )),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {}; the API lives under /v1/checkpoints/{{job}}[/{{step}}]",
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// A server started by [`start`].
pub struct RunningServer {
    /// The address it listens on (with the port the system chose for port 0).
    pub addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting connections and waits up to `grace` for requests in
    /// flight to finish.
    pub async fn shutdown(self, grace: Duration) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(grace));
        join(self.task).await
    }

    /// Serves until `signal` completes, then shuts down as [`Self::shutdown`]
    /// does. Returns early when the server stops by itself.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>, grace: Duration) -> std::io::Result<()> {
        let mut task = self.task;
        tokio::select! {
            result = &mut task => return flatten(result),
            _ = signal => {}
        }
        info!(grace_seconds = grace.as_secs(), "shutting down: no new connections, waiting for requests in flight");
        self.handle.graceful_shutdown(Some(grace));
        join(task).await
    }
}

impl RunningServer {
    /// Serves until `signal` completes, then shuts the server down as
    /// [`Self::shutdown`] does while `also` runs, and returns both outcomes.
    pub async fn run_until_then<T>(
        self,
        signal: impl std::future::Future<Output = ()>,
        grace: Duration,
        also: impl std::future::Future<Output = T>,
    ) -> (std::io::Result<()>, T) {
        let mut task = self.task;
        tokio::select! {
            result = &mut task => return (flatten(result), also.await),
            _ = signal => {}
        }
        info!(grace_seconds = grace.as_secs(), "shutting down: no new connections or job runs, waiting for work in flight");
        self.handle.graceful_shutdown(Some(grace));
        tokio::join!(join(task), also)
    }
}

async fn join(task: tokio::task::JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
    flatten(task.await)
}

fn flatten(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    result.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Binds `listen.addr` and serves the API on it in a background task.
pub async fn start(repo: Arc<Repository>, config: ServerConfig, listen: &ListenConfig) -> Result<RunningServer, ServerError> {
    check_listen(listen)?;
    let app = router(repo.clone(), config).await?;
    let bind_error = |source| ServerError::Bind { addr: listen.addr, source };
    let listener = std::net::TcpListener::bind(listen.addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let handle = axum_server::Handle::new();
    let service = app.into_make_service();
    let task = match &listen.tls {
        Some((cert, key)) => {
            // Both rustls back-ends are linked (the AWS SDK uses aws-lc-rs,
            // reqwest ring), so rustls needs the process default named.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await.map_err(|source| {
                ServerError::Tls { cert: cert.display().to_string(), key: key.display().to_string(), source }
            })?;
            let server = axum_server::from_tcp_rustls(listener, tls).map_err(bind_error)?.handle(handle.clone());
            tokio::spawn(async move { server.serve(service).await })
        }
        None => {
            let server = axum_server::from_tcp(listener).map_err(bind_error)?.handle(handle.clone());
            tokio::spawn(async move { server.serve(service).await })
        }
    };
    info!(
        server.addr = %addr,
        server.tls = listen.tls.is_some(),
        repo.url = %repo.url(),
        "checkpoint API listening"
    );
    Ok(RunningServer { addr, handle, task })
}
