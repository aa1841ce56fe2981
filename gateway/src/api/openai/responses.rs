//! `POST /v1/responses`: OpenAI's Responses API mapped onto the serving path
//! chat completions use (text and function tools, plain and streamed).
//!
//! The request is parsed into typed structs (unknown fields are refused with
//! their path as `param`), turned into the native `GenerateRequest`, and run
//! by the same `Pipeline` as every other API. The answer becomes output
//! items (a message, function calls) through one [`Output`] builder, which
//! also writes the stream's events, so a streamed and a whole answer can
//! never disagree on what they hold. routemesh keeps no responses: `store`
//! and `previous_response_id` are refused and every request carries its
//! whole conversation.

mod output;
mod request;
#[cfg(test)]
mod tests;

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use routemesh_proto::v1::{RouteDecision, ToolCallDelta, generate_stream_event};
use serde_json::{Value, json};
use tonic::Code;
use tracing::Instrument;

use self::output::{Frame, Output, ResponseError, ending};
use self::request::{Echo, parse};
use super::error::{gateway_error, http_status, openai_error};
use super::{HttpState, authorize, route_headers, unix_now};
use crate::error::GatewayError;
use crate::serve::{Api, EventStream, Incoming};

/// `POST /v1/responses`: authenticates as chat completions do, then runs the
/// request whole or streamed.
pub(super) async fn create(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut req = match parse(&body) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    if let Some(session) = headers.get("x-session-id").and_then(|v| v.to_str().ok()) {
        req.grpc.session_id = session.to_string();
    }
    let tenant = match authorize(&state, &headers).await {
        Ok(tenant) => tenant,
        Err(e) => return e.into_response(),
    };
    // W3C trace context from HTTP headers continues like gRPC metadata.
    let mut metadata = tonic::metadata::MetadataMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            metadata.insert(name, value);
        }
    }
    let method = if req.stream {
        "GenerateStream"
    } else {
        "Generate"
    };
    let span = crate::api::request_span(
        Api::Http,
        method,
        &req.grpc.request_id,
        &req.grpc.model,
        &metadata,
    );
    let incoming = Incoming {
        message: req.grpc,
        tenant,
        deadline: None,
    };
    let start = tokio::time::Instant::now();
    if req.stream {
        let events = state
            .pipeline
            .generate_stream(incoming)
            .instrument(span)
            .await;
        let code = events
            .as_ref()
            .map_or_else(GatewayError::code, |_| Code::Ok);
        crate::metrics::request("http", method, code, start.elapsed());
        match events {
            Ok((request_id, events)) => stream_response(request_id, events, req.echo).await,
            Err(e) => gateway_error(e).into_response(),
        }
    } else {
        let done = state.pipeline.generate(incoming).instrument(span).await;
        let code = done.as_ref().map_or_else(GatewayError::code, |_| Code::Ok);
        crate::metrics::request("http", method, code, start.elapsed());
        let done = match done {
            Ok(done) => done,
            Err(e) => return gateway_error(e).into_response(),
        };
        let usage = done.usage.unwrap_or_default();
        let route = done.route.unwrap_or_default();
        let mut output = Output::new(&done.request_id);
        output.text(&done.text);
        for (index, call) in done.tool_calls.into_iter().enumerate() {
            output.tool_call(ToolCallDelta {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                id: call.id,
                name: call.name,
                arguments: call.arguments,
            });
        }
        let (status, incomplete) = ending(done.finish_reason);
        output.finish(status);
        let frame = Frame {
            id: format!("resp_{}", done.request_id),
            created_at: unix_now(),
            model: if usage.model.is_empty() {
                route.model.clone()
            } else {
                usage.model.clone()
            },
            echo: req.echo,
        };
        let body = frame.object(status, &output.items, Some(&usage), None, incomplete);
        let mut response = axum::Json(body).into_response();
        route_headers(response.headers_mut(), &done.request_id, &route);
        response
    }
}

/// A streamed response: the lifecycle events around the output's events.
async fn stream_response(request_id: String, mut events: EventStream, echo: Echo) -> Response {
    // The gateway sends the routing decision first: it sets the headers.
    let route = match events.next().await {
        Some(Ok(e)) => match e.event {
            Some(generate_stream_event::Event::Route(route)) => route,
            _ => RouteDecision::default(),
        },
        Some(Err(e)) => return gateway_error(e).into_response(),
        None => {
            return openai_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "stream ended before it began".into(),
            )
            .into_response();
        }
    };
    let frame = Frame {
        id: format!("resp_{request_id}"),
        created_at: unix_now(),
        model: route.model.clone(),
        echo,
    };
    let mut output = Output::new(&request_id);
    let started = frame.object("in_progress", &[], None, None, None);
    output.emit("response.created", json!({"response": started}));
    output.emit("response.in_progress", json!({"response": started}));
    let first = output.take_sse();
    let body = futures::stream::iter(first.into_iter().map(Ok::<_, Infallible>)).chain(
        futures::stream::unfold(Some((events, output, frame)), |state| async move {
            let (mut events, mut output, frame) = state?;
            let ended = match events.next().await {
                Some(Ok(e)) => match e.event {
                    Some(generate_stream_event::Event::Delta(d)) => {
                        output.text(&d.text);
                        false
                    }
                    Some(generate_stream_event::Event::ToolCall(piece)) => {
                        output.tool_call(piece);
                        false
                    }
                    Some(generate_stream_event::Event::End(end)) => {
                        let (status, incomplete) = ending(end.finish_reason);
                        output.finish(status);
                        let kind = if status == "completed" {
                            "response.completed"
                        } else {
                            // As OpenAI ends a stream cut short.
                            "response.incomplete"
                        };
                        let response = frame.object(
                            status,
                            &output.items,
                            end.usage.as_ref(),
                            None,
                            incomplete,
                        );
                        output.emit(kind, json!({"response": response}));
                        true
                    }
                    Some(generate_stream_event::Event::Route(_)) | None => false,
                },
                // Mid-stream failures: an `error` event, then the response
                // failed with what it had, as OpenAI ends a failed stream.
                Some(Err(e)) => {
                    e.log();
                    fail(&mut output, &frame, e.code(), e.to_string());
                    true
                }
                None => {
                    fail(
                        &mut output,
                        &frame,
                        Code::Unavailable,
                        "stream ended without an end event".into(),
                    );
                    true
                }
            };
            let chunks = output.take_sse();
            Some((chunks, (!ended).then_some((events, output, frame))))
        })
        .flat_map(|chunks| futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>))),
    );
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    route_headers(response.headers_mut(), &request_id, &route);
    response
}

/// Ends a stream that failed: the `error` event, then `response.failed`.
fn fail(output: &mut Output, frame: &Frame, code: Code, message: String) {
    let (_, kind) = http_status(code);
    output.close("incomplete");
    output.emit(
        "error",
        json!({"code": kind, "message": message, "param": Value::Null}),
    );
    let error = ResponseError {
        // The codes the SDK's ResponseError allows.
        code: if code == Code::ResourceExhausted {
            "rate_limit_exceeded"
        } else {
            "server_error"
        },
        message,
    };
    let response = frame.object("failed", &output.items, None, Some(error), None);
    output.emit("response.failed", json!({"response": response}));
}
