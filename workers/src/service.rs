//! The Worker gRPC service: admission, the engine call, timing and cost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use routemesh_proto::v1::{
    AnswerConfidence, EngineFigures, LoadReport, LoadRequest, StreamEnd, TextDelta, Usage,
    WorkerGenerateRequest, WorkerGenerateResponse, WorkerStreamEvent, worker_server::Worker,
    worker_stream_event,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::admission::Admission;
use crate::backend::{Backend, Confidence, EngineEvent, EngineUsage, GenerateInput};
use crate::error::{draining_status, engine_status, overloaded_status, wrong_model_status};
use routemesh_mesh::WorkerRecord;
use routemesh_mesh::driven::driven_stream;

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
            cached_prompt_tokens: None,
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
            }),
            backend: self.backend.kind().to_string(),
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
        Ok(GenerateInput {
            request_id: req.request_id.clone(),
            messages: req.messages.clone(),
            params: req.params.clone().unwrap_or_default(),
            want_logprobs: req.want_logprobs,
        })
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
        let span = worker_span(&request, "Generate");
        self.generate_traced(request).instrument(span).await
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let span = worker_span(&request, "GenerateStream");
        self.generate_stream_traced(request, span.clone())
            .instrument(span)
            .await
    }

    async fn load(&self, _request: Request<LoadRequest>) -> Result<Response<LoadReport>, Status> {
        Ok(Response::new(self.state.load_report()))
    }
}

/// The worker's server span, a child of the gateway's call when it sent one.
fn worker_span(request: &Request<WorkerGenerateRequest>, method: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "routemesh.worker.generate",
        otel.kind = "server",
        rpc.method = method,
        routemesh.request_id = %request.get_ref().request_id,
        gen_ai.request.model = %request.get_ref().model,
    );
    routemesh_mesh::trace_context::continue_trace(&span, request.metadata());
    span
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
                    tool_calls: Vec::new(),
                    logprobs: Vec::new(),
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
        let stream = driven_stream(move |tx| {
            async move {
                let _slot = slot; // held until the stream ends or the client leaves
                let mut ttft = None;
                while let Some(event) = engine.next().await {
                    let out = match event {
                        Ok(EngineEvent::Delta(text)) => {
                            ttft.get_or_insert_with(|| ms_since(start));
                            worker_stream_event::Event::Delta(TextDelta {
                                text,
                                logprobs: Vec::new(),
                            })
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
                            let _ = tx
                                .send(Ok(WorkerStreamEvent {
                                    event: Some(worker_stream_event::Event::End(end)),
                                }))
                                .await;
                            return;
                        }
                        Err(e) => {
                            state.record_failure();
                            let _ = tx.send(Err(engine_status(&e))).await;
                            return;
                        }
                    };
                    if tx
                        .send(Ok(WorkerStreamEvent { event: Some(out) }))
                        .await
                        .is_err()
                    {
                        return; // client went away: dropping `engine` cancels generation
                    }
                }
                state.record_failure();
                let _ = tx
                    .send(Err(Status::internal(
                        "engine stream ended without an end event",
                    )))
                    .await;
            }
            .instrument(span)
        });
        Ok(Response::new(stream))
    }
}
