//! Backend `openai`: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp
//! server, Ollama) over HTTP, plain and SSE streaming.
//!
//! Everything an agent sends is forwarded (content parts, tool calls and
//! tool turns, tools and tool_choice, response_format, log-probabilities,
//! penalties, user; see `request`), and everything the engine answers is
//! read back (tool calls whole or in streamed pieces, per-token
//! log-probabilities, cached prompt tokens; see `response`). A refusal
//! because the prompt does not fit the model's context is told apart from
//! other refusals ([`EngineError::ContextExceeded`]), whichever engine's
//! wording it comes in. Each call has a client span (`span`) whose context
//! the engine receives as `traceparent`.

mod kv_cache;
mod request;
mod response;
mod span;

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use routemesh_mesh::genai;

use super::sse::SseParser;
use super::{
    Backend, Completion, EngineError, EngineEvent, EngineStream, EngineUsage, GenerateInput,
    LogprobSummary, estimate_tokens,
};
use response::{CallIn, Refusal, Usage as WireUsage, finish_reason, read_logprobs};

/// Where the engine is and how long to wait for it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name the engine knows; defaults to the worker's model.
    #[serde(default)]
    pub engine_model: Option<String>,
    /// Name of an environment variable holding the engine's API key, if any.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Longest wait for a whole unary completion, or for each streamed chunk.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub timeout: Duration,
    /// Longest wait for a TCP connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub connect_timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `GET` here is the health probe: every OpenAI-compatible server
    /// lists its models, cheaply, without generating anything.
    models_url: String,
    /// The engine's Prometheus metrics, for its KV-cache use.
    metrics_url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
}

impl OpenAiBackend {
    /// `worker_model` is used when the config names no engine model.
    pub fn new(config: &OpenAiConfig, worker_model: &str) -> Result<Self, String> {
        let api_key = match &config.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("backend.openai.api_key_env: environment variable {var} is not set")
            })?),
            None => None,
        };
        // Pooled keep-alive connections: one engine, many concurrent requests.
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("backend.openai: cannot build HTTP client: {e}"))?;
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&url).map_err(|e| {
            format!(
                "backend.openai.base_url: {:?} is not a URL: {e}",
                config.base_url
            )
        })?;
        let models_url = format!("{}/models", config.base_url.trim_end_matches('/'));
        Ok(Self {
            client,
            url,
            models_url,
            metrics_url: kv_cache::metrics_url(&config.base_url),
            model: config
                .engine_model
                .clone()
                .unwrap_or_else(|| worker_model.to_string()),
            api_key,
            timeout: config.timeout,
        })
    }

    /// Posts the request, with `span`'s trace context in its headers.
    async fn send(
        &self,
        input: &GenerateInput,
        stream: bool,
        span: &tracing::Span,
    ) -> Result<reqwest::Response, EngineError> {
        let body = request::chat_request(&self.model, input, stream)?;
        let mut headers = reqwest::header::HeaderMap::new();
        routemesh_mesh::trace_context::inject_http(span, &mut headers);
        let mut req = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| EngineError::Timeout(self.timeout))?
            .map_err(|e| classify_transport(&e, self.timeout))?;
        let status = resp.status();
        span::record_http_status(span, status);
        if status.is_success() {
            return Ok(resp);
        }
        let body = tokio::time::timeout(self.timeout, resp.text())
            .await
            .ok()
            .and_then(Result::ok);
        let refusal = Refusal::from_body(body.as_deref().unwrap_or(status.as_str()));
        let too_long = refusal.context_exceeded();
        let message = refusal.message;
        Err(match status.as_u16() {
            // Ollama has been seen to refuse a too-long prompt with a 500.
            400 | 413 | 422 | 500 if too_long => EngineError::ContextExceeded(message),
            400 | 404 | 413 | 422 => EngineError::Rejected(message),
            429 => EngineError::RateLimited(message),
            code => EngineError::Upstream {
                status: code,
                message,
            },
        })
    }
}

fn classify_transport(e: &reqwest::Error, timeout: Duration) -> EngineError {
    if e.is_timeout() {
        EngineError::Timeout(timeout)
    } else if e.is_connect() {
        EngineError::Unreachable(e.to_string())
    } else {
        EngineError::Unreachable(format!("{e}"))
    }
}

