//! Backend `local`: a small GGUF language model (SmolLM2-135M-Instruct by
//! default) run in-process on the CPU by a purpose-built llama forward pass.
//!
//! Generation never runs on the async threads. Each of the worker's
//! `capacity` slots is a dedicated thread owning one KV cache; requests queue
//! for a free slot, and the slots share one rayon pool of `threads` threads
//! for their matrix products. Tokens go back over a channel as they are
//! decoded; when the client drops the stream the channel closes and the slot
//! stops at its next token (or prompt chunk) and takes the next request.

mod awake;
pub mod gguf;
mod model;
mod quant;
mod sample;
mod scalar;
mod simd;
mod stops;
mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use routemesh_proto::v1::{ChatMessage, FinishReason, TokenLogprob, TopLogprob};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc as tokio_mpsc;

use super::{
    Backend, Completion, EngineError, EngineEvent, EngineStream, EngineUsage, GenerateInput,
    LogprobSummary,
};
use model::{Model, Session};
use sample::Sampler;
use stops::StopFilter;
use tokenizer::{ModelTokenizer, Utf8Stream};

/// The `backend.local` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The GGUF model file (`scripts/fetch-local-model.sh` fetches SmolLM2).
    pub model: PathBuf,
    /// Threads for the matrix products, shared by every slot; defaults to
    /// the number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Tokens a slot holds (prompt and completion); defaults to the model's
    /// training context, at most 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
    /// Temperature for requests that set none; 0 is greedy decoding.
    #[serde(default)]
    pub temperature: f32,
}

impl LocalConfig {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            threads: None,
            context: None,
            temperature: 0.0,
        }
    }
}

/// Prompt tokens processed per forward pass: bounds scratch memory and how
/// long a cancelled request keeps its slot.
const PREFILL_CHUNK: usize = 64;

/// Weights, tokenizer and threads: everything the slots share.
struct Engine {
    model: Model,
    tokenizer: ModelTokenizer,
    pool: rayon::ThreadPool,
    context: usize,
    temperature: f32,
    stopping: AtomicBool,
    /// Slots generating now; tests and the drain wait on it.
    busy: tokio::sync::watch::Sender<usize>,
    /// Tokens decoded since start (all slots).
    decoded: AtomicU64,
}

struct Job {
    messages: Vec<ChatMessage>,
    max_tokens: usize,
    stops: Vec<String>,
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
    /// Summarise the tokens' log-probabilities as a confidence.
    want_logprobs: bool,
    /// Return each token's log-probability with this many alternatives.
    token_logprobs: Option<usize>,
    events: tokio_mpsc::Sender<Result<EngineEvent, EngineError>>,
}

/// A loaded model serving `slots` requests at a time.
pub struct LocalBackend {
    engine: Arc<Engine>,
    queue: Option<mpsc::Sender<Job>>,
    slots: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("slots", &self.slots.len())
            .field("context", &self.engine.context)
            .finish()
    }
}

/// Reads and checks a model file; every error names the path.
fn load_files(config: &LocalConfig) -> Result<(Model, ModelTokenizer), String> {
    let path = &config.model;
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "backend.local.model: cannot read {}: {e}{}",
            path.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                " (scripts/fetch-local-model.sh fetches the default model)"
            } else {
                ""
            }
        )
    })?;
    let named = |e: String| format!("backend.local.model: {}: {e}", path.display());
    let gguf = gguf::Gguf::parse(bytes).map_err(|e| named(e.to_string()))?;
    let model = Model::load(&gguf).map_err(named)?;
    let tokenizer = ModelTokenizer::load(&gguf).map_err(named)?;
    Ok((model, tokenizer))
}

