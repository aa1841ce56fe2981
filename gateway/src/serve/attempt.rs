//! The one attempt loop: choose a worker, call it, and move the request to
//! another worker while no model has run, for whole answers and streams
//! alike. Strategies call it once per step ([`Flight::call`]).

use std::sync::Arc;
use std::time::Duration;

use routemesh_proto::v1::{
    ChatMessage, GenerationParams, RouteDecision, WorkerGenerateRequest, WorkerGenerateResponse,
    WorkerStreamEvent,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tonic::Streaming;
use tracing::Instrument;

use super::call::CallGuard;
use super::state::GatewayState;
use super::trace::worker_call_span;
use crate::error::GatewayError;
use crate::pool::{InFlight, Snapshot, WorkerHandle};
use crate::request::ValidRequest;
use crate::routing::affinity::{Session, Sticky};
use crate::routing::policy::Hints;
use crate::routing::quality::Predicted;
use crate::routing::route::{RouteContext, Routed};
use crate::tenancy::limits::Reservation;

/// How the client wants the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// One response when the answer is complete.
    Whole,
    /// Events as tokens are generated.
    Stream,
}

/// Which workers one step of a strategy may call, and what it asks them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Step {
    /// Only workers serving these models (`None`: the whole pool).
    pub(crate) models: Option<Vec<String>>,
    /// Routing hints for this step instead of the request's (a cascade
    /// routes its steps on what is left of the request's budget).
    pub(crate) hints: Option<Hints>,
    /// The conversation to send instead of the request's (a verification
    /// question about an answer).
    pub(crate) messages: Option<Vec<ChatMessage>>,
    /// Sampling parameters instead of the request's.
    pub(crate) params: Option<GenerationParams>,
    /// Ask the engine for its token log-probabilities.
    pub(crate) want_logprobs: bool,
    /// A follow-up call (a cascade's escalation or verification question):
    /// its tokens are not the request's counterfactual, which the first
    /// answer already counted.
    pub(crate) follow_up: bool,
}

impl Step {
    /// The whole pool, as the policy sees fit.
    pub(crate) fn whole_pool() -> Self {
        Self::default()
    }

    fn admits(&self, worker: &WorkerHandle) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.contains(&worker.record.model))
    }
}

/// What a call answered.
// Made and moved once per request: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// A complete answer, already accounted.
    Whole {
        response: WorkerGenerateResponse,
        route: RouteDecision,
        worker: Arc<WorkerHandle>,
    },
    /// A stream whose first event has arrived; accounted when it ends.
    Stream(OpenStream),
}

impl Answer {
    /// Why its model and worker were chosen.
    pub(crate) fn route(&self) -> &RouteDecision {
        match self {
            Answer::Whole { route, .. } => route,
            Answer::Stream(stream) => &stream.route,
        }
    }
}

/// A worker's stream, open, with its first event in hand.
pub(crate) struct OpenStream {
    pub(crate) guard: CallGuard,
    pub(crate) upstream: Streaming<WorkerStreamEvent>,
    pub(crate) first: WorkerStreamEvent,
    pub(crate) route: RouteDecision,
}

/// A request past admission, on its way through its strategy's calls.
pub(crate) struct Flight {
    pub(crate) state: Arc<GatewayState>,
    pub(crate) req: ValidRequest,
    pub(crate) predicted: Option<Predicted>,
    pub(crate) snapshot: Snapshot,
    /// The request's time: its budget, and when it runs out.
    pub(crate) budget: Duration,
    pub(crate) deadline: Instant,
    /// Workers that failed this request; not tried again.
    failed_workers: Vec<String>,
    /// Why the last worker failed, reported if no other worker is left.
    last_failure: Option<GatewayError>,
    calls: usize,
    /// What the request's calls other than the one whose answer is returned
    /// cost (a cascade's weak answers and verification questions): the
    /// client is told the request's whole cost.
    pub(crate) other_calls_cost_usd: f64,
    /// The conversation the request continues, and where its earlier
    /// turns were served.
    pub(crate) session: Option<(Session, Option<Sticky>)>,
    /// What the request holds of its tenant's limits until it ends.
    pub(crate) reservation: Reservation,
    /// The request's server span, which records what it got.
    pub(crate) span: tracing::Span,
    /// The request's slot under `max_concurrent_requests`, held to the end
    /// (a stream's end).
    _permit: OwnedSemaphorePermit,
}

