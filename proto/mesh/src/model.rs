//! A model as the gateway and the router know it ([`ModelSpec`]) and the one
//! price formula ([`TokenPrices::cost_usd`]) that every cost in routemesh is
//! computed with: what a worker reports, what the policy expects, what the
//! cost report compares against.

use crate::tier::Tier;

/// A model's list prices, USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPrices {
    /// Price of prompt (input) tokens.
    pub input_usd_per_mtok: f64,
    /// Price of completion (output) tokens.
    pub output_usd_per_mtok: f64,
}

impl TokenPrices {
    /// What `prompt_tokens` in and `completion_tokens` out cost, in USD.
    ///
    /// Token counts are whole numbers for one request (`u32`) and sums over
    /// many for reports (`f64`); both go through this one formula.
    pub fn cost_usd(
        &self,
        prompt_tokens: impl Into<f64>,
        completion_tokens: impl Into<f64>,
    ) -> f64 {
        (self.input_usd_per_mtok * prompt_tokens.into()
            + self.output_usd_per_mtok * completion_tokens.into())
            / 1e6
    }

    /// How expensive the model is, to rank models by: the sum of its two
    /// prices. "The strongest model" of a pool is the one that ranks highest.
    pub fn rank(&self) -> f64 {
        self.input_usd_per_mtok + self.output_usd_per_mtok
    }

    /// The most expensive of `items` by their prices: the pool's strongest
    /// model, the "everything to the strongest model" counterfactual.
    pub fn most_expensive<T>(
        items: impl IntoIterator<Item = T>,
        prices: impl Fn(&T) -> TokenPrices,
    ) -> Option<T> {
        items
            .into_iter()
            .max_by(|a, b| prices(a).rank().total_cmp(&prices(b).rank()))
    }
}

/// The model name with which a client leaves the choice to the router (the
/// OpenAI APIs' `model`; labels and spans name such requests by it too).
pub const ROUTER_MODEL: &str = "router";

/// A model as the router knows it: its tier, prices and quality prior.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub tier: Tier,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Quality assumed when no predictor knows the model; `None` uses the tier's prior.
    pub quality_prior: Option<f64>,
    /// The router artifact's name for it, when declared (see `WorkerRecord::router_model`).
    pub router_model: Option<String>,
    /// Parameters in billions, when declared.
    pub params_b: Option<f64>,
}

impl ModelSpec {
    /// A model known only by name and tier: no prices, prior or size.
    pub fn named(name: &str, tier: Tier) -> Self {
        Self {
            name: name.to_string(),
            tier,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            quality_prior: None,
            router_model: None,
            params_b: None,
        }
    }

    /// The model's prices.
    pub fn prices(&self) -> TokenPrices {
        TokenPrices {
            input_usd_per_mtok: self.input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
        }
    }

    /// What a request of `prompt_tokens` in and `completion_tokens` out
    /// costs on this model ([`TokenPrices::cost_usd`]).
    pub fn expected_cost_usd(&self, prompt_tokens: u32, completion_tokens: u32) -> f64 {
        self.prices().cost_usd(prompt_tokens, completion_tokens)
    }

    /// The quality assumed before anything better is known.
    pub fn prior_quality(&self) -> f64 {
        self.quality_prior
            .unwrap_or_else(|| self.tier.default_quality_prior())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tier: Tier, input: f64, output: f64) -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            tier,
            input_usd_per_mtok: input,
            output_usd_per_mtok: output,
            quality_prior: None,
            router_model: None,
            params_b: None,
        }
    }

    #[test]
    fn cost_is_prices_per_million_tokens() {
        let prices = TokenPrices {
            input_usd_per_mtok: 10.0,
            output_usd_per_mtok: 30.0,
        };
        // (10·1000 + 30·500) / 1e6
        assert!((prices.cost_usd(1000u32, 500u32) - 0.025).abs() < 1e-15);
        // A million prompt tokens cost the input price, a million completion
        // tokens the output price.
        assert_eq!(prices.cost_usd(1_000_000u32, 0u32), 10.0);
        assert_eq!(prices.cost_usd(0u32, 1_000_000u32), 30.0);
        assert_eq!(prices.cost_usd(0u32, 0u32), 0.0);
        assert_eq!(TokenPrices::default().cost_usd(123u32, 456u32), 0.0);
    }

    #[test]
    fn summed_token_counts_cost_the_same_as_single_requests() {
        let prices = TokenPrices {
            input_usd_per_mtok: 0.15,
            output_usd_per_mtok: 0.6,
        };
        let one = prices.cost_usd(700u32, 300u32);
        let sum = prices.cost_usd(1400.0, 600.0);
        assert!((sum - 2.0 * one).abs() < 1e-15, "{sum} vs {one}");
        // Exact for whole counts: u32 converts to f64 without rounding.
        assert_eq!(
            prices.cost_usd(u32::MAX, u32::MAX),
            prices.cost_usd(f64::from(u32::MAX), f64::from(u32::MAX))
        );
    }

    #[test]
    fn spec_cost_uses_its_prices() {
        let s = spec(Tier::Large, 10.0, 30.0);
        assert_eq!(
            s.prices(),
            TokenPrices {
                input_usd_per_mtok: 10.0,
                output_usd_per_mtok: 30.0
            }
        );
        assert!((s.expected_cost_usd(1000, 500) - 0.025).abs() < 1e-15);
        assert!((spec(Tier::Small, 0.1, 0.1).expected_cost_usd(2000, 3000) - 0.0005).abs() < 1e-15);
    }

    #[test]
    fn prior_quality_falls_back_to_the_tier() {
        assert_eq!(spec(Tier::Small, 0.0, 0.0).prior_quality(), 0.55);
        assert_eq!(spec(Tier::Large, 0.0, 0.0).prior_quality(), 0.80);
        let known = ModelSpec {
            quality_prior: Some(0.3),
            ..spec(Tier::Large, 0.0, 0.0)
        };
        assert_eq!(known.prior_quality(), 0.3);
    }
}
