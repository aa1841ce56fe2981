//! An HTTP server speaking the OpenAI chat-completions wire format (plain and
//! SSE), standing in for a GPU inference engine. What it does is chosen by the
//! prompt, so one server covers every case: `error-400`, `error-429`,
//! `error-503`, `slow`, `malformed`, `midstream-error`, `no-usage`; anything
//! else gets a normal answer.
//!
//! Agent features: the prompt `tool-call` gets a call of [`TOOL_NAME`]
//! (unary in `message.tool_calls`; streamed as `delta.tool_calls` pieces,
//! the id and name first, then the arguments in fragments; finish reason
//! `tool_calls`). `error-context` gets OpenAI's 400 for a prompt longer
//! than the context ([`CONTEXT_ERROR`], code `context_length_exceeded`).
//! `cached` reports [`CACHED_TOKENS`] in `usage.prompt_tokens_details`.
//!
//! Asked for `"logprobs": true`, it gives each answer token a scripted
//! log-probability (`logprobs.content[]`, unary and per SSE chunk), so tests
//! can script a cascade's engine-confidence verifier: [`UNSURE_LOGPROBS`]
//! when the prompt contains `unsure`, else [`SURE_LOGPROBS`]. The prompt
//! `no-logprobs` plays an engine that ignores the parameter, and
//! `partial-logprobs` one that streams them for the first two pieces only.
//!
//! Its `/metrics` (vLLM's) reports `vllm:kv_cache_usage_perc` while
//! [`FakeOpenAi::kv_cache_usage`] is set, and no such series otherwise.
//!
//! A verification question (a cascade's self-check: the last message holds
//! `Proposed answer:`) gets a one-word verdict, `Incorrect` when the
//! question says `unsure`, else `Correct` (unary only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const ANSWER_PIECES: [&str; 4] = ["Hello", " from", " the fake", " engine."];

/// The tool call the prompt `tool-call` gets.
pub const TOOL_CALL_ID: &str = "call_fake_1";
pub const TOOL_NAME: &str = "get_weather";
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris","unit":"C"}"#;
/// How the streamed arguments are cut (joined, [`TOOL_ARGUMENTS`]).
pub const TOOL_ARGUMENT_FRAGMENTS: [&str; 3] = [r#"{"city":"#, r#""Paris","unit""#, r#":"C"}"#];

/// The message of the `error-context` refusal.
pub const CONTEXT_ERROR: &str = "This model's maximum context length is 4096 tokens. However, you requested 6207 tokens (5951 in the messages, 256 in the completion). Please reduce the length of the messages or completion.";

/// Prompt tokens the prompt `cached` reports as served from the cache.
pub const CACHED_TOKENS: u32 = 8;

/// Per-piece log-probabilities of a confident answer: mean -0.05, min -0.12.
pub const SURE_LOGPROBS: [f64; 4] = [-0.01, -0.05, -0.12, -0.02];
/// Per-piece log-probabilities of an unsure answer (prompt contains
/// `unsure`): mean -2.5, min -3.5.
pub const UNSURE_LOGPROBS: [f64; 4] = [-1.5, -3.5, -2.0, -3.0];

#[derive(Clone, Default)]
pub struct FakeOpenAi {
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// While set, every request gets 503 (an engine that is down while its
    /// worker agent still answers).
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// The KV-cache use its `/metrics` reports, as vLLM does.
    pub kv_cache_usage: Arc<Mutex<Option<f64>>>,
}

pub struct RunningFake {
    pub base_url: String,
    pub state: FakeOpenAi,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOpenAi {
    pub async fn start() -> RunningFake {
        Self::start_on(0).await
    }

    /// On a given port: to bring an engine back where its worker expects it.
    pub async fn start_on(port: u16) -> RunningFake {
        let state = FakeOpenAi::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            // What a worker agent probes its engine's health with.
            .route(
                "/v1/models",
                axum::routing::get(|| async {
                    axum::Json(json!({"object": "list", "data": [{"id": "served-name", "object": "model"}]}))
                }),
            )
            .route("/metrics", axum::routing::get(metrics))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RunningFake {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }
}

/// vLLM's metrics page, reduced to a running-requests gauge and, when set,
/// the KV-cache use.
async fn metrics(State(state): State<FakeOpenAi>) -> String {
    let mut page = String::from(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"served-name\"} 0.0\n",
    );
    if let Some(usage) = *state.kv_cache_usage.lock().unwrap() {
        page += &format!(
            "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"served-name\"}} {usage}\n"
        );
    }
    page
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "fake_error", "code": null}})),
    )
        .into_response()
}

fn sse(events: Vec<String>) -> Response {
    let body: String = events
        .into_iter()
        .map(|e| format!("data: {e}\n\n"))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    chunk_with(delta, finish, Value::Null)
}

