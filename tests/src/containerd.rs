//! The private containerd harness now lives in `test-support` (the agent
//! benchmark starts it too); re-exported here so that `tests::containerd::…`
//! and `tests::Containerd` keep naming it.

pub use test_support::containerd::*;
