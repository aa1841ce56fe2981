//! `cascade`: answer the cheap way first, escalate when the answer looks weak
//! (AutoMix, FrugalGPT), with cascade routing (Dekoninck et al., 2024): a
//! prompt the router predicts the cheap models will fail skips them.
//!
//! Steps climb a ladder of models ordered by tier, then price: the first
//! step routes among the cheapest tier (the policy picks, as for any
//! request), each escalation among the tiers above the one that answered (in
//! the top tier, among its pricier models).
//! Every step but the last is generated whole and judged by the verifier;
//! the last is returned unchecked, in the client's delivery (so a streamed
//! cascade never shows text it later replaces). The request's hints hold
//! across the steps: `max_cost_usd` and `latency_slo_ms` count what earlier
//! steps spent, and `quality_floor` is the acceptance threshold.

use std::sync::Arc;

use routemesh_mesh::Tier;
use routemesh_proto::v1::{CascadeStep, RouteDecision, WorkerGenerateResponse};
use tokio::time::Instant;

use super::verify::{Judged, Verifier};
use super::{Single, Strategy};
use crate::config::{CascadeConfig, Unverifiable, VerifierKind};
use crate::error::GatewayError;
use crate::pool::{Snapshot, WorkerHandle};
use crate::routing::policy::Hints;
use crate::routing::quality::Predicted;
use crate::serve::attempt::{Answer, Delivery, Flight, Step};

#[derive(Debug)]
pub(crate) struct Cascade {
    config: CascadeConfig,
    verifier: Verifier,
}

impl Cascade {
    pub(crate) fn new(config: CascadeConfig) -> Self {
        Self {
            verifier: Verifier::new(&config),
            config,
        }
    }

    /// The score an answer by `model` needs: the client's `quality_floor`,
    /// else the configured threshold, else the learned verifier's threshold
    /// for the target escalation share, else 0.5.
    fn threshold(&self, flight: &Flight, model: &str, gap_adjusted: bool) -> f64 {
        if let Some(floor) = flight.req.hints.quality_floor {
            return floor;
        }
        if let Some(t) = self.config.accept_threshold {
            return t;
        }
        if self.verifier.kind() == VerifierKind::Learned
            && let Some(share) = self.config.target_escalation_share
            && let Some(t) =
                flight
                    .state
                    .routing
                    .quality
                    .verifier_threshold(model, share, gap_adjusted)
        {
            return t;
        }
        0.5
    }
}

/// A model of the ladder: its rung is (tier, price).
#[derive(Debug, Clone)]
struct Rung {
    model: String,
    /// The tier's place among the tiers, smallest first.
    tier: usize,
    price: f64,
}

impl Rung {
    fn stronger_than(&self, other: &Rung) -> bool {
        (self.tier, self.price) > (other.tier, other.price) && self.model != other.model
    }
}

fn tier_rank(tier: Tier) -> usize {
    Tier::ALL.iter().position(|t| *t == tier).unwrap_or(0)
}

/// Whether the request is served by one decision rather than a cascade:
/// tools offered or tool turns (a tool call is for the agent to judge, and
/// an escalation would repeat it), a JSON answer (the verifiers judge
/// prose), or log-probs asked for (they would be the cheap model's).
fn one_decision(req: &crate::request::ValidRequest) -> bool {
    let n = &req.needs;
    n.tools || n.json_output || n.structured_output || n.logprobs
}

/// The models the request's hints allow, once each, weakest first.
fn ladder(snapshot: &Snapshot, hints: &Hints, needs: &routemesh_mesh::Needs) -> Vec<Rung> {
    let mut rungs: Vec<Rung> = Vec::new();
    for worker in snapshot.iter() {
        let model = &worker.record.model;
        // A model that cannot serve the request (its context, a feature)
        // is no rung: the first step would otherwise find nobody.
        let allowed = (hints.allowed_models.is_empty() || hints.allowed_models.contains(model))
            && (hints.allowed_tiers.is_empty()
                || hints.allowed_tiers.contains(&worker.record.tier))
            && worker.record.capabilities().lack(needs).is_none();
        if allowed && !rungs.iter().any(|r| &r.model == model) {
            rungs.push(Rung {
                model: model.clone(),
                tier: tier_rank(worker.record.tier),
                price: worker.spec.prices().rank(),
            });
        }
    }
    rungs.sort_by(|a, b| {
        a.tier
            .cmp(&b.tier)
            .then(a.price.total_cmp(&b.price))
            .then(a.model.cmp(&b.model))
    });
    rungs
}

