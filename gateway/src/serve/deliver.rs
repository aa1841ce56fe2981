//! The answer in the shape the client asked for: one response, or a stream of
//! events relayed from the worker (or made from a whole answer). The request
//! is remembered for feedback once its answer is complete.

use routemesh_mesh::driven::{Sent, driven_stream, send_until};
use routemesh_proto::v1::{
    GenerateResponse, GenerateStreamEvent, RouteDecision, StreamEnd, ToolCallDelta, Usage,
    WorkerGenerateResponse, WorkerStreamEvent, generate_stream_event, worker_stream_event,
};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;
use tonic::Streaming;
use tracing::Instrument;

use super::attempt::{Answer, Flight, OpenStream};
use super::call::CallGuard;
use super::recent::Served;
use crate::error::GatewayError;
use crate::pool::WorkerHandle;
use crate::routing::affinity::Sticky;

/// The events of a streamed generation: the route, deltas, then the end (or
/// an error, mid-stream).
pub(crate) type EventStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<GenerateStreamEvent, GatewayError>> + Send>,
>;

/// The whole answer as one response.
pub(super) async fn whole(
    flight: Flight,
    answer: Answer,
) -> Result<GenerateResponse, GatewayError> {
    let (response, route, worker) = match answer {
        Answer::Whole {
            response,
            route,
            worker,
        } => (response, route, worker),
        Answer::Stream(open) => collect(&flight, open).await?,
    };
    remember(&flight, &worker);
    let usage = whole_cost(&flight, response.usage);
    answered(&flight, &route, usage.as_ref(), response.finish_reason);
    Ok(GenerateResponse {
        request_id: flight.req.request_id.clone(),
        text: response.text,
        finish_reason: response.finish_reason,
        usage,
        route: Some(route),
        tool_calls: response.tool_calls,
        logprobs: response.logprobs,
    })
}

type Collected = (
    WorkerGenerateResponse,
    RouteDecision,
    std::sync::Arc<WorkerHandle>,
);

/// A stream read to its end, for a client that wants one answer.
async fn collect(flight: &Flight, open: OpenStream) -> Result<Collected, GatewayError> {
    let OpenStream {
        guard,
        mut upstream,
        first,
        route,
    } = open;
    let worker = guard.worker().clone();
    let mut whole = WorkerGenerateResponse::default();
    let mut first = Some(first);
    loop {
        let item = match next_event(&mut first, &mut upstream, flight.deadline).await {
            Ok(item) => item,
            Err(broken) => return Err(broken.settle(guard, flight, None)),
        };
        match item.event {
            Some(worker_stream_event::Event::Delta(delta)) => {
                whole.text.push_str(&delta.text);
                whole.logprobs.extend(delta.logprobs);
            }
            Some(worker_stream_event::Event::ToolCall(piece)) => {
                piece.add_to(&mut whole.tool_calls);
            }
            Some(worker_stream_event::Event::End(end)) => {
                guard.served(end.usage.as_ref(), end.finish_reason);
                whole.finish_reason = end.finish_reason;
                whole.usage = end.usage;
                whole.confidence = end.confidence;
                return Ok((whole, route, worker));
            }
            None => {}
        }
    }
}

/// Records the request's answer on its server span.
fn answered(flight: &Flight, route: &RouteDecision, usage: Option<&Usage>, finish_reason: i32) {
    super::trace::answered(
        &flight.span,
        &flight.req.request_id,
        route,
        usage,
        finish_reason,
        flight.calls(),
    );
}

/// The answer's usage with the request's whole cost: a cascade's earlier
/// calls are billed too. Token counts stay the answering model's.
fn whole_cost(flight: &Flight, usage: Option<Usage>) -> Option<Usage> {
    usage.map(|mut usage| {
        usage.cost_usd += flight.other_calls_cost_usd;
        usage
    })
}

