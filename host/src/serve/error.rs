//! The API's one error shape: `{"error":{"code","message"}}` with an HTTP
//! status, and `Retry-After` on a quota that refills.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, snake_case code.
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
    /// When to try again, for a quota that refills.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401, the same for a missing, malformed, wrong or unknown token.
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    /// 404: what does not exist, or belongs to someone else.
    pub fn not_found(what: &str, name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("there is no {what} {name:?}"))
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 422.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 429 `quota_exceeded`, naming the quota.
    pub fn quota(quota: &str, message: impl Into<String>, retry_after: Option<Duration>) -> ApiError {
        let message = format!("quota `{quota}`: {}", message.into());
        ApiError { retry_after, ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message) }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::INSUFFICIENT_STORAGE {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(value) = self.retry_after.and_then(retry_after_header) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least one.
pub fn retry_after_header(wait: Duration) -> Option<HeaderValue> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from_str(&seconds.max(1).to_string()).ok()
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::internal(format!("{e:#}"))
    }
}
