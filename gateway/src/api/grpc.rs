//! The gRPC Gateway service: reads the transport's facts (tenant, deadline,
//! trace) and hands the request to the serving path (`counted` counts each
//! call, in front of authentication).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use routemesh_proto::v1::{
    FeedbackRequest, FeedbackResponse, GenerateRequest, GenerateResponse, GenerateStreamEvent,
    ListModelsRequest, ListModelsResponse, RouteDecision, gateway_server::Gateway,
};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::serve::{Incoming, Pipeline};
use crate::tenancy::auth::Tenant;

#[derive(Debug, Clone)]
pub(crate) struct GatewayService {
    pipeline: Arc<Pipeline>,
}

impl GatewayService {
    pub(crate) fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }
}

/// The client's deadline from its `grpc-timeout` header, if it sent one.
fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request as the serving path takes it, with its server span.
fn incoming(
    request: Request<GenerateRequest>,
    method: &'static str,
) -> (Incoming<GenerateRequest>, tracing::Span) {
    let span = crate::api::spans::grpc_server_span(method, request.metadata().as_ref());
    crate::serve::trace::requested(&span, request.get_ref());
    let deadline = client_deadline(&request);
    let tenant = request.extensions().get::<Tenant>().cloned();
    // The session may come as metadata, like the HTTP API's header.
    let session = request
        .metadata()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut message = request.into_inner();
    if message.session_id.is_empty()
        && let Some(session) = session
    {
        message.session_id = session;
    }
    let incoming = Incoming {
        message,
        tenant,
        deadline,
        span: span.clone(),
    };
    (incoming, span)
}

fn with_request_id<T>(message: T, request_id: &str) -> Response<T> {
    let mut response = Response::new(message);
    if let Ok(value) = request_id.parse() {
        response.metadata_mut().insert("x-request-id", value);
    }
    response
}

fn code_of<T>(result: &Result<T, Status>) -> Code {
    result.as_ref().map_or_else(Status::code, |_| Code::Ok)
}

/// Ends the call's server span with its status.
fn finish<T>(span: &tracing::Span, result: &Result<T, Status>) {
    let message = result.as_ref().err().map_or("", Status::message);
    crate::api::spans::grpc_finished(span, code_of(result), message);
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<GenerateStreamEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let (incoming, span) = incoming(request, "Generate");
        let result = self
            .pipeline
            .generate(incoming)
            .instrument(span.clone())
            .await
            .map(|done| {
                let request_id = done.request_id.clone();
                with_request_id(done, &request_id)
            })
            .map_err(Status::from);
        finish(&span, &result);
        result
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let (incoming, span) = incoming(request, "GenerateStream");
        let result = self
            .pipeline
            .generate_stream(incoming)
            .instrument(span.clone())
            .await
            .map(|(request_id, events)| {
                let events: EventStream = events.map(|e| e.map_err(Status::from)).boxed();
                with_request_id(events, &request_id)
            })
            .map_err(Status::from);
        // A stream's later failures are told on the span by the relay.
        finish(&span, &result);
        result
    }

    async fn route(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<RouteDecision>, Status> {
        let (incoming, span) = incoming(request, "Route");
        let result = self
            .pipeline
            .route_only(incoming)
            .instrument(span.clone())
            .await
            .map(|decision| {
                let request_id = decision.request_id.clone();
                with_request_id(decision, &request_id)
            })
            .map_err(Status::from);
        finish(&span, &result);
        result
    }

    async fn feedback(
        &self,
        request: Request<FeedbackRequest>,
    ) -> Result<Response<FeedbackResponse>, Status> {
        let span = crate::api::spans::grpc_server_span("Feedback", request.metadata().as_ref());
        // Without auth every caller is the same anonymous owner (`None`).
        let owner = request.extensions().get::<Tenant>().map(|t| t.0.clone());
        let result = self
            .pipeline
            .state()
            .feedback(&owner, request.into_inner())
            .instrument(span.clone())
            .await
            .map(Response::new)
            .map_err(Status::from);
        finish(&span, &result);
        result
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let span = crate::api::spans::grpc_server_span("ListModels", request.metadata().as_ref());
        let result = Ok(Response::new(self.pipeline.state().list_models()));
        finish(&span, &result);
        result
    }
}

/// A request body that is not the RPC's protobuf message is the client's
/// mistake: tonic's codec answers it with INTERNAL before any handler runs;
/// this turns that answer (a trailers-only response) into INVALID_ARGUMENT,
/// as the API documents, keeping tonic's message.
pub(crate) fn undecodable_is_invalid_argument<B>(
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
        && headers.get("grpc-message").is_some_and(|m| {
            m.as_bytes()
                .starts_with(b"failed%20to%20decode%20Protobuf%20message")
        });
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_undecodable_requests_become_invalid_argument() {
        let status = |code: &'static str, message: &'static str| {
            let response = http::Response::builder()
                .header("grpc-status", code)
                .header("grpc-message", message)
                .body(())
                .unwrap();
            let out = undecodable_is_invalid_argument(response);
            out.headers()["grpc-status"].to_str().unwrap().to_string()
        };
        assert_eq!(
            status("13", "failed%20to%20decode%20Protobuf%20message%3A%20x"),
            "3"
        );
        assert_eq!(status("13", "engine%20failed"), "13");
        assert_eq!(
            status("14", "failed%20to%20decode%20Protobuf%20message"),
            "14"
        );
    }
}
