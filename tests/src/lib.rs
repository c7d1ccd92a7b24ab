//! End-to-end tests live in `tests/tests/`; they start the real
//! `berth-server` binary (build it first: `cargo build --bins`) and drive it
//! with the real outside programs. Shared helpers are in `test-support`;
//! the harnesses for outside programs that only end-to-end tests need live
//! here:
//!
//! - [`containerd`]: a private containerd daemon and `ctr` bound to it.
//! - [`podman`]: podman with a private store and settings.

pub mod containerd;
pub mod podman;

pub use containerd::Containerd;
pub use podman::Podman;
