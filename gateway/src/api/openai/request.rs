//! A chat-completions request body parsed into the native request, with a
//! 400 naming the field at fault for anything it cannot carry.

use routemesh_mesh::Tier;
use routemesh_proto::v1::{ChatMessage, GenerateRequest, GenerationParams, RoutingHints};
use serde_json::Value;

use axum::http::StatusCode;

use super::error::{ApiError, bad_request, openai_error};

/// The virtual model that asks the router to choose.
pub(crate) const ROUTER_MODEL: &str = "router";

pub(super) struct ChatRequest {
    pub(super) grpc: GenerateRequest,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// What the client asked for, echoed in responses when routed.
    pub(super) requested_model: String,
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

pub(super) fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
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
            ..Default::default()
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
        ..Default::default()
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
        ..Default::default()
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
pub(super) fn parse_hints(r: &Value) -> Result<RoutingHints, ApiError> {
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
            Ok(tier) => Ok(tier.to_wire()),
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
