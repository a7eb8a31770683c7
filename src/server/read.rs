//! The read and delete endpoints: list a job's checkpoints, the newest one,
//! download one (with `Range`), and delete one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tracing::{info, warn, Span};

use super::auth::Scope;
use super::error::ApiError;
use super::{authorize, path_names, AppState};
use crate::id::BlobId;
use crate::id::SnapshotId;
use crate::repository::lock::LockKind;
use crate::repository::{RepoError, Repository};
use crate::sources::checkpoint::{validate_name, validate_new_step, CheckpointRecord, RESERVED_STEP};

/// Blobs read ahead of the one being sent; each is at most one chunk (8 MiB).
const READ_AHEAD: usize = 2;

#[derive(Serialize)]
struct Listing<'a> {
    job: &'a str,
    checkpoints: Vec<CheckpointRecord>,
}

fn job_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(job) = path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    validate_name("job", &job).map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    Span::current().record("checkpoint.job", job.as_str());
    Ok(job)
}

/// `GET /v1/checkpoints/{job}`: every checkpoint of the job, oldest push first.
pub(super) async fn list_checkpoints(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let job = job_name(path)?;
    state.catalogue.refresh(&state.repo).await.map_err(|e| ApiError::repository(&e))?;
    let checkpoints = state.catalogue.job(&job).await;
    Ok(Json(Listing { job: &job, checkpoints }).into_response())
}

/// `GET /v1/checkpoints/{job}/{step}`: the content of a step, or with the
/// step `latest` the metadata of the newest checkpoint as JSON.
pub(super) async fn get_checkpoint(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let (job, step) = checked_names(path, true)?;
    state.catalogue.refresh(&state.repo).await.map_err(|e| ApiError::repository(&e))?;
    if step == RESERVED_STEP {
        return match state.catalogue.latest(&job).await {
            Some(record) => Ok(Json(record).into_response()),
            None => Err(ApiError::not_found(format!("job {job} has no checkpoint"))),
        };
    }
    let Some(record) = state.catalogue.step(&job, &step).await.into_iter().next() else {
        return Err(ApiError::not_found(format!("job {job} has no checkpoint {step}")));
    };
    send_content(&state.repo, &record, &headers).await
}

/// `DELETE /v1/checkpoints/{job}/{step}`: removes the step's manifest. Its
/// data is freed by the next prune.
pub(super) async fn delete_checkpoint(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let (job, step) = checked_names(path, false)?;
    let _step_guard = state.step_locks.lock(&job, &step).await;
    state.catalogue.refresh(&state.repo).await.map_err(|e| ApiError::repository(&e))?;
    let ids: Vec<_> = state.catalogue.step(&job, &step).await.into_iter().map(|r| r.snapshot).collect();
    if ids.is_empty() {
        return Err(ApiError::not_found(format!("job {job} has no checkpoint {step}")));
    }
    remove_manifests(&state.repo, &job, &step, &ids).await.map_err(|e| ApiError::repository(&e))?;
    state.catalogue.remove(&ids).await;
    match state.catalogue.latest(&job).await {
        Some(newest) => state.metrics.set_last_push(&job, newest.time.timestamp_millis() as f64 / 1000.0),
        None => state.metrics.remove_job(&job),
    }
    info!(snapshot.ids = ?ids, "checkpoint deleted");
    Ok(Json(serde_json::json!({ "job": job, "step": step, "deleted": ids })).into_response())
}

/// Deletes the manifests `ids` under an exclusive lock, as `visage-dr forget`
/// does, so no prune or garbage collection runs at the same time.
async fn remove_manifests(repo: &Repository, job: &str, step: &str, ids: &[SnapshotId]) -> Result<(), RepoError> {
    let lock = repo.lock(LockKind::Exclusive, &format!("checkpoint delete {job}/{step}")).await?;
    let mut result = Ok(());
    for id in ids {
        if let Err(e) = repo.backend().delete(&format!("snapshots/{id}")).await {
            result = Err(RepoError::from(e));
            break;
        }
    }
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
    }
    result
}

/// Job and step from the path; `latest` is allowed as the step only when
/// `allow_latest`.
fn checked_names(
    path: Result<Path<(String, String)>, PathRejection>,
    allow_latest: bool,
) -> Result<(String, String), ApiError> {
    let (job, step) = path_names(path)?;
    let invalid = |e: crate::sources::checkpoint::NameError| ApiError::bad_request("invalid_name", e.to_string());
    validate_name("job", &job).map_err(invalid)?;
    if allow_latest {
        validate_name("step", &step).map_err(invalid)?;
    } else {
        validate_new_step(&step).map_err(invalid)?;
    }
    let span = Span::current();
    span.record("checkpoint.job", job.as_str());
    span.record("checkpoint.step", step.as_str());
    Ok((job, step))
}

/// A byte range of the content, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header: send everything.
    Full,
    Partial { first: u64, last: u64 },
    /// The range starts at or after the end of the content.
    Unsatisfiable,
}