impl LocalBackend {
    /// Loads the model (on a blocking thread) and starts `slots` slot threads.
    pub async fn load(config: &LocalConfig, slots: u32) -> Result<Self, String> {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Self::load_blocking(&config, slots))
            .await
            .map_err(|e| format!("backend.local: loading failed: {e}"))?
    }

    /// [`LocalBackend::load`] for callers that may block (benchmarks, tools).
    pub fn load_blocking(config: &LocalConfig, slots: u32) -> Result<Self, String> {
        let started = Instant::now();
        if !(config.temperature.is_finite() && (0.0..=2.0).contains(&config.temperature)) {
            return Err(format!(
                "backend.local.temperature: {} is not in [0, 2]",
                config.temperature
            ));
        }
        let (model, tokenizer) = load_files(config)?;
        let context = config
            .context
            .unwrap_or(model.hyper.context.min(4096))
            .min(model.hyper.context);
        if context < 2 {
            return Err(format!("backend.local.context: {context} is too small"));
        }
        let threads = match config.threads {
            Some(0) => return Err("backend.local.threads: must be at least 1".into()),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("rm-local-mm-{i}"))
            .build()
            .map_err(|e| format!("backend.local: cannot start threads: {e}"))?;
        tracing::info!(
            model = %config.model.display(),
            layers = model.hyper.layers,
            vocab = model.hyper.vocab,
            context,
            threads,
            slots,
            kernels = simd::Kernels::detect().name(),
            load_ms = started.elapsed().as_millis() as u64,
            "local model loaded"
        );
        let engine = Arc::new(Engine {
            model,
            tokenizer,
            pool,
            context,
            temperature: config.temperature,
            stopping: AtomicBool::new(false),
            busy: tokio::sync::watch::Sender::new(0),
            decoded: AtomicU64::new(0),
        });
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut handles = Vec::new();
        for i in 0..slots.max(1) {
            let (engine, jobs) = (engine.clone(), jobs.clone());
            let handle = std::thread::Builder::new()
                .name(format!("rm-local-slot-{i}"))
                .spawn(move || slot_loop(&engine, &jobs))
                .map_err(|e| format!("backend.local: cannot start slot thread: {e}"))?;
            handles.push(handle);
        }
        Ok(Self {
            engine,
            queue: Some(queue),
            slots: handles,
        })
    }

    /// Slots generating now, watchable (tests wait on it instead of sleeping).
    pub fn busy(&self) -> tokio::sync::watch::Receiver<usize> {
        self.engine.busy.subscribe()
    }

    /// Tokens decoded since the model was loaded.
    pub fn decoded_tokens(&self) -> u64 {
        self.engine.decoded.load(Ordering::Relaxed)
    }

    /// The prompt `messages` make, as tokens, with the chat template.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
        self.engine.tokenizer.chat_prompt(messages)
    }

    /// Benchmark: on the calling thread (it blocks), prefill the prompt of
    /// `messages` into a fresh cache and decode `tokens` greedy tokens without
    /// stopping at the end of the turn, as llama.cpp's reference run does.
    /// Returns (time to first token, decode tokens per second).
    pub fn measure(
        &self,
        messages: &[ChatMessage],
        tokens: usize,
    ) -> Result<(Duration, f64), String> {
        let e = &self.engine;
        let prompt = e.tokenizer.chat_prompt(messages)?;
        if prompt.is_empty() || prompt.len() + tokens > e.context {
            return Err(format!(
                "{} + {tokens} tokens do not fit the context",
                prompt.len()
            ));
        }
        let mut session = Session::new(&e.model);
        let start = Instant::now();
        let mut logits = Vec::new();
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            logits = e.model.forward(&mut session, chunk, &e.pool);
        }
        let mut next = sample::argmax(&logits);
        let ttft = start.elapsed();
        let decode = Instant::now();
        for _ in 0..tokens {
            logits = e.model.forward(&mut session, &[next], &e.pool);
            next = sample::argmax(&logits);
        }
        Ok((ttft, tokens as f64 / decode.elapsed().as_secs_f64()))
    }
}

impl Drop for LocalBackend {
    /// Stops the slots: queued requests are dropped (their streams end) and a
    /// generating slot stops at its next token.
    fn drop(&mut self) {
        self.engine.stopping.store(true, Ordering::Release);
        self.queue = None;
        for handle in self.slots.drain(..) {
            let _ = handle.join();
        }
    }
}