/// The models of the step after `above`. The first step: the cheapest
/// tier. An escalation: the tiers above the weak answer's, or, when there
/// is none, the pricier models of its own tier (a weak answer is escalated
/// to a stronger kind of model, not to its cheaper-than-large neighbour).
fn step_models(rungs: &[Rung], above: Option<&Rung>) -> Vec<String> {
    let Some(lowest) = rungs.first() else {
        return Vec::new();
    };
    let higher_tier = above.is_some_and(|a| rungs.iter().any(|r| r.tier > a.tier));
    rungs
        .iter()
        .filter(|r| match above {
            None => r.tier == lowest.tier,
            Some(a) if higher_tier => r.tier > a.tier,
            Some(a) => r.stronger_than(a),
        })
        .map(|r| r.model.clone())
        .collect()
}

/// What the request has spent so far, against its hints.
struct Spent {
    cost_usd: f64,
    started: Instant,
}

impl Spent {
    /// The request's hints for the next step: its budget and latency SLO
    /// less what earlier steps took; the quality floor is the cascade's
    /// acceptance threshold, not a routing filter.
    fn hints(&self, hints: &Hints) -> Hints {
        Hints {
            max_cost_usd: hints.max_cost_usd.map(|m| (m - self.cost_usd).max(0.0)),
            latency_slo_ms: hints.latency_slo_ms.map(|slo| {
                let elapsed = u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
                slo.saturating_sub(elapsed)
            }),
            quality_floor: None,
            ..hints.clone()
        }
    }
}

/// A judged answer that may yet be returned (when no escalation can run).
struct Kept {
    response: WorkerGenerateResponse,
    route: RouteDecision,
    worker: Arc<WorkerHandle>,
    /// Its verdict for the metrics (`escalated` or `unverifiable`), counted
    /// once the request's end is known (`kept` replaces it when no
    /// escalation runs).
    verdict: &'static str,
}

