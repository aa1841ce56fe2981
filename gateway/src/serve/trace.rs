//! What a generation's spans say in the OpenTelemetry GenAI conventions
//! (`routemesh_mesh::genai`), with routemesh's own attributes beside them:
//! on the request's server span, what was asked, the request's id once
//! admitted, and what answered at what cost; for each call to a worker, a
//! `chat {model}` client span with that call's answer or failure.

use routemesh_mesh::genai::{self, Answer, RpcSide};
use routemesh_proto::v1::{GenerateRequest, GenerationParams, RouteDecision, Usage};
use tonic::Status;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::GatewayError;
use crate::pool::WorkerHandle;
use crate::request::ValidRequest;

/// The model a request asked for as its span says it: the pinned model, or
/// `router` when the gateway chooses (OpenAI's `model: "router"` or none).
fn requested_model(model: &str) -> &str {
    if model.is_empty() {
        routemesh_mesh::ROUTER_MODEL
    } else {
        model
    }
}

/// What a generation asks for, recorded on its server span as soon as the
/// edge has read it, so a request refused later (a bad key, a limit) still
/// says what it asked.
pub(crate) fn requested(span: &tracing::Span, request: &GenerateRequest) {
    genai::record_chat(
        span,
        genai::PROVIDER_ROUTEMESH,
        requested_model(&request.model),
    );
    if let Some(params) = &request.params {
        genai::record_params(span, params);
    }
}

/// A generation past admission: its id (made here when the client sent
/// none), its tenant and the strategy its calls follow.
pub(crate) fn admitted(span: &tracing::Span, req: &ValidRequest, strategy: &str) {
    span.set_attribute("routemesh.request_id", req.request_id.clone());
    span.set_attribute("routemesh.tenant", req.tenant.clone());
    span.set_attribute("routemesh.strategy", strategy.to_string());
}

/// A generation's answer on its server span: the answering model, its
/// tokens, the request's whole cost, how it was routed and how many worker
/// calls it took (failovers and a cascade's steps included).
pub(crate) fn answered(
    span: &tracing::Span,
    request_id: &str,
    route: &RouteDecision,
    usage: Option<&Usage>,
    finish_reason: i32,
    calls: usize,
) {
    let usage = usage.cloned().unwrap_or_default();
    let response_model = if usage.model.is_empty() {
        route.model.as_str()
    } else {
        usage.model.as_str()
    };
    genai::record_answer(
        span,
        &Answer {
            response_model,
            response_id: request_id,
            finish_reason: Some(genai::finish_reason_name(finish_reason)),
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        },
    );
    span.set_attribute("routemesh.cost_usd", usage.cost_usd);
    span.set_attribute("routemesh.worker", route.worker_id.clone());
    span.set_attribute("routemesh.policy", route.policy.clone());
    if let Some(chosen) = route
        .candidates
        .iter()
        .find(|c| c.worker_id == route.worker_id)
    {
        span.set_attribute("routemesh.predicted_quality", chosen.predicted_quality);
        span.set_attribute("routemesh.expected_cost_usd", chosen.expected_cost_usd);
    }
    span.set_attribute("routemesh.calls", i64::try_from(calls).unwrap_or(i64::MAX));
    if !route.cascade.is_empty() {
        span.set_attribute(
            "routemesh.cascade.steps",
            i64::try_from(route.cascade.len()).unwrap_or(i64::MAX),
        );
        span.set_attribute("routemesh.cascade.escalated", route.escalated);
    }
}

/// A generation that failed after its answer began (a stream broken
/// mid-way): its edge already reported success, so the span is told here.
pub(crate) fn broke(span: &tracing::Span, error: &GatewayError) {
    genai::record_error(
        span,
        genai::grpc_code_name(error.code()),
        &error.to_string(),
    );
}

/// The client span of one call to one worker: `chat {model}`, a child of
/// the request's span, whose context the worker continues.
pub(crate) fn worker_call_span(
    worker: &WorkerHandle,
    call: usize,
    params: &GenerationParams,
    follow_up: bool,
) -> tracing::Span {
    let span = tracing::info_span!(
        "routemesh.worker_call",
        otel.name = %genai::chat_span_name(&worker.record.model),
        otel.kind = "client",
        routemesh.worker = %worker.record.id,
        routemesh.call = call,
        routemesh.follow_up = follow_up,
    );
    genai::record_chat(&span, genai::PROVIDER_ROUTEMESH, &worker.record.model);
    genai::record_params(&span, params);
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", "routemesh.v1.Worker");
    span.set_attribute("routemesh.backend", worker.record.backend.clone());
    if let Some((address, port)) = host_and_port(&worker.record.endpoint) {
        span.set_attribute("server.address", address.to_string());
        if let Some(port) = port {
            span.set_attribute("server.port", i64::from(port));
        }
    }
    span
}

/// A worker call that answered in full.
pub(crate) fn call_served(span: &tracing::Span, usage: Option<&Usage>, finish_reason: i32) {
    genai::record_served_call(span, RpcSide::Client, usage, finish_reason);
}

/// A worker call that ended without its answer.
pub(crate) fn call_failed(span: &tracing::Span, status: &Status) {
    genai::record_grpc_status(span, RpcSide::Client, status.code(), status.message());
}

/// `host[:port]` of an `http(s)://host:port` endpoint.
fn host_and_port(endpoint: &str) -> Option<(&str, Option<u16>)> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            match port.parse() {
                Ok(port) => Some((host.trim_matches(['[', ']']), Some(port))),
                Err(_) => Some((authority, None)),
            }
        }
        _ => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::host_and_port;

    #[test]
    fn endpoints_split_into_address_and_port() {
        assert_eq!(
            host_and_port("http://10.0.0.7:50061"),
            Some(("10.0.0.7", Some(50061)))
        );
        assert_eq!(
            host_and_port("https://worker.ns.svc/"),
            Some(("worker.ns.svc", None))
        );
        assert_eq!(
            host_and_port("http://[::1]:8080"),
            Some(("::1", Some(8080)))
        );
        assert_eq!(host_and_port("in-process"), Some(("in-process", None)));
    }
}