/// A slot thread: takes requests until the queue closes.
fn slot_loop(engine: &Engine, jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut session = Session::new(&engine.model);
    let mut cached: Vec<u32> = Vec::new();
    loop {
        // The lock is held only while waiting, so idle slots take turns.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if job.events.is_closed() || engine.stopping.load(Ordering::Acquire) {
            continue;
        }
        engine.busy.send_modify(|b| *b += 1);
        let result = generate(engine, &mut session, &mut cached, &job);
        engine.busy.send_modify(|b| *b = b.saturating_sub(1));
        if let Err(e) = result {
            let _ = job.events.blocking_send(Err(e));
        }
        // A long conversation's cache is not kept at its peak size.
        let kv_dim = engine.model.hyper.kv_heads * engine.model.hyper.head_dim;
        if session.len > 1024 {
            session.truncate(0, kv_dim);
            cached.clear();
        }
        session.shrink(1024, kv_dim);
    }
}

/// Why a generation ended early without an error to report.
struct Gone;

fn send(job: &Job, event: EngineEvent) -> Result<(), Gone> {
    job.events.blocking_send(Ok(event)).map_err(|_| Gone)
}

fn generate(
    engine: &Engine,
    session: &mut Session,
    cached: &mut Vec<u32>,
    job: &Job,
) -> Result<(), EngineError> {
    match generate_inner(engine, session, cached, job) {
        Ok(Ok(())) | Ok(Err(Gone)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn generate_inner(
    engine: &Engine,
    session: &mut Session,
    cached: &mut Vec<u32>,
    job: &Job,
) -> Result<Result<(), Gone>, EngineError> {
    let cancelled = || job.events.is_closed() || engine.stopping.load(Ordering::Acquire);
    let tok = &engine.tokenizer;
    let prompt = tok
        .chat_prompt(&job.messages)
        .map_err(EngineError::Rejected)?;
    if prompt.len() >= engine.context {
        return Err(EngineError::ContextExceeded(format!(
            "the prompt is {} tokens; this model's context is {}",
            prompt.len(),
            engine.context
        )));
    }
    let kv_dim = engine.model.hyper.kv_heads * engine.model.hyper.head_dim;
    // Reuse the cache of a shared prefix (the system prompt, an earlier turn);
    // at least one token is run to get the next logits.
    let common = cached
        .iter()
        .zip(&prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(prompt.len() - 1);
    session.truncate(common, kv_dim);
    cached.truncate(common);
    let reused = u32::try_from(common).unwrap_or(u32::MAX);
    let mut logits = Vec::new();
    for chunk in prompt[common..].chunks(PREFILL_CHUNK) {
        if cancelled() {
            return Ok(Err(Gone));
        }
        logits = engine.model.forward(session, chunk, &engine.pool);
        cached.extend_from_slice(chunk);
    }
    let budget = job.max_tokens.min(engine.context - prompt.len());
    let mut sampler = Sampler::new(job.temperature, job.top_p, job.seed);
    let mut utf8 = Utf8Stream::default();
    let mut stops = StopFilter::new(&job.stops);
    let mut completion = 0usize;
    let mut logprobs = LogprobSummary::default();
    // Tokens whose text is not sent yet (held back by the UTF-8 or stop
    // filter): their log-probabilities go out with the next delta.
    let mut pending: Vec<TokenLogprob> = Vec::new();
    let mut finish = FinishReason::Length;
    while completion < budget {
        let next = sampler.next(&logits);
        if tok.is_end_of_turn(next) {
            finish = FinishReason::Stop;
            break;
        }
        // Over the tokens counted as the completion (the end-of-turn token
        // is not one), so `tokens` matches `completion_tokens`.
        match job.token_logprobs {
            Some(top) => {
                let (lp, best) = sample::log_probs_with_top(&logits, next, top);
                logprobs.push(lp);
                pending.push(token_logprob(tok, next, lp, &best));
            }
            None if job.want_logprobs => logprobs.push(sample::log_prob(&logits, next)),
            None => {}
        }
        completion += 1;
        engine.decoded.fetch_add(1, Ordering::Relaxed);
        let (text, stopped) = stops.push(&utf8.push(tok.token_bytes(next)));
        if !text.is_empty()
            && let Err(gone) = send(
                job,
                EngineEvent::Delta {
                    text,
                    logprobs: std::mem::take(&mut pending),
                },
            )
        {
            return Ok(Err(gone));
        }
        if stopped {
            finish = FinishReason::StopSequence;
            break;
        }
        if completion == budget {
            break;
        }
        if cancelled() {
            return Ok(Err(Gone));
        }
        logits = engine.model.forward(session, &[next], &engine.pool);
        cached.push(next);
    }
    if finish != FinishReason::StopSequence {
        let (mut rest, stopped) = stops.push(&utf8.finish());
        if stopped {
            finish = FinishReason::StopSequence;
        } else {
            rest.push_str(&stops.finish());
        }
        if !rest.is_empty()
            && let Err(gone) = send(
                job,
                EngineEvent::Delta {
                    text: rest,
                    logprobs: std::mem::take(&mut pending),
                },
            )
        {
            return Ok(Err(gone));
        }
    }
    // Tokens whose text was cut at a stop sequence were still generated.
    if !pending.is_empty()
        && let Err(gone) = send(
            job,
            EngineEvent::Delta {
                text: String::new(),
                logprobs: pending,
            },
        )
    {
        return Ok(Err(gone));
    }
    let usage = EngineUsage {
        prompt_tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
        completion_tokens: u32::try_from(completion).unwrap_or(u32::MAX),
        estimated: false,
        replay_quality: None,
        // The prefix this slot's KV cache already held (see above).
        cached_prompt_tokens: Some(reused),
    };
    Ok(send(
        job,
        EngineEvent::End {
            finish_reason: finish,
            usage,
            confidence: logprobs.finish().filter(|_| job.want_logprobs),
        },
    ))
}

/// A generated token's log-probability and alternatives, in the wire form.
fn token_logprob(
    tok: &ModelTokenizer,
    token: u32,
    logprob: f64,
    best: &[(u32, f64)],
) -> TokenLogprob {
    let text = |id: u32| {
        let bytes = tok.token_bytes(id);
        (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec())
    };
    let (token, bytes) = text(token);
    TokenLogprob {
        token,
        logprob,
        bytes,
        top_logprobs: best
            .iter()
            .map(|&(id, logprob)| {
                let (token, bytes) = text(id);
                TopLogprob {
                    token,
                    logprob,
                    bytes,
                }
            })
            .collect(),
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    /// A plain chat model behind a ChatML template: no tool turns, no
    /// constrained decoding, no image encoder. Its log-probabilities are
    /// real (one log-softmax per generated token, only when asked), and its
    /// context is the window its slots enforce (`context`, by default the
    /// model's training context capped at 4096).
    fn capabilities(&self) -> routemesh_mesh::Capabilities {
        routemesh_mesh::Capabilities {
            tools: false,
            json_output: false,
            structured_output: false,
            vision: false,
            logprobs: true,
            context_tokens: Some(u32::try_from(self.engine.context).unwrap_or(u32::MAX)),
        }
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    async fn generate(&self, input: GenerateInput) -> Result<Completion, EngineError> {
        let start = tokio::time::Instant::now();
        super::collect(self.stream(input).await?, start, "local engine").await
    }

    async fn stream(&self, input: GenerateInput) -> Result<EngineStream, EngineError> {
        let params = &input.params;
        let (events, rx) = tokio_mpsc::channel(64);
        let job = Job {
            max_tokens: input.max_tokens() as usize,
            stops: params.stop.clone(),
            temperature: params.temperature.unwrap_or(self.engine.temperature),
            top_p: params.top_p.unwrap_or(1.0),
            seed: params.seed,
            want_logprobs: input.want_logprobs,
            token_logprobs: input
                .token_logprobs()
                .then(|| params.top_logprobs.unwrap_or(0) as usize),
            messages: input.messages,
            events,
        };
        self.queue
            .as_ref()
            .and_then(|q| q.send(job).ok())
            .ok_or_else(|| EngineError::Unreachable("the local engine has stopped".into()))?;
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Where `scripts/fetch-local-model.sh` puts the default model, under a cache
/// directory (`.cache/routemesh` by default).
pub const DEFAULT_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model's path under `cache` (the `ROUTEMESH_CACHE` or `.cache/routemesh`).
pub fn default_model_path(cache: &Path) -> PathBuf {
    cache.join(DEFAULT_MODEL_FILE)
}

#[cfg(test)]
mod model_tests;
