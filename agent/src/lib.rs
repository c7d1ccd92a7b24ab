//! berth-agent, the node daemon of Berth: it pulls its account's images
//! from berth-server with the node's certificate and imports them into
//! containerd, where `ctr` and the agent run them.
//!
//! - [`config`]: the one typed configuration and its validation.
//! - [`reference`]: short names resolved into the node's namespace.
//! - [`platform`]: the node's platform and the choice from an index.
//! - [`identity`]: node tokens bought over mTLS with the node certificate.
//! - [`registry`]: oci-client plus retries, backoff and the bandwidth limit.
//! - [`containerd`]: the containerd client (connection, namespace and lease
//!   headers) and the pull's calls.
//! - [`pull`]: a pull from reference to unpacked image record.
//! - [`runtime`]: containers run from pulled images (containerd + runc).
//! - [`supervisor`]: execution types (service, recurring, on-demand),
//!   restart backoff and health checks, run by the daemon.
//!
//! **Invariant:** only this crate talks to containerd, and within it only
//! [`containerd`] and the container calls of [`runtime::calls`] (methods of
//! the same client); it shares no code with the server crates.

pub mod commit_gate;
pub mod config;
pub mod containerd;
pub mod filelock;
pub mod fsutil;
pub mod gc;
pub mod identity;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod remote;
pub mod runtime;
pub mod spool;
pub mod supervisor;
pub mod unpack;

pub use config::AgentConfig;
pub use pull::{Progress, PullError, Pulled, Puller};
pub use reference::{ImageRef, ReferenceError};

/// rustls needs one process-wide crypto provider; the workspace uses ring
/// (no C toolchain for aws-lc). Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
