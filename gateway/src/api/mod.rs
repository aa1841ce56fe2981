//! The edges clients and operators talk to: the gRPC Gateway service, the
//! OpenAI-compatible HTTP API, and the admin port. Each turns its wire format
//! into the serving path's calls and the path's errors into its own codes.

pub(crate) mod admin;
pub(crate) mod counted;
pub(crate) mod grpc;
pub(crate) mod grpc_auth;
pub(crate) mod openai;

use tonic::metadata::MetadataMap;

use crate::serve::Api;

/// The server span of a client request, continuing the client's trace (W3C
/// `traceparent` in gRPC metadata or HTTP headers alike).
pub(crate) fn request_span(
    api: Api,
    method: &'static str,
    request_id: &str,
    model: &str,
    metadata: &MetadataMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "routemesh.generate",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        routemesh.api = api.as_str(),
        routemesh.request_id = %request_id,
        gen_ai.request.model = %model,
    );
    routemesh_mesh::trace_context::continue_trace(&span, metadata);
    span
}
