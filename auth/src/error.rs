//! Errors of the auth crate.

/// Why an auth operation failed. Messages are safe to show to the caller:
/// authentication failures never say whether the user or the secret was
/// wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("authentication failed")]
    Unauthenticated,
    #[error("too many failed logins; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("access denied: {0}")]
    Forbidden(String),
    #[error("invalid token: {0}")]
    Token(String),
    #[error("auth storage failed: {0}")]
    Storage(String),
    #[error("cryptography failed: {0}")]
    Crypto(String),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;
