//! Generates the messages and the gRPC service from `proto/` (needs
//! `protoc`: Debian's protobuf-compiler, as containerd-client does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/berth/control/v1/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        // JSON for the API, the CLI and the agent's command journal: the
        // same types, no second model to keep in step.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .enum_attribute(".", "#[serde(rename_all = \"snake_case\")]")
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