#[async_trait::async_trait]
impl Strategy for Cascade {
    fn name(&self) -> &'static str {
        "cascade"
    }

    fn first_step_models(
        &self,
        snapshot: &Snapshot,
        req: &crate::request::ValidRequest,
        predicted: Option<&Predicted>,
    ) -> Option<Vec<String>> {
        if req.pinned_model.is_some() || req.threshold.is_some() || one_decision(req) {
            return None;
        }
        let rungs = ladder(snapshot, &req.hints, &req.needs);
        let above = self.skip_cheap(&rungs, predicted).map(|(r, _, _)| r);
        let models = step_models(&rungs, above.as_ref());
        (!models.is_empty()).then_some(models)
    }

    async fn run(&self, flight: &mut Flight, delivery: Delivery) -> Result<Answer, GatewayError> {
        // A model the client named, or RouteLLM threshold routing, is one
        // decision by definition.
        if flight.req.pinned_model.is_some() || flight.req.threshold.is_some() {
            return Single.run(flight, delivery).await;
        }
        // A session that has a model keeps it; tool calls and structured
        // answers are the agent's to judge, not a text verifier's.
        if one_decision(&flight.req)
            || flight
                .session
                .as_ref()
                .is_some_and(|(_, sticky)| sticky.is_some())
        {
            return Single.run(flight, delivery).await;
        }
        let rungs = ladder(&flight.snapshot, &flight.req.hints, &flight.req.needs);
        if rungs.is_empty() {
            // Nothing the hints allow: routing says why.
            return Single.run(flight, delivery).await;
        }
        let prompt = flight.req.routing_prompt().to_string();
        let mut spent = Spent {
            cost_usd: 0.0,
            started: Instant::now(),
        };
        let mut trail: Vec<CascadeStep> = Vec::new();
        // The rung every model of the next step must be stronger than.
        let mut above: Option<Rung> = None;
        let mut kept: Option<Kept> = None;

        // Cascade routing: when every cheap model is predicted to fail, its
        // answer would be escalated anyway.
        if let Some((skipped, quality, below)) = self.skip_cheap(&rungs, flight.predicted.as_ref())
        {
            crate::metrics::cascade_skip(&skipped.model);
            trail.push(CascadeStep {
                model: skipped.model.clone(),
                outcome: "skipped".into(),
                score: quality,
                threshold: below,
                reason: format!(
                    "the router predicts {quality:.2} for {}, under direct_below {below}: straight to a stronger model",
                    skipped.model
                ),
                ..CascadeStep::default()
            });
            above = Some(skipped);
        }

        let max_steps = self.config.max_steps as usize;
        let mut answered = 0usize;
        loop {
            let candidates = step_models(&rungs, above.as_ref());
            let escalating = kept.is_some();
            if candidates.is_empty() {
                // Only reachable after a weak answer: nothing stronger.
                let reason = "no stronger model in the pool the request may use".to_string();
                return self.keep(flight, kept, trail, reason, &spent);
            }
            // The step is the last when no rung lies beyond its strongest
            // candidate (or the steps are used up): its answer is returned
            // unchecked, in the client's delivery.
            let strongest = rungs.iter().rev().find(|r| candidates.contains(&r.model));
            let beyond = strongest.is_some_and(|s| rungs.iter().any(|r| r.stronger_than(s)));
            let last = answered + 1 >= max_steps || !beyond;
            let step = Step {
                models: Some(candidates),
                hints: Some(spent.hints(&flight.req.hints)),
                want_logprobs: !last && self.verifier.wants_logprobs(),
                follow_up: escalating,
                ..Step::default()
            };
            if escalating && let Some(why) = out_of_budget(flight, &spent) {
                return self.keep(flight, kept, trail, why, &spent);
            }
            let step_delivery = if last { delivery } else { Delivery::Whole };
            let answer = match flight.call(&step, step_delivery).await {
                Ok(answer) => answer,
                // The escalation could not run or failed: the weak answer in
                // hand is better than none, unless the client set the bar.
                Err(e) if escalating && !matches!(e, GatewayError::Deadline(_)) => {
                    let reason = format!("the escalation failed: {e}");
                    return self.keep(flight, kept, trail, reason, &spent);
                }
                Err(e) => return Err(e),
            };
            answered += 1;
            if let Some(weak) = kept.take() {
                crate::metrics::cascade_verdict(
                    self.verifier.id(),
                    &weak.worker.record.model,
                    weak.verdict,
                );
                let to_model = answer_model(&answer);
                crate::metrics::cascade_escalation(
                    self.verifier.id(),
                    &weak.worker.record.model,
                    &to_model,
                );
                flight.other_calls_cost_usd += cost_of(&weak.response);
            }
            if last {
                return Ok(finish(answer, trail, "answering", &self.config));
            }
            let Answer::Whole {
                response,
                route,
                worker,
            } = answer
            else {
                // A non-last step is called whole; a stream here would be a
                // bug of the attempt loop, and is returned as it is.
                return Ok(finish(answer, trail, "answering", &self.config));
            };
            let model = worker.record.model.clone();
            let started = std::time::Instant::now();
            let judgement = self
                .verifier
                .judge(
                    flight,
                    &Judged {
                        model: &model,
                        prompt: &prompt,
                        answer: &response.text,
                        confidence: response.confidence.as_ref(),
                    },
                )
                .await?;
            let threshold = self.threshold(flight, &model, judgement.gap_adjusted);
            flight.other_calls_cost_usd += judgement.cost_usd;
            spent.cost_usd += cost_of(&response) + judgement.cost_usd;
            let accepted = match judgement.score {
                Some(score) => score >= threshold,
                None => self.config.unverifiable == Unverifiable::Accept,
            };
            let verdict = match (judgement.score, accepted) {
                (None, _) => "unverifiable",
                (Some(_), true) => "accepted",
                (Some(_), false) => "escalated",
            };
            crate::metrics::cascade_verify_time(self.verifier.id(), started.elapsed());
            if accepted {
                crate::metrics::cascade_verdict(self.verifier.id(), &model, verdict);
            }
            let score_text = judgement.score.map_or("no score".to_string(), |s| {
                if judgement.gap_adjusted {
                    format!("{s:.3} (adjusted for the router's predicted gap)")
                } else {
                    format!("{s:.3}")
                }
            });
            trail.push(CascadeStep {
                model: model.clone(),
                worker_id: worker.record.id.clone(),
                verifier: self.verifier.id().to_string(),
                score: judgement.score.unwrap_or(0.0),
                threshold,
                outcome: if accepted { "accepted" } else { "escalated" }.into(),
                cost_usd: cost_of(&response),
                reason: if accepted {
                    format!(
                        "{} verifier: {score_text} >= {threshold:.3}",
                        self.verifier.id()
                    )
                } else {
                    format!(
                        "{} verifier: {score_text} < {threshold:.3}",
                        self.verifier.id()
                    )
                },
            });
            if accepted {
                let answer = Answer::Whole {
                    response,
                    route,
                    worker,
                };
                return Ok(finish(answer, trail, "accepted", &self.config));
            }
            above = rungs.iter().find(|r| r.model == model).cloned();
            kept = Some(Kept {
                response,
                route,
                worker,
                verdict,
            });
        }
    }
}

