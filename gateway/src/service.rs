//! The public Gateway gRPC service: validate, route, call a worker (failing
//! over where no model ran), and explain the decision.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use routemesh_mesh::driven::driven_stream;
use routemesh_proto::v1::{
    FeedbackRequest, FeedbackResponse, GenerateRequest, GenerateResponse, GenerateStreamEvent,
    ListModelsRequest, ListModelsResponse, ModelInfo, RouteCandidate, RouteDecision, StreamEnd,
    Usage, WorkerGenerateRequest, WorkerInfo, gateway_server::Gateway, generate_stream_event,
    worker_stream_event,
};
use routemesh_router::{Decision, NoCandidate, Policy, Prediction, RouteInput};
use routemesh_telemetry::{FeedbackEvent, LiveSnapshot, Outcome, Recorder, RequestRecord};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::auth::Tenant;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::limits::{Limits, Refusal};
use crate::pool::{InFlight, Pool, Snapshot, WorkerHandle};
use crate::quality::{Predicted, QualityModel};
use crate::recent::{Recent, Served};
use crate::retry::RetryBudget;
use crate::tenants::CostTargets;
use crate::validate::{ValidRequest, tier_to_wire, validate};

pub struct GatewayState {
    pub pool: Arc<Pool>,
    pub policy: Box<dyn Policy>,
    pub config: GatewayConfig,
    pub recent: Recent,
    pub recorder: Recorder,
    pub cost_targets: CostTargets,
    /// Requests generating now, bounded by `max_concurrent_requests`; a
    /// stream holds its permit until it ends.
    pub admission: Arc<tokio::sync::Semaphore>,
    /// The learned router (or priors).
    pub quality: QualityModel,
    pub retry_budget: RetryBudget,
    /// Tenant rate limits and budgets.
    pub limits: Limits,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("policy", &self.policy.name())
            .finish()
    }
}

/// A generation request past admission, validation and the tenant's limits.
struct Admitted {
    /// The request's slot under `max_concurrent_requests`; held while it runs.
    permit: tokio::sync::OwnedSemaphorePermit,
    budget: Duration,
    deadline: Instant,
    snapshot: Snapshot,
    req: ValidRequest,
    predicted: Option<Predicted>,
}

/// The workers a request has tried, and why the last one failed.
#[derive(Debug, Default)]
struct Attempts {
    excluded: Vec<String>,
    last_failure: Option<GatewayError>,
}

/// A decision with the worker it chose.
struct Routed {
    worker: Arc<WorkerHandle>,
    explanation: RouteDecision,
}

/// The client's deadline from its `grpc-timeout` header, if it sent one.
fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn explain(
    request_id: &str,
    decision: &Decision,
    live: &LiveSnapshot,
    elapsed: Duration,
) -> RouteDecision {
    let chosen = decision.chosen_candidate();
    let telemetry = &live.snapshot;
    RouteDecision {
        request_id: request_id.to_string(),
        model: chosen.map(|c| c.model.clone()).unwrap_or_default(),
        worker_id: chosen.map(|c| c.worker_id.clone()).unwrap_or_default(),
        policy: decision.policy.to_string(),
        reason: decision.reason.clone(),
        candidates: decision
            .candidates
            .iter()
            .map(|c| {
                let observed = telemetry.workers.get(&c.worker_id);
                RouteCandidate {
                    model: c.model.clone(),
                    worker_id: c.worker_id.clone(),
                    tier: tier_to_wire(c.tier) as i32,
                    predicted_quality: c.predicted_quality,
                    quality_source: c.quality_source.to_string(),
                    expected_cost_usd: c.expected_cost_usd,
                    expected_latency_ms: c.expected_latency_ms.unwrap_or(0.0),
                    load: c.load,
                    score: if c.score.is_finite() { c.score } else { 0.0 },
                    eligible: c.eligible(),
                    excluded_because: c.excluded_because.clone(),
                    latency_source: c.latency_source.to_string(),
                    observed_error_rate: observed.map_or(0.0, |o| o.error_rate),
                    observed_requests: observed.map_or(0.0, |o| o.requests),
                    observed_ttft_ms_p50: observed.and_then(|o| o.ttft_ms_p50).unwrap_or(0.0),
                    feedback_count: telemetry.feedback.get(&c.model).map_or(0.0, |f| f.count),
                }
            })
            .collect(),
        decision_time_us: elapsed.as_secs_f64() * 1e6,
        telemetry_source: live.source.to_string(),
        prompt_region: String::new(),
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::WorkerError => "worker_error",
        Outcome::Timeout => "timeout",
        Outcome::Overloaded => "overloaded",
    }
}

