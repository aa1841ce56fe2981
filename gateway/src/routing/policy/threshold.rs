//! `threshold`: RouteLLM's threshold routing for a strong/weak pair. The
//! request goes to the strong (most expensive) eligible model when its
//! predicted quality beats the weak (cheapest) one's by at least the
//! threshold, else to the weak one; within the model, to the least loaded
//! worker. A higher threshold means fewer strong calls (`routemesh router
//! calibrate` maps thresholds to shares). Chosen per request by naming a
//! `router-<name>-<threshold>` model.

use super::screen::screen;
use super::{CandidateScore, Decision, NoCandidate, Policy, RouteInput, WorkerView, pick};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(pub f64);

impl Policy for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn decide(&self, input: &RouteInput<'_>, workers: &[WorkerView<'_>]) -> Decision {
        let threshold = self.0;
        let mut candidates = screen(input, workers);
        let price = |c: &CandidateScore| {
            workers
                .iter()
                .find(|w| w.worker_id == c.worker_id)
                .map_or(0.0, |w| w.model.prices().rank())
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
                let (target, relation) = if gap >= threshold {
                    (s.model.clone(), ">=")
                } else {
                    (w.model.clone(), "<")
                };
                (
                    target,
                    format!(
                        "threshold routing: strong {} predicted {:.3} - weak {} {:.3} = {gap:.3} {relation} threshold {threshold}",
                        s.model, s.predicted_quality, w.model, w.predicted_quality
                    ),
                )
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
        let mut decision = pick(self.name(), candidates, move |_| why.clone());
        if let Ok(i) = decision.chosen
            && decision.candidates[i].score == f64::NEG_INFINITY
        {
            decision.chosen = Err(NoCandidate::Unavailable);
        }
        decision
    }
}
