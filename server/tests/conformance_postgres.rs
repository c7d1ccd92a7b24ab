//! The OCI Distribution conformance suite (`conformance.rs`: push, pull,
//! chunked and resumed uploads, mounts, tags, catalog, referrers, deletes)
//! once more, with the server's metadata on PostgreSQL: a private server
//! (Debian's `postgresql`) started by `test_support::Postgres`, a fresh
//! database per server. `common::Server::start` picks PostgreSQL from this
//! target's name; the test bodies are `conformance.rs`'s own.

#[path = "conformance.rs"]
mod conformance;
