//! `auth_clients.rs` again (docker, skopeo, podman and ctr logging in with
//! credentials and robot keys, revocations, token refresh) with berth-server's
//! auth store and metadata on PostgreSQL, as `deletes_postgres.rs` does; the
//! admin CLI gets the same database (`BerthServer::metadata_env`).

#[path = "auth_clients.rs"]
mod auth_clients;
