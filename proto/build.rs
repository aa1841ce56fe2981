//! Compiles `routemesh/v1/*.proto` with protox (pure Rust, no protoc) and
//! generates prost types plus tonic clients and servers.

use prost::Message;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "routemesh/v1/common.proto",
    "routemesh/v1/worker.proto",
    "routemesh/v1/gateway.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    // The descriptor set is embedded so reflection can describe the services.
    fs::write(
        out_dir.join("routemesh_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
