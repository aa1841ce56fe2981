//! Backend `sim`: a simulated engine for demos, tests and benchmarks.
//!
//! It behaves like a GPU server from the outside: a time to first token and a
//! decode speed drawn from per-model distributions, injected errors and
//! stalls, and (with `replay`) the recorded answer and score of a routing
//! dataset row, so routing quality can be measured end to end. Everything it
//! returns is marked simulated.
//!
//! It has no model, so it has no log-probabilities: asked for them, it
//! reports no confidence unless `logprobs` configures a synthetic one (see
//! [`SimLogprobs`]). It never derives one from a replayed row's score, which
//! would hand a cascade's verifier the answer it is meant to estimate.
//!
//! It declares every capability (tools, JSON and structured output, images,
//! log-probabilities) and, with `context_tokens`, a context window, so that
//! agent features can be tested end to end. What it answers is scripted by
//! the request, deterministically:
//!
//! - **Tool calls.** When tools are offered, `tool_choice` is not `"none"`
//!   and the last turn is not a tool turn, it calls a tool if the last user
//!   turn says `call:<name>` (the tool `<name>`, offered or not, so a call
//!   of an unknown tool can be scripted too), if `tool_choice` names a
//!   function (that one), or if it is `"required"` (the `call:` one, else
//!   the first tool). The answer is one call, id `call_<n>` (`n` counting
//!   the calls already in the conversation, from 1), with arguments the
//!   JSON object that follows `args:` in the user turn (`args:{"city":
//!   "Paris"}`), else `{}`; no text, finish reason `TOOL_CALLS`. Streamed,
//!   the first piece carries the id and name and the arguments follow in
//!   two or more pieces.
//! - **Tool results.** When the last turn is a tool turn, the answer is
//!   `The tool said: <its content>`.
//! - **JSON.** `response_format` `json_object` makes the answer
//!   `{"answer": "<the text it would have given>"}`; `json_schema` an object
//!   with one key per `properties` entry of the schema, valued by its type
//!   (`"sim"` for a string or an untyped property, `0` for a number or an
//!   integer, `false`, `[]`, `{}`, `null`). A `max_tokens` too small for the
//!   object cuts it, as it would a model's (finish reason `LENGTH`).
//! - **Log-probabilities.** `params.logprobs` gives every answer token a
//!   synthetic log-probability (`logprobs.sure`, or `unsure` when the user
//!   turn says `unsure`; the defaults when `logprobs` is not configured),
//!   with `top_logprobs` alternatives (the token itself among them) that
//!   share the rest of the probability.
//! - **Context.** With `context_tokens`, a request whose estimated prompt
//!   tokens plus `max_tokens` exceed it is refused as a real engine refuses
//!   it ([`EngineError::ContextExceeded`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, LogNormal};
use routemesh_proto::v1::{FinishReason, ResponseFormat, tool_choice};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::openai::async_stream_events;
use super::{
    Backend, Completion, EngineError, EngineEvent, EngineStream, EngineUsage, GenerateInput,
    LogprobSummary, TokenLogprob, ToolCallDelta, TopLogprob, estimate_tokens,
};

/// A log-normal distribution given by its median and spread (σ of the log).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    pub median: f64,
    #[serde(default)]
    pub spread: f64,
}

