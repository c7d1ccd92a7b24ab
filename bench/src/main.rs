//! berth-bench (being written).
fn main() {}
