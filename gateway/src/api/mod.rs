//! The edges clients and operators talk to: the gRPC Gateway service, the
//! OpenAI-compatible HTTP API, and the admin port. Each turns its wire format
//! into the serving path's calls and the path's errors into its own codes.

pub(crate) mod admin;
pub(crate) mod body_bytes;
pub(crate) mod counted;
pub(crate) mod grpc;
pub(crate) mod grpc_auth;
pub(crate) mod openai;
pub(crate) mod spans;