impl Spread {
    const fn fixed(median: f64) -> Self {
        Self {
            median,
            spread: 0.0,
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> f64 {
        if self.median <= 0.0 {
            return 0.0;
        }
        match LogNormal::new(self.median.ln(), self.spread.max(0.0)) {
            Ok(d) if self.spread > 0.0 => d.sample(rng),
            _ => self.median,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Time to first token in milliseconds.
    #[serde(default = "default_ttft")]
    pub ttft_ms: Spread,
    /// Decode speed in tokens per second; a median of 0 means instant.
    #[serde(default = "default_tps")]
    pub tokens_per_second: Spread,
    /// Completion length when not replaying, before max_tokens caps it.
    #[serde(default = "default_output_tokens")]
    pub output_tokens: Spread,
    /// Share of requests that fail after the time to first token.
    #[serde(default)]
    pub error_rate: f64,
    /// Share of requests that stall before their first token.
    #[serde(default)]
    pub stall_rate: f64,
    /// How long a stall lasts; unset stalls until the client gives up.
    #[serde(default, with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::optional_duration")]
    pub stall_for: Option<Duration>,
    /// A routing dataset (JSONL, `shared/data/routing` format) to replay.
    #[serde(default)]
    pub replay: Option<PathBuf>,
    /// The dataset's name for this worker's model; defaults to the worker's model.
    #[serde(default)]
    pub replay_model: Option<String>,
    /// Seed for reproducible runs; each request mixes in its request id.
    #[serde(default)]
    pub seed: Option<u64>,
    /// A synthetic confidence to report when a request asks for
    /// log-probabilities; unset, none is reported.
    #[serde(default)]
    pub logprobs: Option<SimLogprobs>,
    /// The context window (prompt plus completion tokens) to declare and
    /// enforce; unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

/// Synthetic per-token log-probabilities, chosen by the prompt so tests and
/// demos can script a cascade's accept or escalate: every generated token
/// gets `unsure` when the last user message contains the word `unsure`, and
/// `sure` otherwise. Nothing about the text is measured.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimLogprobs {
    #[serde(default = "default_sure")]
    pub sure: f64,
    #[serde(default = "default_unsure")]
    pub unsure: f64,
}

fn default_sure() -> f64 {
    -0.05
}
fn default_unsure() -> f64 {
    -2.5
}

impl Default for SimLogprobs {
    fn default() -> Self {
        Self {
            sure: default_sure(),
            unsure: default_unsure(),
        }
    }
}

fn default_ttft() -> Spread {
    Spread {
        median: 40.0,
        spread: 0.3,
    }
}
fn default_tps() -> Spread {
    Spread {
        median: 80.0,
        spread: 0.2,
    }
}
fn default_output_tokens() -> Spread {
    Spread {
        median: 48.0,
        spread: 0.5,
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ttft_ms: default_ttft(),
            tokens_per_second: default_tps(),
            output_tokens: default_output_tokens(),
            error_rate: 0.0,
            stall_rate: 0.0,
            stall_for: None,
            replay: None,
            replay_model: None,
            seed: None,
            logprobs: None,
            context_tokens: None,
        }
    }
}

impl SimConfig {
    /// An engine that answers at once: for overhead benchmarks.
    pub fn instant() -> Self {
        Self {
            ttft_ms: Spread::fixed(0.0),
            tokens_per_second: Spread::fixed(0.0),
            output_tokens: Spread::fixed(16.0),
            ..Self::default()
        }
    }
}

/// A dataset row's record for one model.
#[derive(Debug, Clone)]
struct Recorded {
    response: Option<String>,
    score: Option<f64>,
}

#[derive(Debug)]
pub struct SimBackend {
    config: SimConfig,
    model: String,
    replay: HashMap<u64, Recorded>,
}

fn prompt_key(prompt: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prompt.trim().hash(&mut h);
    h.finish()
}

/// Loads the rows of a routing dataset for one model, keyed by prompt.
fn load_replay(path: &Path, model: &str) -> Result<HashMap<u64, Recorded>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("backend.sim.replay: cannot read {}: {e}", path.display()))?;
    let mut rows = HashMap::new();
    let mut models_seen = std::collections::BTreeSet::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("backend.sim.replay: {} line {}: {e}", path.display(), n + 1))?;
        let Some(prompt) = row.get("prompt").and_then(|p| p.as_str()) else {
            return Err(format!(
                "backend.sim.replay: {} line {}: no \"prompt\" string",
                path.display(),
                n + 1
            ));
        };
        if let Some(scores) = row.get("scores").and_then(|s| s.as_object()) {
            models_seen.extend(scores.keys().cloned());
        }
        let score = row
            .pointer(&format!("/scores/{}", escape_pointer(model)))
            .and_then(|s| s.as_f64());
        let response = row
            .pointer(&format!("/responses/{}", escape_pointer(model)))
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        if score.is_some() || response.is_some() {
            rows.insert(prompt_key(prompt), Recorded { response, score });
        }
    }
    if rows.is_empty() {
        return Err(format!(
            "backend.sim.replay: {} has no rows for model {model:?} (models there: {})",
            path.display(),
            models_seen.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(rows)
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A simulated answer's words: what happened, so that nobody mistakes it for
/// a model's answer (a demo's first reader least of all). Repeated or cut to
/// the planned length.
const PLACEHOLDER: &str = "No model ran here: this worker's sim backend stands in for a GPU engine, \
answering with this note at the model's configured speed and length, so routing, cost and latency \
behave as they would. Give the worker a real engine (backend: openai, for vLLM, TGI, llama.cpp or \
Ollama; or backend: local) for real answers.";

/// Splits text into token-like pieces: each word with the whitespace after it.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut has_word, mut after_space) = (false, false);
    for ch in text.chars() {
        let space = ch.is_whitespace();
        if !space && after_space && has_word {
            out.push(std::mem::take(&mut current));
            has_word = false;
        }
        current.push(ch);
        has_word |= !space;
        after_space = space;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl SimBackend {
    pub fn new(config: SimConfig, model: &str) -> Result<Self, String> {
        for (name, rate) in [
            ("error_rate", config.error_rate),
            ("stall_rate", config.stall_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("backend.sim.{name}: {rate} is not in [0, 1]"));
            }
        }
        if config.context_tokens == Some(0) {
            return Err(
                "backend.sim.context_tokens: must be at least 1 (leave it unset for none)".into(),
            );
        }
        if let Some(lp) = &config.logprobs {
            for (name, v) in [("sure", lp.sure), ("unsure", lp.unsure)] {
                if !(v.is_finite() && v <= 0.0) {
                    return Err(format!(
                        "backend.sim.logprobs.{name}: {v} is not a log-probability (<= 0)"
                    ));
                }
            }
        }
        let replay = match &config.replay {
            Some(path) => load_replay(path, config.replay_model.as_deref().unwrap_or(model))?,
            None => HashMap::new(),
        };
        Ok(Self {
            config,
            model: model.to_string(),
            replay,
        })
    }

    fn rng(&self, request_id: &str) -> StdRng {
        match self.config.seed {
            Some(seed) => StdRng::seed_from_u64(seed ^ prompt_key(request_id)),
            None => StdRng::from_rng(&mut rand::rng()),
        }
    }

    /// Plans the completion: what it says (text pieces or a tool call),
    /// timings and injected faults.
    fn plan(&self, input: &GenerateInput) -> Plan {
        let mut rng = self.rng(&input.request_id);
        let prompt = input
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.text_content())
            .unwrap_or_default();
        let recorded = self.replay.get(&prompt_key(&prompt));
        let answer = match scripted_call(input) {
            Some(call) => Answer::Call(call),
            None => {
                let text = match input.messages.last().filter(|m| m.role == "tool") {
                    Some(tool) => format!("The tool said: {}", tool.text_content()),
                    None => match recorded.and_then(|r| r.response.clone()) {
                        Some(text) => text,
                        None => self.placeholder(&mut rng),
                    },
                };
                let text = match &input.params.response_format {
                    Some(format) => json_answer(format, text),
                    None => text,
                };
                Answer::Text(pieces(&text))
            }
        };
        let tps = self.config.tokens_per_second.sample(&mut rng);
        let logprob = |lp: SimLogprobs| {
            if prompt.contains("unsure") {
                lp.unsure
            } else {
                lp.sure
            }
        };
        Plan {
            answer,
            ttft: Duration::from_secs_f64(self.config.ttft_ms.sample(&mut rng).max(0.0) / 1000.0),
            per_token: if tps > 0.0 {
                Duration::from_secs_f64(1.0 / tps)
            } else {
                Duration::ZERO
            },
            fail: rng.random_bool(self.config.error_rate),
            stall: rng.random_bool(self.config.stall_rate),
            replay_quality: recorded.and_then(|r| r.score),
            logprob: self
                .config
                .logprobs
                .filter(|_| input.want_logprobs)
                .map(logprob),
            token_logprobs: input.token_logprobs().then(|| {
                (
                    logprob(self.config.logprobs.unwrap_or_default()),
                    input.params.top_logprobs.unwrap_or(0),
                )
            }),
        }
    }

    /// The placeholder answer, at a sampled length.
    fn placeholder(&self, rng: &mut StdRng) -> String {
        let n = self.config.output_tokens.sample(rng).round().max(1.0) as usize;
        let mut text = format!("[simulated {}]", self.model);
        for word in PLACEHOLDER
            .split_whitespace()
            .cycle()
            .take(n.saturating_sub(2))
        {
            text.push(' ');
            text.push_str(word);
        }
        if !text.ends_with('.') {
            text.push('.');
        }
        text
    }

    /// Refuses what a real engine with this context would.
    fn check_context(&self, input: &GenerateInput) -> Result<(), EngineError> {
        let Some(context) = self.config.context_tokens else {
            return Ok(());
        };
        let prompt = estimate_tokens(input.prompt_chars());
        let max_tokens = input.max_tokens();
        if u64::from(prompt) + u64::from(max_tokens) > u64::from(context) {
            return Err(EngineError::ContextExceeded(format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt} in the messages, {max_tokens} in the completion).",
                u64::from(prompt) + u64::from(max_tokens)
            )));
        }
        Ok(())
    }
}

