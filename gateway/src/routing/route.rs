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
use super::affinity::{AffinityOutcome, Session, Sticky};
use super::policy::CandidateScore;
use super::policy::Hints;
use super::view::view_of;
use crate::error::GatewayError;
use crate::pool::WorkerHandle;
use crate::routing::feedback::Scope;
use crate::routing::quality::{Knowledge, Predicted, StandIn};
use routemesh_mesh::ModelSpec;

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
    /// What the serving engine must be able to do.
    pub(crate) needs: &'a routemesh_mesh::Needs,
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
    /// The tenant the API key authenticated: whose feedback applies.
    pub(crate) owner: &'a Option<String>,
    /// The request's session and where its earlier turns were served.
    pub(crate) session: Option<(&'a Session, Option<&'a Sticky>)>,
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
            owner,
            session,
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
        let qualities = self.predictions(&workers, live, predicted, owner);
        let predictions: HashMap<String, Prediction> = qualities
            .iter()
            .map(|(m, q)| (m.clone(), q.prediction))
            .collect();
        let input = RouteInput {
            prompt_tokens: req.prompt_tokens,
            max_tokens: req.max_tokens,
            needs: req.needs,
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
        let mut decision = policy.decide(&input, &views);
        let affinity = session.map(|(_, sticky)| match sticky {
            Some(sticky) => follow_session(&mut decision, sticky),
            None => AffinityOutcome::Started,
        });
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
        let mut explanation = explain(req.request_id, &decision, live, &qualities, took);
        if let (Some((session, _)), Some(affinity)) = (session, affinity) {
            explanation.session = session.label.clone();
            explanation.affinity = affinity.as_str().to_string();
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

    /// The training pool predictions among `workers` are compared in.
    pub(crate) fn training_pool(&self, workers: &[&Arc<WorkerHandle>]) -> Option<usize> {
        self.quality.training_pool(&self.knowledge_of(workers))
    }

    fn knowledge_of(&self, workers: &[&Arc<WorkerHandle>]) -> Vec<Knowledge> {
        workers
            .iter()
            .map(|w| self.quality.knowledge(&w.spec))
            .collect()
    }

    /// `spec`'s predicted quality before feedback: the learned router's
    /// where it knows the model (within the training pool predictions are
    /// compared in), else the router's predictions for the known models
    /// nearest to it less a margin, else its fixed prior.
    pub(crate) fn base_quality(
        &self,
        spec: &ModelSpec,
        knowledge: &Knowledge,
        routed: Option<&Predicted>,
        pool: Option<usize>,
    ) -> (f64, QualitySource, Option<Arc<StandIn>>) {
        if let (Some(p), Some(pool)) = (routed, pool) {
            let learned = knowledge
                .router_model()
                .filter(|m| self.quality.in_training_pool(m, pool))
                .and_then(|m| p.scores.get(m));
            if let Some(&q) = learned {
                let source = match knowledge {
                    Knowledge::Onboarded(_) => QualitySource::Onboarded,
                    _ => QualitySource::Router,
                };
                return (q, source, None);
            }
            if let Some(stand_in) = self.quality.stand_in(spec, pool)
                && let Some(q) = stand_in.quality(&p.scores)
            {
                return (q, QualitySource::NearestKnown, Some(stand_in));
            }
        }
        (spec.prior_quality(), QualitySource::Prior, None)
    }

    /// Predicted quality per model: [`Routing::base_quality`], moved by the
    /// feedback near this prompt that `owner` may see (see
    /// `routing::feedback`). Without a router, feedback counts for the model
    /// as a whole, from the telemetry's per-scope totals.
    fn predictions(
        &self,
        workers: &[&Arc<WorkerHandle>],
        live: &LiveSnapshot,
        routed: Option<&Predicted>,
        owner: &Option<String>,
    ) -> HashMap<String, ModelQuality> {
        let weight = self.feedback_prior_weight;
        // Matched once per worker for the whole decision.
        let knowledge = self.knowledge_of(workers);
        let pool = routed.and_then(|_| self.quality.training_pool(&knowledge));
        let memory = self.feedback.memory();
        let oldest_ms =
            routemesh_telemetry::record::now_ms().saturating_sub(self.feedback_max_age_ms);
        // The telemetry's per-scope totals count only without a router.
        let scopes = match routed {
            None => [Scope::Global.label(), Scope::Tenant(owner.clone()).label()],
            Some(_) => Default::default(),
        };
        let mut out = HashMap::new();
        for (w, knowledge) in workers.iter().zip(knowledge) {
            if out.contains_key(&w.spec.name) {
                continue;
            }
            let (base, source, stand_in) = self.base_quality(&w.spec, &knowledge, routed, pool);
            // A model onboarded online was fitted on the feedback before its build.
            let since = match &knowledge {
                Knowledge::Onboarded(_) => self
                    .quality
                    .online_built_at(&w.spec.name)
                    .map_or(oldest_ms, |built| built.max(oldest_ms)),
                _ => oldest_ms,
            };
            let delta = match routed.and_then(|p| Some((p.point.as_ref()?, &p.space))) {
                Some((point, space)) => memory
                    .shift(&w.spec.name, space, point, owner, weight, since)
                    .map(|s| s.delta),
                None if routed.is_none() => {
                    live.snapshot.feedback.get(&w.spec.name).and_then(|f| {
                        // As with exemplars: the tenant's own scores in
                        // full, trusted tenants' bounded by `max_shift`.
                        let own_totals = f.by_scope.get(&scopes[1]).copied();
                        let (own_sum, own_n) = own_totals.unwrap_or_default();
                        let (all_sum, all_n) = f
                            .by_scope
                            .get(&scopes[0])
                            .map_or((own_sum, own_n), |(s, n)| (s + own_sum, n + own_n));
                        let mean = |sum: f64, n: f64| (sum - base * n) / (weight + n);
                        let own = if own_n > 0.0 {
                            mean(own_sum, own_n)
                        } else {
                            0.0
                        };
                        let cap = memory.config().max_shift;
                        (all_n > 0.0).then(|| own + (mean(all_sum, all_n) - own).clamp(-cap, cap))
                    })
                }
                None => None,
            };
            let prediction = match delta {
                Some(d) => Prediction {
                    quality: (base + d).clamp(0.0, 1.0),
                    source: source.with_feedback(),
                },
                None => Prediction {
                    quality: base,
                    source,
                },
            };
            out.insert(
                w.spec.name.clone(),
                ModelQuality {
                    prediction,
                    knowledge,
                    stand_in,
                },
            );
        }
        out
    }
}

/// Keeps the decision on the session's model (and, when it can serve, its
/// worker, whose prefix cache holds the earlier turns) if any of its
/// workers is eligible; otherwise the policy's choice stands and the reason
/// says why the session moved.
fn follow_session(decision: &mut Decision, sticky: &Sticky) -> AffinityOutcome {
    let Ok(chosen) = decision.chosen else {
        return AffinityOutcome::Moved;
    };
    let same_model = |c: &&CandidateScore| c.model == sticky.model;
    let best = decision
        .candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eligible() && same_model(c))
        .max_by(|(_, a), (_, b)| {
            (a.worker_id == sticky.worker)
                .cmp(&(b.worker_id == sticky.worker))
                .then(a.score.total_cmp(&b.score))
        })
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let policy_choice = &decision.candidates[chosen];
            if policy_choice.model != sticky.model {
                decision.reason = format!(
                    "session affinity: the conversation stays on {} (it served the earlier turns); the policy alone would pick {}: {}",
                    sticky.model, policy_choice.model, decision.reason
                );
            }
            decision.chosen = Ok(i);
            AffinityOutcome::Kept
        }
        None => {
            let why = decision
                .candidates
                .iter()
                .filter(|c| c.model == sticky.model)
                .find_map(|c| c.excluded.as_ref().map(ToString::to_string))
                .unwrap_or_else(|| "it is no longer in the pool".to_string());
            decision.reason = format!(
                "{}; the session moved from {}: {why}",
                decision.reason, sticky.model
            );
            AffinityOutcome::Moved
        }
    }
}

/// A model's predicted quality with how the router knows it.
pub(crate) struct ModelQuality {
    prediction: Prediction,
    knowledge: Knowledge,
    stand_in: Option<Arc<StandIn>>,
}

fn explain(
    request_id: &str,
    decision: &Decision,
    live: &LiveSnapshot,
    qualities: &HashMap<String, ModelQuality>,
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
                let quality = qualities.get(&c.model);
                RouteCandidate {
                    router_model: quality
                        .and_then(|q| q.knowledge.router_model())
                        .unwrap_or_default()
                        .to_string(),
                    router_knowledge: quality
                        .map_or("prior", |q| q.knowledge.as_str())
                        .to_string(),
                    stands_on: quality
                        .and_then(|q| q.stand_in.as_ref())
                        .map(|s| s.stands.iter().map(|s| s.model.clone()).collect())
                        .unwrap_or_default(),
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
        session: String::new(),
        affinity: String::new(),
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
