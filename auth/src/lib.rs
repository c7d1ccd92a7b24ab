//! Berth's identity and access.
//!
//! - [`model`]: accounts (each owning one namespace), users and robots with
//!   roles, credentials, nodes, audit events, the authenticated [`Identity`].
//! - [`service`]: [`AuthService`], used by the server and the operator CLI.
//! - [`tokens`], [`scope`]: ES256 registry tokens and scope grants.
//! - [`ca`]: the node certificate authority.
//! - [`secrets`], [`ratelimit`]: argon2 hashing, credential format, login throttling.
//! - [`store`]: the storage seam; only it knows the auth schema.

pub mod ca;
pub mod error;
pub mod model;
pub mod ratelimit;
pub mod scope;
pub mod secrets;
pub mod service;
pub mod store;
pub mod tokens;

pub use error::AuthError;
pub use model::{Action, Identity, PrincipalKind, Role};
pub use service::{AuthConfig, AuthService};

/// Opens the embedded auth store inside a data directory.
pub fn open_embedded(
    data_dir: &std::path::Path,
) -> error::Result<std::sync::Arc<dyn store::AuthStore>> {
    std::fs::create_dir_all(data_dir).map_err(|e| AuthError::Storage(e.to_string()))?;
    Ok(std::sync::Arc::new(store::sqlite::SqliteAuthStore::open(
        data_dir.join("auth.sqlite"),
    )?))
}

/// Opens the auth store: PostgreSQL when `postgres` is given (the database
/// the registry metadata uses too, in its own schema), else the embedded
/// SQLite store inside the data directory.
pub async fn open_store(
    data_dir: &std::path::Path,
    postgres: Option<&pg_pool::ConnectOptions>,
) -> error::Result<std::sync::Arc<dyn store::AuthStore>> {
    match postgres {
        Some(options) => Ok(std::sync::Arc::new(
            store::postgres::PgAuthStore::connect(options).await?,
        )),
        None => open_embedded(data_dir),
    }
}