/// The term that decided a routing decision, for the decisions metric.
fn deciding_term(req: &ValidRequest, decision: &Decision) -> &'static str {
    let Some(chosen) = decision.chosen_candidate() else {
        return "none";
    };
    let eligible: Vec<_> = decision
        .candidates
        .iter()
        .filter(|c| c.eligible())
        .collect();
    if req.pinned_model.is_some() {
        "pinned"
    } else if eligible.iter().all(|c| c.model == chosen.model) {
        "only-eligible-model"
    } else if eligible
        .iter()
        .all(|c| c.predicted_quality <= chosen.predicted_quality)
    {
        "quality"
    } else if eligible
        .iter()
        .all(|c| c.expected_cost_usd >= chosen.expected_cost_usd)
    {
        "cost"
    } else {
        "latency-or-load"
    }
}

/// How a failed call is counted in telemetry.
fn outcome_of(status: &Status) -> Outcome {
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => Outcome::Timeout,
        Code::ResourceExhausted => Outcome::Overloaded,
        _ => Outcome::WorkerError,
    }
}

impl GatewayState {
    fn known_models(snapshot: &Snapshot) -> Vec<&str> {
        let mut models: Vec<&str> = snapshot.iter().map(|w| w.record.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        models
    }

    /// Validates the request and settles its tenant: the API key's when keys
    /// are on (the request's own `tenant` must then be empty or the same).
    fn accept(
        &self,
        request: Request<GenerateRequest>,
        snapshot: &Snapshot,
    ) -> Result<ValidRequest, GatewayError> {
        let authenticated = request.extensions().get::<Tenant>().cloned();
        let mut request = request.into_inner();
        if let Some(Tenant(tenant)) = &authenticated {
            if !request.tenant.is_empty() && request.tenant != *tenant {
                return Err(GatewayError::invalid(
                    "tenant",
                    format!(
                        "the API key belongs to tenant {tenant:?}; leave tenant empty or use that"
                    ),
                ));
            }
            request.tenant = tenant.clone();
        }
        validate(request, &self.config, &Self::known_models(snapshot))
    }

    /// Routes `req` among the workers of `snapshot` not in `excluded`.
    fn route(
        &self,
        req: &ValidRequest,
        snapshot: &Snapshot,
        excluded: &[String],
        routed: Option<&Predicted>,
    ) -> Result<Routed, GatewayError> {
        let start = Instant::now();
        let workers: Vec<&Arc<WorkerHandle>> = snapshot
            .iter()
            .filter(|w| !excluded.contains(&w.record.id))
            .collect();
        let live = self.recorder.snapshot();
        let min_requests = f64::from(self.config.telemetry.min_requests);
        let views: Vec<_> = workers
            .iter()
            .map(|w| w.view(live.snapshot.workers.get(&w.record.id), min_requests))
            .collect();
        let predictions = self.predictions(&workers, &live, routed);
        let input = RouteInput {
            prompt_tokens: req.prompt_tokens_estimate(),
            max_tokens: req.max_tokens(),
            hints: &req.hints,
            pinned_model: req.pinned_model.as_deref(),
            predicted_quality: Some(&predictions),
            cost_weight: self.cost_targets.cost_weight(&req.tenant),
        };
        let span = tracing::info_span!(
            "routemesh.route",
            routemesh.policy = tracing::field::Empty,
            routemesh.model = tracing::field::Empty,
            routemesh.worker = tracing::field::Empty,
            routemesh.reason = tracing::field::Empty,
            routemesh.candidates = views.len(),
            routemesh.telemetry = live.source,
        );
        let _route = span.enter();
        let decision = match req.threshold {
            Some(threshold) => routemesh_router::decide_threshold(threshold, &input, &views),
            None => self.policy.decide(&input, &views),
        };
        let took = start.elapsed();
        span.record("routemesh.policy", decision.policy);
        span.record("routemesh.reason", decision.reason.as_str());
        if let Some(chosen) = decision.chosen_candidate() {
            span.record("routemesh.model", chosen.model.as_str());
            span.record("routemesh.worker", chosen.worker_id.as_str());
            crate::metrics::decision(
                &chosen.model,
                decision.policy,
                deciding_term(req, &decision),
                took,
            );
        }
        let mut explanation = explain(&req.request_id, &decision, &live, took);
        explanation.prompt_region = routed.map(|p| p.region.clone()).unwrap_or_default();
        // The policy sees an open breaker as "unhealthy"; say which it was.
        for c in &mut explanation.candidates {
            if !c.eligible
                && let Some(w) = workers.iter().find(|w| w.record.id == c.worker_id)
                && w.healthy()
                && w.breaker.state() != crate::breaker::State::Closed
                && !w.breaker.allows(Instant::now())
            {
                c.excluded_because = format!(
                    "circuit breaker {} (recent calls failed)",
                    w.breaker.state().as_str().replace('_', "-")
                );
            }
        }
        match decision.chosen {
            Ok(i) => Ok(Routed {
                worker: workers[i].clone(),
                explanation,
            }),
            Err(NoCandidate::HintsUnsatisfiable) => {
                Err(GatewayError::Unsatisfiable(decision.reason))
            }
            Err(NoCandidate::Saturated) => Err(GatewayError::Saturated(decision.reason)),
            Err(NoCandidate::EmptyPool) => {
                Err(GatewayError::NoWorker("no worker is registered".into()))
            }
            Err(NoCandidate::Unavailable) => {
                let tried = if excluded.is_empty() {
                    String::new()
                } else {
                    format!(" (already failed: {})", excluded.join(", "))
                };
                Err(GatewayError::NoWorker(format!(
                    "{}{tried}",
                    decision.reason
                )))
            }
        }
    }

    fn worker_request(
        &self,
        req: &ValidRequest,
        worker: &WorkerHandle,
        remaining: Duration,
        span: &tracing::Span,
    ) -> Request<WorkerGenerateRequest> {
        let mut request = Request::new(WorkerGenerateRequest {
            request_id: req.request_id.clone(),
            model: worker.record.model.clone(),
            messages: req.messages.clone(),
            params: Some(req.params.clone()),
            tenant: req.tenant.clone(),
        });
        // The client's deadline and trace travel to the worker.
        request.set_timeout(remaining);
        routemesh_mesh::trace_context::inject(span, request.metadata_mut());
        request
    }

    /// The next worker for `req`, avoiding those already tried. Running out
    /// of workers after a failover reports that failure, not "no worker".
    /// The call is counted in flight, with the worker's breaker permit.
    fn next_worker(
        &self,
        req: &ValidRequest,
        snapshot: &Snapshot,
        predicted: Option<&Predicted>,
        attempts: &mut Attempts,
    ) -> Result<(Routed, InFlight), GatewayError> {
        // A worker whose last half-open probe slot went to another request
        // since routing looked is skipped for this choice only.
        let mut skip = attempts.excluded.clone();
        loop {
            let routed = self
                .route(req, snapshot, &skip, predicted)
                .map_err(|e| attempts.last_failure.take().unwrap_or(e))?;
            match routed.worker.try_begin() {
                Some(in_flight) => return Ok((routed, in_flight)),
                None => skip.push(routed.worker.record.id.clone()),
            }
        }
    }

    /// After a failed call (before any token reached the client): `Ok` when
    /// the request may move to another worker, else the error it ends with.
    fn after_failure(
        &self,
        req: &ValidRequest,
        worker: &WorkerHandle,
        status: Status,
        started: Instant,
        budget: Duration,
        attempts: &mut Attempts,
    ) -> Result<(), GatewayError> {
        let status = connection_lost(status);
        self.record(req, worker, outcome_of(&status), None, started);
        worker.report(worker_fault(&status, self.full_budget(budget)));
        let retry = Self::should_fail_over(worker, &status);
        let tries = attempts.excluded.len() as u32 + 1;
        if retry && tries < self.config.max_attempts && self.retry_budget.try_withdraw() {
            tracing::info!(worker = %worker.record.id, %status, "failing over");
            crate::metrics::failover(&worker.record.model);
            attempts.excluded.push(worker.record.id.clone());
            attempts.last_failure = Some(GatewayError::Worker {
                worker_id: worker.record.id.clone(),
                status,
            });
            return Ok(());
        }
        if status.code() == Code::DeadlineExceeded {
            return Err(GatewayError::Deadline(budget));
        }
        Err(GatewayError::Worker {
            worker_id: worker.record.id.clone(),
            status,
        })
    }

    /// Whether another worker may be tried after `status`: the worker said no
    /// model ran, or it could not be reached at all. `status` is normalised by
    /// [`connection_lost`] first.
    fn should_fail_over(worker: &WorkerHandle, status: &Status) -> bool {
        let hinted = routemesh_worker::error::is_retryable(status);
        if status.code() == Code::Unavailable {
            // Unreachable or draining: no traffic until a load check says otherwise.
            worker.mark_unhealthy();
        }
        hinted || status.code() == Code::Unavailable
    }

    /// Predicted quality per model: the learned router's where it knows the
    /// model (within one of its comparable pools), else the tier prior; then
    /// moved towards the feedback received for the model (a Beta-style
    /// posterior mean with the prediction worth `feedback_prior_weight` scores).
    fn predictions(
        &self,
        workers: &[&Arc<WorkerHandle>],
        live: &LiveSnapshot,
        routed: Option<&Predicted>,
    ) -> HashMap<String, Prediction> {
        let weight = self.config.telemetry.feedback_prior_weight;
        let models: Vec<&str> = workers.iter().map(|w| w.spec.name.as_str()).collect();
        let comparable = if routed.is_some() {
            self.quality.comparable(&models)
        } else {
            Default::default()
        };
        let mut out = HashMap::new();
        for w in workers {
            if out.contains_key(&w.spec.name) {
                continue;
            }
            let learned = routed
                .filter(|_| comparable.contains(&w.spec.name))
                .and_then(|p| p.scores.get(&w.spec.name))
                .copied();
            let (base, base_source) = match learned {
                Some(q) => (q, "router"),
                None => (w.spec.prior_quality(), "prior"),
            };
            // With a router, feedback counts where it was given: on prompts of
            // the same region. Without one, for the model as a whole.
            let feedback = live
                .snapshot
                .feedback
                .get(&w.spec.name)
                .and_then(|f| match routed {
                    Some(p) => f.by_region.get(&p.region).copied(),
                    None => Some((f.sum, f.count)),
                });
            let prediction = match feedback.filter(|(_, n)| *n > 0.0) {
                Some((sum, count)) => Prediction {
                    quality: (base * weight + sum) / (weight + count),
                    source: if base_source == "router" {
                        "router+feedback"
                    } else {
                        "prior+feedback"
                    },
                },
                None => Prediction {
                    quality: base,
                    source: base_source,
                },
            };
            out.insert(w.spec.name.clone(), prediction);
        }
        out
    }

    /// The learned router's view of this request: predictions for routing
    /// and, even for a pinned model, the prompt's region for feedback.
    async fn predict(&self, req: &ValidRequest, snapshot: &Snapshot) -> Option<Predicted> {
        let models: Vec<&str> = snapshot.iter().map(|w| w.spec.name.as_str()).collect();
        self.quality.predict(req.routing_prompt(), &models).await
    }

    /// Records one call at one worker, off the request path.
    fn record(
        &self,
        req: &ValidRequest,
        worker: &WorkerHandle,
        outcome: Outcome,
        usage: Option<&Usage>,
        started: Instant,
    ) {
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let usage = usage.cloned().unwrap_or_default();
        if outcome == Outcome::Ok {
            self.cost_targets.observe(&req.tenant, usage.cost_usd);
        }
        let record = RequestRecord {
            at_ms: routemesh_telemetry::record::now_ms(),
            tenant: req.tenant.clone(),
            model: worker.record.model.clone(),
            worker_id: worker.record.id.clone(),
            outcome,
            // Measured at the gateway: what the client sees, queueing included.
            ttft_ms: if outcome == Outcome::Ok {
                usage.time_to_first_token_ms.max(0.0) + (elapsed_ms - usage.total_time_ms).max(0.0)
            } else {
                0.0
            },
            total_ms: elapsed_ms,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_usd: usage.cost_usd,
        };
        let counterfactual = crate::admin::strongest(self).map_or(0.0, |c| {
            c.prices()
                .cost_usd(usage.prompt_tokens, usage.completion_tokens)
        });
        crate::metrics::worker_call(
            &req.tenant,
            &worker.record.model,
            worker.record.tier.as_str(),
            &worker.record.id,
            outcome_label(outcome),
            Some(record.ttft_ms / 1000.0),
            Some((usage.prompt_tokens, usage.completion_tokens)),
            usage.cost_usd,
            counterfactual,
            record.time_per_output_token_ms().map(|ms| ms / 1000.0),
        );
        self.recorder.record(record);
    }

    fn remember(&self, req: &ValidRequest, worker: &WorkerHandle, routed: Option<&Predicted>) {
        self.recent.remember(
            &req.request_id,
            Served {
                model: worker.record.model.clone(),
                worker_id: worker.record.id.clone(),
                tenant: req.tenant.clone(),
                region: routed.map(|p| p.region.clone()).unwrap_or_default(),
            },
        );
    }

    /// Everything a generation does before choosing a worker, in order:
    /// admission, retry budget, deadline, validation, limits, prediction.
    async fn admit_request(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Admitted, GatewayError> {
        let permit = self.admit()?;
        self.retry_budget.deposit();
        let budget = self.budget(&request);
        let deadline = Instant::now() + budget;
        let snapshot = self.pool.snapshot();
        let req = self.accept(request, &snapshot)?;
        self.check_limits(&req).await?;
        let predicted = self.predict(&req, &snapshot).await;
        Ok(Admitted {
            permit,
            budget,
            deadline,
            snapshot,
            req,
            predicted,
        })
    }

    /// The tenant's rate limits and budgets, checked before any work.
    async fn check_limits(&self, req: &ValidRequest) -> Result<(), GatewayError> {
        match self
            .limits
            .admit(&req.tenant, routemesh_telemetry::record::now_ms())
            .await
        {
            Ok(()) => Ok(()),
            Err(Refusal::Over { limit, value }) => Err(GatewayError::OverLimit {
                tenant: req.tenant.clone(),
                limit,
                value,
            }),
            Err(Refusal::StoreDown(e)) => Err(GatewayError::LimitsUnavailable(e)),
        }
    }

    /// Charges what a request consumed to its tenant's limits.
    async fn charge(&self, req: &ValidRequest, usage: Option<&Usage>) {
        if let Some(u) = usage {
            let tokens = u64::from(u.prompt_tokens) + u64::from(u.completion_tokens);
            self.limits
                .charge(
                    &req.tenant,
                    tokens,
                    u.cost_usd,
                    routemesh_telemetry::record::now_ms(),
                )
                .await;
        }
    }

    /// Admits a generation or refuses it at once: queueing here would only
    /// add latency in front of workers that are already full.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            crate::metrics::shed();
            GatewayError::Overloaded(self.config.max_concurrent_requests)
        })
    }

    /// Whether a request's time budget was the gateway's whole
    /// `request_timeout` (no shorter client deadline).
    fn full_budget(&self, budget: Duration) -> bool {
        budget >= self.config.request_timeout
    }

    fn budget<T>(&self, request: &Request<T>) -> Duration {
        client_deadline(request).map_or(self.config.request_timeout, |d| {
            d.min(self.config.request_timeout)
        })
    }
}

