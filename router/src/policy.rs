//! Routing policies: score every worker in the pool for one request and pick one.
//!
//! A policy sees a snapshot of the pool ([`WorkerView`]s) and the request's
//! figures ([`RouteInput`]); it never blocks and never does I/O, so it can run
//! on the request path. Every decision carries the figures it used for every
//! candidate, so the Route RPC can explain it.

use std::collections::HashMap;

use routemesh_mesh::{ModelSpec, Tier};
use serde::{Deserialize, Serialize};

/// One worker as the gateway sees it at decision time.
#[derive(Debug, Clone)]
pub struct WorkerView<'a> {
    pub worker_id: &'a str,
    pub model: &'a ModelSpec,
    /// False when the last load report failed or the worker is draining.
    pub healthy: bool,
    /// Requests this gateway has in flight to the worker.
    pub gateway_in_flight: u32,
    /// Requests the worker reported generating (all gateways).
    pub reported_in_flight: u32,
    /// Requests the worker reported waiting for a slot.
    pub queue_depth: u32,
    /// Concurrent slots.
    pub capacity: u32,
    /// Waiting requests the worker accepts before refusing.
    pub max_queue: u32,
    /// Median time to first token, milliseconds; 0 when unknown.
    pub ttft_ms_p50: f64,
    /// Median decode speed, tokens/s; 0 when unknown.
    pub tokens_per_second_p50: f64,
    /// Where the speed figures came from: "telemetry" (every replica's
    /// observations), "load-report" (the worker's own) or "unknown".
    pub latency_source: &'static str,
    /// Share of recent requests that failed at this worker, in [0, 1].
    pub error_rate: f64,
    /// Observed median end-to-end latency, used when the speed figures are
    /// unknown (e.g. an engine that only answers unary calls).
    pub observed_latency_ms_p50: Option<f64>,
}

impl WorkerView<'_> {
    /// Work ahead of a new request, as a multiple of the worker's slots.
    pub fn load(&self) -> f64 {
        let busy = self.gateway_in_flight.max(self.reported_in_flight) + self.queue_depth;
        f64::from(busy) / f64::from(self.capacity.max(1))
    }

    fn has_room(&self) -> bool {
        let busy = self.gateway_in_flight.max(self.reported_in_flight) + self.queue_depth;
        busy < self.capacity.saturating_add(self.max_queue)
    }

    /// Expected end-to-end latency of a request producing `completion_tokens`,
    /// or `None` when the worker has not reported its speed yet.
    pub fn expected_latency_ms(&self, completion_tokens: u32) -> Option<f64> {
        let service = if self.tokens_per_second_p50 > 0.0 {
            self.ttft_ms_p50 + f64::from(completion_tokens) * 1000.0 / self.tokens_per_second_p50
        } else {
            self.observed_latency_ms_p50?
        };
        // Requests beyond the slots wait for roughly one service time per slot-load.
        let queueing = (self.load() - 1.0).max(0.0) * service;
        Some(service + queueing)
    }
}

/// Client constraints on routing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hints {
    pub allowed_models: Vec<String>,
    pub allowed_tiers: Vec<Tier>,
    pub max_cost_usd: Option<f64>,
    pub latency_slo_ms: Option<u32>,
    pub quality_floor: Option<f64>,
}

/// What the policy knows about the request.
#[derive(Debug, Clone)]
pub struct RouteInput<'a> {
    pub prompt_tokens: u32,
    /// Completion tokens to budget for (the request's max_tokens).
    pub max_tokens: u32,
    pub hints: &'a Hints,
    /// A model the client pinned; only its workers are eligible.
    pub pinned_model: Option<&'a str>,
    /// Predicted quality per model name, when something better than the
    /// tier prior is known (a quality predictor, feedback).
    pub predicted_quality: Option<&'a HashMap<String, Prediction>>,
    /// λ for this request (a tenant's cost target), overriding the policy's.
    pub cost_weight: Option<f64>,
}

