//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions` (plain and
//! SSE) and `GET /v1/models`, served beside gRPC on the same routing path.
//!
//! Requests are translated into the gRPC service's messages and run through
//! the very same `GatewayService` methods, so validation, routing, failover,
//! deadlines and accounting are shared; only the wire format differs.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use routemesh_mesh::Tier;
use routemesh_proto::v1::{
    ChatMessage, FinishReason, GenerateRequest, GenerationParams, ListModelsRequest, RouteDecision,
    RoutingHints, Tier as WireTier, Usage, gateway_server::Gateway, generate_stream_event,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::auth::ApiKeys;
use crate::service::{GatewayService, HttpApi};
use crate::validate::tier_to_wire;

/// The virtual model that asks the router to choose.
pub const ROUTER_MODEL: &str = "router";

#[derive(Clone)]
pub struct HttpState {
    pub service: GatewayService,
    pub keys: ApiKeys,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

pub fn router(state: HttpState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .fallback(|| async {
            openai_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "no such endpoint; routemesh serves /v1/chat/completions and /v1/models".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An error in OpenAI's JSON shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<String>,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": Value::Null}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // Whole seconds: the pushback rounded up.
            let secs = crate::error::RETRY_PUSHBACK_MS.div_ceil(1000).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

fn openai_error(
    status: StatusCode,
    kind: &'static str,
    param: Option<&str>,
    message: String,
) -> ApiError {
    ApiError {
        status,
        kind,
        param: param.map(str::to_owned),
        message,
    }
}

/// The HTTP status and OpenAI error type for a gRPC status: the one place the
/// HTTP edge translates failures.
fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable_error"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        Code::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "cancelled",
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

fn status_response(status: &tonic::Status) -> ApiError {
    let (http, kind) = http_status(status.code());
    // The gRPC messages start with the field at fault ("params.top_p: ...").
    let param = status
        .message()
        .split_once(": ")
        .map(|(field, _)| field)
        .filter(|f| !f.contains(' '));
    openai_error(http, kind, param, status.message().to_string())
}

fn bad_request(param: &str, message: impl Into<String>) -> ApiError {
    openai_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(param),
        format!("{param}: {}", message.into()),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates from the `Authorization` header; the tenant (if keys are on)
/// goes into the gRPC request's extensions exactly as the gRPC edge does.
async fn authorize<T>(
    state: &HttpState,
    headers: &HeaderMap,
    request: &mut tonic::Request<T>,
) -> Result<(), ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.keys.authenticate(authorization).await {
        Ok(Some(tenant)) => {
            request.extensions_mut().insert(tenant);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(status_response(&tonic::Status::from(e))),
    }
}

/// A chat request parsed from OpenAI's JSON.
struct ChatRequest {
    grpc: GenerateRequest,
    stream: bool,
    include_usage: bool,
    /// What the client asked for, echoed in responses when routed.
    requested_model: String,
}

fn text_of(content: &Value, i: usize) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        // Content parts: only text parts are supported.
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(text)) => Ok(text.to_string()),
                    _ => Err(bad_request(
                        &format!("messages[{i}].content[{j}]"),
                        "only text content parts are supported",
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.join("")),
        _ => Err(bad_request(
            &format!("messages[{i}].content"),
            "must be a string or an array of text parts",
        )),
    }
}

fn opt_f64(body: &Value, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad_request(key, "must be a number")),
    }
}

fn opt_u64(body: &Value, key: &str) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_request(key, "must be a non-negative integer")),
    }
}

fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !body.is_object() {
        return Err(openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "request body must be a JSON object".into(),
        ));
    }
    let model = match body.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => {
            return Err(bad_request(
                "model",
                "required: a model name from /v1/models, or \"router\"",
            ));
        }
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(bad_request("messages", "required: an array of messages"));
    };
    let mut chat = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_request(&format!("messages[{i}].role"), "required"))?;
        // OpenAI's newer name for the system role.
        let role = if role == "developer" { "system" } else { role };
        let content = text_of(m.get("content").unwrap_or(&Value::Null), i)?;
        chat.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    if let Some(n) = opt_u64(&body, "n")?
        && n != 1
    {
        return Err(bad_request("n", "only n = 1 is supported"));
    }
    let max_tokens = match opt_u64(&body, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(&body, "max_tokens")?,
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad_request("stop", "must be a string or an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad_request(
                "stop",
                "must be a string or an array of strings",
            ));
        }
    };
    let params = GenerationParams {
        max_tokens: max_tokens.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        temperature: opt_f64(&body, "temperature")?.map(|t| t as f32),
        top_p: opt_f64(&body, "top_p")?.map(|t| t as f32),
        stop,
        seed: opt_u64(&body, "seed")?,
    };
    let hints = match body.get("routing") {
        None | Some(Value::Null) => None,
        Some(r) if r.is_object() => Some(parse_hints(r)?),
        Some(_) => return Err(bad_request("routing", "must be an object")),
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let requested_model = model.clone();
    let grpc = GenerateRequest {
        request_id: String::new(),
        model: if model == ROUTER_MODEL {
            String::new()
        } else {
            model
        },
        messages: chat,
        params: Some(params),
        hints,
        tenant: String::new(),
    };
    Ok(ChatRequest {
        grpc,
        stream,
        include_usage,
        requested_model,
    })
}

/// routemesh's extension: `"routing": {"max_cost_usd", "latency_slo_ms",
/// "quality_floor", "allowed_models", "allowed_tiers": ["small"|"large"]}`.
fn parse_hints(r: &Value) -> Result<RoutingHints, ApiError> {
    let strings = |key: &str| -> Result<Vec<String>, ApiError> {
        match r.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_owned).ok_or_else(|| {
                        bad_request(&format!("routing.{key}"), "must be an array of strings")
                    })
                })
                .collect(),
            Some(_) => Err(bad_request(
                &format!("routing.{key}"),
                "must be an array of strings",
            )),
        }
    };
    let tiers = strings("allowed_tiers")?
        .iter()
        .map(|t| match t.parse::<Tier>() {
            Ok(tier) => Ok(tier_to_wire(tier) as i32),
            Err(e) => Err(bad_request("routing.allowed_tiers", e.to_string())),
        })
        .collect::<Result<_, _>>()?;
    Ok(RoutingHints {
        allowed_models: strings("allowed_models")?,
        allowed_tiers: tiers,
        max_cost_usd: opt_f64(r, "max_cost_usd")
            .map_err(|_| bad_request("routing.max_cost_usd", "must be a number"))?,
        latency_slo_ms: opt_u64(r, "latency_slo_ms")
            .map_err(|_| bad_request("routing.latency_slo_ms", "must be a non-negative integer"))?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        quality_floor: opt_f64(r, "quality_floor")
            .map_err(|_| bad_request("routing.quality_floor", "must be a number"))?,
    })
}

