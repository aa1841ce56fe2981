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
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use routemesh_proto::v1::{ToolCallDelta, generate_stream_event};
use serde_json::{Value, json};
use tonic::Code;

use self::output::{Frame, Output, ResponseError, ending};
use self::request::{Echo, parse};
use super::error::http_status;
use super::{HttpState, Served, first_route, route_headers, serve, sse_response, unix_now};
use crate::api::counted::HttpOutcome;
use crate::serve::EventStream;

/// `POST /v1/responses`: authenticates as chat completions do, then runs the
/// request whole or streamed.
pub(super) async fn create(
    State(state): State<HttpState>,
    outcome: Option<Extension<HttpOutcome>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse(&body) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let outcome = outcome.as_ref().map(|Extension(o)| o);
    let done = match serve(&state, &headers, req.grpc, req.stream, outcome).await {
        Err(e) => return e.into_response(),
        Ok(Served::Stream(request_id, events)) => {
            return stream_response(request_id, events, req.echo).await;
        }
        Ok(Served::Whole(done)) => done,
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

/// A streamed response: the lifecycle events around the output's events.
async fn stream_response(request_id: String, mut events: EventStream, echo: Echo) -> Response {
    // The gateway sends the routing decision first: it sets the headers.
    let route = match first_route(&mut events).await {
        Ok(route) => route,
        Err(e) => return e.into_response(),
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
    sse_response(Body::from_stream(body), &request_id, &route)
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