/// The answer as a stream of events: the route first, then the tokens, then
/// the end. A worker's stream is relayed as it arrives.
pub(super) fn stream(flight: Flight, answer: Answer) -> EventStream {
    // The request span lasts as long as the stream.
    let request_span = tracing::Span::current();
    match answer {
        Answer::Whole {
            response,
            route,
            worker,
        } => {
            remember(&flight, &worker);
            let usage = whole_cost(&flight, response.usage);
            answered(&flight, &route, usage.as_ref(), response.finish_reason);
            let request_id = flight.req.request_id.clone();
            let event = |event| {
                Ok(GenerateStreamEvent {
                    request_id: request_id.clone(),
                    event: Some(event),
                })
            };
            let mut events = vec![event(generate_stream_event::Event::Route(route))];
            if !response.text.is_empty() || !response.logprobs.is_empty() {
                events.push(event(generate_stream_event::Event::Delta(
                    routemesh_proto::v1::TextDelta {
                        text: response.text,
                        logprobs: response.logprobs,
                    },
                )));
            }
            for (index, call) in response.tool_calls.into_iter().enumerate() {
                events.push(event(generate_stream_event::Event::ToolCall(
                    ToolCallDelta {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        id: call.id,
                        name: call.name,
                        arguments: call.arguments,
                    },
                )));
            }
            events.push(event(generate_stream_event::Event::End(StreamEnd {
                finish_reason: response.finish_reason,
                usage,
                confidence: response.confidence,
            })));
            Box::pin(futures::stream::iter(events))
        }
        Answer::Stream(open) => {
            let span = open.guard.span().clone();
            driven_stream(move |tx| {
                relay(flight, open, tx)
                    .instrument(span)
                    .instrument(request_span)
            })
        }
    }
}

/// Relays a worker's stream to the client until it ends, one way or another.
async fn relay(
    flight: Flight,
    open: OpenStream,
    tx: Sender<Result<GenerateStreamEvent, GatewayError>>,
) {
    let OpenStream {
        guard,
        mut upstream,
        first,
        route,
    } = open;
    let worker = guard.worker().clone();
    let req = &flight.req;
    let event = |event| {
        Ok(GenerateStreamEvent {
            request_id: req.request_id.clone(),
            event: Some(event),
        })
    };
    // What the worker generated so far, charged if the client leaves.
    let mut deltas_sent = 0u32;
    let generated = |deltas: u32| Usage {
        prompt_tokens: req.prompt_tokens_estimate(),
        completion_tokens: deltas,
        cost_usd: worker
            .spec
            .expected_cost_usd(req.prompt_tokens_estimate(), deltas),
        ..Usage::default()
    };
    // Sending waits on the client's flow control: a client that stops
    // reading is bounded like a worker that stops writing, by the deadline,
    // and sooner by `stream_stall_timeout`.
    let stall = flight.state.config.stream_stall_timeout;
    let Ok(last_word) = tx.clone().reserve_owned().await else {
        guard.client_gone(generated(0));
        return;
    };
    let send = |item| {
        let until = (Instant::now() + stall).min(flight.deadline);
        send_until(&tx, item, until)
    };
    let route_sent = send(event(generate_stream_event::Event::Route(route.clone()))).await;
    if route_sent != Sent::Delivered {
        client_stopped(&flight, route_sent, last_word);
        guard.client_gone(generated(0));
        return;
    }
    let mut first = Some(first);
    loop {
        let item = match next_event(&mut first, &mut upstream, flight.deadline).await {
            Ok(item) => item,
            Err(broken) => {
                let error = broken.settle(guard, &flight, Some(deltas_sent));
                super::trace::broke(&flight.span, &error);
                send(Err(error)).await;
                return;
            }
        };
        match item.event {
            Some(worker_stream_event::Event::Delta(delta)) => {
                deltas_sent += 1;
                let sent = send(event(generate_stream_event::Event::Delta(delta))).await;
                if sent != Sent::Delivered {
                    // Client gone (or not reading): dropping `upstream`
                    // cancels the worker, and the slot is released.
                    client_stopped(&flight, sent, last_word);
                    guard.client_gone(generated(deltas_sent));
                    return;
                }
            }
            Some(worker_stream_event::Event::ToolCall(piece)) => {
                deltas_sent += 1;
                let sent = send(event(generate_stream_event::Event::ToolCall(piece))).await;
                if sent != Sent::Delivered {
                    client_stopped(&flight, sent, last_word);
                    guard.client_gone(generated(deltas_sent));
                    return;
                }
            }
            Some(worker_stream_event::Event::End(end)) => {
                guard.served(end.usage.as_ref(), end.finish_reason);
                remember(&flight, &worker);
                let usage = whole_cost(&flight, end.usage);
                answered(&flight, &route, usage.as_ref(), end.finish_reason);
                let end = StreamEnd {
                    finish_reason: end.finish_reason,
                    usage,
                    confidence: end.confidence,
                };
                send(event(generate_stream_event::Event::End(end))).await;
                return;
            }
            None => {}
        }
    }
}