fn chunk_with(delta: Value, finish: Option<&str>, logprobs: Value) -> String {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
           "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})
    .to_string()
}

/// One `logprobs.content[]` entry as OpenAI sends it, with `top`
/// alternatives (the token itself first, then `alt1`, `alt2`, ... each one
/// nat less likely).
fn token_logprob(piece: &str, logprob: f64, top: usize) -> Value {
    let alternatives: Vec<Value> = (0..top)
        .map(|i| {
            let token = if i == 0 {
                piece.to_string()
            } else {
                format!("alt{i}")
            };
            json!({"token": token, "logprob": logprob - i as f64, "bytes": token.as_bytes()})
        })
        .collect();
    json!({"token": piece, "logprob": logprob, "bytes": piece.as_bytes(), "top_logprobs": alternatives})
}

async fn completions(State(state): State<FakeOpenAi>, body: axum::Json<Value>) -> Response {
    let body = body.0;
    state.requests.lock().unwrap().push(body.clone());
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let mut usage = json!({"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15});
    if prompt == "cached" {
        usage["prompt_tokens_details"] = json!({"cached_tokens": CACHED_TOKENS, "audio_tokens": 0});
    }
    let top = body["top_logprobs"].as_u64().unwrap_or(0) as usize;
    let logprobs =
        (body["logprobs"].as_bool() == Some(true) && prompt != "no-logprobs").then(|| {
            if prompt.contains("unsure") {
                UNSURE_LOGPROBS
            } else {
                SURE_LOGPROBS
            }
        });
    if state.failing.load(std::sync::atomic::Ordering::Acquire) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "engine down");
    }
    match prompt.as_str() {
        "error-400" => {
            return error(
                StatusCode::BAD_REQUEST,
                "max_tokens is too large for this model",
            );
        }
        "error-context" => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": CONTEXT_ERROR, "type": "invalid_request_error",
                                            "param": "messages", "code": "context_length_exceeded"}})),
            )
                .into_response();
        }
        "error-429" => return error(StatusCode::TOO_MANY_REQUESTS, "slow down"),
        "error-503" => return error(StatusCode::SERVICE_UNAVAILABLE, "engine overloaded"),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        _ => {}
    }
    if prompt == "tool-call" {
        return tool_call(stream, include_usage, usage);
    }
    if !stream {
        let content = match (
            prompt.contains("Proposed answer:"),
            prompt.contains("unsure"),
        ) {
            (true, true) => "Incorrect".to_string(),
            (true, false) => "Correct".to_string(),
            (false, _) => ANSWER_PIECES.concat(),
        };
        let mut answer = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        });
        if let Some(lps) = logprobs {
            let content: Vec<Value> = ANSWER_PIECES
                .iter()
                .zip(lps)
                .map(|(p, lp)| token_logprob(p, lp, top))
                .collect();
            answer["choices"][0]["logprobs"] = json!({"content": content, "refusal": null});
        }
        if prompt != "no-usage" {
            answer["usage"] = usage;
        }
        return axum::Json(answer).into_response();
    }
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    match prompt.as_str() {
        "malformed" => {
            events.push(chunk(json!({"content": "Hello"}), None));
            events.push("{this is not json".to_string());
            return sse(events);
        }
        "midstream-error" => {
            events.push(chunk(json!({"content": "Hello"}), None));
            events.push(json!({"error": {"message": "engine exploded"}}).to_string());
            return sse(events);
        }
        _ => {}
    }
    for (i, piece) in ANSWER_PIECES.iter().enumerate() {
        let lp = logprobs
            .filter(|_| i < 2 || prompt != "partial-logprobs")
            .map_or(
                Value::Null,
                |lps| json!({"content": [token_logprob(piece, lps[i], top)], "refusal": null}),
            );
        events.push(chunk_with(json!({"content": piece}), None, lp));
    }
    events.push(chunk(json!({}), Some("stop")));
    if include_usage && prompt != "no-usage" {
        events.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}).to_string());
    }
    events.push("[DONE]".into());
    sse(events)
}

/// The answer to `tool-call`: one call of [`TOOL_NAME`], whole or in pieces.
fn tool_call(stream: bool, include_usage: bool, usage: Value) -> Response {
    if !stream {
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [{
                    "id": TOOL_CALL_ID, "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}}]}}],
            "usage": usage,
        }))
        .into_response();
    }
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "index": 0, "id": TOOL_CALL_ID, "type": "function",
            "function": {"name": TOOL_NAME, "arguments": ""}}]}),
        None,
    )];
    for fragment in TOOL_ARGUMENT_FRAGMENTS {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
            None,
        ));
    }
    events.push(chunk(json!({}), Some("tool_calls")));
    if include_usage {
        events.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}).to_string());
    }
    events.push("[DONE]".into());
    sse(events)
}
