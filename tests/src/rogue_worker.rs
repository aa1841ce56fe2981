//! A worker speaking the routemesh Worker gRPC API that misbehaves on purpose,
//! as a broken or dying worker agent would: what it does is chosen by the
//! prompt (the last message), so one server covers every case.
//!
//! - `close-at-once`: ends the stream before any event;
//! - `no-end`: two deltas, then ends the stream without its end event;
//! - `fail-mid`: two deltas, then an INTERNAL error;
//! - `endless`: a delta every 20 ms, never ending (a client or deadline ends it);
//! - `stall`: never answers (unary and streaming);
//! - a prompt containing `refuse`: UNAVAILABLE before any model runs (a
//!   worker whose engine is gone), so the gateway fails over;
//! - anything else: a normal answer (`ok ok` and an end event with usage).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::Stream;
use routemesh_proto::v1::worker_server::{Worker, WorkerServer};
use routemesh_proto::v1::{
    FinishReason, LoadReport, LoadRequest, StreamEnd, TextDelta, Usage, WorkerGenerateRequest,
    WorkerGenerateResponse, WorkerStreamEvent, worker_stream_event,
};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct RogueWorker {
    /// Calls received (Generate and GenerateStream).
    pub calls: Arc<AtomicU32>,
}

pub struct RunningRogue {
    pub endpoint: String,
    pub state: RogueWorker,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningRogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RogueWorker {
    pub async fn start() -> RunningRogue {
        let state = RogueWorker::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = WorkerServer::new(state.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        RunningRogue {
            endpoint: format!("http://{addr}"),
            state,
            task,
        }
    }
}

fn prompt(request: &WorkerGenerateRequest) -> String {
    request
        .messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

fn delta(text: &str) -> Result<WorkerStreamEvent, Status> {
    Ok(WorkerStreamEvent {
        event: Some(worker_stream_event::Event::Delta(TextDelta {
            text: text.into(),
            ..TextDelta::default()
        })),
    })
}

fn usage(worker_model: &str) -> Usage {
    Usage {
        prompt_tokens: 3,
        completion_tokens: 2,
        cost_usd: 0.000_001,
        model: worker_model.into(),
        worker_id: "rogue".into(),
        ..Usage::default()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WorkerStreamEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for RogueWorker {
    async fn generate(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<WorkerGenerateResponse>, Status> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        let request = request.into_inner();
        if prompt(&request) == "stall" {
            std::future::pending::<()>().await;
        }
        if prompt(&request).contains("refuse") {
            return Err(Status::unavailable("the engine is gone"));
        }
        Ok(Response::new(WorkerGenerateResponse {
            text: "ok ok".into(),
            finish_reason: FinishReason::Stop as i32,
            usage: Some(usage(&request.model)),
            ..WorkerGenerateResponse::default()
        }))
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<WorkerGenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        let request = request.into_inner();
        let model = request.model.clone();
        if prompt(&request).contains("refuse") {
            return Err(Status::unavailable("the engine is gone"));
        }
        let events: EventStream = match prompt(&request).as_str() {
            "close-at-once" => Box::pin(futures::stream::empty()),
            "no-end" => Box::pin(futures::stream::iter([delta("ok"), delta(" ok")])),
            "fail-mid" => Box::pin(futures::stream::iter([
                delta("ok"),
                delta(" ok"),
                Err(Status::internal("the engine crashed")),
            ])),
            "endless" => Box::pin(futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((delta("ok "), ()))
            })),
            "stall" => Box::pin(futures::stream::pending()),
            _ => Box::pin(futures::stream::iter([
                delta("ok"),
                delta(" ok"),
                Ok(WorkerStreamEvent {
                    event: Some(worker_stream_event::Event::End(StreamEnd {
                        finish_reason: FinishReason::Stop as i32,
                        usage: Some(usage(&model)),
                        confidence: None,
                    })),
                }),
            ])),
        };
        Ok(Response::new(events))
    }

    async fn load(&self, _request: Request<LoadRequest>) -> Result<Response<LoadReport>, Status> {
        Ok(Response::new(LoadReport {
            worker_id: "rogue".into(),
            model: "rogue-model".into(),
            capacity: 64,
            max_queue: 64,
            backend: "rogue".into(),
            ..LoadReport::default()
        }))
    }
}
