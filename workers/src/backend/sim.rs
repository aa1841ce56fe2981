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

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, LogNormal};
use routemesh_proto::v1::FinishReason;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::openai::async_stream_events;
use super::{
    Backend, Completion, EngineError, EngineEvent, EngineStream, EngineUsage, GenerateInput,
    LogprobSummary, estimate_tokens,
};

/// A log-normal distribution given by its median and spread (σ of the log).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
}

/// Synthetic per-token log-probabilities, chosen by the prompt so tests and
/// demos can script a cascade's accept or escalate: every generated token
/// gets `unsure` when the last user message contains the word `unsure`, and
/// `sure` otherwise. Nothing about the text is measured.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
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

    /// Plans the completion: text pieces, timings and injected faults.
    fn plan(&self, input: &GenerateInput) -> Plan {
        let mut rng = self.rng(&input.request_id);
        let prompt = input
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or("");
        let recorded = self.replay.get(&prompt_key(prompt));
        let text = match recorded.and_then(|r| r.response.clone()) {
            Some(text) => text,
            None => {
                let n = self.config.output_tokens.sample(&mut rng).round().max(1.0) as usize;
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
        };
        let tps = self.config.tokens_per_second.sample(&mut rng);
        Plan {
            pieces: pieces(&text),
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
                .map(|lp| {
                    if prompt.contains("unsure") {
                        lp.unsure
                    } else {
                        lp.sure
                    }
                }),
        }
    }
}

struct Plan {
    pieces: Vec<String>,
    ttft: Duration,
    per_token: Duration,
    fail: bool,
    stall: bool,
    replay_quality: Option<f64>,
    /// Each token's synthetic log-probability, when one is to be reported.
    logprob: Option<f64>,
}

#[async_trait::async_trait]
impl Backend for SimBackend {
    fn capabilities(&self) -> routemesh_mesh::Capabilities {
        routemesh_mesh::Capabilities::UNDECLARED
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
            for (i, piece) in plan.pieces.iter().enumerate() {
                if produced == max_tokens {
                    finish = FinishReason::Length;
                    break;
                }
                if i > 0 && !plan.per_token.is_zero() {
                    tokio::time::sleep_until(start + plan.ttft + plan.per_token * i as u32).await;
                }
                text.push_str(piece);
                produced += 1;
                if let Some(kept) = super::cut_at_stop(&text, &stops) {
                    let at = kept.len();
                    if at > emitted
                        && !tx
                            .send(EngineEvent::Delta(text[emitted..at].to_owned()))
                            .await
                    {
                        return;
                    }
                    emitted = at;
                    finish = FinishReason::StopSequence;
                    break;
                }
                let mut safe = text.len().saturating_sub(hold_back);
                while !text.is_char_boundary(safe) {
                    safe -= 1;
                }
                if safe > emitted {
                    if !tx
                        .send(EngineEvent::Delta(text[emitted..safe].to_owned()))
                        .await
                    {
                        return;
                    }
                    emitted = safe;
                }
            }
            if finish != FinishReason::StopSequence
                && text.len() > emitted
                && !tx
                    .send(EngineEvent::Delta(text[emitted..].to_owned()))
                    .await
            {
                return;
            }
            let usage = EngineUsage {
                prompt_tokens,
                completion_tokens: u32::try_from(produced).unwrap_or(u32::MAX),
                estimated: true,
                replay_quality: plan.replay_quality,
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

    #[test]
    fn pieces_keep_whitespace() {
        assert_eq!(pieces("a  b\nc"), vec!["a  ", "b\n", "c"]);
        assert_eq!(pieces(""), Vec::<String>::new());
    }
}