/// A scripted tool call: its id, name and arguments.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// The tool call the request scripts, if any (see the module's doc).
fn scripted_call(input: &GenerateInput) -> Option<Call> {
    let params = &input.params;
    let first = params.tools.first()?;
    let last = input.messages.last()?;
    if last.role == "tool" {
        return None;
    }
    let said = if last.role == "user" {
        last.text_content()
    } else {
        Default::default()
    };
    let named = called_name(&said);
    let name = match params.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) {
        Some(tool_choice::Choice::Mode(mode)) if mode == "none" => return None,
        Some(tool_choice::Choice::Function(name)) => name.clone(),
        Some(tool_choice::Choice::Mode(mode)) if mode == "required" => {
            named.unwrap_or_else(|| first.name.clone())
        }
        _ => named?,
    };
    let earlier = input
        .messages
        .iter()
        .map(|m| m.tool_calls.len())
        .sum::<usize>();
    Some(Call {
        id: format!("call_{}", earlier + 1),
        name,
        arguments: scripted_arguments(&said),
    })
}

/// The `<name>` of `call:<name>` in `text`.
fn called_name(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("call:")?;
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || "_-.".contains(*c))
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The JSON object after `args:` in `text`, as compact JSON text; `{}`
/// when there is none.
fn scripted_arguments(text: &str) -> String {
    text.split_once("args:")
        .and_then(|(_, rest)| {
            serde_json::Deserializer::from_str(rest)
                .into_iter::<serde_json::Map<String, Value>>()
                .next()
                .and_then(Result::ok)
        })
        .map_or_else(|| "{}".to_string(), |args| Value::Object(args).to_string())
}