impl Flight {
    // One argument per thing admission settled, in the order it settles them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: Arc<GatewayState>,
        permit: OwnedSemaphorePermit,
        budget: Duration,
        deadline: Instant,
        snapshot: Snapshot,
        req: ValidRequest,
        predicted: Option<Predicted>,
        span: tracing::Span,
    ) -> Self {
        Self {
            state,
            req,
            predicted,
            snapshot,
            budget,
            deadline,
            failed_workers: Vec::new(),
            last_failure: None,
            session: None,
            reservation: Reservation::none(),
            calls: 0,
            other_calls_cost_usd: 0.0,
            span,
            _permit: permit,
        }
    }

    /// One step: routes among the workers `step` admits, calls the chosen
    /// one, and fails over to another while no model has run (within
    /// `max_attempts` and the retry budget). Ends with an answer, or with
    /// the error the request fails with.
    pub(crate) async fn call(
        &mut self,
        step: &Step,
        delivery: Delivery,
    ) -> Result<Answer, GatewayError> {
        let mut attempts = 0;
        loop {
            let (routed, in_flight) = self.next_worker(step)?;
            let worker = routed.worker;
            self.calls += 1;
            attempts += 1;
            let full_budget = self.state.full_budget(self.budget);
            let span = worker_call_span(
                &worker,
                self.calls,
                step.params.as_ref().unwrap_or(&self.req.params),
                step.follow_up,
            );
            let guard = CallGuard::begin(
                self.state.clone(),
                worker.clone(),
                in_flight,
                &self.req.tenant,
                full_budget,
                self.reservation.clone(),
                span.clone(),
            )
            .follow_up(step.follow_up);
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let request = self.worker_request(step, &worker, remaining, &span);
            let opened = tokio::time::timeout(
                remaining,
                open(&worker, request, delivery).instrument(span.clone()),
            )
            .await;
            let failure = match opened {
                Err(_) => {
                    guard.timed_out();
                    return Err(GatewayError::Deadline(self.budget));
                }
                Ok(Ok(Opened::Whole(response))) => {
                    guard.served(response.usage.as_ref(), response.finish_reason);
                    return Ok(Answer::Whole {
                        response,
                        route: routed.explanation,
                        worker,
                    });
                }
                Ok(Ok(Opened::Stream(opened))) => {
                    let (upstream, first) = *opened;
                    return Ok(Answer::Stream(OpenStream {
                        guard,
                        upstream,
                        first,
                        route: routed.explanation,
                    }));
                }
                // tonic's channel enforces the deadline we sent with the call
                // too, and may fire a moment before our own timer, failing the
                // call as CANCELLED ("Timeout expired"): that is our deadline,
                // not a broken connection.
                Ok(Err(_)) if Instant::now() >= self.deadline => {
                    guard.timed_out();
                    return Err(GatewayError::Deadline(self.budget));
                }
                Ok(Err(status)) => super::call::connection_lost(status),
            };
            // Whether the request moves on decides how the failed call is
            // counted: an attempt only, or the call that ends the request.
            let next = self.fail_over_or_end(&worker, failure.clone(), attempts);
            guard.failed_over(next.is_ok()).failed(failure);
            next?;
        }
    }

    /// How many worker calls the request has made so far (failed ones and
    /// a cascade's steps included).
    pub(crate) fn calls(&self) -> usize {
        self.calls
    }

    /// After a failed call (before any token reached the client): `Ok` when
    /// the request may move to another worker, else the error it ends with.
    fn fail_over_or_end(
        &mut self,
        worker: &WorkerHandle,
        status: tonic::Status,
        attempts: usize,
    ) -> Result<(), GatewayError> {
        // The worker said no model ran, or it could not be reached at all.
        let no_model_ran = routemesh_worker::error::is_retryable(&status)
            || status.code() == tonic::Code::Unavailable;
        let state = &self.state;
        // The engine refused the conversation as longer than its context
        // (OUT_OF_RANGE from a worker): every worker of that model would
        // refuse it too, but a model with a longer context may serve it.
        // Not drawn from the retry budget: the refusal is the request's
        // doing, cheap, and says nothing about the pool's health.
        if status.code() == tonic::Code::OutOfRange && attempts < state.config.max_attempts as usize
        {
            tracing::info!(worker = %worker.record.id, %status, "context too short; trying a longer one");
            crate::metrics::failover(&worker.record.model);
            let model = &worker.record.model;
            self.failed_workers.extend(
                self.snapshot
                    .iter()
                    .filter(|w| &w.record.model == model)
                    .map(|w| w.record.id.clone()),
            );
            self.last_failure = Some(GatewayError::Worker {
                worker_id: worker.record.id.clone(),
                status,
            });
            return Ok(());
        }
        // A worker that could not be reached (UNAVAILABLE: refused, reset,
        // lost) is marked unhealthy at once, so its failovers are bounded by
        // what was in flight to it: they draw on their own, larger budget.
        let budget = if status.code() == tonic::Code::Unavailable {
            &state.unreachable_budget
        } else {
            &state.retry_budget
        };
        if no_model_ran && attempts < state.config.max_attempts as usize && budget.try_withdraw() {
            tracing::info!(worker = %worker.record.id, %status, "failing over");
            crate::metrics::failover(&worker.record.model);
            self.failed_workers.push(worker.record.id.clone());
            self.last_failure = Some(GatewayError::Worker {
                worker_id: worker.record.id.clone(),
                status,
            });
            return Ok(());
        }
        if status.code() == tonic::Code::DeadlineExceeded {
            return Err(GatewayError::Deadline(self.budget));
        }
        Err(GatewayError::Worker {
            worker_id: worker.record.id.clone(),
            status,
        })
    }

    /// The next worker for this step, avoiding those that failed. Running
    /// out of workers after a failover reports that failure, not "no worker".
    /// The call is counted in flight, with the worker's breaker permit.
    fn next_worker(&mut self, step: &Step) -> Result<(Routed, InFlight), GatewayError> {
        // A worker whose last half-open probe slot went to another request
        // since routing looked is skipped for this choice only.
        let mut skip = self.failed_workers.clone();
        let candidates: Vec<&Arc<WorkerHandle>> =
            self.snapshot.iter().filter(|w| step.admits(w)).collect();
        let live = self.state.recorder.snapshot();
        let mut req = self.req.routing();
        if let Some(hints) = &step.hints {
            req.hints = hints;
        }
        let cx = RouteContext {
            req,
            predicted: self.predicted.as_ref(),
            live: &live,
            cost_weight: self.state.cost_targets.cost_weight(&self.req.tenant),
            owner: &self.req.owner,
            session: self
                .session
                .as_ref()
                .map(|(s, sticky)| (s, sticky.as_ref())),
        };
        loop {
            let routed = self
                .state
                .routing
                .route(&cx, &candidates, &skip)
                .map_err(|e| self.last_failure.take().unwrap_or(e))?;
            match routed.worker.try_begin() {
                Some(in_flight) => return Ok((routed, in_flight)),
                None => skip.push(routed.worker.record.id.clone()),
            }
        }
    }

    fn worker_request(
        &self,
        step: &Step,
        worker: &WorkerHandle,
        remaining: Duration,
        span: &tracing::Span,
    ) -> tonic::Request<WorkerGenerateRequest> {
        let req = &self.req;
        let mut request = tonic::Request::new(WorkerGenerateRequest {
            request_id: req.request_id.clone(),
            model: worker.record.model.clone(),
            messages: step.messages.as_ref().unwrap_or(&req.messages).clone(),
            params: Some(step.params.as_ref().unwrap_or(&req.params).clone()),
            tenant: req.tenant.clone(),
            want_logprobs: step.want_logprobs,
            user: req.user.clone(),
        });
        // The client's deadline and trace travel to the worker.
        request.set_timeout(remaining);
        routemesh_mesh::trace_context::inject(span, request.metadata_mut());
        request
    }
}

/// A worker call that answered: all of it, or a stream's first event.
// Made and moved once per call: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Whole(WorkerGenerateResponse),
    Stream(Box<(Streaming<WorkerStreamEvent>, WorkerStreamEvent)>),
}

async fn open(
    worker: &WorkerHandle,
    request: tonic::Request<WorkerGenerateRequest>,
    delivery: Delivery,
) -> Result<Opened, tonic::Status> {
    let mut client = worker.client();
    match delivery {
        Delivery::Whole => Ok(Opened::Whole(client.generate(request).await?.into_inner())),
        Delivery::Stream => {
            let mut upstream = client.generate_stream(request).await?.into_inner();
            match upstream.message().await? {
                Some(first) => Ok(Opened::Stream(Box::new((upstream, first)))),
                // Not a connection loss (the stream ended cleanly) and no
                // sign of whether a model ran: the worker's fault, no retry.
                None => Err(tonic::Status::internal(
                    "worker closed the stream without an event",
                )),
            }
        }
    }
}
