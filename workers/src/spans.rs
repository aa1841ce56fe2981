//! The agent's spans in the OpenTelemetry RPC and GenAI conventions: the
//! server span of the gateway's call, a child of the gateway's `chat {model}`
//! span through the request's metadata, and parent of the engine call's span
//! (see `backend::openai`).

use routemesh_mesh::genai::{self, RpcSide};
use routemesh_proto::v1::{Usage, WorkerGenerateRequest};
use tonic::{Request, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt;

const WORKER_SERVICE: &str = "routemesh.v1.Worker";

/// The server span of a call to the Worker service's `method`.
pub(crate) fn worker_span(
    request: &Request<WorkerGenerateRequest>,
    method: &'static str,
    worker_id: &str,
    served_model: &str,
) -> tracing::Span {
    let req = request.get_ref();
    let span = tracing::info_span!(
        "routemesh.worker.generate",
        otel.name = %format!("{WORKER_SERVICE}/{method}"),
        otel.kind = "server",
    );
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", WORKER_SERVICE);
    span.set_attribute("rpc.method", method);
    let model = if req.model.is_empty() {
        served_model
    } else {
        &req.model
    };
    genai::record_chat(&span, genai::PROVIDER_ROUTEMESH, model);
    if let Some(params) = &req.params {
        genai::record_params(&span, params);
    }
    span.set_attribute("routemesh.request_id", req.request_id.clone());
    span.set_attribute("routemesh.worker", worker_id.to_string());
    routemesh_mesh::trace_context::continue_trace(&span, request.metadata());
    span
}

/// The call answered in full.
pub(crate) fn served(span: &tracing::Span, usage: Option<&Usage>, finish_reason: i32) {
    genai::record_served_call(span, RpcSide::Server, usage, finish_reason);
}

/// The call failed with `status`.
pub(crate) fn failed(span: &tracing::Span, status: &Status) {
    genai::record_grpc_status(span, RpcSide::Server, status.code(), status.message());
}