/// The stream's last word, kept in reserve: a slot of its buffer, so that a
/// client that stopped reading and reads again finds why its stream ended.
type LastWord = tokio::sync::mpsc::OwnedPermit<Result<GenerateStreamEvent, GatewayError>>;

/// Ends the stream of a client that stopped reading (DEADLINE_EXCEEDED,
/// delivered after what is buffered) and logs it.
fn client_stopped(flight: &Flight, sent: Sent, last_word: LastWord) {
    if sent == Sent::Stalled {
        let stall = flight.state.config.stream_stall_timeout;
        tracing::info!(
            request_id = %flight.req.request_id,
            "the client did not read its stream for {stall:?} (or past the deadline); ended, worker call cancelled"
        );
        last_word.send(Err(GatewayError::ClientStalled(stall)));
    }
}

/// How reading a worker's stream failed.
enum Broken {
    /// The request's deadline passed.
    Deadline,
    /// The worker failed, or its stream ended without its end event.
    Status(tonic::Status),
}

/// The next event of a worker's stream: the `first` one, which the attempt
/// loop already read, then the rest within the request's deadline.
async fn next_event(
    first: &mut Option<WorkerStreamEvent>,
    upstream: &mut Streaming<WorkerStreamEvent>,
    deadline: Instant,
) -> Result<WorkerStreamEvent, Broken> {
    if let Some(item) = first.take() {
        return Ok(item);
    }
    match tokio::time::timeout_at(deadline, upstream.message()).await {
        Err(_) => Err(Broken::Deadline),
        Ok(Ok(Some(item))) => Ok(item),
        Ok(Ok(None)) => Err(Broken::Status(tonic::Status::unavailable(
            "stream ended without an end event",
        ))),
        // The channel's own copy of our deadline (see `Flight::call`).
        Ok(Err(_)) if Instant::now() >= deadline => Err(Broken::Deadline),
        Ok(Err(status)) => Err(Broken::Status(status)),
    }
}

impl Broken {
    /// Accounts the call the failure ended and returns the error the
    /// request ends with; `deltas_sent`: how far a relayed stream had got.
    fn settle(self, guard: CallGuard, flight: &Flight, deltas_sent: Option<u32>) -> GatewayError {
        match self {
            Broken::Deadline => {
                guard.timed_out();
                GatewayError::Deadline(flight.budget)
            }
            Broken::Status(status) => {
                let worker_id = guard.worker().record.id.clone();
                let status = guard.failed(status);
                let status = match deltas_sent {
                    Some(n) => tonic::Status::new(
                        status.code(),
                        format!("mid-stream after {n} deltas: {}", status.message()),
                    ),
                    None => status,
                };
                GatewayError::Worker { worker_id, status }
            }
        }
    }
}

/// Remembers who answered the request, so its feedback reaches that model;
/// under its owner (the API key's tenant), so only that tenant can score it.
fn remember(flight: &Flight, worker: &WorkerHandle) {
    let req = &flight.req;
    flight.state.recent.remember(
        &req.owner,
        &req.request_id,
        Served::new(
            worker.spec.clone(),
            worker.id.clone(),
            flight.predicted.clone(),
        ),
    );
    // The conversation's next turn follows this one.
    if let Some((session, _)) = &flight.session {
        flight.state.sessions.remember(
            session,
            Sticky {
                model: worker.record.model.clone(),
                worker: worker.record.id.clone(),
            },
        );
    }
}
