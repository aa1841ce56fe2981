//! Inference engine backends behind one interface: what the worker agent drives.

pub mod confidence;
pub mod local;
pub mod openai;
pub mod sim;
pub mod sse;

use std::pin::Pin;

use futures::Stream;
use routemesh_proto::v1::{ChatMessage, FinishReason, GenerationParams};
pub use routemesh_proto::v1::{TokenLogprob, ToolCall, ToolCallDelta, TopLogprob};

pub use confidence::{Confidence, LogprobSummary};
pub use local::{LocalBackend, LocalConfig};
pub use openai::{OpenAiBackend, OpenAiConfig};
pub use sim::{SimBackend, SimConfig};

/// A validated request as a backend sees it.
#[derive(Debug, Clone)]
pub struct GenerateInput {
    pub request_id: String,
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
    /// Report a [`Confidence`] from the engine's token log-probabilities.
    /// Off unless asked: computing or requesting them costs something, and
    /// some engines reject the request parameter.
    pub want_logprobs: bool,
    /// The end user the request is made for (OpenAI's `user`); empty: none.
    pub user: String,
}

impl GenerateInput {
    /// Completion tokens to generate at most.
    pub fn max_tokens(&self) -> u32 {
        self.params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }

    /// Prompt size in characters, for token estimates: every turn's text
    /// (content or text parts) and the calls an assistant turn made, which
    /// the engine reads as prompt too. Images are not counted: engines
    /// price them by their own rules.
    pub fn prompt_chars(&self) -> usize {
        self.messages
            .iter()
            .map(|m| {
                m.text_content().chars().count()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.name.chars().count() + c.arguments.chars().count())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Whether the engine must compute log-probabilities: for the
    /// confidence summary or for the client's per-token list.
    pub fn engine_logprobs(&self) -> bool {
        self.want_logprobs || self.params.logprobs
    }

    /// Whether the client asked for per-token log-probabilities (only then
    /// are they returned; the summary alone does not need them kept).
    pub fn token_logprobs(&self) -> bool {
        self.params.logprobs
    }
}

/// The completion budget when a request does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// Token estimate used where an engine reports no usage: the evaluation cost
/// model's `ceil(chars / 4)`.
pub fn estimate_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// What an engine reports at the end of a completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// True when the counts are estimates rather than the engine's own.
    pub estimated: bool,
    /// The dataset score of this prompt for this model (sim replay only).
    pub replay_quality: Option<f64>,
    /// Prompt tokens the engine served from its prefix cache, when it says.
    pub cached_prompt_tokens: Option<u32>,
}

/// A whole completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: EngineUsage,
    /// When the first token was produced, for engines that know it even on a
    /// unary call; `None` when the whole completion arrived at once.
    pub time_to_first_token: Option<std::time::Duration>,
    /// Set when log-probabilities were asked for and the engine gave them.
    pub confidence: Option<Confidence>,
    /// The tools the model called (finish reason `ToolCalls`, usually).
    pub tool_calls: Vec<ToolCall>,
    /// Each generated token's log-probability; only when the request's
    /// `params.logprobs` asked and the engine gave them.
    pub logprobs: Vec<TokenLogprob>,
}

/// One event of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A piece of the answer's text, with its tokens' log-probabilities when
    /// `params.logprobs` asked for them (they may also come with an empty
    /// text, for tokens whose text was held back or cut at a stop).
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// A piece of a tool call: the first piece of call `index` carries its
    /// id and name, every piece may add to its arguments.
    ToolCall(ToolCallDelta),
    End {
        finish_reason: FinishReason,
        usage: EngineUsage,
        /// Over the whole completion; set when log-probabilities were asked
        /// for and the engine gave them.
        confidence: Option<Confidence>,
    },
}

impl EngineEvent {
    /// A text piece without log-probabilities.
    pub fn text(text: impl Into<String>) -> Self {
        EngineEvent::Delta {
            text: text.into(),
            logprobs: Vec::new(),
        }
    }
}

pub type EngineStream = Pin<Box<dyn Stream<Item = Result<EngineEvent, EngineError>> + Send>>;

/// Why an engine could not produce a completion. Mapped to a gRPC status in
/// `crate::error`, the only place that does so.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("engine unreachable: {0}")]
    Unreachable(String),
    #[error("engine did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("engine rejected the request: {0}")]
    Rejected(String),
    /// The prompt (with the completion budget) does not fit the model's
    /// context window. Not retryable on another worker of the same model,
    /// which would refuse too; a model with a longer context may serve it.
    #[error("the request does not fit the model's context: {0}")]
    ContextExceeded(String),
    #[error("engine is rate limiting: {0}")]
    RateLimited(String),
    #[error("engine failed (HTTP {status}): {message}")]
    Upstream { status: u16, message: String },
    #[error("engine sent a malformed response: {0}")]
    Malformed(String),
    #[error("simulated engine failure (error injection)")]
    Injected,
}

impl EngineError {
    /// Whether a retry on another worker may succeed: the request reached no
    /// model, or the engine failed transiently.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            // ContextExceeded is deliberately absent: every worker of the
            // model has the same context and would refuse the same way.
            EngineError::Unreachable(_)
                | EngineError::RateLimited(_)
                | EngineError::Injected
                | EngineError::Upstream {
                    status: 502..=504,
                    ..
                }
        )
    }
}