/// The part of a JSON Schema the sim reads: its properties' types.
#[derive(Debug, Default, Deserialize)]
struct Schema {
    #[serde(default)]
    properties: std::collections::BTreeMap<String, Property>,
}

#[derive(Debug, Default, Deserialize)]
struct Property {
    #[serde(default, rename = "type")]
    kind: Option<TypeName>,
}

/// `"type": "string"` or `"type": ["string", "null"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TypeName {
    One(String),
    Many(Vec<String>),
}

/// `text` in the shape `format` asks for (see the module's doc).
fn json_answer(format: &ResponseFormat, text: String) -> String {
    match format.r#type.as_str() {
        "json_object" => serde_json::json!({ "answer": text }).to_string(),
        "json_schema" => {
            let schema: Schema = serde_json::from_str(&format.schema_json).unwrap_or_default();
            let object: serde_json::Map<String, Value> = schema
                .properties
                .into_iter()
                .map(|(key, property)| {
                    let kind = match property.kind {
                        Some(TypeName::One(kind)) => Some(kind),
                        Some(TypeName::Many(kinds)) => {
                            let first = kinds.first().cloned();
                            kinds.into_iter().find(|k| k != "null").or(first)
                        }
                        None => None,
                    };
                    let value = match kind.as_deref() {
                        Some("number" | "integer") => Value::from(0),
                        Some("boolean") => Value::Bool(false),
                        Some("array") => Value::Array(Vec::new()),
                        Some("object") => Value::Object(serde_json::Map::new()),
                        Some("null") => Value::Null,
                        _ => Value::from("sim"),
                    };
                    (key, value)
                })
                .collect();
            Value::Object(object).to_string()
        }
        _ => text,
    }
}

/// A scripted token's log-probability with `top` alternatives: the token
/// itself and made-up ones sharing the rest of the probability, halving,
/// most likely first.
fn token_logprob(piece: &str, logprob: f64, top: u32) -> TokenLogprob {
    let mut alternatives = Vec::new();
    if top > 0 {
        let rest = 1.0 - logprob.exp();
        alternatives.push(TopLogprob {
            token: piece.to_owned(),
            logprob,
            bytes: piece.as_bytes().to_vec(),
        });
        for i in 1..top {
            // Bounded below: a certain token leaves no mass, and JSON has
            // no -infinity.
            let lp = (rest / f64::from(1u32 << i.min(30))).max(1e-30).ln();
            let token = format!("<alt{i}>");
            alternatives.push(TopLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp,
            });
        }
        alternatives.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    }
    TokenLogprob {
        token: piece.to_owned(),
        logprob,
        bytes: piece.as_bytes().to_vec(),
        top_logprobs: alternatives,
    }
}

/// What a planned completion says.
enum Answer {
    Text(Vec<String>),
    Call(Call),
}

struct Plan {
    answer: Answer,
    ttft: Duration,
    per_token: Duration,
    fail: bool,
    stall: bool,
    replay_quality: Option<f64>,
    /// Each token's synthetic log-probability, when a confidence is to be
    /// reported.
    logprob: Option<f64>,
    /// Each token's synthetic log-probability and the number of
    /// alternatives, when the client asked for them.
    token_logprobs: Option<(f64, u32)>,
}

#[async_trait::async_trait]
impl Backend for SimBackend {
    fn capabilities(&self) -> routemesh_mesh::Capabilities {
        routemesh_mesh::Capabilities {
            tools: true,
            json_output: true,
            structured_output: true,
            vision: true,
            logprobs: true,
            context_tokens: self.config.context_tokens,
        }
    }

