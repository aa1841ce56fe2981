//! One routing decision: the pool's workers as the policy sees them, the
//! predicted quality of each model, the policy's choice and its explanation.

use std::collections::HashMap;
use std::sync::Arc;

use super::policy::{
    Decision, NoCandidate, Policy, Prediction, QualitySource, RouteInput, Threshold,
};
use routemesh_proto::v1::{RouteCandidate, RouteDecision};
use routemesh_telemetry::LiveSnapshot;
use tokio::time::Instant;

use super::Routing;
use super::policy::Hints;
use super::view::view_of;
use crate::error::GatewayError;
use crate::pool::WorkerHandle;
use crate::routing::quality::Predicted;

/// A decision with the worker it chose.
pub(crate) struct Routed {
    pub(crate) worker: Arc<WorkerHandle>,
    pub(crate) explanation: RouteDecision,
}

/// What one decision is made from, besides the pool.
/// What a decision needs to know of the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteRequest<'a> {
    pub(crate) request_id: &'a str,
    /// Estimated from the prompt's length.
    pub(crate) prompt_tokens: u32,
    pub(crate) max_tokens: u32,
    pub(crate) hints: &'a Hints,
    /// A model the client named; only its workers may serve.
    pub(crate) pinned_model: Option<&'a str>,
    /// RouteLLM-style threshold routing (model `router-<name>-<threshold>`).
    pub(crate) threshold: Option<f64>,
}

pub(crate) struct RouteContext<'a> {
    pub(crate) req: RouteRequest<'a>,
    /// The learned router's predictions for the prompt, if it ran.
    pub(crate) predicted: Option<&'a Predicted>,
    /// Live telemetry: observed speed, errors and feedback.
    pub(crate) live: &'a LiveSnapshot,
    /// The tenant's λ (quality per USD), if it has a cost target.
    pub(crate) cost_weight: Option<f64>,
}

impl Routing {
    /// Routes a request among `workers`, leaving out those in `skip`.
    pub(crate) fn route(
        &self,
        cx: &RouteContext<'_>,
        workers: &[&Arc<WorkerHandle>],
        skip: &[String],
    ) -> Result<Routed, GatewayError> {
        let RouteContext {
            req,
            predicted,
            live,
            cost_weight,
        } = *cx;
        let start = Instant::now();
        let workers: Vec<&Arc<WorkerHandle>> = workers
            .iter()
            .copied()
            .filter(|w| !skip.contains(&w.record.id))
            .collect();
        let views: Vec<_> = workers
            .iter()
            .map(|w| {
                view_of(
                    w,
                    live.snapshot.workers.get(&w.record.id),
                    self.min_requests,
                )
            })
            .collect();
        let predictions = self.predictions(&workers, live, predicted);
        let input = RouteInput {
            prompt_tokens: req.prompt_tokens,
            max_tokens: req.max_tokens,
            hints: req.hints,
            pinned_model: req.pinned_model,
            predicted_quality: Some(&predictions),
            cost_weight,
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
        let threshold = req.threshold.map(Threshold);
        let policy: &dyn Policy = match &threshold {
            Some(threshold) => threshold,
            None => self.policy.as_ref(),
        };
        let decision = policy.decide(&input, &views);
        let took = start.elapsed();
        span.record("routemesh.policy", decision.policy);
        span.record("routemesh.reason", decision.reason.as_str());
        if let Some(chosen) = decision.chosen_candidate() {
            span.record("routemesh.model", chosen.model.as_str());
            span.record("routemesh.worker", chosen.worker_id.as_str());
            crate::metrics::decision(
                &chosen.model,
                decision.policy,
                deciding_term(&req, &decision),
                took,
            );
        }
        let mut explanation = explain(req.request_id, &decision, live, took);
        explanation.prompt_region = predicted.map(|p| p.region.clone()).unwrap_or_default();
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
                let tried = if skip.is_empty() {
                    String::new()
                } else {
                    format!(" (already failed: {})", skip.join(", "))
                };
                Err(GatewayError::NoWorker(format!(
                    "{}{tried}",
                    decision.reason
                )))
            }
        }
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
        let weight = self.feedback_prior_weight;
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
                Some(q) => (q, QualitySource::Router),
                None => (w.spec.prior_quality(), QualitySource::Prior),
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
                    source: base_source.with_feedback(),
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
}

fn explain(
    request_id: &str,
    decision: &Decision,
    live: &LiveSnapshot,
    elapsed: std::time::Duration,
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
                    tier: c.tier.to_wire(),
                    predicted_quality: c.predicted_quality,
                    quality_source: c.quality_source.as_str().to_string(),
                    expected_cost_usd: c.expected_cost_usd,
                    expected_latency_ms: c.expected_latency_ms.unwrap_or(0.0),
                    load: c.load,
                    score: if c.score.is_finite() { c.score } else { 0.0 },
                    eligible: c.eligible(),
                    excluded_because: c
                        .excluded
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    latency_source: c.latency_source.as_str().to_string(),
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
        strategy: "single".to_string(),
        cascade: Vec::new(),
        escalated: false,
    }
}

/// The term that decided a routing decision, for the decisions metric.
fn deciding_term(req: &RouteRequest<'_>, decision: &Decision) -> &'static str {
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