/// RouteLLM's threshold routing for a strong/weak pair: send the request to
/// the strong (most expensive) eligible model when its predicted quality
/// beats the weak (cheapest) one's by at least `threshold`, else to the weak
/// one; within the model, the least loaded worker. A higher threshold means
/// fewer strong calls (`routemesh router calibrate` maps thresholds to shares).
pub fn decide_threshold(
    threshold: f64,
    input: &RouteInput<'_>,
    workers: &[WorkerView<'_>],
) -> Decision {
    let mut candidates = screen(input, workers);
    let price = |c: &CandidateScore| {
        workers
            .iter()
            .find(|w| w.worker_id == c.worker_id)
            .map_or(0.0, |w| {
                w.model.input_usd_per_mtok + w.model.output_usd_per_mtok
            })
    };
    let eligible: Vec<&CandidateScore> = candidates.iter().filter(|c| c.eligible()).collect();
    let strong = eligible
        .iter()
        .copied()
        .max_by(|a, b| price(a).total_cmp(&price(b)));
    let weak = eligible
        .iter()
        .copied()
        .min_by(|a, b| price(a).total_cmp(&price(b)));
    let (target, why) = match (strong, weak) {
        (Some(s), Some(w)) if s.model != w.model => {
            let gap = s.predicted_quality - w.predicted_quality;
            if gap >= threshold {
                (
                    s.model.clone(),
                    format!(
                        "threshold routing: strong {} predicted {:.3} - weak {} {:.3} = {gap:.3} >= threshold {threshold}",
                        s.model, s.predicted_quality, w.model, w.predicted_quality
                    ),
                )
            } else {
                (
                    w.model.clone(),
                    format!(
                        "threshold routing: strong {} predicted {:.3} - weak {} {:.3} = {gap:.3} < threshold {threshold}",
                        s.model, s.predicted_quality, w.model, w.predicted_quality
                    ),
                )
            }
        }
        (Some(only), _) => (
            only.model.clone(),
            "threshold routing: only one model is eligible".to_string(),
        ),
        _ => (String::new(), String::new()),
    };
    for c in &mut candidates {
        c.score = if c.model == target {
            -c.load
        } else {
            f64::NEG_INFINITY
        };
    }
    let mut decision = pick("threshold", candidates, move |_| why.clone());
    if let Ok(i) = decision.chosen
        && decision.candidates[i].score == f64::NEG_INFINITY
    {
        decision.chosen = Err(NoCandidate::Unavailable);
    }
    decision
}

/// A model's predicted quality on one prompt and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub quality: f64,
    /// e.g. "router", "prior+feedback", "router+feedback".
    pub source: &'static str,
}

/// One candidate worker with the figures the policy used.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateScore {
    pub worker_id: String,
    pub model: String,
    pub tier: Tier,
    pub predicted_quality: f64,
    /// "prior" (tier and price) unless a [`Prediction`] says otherwise.
    pub quality_source: &'static str,
    pub expected_cost_usd: f64,
    pub expected_latency_ms: Option<f64>,
    pub latency_source: &'static str,
    pub error_rate: f64,
    pub load: f64,
    pub score: f64,
    /// Empty when eligible.
    pub excluded_because: String,
}

impl CandidateScore {
    pub fn eligible(&self) -> bool {
        self.excluded_because.is_empty()
    }
}

/// Why a decision found nobody to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCandidate {
    /// The pool has no worker at all.
    EmptyPool,
    /// Some worker would satisfy the request but none is healthy now.
    Unavailable,
    /// Healthy workers would satisfy the request but all are at capacity:
    /// overload, worth a retry after a pause.
    Saturated,
    /// No model in the pool satisfies the request's hints.
    HintsUnsatisfiable,
}

/// A routing decision and its explanation.
#[derive(Debug, Clone)]
pub struct Decision {
    pub policy: &'static str,
    /// Index into `candidates` of the winner.
    pub chosen: Result<usize, NoCandidate>,
    pub reason: String,
    pub candidates: Vec<CandidateScore>,
}

impl Decision {
    pub fn chosen_candidate(&self) -> Option<&CandidateScore> {
        self.chosen.ok().and_then(|i| self.candidates.get(i))
    }
}

/// A routing policy.
pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    fn decide(&self, input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Decision;
}

/// The policies a configuration can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Highest predicted quality minus weighted cost and latency.
    #[default]
    Utility,
    /// The least loaded eligible worker, cheaper first on ties.
    LeastLoaded,
}