impl Cascade {
    /// The cheap rung to skip (the most expensive of the cheapest tier, so
    /// the next step is the tier above), with the best predicted quality
    /// among the cheap models and `direct_below`, when the router predicts
    /// every cheap model under `direct_below` and a stronger model exists.
    fn skip_cheap(
        &self,
        rungs: &[Rung],
        predicted: Option<&Predicted>,
    ) -> Option<(Rung, f64, f64)> {
        let below = self.config.direct_below?;
        let predicted = predicted?;
        let lowest = rungs.first()?;
        let cheap: Vec<&Rung> = rungs.iter().filter(|r| r.tier == lowest.tier).collect();
        if !rungs.iter().any(|r| r.tier > lowest.tier) {
            return None;
        }
        // Every cheap model must be predicted: one the router does not know
        // may well answer.
        let qualities: Option<Vec<f64>> = cheap
            .iter()
            .map(|r| predicted.scores.get(&r.model).copied())
            .collect();
        let best = qualities?.into_iter().fold(f64::NEG_INFINITY, f64::max);
        if best >= below {
            return None;
        }
        let top = cheap.iter().max_by(|a, b| a.price.total_cmp(&b.price))?;
        Some(((*top).clone(), best, below))
    }

    /// Ends with the weak answer in hand when no escalation can run: the
    /// client's `quality_floor` makes that an error naming why; without one
    /// the answer is returned, its decision saying it was kept and why.
    fn keep(
        &self,
        flight: &mut Flight,
        kept: Option<Kept>,
        mut trail: Vec<CascadeStep>,
        reason: String,
        spent: &Spent,
    ) -> Result<Answer, GatewayError> {
        let Some(kept) = kept else {
            return Err(GatewayError::NoWorker(reason));
        };
        let last = trail.last_mut();
        if let Some(floor) = flight.req.hints.quality_floor {
            let score = last.map_or(0.0, |s| s.score);
            crate::metrics::cascade_verdict(
                self.verifier.id(),
                &kept.worker.record.model,
                kept.verdict,
            );
            return Err(GatewayError::Unsatisfiable(format!(
                "the answer of {} scored {score:.3}, under quality_floor {floor}, and no stronger \
                 model could answer: {reason} (spent {:.6} USD so far)",
                kept.worker.record.model, spent.cost_usd
            )));
        }
        if let Some(step) = last {
            step.outcome = "kept".into();
            step.reason = format!("{}; kept: {reason}", step.reason);
        }
        crate::metrics::cascade_verdict(self.verifier.id(), &kept.worker.record.model, "kept");
        let answer = Answer::Whole {
            response: kept.response,
            route: kept.route,
            worker: kept.worker,
        };
        Ok(finish(answer, trail, "kept", &self.config))
    }
}

