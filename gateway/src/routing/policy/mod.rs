//! Routing policies: score every worker in the pool for one request and pick
//! one.
//!
//! A policy sees a snapshot of the pool ([`WorkerView`]s) and the request's
//! figures ([`RouteInput`]); it never blocks and never does I/O, so it runs
//! on the request path. Every decision carries the figures it used for every
//! candidate, and why each excluded one was out ([`Exclusion`]), so the Route
//! RPC can explain it. Pure: no gateway state, no clock.

mod least_loaded;
mod screen;
mod threshold;
mod utility;
mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;

use routemesh_mesh::{Lack, Needs, Tier};
use serde::{Deserialize, Serialize};

pub use self::least_loaded::LeastLoaded;
pub use self::threshold::Threshold;
pub use self::utility::UtilityPolicy;
pub use self::view::{Health, LatencySource, Speed, WorkerView, tier_default_speed};

/// A routing policy.
pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    fn decide(&self, input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Decision;
}

/// The policies a configuration can name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Highest predicted quality minus weighted cost and latency.
    #[default]
    Utility,
    /// The least loaded eligible worker, cheaper first on ties.
    LeastLoaded,
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
    /// What the serving engine must be able to do (tools, formats, images,
    /// log-probs, context length).
    pub needs: &'a Needs,
    pub hints: &'a Hints,
    /// A model the client pinned; only its workers are eligible.
    pub pinned_model: Option<&'a str>,
    /// Predicted quality per model name, when something better than the
    /// tier prior is known (a quality predictor, feedback).
    pub predicted_quality: Option<&'a HashMap<String, Prediction>>,
    /// λ for this request (a tenant's cost target), overriding the policy's.
    pub cost_weight: Option<f64>,
}

/// Where a predicted quality came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualitySource {
    /// A fixed figure: the model's configured `quality_prior`, or its tier's.
    Prior,
    /// The learned router, trained on the model.
    Router,
    /// The learned router, for a model onboarded from scored prompts.
    Onboarded,
    /// The router's predictions for the known models nearest to an unknown
    /// one, less a margin.
    NearestKnown,
    /// Each of the above, moved by feedback near the prompt.
    PriorFeedback,
    RouterFeedback,
    OnboardedFeedback,
    NearestKnownFeedback,
}

impl QualitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            QualitySource::Prior => "prior",
            QualitySource::Router => "router",
            QualitySource::Onboarded => "onboarded",
            QualitySource::NearestKnown => "nearest-known",
            QualitySource::PriorFeedback => "prior+feedback",
            QualitySource::RouterFeedback => "router+feedback",
            QualitySource::OnboardedFeedback => "onboarded+feedback",
            QualitySource::NearestKnownFeedback => "nearest-known+feedback",
        }
    }

    /// The same source, moved by feedback.
    pub fn with_feedback(self) -> Self {
        match self {
            QualitySource::Prior | QualitySource::PriorFeedback => QualitySource::PriorFeedback,
            QualitySource::Router | QualitySource::RouterFeedback => QualitySource::RouterFeedback,
            QualitySource::Onboarded | QualitySource::OnboardedFeedback => {
                QualitySource::OnboardedFeedback
            }
            QualitySource::NearestKnown | QualitySource::NearestKnownFeedback => {
                QualitySource::NearestKnownFeedback
            }
        }
    }
}

impl fmt::Display for QualitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's predicted quality on one prompt and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub quality: f64,
    pub source: QualitySource,
}

/// Why a worker could not take the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Exclusion {
    NotPinned,
    NotAllowedModel,
    TierNotAllowed(Tier),
    OverMaxCost {
        expected_usd: f64,
        max_usd: f64,
    },
    UnderQualityFloor {
        predicted: f64,
        floor: f64,
    },
    OverLatencySlo {
        expected_ms: f64,
        slo_ms: u32,
    },
    /// Its engine cannot serve what the request needs (tools, a format,
    /// images, log-probs, or a conversation this long).
    Cannot(Lack),
    /// Its load check failed, or it is draining.
    Unhealthy,
    /// Its circuit breaker keeps requests away (recent calls failed).
    CircuitOpen {
        half_open: bool,
    },
    /// Every slot and queue place is taken.
    Full,
}

impl Exclusion {
    /// Out for now (health or load), not because of what the request asks.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            Exclusion::Unhealthy | Exclusion::CircuitOpen { .. } | Exclusion::Full
        )
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotPinned => f.write_str("not the pinned model"),
            Exclusion::NotAllowedModel => f.write_str("not in allowed_models"),
            Exclusion::TierNotAllowed(tier) => write!(f, "tier {tier} not in allowed_tiers"),
            Exclusion::OverMaxCost {
                expected_usd,
                max_usd,
            } => write!(
                f,
                "expected cost {expected_usd:.6} USD over max_cost_usd {max_usd}"
            ),
            Exclusion::UnderQualityFloor { predicted, floor } => write!(
                f,
                "predicted quality {predicted:.3} under quality_floor {floor}"
            ),
            Exclusion::OverLatencySlo {
                expected_ms,
                slo_ms,
            } => write!(
                f,
                "expected latency {expected_ms:.0} ms over latency_slo_ms {slo_ms}"
            ),
            Exclusion::Cannot(lack) => lack.fmt(f),
            Exclusion::Unhealthy => f.write_str("worker unhealthy"),
            Exclusion::CircuitOpen { half_open: false } => {
                f.write_str("circuit breaker open (recent calls failed)")
            }
            Exclusion::CircuitOpen { half_open: true } => {
                f.write_str("circuit breaker half-open (recent calls failed; probe in flight)")
            }
            Exclusion::Full => f.write_str("worker at capacity"),
        }
    }
}

/// One candidate worker with the figures the policy used.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateScore {
    pub worker_id: String,
    pub model: String,
    pub tier: Tier,
    pub predicted_quality: f64,
    pub quality_source: QualitySource,
    pub expected_cost_usd: f64,
    pub expected_latency_ms: Option<f64>,
    pub latency_source: LatencySource,
    pub error_rate: f64,
    pub load: f64,
    pub score: f64,
    /// Why it was out; `None` when eligible.
    pub excluded: Option<Exclusion>,
}

impl CandidateScore {
    pub fn eligible(&self) -> bool {
        self.excluded.is_none()
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

/// Picks the eligible candidate with the highest score; ties go to the lower
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
    if let Some(i) = best {
        let reason = why(&candidates[i]);
        return Decision {
            policy,
            chosen: Ok(i),
            reason,
            candidates,
        };
    }
    let excluded = || candidates.iter().filter_map(|c| c.excluded.as_ref());
    let (chosen, reason) = if candidates.is_empty() {
        (
            NoCandidate::EmptyPool,
            "no worker is registered".to_string(),
        )
    } else if excluded().any(|e| *e == Exclusion::Full) {
        (
            NoCandidate::Saturated,
            "every healthy worker that fits the request is at capacity".to_string(),
        )
    } else if excluded().any(Exclusion::is_transient) {
        (
            NoCandidate::Unavailable,
            "every worker that fits the request is unhealthy".to_string(),
        )
    } else {
        let mut reasons: Vec<String> = excluded().map(ToString::to_string).collect();
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
