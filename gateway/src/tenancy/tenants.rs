//! Per-tenant cost targets, held online: each tenant with a target cost per
//! request gets its own cost weight λ, nudged after every served request from
//! an exponential moving average of what its requests cost. Routing then
//! trades quality for cost exactly as much as the target demands, instead of
//! relying on a one-off offline calibration.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Average cost per request to hold, in USD.
    #[serde(default)]
    pub target_cost_per_request_usd: Option<f64>,
    /// Requests admitted per minute (every replica together).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Prompt + completion tokens per minute (every replica together).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Spend per UTC day, USD.
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    /// Spend per 30-day month (UTC days since the epoch / 30), USD.
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
    /// The tenant's Feedback moves every tenant's routing; by default it
    /// moves only its own (so no tenant can steer another's).
    #[serde(default)]
    pub trusted_feedback: bool,
}

impl TenantConfig {
    pub fn has_limits(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.budget_usd_per_day.is_some()
            || self.budget_usd_per_month.is_some()
    }
}

/// Smoothing of the observed cost: about the last 20 requests.
const ALPHA: f64 = 0.05;
/// Step of log λ per request at a 100% deviation from the target.
const GAIN: f64 = 0.05;
const LAMBDA_MIN: f64 = 1e-3;
const LAMBDA_MAX: f64 = 1e7;

#[derive(Debug, Clone)]
struct Controller {
    target: f64,
    lambda: f64,
    observed: Option<f64>,
}

/// The cost weights of tenants that have targets.
#[derive(Debug, Default)]
pub struct CostTargets {
    controllers: Mutex<HashMap<String, Controller>>,
}

impl CostTargets {
    /// `initial_lambda` is the gateway's configured λ, where control starts.
    pub fn new(tenants: &HashMap<String, TenantConfig>, initial_lambda: f64) -> Self {
        let controllers = tenants
            .iter()
            .filter_map(|(name, t)| {
                let target = t.target_cost_per_request_usd?;
                Some((
                    name.clone(),
                    Controller {
                        target,
                        lambda: initial_lambda.clamp(LAMBDA_MIN, LAMBDA_MAX),
                        observed: None,
                    },
                ))
            })
            .collect();
        Self {
            controllers: Mutex::new(controllers),
        }
    }

    /// The tenant's λ now, if it has a target.
    pub fn cost_weight(&self, tenant: &str) -> Option<f64> {
        self.controllers.lock().ok()?.get(tenant).map(|c| c.lambda)
    }

    /// A served request of `tenant` cost `cost_usd`: move λ towards the target.
    pub fn observe(&self, tenant: &str, cost_usd: f64) {
        let Ok(mut controllers) = self.controllers.lock() else {
            return;
        };
        let Some(c) = controllers.get_mut(tenant) else {
            return;
        };
        let observed = match c.observed {
            Some(o) => o + ALPHA * (cost_usd - o),
            None => cost_usd,
        };
        c.observed = Some(observed);
        // Multiplicative (log-space integral) control: λ spans many orders of
        // magnitude across price lists, so steps are relative.
        let error = (observed / c.target - 1.0).clamp(-1.0, 4.0);
        c.lambda = (c.lambda * (GAIN * error).exp()).clamp(LAMBDA_MIN, LAMBDA_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_target_against_a_two_price_market() {
        // A toy market: cost 1.0 while λ < 10, else 0.1. Target 0.4 needs a mix.
        let tenants = HashMap::from([(
            "t".to_string(),
            TenantConfig {
                target_cost_per_request_usd: Some(0.4),
                ..Default::default()
            },
        )]);
        let targets = CostTargets::new(&tenants, 1.0);
        let mut spent = Vec::new();
        for _ in 0..2000 {
            let lambda = targets.cost_weight("t").unwrap();
            let cost = if lambda < 10.0 { 1.0 } else { 0.1 };
            targets.observe("t", cost);
            spent.push(cost);
        }
        let late: f64 = spent[1000..].iter().sum::<f64>() / 1000.0;
        assert!((late - 0.4).abs() < 0.05, "mean cost {late}");
        assert_eq!(targets.cost_weight("other"), None);
    }
}