/// Score every worker against the hints; a candidate with a non-empty
/// `excluded_because` is out. `score` is filled by the caller.
fn screen(input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Vec<CandidateScore> {
    let hints = input.hints;
    workers
        .iter()
        .map(|w| {
            let model = w.model;
            let (predicted_quality, quality_source) =
                match input.predicted_quality.and_then(|p| p.get(&model.name)) {
                    Some(p) => (p.quality, p.source),
                    None => (model.prior_quality(), "prior"),
                };
            let expected_cost_usd = model.expected_cost_usd(input.prompt_tokens, input.max_tokens);
            let expected_latency_ms = w.expected_latency_ms(input.max_tokens);
            let excluded_because = if input.pinned_model.is_some_and(|m| m != model.name) {
                "not the pinned model".to_string()
            } else if !hints.allowed_models.is_empty()
                && !hints.allowed_models.contains(&model.name)
            {
                "not in allowed_models".to_string()
            } else if !hints.allowed_tiers.is_empty() && !hints.allowed_tiers.contains(&model.tier)
            {
                format!("tier {} not in allowed_tiers", model.tier.as_str())
            } else if let Some(max) = hints.max_cost_usd.filter(|max| expected_cost_usd > *max) {
                format!("expected cost {expected_cost_usd:.6} USD over max_cost_usd {max}")
            } else if let Some(floor) = hints.quality_floor.filter(|f| predicted_quality < *f) {
                format!("predicted quality {predicted_quality:.3} under quality_floor {floor}")
            } else if let (Some(slo), Some(lat)) = (hints.latency_slo_ms, expected_latency_ms)
                && lat > f64::from(slo)
            {
                format!("expected latency {lat:.0} ms over latency_slo_ms {slo}")
            } else if !w.healthy {
                UNHEALTHY.to_string()
            } else if !w.has_room() {
                FULL.to_string()
            } else {
                String::new()
            };
            CandidateScore {
                worker_id: w.worker_id.to_string(),
                model: model.name.clone(),
                tier: model.tier,
                predicted_quality,
                quality_source,
                expected_cost_usd,
                expected_latency_ms,
                latency_source: w.latency_source,
                error_rate: w.error_rate,
                load: w.load(),
                score: f64::NEG_INFINITY,
                excluded_because,
            }
        })
        .collect()
}

const UNHEALTHY: &str = "worker unhealthy";
const FULL: &str = "worker at capacity";

/// Pick the eligible candidate with the highest score; ties go to the lower
/// load, then the lower cost, then the worker id (so decisions are stable).
fn pick(
    policy: &'static str,
    candidates: Vec<CandidateScore>,
    why: impl Fn(&CandidateScore) -> String,
) -> Decision {
    let best = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eligible())
        .max_by(|(_, a), (_, b)| {
            a.score
                .total_cmp(&b.score)
                .then(b.load.total_cmp(&a.load))
                .then(b.expected_cost_usd.total_cmp(&a.expected_cost_usd))
                .then(b.worker_id.cmp(&a.worker_id))
        })
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let reason = why(&candidates[i]);
            Decision {
                policy,
                chosen: Ok(i),
                reason,
                candidates,
            }
        }
        None => {
            let (chosen, reason) = if candidates.is_empty() {
                (
                    NoCandidate::EmptyPool,
                    "no worker is registered".to_string(),
                )
            } else if candidates.iter().any(|c| c.excluded_because == FULL) {
                (
                    NoCandidate::Saturated,
                    "every healthy worker that fits the request is at capacity".to_string(),
                )
            } else if candidates.iter().any(|c| c.excluded_because == UNHEALTHY) {
                (
                    NoCandidate::Unavailable,
                    "every worker that fits the request is unhealthy".to_string(),
                )
            } else {
                let mut reasons: Vec<&str> = candidates
                    .iter()
                    .map(|c| c.excluded_because.as_str())
                    .collect();
                reasons.sort_unstable();
                reasons.dedup();
                (
                    NoCandidate::HintsUnsatisfiable,
                    format!("no model satisfies the request: {}", reasons.join("; ")),
                )
            };
            Decision {
                policy,
                chosen: Err(chosen),
                reason,
                candidates,
            }
        }
    }
}

/// Least loaded eligible worker; quality only matters through the hints.
#[derive(Debug, Clone, Default)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn decide(&self, input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Decision {
        let mut candidates = screen(input, workers);
        for c in &mut candidates {
            c.score = -c.load;
        }
        pick(self.name(), candidates, |c| {
            format!("least loaded eligible worker (load {:.2})", c.load)
        })
    }
}

/// Quality − λ·cost − μ·latency − ν·load, the RouterBench willingness-to-pay
/// trade-off with a queueing term so a busy worker sheds to an idle one.
#[derive(Debug, Clone)]
pub struct UtilityPolicy {
    /// λ: quality points given up per USD of expected cost.
    pub cost_weight: f64,
    /// μ: quality points given up per second of expected latency.
    pub latency_weight: f64,
    /// ν: quality points given up per unit of load (work ahead / slots).
    pub load_weight: f64,
    /// ε: quality points given up per unit of recent error rate.
    pub error_weight: f64,
}

