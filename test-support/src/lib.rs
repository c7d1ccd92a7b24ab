//! Shared helpers for Berth's tests and benchmarks.
//!
//! - [`tools`]: locating outside tools (failing loudly with the Debian package
//!   that provides them) and this workspace's own binaries.
//! - [`net`]: free ports and waiting for listeners.
//! - [`servers`]: real servers as child processes: `berth-server` and
//!   Debian's `docker-registry` (distribution 2.8) as the reference registry;
//!   a private PostgreSQL for the scale-out stores.
//! - [`images`]: byte-for-byte reproducible test images built in memory, and
//!   OCI image layouts on disk for skopeo and friends.
//! - [`client`]: a small OCI Distribution API client over reqwest.
//! - [`containerd`]: a private containerd daemon and `ctr` bound to it.
//! - [`skopeo`]: skopeo with a private policy and auth file.
//! - [`proxy`]: a round-robin HTTP proxy in front of several servers.
//! - [`assert_eventually!`], [`assert_eventually_async!`] and
//!   [`init_tracing`] for tests.
//!
//! Everything here drives real components: tests built on it must fail, not
//! skip, when something they need is missing.

pub mod client;
pub mod containerd;
pub mod forward;
pub mod images;
pub mod net;
pub mod proxy;
pub mod servers;
pub mod skopeo;
pub mod tools;
mod wait;

pub use client::OciClient;
pub use forward::TcpForwarder;
pub use images::{
    Arch, Blob, Descriptor, Flavor, Image, ImageBuilder, Index, Layer, LayerBuilder, LayoutEntry,
    Platform, artifact_for, artifact_with_subject, busybox_image, busybox_image_with_cmd,
    busybox_multi_arch, docker_image, docker_manifest_list, media_types, multi_arch_index,
    multi_layer_image, random_blob, read_oci_layout_blobs, read_oci_layout_index,
    read_oci_layout_manifest, read_skopeo_dir, sha256_digest, write_oci_layout, write_skopeo_dir,
};
pub use net::{free_port, wait_for_tcp};
pub use proxy::RoundRobinProxy;
pub use servers::{BerthServer, BerthServerBuilder, DockerRegistry, Garage, Postgres, S3Target};
pub use skopeo::Skopeo;
pub use tools::{require_tool, workspace_bin};
pub use wait::init_tracing;

/// Re-exported for the macros, so that callers need no direct dependency.
#[doc(hidden)]
pub mod __private {
    pub use crate::wait::{FIRST_POLL_DELAY, MAX_POLL_DELAY};
    pub use tokio;
}
