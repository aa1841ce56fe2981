//! Backend `openai`: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp
//! server, Ollama) over HTTP, plain and SSE streaming.

use std::time::Duration;

use futures::StreamExt;
use routemesh_proto::v1::FinishReason;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sse::SseParser;
use super::{
    Backend, Completion, EngineError, EngineEvent, EngineStream, EngineUsage, GenerateInput,
    LogprobSummary, estimate_tokens,
};

/// Where the engine is and how long to wait for it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
    pub timeout: Duration,
    /// Longest wait for a TCP connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
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
    url: String,
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
        reqwest::Url::parse(&url).map_err(|e| {
            format!(
                "backend.openai.base_url: {:?} is not a URL: {e}",
                config.base_url
            )
        })?;
        Ok(Self {
            client,
            url,
            model: config
                .engine_model
                .clone()
                .unwrap_or_else(|| worker_model.to_string()),
            api_key,
            timeout: config.timeout,
        })
    }

    fn body(&self, input: &GenerateInput, stream: bool) -> Value {
        let p = &input.params;
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": input.messages.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            "max_tokens": input.max_tokens(),
            "stream": stream,
        });
        if let Some(obj) = body.as_object_mut() {
            if let Some(t) = p.temperature {
                obj.insert("temperature".into(), t.into());
            }
            if let Some(t) = p.top_p {
                obj.insert("top_p".into(), t.into());
            }
            if !p.stop.is_empty() {
                obj.insert("stop".into(), p.stop.clone().into());
            }
            if let Some(s) = p.seed {
                obj.insert("seed".into(), s.into());
            }
            // Only when asked: some engines reject the parameter, and those
            // that accept it do more work for it.
            if input.want_logprobs {
                obj.insert("logprobs".into(), true.into());
            }
            if stream {
                obj.insert(
                    "stream_options".into(),
                    serde_json::json!({"include_usage": true}),
                );
            }
        }
        body
    }

    async fn send(
        &self,
        input: &GenerateInput,
        stream: bool,
    ) -> Result<reqwest::Response, EngineError> {
        let mut req = self.client.post(&self.url).json(&self.body(input, stream));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| EngineError::Timeout(self.timeout))?
            .map_err(|e| classify_transport(&e, self.timeout))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = tokio::time::timeout(self.timeout, resp.text())
            .await
            .ok()
            .and_then(Result::ok);
        let message = body
            .as_deref()
            .map(error_message)
            .unwrap_or_else(|| status.to_string());
        Err(match status.as_u16() {
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

/// The `error.message` of an OpenAI error body, else the body itself (bounded).
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct WireCompletion {
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: Option<WireMessage>,
    delta: Option<WireMessage>,
    finish_reason: Option<String>,
    /// Read leniently (see [`add_logprobs`]): an engine's odd log-probability
    /// format must not fail an answer that was otherwise fine.
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

/// Adds one choice's token log-probabilities (chat-completions format:
/// `logprobs.content[].logprob`) to `summary`. Returns whether the choice
/// carried any; an entry without a numeric log-probability spoils the
/// summary, as the tokens it covers would be unaccounted for.
fn add_logprobs(logprobs: Option<&Value>, summary: &mut LogprobSummary) -> bool {
    let Some(tokens) = logprobs
        .and_then(|l| l.get("content"))
        .and_then(Value::as_array)
    else {
        return false;
    };
    for token in tokens {
        match token.get("logprob").and_then(Value::as_f64) {
            Some(lp) => summary.push(lp),
            None => summary.spoil(),
        }
    }
    !tokens.is_empty()
}

fn usage_or_estimate(
    wire: Option<&WireUsage>,
    prompt_chars: usize,
    completion: impl FnOnce() -> u32,
) -> EngineUsage {
    match wire {
        Some(WireUsage {
            prompt_tokens: Some(p),
            completion_tokens: Some(c),
        }) => EngineUsage {
            prompt_tokens: *p,
            completion_tokens: *c,
            estimated: false,
            replay_quality: None,
        },
        _ => EngineUsage {
            prompt_tokens: estimate_tokens(prompt_chars),
            completion_tokens: completion(),
            estimated: true,
            replay_quality: None,
        },
    }
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    fn capabilities(&self) -> routemesh_mesh::Capabilities {
        routemesh_mesh::Capabilities::OPENAI_ENGINE
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    async fn generate(&self, input: GenerateInput) -> Result<Completion, EngineError> {
        let resp = self.send(&input, false).await?;
        let bytes = tokio::time::timeout(self.timeout, resp.bytes())
            .await
            .map_err(|_| EngineError::Timeout(self.timeout))?
            .map_err(|e| classify_transport(&e, self.timeout))?;
        let wire: WireCompletion = serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Malformed(format!("completion body: {e}")))?;
        let choice = wire
            .choices
            .first()
            .ok_or_else(|| EngineError::Malformed("completion has no choices".into()))?;
        let text = choice
            .message
            .as_ref()
            .and_then(|m| m.content.clone())
            .unwrap_or_default();
        let usage = usage_or_estimate(wire.usage.as_ref(), input.prompt_chars(), || {
            estimate_tokens(text.chars().count())
        });
        // An engine that ignores `logprobs` sends none: no confidence, no error.
        let confidence = input.want_logprobs.then(|| {
            let mut summary = LogprobSummary::default();
            add_logprobs(choice.logprobs.as_ref(), &mut summary);
            summary.finish()
        });
        Ok(Completion {
            finish_reason: finish_reason(choice.finish_reason.as_deref()),
            text,
            usage,
            time_to_first_token: None,
            confidence: confidence.flatten(),
        })
    }

    async fn stream(&self, input: GenerateInput) -> Result<EngineStream, EngineError> {
        let resp = self.send(&input, true).await?;
        let timeout = self.timeout;
        let prompt_chars = input.prompt_chars();
        let want_logprobs = input.want_logprobs;
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
                    for choice in chunk.choices {
                        let covered =
                            want_logprobs && add_logprobs(choice.logprobs.as_ref(), &mut logprobs);
                        if let Some(text) = choice
                            .delta
                            .and_then(|d| d.content)
                            .filter(|t| !t.is_empty())
                        {
                            deltas += 1;
                            if !covered {
                                uncovered += 1;
                            }
                            if !tx.send(EngineEvent::Delta(text)).await {
                                return;
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
            tx.send(EngineEvent::End {
                finish_reason: finish_reason(finish.as_deref()),
                usage,
                confidence,
            })
            .await;
        });
        Ok(stream)
    }
}

/// One streamed chunk; an engine may also send an error object mid-stream.
fn parse_chunk(data: &str) -> Result<WireChunk, EngineError> {
    let value: Value = serde_json::from_str(data)
        .map_err(|e| EngineError::Malformed(format!("stream chunk is not JSON: {e}")))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(EngineError::Upstream {
            status: 200,
            message,
        });
    }
    serde_json::from_value(value).map_err(|e| EngineError::Malformed(format!("stream chunk: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_read_leniently() {
        let read = |v: Value| {
            let mut s = LogprobSummary::default();
            let present = add_logprobs(Some(&v), &mut s);
            (
                present,
                s.finish()
                    .map(|c| (c.tokens, c.mean_logprob, c.min_logprob)),
            )
        };
        let entries = serde_json::json!({"content": [
            {"token": "a", "logprob": -0.5, "top_logprobs": []},
            {"token": "b", "logprob": -1.5, "top_logprobs": []},
        ]});
        assert_eq!(read(entries), (true, Some((2, -1.0, -1.5))));
        // No log-probabilities: absent, not an error.
        assert_eq!(read(Value::Null), (false, None));
        assert_eq!(read(serde_json::json!({"content": null})), (false, None));
        // An entry without a number leaves its token unaccounted for.
        let odd = serde_json::json!({"content": [{"logprob": -0.1}, {"logprob": "x"}]});
        assert_eq!(read(odd), (true, None));
        let mut s = LogprobSummary::default();
        assert!(!add_logprobs(None, &mut s));
    }
}
