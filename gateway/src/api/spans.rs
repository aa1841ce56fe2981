//! The server span of every client call, in the OpenTelemetry HTTP and RPC
//! conventions: named by the route or RPC it came in on, continuing the
//! caller's W3C trace, and ended with the status it got, requests refused
//! for their API key included. What a generation asked a model and what it
//! got is recorded on the same span by `serve::trace`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use routemesh_mesh::genai::{self, RpcSide};
use routemesh_mesh::trace_context;
use tonic::Code;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The gRPC service clients call.
const GATEWAY_SERVICE: &str = "routemesh.v1.Gateway";

/// `http` or `https`: how the listener serving a request speaks, which the
/// request itself does not say (its URI holds only the path).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UrlScheme(pub(crate) &'static str);

/// Serves an HTTP request inside its span (`POST /v1/chat/completions`),
/// which lasts as long as a streamed answer; handlers add to it through
/// `tracing::Span::current()`.
pub(crate) async fn http_server_span(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        "routemesh.http",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
    );
    span.set_attribute("http.request.method", method);
    span.set_attribute("http.route", route);
    span.set_attribute("url.path", request.uri().path().to_owned());
    if let Some(UrlScheme(scheme)) = request.extensions().get::<UrlScheme>() {
        span.set_attribute("url.scheme", *scheme);
    }
    if let Some(agent) = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        span.set_attribute("user_agent.original", agent.to_owned());
    }
    trace_context::continue_http_trace(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    genai::record_http_server_status(&span, response.status().as_u16());
    response
}

/// The span of a call to the Gateway service's `method`
/// (`routemesh.v1.Gateway/Generate`), continuing the caller's trace.
pub(crate) fn grpc_server_span(method: &str, headers: &http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "routemesh.grpc",
        otel.name = %format!("{GATEWAY_SERVICE}/{method}"),
        otel.kind = "server",
    );
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", GATEWAY_SERVICE);
    span.set_attribute("rpc.method", method.to_owned());
    trace_context::continue_http_trace(&span, headers);
    span
}

/// Ends a gRPC server span with the call's status.
pub(crate) fn grpc_finished(span: &tracing::Span, code: Code, message: &str) {
    genai::record_grpc_status(span, RpcSide::Server, code, message);
}

/// A gRPC call refused before the service saw it (its API key): its own
/// span, ended at once with the refusal.
pub(crate) fn grpc_refused(path: &str, headers: &http::HeaderMap, status: &tonic::Status) {
    let method = path.rsplit('/').next().unwrap_or(path);
    let span = grpc_server_span(method, headers);
    grpc_finished(&span, status.code(), status.message());
}
