//! `PUT /v1/checkpoints/{job}/{step}`: streams the request body into the
//! repository and makes the checkpoint visible only after the whole body
//! arrived and its SHA-256 matched `X-Content-SHA256`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use tracing::{info, warn, Instrument, Span};

use super::auth::Scope;
use super::error::ApiError;
use super::metrics::PushResult;
use super::{authorize, path_names, AppState};
use crate::id::{BlobId, Digest};
use crate::sources::checkpoint::{validate_name, validate_new_step, CheckpointRecord, Upload, UploadError, UploadStats};

/// Header with the SHA-256 of the body, 64 lowercase hex digits.
pub const SHA256_HEADER: &str = "x-content-sha256";
/// Header that marks the checkpoint as final when `true`.
pub const FINAL_HEADER: &str = "x-checkpoint-final";

/// Names and body metadata declared by the client.
struct PushRequest {
    job: String,
    step: String,
    sha256: Digest,
    is_final: bool,
    content_length: Option<u64>,
}

#[derive(Serialize)]
struct PushResponse<'a> {
    #[serde(flatten)]
    checkpoint: &'a CheckpointRecord,
    /// `created` or `duplicate`.
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<UploadStats>,
}

/// A push that ended with a response.
enum PushOutcome {
    Created(CheckpointRecord, UploadStats),
    Duplicate(CheckpointRecord),
}

/// A push that did not store a checkpoint, with the metrics result.
struct PushFailure {
    result: PushResult,
    error: ApiError,
}

impl From<ApiError> for PushFailure {
    fn from(error: ApiError) -> Self {
        let result = if error.status.is_server_error() { PushResult::Failed } else { PushResult::Rejected };
        Self { result, error }
    }
}

pub(super) async fn put_checkpoint(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    version: Version,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request = match check_request(&state, path, version, &headers) {
        Ok(r) => r,
        Err(error) => {
            state.metrics.count_push(PushResult::Rejected);
            return error.into_response();
        }
    };
    // The push runs in its own task, so that a client that goes away
    // part-way does not cancel it between two awaits: the task gets the
    // body error, abandons the upload and releases the repository lock.
    let task = tokio::spawn(run_push(state.clone(), request, body).instrument(Span::current()));
    match task.await {
        Ok(Ok(PushOutcome::Created(record, stats))) => {
            (StatusCode::CREATED, Json(PushResponse { checkpoint: &record, result: "created", stored: Some(stats) }))
                .into_response()
        }
        Ok(Ok(PushOutcome::Duplicate(record))) => {
            (StatusCode::OK, Json(PushResponse { checkpoint: &record, result: "duplicate", stored: None })).into_response()
        }
        Ok(Err(error)) => error.into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", format!("the push task failed: {e}"))
            .into_response(),
    }
}

/// Checks the token, the names and the headers before any body is read.
fn check_request(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    version: Version,
    headers: &HeaderMap,
) -> Result<PushRequest, ApiError> {
    authorize(state, headers, Scope::Push)?;
    let (job, step) = path_names(path)?;
    validate_name("job", &job).map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    validate_new_step(&step).map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let span = Span::current();
    span.record("checkpoint.job", job.as_str());
    span.record("checkpoint.step", step.as_str());

    let sha256 = match headers.get(SHA256_HEADER).map(|v| v.to_str()) {
        None => {
            return Err(ApiError::bad_request(
                "missing_sha256",
                "the X-Content-SHA256 header is missing; send the SHA-256 of the body as 64 lowercase hex digits",
            ))
        }
        Some(Ok(text)) => parse_sha256(text)?,
        Some(Err(_)) => return Err(ApiError::bad_request("invalid_sha256", "the X-Content-SHA256 header is not ASCII")),
    };
    let is_final = match headers.get(FINAL_HEADER).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.eq_ignore_ascii_case("true") => true,
        Some(Ok(v)) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_final", "the X-Checkpoint-Final header must be `true` or `false`"))
        }
    };
    let content_length = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_content_length", "the Content-Length header is not a number")
        })?),
    };
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    // HTTP/1 has no other way to delimit a request body; HTTP/2 frames it.
    if content_length.is_none() && !chunked && version <= Version::HTTP_11 {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send the body with a Content-Length header or with chunked transfer encoding",
        ));
    }
    if let Some(length) = content_length {
        if length > state.max_size {
            return Err(too_large(length, state.max_size));
        }
    }
    Ok(PushRequest { job, step, sha256, is_final, content_length })
}

fn parse_sha256(text: &str) -> Result<Digest, ApiError> {
    let valid = text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_sha256",
            format!("the X-Content-SHA256 header {text:?} is not 64 lowercase hex digits"),
        ));
    }
    Ok(text.parse::<BlobId>().expect("64 lowercase hex digits parse").0)
}

fn too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the checkpoint is {size} bytes or more, above the maximum of {max} bytes set by --max-size"),
    )
}

