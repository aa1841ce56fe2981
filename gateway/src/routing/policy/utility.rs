//! `utility`: quality − λ·cost − μ·latency − ν·load − ε·error rate, the
//! RouterBench willingness-to-pay trade-off with a queueing term so a busy
//! worker sheds to an idle one.

use super::screen::screen;
use super::{Decision, Policy, RouteInput, WorkerView, pick};

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
