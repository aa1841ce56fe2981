//! The Worker gRPC service: admission, the engine call, timing and cost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use routemesh_proto::v1::{
    AnswerConfidence, ChatMessage, EngineFigures, GenerationParams, LoadReport, LoadRequest,
    StreamEnd, TextDelta, Usage, WorkerGenerateRequest, WorkerGenerateResponse, WorkerStreamEvent,
    content_part, worker_server::Worker, worker_stream_event,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::admission::Admission;
use crate::backend::{Backend, Confidence, EngineEvent, EngineUsage, GenerateInput};
use crate::error::{draining_status, engine_status, overloaded_status, wrong_model_status};
use crate::spans;
use routemesh_mesh::driven::{Sent, driven_stream, send_until};
use routemesh_mesh::{Needs, WorkerRecord};

/// Recent per-request speed figures for the load report.
#[derive(Debug, Default)]
struct RecentFigures {
    ttft_ms: VecDeque<f64>,
    tokens_per_second: VecDeque<f64>,
}

const RECENT: usize = 128;

fn push_bounded(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(v);
}

fn median(q: &VecDeque<f64>) -> f64 {
    if q.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = q.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// State shared by the service and the agent's lifecycle.
pub struct WorkerState {
    pub record: WorkerRecord,
    pub backend: Arc<dyn Backend>,
    pub admission: Arc<Admission>,
    pub draining: AtomicBool,
    /// Why the engine is considered down (its health check failed), or
    /// `None` while it answers.
    pub engine_down: Mutex<Option<String>>,
    /// The engine's KV-cache use at its last health probe, if it reports it.
    pub kv_cache_usage: Mutex<Option<f64>>,
    completed: AtomicU64,
    failed: AtomicU64,
    recent: Mutex<RecentFigures>,
}

impl WorkerState {
    pub fn new(record: WorkerRecord, backend: Arc<dyn Backend>) -> Arc<Self> {
        Arc::new(Self {
            admission: Admission::new(record.capacity, record.max_queue),
            record,
            backend,
            draining: AtomicBool::new(false),
            engine_down: Mutex::new(None),
            kv_cache_usage: Mutex::new(None),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            recent: Mutex::new(RecentFigures::default()),
        })
    }

    fn usage(&self, engine: &EngineUsage, ttft_ms: f64, total_ms: f64) -> Usage {
        let cost = self
            .record
            .prices()
            .cost_usd(engine.prompt_tokens, engine.completion_tokens);
        Usage {
            prompt_tokens: engine.prompt_tokens,
            completion_tokens: engine.completion_tokens,
            cost_usd: cost,
            time_to_first_token_ms: ttft_ms,
            total_time_ms: total_ms,
            model: self.record.model.clone(),
            worker_id: self.record.id.clone(),
            estimated: engine.estimated,
            simulated: self.backend.simulated(),
            replay_quality: engine.replay_quality,
            cached_prompt_tokens: engine.cached_prompt_tokens,
        }
    }

    fn record_success(&self, ttft_ms: f64, total_ms: f64, completion_tokens: u32) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let decode_s = (total_ms - ttft_ms) / 1000.0;
        if let Ok(mut recent) = self.recent.lock() {
            push_bounded(&mut recent.ttft_ms, ttft_ms);
            if decode_s > 0.0 && completion_tokens > 1 {
                push_bounded(
                    &mut recent.tokens_per_second,
                    f64::from(completion_tokens - 1) / decode_s,
                );
            }
        }
    }

    fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn load_report(&self) -> LoadReport {
        let (ttft, tps) = self
            .recent
            .lock()
            .map(|r| (median(&r.ttft_ms), median(&r.tokens_per_second)))
            .unwrap_or_default();
        LoadReport {
            worker_id: self.record.id.clone(),
            model: self.record.model.clone(),
            in_flight: self.admission.in_flight(),
            queue_depth: self.admission.waiting(),
            capacity: self.admission.capacity(),
            max_queue: self.admission.max_queue(),
            draining: self.draining.load(Ordering::Acquire),
            engine: Some(EngineFigures {
                time_to_first_token_ms_p50: ttft,
                tokens_per_second_p50: tps,
                completed: self.completed.load(Ordering::Relaxed),
                failed: self.failed.load(Ordering::Relaxed),
                simulated: self.backend.simulated(),
                kv_cache_usage: self.kv_cache_usage.lock().ok().and_then(|k| *k),
            }),
            backend: self.backend.kind().to_string(),
            engine_down: self
                .engine_down
                .lock()
                .ok()
                .and_then(|d| d.clone())
                .unwrap_or_default(),
        }
    }

    fn check(&self, req: &WorkerGenerateRequest) -> Result<GenerateInput, Status> {
        if self.draining.load(Ordering::Acquire) {
            return Err(draining_status());
        }
        if !req.model.is_empty() && req.model != self.record.model {
            return Err(wrong_model_status(&req.model, &self.record.model));
        }
        if req.messages.is_empty() {
            return Err(Status::invalid_argument("messages: must not be empty"));
        }
        let params = req.params.clone().unwrap_or_default();
        // The gateway routes only to workers that can serve the request;
        // this catches a gateway that does not know this worker's
        // capabilities (or a direct caller). The context is not checked
        // here: only the engine's tokenizer knows the prompt's length.
        if let Some(lack) = self
            .record
            .capabilities()
            .lack(&needs(&req.messages, &params))
        {
            return Err(Status::invalid_argument(format!(
                "this worker ({} serving {:?}) cannot serve the request: {lack}",
                self.record.id, self.record.model
            )));
        }
        Ok(GenerateInput {
            request_id: req.request_id.clone(),
            messages: req.messages.clone(),
            params,
            want_logprobs: req.want_logprobs,
            user: req.user.clone(),
        })
    }
}

