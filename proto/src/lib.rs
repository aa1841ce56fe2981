//! The `routemesh.v1` wire API, generated from `proto/routemesh/v1/*.proto`.

#![allow(clippy::all, missing_docs)]

/// Generated types, clients and servers of package `routemesh.v1`.
pub mod v1 {
    tonic::include_proto!("routemesh.v1");
}

/// The encoded file descriptor set of every routemesh proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/routemesh_descriptor.bin"));

pub use v1::*;