fn usage_or_estimate(
    wire: Option<&WireUsage>,
    prompt_chars: usize,
    completion: impl FnOnce() -> u32,
) -> EngineUsage {
    match wire {
        Some(
            usage @ WireUsage {
                prompt_tokens: Some(p),
                completion_tokens: Some(c),
                ..
            },
        ) => EngineUsage {
            prompt_tokens: *p,
            completion_tokens: *c,
            estimated: false,
            replay_quality: None,
            cached_prompt_tokens: usage.cached_tokens(),
        },
        _ => EngineUsage {
            prompt_tokens: estimate_tokens(prompt_chars),
            completion_tokens: completion(),
            estimated: true,
            replay_quality: None,
            cached_prompt_tokens: wire.and_then(WireUsage::cached_tokens),
        },
    }
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    fn capabilities(&self) -> routemesh_mesh::Capabilities {
        routemesh_mesh::Capabilities::OPENAI_ENGINE
    }

    /// Up when the engine answers `GET /models` with anything but a server
    /// error: a 401 or 404 still says a server is there and serving.
    async fn check_health(&self, timeout: Duration) -> Result<(), EngineError> {
        let mut req = self.client.get(&self.models_url);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = tokio::time::timeout(timeout, req.send())
            .await
            .map_err(|_| EngineError::Timeout(timeout))?
            .map_err(|e| classify_transport(&e, timeout))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(EngineError::Upstream {
                status: status.as_u16(),
                message: format!("GET {} answered {status}", self.models_url),
            });
        }
        Ok(())
    }

    /// From the engine's `/metrics` (vLLM, SGLang); `None` from an engine
    /// that serves none or names the figure otherwise.
    async fn kv_cache_usage(&self, timeout: Duration) -> Option<f64> {
        let mut req = self.client.get(&self.metrics_url);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = tokio::time::timeout(timeout, req.send()).await.ok()?.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let text = tokio::time::timeout(timeout, resp.text())
            .await
            .ok()?
            .ok()?;
        kv_cache::parse(&text)
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    async fn generate(&self, input: GenerateInput) -> Result<Completion, EngineError> {
        let span = span::engine_span(&self.model, &self.url, &input);
        let result = self.complete(&input, &span).instrument(span.clone()).await;
        if let Err(e) = &result {
            span::record_error(&span, e);
        }
        result
    }

    async fn stream(&self, input: GenerateInput) -> Result<EngineStream, EngineError> {
        let span = span::engine_span(&self.model, &self.url, &input);
        let events = self
            .stream_events(input, span.clone())
            .instrument(span.clone())
            .await;
        match events {
            // The span lasts as long as the stream and records how it failed.
            Ok(events) => Ok(Box::pin(events.inspect(move |event| {
                if let Err(e) = event {
                    span::record_error(&span, e);
                }
            }))),
            Err(e) => {
                span::record_error(&span, &e);
                Err(e)
            }
        }
    }
}

