//! What a worker's engine can serve ([`Capabilities`]: tool calling, JSON and
//! structured output, images, log-probabilities, context length) and what a
//! request needs of it ([`Needs`]), so the gateway routes each request only
//! to workers that can serve all of it and says why the others could not.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an engine can serve, as its worker declares it (backend defaults,
/// overridden by the worker's `capabilities:` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Function tools offered and tool calls in the answer.
    pub tools: bool,
    /// `response_format: json_object`.
    pub json_output: bool,
    /// `response_format: json_schema`.
    pub structured_output: bool,
    /// Image content parts.
    pub vision: bool,
    /// Per-token log-probabilities in the answer.
    pub logprobs: bool,
    /// Prompt plus completion tokens the engine takes; `None` when unknown
    /// (no request is refused for its length before the engine sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

impl Capabilities {
    /// What an agent that declares nothing (one older than capabilities)
    /// is assumed to serve: everything, so a rolling upgrade keeps routing
    /// as before; its engine's own refusal is the check.
    pub const UNDECLARED: Capabilities = Capabilities {
        tools: true,
        json_output: true,
        structured_output: true,
        vision: true,
        logprobs: true,
        context_tokens: None,
    };

    /// An OpenAI-compatible engine (vLLM, SGLang, TGI, llama.cpp server,
    /// Ollama): the text features all of them accept; vision and the
    /// context length depend on the model, so the worker declares them.
    pub const OPENAI_ENGINE: Capabilities = Capabilities {
        tools: true,
        json_output: true,
        structured_output: true,
        vision: false,
        logprobs: true,
        context_tokens: None,
    };

    /// The first thing `needs` asks that these capabilities cannot serve.
    pub fn lack(&self, needs: &Needs) -> Option<Lack> {
        if needs.tools && !self.tools {
            return Some(Lack::Tools);
        }
        if needs.structured_output && !self.structured_output {
            return Some(Lack::StructuredOutput);
        }
        if needs.json_output && !self.json_output {
            return Some(Lack::JsonOutput);
        }
        if needs.vision && !self.vision {
            return Some(Lack::Vision);
        }
        if needs.logprobs && !self.logprobs {
            return Some(Lack::Logprobs);
        }
        if let Some(context) = self.context_tokens
            && u64::from(needs.prompt_tokens) + u64::from(needs.max_tokens) > u64::from(context)
        {
            return Some(Lack::Context {
                context_tokens: context,
                prompt_tokens: needs.prompt_tokens,
                max_tokens: needs.max_tokens,
            });
        }
        None
    }

    /// These capabilities with the declared ones put over them.
    pub fn overridden(self, declared: &DeclaredCapabilities) -> Capabilities {
        Capabilities {
            tools: declared.tools.unwrap_or(self.tools),
            json_output: declared.json_output.unwrap_or(self.json_output),
            structured_output: declared.structured_output.unwrap_or(self.structured_output),
            vision: declared.vision.unwrap_or(self.vision),
            logprobs: declared.logprobs.unwrap_or(self.logprobs),
            context_tokens: declared.context_tokens.or(self.context_tokens),
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::UNDECLARED
    }
}

impl From<Capabilities> for routemesh_proto::v1::Capabilities {
    fn from(c: Capabilities) -> Self {
        Self {
            tools: c.tools,
            json_output: c.json_output,
            structured_output: c.structured_output,
            vision: c.vision,
            logprobs: c.logprobs,
            context_tokens: c.context_tokens.unwrap_or(0),
        }
    }
}

/// The `capabilities:` a worker's configuration declares; each key set
/// overrides its backend's default.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct DeclaredCapabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_output: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_output: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// The engine's context window in tokens (prompt plus completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

impl DeclaredCapabilities {
    /// Checks the declaration; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.context_tokens == Some(0) {
            return Err((
                "capabilities.context_tokens",
                "must be at least 1 (leave it unset when unknown)".into(),
            ));
        }
        Ok(())
    }
}

/// What one request needs of the engine that serves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub tools: bool,
    pub json_output: bool,
    pub structured_output: bool,
    pub vision: bool,
    pub logprobs: bool,
    /// The prompt's tokens (estimated from its length).
    pub prompt_tokens: u32,
    /// The completion budget.
    pub max_tokens: u32,
}

/// Why an engine cannot serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    Tools,
    JsonOutput,
    StructuredOutput,
    Vision,
    Logprobs,
    Context {
        context_tokens: u32,
        prompt_tokens: u32,
        max_tokens: u32,
    },
}

impl fmt::Display for Lack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lack::Tools => f.write_str("no tool calling"),
            Lack::JsonOutput => f.write_str("no JSON output (response_format json_object)"),
            Lack::StructuredOutput => {
                f.write_str("no structured output (response_format json_schema)")
            }
            Lack::Vision => f.write_str("no image input"),
            Lack::Logprobs => f.write_str("no log-probabilities"),
            Lack::Context {
                context_tokens,
                prompt_tokens,
                max_tokens,
            } => write!(
                f,
                "context {context_tokens} < prompt {prompt_tokens} + max_tokens {max_tokens}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_need_is_named_and_context_counts_both_sides() {
        let small = Capabilities {
            tools: false,
            context_tokens: Some(4096),
            ..Capabilities::OPENAI_ENGINE
        };
        let needs = Needs {
            tools: true,
            ..Needs::default()
        };
        assert_eq!(
            small.lack(&needs).map(|l| l.to_string()).as_deref(),
            Some("no tool calling")
        );
        let long = Needs {
            prompt_tokens: 5951,
            max_tokens: 256,
            ..Needs::default()
        };
        assert_eq!(
            small.lack(&long).map(|l| l.to_string()).as_deref(),
            Some("context 4096 < prompt 5951 + max_tokens 256")
        );
        let fits = Needs {
            prompt_tokens: 3840,
            max_tokens: 256,
            ..Needs::default()
        };
        assert_eq!(small.lack(&fits), None);
        assert_eq!(Capabilities::UNDECLARED.lack(&long), None);
    }

    #[test]
    fn declarations_override_only_what_they_set() {
        let declared: DeclaredCapabilities =
            serde_json::from_str(r#"{"vision": true, "context_tokens": 8192}"#).unwrap();
        let c = Capabilities::OPENAI_ENGINE.overridden(&declared);
        assert!(c.vision && c.tools);
        assert_eq!(c.context_tokens, Some(8192));
        assert!(serde_json::from_str::<DeclaredCapabilities>(r#"{"tool": true}"#).is_err());
        assert!(
            DeclaredCapabilities {
                context_tokens: Some(0),
                ..Default::default()
            }
            .check()
            .is_err()
        );
    }
}
