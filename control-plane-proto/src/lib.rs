//! The control-plane protocol: the messages and the `ControlPlane` gRPC
//! service generated from `proto/berth/control/v1/control.proto`, the only
//! types berth-server and berth-agent share. Read that file for the
//! delivery rules (acknowledged, at-most-once commands; results kept until
//! the server confirms them).

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// Generated code (prost + tonic), with serde derives for JSON.
pub mod v1 {
    tonic::include_proto!("berth.control.v1");
}

pub use v1::*;

/// The gRPC path of the one RPC, for routing and metrics.
pub const CONNECT_PATH: &str = "/berth.control.v1.ControlPlane/Open";

impl command::Action {
    /// A short name for logs, metrics and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            command::Action::Pull(_) => "pull",
            command::Action::Run(_) => "run",
            command::Action::Stop(_) => "stop",
            command::Action::Remove(_) => "remove",
            command::Action::ListImages(_) => "list-images",
            command::Action::ListContainers(_) => "list-containers",
            command::Action::DeleteImage(_) => "delete-image",
            command::Action::TestRegistry(_) => "test-registry",
            command::Action::Logs(_) => "logs",
        }
    }
}
