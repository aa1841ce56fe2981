//! routemesh's spans in the OpenTelemetry semantic conventions for generative
//! AI (pinned to [`SEMCONV_VERSION`], named in the README): the name and the
//! attributes of a model call, and how a failure shows on a span, in one
//! place for the gateway and the worker agent alike.
//!
//! Attributes are set on the OpenTelemetry span itself rather than declared
//! as `tracing` fields, since most are known only when the call ends. Each
//! key is set once per span: the SDK keeps a repeated key twice.

use opentelemetry::trace::Status;
use opentelemetry::{Array, StringValue, Value};
use routemesh_proto::v1::{FinishReason, GenerationParams, Usage};
use tonic::Code;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The version of the semantic conventions these spans follow.
pub const SEMCONV_VERSION: &str = "1.37.0";

/// `gen_ai.operation.name` of every generation: routemesh serves chat.
pub const OPERATION_CHAT: &str = "chat";

/// `gen_ai.provider.name` of the calls routemesh itself answers: a client's
/// request at the gateway and the gateway's call to a worker agent.
pub const PROVIDER_ROUTEMESH: &str = "routemesh";

/// `gen_ai.provider.name` of an agent's call to an OpenAI-compatible engine:
/// the conventions name the API a client speaks when the product behind it
/// (vLLM, SGLang, Ollama) cannot be known.
pub const PROVIDER_OPENAI: &str = "openai";

/// `chat {model}`: the name of a model call's span.
pub fn chat_span_name(model: &str) -> String {
    format!("{OPERATION_CHAT} {model}")
}

/// Marks `span` as a chat call to `provider` asking for `model`.
pub fn record_chat(span: &tracing::Span, provider: &'static str, model: &str) {
    span.set_attribute("gen_ai.operation.name", OPERATION_CHAT);
    span.set_attribute("gen_ai.provider.name", provider);
    span.set_attribute("gen_ai.request.model", model.to_string());
}

/// The request's sampling parameters, those it set.
pub fn record_params(span: &tracing::Span, params: &GenerationParams) {
    if let Some(max_tokens) = params.max_tokens {
        span.set_attribute("gen_ai.request.max_tokens", i64::from(max_tokens));
    }
    if let Some(temperature) = params.temperature {
        span.set_attribute("gen_ai.request.temperature", f64::from(temperature));
    }
    if let Some(top_p) = params.top_p {
        span.set_attribute("gen_ai.request.top_p", f64::from(top_p));
    }
    if let Some(seed) = params.seed {
        span.set_attribute(
            "gen_ai.request.seed",
            i64::try_from(seed).unwrap_or(i64::MAX),
        );
    }
    if !params.stop.is_empty() {
        span.set_attribute("gen_ai.request.stop_sequences", strings(&params.stop));
    }
}

/// What a model answered, as the conventions record it.
#[derive(Debug, Clone, Default)]
pub struct Answer<'a> {
    /// The model that answered (may differ from the one asked for).
    pub response_model: &'a str,
    /// The answer's id; empty when the answerer gave none.
    pub response_id: &'a str,
    /// Why generation ended, in OpenAI's words (see [`finish_reason_name`]).
    pub finish_reason: Option<&'a str>,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// Records `answer` on `span`.
pub fn record_answer(span: &tracing::Span, answer: &Answer<'_>) {
    if !answer.response_model.is_empty() {
        span.set_attribute("gen_ai.response.model", answer.response_model.to_string());
    }
    if !answer.response_id.is_empty() {
        span.set_attribute("gen_ai.response.id", answer.response_id.to_string());
    }
    if let Some(reason) = answer.finish_reason {
        span.set_attribute("gen_ai.response.finish_reasons", strings(&[reason]));
    }
    span.set_attribute("gen_ai.usage.input_tokens", i64::from(answer.input_tokens));
    span.set_attribute(
        "gen_ai.usage.output_tokens",
        i64::from(answer.output_tokens),
    );
}

/// OpenAI's name for why generation ended, which the conventions use too.
pub fn finish_reason_name(reason: i32) -> &'static str {
    match FinishReason::try_from(reason) {
        Ok(FinishReason::Length) => "length",
        Ok(FinishReason::ToolCalls) => "tool_calls",
        Ok(FinishReason::ContentFilter) => "content_filter",
        _ => "stop",
    }
}

/// A failed operation: `error.type` (a low-cardinality name of the
/// failure) and the span's status ERROR with `description`.
pub fn record_error(span: &tracing::Span, error_type: &str, description: &str) {
    span.set_attribute("error.type", error_type.to_string());
    span.set_status(Status::error(description.to_string()));
}

/// Which end of a gRPC call a span stands for: the conventions count
/// different codes as the span's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcSide {
    Client,
    Server,
}

/// A gRPC call (`side` of it) that answered in full: its status, the
/// answer's model, finish reason, tokens, and `routemesh.cost_usd`.
pub fn record_served_call(
    span: &tracing::Span,
    side: RpcSide,
    usage: Option<&Usage>,
    finish_reason: i32,
) {
    let usage = usage.cloned().unwrap_or_default();
    record_grpc_status(span, side, Code::Ok, "");
    record_answer(
        span,
        &Answer {
            response_model: &usage.model,
            response_id: "",
            finish_reason: Some(finish_reason_name(finish_reason)),
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
        },
    );
    span.set_attribute("routemesh.cost_usd", usage.cost_usd);
}

/// A gRPC call's outcome: `rpc.grpc.status_code`, and for any other code
/// than OK its name as `error.type`. The status is ERROR for every failure
/// on a client span, but on a server span only for the server's own faults
/// (a refused key or a bad argument is the caller's error, not the server's).
pub fn record_grpc_status(span: &tracing::Span, side: RpcSide, code: Code, message: &str) {
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if code == Code::Ok {
        return;
    }
    span.set_attribute("error.type", grpc_code_name(code));
    if side == RpcSide::Client || grpc_server_fault(code) {
        span.set_status(Status::error(message.to_string()));
    }
}

/// An HTTP server span's outcome: `http.response.status_code`, the code as
/// `error.type` from 400 on, and status ERROR only for 5xx (a 4xx is the
/// client's error, as the HTTP conventions say).
pub fn record_http_server_status(span: &tracing::Span, status: u16) {
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 400 {
        span.set_attribute("error.type", status.to_string());
    }
    if status >= 500 {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
}

/// The canonical name of a gRPC status code (`UNAUTHENTICATED`).
pub fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The codes a gRPC server span counts as its own error.
fn grpc_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn strings<S: AsRef<str>>(values: &[S]) -> Value {
    Value::Array(Array::String(
        values
            .iter()
            .map(|v| StringValue::from(v.as_ref().to_string()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_spans_count_only_the_servers_own_faults() {
        assert!(grpc_server_fault(Code::Unavailable));
        assert!(grpc_server_fault(Code::Internal));
        assert!(!grpc_server_fault(Code::Unauthenticated));
        assert!(!grpc_server_fault(Code::InvalidArgument));
        assert!(!grpc_server_fault(Code::ResourceExhausted));
    }

    #[test]
    fn finish_reasons_read_as_openai_names_them() {
        assert_eq!(finish_reason_name(FinishReason::Length as i32), "length");
        assert_eq!(
            finish_reason_name(FinishReason::StopSequence as i32),
            "stop"
        );
        assert_eq!(
            finish_reason_name(FinishReason::ToolCalls as i32),
            "tool_calls"
        );
    }
}
