//! `skopeo.rs` again (push and pull of single-arch, multi-arch and Docker
//! images, chunked pushes, tag lists, referrers through skopeo) with
//! berth-server's metadata on PostgreSQL, as `deletes_postgres.rs` does.

#[path = "skopeo.rs"]
mod skopeo;