/// An inference engine.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// "openai", "sim" or "local".
    fn kind(&self) -> &'static str;
    /// True when the engine is simulated; shown wherever results appear.
    fn simulated(&self) -> bool {
        false
    }
    /// What the engine can serve before the worker's `capabilities:`
    /// configuration overrides it.
    fn capabilities(&self) -> routemesh_mesh::Capabilities;
    /// Whether the engine answers now (a cheap probe, bounded by
    /// `timeout`). Engines in this process are up while the process is.
    async fn check_health(&self, _timeout: std::time::Duration) -> Result<(), EngineError> {
        Ok(())
    }
    /// The share of the engine's KV cache in use, in [0, 1], where the
    /// engine reports it (bounded by `timeout`); an autoscaling signal.
    async fn kv_cache_usage(&self, _timeout: std::time::Duration) -> Option<f64> {
        None
    }
    async fn generate(&self, input: GenerateInput) -> Result<Completion, EngineError>;
    async fn stream(&self, input: GenerateInput) -> Result<EngineStream, EngineError>;
}

/// A unary completion read from an engine's own stream: the text of its
/// deltas, the tool calls its pieces make, and what its end event reports. `start` is when the request
/// reached the backend, for the time to first token; `engine` names the
/// engine in the error for a stream that ends without an end event.
pub(crate) async fn collect(
    mut stream: EngineStream,
    start: tokio::time::Instant,
    engine: &str,
) -> Result<Completion, EngineError> {
    use futures::StreamExt;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut first = None;
    while let Some(event) = stream.next().await {
        match event? {
            EngineEvent::Delta {
                text: piece,
                logprobs,
            } => {
                first.get_or_insert_with(|| start.elapsed());
                text.push_str(&piece);
                token_logprobs.extend(logprobs);
            }
            EngineEvent::ToolCall(piece) => {
                first.get_or_insert_with(|| start.elapsed());
                piece.add_to(&mut tool_calls);
            }
            EngineEvent::End {
                finish_reason,
                usage,
                confidence,
            } => {
                return Ok(Completion {
                    text,
                    finish_reason,
                    usage,
                    time_to_first_token: first,
                    confidence,
                    tool_calls,
                    logprobs: token_logprobs,
                });
            }
        }
    }
    Err(EngineError::Malformed(format!(
        "{engine} stream ended without an end event"
    )))
}

/// Applies stop sequences to generated text: the text up to the earliest stop
/// string, or `None` when no stop string occurs.
pub fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> Option<&'a str> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .map(|at| &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemesh_proto::v1::ContentPart;

    #[tokio::test]
    async fn collect_assembles_text_tool_calls_and_logprobs() {
        let lp = |token: &str| TokenLogprob {
            token: token.into(),
            logprob: -0.5,
            ..Default::default()
        };
        let piece = |index, id: &str, name: &str, arguments: &str| {
            EngineEvent::ToolCall(ToolCallDelta {
                index,
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            })
        };
        let events = vec![
            EngineEvent::Delta {
                text: "Let me look.".into(),
                logprobs: vec![lp("Let"), lp(" me look.")],
            },
            EngineEvent::Delta {
                text: String::new(),
                logprobs: vec![lp("")],
            },
            piece(0, "call_a", "search", ""),
            piece(0, "", "", "{\"q\":"),
            piece(1, "call_b", "fetch", "{}"),
            piece(0, "", "", "\"cats\"}"),
            EngineEvent::End {
                finish_reason: FinishReason::ToolCalls,
                usage: EngineUsage {
                    cached_prompt_tokens: Some(3),
                    ..Default::default()
                },
                confidence: None,
            },
        ];
        let stream: EngineStream = Box::pin(futures::stream::iter(events.into_iter().map(Ok)));
        let done = collect(stream, tokio::time::Instant::now(), "test")
            .await
            .unwrap();
        assert_eq!(done.text, "Let me look.");
        assert_eq!(done.logprobs.len(), 3);
        assert_eq!(
            done.tool_calls,
            vec![
                ToolCall {
                    id: "call_a".into(),
                    name: "search".into(),
                    arguments: r#"{"q":"cats"}"#.into()
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "fetch".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(done.finish_reason, FinishReason::ToolCalls);
        assert_eq!(done.usage.cached_prompt_tokens, Some(3));
        assert!(done.time_to_first_token.is_some());

        let cut: EngineStream = Box::pin(futures::stream::iter(vec![Ok(EngineEvent::text("a"))]));
        assert!(matches!(
            collect(cut, tokio::time::Instant::now(), "test").await,
            Err(EngineError::Malformed(_))
        ));
    }

    #[test]
    fn prompt_chars_count_text_parts_and_calls() {
        let input = GenerateInput {
            request_id: "r".into(),
            messages: vec![
                ChatMessage {
                    role: "user".into(),
                    parts: vec![
                        ContentPart {
                            part: Some(routemesh_proto::v1::content_part::Part::Text(
                                "abcd".into(),
                            )),
                        },
                        ContentPart {
                            part: Some(routemesh_proto::v1::content_part::Part::ImageUrl(
                                Default::default(),
                            )),
                        },
                        ContentPart {
                            part: Some(routemesh_proto::v1::content_part::Part::Text("éf".into())),
                        },
                    ],
                    ..Default::default()
                },
                ChatMessage {
                    role: "assistant".into(),
                    tool_calls: vec![ToolCall {
                        id: "c".into(),
                        name: "fn".into(),
                        arguments: "{}".into(),
                    }],
                    ..Default::default()
                },
                ChatMessage {
                    role: "tool".into(),
                    content: "ok".into(),
                    ..Default::default()
                },
            ],
            params: GenerationParams::default(),
            want_logprobs: false,
            user: String::new(),
        };
        assert_eq!(input.messages[0].text_content(), "abcdéf");
        assert_eq!(input.prompt_chars(), 6 + 4 + 2);
    }
}
