//! Inference engine backends behind one interface: what the worker agent drives.

pub mod confidence;
pub mod local;
pub mod openai;
pub mod sim;
pub mod sse;

use std::pin::Pin;

use futures::Stream;
use routemesh_proto::v1::{ChatMessage, FinishReason, GenerationParams};

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
}

impl GenerateInput {
    /// Completion tokens to generate at most.
    pub fn max_tokens(&self) -> u32 {
        self.params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }

    /// Prompt size in characters, for token estimates.
    pub fn prompt_chars(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.content.chars().count())
            .sum()
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
}

/// One event of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Delta(String),
    End {
        finish_reason: FinishReason,
        usage: EngineUsage,
        /// Over the whole completion; set when log-probabilities were asked
        /// for and the engine gave them.
        confidence: Option<Confidence>,
    },
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
    async fn generate(&self, input: GenerateInput) -> Result<Completion, EngineError>;
    async fn stream(&self, input: GenerateInput) -> Result<EngineStream, EngineError>;
}

/// A unary completion read from an engine's own stream: the text of its
/// deltas and what its end event reports. `start` is when the request
/// reached the backend, for the time to first token; `engine` names the
/// engine in the error for a stream that ends without an end event.
pub(crate) async fn collect(
    mut stream: EngineStream,
    start: tokio::time::Instant,
    engine: &str,
) -> Result<Completion, EngineError> {
    use futures::StreamExt;
    let mut text = String::new();
    let mut first = None;
    while let Some(event) = stream.next().await {
        match event? {
            EngineEvent::Delta(piece) => {
                first.get_or_insert_with(|| start.elapsed());
                text.push_str(&piece);
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
