//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions` (plain and
//! SSE, tools and tool calls, response formats, log-probs) and
//! `GET /v1/models[/{id}]`, served beside gRPC on the same routing path.
//!
//! Requests are translated into the native request (`request`) and run
//! through the very same serving path as gRPC, so validation, routing,
//! failover, deadlines and accounting are shared; only the wire format
//! differs. Failures map to HTTP from the path's typed errors (`error`),
//! never from message text.

mod chat_wire;
mod error;
mod request;
mod responses;

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use routemesh_mesh::Tier;
use routemesh_proto::v1::{
    GenerateRequest, RouteDecision, Tier as WireTier, TokenLogprob, ToolCall, ToolCallDelta, Usage,
    generate_stream_event,
};
use serde_json::{Value, json};
use tonic::Code;
use tracing::Instrument;

use self::error::{ApiError, gateway_error, openai_error};
pub(crate) use self::request::ROUTER_MODEL;
use self::request::parse_chat;
use crate::api::counted::HttpOutcome;
use crate::error::GatewayError;
use crate::serve::{Incoming, Pipeline};
use crate::tenancy::auth::{ApiKeys, Tenant};

#[derive(Clone)]
pub(crate) struct HttpState {
    pub pipeline: std::sync::Arc<Pipeline>,
    pub keys: ApiKeys,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Request bytes held at once (`gateway.max_request_bytes_in_flight`).
    pub body_bytes: std::sync::Arc<tokio::sync::Semaphore>,
    /// Drop unknown fields rather than refuse them.
    pub ignore_unknown_fields: bool,
}

pub(crate) fn router(state: HttpState) -> Router {
    let limit = state.max_body_bytes;
    let bytes = (state.body_bytes.clone(), limit);
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/responses", post(responses::create))
        // Before the body is read: its bytes must fit in what is free.
        .route_layer(axum::middleware::from_fn_with_state(bytes, admit_body))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        // Every route's requests get a server span, refused ones included.
        .route_layer(axum::middleware::from_fn(crate::api::spans::http_server_span))
        .fallback(|| async {
            openai_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "no such endpoint; routemesh serves /v1/chat/completions, /v1/responses and /v1/models"
                    .into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(move |r: Response| async move {
            too_large_as_json(r, limit)
        }))
        // Outermost: every request counted with the status its client got.
        .layer(axum::middleware::from_fn(crate::api::counted::count_http))
        .with_state(state)
}

/// Holds the request's bytes (its Content-Length, or the largest body
/// allowed when it sends none) under `max_request_bytes_in_flight` until its
/// response is produced (a stream's, until it starts); refuses it with 429
/// at once, before reading the body, when they do not fit.
async fn admit_body(
    axum::extract::State((bytes, limit)): axum::extract::State<(
        std::sync::Arc<tokio::sync::Semaphore>,
        usize,
    )>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // An over-long body is refused by the body limit with its own 413.
    let size = declared.unwrap_or(limit).clamp(1, limit);
    let permits = u32::try_from(size).unwrap_or(u32::MAX);
    let Ok(_held) = bytes.try_acquire_many_owned(permits) else {
        crate::metrics::shed();
        return openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "server_error",
            None,
            crate::api::body_bytes::FULL.into(),
        )
        .with_code("rate_limit_exceeded")
        .into_response();
    };
    next.run(request).await
}

/// axum refuses an over-long body with a plain-text 413; OpenAI clients
/// expect their JSON error shape on every failure.
fn too_large_as_json(response: Response, limit: usize) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    openai_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        None,
        format!("request body is larger than {limit} bytes (gateway.max_request_bytes)"),
    )
    .with_code("request_too_large")
    .into_response()
}

/// An error in OpenAI's JSON shape.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates from the `Authorization` header: the tenant, if keys are on.
async fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<Option<Tenant>, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state
        .keys
        .authenticate(authorization)
        .await
        .map_err(|e| gateway_error(e.into()))
}