/// What a request needs of the engine, apart from its context length.
fn needs(messages: &[ChatMessage], params: &GenerationParams) -> Needs {
    let format = params
        .response_format
        .as_ref()
        .map_or("", |f| f.r#type.as_str());
    Needs {
        // A conversation with earlier tool calls needs an engine whose
        // template knows tool turns, even when no tool is offered now.
        tools: !params.tools.is_empty()
            || messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty()),
        json_output: format == "json_object",
        structured_output: format == "json_schema",
        vision: messages
            .iter()
            .flat_map(|m| &m.parts)
            .any(|p| matches!(p.part, Some(content_part::Part::ImageUrl(_)))),
        logprobs: params.logprobs,
        prompt_tokens: 0,
        max_tokens: 0,
    }
}

/// The wire form of an engine's confidence, only when it was asked for: a
/// backend that computed one anyway does not make the caller pay to read it.
fn wire_confidence(asked: bool, confidence: Option<Confidence>) -> Option<AnswerConfidence> {
    confidence.filter(|_| asked).map(|c| AnswerConfidence {
        tokens: c.tokens,
        mean_logprob: c.mean_logprob,
        min_logprob: c.min_logprob,
    })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[derive(Clone)]
pub struct WorkerService {
    state: Arc<WorkerState>,
}

impl WorkerService {
    pub fn new(state: Arc<WorkerState>) -> Self {
        Self { state }
    }
}

impl std::fmt::Debug for WorkerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerService")
            .field("worker", &self.state.record.id)
            .finish_non_exhaustive()
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<WorkerStreamEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn generate(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<WorkerGenerateResponse>, Status> {
        let span = self.span(&request, "Generate");
        let result = self.generate_traced(request).instrument(span.clone()).await;
        match &result {
            Ok(done) => spans::served(
                &span,
                done.get_ref().usage.as_ref(),
                done.get_ref().finish_reason,
            ),
            Err(status) => spans::failed(&span, status),
        }
        result
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let span = self.span(&request, "GenerateStream");
        let result = self
            .generate_stream_traced(request, span.clone())
            .instrument(span.clone())
            .await;
        if let Err(status) = &result {
            spans::failed(&span, status);
        }
        result
    }

    async fn load(&self, _request: Request<LoadRequest>) -> Result<Response<LoadReport>, Status> {
        Ok(Response::new(self.state.load_report()))
    }
}

impl WorkerService {
    /// The call's server span, a child of the gateway's call when it sent one.
    fn span(
        &self,
        request: &Request<WorkerGenerateRequest>,
        method: &'static str,
    ) -> tracing::Span {
        let record = &self.state.record;
        spans::worker_span(request, method, &record.id, &record.model)
    }
}

impl WorkerService {
    async fn generate_traced(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<WorkerGenerateResponse>, Status> {
        let start = Instant::now();
        let state = &self.state;
        let input = state.check(request.get_ref())?;
        let asked = input.want_logprobs;
        let token_logprobs = input.token_logprobs();
        let _slot = state
            .admission
            .acquire()
            .await
            .map_err(|e| overloaded_status(&e))?;
        let engine_start = Instant::now();
        match state.backend.generate(input).await {
            Ok(done) => {
                let total = ms_since(start);
                // Without the engine's word, the whole completion arrived at
                // once: its first token came when everything did.
                let ttft = done.time_to_first_token.map_or(total, |t| {
                    (engine_start - start).as_secs_f64() * 1000.0 + t.as_secs_f64() * 1000.0
                });
                state.record_success(ttft, total, done.usage.completion_tokens);
                Ok(Response::new(WorkerGenerateResponse {
                    text: done.text,
                    finish_reason: done.finish_reason as i32,
                    usage: Some(state.usage(&done.usage, ttft, total)),
                    confidence: wire_confidence(asked, done.confidence),
                    tool_calls: done.tool_calls,
                    logprobs: if token_logprobs {
                        done.logprobs
                    } else {
                        Vec::new()
                    },
                }))
            }
            Err(e) => {
                state.record_failure();
                Err(engine_status(&e))
            }
        }
    }

    async fn generate_stream_traced(
        &self,
        request: Request<WorkerGenerateRequest>,
        span: tracing::Span,
    ) -> Result<Response<EventStream>, Status> {
        let start = Instant::now();
        let state = self.state.clone();
        let input = state.check(request.get_ref())?;
        let asked = input.want_logprobs;
        let token_logprobs = input.token_logprobs();
        let slot = state
            .admission
            .acquire()
            .await
            .map_err(|e| overloaded_status(&e))?;
        let mut engine = match state.backend.stream(input).await {
            Ok(s) => s,
            Err(e) => {
                state.record_failure();
                return Err(engine_status(&e));
            }
        };
        // The span's handle inside the stream, which records how it ended.
        let call_span = span.clone();
        let stream = driven_stream(move |tx| {
            async move {
                let _slot = slot; // held until the stream ends or the client leaves
                let mut ttft = None;
                while let Some(event) = engine.next().await {
                    let out = match event {
                        Ok(EngineEvent::Delta { text, logprobs }) => {
                            // Log-probabilities computed only for the
                            // confidence are not the client's to read, and
                            // a piece with nothing else is not sent.
                            let logprobs = if token_logprobs { logprobs } else { Vec::new() };
                            if text.is_empty() && logprobs.is_empty() {
                                continue;
                            }
                            ttft.get_or_insert_with(|| ms_since(start));
                            worker_stream_event::Event::Delta(TextDelta { text, logprobs })
                        }
                        Ok(EngineEvent::ToolCall(piece)) => {
                            ttft.get_or_insert_with(|| ms_since(start));
                            worker_stream_event::Event::ToolCall(piece)
                        }
                        Ok(EngineEvent::End {
                            finish_reason,
                            usage,
                            confidence,
                        }) => {
                            let total = ms_since(start);
                            let ttft = ttft.unwrap_or(total);
                            state.record_success(ttft, total, usage.completion_tokens);
                            let end = StreamEnd {
                                finish_reason: finish_reason as i32,
                                usage: Some(state.usage(&usage, ttft, total)),
                                confidence: wire_confidence(asked, confidence),
                            };
                            spans::served(&call_span, end.usage.as_ref(), end.finish_reason);
                            let end = WorkerStreamEvent {
                                event: Some(worker_stream_event::Event::End(end)),
                            };
                            send_until(&tx, Ok(end), stall_deadline()).await;
                            return;
                        }
                        Err(e) => {
                            state.record_failure();
                            let status = engine_status(&e);
                            spans::failed(&call_span, &status);
                            send_until(&tx, Err(status), stall_deadline()).await;
                            return;
                        }
                    };
                    let event = WorkerStreamEvent { event: Some(out) };
                    if send_until(&tx, Ok(event), stall_deadline()).await != Sent::Delivered {
                        // The client went away or stopped reading: dropping
                        // `engine` cancels generation and frees the slot.
                        return;
                    }
                }
                state.record_failure();
                let status = Status::internal("engine stream ended without an end event");
                spans::failed(&call_span, &status);
                send_until(&tx, Err(status), stall_deadline()).await;
            }
            .instrument(span)
        });
        Ok(Response::new(stream))
    }
}

/// How long a stream's client may leave its buffer full (not reading)
/// before the stream is ended: the gateway reads as fast as its own client
/// does, and ends its side sooner (`stream_stall_timeout`).
const STALLED_CLIENT: std::time::Duration = std::time::Duration::from_secs(30);

fn stall_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + STALLED_CLIENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{SimBackend, SimConfig};
    use routemesh_mesh::{Capabilities, Tier};
    use routemesh_proto::v1::{
        ContentPart, ImageUrl, ResponseFormat, Tool, ToolCall, content_part::Part,
    };
    use tonic::Code;

    fn state(capabilities: Capabilities) -> Arc<WorkerState> {
        let record = WorkerRecord {
            id: "w-0".into(),
            model: "m".into(),
            tier: Tier::Small,
            endpoint: "http://127.0.0.1:1".into(),
            capacity: 1,
            max_queue: 1,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            quality_prior: None,
            router_model: None,
            params_b: None,
            backend: "sim".into(),
            simulated: true,
            expected_ttft_ms: None,
            expected_tokens_per_second: None,
            capabilities: Some(capabilities),
        };
        let backend = SimBackend::new(SimConfig::instant(), "m").unwrap();
        WorkerState::new(record, Arc::new(backend))
    }

    fn request(messages: Vec<ChatMessage>, params: GenerationParams) -> WorkerGenerateRequest {
        WorkerGenerateRequest {
            request_id: "r".into(),
            model: "m".into(),
            messages,
            params: Some(params),
            user: "u-1".into(),
            ..Default::default()
        }
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_needing_what_the_engine_lacks_are_refused_by_name() {
        let plain = state(Capabilities {
            tools: false,
            json_output: false,
            structured_output: false,
            vision: false,
            logprobs: false,
            // The engine decides on the context, not this check.
            context_tokens: Some(8),
        });
        let everything = state(Capabilities::UNDECLARED);
        let format = |kind: &str| GenerationParams {
            response_format: Some(ResponseFormat {
                r#type: kind.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let image = ChatMessage {
            role: "user".into(),
            parts: vec![ContentPart {
                part: Some(Part::ImageUrl(ImageUrl {
                    url: "data:image/png;base64,AAAA".into(),
                    detail: String::new(),
                })),
            }],
            ..Default::default()
        };
        let earlier_call = vec![
            user("hi"),
            ChatMessage {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }],
                ..Default::default()
            },
            ChatMessage {
                role: "tool".into(),
                content: "42".into(),
                tool_call_id: "c".into(),
                ..Default::default()
            },
        ];
        let cases = [
            (
                request(
                    vec![user("hi")],
                    GenerationParams {
                        tools: vec![Tool {
                            name: "f".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
                "no tool calling",
            ),
            (
                request(earlier_call, GenerationParams::default()),
                "no tool calling",
            ),
            (
                request(vec![user("hi")], format("json_object")),
                "no JSON output",
            ),
            (
                request(vec![user("hi")], format("json_schema")),
                "no structured output",
            ),
            (
                request(vec![image], GenerationParams::default()),
                "no image input",
            ),
            (
                request(
                    vec![user("hi")],
                    GenerationParams {
                        logprobs: true,
                        ..Default::default()
                    },
                ),
                "no log-probabilities",
            ),
        ];
        for (req, lack) in cases {
            let status = plain.check(&req).map(|_| ()).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().contains(lack) && status.message().contains("w-0"),
                "{lack}: {}",
                status.message()
            );
            let input = everything.check(&req).unwrap();
            assert_eq!(input.user, "u-1");
        }
        // A long prompt and a plain request pass; a text response format too.
        let long = request(vec![user(&"word ".repeat(100))], format("text"));
        assert!(plain.check(&long).is_ok());
        // The confidence summary is best effort, never a need.
        let mut summary = request(vec![user("hi")], GenerationParams::default());
        summary.want_logprobs = true;
        assert!(plain.check(&summary).is_ok());
    }
}