    fn kind(&self) -> &'static str {
        "sim"
    }

    fn simulated(&self) -> bool {
        true
    }

    async fn generate(&self, input: GenerateInput) -> Result<Completion, EngineError> {
        let start = Instant::now();
        super::collect(self.stream(input).await?, start, "simulated").await
    }

    async fn stream(&self, input: GenerateInput) -> Result<EngineStream, EngineError> {
        self.check_context(&input)?;
        let plan = self.plan(&input);
        let stall_for = self.config.stall_for;
        let max_tokens = input.max_tokens() as usize;
        let stops = Arc::new(input.params.stop.clone());
        let prompt_tokens = estimate_tokens(input.prompt_chars());
        Ok(async_stream_events(move |tx| async move {
            let start = Instant::now();
            if plan.stall {
                match stall_for {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            }
            // A zero delay must not wait for the timer's next millisecond tick.
            if !plan.ttft.is_zero() {
                tokio::time::sleep_until(start + plan.ttft).await;
            }
            if plan.fail {
                return tx.fail(EngineError::Injected).await;
            }
            let (ttft, per_token) = (plan.ttft, plan.per_token);
            let pace = move |i: usize| async move {
                if i > 0 && !per_token.is_zero() {
                    tokio::time::sleep_until(start + ttft + per_token * i as u32).await;
                }
            };
            let (finish, produced) = match &plan.answer {
                Answer::Call(call) => {
                    let Some(produced) = send_call(&tx, call, pace).await else {
                        return;
                    };
                    (FinishReason::ToolCalls, produced)
                }
                Answer::Text(pieces) => {
                    let Some(done) =
                        send_text(&tx, pieces, &stops, max_tokens, plan.token_logprobs, pace).await
                    else {
                        return;
                    };
                    done
                }
            };
            let usage = EngineUsage {
                prompt_tokens,
                completion_tokens: u32::try_from(produced).unwrap_or(u32::MAX),
                estimated: true,
                replay_quality: plan.replay_quality,
                cached_prompt_tokens: None,
            };
            let confidence = plan.logprob.and_then(|lp| {
                let mut summary = LogprobSummary::default();
                (0..produced).for_each(|_| summary.push(lp));
                summary.finish()
            });
            tx.send(EngineEvent::End {
                finish_reason: finish,
                usage,
                confidence,
            })
            .await;
        }))
    }
}

/// Streams a tool call: the id and name first, then the arguments in two
/// or more pieces. Returns the tokens it counts as produced; `None` when
/// the client left.
async fn send_call<F, Fut>(tx: &super::openai::EventSender, call: &Call, pace: F) -> Option<usize>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let args = &call.arguments;
    let mut middle = args.len() / 2;
    while !args.is_char_boundary(middle) {
        middle -= 1;
    }
    let (head, tail) = args.split_at(middle);
    let pieces = [
        ToolCallDelta {
            index: 0,
            id: call.id.clone(),
            name: call.name.clone(),
            arguments: String::new(),
        },
        ToolCallDelta {
            arguments: head.to_owned(),
            ..Default::default()
        },
        ToolCallDelta {
            arguments: tail.to_owned(),
            ..Default::default()
        },
    ];
    for (i, piece) in pieces.into_iter().enumerate() {
        pace(i).await;
        if !tx.send(EngineEvent::ToolCall(piece)).await {
            return None;
        }
    }
    Some(estimate_tokens(call.name.len() + args.len()) as usize)
}

/// Streams text pieces up to `max_tokens`, cut at the first stop sequence
/// (held back until it is known not to start one). Returns the finish
/// reason and the pieces produced; `None` when the client left.
async fn send_text<F, Fut>(
    tx: &super::openai::EventSender,
    pieces: &[String],
    stops: &[String],
    max_tokens: usize,
    token_logprobs: Option<(f64, u32)>,
    pace: F,
) -> Option<(FinishReason, usize)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let hold_back = stops
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut text = String::new();
    let mut emitted = 0usize;
    let mut finish = FinishReason::Stop;
    let mut produced = 0usize;
    // Log-probabilities of tokens whose text is not sent yet: they go out
    // with the next delta.
    let mut pending = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if produced == max_tokens {
            finish = FinishReason::Length;
            break;
        }
        pace(i).await;
        text.push_str(piece);
        produced += 1;
        if let Some((lp, top)) = token_logprobs {
            pending.push(token_logprob(piece, lp, top));
        }
        if let Some(kept) = super::cut_at_stop(&text, stops) {
            let at = kept.len();
            finish = FinishReason::StopSequence;
            let delta = EngineEvent::Delta {
                text: text[emitted.min(at)..at].to_owned(),
                logprobs: std::mem::take(&mut pending),
            };
            if !is_empty_delta(&delta) && !tx.send(delta).await {
                return None;
            }
            return Some((finish, produced));
        }
        let mut safe = text.len().saturating_sub(hold_back);
        while !text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > emitted {
            let delta = EngineEvent::Delta {
                text: text[emitted..safe].to_owned(),
                logprobs: std::mem::take(&mut pending),
            };
            if !tx.send(delta).await {
                return None;
            }
            emitted = safe;
        }
    }
    let delta = EngineEvent::Delta {
        text: text[emitted..].to_owned(),
        logprobs: pending,
    };
    if !is_empty_delta(&delta) && !tx.send(delta).await {
        return None;
    }
    Some((finish, produced))
}

