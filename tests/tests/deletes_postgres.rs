//! `deletes.rs` again (tag and repository deletes through skopeo and the
//! API, catalog, GC keeping shared blobs) with berth-server's metadata on
//! PostgreSQL: the harness picks PostgreSQL from this target's name
//! (`test_support::servers::postgres_by_default`); the test bodies are
//! `deletes.rs`'s own.

#[path = "deletes.rs"]
mod deletes;