impl Default for UtilityPolicy {
    fn default() -> Self {
        // λ = 20/USD makes a GPT-4-class call (~0.01 USD for a short chat)
        // cost 0.2 quality points: large models win only where they are
        // predicted to be much better.
        Self {
            cost_weight: 20.0,
            latency_weight: 0.01,
            load_weight: 0.05,
            error_weight: 1.0,
        }
    }
}

impl Policy for UtilityPolicy {
    fn name(&self) -> &'static str {
        "utility"
    }

    fn decide(&self, input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Decision {
        let mut candidates = screen(input, workers);
        let cw = input.cost_weight.unwrap_or(self.cost_weight);
        let (lw, nw, ew) = (self.latency_weight, self.load_weight, self.error_weight);
        for c in &mut candidates {
            c.score = c.predicted_quality
                - cw * c.expected_cost_usd
                - lw * c.expected_latency_ms.unwrap_or(0.0) / 1000.0
                - nw * c.load
                - ew * c.error_rate;
        }
        pick(self.name(), candidates, move |c| {
            format!(
                "highest utility {:.4} = quality {:.3} ({}) - {cw:.4}·cost {:.6} USD - {lw}·latency {:.2} s ({}) - {nw}·load {:.2} - {ew}·error rate {:.3}",
                c.score,
                c.predicted_quality,
                c.quality_source,
                c.expected_cost_usd,
                c.expected_latency_ms.unwrap_or(0.0) / 1000.0,
                c.latency_source,
                c.load,
                c.error_rate
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelSpec {
        ModelSpec {
            name: "small".into(),
            tier: Tier::Small,
            input_usd_per_mtok: 0.1,
            output_usd_per_mtok: 0.1,
            quality_prior: None,
        }
    }

    fn large() -> ModelSpec {
        ModelSpec {
            name: "large".into(),
            tier: Tier::Large,
            input_usd_per_mtok: 10.0,
            output_usd_per_mtok: 30.0,
            quality_prior: None,
        }
    }

    fn view<'a>(id: &'a str, model: &'a ModelSpec, in_flight: u32) -> WorkerView<'a> {
        WorkerView {
            worker_id: id,
            model,
            healthy: true,
            gateway_in_flight: in_flight,
            reported_in_flight: 0,
            queue_depth: 0,
            capacity: 4,
            max_queue: 4,
            ttft_ms_p50: 0.0,
            tokens_per_second_p50: 0.0,
            latency_source: "unknown",
            error_rate: 0.0,
            observed_latency_ms_p50: None,
        }
    }

    fn input(hints: &Hints) -> RouteInput<'_> {
        RouteInput {
            prompt_tokens: 100,
            max_tokens: 256,
            hints,
            pinned_model: None,
            predicted_quality: None,
            cost_weight: None,
        }
    }

    #[test]
    fn least_loaded_prefers_idle_worker_then_cheaper() {
        let (s, l) = (small(), large());
        let hints = Hints::default();
        let workers = [view("s1", &s, 3), view("s2", &s, 1), view("l1", &l, 1)];
        let d = LeastLoaded.decide(&input(&hints), &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.worker_id.as_str()),
            Some("s2")
        );
    }

    #[test]
    fn utility_trades_quality_for_cost() {
        let (s, l) = (small(), large());
        let hints = Hints::default();
        let workers = [view("s1", &s, 0), view("l1", &l, 0)];
        // Priors: small 0.55, large 0.80; large costs ~0.0087 USD -> 0.17 at λ=20.
        let d = UtilityPolicy::default().decide(&input(&hints), &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("large")
        );
        let pricey = UtilityPolicy {
            cost_weight: 100.0,
            ..Default::default()
        };
        let d = pricey.decide(&input(&hints), &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("small")
        );
        assert!(d.reason.contains("prior"), "{}", d.reason);
    }

    #[test]
    fn predictions_override_priors() {
        let (s, l) = (small(), large());
        let hints = Hints::default();
        let workers = [view("s1", &s, 0), view("l1", &l, 0)];
        let p = Prediction {
            quality: 0.9,
            source: "router",
        };
        let predicted = HashMap::from([("small".to_string(), p), ("large".to_string(), p)]);
        let mut inp = input(&hints);
        inp.predicted_quality = Some(&predicted);
        let d = UtilityPolicy::default().decide(&inp, &workers);
        let chosen = d
            .chosen_candidate()
            .map(|c| (c.model.as_str(), c.quality_source));
        assert_eq!(chosen, Some(("small", "router")));
    }

    #[test]
    fn hints_exclude_with_named_reasons() {
        let (s, l) = (small(), large());
        let workers = [view("s1", &s, 0), view("l1", &l, 0)];
        let hints = Hints {
            max_cost_usd: Some(0.001),
            ..Default::default()
        };
        let d = UtilityPolicy::default().decide(&input(&hints), &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("small")
        );
        assert!(d.candidates[1].excluded_because.contains("max_cost_usd"));

        let hints = Hints {
            quality_floor: Some(0.99),
            ..Default::default()
        };
        let d = UtilityPolicy::default().decide(&input(&hints), &workers);
        assert_eq!(d.chosen, Err(NoCandidate::HintsUnsatisfiable));
        assert!(d.reason.contains("quality_floor"), "{}", d.reason);

        let hints = Hints {
            allowed_tiers: vec![Tier::Large],
            ..Default::default()
        };
        let d = LeastLoaded.decide(&input(&hints), &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("large")
        );
    }

    #[test]
    fn unhealthy_or_full_is_unavailable_not_unsatisfiable() {
        let s = small();
        let mut w = view("s1", &s, 0);
        w.healthy = false;
        let hints = Hints::default();
        let d = LeastLoaded.decide(&input(&hints), &[w]);
        assert_eq!(d.chosen, Err(NoCandidate::Unavailable));
        let full = view("s2", &s, 8);
        let d = LeastLoaded.decide(&input(&hints), &[full]);
        assert_eq!(d.chosen, Err(NoCandidate::Saturated));
        let d = LeastLoaded.decide(&input(&hints), &[]);
        assert_eq!(d.chosen, Err(NoCandidate::EmptyPool));
    }

    #[test]
    fn pinned_model_only() {
        let (s, l) = (small(), large());
        let hints = Hints::default();
        let workers = [view("s1", &s, 0), view("l1", &l, 3)];
        let mut inp = input(&hints);
        inp.pinned_model = Some("large");
        let d = LeastLoaded.decide(&inp, &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.worker_id.as_str()),
            Some("l1")
        );
    }

    #[test]
    fn failing_workers_lose_traffic() {
        let s = small();
        let hints = Hints::default();
        let mut failing = view("s1", &s, 0);
        failing.error_rate = 0.5;
        let healthy = view("s2", &s, 1);
        let d = UtilityPolicy::default().decide(&input(&hints), &[failing, healthy]);
        assert_eq!(
            d.chosen_candidate().map(|c| c.worker_id.as_str()),
            Some("s2")
        );
        assert!(d.reason.contains("error rate 0.000"), "{}", d.reason);
    }

    #[test]
    fn a_tenant_cost_weight_overrides_the_policy() {
        let (s, l) = (small(), large());
        let hints = Hints::default();
        let workers = [view("s1", &s, 0), view("l1", &l, 0)];
        let mut inp = input(&hints);
        inp.cost_weight = Some(100.0);
        let d = UtilityPolicy::default().decide(&inp, &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("small")
        );
    }

    #[test]
    fn threshold_routing_picks_strong_only_past_the_gap() {
        let (s, l) = (small(), large());
        let hints = Hints::default();
        let workers = [view("s1", &s, 0), view("l1", &l, 0)];
        let predicted = HashMap::from([
            (
                "small".to_string(),
                Prediction {
                    quality: 0.5,
                    source: "router",
                },
            ),
            (
                "large".to_string(),
                Prediction {
                    quality: 0.7,
                    source: "router",
                },
            ),
        ]);
        let mut inp = input(&hints);
        inp.predicted_quality = Some(&predicted);
        let d = decide_threshold(0.1, &inp, &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("large")
        );
        assert!(d.reason.contains(">= threshold 0.1"), "{}", d.reason);
        let d = decide_threshold(0.3, &inp, &workers);
        assert_eq!(
            d.chosen_candidate().map(|c| c.model.as_str()),
            Some("small")
        );
        assert_eq!(d.policy, "threshold");
    }

    #[test]
    fn latency_slo_uses_reported_speed() {
        let s = small();
        let mut w = view("s1", &s, 0);
        w.ttft_ms_p50 = 100.0;
        w.tokens_per_second_p50 = 50.0;
        // 100 ms + 256 tokens / 50 tok/s = 5.22 s.
        let hints = Hints {
            latency_slo_ms: Some(1000),
            ..Default::default()
        };
        let d = LeastLoaded.decide(&input(&hints), &[w]);
        assert!(d.candidates[0].excluded_because.contains("latency_slo_ms"));
    }
}