fn is_empty_delta(event: &EngineEvent) -> bool {
    matches!(event, EngineEvent::Delta { text, logprobs } if text.is_empty() && logprobs.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemesh_proto::v1::{ChatMessage, GenerationParams};

    fn input(prompt: &str, params: GenerationParams) -> GenerateInput {
        GenerateInput {
            request_id: "r1".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: prompt.into(),
                ..Default::default()
            }],
            params,
            want_logprobs: false,
            user: String::new(),
        }
    }

    #[tokio::test]
    async fn stops_and_max_tokens() {
        let sim = SimBackend::new(
            SimConfig {
                seed: Some(7),
                ..SimConfig::instant()
            },
            "m",
        )
        .unwrap();
        let done = sim
            .generate(input(
                "hi",
                GenerationParams {
                    max_tokens: Some(3),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        assert_eq!(done.finish_reason, FinishReason::Length);
        assert_eq!(done.usage.completion_tokens, 3);
        assert!(done.text.starts_with("[simulated m]"));

        let stop = GenerationParams {
            stop: vec!["ulated".into()],
            ..Default::default()
        };
        let done = sim.generate(input("hi", stop)).await.unwrap();
        assert_eq!(done.finish_reason, FinishReason::StopSequence);
        assert_eq!(done.text, "[sim");
    }

    #[tokio::test]
    async fn replays_recorded_answers_and_scores() {
        let dir = std::env::temp_dir().join(format!("rm-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rows.jsonl");
        std::fs::write(
            &file,
            "{\"id\":\"a\",\"prompt\":\"What is 2+2?\",\"scores\":{\"m\":1.0,\"o\":0.0},\"responses\":{\"m\":\"It is 4.\"}}\n",
        )
        .unwrap();
        let cfg = SimConfig {
            replay: Some(file),
            ..SimConfig::instant()
        };
        let sim = SimBackend::new(cfg.clone(), "m").unwrap();
        let done = sim
            .generate(input(" What is 2+2? ", GenerationParams::default()))
            .await
            .unwrap();
        assert_eq!(done.text, "It is 4.");
        assert_eq!(done.usage.replay_quality, Some(1.0));
        assert_eq!(done.usage.completion_tokens, 3);
        let err = SimBackend::new(cfg, "absent").unwrap_err();
        assert!(
            err.contains("no rows for model \"absent\"") && err.contains("m, o"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn injected_errors() {
        let sim = SimBackend::new(
            SimConfig {
                error_rate: 1.0,
                ..SimConfig::instant()
            },
            "m",
        )
        .unwrap();
        assert_eq!(
            sim.generate(input("x", GenerationParams::default())).await,
            Err(EngineError::Injected)
        );
        assert!(
            SimBackend::new(
                SimConfig {
                    stall_rate: 2.0,
                    ..SimConfig::default()
                },
                "m"
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn synthetic_confidence_only_when_configured_and_asked() {
        let asked = |prompt: &str| GenerateInput {
            want_logprobs: true,
            ..input(prompt, GenerationParams::default())
        };
        // No model, so by default nothing to report even when asked.
        let plain = SimBackend::new(SimConfig::instant(), "m").unwrap();
        assert_eq!(plain.generate(asked("hi")).await.unwrap().confidence, None);

        let sim = SimBackend::new(
            SimConfig {
                logprobs: Some(SimLogprobs::default()),
                ..SimConfig::instant()
            },
            "m",
        )
        .unwrap();
        let done = sim
            .generate(input("hi", GenerationParams::default()))
            .await
            .unwrap();
        assert_eq!(done.confidence, None);
        for (prompt, lp) in [("hi", -0.05), ("I am unsure", -2.5)] {
            let done = sim.generate(asked(prompt)).await.unwrap();
            let c = done.confidence.unwrap();
            assert_eq!(c.tokens, done.usage.completion_tokens);
            assert!((c.mean_logprob - lp).abs() < 1e-12 && c.min_logprob == lp);
        }
        let bad = SimConfig {
            logprobs: Some(SimLogprobs {
                sure: 0.5,
                ..SimLogprobs::default()
            }),
            ..SimConfig::default()
        };
        let err = SimBackend::new(bad, "m").unwrap_err();
        assert!(err.contains("backend.sim.logprobs.sure"), "{err}");
    }

    fn tool(name: &str) -> routemesh_proto::v1::Tool {
        routemesh_proto::v1::Tool {
            name: name.into(),
            ..Default::default()
        }
    }

    fn choice(choice: tool_choice::Choice) -> Option<routemesh_proto::v1::ToolChoice> {
        Some(routemesh_proto::v1::ToolChoice {
            choice: Some(choice),
        })
    }

    async fn events(sim: &SimBackend, input: GenerateInput) -> Vec<EngineEvent> {
        use futures::StreamExt;
        sim.stream(input)
            .await
            .unwrap()
            .map(|e| e.unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn scripted_tool_calls() {
        let sim = SimBackend::new(SimConfig::instant(), "m").unwrap();
        let tools = || GenerationParams {
            tools: vec![tool("get_weather"), tool("get_time")],
            ..Default::default()
        };
        let call = |done: &Completion| {
            assert_eq!(done.finish_reason, FinishReason::ToolCalls);
            assert_eq!(done.text, "");
            let [call] = done.tool_calls.as_slice() else {
                panic!("{:?}", done.tool_calls)
            };
            (call.id.clone(), call.name.clone(), call.arguments.clone())
        };
        let done = sim
            .generate(input(
                r#"Weather? call:get_weather args:{"city": "Paris", "days": [1, 2]} please"#,
                tools(),
            ))
            .await
            .unwrap();
        assert_eq!(
            call(&done),
            (
                "call_1".into(),
                "get_weather".into(),
                r#"{"city":"Paris","days":[1,2]}"#.into()
            )
        );
        assert!(done.usage.completion_tokens > 0);

        // Streamed: the id and name first, then the arguments in pieces.
        let got = events(&sim, input("call:get_time args:{\"tz\":\"CET\"}", tools())).await;
        let pieces: Vec<&ToolCallDelta> = got
            .iter()
            .filter_map(|e| match e {
                EngineEvent::ToolCall(p) => Some(p),
                _ => None,
            })
            .collect();
        assert!(pieces.len() >= 3, "{pieces:?}");
        assert_eq!(
            (
                pieces[0].id.as_str(),
                pieces[0].name.as_str(),
                pieces[0].arguments.as_str()
            ),
            ("call_1", "get_time", "")
        );
        assert!(
            pieces[1..]
                .iter()
                .all(|p| p.id.is_empty() && p.name.is_empty() && !p.arguments.is_empty())
        );
        let args: String = pieces.iter().map(|p| p.arguments.as_str()).collect();
        assert_eq!(args, r#"{"tz":"CET"}"#);
        assert!(matches!(
            got.last(),
            Some(EngineEvent::End {
                finish_reason: FinishReason::ToolCalls,
                ..
            })
        ));
        assert!(!got.iter().any(|e| matches!(e, EngineEvent::Delta { .. })));

        // No `call:` under auto: text. "none" wins over `call:`; a named
        // function or "required" calls without one.
        let done = sim.generate(input("hello", tools())).await.unwrap();
        assert!(done.tool_calls.is_empty() && done.finish_reason != FinishReason::ToolCalls);
        let none = GenerationParams {
            tool_choice: choice(tool_choice::Choice::Mode("none".into())),
            ..tools()
        };
        assert!(
            sim.generate(input("call:get_time", none))
                .await
                .unwrap()
                .tool_calls
                .is_empty()
        );
        let named = GenerationParams {
            tool_choice: choice(tool_choice::Choice::Function("get_time".into())),
            ..tools()
        };
        let done = sim.generate(input("hello", named)).await.unwrap();
        assert_eq!(call(&done).1, "get_time");
        assert_eq!(call(&done).2, "{}");
        let required = GenerationParams {
            tool_choice: choice(tool_choice::Choice::Mode("required".into())),
            ..tools()
        };
        assert_eq!(
            call(
                &sim.generate(input("hello", required.clone()))
                    .await
                    .unwrap()
            )
            .1,
            "get_weather"
        );
        assert_eq!(
            call(
                &sim.generate(input("call:get_time", required))
                    .await
                    .unwrap()
            )
            .1,
            "get_time"
        );
        // Without tools offered, `call:` is just text.
        let done = sim
            .generate(input("call:get_time", GenerationParams::default()))
            .await
            .unwrap();
        assert!(done.tool_calls.is_empty());

        // A tool turn last: the answer quotes it, and ids count earlier calls.
        let mut turn = input("call:get_weather", tools());
        turn.messages.push(ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![routemesh_proto::v1::ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{}".into(),
            }],
            ..Default::default()
        });
        turn.messages.push(ChatMessage {
            role: "tool".into(),
            content: "sunny, 21C".into(),
            tool_call_id: "call_1".into(),
            ..Default::default()
        });
        let done = sim.generate(turn.clone()).await.unwrap();
        assert_eq!(done.text, "The tool said: sunny, 21C");
        assert_eq!(done.finish_reason, FinishReason::Stop);
        turn.messages.push(ChatMessage {
            role: "user".into(),
            content: "again: call:get_weather".into(),
            ..Default::default()
        });
        assert_eq!(call(&sim.generate(turn).await.unwrap()).0, "call_2");
    }

    #[tokio::test]
    async fn scripted_json_answers() {
        let sim = SimBackend::new(SimConfig::instant(), "m").unwrap();
        let format = |kind: &str, schema: &str| GenerationParams {
            response_format: Some(ResponseFormat {
                r#type: kind.into(),
                schema_json: schema.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let done = sim
            .generate(input("hi", format("json_object", "")))
            .await
            .unwrap();
        let answer: serde_json::Map<String, Value> = serde_json::from_str(&done.text).unwrap();
        assert!(
            answer["answer"]
                .as_str()
                .unwrap()
                .starts_with("[simulated m]")
        );

        let schema = r#"{"type":"object","properties":{
            "name":{"type":"string"},"age":{"type":"integer"},"score":{"type":"number"},
            "ok":{"type":"boolean"},"tags":{"type":"array"},"meta":{"type":"object"},
            "maybe":{"type":["null","string"]},"free":{}}}"#;
        let done = sim
            .generate(input("hi", format("json_schema", schema)))
            .await
            .unwrap();
        let got: Value = serde_json::from_str(&done.text).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"name": "sim", "age": 0, "score": 0, "ok": false, "tags": [],
                               "meta": {}, "maybe": "sim", "free": "sim"})
        );
        assert_eq!(done.finish_reason, FinishReason::Stop);
        // Streamed, the same text in pieces.
        let text: String = events(&sim, input("hi", format("json_schema", schema)))
            .await
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Delta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, done.text);
        // A schema without properties, or not JSON: an empty object.
        let done = sim
            .generate(input("hi", format("json_schema", "nope")))
            .await
            .unwrap();
        assert_eq!(done.text, "{}");
    }

    #[tokio::test]
    async fn scripted_token_logprobs() {
        let sim = SimBackend::new(SimConfig::instant(), "m").unwrap();
        let asked = |prompt: &str, top: Option<u32>| {
            input(
                prompt,
                GenerationParams {
                    max_tokens: Some(5),
                    logprobs: true,
                    top_logprobs: top,
                    ..Default::default()
                },
            )
        };
        let done = sim.generate(asked("hi", Some(3))).await.unwrap();
        assert_eq!(done.logprobs.len() as u32, done.usage.completion_tokens);
        let text: String = done.logprobs.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(text, done.text);
        for t in &done.logprobs {
            assert_eq!(t.logprob, -0.05);
            assert_eq!(t.bytes, t.token.as_bytes());
            assert_eq!(t.top_logprobs.len(), 3);
            assert!(
                t.top_logprobs
                    .windows(2)
                    .all(|w| w[0].logprob >= w[1].logprob)
            );
            assert!(
                t.top_logprobs
                    .iter()
                    .any(|a| a.token == t.token && a.logprob == t.logprob)
            );
            let mass: f64 = t.top_logprobs.iter().map(|a| a.logprob.exp()).sum();
            assert!(mass <= 1.0 + 1e-9, "{mass}");
        }
        // Confidence is still only given when configured and asked.
        assert_eq!(done.confidence, None);
        let done = sim.generate(asked("I am unsure", None)).await.unwrap();
        assert!(
            done.logprobs
                .iter()
                .all(|t| t.logprob == -2.5 && t.top_logprobs.is_empty())
        );
        // Not asked: none.
        let done = sim
            .generate(input("hi", GenerationParams::default()))
            .await
            .unwrap();
        assert!(done.logprobs.is_empty());
        // Streamed with a stop sequence: every produced token is covered,
        // those of the cut text too.
        let stop = GenerationParams {
            stop: vec!["ulated".into()],
            ..asked("hi", None).params
        };
        let got = events(&sim, input("hi", stop)).await;
        let (mut text, mut tokens) = (String::new(), 0);
        for e in &got {
            if let EngineEvent::Delta { text: t, logprobs } = e {
                text.push_str(t);
                tokens += logprobs.len();
            }
        }
        let Some(EngineEvent::End {
            usage,
            finish_reason,
            ..
        }) = got.last()
        else {
            panic!("{got:?}")
        };
        assert_eq!(
            (text.as_str(), *finish_reason),
            ("[sim", FinishReason::StopSequence)
        );
        assert_eq!(tokens as u32, usage.completion_tokens);
    }

    #[tokio::test]
    async fn declares_everything_and_enforces_its_context() {
        let sim = SimBackend::new(
            SimConfig {
                context_tokens: Some(100),
                ..SimConfig::instant()
            },
            "m",
        )
        .unwrap();
        let c = sim.capabilities();
        assert!(c.tools && c.json_output && c.structured_output && c.vision && c.logprobs);
        assert_eq!(c.context_tokens, Some(100));
        assert_eq!(
            SimBackend::new(SimConfig::instant(), "m")
                .unwrap()
                .capabilities()
                .context_tokens,
            None
        );
        let fits = GenerationParams {
            max_tokens: Some(50),
            ..Default::default()
        };
        assert!(
            sim.generate(input(&"x".repeat(200), fits.clone()))
                .await
                .is_ok()
        );
        // 800 characters are 200 estimated tokens: over 100 with any budget.
        let err = sim
            .generate(input(&"word ".repeat(160), fits))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::ContextExceeded(m) if m.contains("maximum context length is 100 tokens")),
            "{err}"
        );
        assert!(
            SimBackend::new(
                SimConfig {
                    context_tokens: Some(0),
                    ..SimConfig::default()
                },
                "m"
            )
            .is_err()
        );
    }

    #[test]
    fn pieces_keep_whitespace() {
        assert_eq!(pieces("a  b\nc"), vec!["a  ", "b\n", "c"]);
        assert_eq!(pieces(""), Vec::<String>::new());
    }
}