/// What a failed call says about the worker, for its circuit breaker:
/// `Some(true)` it is failing; `None` the client's fault (bad input) or mere
/// load (full), which say nothing about its health. A deadline counts only
/// when it was the gateway's own (`full_budget`): a client's shorter one says
/// nothing about the worker, and counting it would let one client with tiny
/// deadlines open every breaker.
fn worker_fault(status: &Status, full_budget: bool) -> Option<bool> {
    match status.code() {
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::DataLoss
        | Code::Unimplemented => Some(true),
        Code::DeadlineExceeded => full_budget.then_some(true),
        _ => None,
    }
}

/// Our workers never answer UNKNOWN or CANCELLED themselves: from a worker
/// call those codes mean the connection broke (the worker died or the network
/// failed), which for the client is UNAVAILABLE. (A deadline that passed is
/// caught by the gateway's own timer before the call's result is read.)
fn connection_lost(status: Status) -> Status {
    if matches!(status.code(), Code::Unknown | Code::Cancelled) {
        Status::unavailable(format!(
            "connection to the worker lost ({})",
            status.message()
        ))
    } else {
        status
    }
}

/// Which API a request came in on; the HTTP facade marks its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpApi;

/// The server span of a client request, continuing the client's trace.
fn request_span(request: &Request<GenerateRequest>, method: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "routemesh.generate",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        routemesh.api = api_of(request),
        routemesh.request_id = %request.get_ref().request_id,
        gen_ai.request.model = %request.get_ref().model,
    );
    routemesh_mesh::trace_context::continue_trace(&span, request.metadata());
    span
}

