/// Failures of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control-plane store: {0}")]
    Storage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<sqlite_pool::PoolError> for ControlError {
    fn from(e: sqlite_pool::PoolError) -> Self {
        ControlError::Storage(e.to_string())
    }
}

impl From<pg_pool::PgError> for ControlError {
    fn from(e: pg_pool::PgError) -> Self {
        ControlError::Storage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, ControlError>;
