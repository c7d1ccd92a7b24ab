//! End-to-end tests live in `tests/tests/`; they start the real
//! `berth-server` binary (build it first: `cargo build --bins`) and drive it
//! with the real outside programs. Shared helpers are in `test-support`.