fn finish_reason(reason: i32) -> &'static str {
    match FinishReason::try_from(reason) {
        Ok(FinishReason::Length) => "length",
        _ => "stop",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost_usd": usage.cost_usd,
        "estimated": usage.estimated,
    })
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let chat = match parse_chat(&body) {
        Ok(chat) => chat,
        Err(e) => return e.into_response(),
    };
    if chat.requested_model.is_empty() {
        return bad_request("model", "must not be empty").into_response();
    }
    let mut request = tonic::Request::new(chat.grpc);
    request.extensions_mut().insert(HttpApi);
    // W3C trace context from HTTP headers continues like gRPC metadata.
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            request.metadata_mut().insert(name, value);
        }
    }
    if let Err(e) = authorize(&state, &headers, &mut request).await {
        return e.into_response();
    }
    if chat.stream {
        stream_completion(state, request, chat.include_usage).await
    } else {
        match state.service.generate(request).await {
            Err(status) => status_response(&status).into_response(),
            Ok(response) => {
                let done = response.into_inner();
                let usage = done.usage.unwrap_or_default();
                let route = done.route.unwrap_or_default();
                let body = json!({
                    "id": format!("chatcmpl-{}", done.request_id),
                    "object": "chat.completion",
                    "created": unix_now(),
                    "model": usage.model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": done.text},
                        "finish_reason": finish_reason(done.finish_reason),
                        "logprobs": Value::Null,
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
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn stream_completion(
    state: HttpState,
    request: tonic::Request<GenerateRequest>,
    include_usage: bool,
) -> Response {
    let response = match state.service.generate_stream(request).await {
        Ok(r) => r,
        Err(status) => return status_response(&status).into_response(),
    };
    let request_id = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut events = response.into_inner();
    // The gateway sends the routing decision first: it sets the headers.
    let route = match events.next().await {
        Some(Ok(e)) => match e.event {
            Some(generate_stream_event::Event::Route(route)) => route,
            _ => RouteDecision::default(),
        },
        Some(Err(status)) => return status_response(&status).into_response(),
        None => {
            return status_response(&tonic::Status::internal("stream ended before it began"))
                .into_response();
        }
    };
    let id = format!("chatcmpl-{request_id}");
    let created = unix_now();
    let model = route.model.clone();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": Value::Null}]})
    };
    let first = sse_data(&chunk(json!({"role": "assistant", "content": ""}), None));
    let body = futures::stream::once(async move { Ok::<_, Infallible>(first) }).chain(
        futures::stream::unfold(Some(events), move |events| {
            let chunk = chunk.clone();
            async move {
                let mut events = events?;
                match events.next().await {
                    Some(Ok(e)) => match e.event {
                        Some(generate_stream_event::Event::Delta(d)) => Some((vec![sse_data(&chunk(json!({"content": d.text}), None))], Some(events))),
                        Some(generate_stream_event::Event::End(end)) => {
                            let mut out = vec![sse_data(&chunk(json!({}), Some(finish_reason(end.finish_reason))))];
                            if include_usage {
                                let mut usage_chunk = chunk(json!({}), None);
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
                    Some(Err(status)) => {
                        let (_, kind) = http_status(status.code());
                        let error = json!({"error": {"message": status.message(), "type": kind, "param": Value::Null, "code": Value::Null}});
                        Some((vec![sse_data(&error)], None))
                    }
                    None => None,
                }
            }
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

async fn list_models(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let mut request = tonic::Request::new(ListModelsRequest {});
    if let Err(e) = authorize(&state, &headers, &mut request).await {
        return e.into_response();
    }
    match state.service.list_models(request).await {
        Err(status) => status_response(&status).into_response(),
        Ok(models) => {
            let mut data = vec![
                json!({"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "routemesh",
                                       "routemesh": {"virtual": true, "description": "learned routing with the gateway's default policy"}}),
            ];
            for (strong, weak, share, threshold) in
                state.service.state().quality.calibrated_thresholds()
            {
                data.push(json!({"id": format!("router-mf-{threshold:.3}"), "object": "model", "created": 0, "owned_by": "routemesh",
                                 "routemesh": {"virtual": true, "description": format!(
                                     "RouteLLM-style threshold routing between the pool's most and least expensive models; about {:.0}% strong calls on the {strong} / {weak} training prompts", share * 100.0)}}));
            }
            for m in models.into_inner().models {
                let tier = if m.tier == WireTier::Large as i32 {
                    Tier::Large
                } else {
                    Tier::Small
                };
                data.push(json!({"id": m.name, "object": "model", "created": 0, "owned_by": "routemesh",
                                 "routemesh": {"tier": tier.as_str(), "input_usd_per_mtok": m.input_usd_per_mtok,
                                               "output_usd_per_mtok": m.output_usd_per_mtok, "healthy_workers": m.healthy_workers}}));
            }
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
    }
}