/// Parses a `Range` header for content of `size` bytes. Forms other than one
/// `bytes=a-b`, `bytes=a-` or `bytes=-n` range are ignored (RFC 9110 section
/// 14.2 allows a server to ignore `Range`), and the whole content is sent.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (start.trim().is_empty(), end.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match parse(end) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial { first: size - n.min(size), last: size - 1 },
            None => RangeRequest::Full,
        },
        (false, true) => match parse(start) {
            Some(first) if first >= size => RangeRequest::Unsatisfiable,
            Some(first) => RangeRequest::Partial { first, last: size - 1 },
            None => RangeRequest::Full,
        },
        (false, false) => match (parse(start), parse(end)) {
            (Some(first), Some(last)) if first <= last => {
                if first >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial { first, last: last.min(size - 1) }
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// Uncompressed length of each chunk, from the in-memory index. The index is
/// reloaded once when a chunk is missing, since another process (a prune, a
/// second server) may have written the index file that lists it.
async fn chunk_lengths(repo: &Repository, chunks: &[BlobId]) -> Result<Vec<u64>, ApiError> {
    let lookup = || -> Option<Vec<u64>> {
        repo.with_index(|i| {
            chunks.iter().map(|c| i.usable_locations(c).first().map(|l| l.raw_length)).collect()
        })
    };
    if let Some(lengths) = lookup() {
        return Ok(lengths);
    }
    repo.reload_index().await.map_err(|e| ApiError::repository(&e))?;
    lookup().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "blob_missing",
            "a blob of this checkpoint is not listed in any index file; run `visage-dr check` on the repository",
        )
    })
}

/// Reads one blob, reloading the index and trying again once when it is not
/// found where the index pointed (garbage collection moves live blobs).
async fn read_blob(repo: Arc<Repository>, id: BlobId) -> Result<Bytes, RepoError> {
    match repo.read_blob(&id).await {
        Ok(data) => Ok(data),
        Err(first) => {
            warn!(blob.id = %id, error = %first, "blob read failed, reloading the index and trying again");
            repo.reload_index().await?;
            repo.read_blob(&id).await
        }
    }
}

async fn send_content(repo: &Arc<Repository>, record: &CheckpointRecord, headers: &HeaderMap) -> Result<Response, ApiError> {
    let lengths = chunk_lengths(repo, &record.chunks).await?;
    let total: u64 = lengths.iter().sum();
    if total != record.size {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "corrupt_checkpoint",
            format!("the chunks of snapshot {} add up to {total} bytes, but its entry says {}", record.snapshot, record.size),
        ));
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => parse_range(value, record.size),
        None => RangeRequest::Full,
    };
    let (first, last, status) = match range {
        RangeRequest::Full if record.size == 0 => (0, 0, StatusCode::OK),
        RangeRequest::Full => (0, record.size - 1, StatusCode::OK),
        RangeRequest::Partial { first, last } => (first, last, StatusCode::PARTIAL_CONTENT),
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the requested range starts at or after the end of the {}-byte checkpoint", record.size),
            )
            .into_response();
            let value = HeaderValue::from_str(&format!("bytes */{}", record.size)).expect("ASCII header");
            response.headers_mut().insert(header::CONTENT_RANGE, value);
            return Ok(response);
        }
    };
    let length = if record.size == 0 { 0 } else { last - first + 1 };

    // The parts of each chunk that fall into [first, last].
    let mut parts = Vec::new();
    let mut offset = 0u64;
    for (id, chunk_length) in record.chunks.iter().zip(&lengths) {
        let chunk_end = offset + chunk_length;
        if length > 0 && chunk_end > first && offset <= last {
            let skip = first.saturating_sub(offset) as usize;
            let take_end = (last + 1).min(chunk_end) - offset;
            parts.push((*id, skip, take_end as usize));
        }
        offset = chunk_end;
    }
    let repo = repo.clone();
    let snapshot = record.snapshot.clone();
    let stream = futures::stream::iter(parts)
        .map(move |(id, skip, end)| {
            let repo = repo.clone();
            let snapshot = snapshot.clone();
            async move {
                match read_blob(repo, id).await {
                    Ok(data) => Ok(data.slice(skip..end)),
                    Err(e) => {
                        warn!(snapshot.id = %snapshot, blob.id = %id, error = %e, "checkpoint download stopped: a blob is unreadable");
                        Err(std::io::Error::other(e.to_string()))
                    }
                }
            }
        })
        .buffered(READ_AHEAD);

    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let sha = record.sha256.to_hex();
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{sha}\"")).expect("hex is ASCII"));
    h.insert(super::push::SHA256_HEADER, HeaderValue::from_str(&sha).expect("hex is ASCII"));
    h.insert(super::push::FINAL_HEADER, HeaderValue::from_static(if record.is_final { "true" } else { "false" }));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {first}-{last}/{}", record.size);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).expect("ASCII header"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_forms_parse() {
        let p = |first, last| RangeRequest::Partial { first, last };
        assert_eq!(parse_range("bytes=0-9", 100), p(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), p(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), p(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), p(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), p(0, 99));
    }

    #[test]
    fn range_beyond_end_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
    }

    #[test]
    fn unsupported_ranges_are_ignored() {
        for value in ["items=0-1", "bytes=5-1", "bytes=0-1,5-6", "bytes=x-", "bytes=-"] {
            assert_eq!(parse_range(value, 100), RangeRequest::Full, "{value}");
        }
    }
}