/// A chat-completions body as the native request, or the error's message
/// with its `param`: the HTTP edge's parser, for the fuzz target and tools.
pub fn parse_chat_body(body: &[u8], lenient: bool) -> Result<GenerateRequest, String> {
    parse_chat(body, lenient)
        .map(|chat| chat.grpc)
        .map_err(|e| e.body().to_string())
}

/// Runs an HTTP request through the serving path (whole or streamed) and
/// counts it: the one place both OpenAI endpoints call the pipeline.
async fn serve(
    state: &HttpState,
    headers: &HeaderMap,
    request: GenerateRequest,
    stream: bool,
    outcome: Option<&HttpOutcome>,
) -> Result<Served, ApiError> {
    if let Some(outcome) = outcome {
        outcome.streamed(stream);
    }
    let incoming = incoming(state, headers, request).await?;
    let span = incoming.span.clone();
    let served = if stream {
        state
            .pipeline
            .generate_stream(incoming)
            .instrument(span)
            .await
            .map(|(id, events)| Served::Stream(id, events))
    } else {
        state
            .pipeline
            .generate(incoming)
            .instrument(span)
            .await
            .map(Served::Whole)
    };
    if let Some(outcome) = outcome {
        outcome.code(
            served
                .as_ref()
                .map_or_else(GatewayError::code, |_| Code::Ok),
        );
    }
    served.map_err(gateway_error)
}

/// What the serving path made of an HTTP request.
// Made and moved once per request: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Served {
    Whole(routemesh_proto::v1::GenerateResponse),
    /// The request id and the stream's events.
    Stream(String, crate::serve::EventStream),
}

/// An HTTP request as the serving path takes it: the tenant from its API
/// key, its session from `x-session-id` (unless the body named one), and
/// the server span the route's layer opened (which continues the client's
/// W3C trace).
async fn incoming(
    state: &HttpState,
    headers: &HeaderMap,
    mut request: GenerateRequest,
) -> Result<Incoming<GenerateRequest>, ApiError> {
    if request.session_id.is_empty()
        && let Some(session) = headers.get("x-session-id").and_then(|v| v.to_str().ok())
    {
        request.session_id = session.to_string();
    }
    let span = tracing::Span::current();
    // Before the key is checked: a refused request still says what it asked.
    crate::serve::trace::requested(&span, &request);
    let tenant = authorize(state, headers).await?;
    let incoming = Incoming {
        message: request,
        tenant,
        deadline: None,
        span,
    };
    Ok(incoming)
}

/// OpenAI's name for why generation ended.
fn finish_reason(reason: i32) -> &'static str {
    routemesh_mesh::genai::finish_reason_name(reason)
}

fn usage_json(usage: &Usage) -> Value {
    let mut out = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost_usd": usage.cost_usd,
        "estimated": usage.estimated,
    });
    if let Some(cached) = usage.cached_prompt_tokens {
        out["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    out
}

fn bytes_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        Value::from(bytes.to_vec())
    }
}