/// The client span of one call to one worker (one per attempt).
fn worker_call_span(worker: &WorkerHandle, attempt: usize) -> tracing::Span {
    tracing::info_span!(
        "routemesh.worker_call",
        otel.kind = "client",
        routemesh.worker = %worker.record.id,
        gen_ai.request.model = %worker.record.model,
        routemesh.attempt = attempt,
    )
}

fn api_of<T>(request: &Request<T>) -> &'static str {
    if request.extensions().get::<HttpApi>().is_some() {
        "http"
    } else {
        "grpc"
    }
}

fn code_of<T>(result: &Result<T, Status>) -> Code {
    result.as_ref().map_or_else(Status::code, |_| Code::Ok)
}

#[derive(Debug, Clone)]
pub struct GatewayService {
    state: Arc<GatewayState>,
}

impl GatewayService {
    pub fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }

    pub fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }
}

fn with_request_id<T>(message: T, request_id: &str) -> Response<T> {
    let mut response = Response::new(message);
    if let Ok(value) = request_id.parse() {
        response.metadata_mut().insert("x-request-id", value);
    }
    response
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<GenerateStreamEvent, Status>> + Send>>;

impl GatewayService {
    async fn generate_inner(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let state = &self.state;
        let Admitted {
            permit: _permit,
            budget,
            deadline,
            snapshot,
            req,
            predicted,
        } = state.admit_request(request).await?;
        let mut attempts = Attempts::default();
        loop {
            let (
                Routed {
                    worker,
                    explanation,
                },
                _in_flight,
            ) = state.next_worker(&req, &snapshot, predicted.as_ref(), &mut attempts)?;
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            let mut client = worker.client.clone();
            let call_span = worker_call_span(&worker, attempts.excluded.len() + 1);
            let call = client.generate(state.worker_request(&req, &worker, remaining, &call_span));
            let result = match tokio::time::timeout(remaining, call.instrument(call_span)).await {
                Ok(result) => result,
                Err(_) => {
                    state.record(&req, &worker, Outcome::Timeout, None, started);
                    worker.report(state.full_budget(budget).then_some(true));
                    return Err(GatewayError::Deadline(budget).into());
                }
            };
            match result {
                Ok(response) => {
                    let done = response.into_inner();
                    state.record(&req, &worker, Outcome::Ok, done.usage.as_ref(), started);
                    worker.report(Some(false));
                    state.charge(&req, done.usage.as_ref()).await;
                    state.remember(&req, &worker, predicted.as_ref());
                    let message = GenerateResponse {
                        request_id: req.request_id.clone(),
                        text: done.text,
                        finish_reason: done.finish_reason,
                        usage: done.usage,
                        route: Some(explanation),
                    };
                    return Ok(with_request_id(message, &req.request_id));
                }
                Err(status) => {
                    state.after_failure(&req, &worker, status, started, budget, &mut attempts)?;
                }
            }
        }
    }

    async fn generate_stream_inner(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let state = self.state.clone();
        let Admitted {
            permit: admitted,
            budget,
            deadline,
            snapshot,
            req,
            predicted,
        } = state.admit_request(request).await?;

        // Open a stream and wait for its first event; until then a failure
        // where no model ran moves the request to another worker.
        let mut attempts = Attempts::default();
        let (worker, explanation, in_flight, mut upstream, first, started, call_span) = loop {
            let (
                Routed {
                    worker,
                    explanation,
                },
                in_flight,
            ) = state.next_worker(&req, &snapshot, predicted.as_ref(), &mut attempts)?;
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            let call_span = worker_call_span(&worker, attempts.excluded.len() + 1);
            let opened = tokio::time::timeout(
                remaining,
                async {
                    let mut upstream = worker
                        .client
                        .clone()
                        .generate_stream(state.worker_request(&req, &worker, remaining, &call_span))
                        .await?
                        .into_inner();
                    let first = upstream.message().await?;
                    Ok::<_, Status>((upstream, first))
                }
                .instrument(call_span.clone()),
            )
            .await
            .map_err(|_| {
                state.record(&req, &worker, Outcome::Timeout, None, started);
                worker.report(state.full_budget(budget).then_some(true));
                Status::from(GatewayError::Deadline(budget))
            })?;
            match opened {
                Ok((upstream, Some(first))) => {
                    break (
                        worker,
                        explanation,
                        in_flight,
                        upstream,
                        first,
                        started,
                        call_span,
                    );
                }
                Ok((_, None)) => {
                    worker.report(Some(true));
                    let status = Status::internal("worker closed the stream without an event");
                    return Err(GatewayError::Worker {
                        worker_id: worker.record.id.clone(),
                        status,
                    }
                    .into());
                }
                Err(status) => {
                    state.after_failure(&req, &worker, status, started, budget, &mut attempts)?;
                }
            }
        };

        let request_id = req.request_id.clone();
        // The request span and the worker call's span last as long as the stream.
        let request_span = tracing::Span::current();
        let stream = driven_stream(move |tx| {
            async move {
            let _in_flight = in_flight;
            let _admitted = admitted;
            let event = |event| {
                Ok(GenerateStreamEvent {
                    request_id: req.request_id.clone(),
                    event: Some(event),
                })
            };
            if tx
                .send(event(generate_stream_event::Event::Route(explanation)))
                .await
                .is_err()
            {
                return;
            }
            let mut next = Some(first);
            let mut tokens_sent = 0u32;
            loop {
                let item = match next.take() {
                    Some(item) => item,
                    None => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(remaining, upstream.message()).await {
                            Err(_) => {
                                state.record(&req, &worker, Outcome::Timeout, None, started);
                                worker.report(state.full_budget(budget).then_some(true));
                                let _ = tx.send(Err(GatewayError::Deadline(budget).into())).await;
                                return;
                            }
                            Ok(Ok(Some(item))) => item,
                            Ok(Ok(None)) => {
                                let status = Status::unavailable(format!(
                                    "stream ended without an end event after {tokens_sent} deltas"
                                ));
                                let _ = tx
                                    .send(Err(GatewayError::Worker {
                                        worker_id: worker.record.id.clone(),
                                        status,
                                    }
                                    .into()))
                                    .await;
                                return;
                            }
                            Ok(Err(status)) => {
                                let status = connection_lost(status);
                                if status.code() == Code::Unavailable {
                                    worker.mark_unhealthy();
                                }
                                state.record(&req, &worker, outcome_of(&status), None, started);
                                worker.report(worker_fault(&status, state.full_budget(budget)));
                                let status = Status::new(
                                    status.code(),
                                    format!(
                                        "mid-stream after {tokens_sent} deltas: {}",
                                        status.message()
                                    ),
                                );
                                let _ = tx
                                    .send(Err(GatewayError::Worker {
                                        worker_id: worker.record.id.clone(),
                                        status,
                                    }
                                    .into()))
                                    .await;
                                return;
                            }
                        }
                    }
                };
                match item.event {
                    Some(worker_stream_event::Event::Delta(delta)) => {
                        tokens_sent += 1;
                        if tx
                            .send(event(generate_stream_event::Event::Delta(delta)))
                            .await
                            .is_err()
                        {
                            // Client gone: dropping `upstream` cancels the worker.
                            // What was generated still counts against the tenant.
                            let partial = Usage {
                                prompt_tokens: req.prompt_tokens_estimate(),
                                completion_tokens: tokens_sent,
                                cost_usd: worker.spec.expected_cost_usd(req.prompt_tokens_estimate(), tokens_sent),
                                ..Usage::default()
                            };
                            state.charge(&req, Some(&partial)).await;
                            return;
                        }
                    }
                    Some(worker_stream_event::Event::End(end)) => {
                        state.record(&req, &worker, Outcome::Ok, end.usage.as_ref(), started);
                        worker.report(Some(false));
                        state.charge(&req, end.usage.as_ref()).await;
                        state.remember(&req, &worker, predicted.as_ref());
                        let end = StreamEnd {
                            finish_reason: end.finish_reason,
                            usage: end.usage,
                        };
                        let _ = tx.send(event(generate_stream_event::Event::End(end))).await;
                        return;
                    }
                    None => {}
                }
            }
            }
            .instrument(call_span)
            .instrument(request_span)
        });
        Ok(with_request_id(stream, &request_id))
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let (api, start) = (api_of(&request), Instant::now());
        let span = request_span(&request, "Generate");
        let result = self.generate_inner(request).instrument(span).await;
        crate::metrics::request(api, "Generate", code_of(&result), start.elapsed());
        result
    }

    type GenerateStreamStream = EventStream;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let (api, start) = (api_of(&request), Instant::now());
        let span = request_span(&request, "GenerateStream");
        let result = self.generate_stream_inner(request).instrument(span).await;
        // Time to the first event: a stream's later failures are counted per
        // worker call.
        crate::metrics::request(api, "GenerateStream", code_of(&result), start.elapsed());
        result
    }

    async fn route(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<RouteDecision>, Status> {
        let state = &self.state;
        let snapshot = state.pool.snapshot();
        let req = state.accept(request, &snapshot)?;
        let predicted = state.predict(&req, &snapshot).await;
        let routed = state.route(&req, &snapshot, &[], predicted.as_ref())?;
        Ok(with_request_id(routed.explanation, &req.request_id))
    }

    async fn feedback(
        &self,
        request: Request<FeedbackRequest>,
    ) -> Result<Response<FeedbackResponse>, Status> {
        let FeedbackRequest {
            request_id,
            score,
            comment,
        } = request.into_inner();
        if request_id.is_empty() {
            return Err(GatewayError::invalid("request_id", "must not be empty").into());
        }
        if !(score.is_finite() && (0.0..=1.0).contains(&score)) {
            return Err(GatewayError::invalid("score", format!("{score} is not in [0, 1]")).into());
        }
        if comment.chars().count() > 1000 {
            return Err(GatewayError::invalid("comment", "longer than 1000 characters").into());
        }
        let served = self
            .state
            .recent
            .lookup(&request_id)
            .ok_or_else(|| GatewayError::UnknownRequest(request_id.clone()))?;
        let response = FeedbackResponse {
            model: served.model.clone(),
            worker_id: served.worker_id.clone(),
        };
        self.state.recorder.feedback(FeedbackEvent {
            at_ms: routemesh_telemetry::record::now_ms(),
            model: served.model.clone(),
            region: served.region.clone(),
            score,
        });

        Ok(Response::new(response))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let snapshot = self.state.pool.snapshot();
        let mut models: BTreeMap<&str, ModelInfo> = BTreeMap::new();
        for w in snapshot.iter() {
            let info = models
                .entry(w.record.model.as_str())
                .or_insert_with(|| ModelInfo {
                    name: w.record.model.clone(),
                    tier: tier_to_wire(w.record.tier) as i32,
                    input_usd_per_mtok: w.record.input_usd_per_mtok,
                    output_usd_per_mtok: w.record.output_usd_per_mtok,
                    workers: Vec::new(),
                    healthy_workers: 0,
                });
            info.healthy_workers += u32::from(w.healthy());
            info.workers.push(WorkerInfo {
                id: w.record.id.clone(),
                endpoint: w.record.endpoint.clone(),
                healthy: w.healthy(),
                load: w.last_load(),
                gateway_in_flight: w.in_flight(),
            });
        }
        Ok(Response::new(ListModelsResponse {
            models: models.into_values().collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workers_own_failures_count_against_its_breaker() {
        for code in [Code::Unavailable, Code::Internal, Code::Unknown] {
            assert_eq!(worker_fault(&Status::new(code, ""), false), Some(true));
        }
        // Load, the client's bad input, and a deadline the client shortened
        // say nothing about the worker.
        for code in [
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::Cancelled,
        ] {
            assert_eq!(worker_fault(&Status::new(code, ""), true), None);
        }
        let deadline = Status::deadline_exceeded("");
        assert_eq!(worker_fault(&deadline, false), None);
        assert_eq!(worker_fault(&deadline, true), Some(true));
    }
}