/// Why the request cannot afford another step, if it cannot: its budget or
/// its latency SLO is spent.
fn out_of_budget(flight: &Flight, spent: &Spent) -> Option<String> {
    let hints = &flight.req.hints;
    if let Some(max) = hints.max_cost_usd
        && spent.cost_usd >= max
    {
        return Some(format!(
            "max_cost_usd {max} is spent ({:.6} USD so far)",
            spent.cost_usd
        ));
    }
    if let Some(slo) = hints.latency_slo_ms
        && spent.started.elapsed().as_millis() >= u128::from(slo)
    {
        return Some(format!(
            "latency_slo_ms {slo} has passed ({} ms so far)",
            spent.started.elapsed().as_millis()
        ));
    }
    None
}

fn cost_of(response: &WorkerGenerateResponse) -> f64 {
    response.usage.as_ref().map_or(0.0, |u| u.cost_usd)
}

fn answer_model(answer: &Answer) -> String {
    match answer {
        Answer::Whole { worker, .. } => worker.record.model.clone(),
        Answer::Stream(open) => open.guard.worker().record.model.clone(),
    }
}

/// The answer with the cascade in its routing decision. `outcome` is the
/// returned step's (`accepted`, `kept`, or `answering` for a last step
/// returned unchecked, which is added to the trail here).
fn finish(
    mut answer: Answer,
    mut trail: Vec<CascadeStep>,
    outcome: &str,
    config: &CascadeConfig,
) -> Answer {
    let (route, worker) = match &mut answer {
        Answer::Whole { route, worker, .. } => (route, worker.clone()),
        Answer::Stream(open) => (&mut open.route, open.guard.worker().clone()),
    };
    if outcome == "answering" {
        trail.push(CascadeStep {
            model: worker.record.model.clone(),
            worker_id: worker.record.id.clone(),
            outcome: "answering".into(),
            reason: format!(
                "returned unchecked: the last step of at most {}, or nothing stronger to escalate to",
                config.max_steps
            ),
            ..CascadeStep::default()
        });
    }
    route.strategy = "cascade".into();
    route.escalated = trail.iter().any(|s| s.outcome == "escalated");
    route.cascade = trail;
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(model: &str, tier: usize, price: f64) -> Rung {
        Rung {
            model: model.into(),
            tier,
            price,
        }
    }

    #[test]
    fn steps_climb_by_tier_then_price() {
        // Weakest first, as `ladder` sorts them.
        let rungs = [
            rung("small-a", 0, 0.4),
            rung("small-b", 0, 1.2),
            rung("large-a", 1, 40.0),
            rung("large-b", 1, 60.0),
        ];
        // The first step: the whole cheapest tier, for the policy to choose.
        assert_eq!(step_models(&rungs, None), ["small-a", "small-b"]);
        // After a small model's weak answer: the large tier.
        assert_eq!(step_models(&rungs, Some(&rungs[0])), ["large-a", "large-b"]);
        assert_eq!(step_models(&rungs, Some(&rungs[1])), ["large-a", "large-b"]);
        // Within the top tier: the pricier models.
        assert_eq!(step_models(&rungs, Some(&rungs[2])), ["large-b"]);
        assert!(step_models(&rungs, Some(&rungs[3])).is_empty());
        assert!(step_models(&[], None).is_empty());
    }

    #[test]
    fn later_steps_get_what_is_left_of_the_budget_and_no_floor() {
        let spent = Spent {
            cost_usd: 0.0004,
            started: Instant::now(),
        };
        let hints = Hints {
            max_cost_usd: Some(0.001),
            latency_slo_ms: Some(60_000),
            quality_floor: Some(0.9),
            allowed_models: vec!["a".into()],
            ..Hints::default()
        };
        let next = spent.hints(&hints);
        assert!((next.max_cost_usd.unwrap() - 0.0006).abs() < 1e-12);
        assert!(next.latency_slo_ms.unwrap() <= 60_000 && next.latency_slo_ms.unwrap() > 59_000);
        assert_eq!(next.quality_floor, None);
        assert_eq!(next.allowed_models, ["a"]);
        // Overspent: nothing left, never negative.
        let over = Spent {
            cost_usd: 0.002,
            started: Instant::now(),
        };
        assert_eq!(over.hints(&hints).max_cost_usd, Some(0.0));
    }
}