/// Per-token log-probabilities in OpenAI's `logprobs` shape.
fn logprobs_json(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "token": t.token,
                "logprob": t.logprob,
                "bytes": bytes_json(&t.bytes),
                "top_logprobs": t.top_logprobs.iter().map(|top| json!({
                    "token": top.token, "logprob": top.logprob, "bytes": bytes_json(&top.bytes),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"content": content, "refusal": Value::Null})
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// One streamed piece of a tool call as OpenAI's `delta.tool_calls`: the
/// first piece of a call names it, later ones only add arguments.
fn tool_call_delta_json(piece: &ToolCallDelta) -> Value {
    let mut call = json!({"index": piece.index, "function": {"arguments": piece.arguments}});
    if !piece.id.is_empty() {
        call["id"] = piece.id.clone().into();
        call["type"] = "function".into();
    }
    if !piece.name.is_empty() {
        call["function"]["name"] = piece.name.clone().into();
    }
    json!({"tool_calls": [call]})
}

/// Headers that explain the routing decision.
fn route_headers(headers: &mut HeaderMap, request_id: &str, route: &RouteDecision) {
    let chosen = route
        .candidates
        .iter()
        .find(|c| c.worker_id == route.worker_id);
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("x-request-id", request_id.to_string());
    set("x-routemesh-model", route.model.clone());
    set("x-routemesh-worker", route.worker_id.clone());
    set("x-routemesh-policy", route.policy.clone());
    set("x-routemesh-strategy", route.strategy.clone());
    if !route.session.is_empty() {
        set("x-routemesh-session", route.session.clone());
        set("x-routemesh-affinity", route.affinity.clone());
    }
    if route.strategy == "cascade" {
        // Whether the answer is a stronger model's after a weak first one.
        set("x-routemesh-escalated", route.escalated.to_string());
    }
    if let Some(c) = chosen {
        set(
            "x-routemesh-predicted-quality",
            format!("{:.4}", c.predicted_quality),
        );
        set("x-routemesh-quality-source", c.quality_source.clone());
        set(
            "x-routemesh-expected-cost-usd",
            format!("{:.8}", c.expected_cost_usd),
        );
    }
}

async fn chat_completions(
    State(state): State<HttpState>,
    outcome: Option<Extension<HttpOutcome>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let chat = match parse_chat(&body, state.ignore_unknown_fields) {
        Ok(chat) => chat,
        Err(e) => return e.into_response(),
    };
    let outcome = outcome.as_ref().map(|Extension(o)| o);
    match serve(&state, &headers, chat.grpc, chat.stream, outcome).await {
        Err(e) => e.into_response(),
        Ok(Served::Stream(request_id, events)) => {
            stream_completion(request_id, events, chat.include_usage, chat.logprobs).await
        }
        Ok(Served::Whole(done)) => {
            let usage = done.usage.unwrap_or_default();
            let route = done.route.unwrap_or_default();
            let mut message =
                json!({"role": "assistant", "content": done.text, "refusal": Value::Null});
            if !done.tool_calls.is_empty() {
                message["tool_calls"] = tool_calls_json(&done.tool_calls);
                if done.text.is_empty() {
                    message["content"] = Value::Null;
                }
            }
            let logprobs = if chat.logprobs {
                logprobs_json(&done.logprobs)
            } else {
                Value::Null
            };
            let body = json!({
                "id": format!("chatcmpl-{}", done.request_id),
                "object": "chat.completion",
                "created": unix_now(),
                "model": usage.model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason(done.finish_reason),
                    "logprobs": logprobs,
                }],
                "usage": usage_json(&usage),
                "system_fingerprint": Value::Null,
            });
            let mut response = axum::Json(body).into_response();
            route_headers(response.headers_mut(), &done.request_id, &route);
            response
        }
    }
}

/// Server-sent events with the headers that explain the routing decision.
fn sse_response(body: Body, request_id: &str, route: &RouteDecision) -> Response {
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    route_headers(response.headers_mut(), request_id, route);
    response
}