/// Runs one push and counts its result.
async fn run_push(state: Arc<AppState>, request: PushRequest, body: Body) -> Result<PushOutcome, ApiError> {
    let result = push(&state, &request, body).await;
    match &result {
        Ok(PushOutcome::Created(record, stats)) => {
            state.metrics.count_push(PushResult::Created);
            state.metrics.set_last_push(&record.job, record.time.timestamp_millis() as f64 / 1000.0);
            info!(
                checkpoint.size = record.size,
                checkpoint.sha256 = %record.sha256,
                checkpoint.final = record.is_final,
                snapshot.id = %record.snapshot,
                upload.blobs_new = stats.blobs_new,
                upload.bytes_new = stats.bytes_new,
                "checkpoint stored"
            );
        }
        Ok(PushOutcome::Duplicate(record)) => {
            state.metrics.count_push(PushResult::Duplicate);
            info!(snapshot.id = %record.snapshot, "checkpoint pushed again with the same content");
        }
        Err(failure) => {
            state.metrics.count_push(failure.result);
            if failure.result == PushResult::Failed {
                warn!(error.code = failure.error.code, error.detail = %failure.error.detail, "checkpoint push failed");
            }
        }
    }
    result.map_err(|f| f.error)
}

async fn push(state: &AppState, request: &PushRequest, body: Body) -> Result<PushOutcome, PushFailure> {
    let started = Utc::now();
    // One push of a step at a time in this process; the next one waits here
    // and then finds the stored checkpoint.
    let _step_guard = state.step_locks.lock(&request.job, &request.step).await;
    let repo = &state.repo;
    state.catalogue.refresh(repo).await.map_err(|e| ApiError::repository(&e))?;
    let existing = state.catalogue.step(&request.job, &request.step).await;
    let parent = state.catalogue.latest(&request.job).await.map(|r| r.snapshot);

    // A repeated push is still read to its end and hashed, so that 200 means
    // the body equals the stored content, and so that clients which send the
    // whole body before reading the response see the response.
    let store = existing.is_empty();
    let purpose = format!("checkpoint push {}/{}", request.job, request.step);
    let mut upload = Upload::begin(repo, store, &purpose).await.map_err(|e| ApiError::repository(&e))?;

    if let Err(failure) = receive(state, request, body, &mut upload).await {
        upload.abort().await;
        return Err(failure);
    }
    let sha256 = match upload.end(&request.sha256).await {
        Ok((_, sha256)) => sha256,
        Err(e) => {
            upload.abort().await;
            return Err(match e {
                UploadError::HashMismatch { .. } => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "sha256_mismatch", format!("{e}; nothing was stored"))
                        .into()
                }
                UploadError::Repo(e) => ApiError::repository(&e).into(),
            });
        }
    };

    if let Some(stored) = existing.first() {
        upload.abort().await;
        if stored.sha256 == sha256 {
            return Ok(PushOutcome::Duplicate(stored.clone()));
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "step_exists",
            format!(
                "step {} of job {} is stored already with SHA-256 {}, and this body hashes to {sha256}; push it under a new step name",
                request.step, request.job, stored.sha256
            ),
        )
        .into());
    }

    let (record, stats) = upload
        .commit(&request.job, &request.step, sha256, request.is_final, started, parent)
        .await
        .map_err(|e| ApiError::repository(&e))?;
    state.catalogue.insert(record.clone()).await;
    Ok(PushOutcome::Created(record, stats))
}

/// Reads the body into the upload, enforcing the size limit, the idle
/// timeout and the declared length.
async fn receive(state: &AppState, request: &PushRequest, body: Body, upload: &mut Upload) -> Result<(), PushFailure> {
    let mut stream = body.into_data_stream();
    loop {
        let next = match tokio::time::timeout(state.body_idle_timeout, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Err(PushFailure {
                    result: PushResult::Failed,
                    error: ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!(
                            "no body data arrived for {} s after {} bytes; nothing was stored",
                            state.body_idle_timeout.as_secs(),
                            upload.received()
                        ),
                    ),
                })
            }
        };
        let data = match next {
            None => break,
            Some(Ok(data)) => data,
            // The connection closed before the declared length, or a
            // chunked body ended without its final chunk.
            Some(Err(e)) => {
                return Err(PushFailure {
                    result: PushResult::Failed,
                    error: ApiError::bad_request(
                        "body_incomplete",
                        format!("the request body ended after {} bytes: {e}; nothing was stored", upload.received()),
                    ),
                })
            }
        };
        state.metrics.add_push_bytes(data.len() as u64);
        if upload.received() + data.len() as u64 > state.max_size {
            return Err(too_large(upload.received() + data.len() as u64, state.max_size).into());
        }
        upload.write(&data).await.map_err(|e| ApiError::repository(&e))?;
    }
    if let Some(expected) = request.content_length {
        if upload.received() != expected {
            return Err(ApiError::bad_request(
                "body_incomplete",
                format!("the body has {} bytes, but Content-Length is {expected}; nothing was stored", upload.received()),
            )
            .into());
        }
    }
    Ok(())
}