impl OpenAiBackend {
    /// A whole completion, recorded on the call's `span`.
    async fn complete(
        &self,
        input: &GenerateInput,
        span: &tracing::Span,
    ) -> Result<Completion, EngineError> {
        let resp = self.send(input, false, span).await?;
        let bytes = tokio::time::timeout(self.timeout, resp.bytes())
            .await
            .map_err(|_| EngineError::Timeout(self.timeout))?
            .map_err(|e| classify_transport(&e, self.timeout))?;
        let wire: response::Completion = serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Malformed(format!("completion body: {e}")))?;
        let usage = wire.usage;
        let (id, model) = (wire.id.unwrap_or_default(), wire.model.unwrap_or_default());
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Malformed("completion has no choices".into()))?;
        let (text, tool_calls) = match choice.message {
            Some(m) => (
                m.content.unwrap_or_default(),
                m.tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(CallIn::into_call)
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        let usage = usage_or_estimate(usage.as_ref(), input.prompt_chars(), || {
            estimate_tokens(text.chars().count())
        });
        // An engine that ignores `logprobs` sends none: no confidence, no
        // per-token list, no error.
        let mut summary = LogprobSummary::default();
        let logprobs = read_logprobs(choice.logprobs, &mut summary, input.token_logprobs())
            .unwrap_or_default();
        let finish = finish_reason(choice.finish_reason.as_deref());
        span::record_answer(
            span,
            &id,
            &model,
            Some(genai::finish_reason_name(finish as i32)),
            &usage,
        );
        Ok(Completion {
            finish_reason: finish,
            text,
            usage,
            time_to_first_token: None,
            confidence: summary.finish().filter(|_| input.want_logprobs),
            tool_calls,
            logprobs,
        })
    }

    /// A streamed completion, whose answer is recorded on the call's `span`
    /// when it ends.
    async fn stream_events(
        &self,
        input: GenerateInput,
        span: tracing::Span,
    ) -> Result<EngineStream, EngineError> {
        let resp = self.send(&input, true, &span).await?;
        let timeout = self.timeout;
        let prompt_chars = input.prompt_chars();
        let want_logprobs = input.want_logprobs;
        let keep_logprobs = input.token_logprobs();
        let mut body = resp.bytes_stream();
        let stream = async_stream_events(move |tx| async move {
            let mut parser = SseParser::default();
            let mut finish = None;
            let mut usage: Option<WireUsage> = None;
            let mut deltas = 0u32;
            let mut logprobs = LogprobSummary::default();
            // Text deltas that came without log-probabilities: a summary of
            // the others would not cover the whole answer.
            let mut uncovered = 0u32;
            let mut done = false;
            // The completion's id and model, from the first chunk naming them.
            let (mut id, mut model) = (String::new(), String::new());
            while !done {
                let chunk = match tokio::time::timeout(timeout, body.next()).await {
                    Err(_) => return tx.fail(EngineError::Timeout(timeout)).await,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return tx.fail(classify_transport(&e, timeout)).await,
                    Ok(Some(Ok(chunk))) => chunk,
                };
                let events = match parser.push(&chunk) {
                    Ok(events) => events,
                    Err(e) => return tx.fail(EngineError::Malformed(e.to_string())).await,
                };
                for event in events {
                    if event.data.trim() == "[DONE]" {
                        done = true;
                        break;
                    }
                    let chunk = match parse_chunk(&event.data) {
                        Ok(chunk) => chunk,
                        Err(e) => return tx.fail(e).await,
                    };
                    if chunk.usage.is_some() {
                        usage = chunk.usage;
                    }
                    if id.is_empty() {
                        id = chunk.id.unwrap_or_default();
                    }
                    if model.is_empty() {
                        model = chunk.model.unwrap_or_default();
                    }
                    for choice in chunk.choices {
                        let tokens = read_logprobs(choice.logprobs, &mut logprobs, keep_logprobs);
                        let covered = tokens.is_some();
                        let tokens = tokens.unwrap_or_default();
                        let (text, calls) = match choice.delta {
                            Some(d) => (
                                d.content.unwrap_or_default(),
                                d.tool_calls.unwrap_or_default(),
                            ),
                            None => (String::new(), Vec::new()),
                        };
                        if !text.is_empty() {
                            deltas += 1;
                            if !covered {
                                uncovered += 1;
                            }
                        }
                        // Tokens without text (a tool call's, or held back
                        // by the engine) still go out, on an empty delta.
                        if (!text.is_empty() || !tokens.is_empty())
                            && !tx
                                .send(EngineEvent::Delta {
                                    text,
                                    logprobs: tokens,
                                })
                                .await
                        {
                            return;
                        }
                        for (i, call) in calls.into_iter().enumerate() {
                            if let Some(piece) = call.into_piece(i) {
                                deltas += 1;
                                if !tx.send(EngineEvent::ToolCall(piece)).await {
                                    return;
                                }
                            }
                        }
                        if choice.finish_reason.is_some() {
                            finish = choice.finish_reason;
                        }
                    }
                }
            }
            if !done && finish.is_none() {
                return tx
                    .fail(EngineError::Malformed("stream ended before [DONE]".into()))
                    .await;
            }
            // Engines that stream without usage emit about one token per delta.
            let usage = usage_or_estimate(usage.as_ref(), prompt_chars, || deltas);
            if uncovered > 0 {
                logprobs.spoil();
            }
            let confidence = want_logprobs.then(|| logprobs.finish()).flatten();
            let finish = finish_reason(finish.as_deref());
            span::record_answer(
                &span,
                &id,
                &model,
                Some(genai::finish_reason_name(finish as i32)),
                &usage,
            );
            tx.send(EngineEvent::End {
                finish_reason: finish,
                usage,
                confidence,
            })
            .await;
        });
        Ok(stream)
    }
}

/// One streamed chunk; an engine may also send an error object mid-stream.
fn parse_chunk(data: &str) -> Result<response::Chunk, EngineError> {
    let chunk: response::Chunk = serde_json::from_str(data)
        .map_err(|e| EngineError::Malformed(format!("stream chunk: {e}")))?;
    match chunk.error {
        Some(error) => {
            let refusal = Refusal::from_field(error);
            Err(if refusal.context_exceeded() {
                EngineError::ContextExceeded(refusal.message)
            } else {
                EngineError::Upstream {
                    status: 200,
                    message: refusal.message,
                }
            })
        }
        None => Ok(chunk),
    }
}

/// Sender half used by backends that produce events from a task.
pub(crate) struct EventSender(tokio::sync::mpsc::Sender<Result<EngineEvent, EngineError>>);

impl EventSender {
    /// False when the receiver is gone (the client went away).
    pub(crate) async fn send(&self, event: EngineEvent) -> bool {
        self.0.send(Ok(event)).await.is_ok()
    }

    pub(crate) async fn fail(&self, error: EngineError) {
        let _ = self.0.send(Err(error)).await;
    }
}

/// Runs `produce` as the body of an engine stream (see `routemesh_mesh::driven`).
pub(crate) fn async_stream_events<F, Fut>(produce: F) -> EngineStream
where
    F: FnOnce(EventSender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    routemesh_mesh::driven::driven_stream(|tx| produce(EventSender(tx)))
}