/// A stream's first event: the routing decision (its headers come from it).
async fn first_route(events: &mut crate::serve::EventStream) -> Result<RouteDecision, ApiError> {
    match events.next().await {
        Some(Ok(e)) => match e.event {
            Some(generate_stream_event::Event::Route(route)) => Ok(route),
            _ => Ok(RouteDecision::default()),
        },
        Some(Err(e)) => Err(gateway_error(e)),
        None => Err(openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "stream ended before it began".into(),
        )),
    }
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn stream_completion(
    request_id: String,
    mut events: crate::serve::EventStream,
    include_usage: bool,
    logprobs: bool,
) -> Response {
    // The gateway sends the routing decision first: it sets the headers.
    let route = match first_route(&mut events).await {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    let id = format!("chatcmpl-{request_id}");
    let created = unix_now();
    let model = route.model.clone();
    let chunk = move |delta: Value, finish: Option<&str>, tokens: Option<&[TokenLogprob]>| {
        let logprobs = match tokens {
            Some(tokens) if logprobs => logprobs_json(tokens),
            _ => Value::Null,
        };
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]})
    };
    let first = sse_data(&chunk(
        json!({"role": "assistant", "content": ""}),
        None,
        None,
    ));
    let body = futures::stream::once(async move { Ok::<_, Infallible>(first) }).chain(
        futures::stream::unfold(Some(events), move |events| {
            let chunk = chunk.clone();
            async move {
                let mut events = events?;
                match events.next().await {
                    Some(Ok(e)) => match e.event {
                        Some(generate_stream_event::Event::Delta(d)) => Some((
                            vec![sse_data(&chunk(
                                json!({"content": d.text}),
                                None,
                                Some(&d.logprobs),
                            ))],
                            Some(events),
                        )),
                        Some(generate_stream_event::Event::ToolCall(piece)) => Some((
                            vec![sse_data(&chunk(tool_call_delta_json(&piece), None, None))],
                            Some(events),
                        )),
                        Some(generate_stream_event::Event::End(end)) => {
                            let mut out = vec![sse_data(&chunk(
                                json!({}),
                                Some(finish_reason(end.finish_reason)),
                                None,
                            ))];
                            if include_usage {
                                let mut usage_chunk = chunk(json!({}), None, None);
                                usage_chunk["choices"] = json!([]);
                                usage_chunk["usage"] = usage_json(&end.usage.unwrap_or_default());
                                out.push(sse_data(&usage_chunk));
                            }
                            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                            Some((out, None))
                        }
                        _ => Some((Vec::new(), Some(events))),
                    },
                    // Mid-stream failures arrive as an error event, as OpenAI sends them.
                    Some(Err(e)) => {
                        e.log();
                        Some((vec![sse_data(&gateway_error(e).body())], None))
                    }
                    None => None,
                }
            }
        })
        .flat_map(|chunks| futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>))),
    );
    sse_response(Body::from_stream(body), &request_id, &route)
}

/// Every model clients may name: the router, its threshold variants, and
/// the pool's models with their prices, health and capabilities.
fn model_entries(state: &HttpState) -> Vec<Value> {
    let models = state.pipeline.state().list_models();
    let mut data = vec![
        json!({"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "routemesh",
                               "routemesh": {"virtual": true, "description": "learned routing with the gateway's default policy"}}),
    ];
    for (strong, weak, share, threshold) in state
        .pipeline
        .state()
        .routing
        .quality
        .calibrated_thresholds()
    {
        data.push(json!({"id": format!("router-mf-{threshold:.3}"), "object": "model", "created": 0, "owned_by": "routemesh",
                         "routemesh": {"virtual": true, "description": format!(
                             "RouteLLM-style threshold routing between the pool's most and least expensive models; about {:.0}% strong calls on the {strong} / {weak} training prompts", share * 100.0)}}));
    }
    for m in models.models {
        let tier = if m.tier == WireTier::Large as i32 {
            Tier::Large
        } else {
            Tier::Small
        };
        let capabilities = m.capabilities.unwrap_or_default();
        data.push(json!({"id": m.name, "object": "model", "created": 0, "owned_by": "routemesh",
                         "routemesh": {"tier": tier.as_str(), "input_usd_per_mtok": m.input_usd_per_mtok,
                                       "output_usd_per_mtok": m.output_usd_per_mtok, "healthy_workers": m.healthy_workers,
                                       "router_model": m.router_model, "router_knowledge": m.router_knowledge,
                                       "capabilities": {
                                           "tools": capabilities.tools, "json_output": capabilities.json_output,
                                           "structured_output": capabilities.structured_output,
                                           "vision": capabilities.vision, "logprobs": capabilities.logprobs,
                                           "context_tokens": (capabilities.context_tokens > 0).then_some(capabilities.context_tokens),
                                       }}}));
    }
    data
}

async fn list_models(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers).await {
        return e.into_response();
    }
    axum::Json(json!({"object": "list", "data": model_entries(&state)})).into_response()
}

async fn get_model(
    State(state): State<HttpState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = authorize(&state, &headers).await {
        return e.into_response();
    }
    match model_entries(&state)
        .into_iter()
        .find(|m| m["id"].as_str() == Some(id.as_str()))
    {
        Some(model) => axum::Json(model).into_response(),
        None => openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model"),
            format!("the model {id:?} does not exist; GET /v1/models lists them"),
        )
        .with_code("model_not_found")
        .into_response(),
    }
}
