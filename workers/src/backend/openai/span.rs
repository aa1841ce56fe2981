//! The client span of one call to the engine, `chat {engine model}` in the
//! OpenTelemetry GenAI and HTTP client conventions. Its context goes to the
//! engine as W3C `traceparent`, so an engine that traces (vLLM exports
//! OTLP) continues the request's trace under it.

use routemesh_mesh::genai::{self, Answer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::super::{EngineError, EngineUsage, GenerateInput};

/// The span of a `POST {url}` asking the engine's `model`.
pub(super) fn engine_span(model: &str, url: &reqwest::Url, input: &GenerateInput) -> tracing::Span {
    let span = tracing::info_span!(
        "routemesh.worker.engine_call",
        otel.name = %genai::chat_span_name(model),
        otel.kind = "client",
    );
    genai::record_chat(&span, genai::PROVIDER_OPENAI, model);
    genai::record_params(&span, &input.params);
    span.set_attribute("http.request.method", "POST");
    span.set_attribute("url.full", url.as_str().to_owned());
    if let Some(host) = url.host_str() {
        span.set_attribute("server.address", host.to_owned());
    }
    if let Some(port) = url.port_or_known_default() {
        span.set_attribute("server.port", i64::from(port));
    }
    span
}

/// The engine's HTTP answer's status, whatever it was.
pub(super) fn record_http_status(span: &tracing::Span, status: reqwest::StatusCode) {
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
}

/// What the engine answered: its completion's id and model as it named
/// them (empty when it did not), why it stopped, its tokens.
pub(super) fn record_answer(
    span: &tracing::Span,
    id: &str,
    model: &str,
    finish_reason: Option<&str>,
    usage: &EngineUsage,
) {
    genai::record_answer(
        span,
        &Answer {
            response_model: model,
            response_id: id,
            finish_reason,
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        },
    );
}

/// The call failed: `error.type` names how (the HTTP status, when one came,
/// is `http.response.status_code` beside it).
pub(super) fn record_error(span: &tracing::Span, error: &EngineError) {
    genai::record_error(span, error_type(error), &error.to_string());
}

fn error_type(error: &EngineError) -> &'static str {
    match error {
        EngineError::Unreachable(_) => "connection_error",
        EngineError::Timeout(_) => "timeout",
        EngineError::Rejected(_) => "rejected",
        EngineError::ContextExceeded(_) => "context_length_exceeded",
        EngineError::RateLimited(_) => "rate_limited",
        EngineError::Upstream { .. } => "upstream_error",
        EngineError::Malformed(_) => "malformed_response",
        EngineError::Injected => "injected",
    }
}
