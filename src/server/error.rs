//! The JSON error response of the API: `{"error": CODE, "detail": TEXT}`,
//! where CODE is a short stable word and TEXT describes what was wrong.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::repository::lock::LockError;
use crate::repository::RepoError;

/// A rejected or failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short stable code, such as `invalid_name`.
    pub code: &'static str,
    pub detail: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// The reason a response was an error, attached to the response so the
/// request span can log it.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// Maps a repository error: 503 when the repository is locked or unreachable,
    /// 500 otherwise.
    pub fn repository(e: &RepoError) -> Self {
        match e {
            RepoError::Lock(LockError::Conflict { .. }) => Self {
                retry_after: Some(30),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "repository_locked", e.to_string())
            },
            RepoError::Backend(_) | RepoError::S3(_) | RepoError::Lock(_) => Self {
                retry_after: Some(10),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "repository_unavailable", e.to_string())
            },
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "repository_error", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body { error: self.code, detail: &self.detail }).expect("error body serialises");
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(Rejection { code: self.code, detail: self.detail });
        response
    }
}
