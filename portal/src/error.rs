//! Errors of the management API: one variant per answer a caller can get,
//! written as `{"error": {"code", "message"}}` with the matching status.
//! Internal causes are logged and never sent.

use auth::AuthError;
use axum::response::{IntoResponse, Response};
use control::ControlError;
use http::{HeaderValue, StatusCode, header};
use registry::RegistryError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No session, an expired one, or wrong Basic credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but the role does not allow it.
    #[error("{0}")]
    Denied(String),
    /// A change through a portal session without its anti-CSRF token.
    #[error("missing or wrong anti-CSRF token (X-CSRF-Token header)")]
    Csrf,
    /// No such repository, or one outside the caller's namespace (which is
    /// deliberately indistinguishable).
    #[error("repository {0} not found")]
    NameUnknown(String),
    #[error("tag {0} not found")]
    TagUnknown(String),
    /// No such node, or one of another account (indistinguishable).
    #[error("node {0} not found")]
    NodeUnknown(String),
    /// No such command of that node.
    #[error("command {0} not found")]
    CommandUnknown(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    TagInvalid(String),
    /// The typed confirmation does not equal the name being deleted.
    #[error("confirmation does not match: type {expected:?} to delete it")]
    Confirmation { expected: String },
    #[error("{0}")]
    Invalid(String),
    /// Something this server is not set up for (accounts disabled).
    #[error("{0}")]
    Unsupported(String),
    #[error("too many failed logins; retry in {0} s")]
    RateLimited(u64),
    /// The cause is logged; the caller only learns that it failed.
    #[error("internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Denied(_) | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::NameUnknown(_)
            | ApiError::TagUnknown(_)
            | ApiError::NodeUnknown(_)
            | ApiError::CommandUnknown(_) => StatusCode::NOT_FOUND,
            ApiError::NameInvalid(_)
            | ApiError::TagInvalid(_)
            | ApiError::Confirmation { .. }
            | ApiError::Invalid(_)
            | ApiError::Unsupported(_) => StatusCode::BAD_REQUEST,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Denied(_) => "DENIED",
            ApiError::Csrf => "CSRF_TOKEN_INVALID",
            ApiError::NameUnknown(_) => "NAME_UNKNOWN",
            ApiError::TagUnknown(_) => "TAG_UNKNOWN",
            ApiError::NodeUnknown(_) => "NODE_UNKNOWN",
            ApiError::CommandUnknown(_) => "COMMAND_UNKNOWN",
            ApiError::NameInvalid(_) => "NAME_INVALID",
            ApiError::TagInvalid(_) => "TAG_INVALID",
            ApiError::Confirmation { .. } => "CONFIRMATION_MISMATCH",
            ApiError::Invalid(_) => "INVALID_REQUEST",
            ApiError::Unsupported(_) => "UNSUPPORTED",
            ApiError::RateLimited(_) => "TOO_MANY_REQUESTS",
            ApiError::Internal(_) => "UNKNOWN",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %cause, "management API request failed");
        }
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let ApiError::RateLimited(secs) = self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NameUnknown => ApiError::NameUnknown(String::new()),
            RegistryError::ManifestUnknown => ApiError::TagUnknown(String::new()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated | AuthError::Token(_) => {
                ApiError::Unauthenticated("authentication failed".into())
            }
            AuthError::RateLimited { retry_after_secs } => ApiError::RateLimited(retry_after_secs),
            AuthError::Forbidden(m) => ApiError::Denied(m),
            AuthError::Invalid(m) => ApiError::Invalid(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(m) => ApiError::Invalid(m),
            ControlError::NotFound(m) => ApiError::NodeUnknown(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
