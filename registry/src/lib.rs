//! Berth's registry core.
//!
//! - [`digest`], [`names`], [`manifest`]: the OCI domain: digests, repository
//!   names and tags, manifest validation.
//! - [`service`]: the registry operations (push, pull, discovery, deletes,
//!   garbage collection) over the storage traits.
//! - [`storage`]: the traits and the embedded engines. Only this module knows
//!   the blob layout and the SQL schema.

pub mod digest;
pub mod locks;
pub mod manifest;
pub mod names;
pub mod service;
pub mod storage;

pub use digest::{Algorithm, Digest, Hasher};
pub use names::{Reference, RepoName, Tag};
pub use service::{ByteRange, GcReport, PushedManifest, Registry, RegistryConfig, RegistryError};
pub use storage::{
    ByteStream, MountSource, NameList, RepositoryPage, RepositorySummary, TagDetail,
};
