//! The `gateway.strategy` and `gateway.cascade` settings: whether requests
//! are routed once (`single`) or cascaded (the cheap model first, its answer
//! verified, a stronger model called only when the answer looks weak).

use serde::{Deserialize, Serialize};

/// How the gateway drives a request through its workers.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// One routing decision before any model runs (RouteLLM-style).
    #[default]
    Single,
    /// Answer with a cheap model first; escalate when a verifier judges its
    /// answer weak (AutoMix, FrugalGPT). See `gateway.cascade`.
    Cascade,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Single => "single",
            StrategyKind::Cascade => "cascade",
        }
    }
}

/// Which verifier judges a cascade step's answer.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum VerifierKind {
    /// The router artifact's learned answer scorer: P(good) from the prompt
    /// and the answer (FrugalGPT-style). Costs no model call.
    #[default]
    Learned,
    /// The engine's token log-probabilities (mean and lowest), through a
    /// logistic calibration. Needs engines that return log-probabilities.
    Confidence,
    /// The cheap model asked, with a few-shot verification prompt, whether
    /// its answer is correct; the share of "correct" verdicts over `samples`
    /// calls (AutoMix). Each sample is a billed call.
    SelfCheck,
    /// The mean of the learned scorer and engine confidence, each where it
    /// can judge.
    Combined,
}

impl VerifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifierKind::Learned => "learned",
            VerifierKind::Confidence => "confidence",
            VerifierKind::SelfCheck => "self-check",
            VerifierKind::Combined => "combined",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// Models called at most per request (the first answer and its
    /// escalations). At least 2.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default)]
    pub verifier: VerifierKind,
    /// The verifier score an answer needs to be returned. A request's
    /// `quality_floor` hint overrides it. Unset: the learned verifier's
    /// threshold for `target_escalation_share`, else 0.5.
    #[serde(default)]
    pub accept_threshold: Option<f64>,
    /// With the learned verifier and no `accept_threshold`: the share of
    /// first answers to escalate, as measured on the verifier's training
    /// answers (a budget knob: escalations cost a second call).
    #[serde(default)]
    pub target_escalation_share: Option<f64>,
    /// Cascade routing: when the router predicts every cheap model's quality
    /// under this, the cheap step is skipped and the request goes straight to
    /// a stronger model (its answer would most likely be escalated anyway;
    /// skipping saves that call and its latency). Unset: never skipped.
    #[serde(default)]
    pub direct_below: Option<f64>,
    /// What an unjudgeable answer (an engine that gave no log-probabilities,
    /// no learned verifier, an unparseable verdict) counts as: escalated by
    /// default, so a misconfigured verifier shows as cost, not as quietly
    /// lower quality.
    #[serde(default)]
    pub unverifiable: Unverifiable,
    /// Cascade routing for the pair the learned verifier's gap adjustment
    /// was fitted on (GPT-4/Mixtral in the default artifact): the cheap
    /// model's score is adjusted by the router's predicted quality gap, so a
    /// prompt the router thinks needs the strong model needs a surer answer
    /// to be accepted (cross-validated: cascade APGR 0.795 against 0.761).
    #[serde(default = "yes")]
    pub use_router_gap: bool,
    #[serde(default)]
    pub self_check: SelfCheckConfig,
    #[serde(default)]
    pub confidence: ConfidenceConfig,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        serde_norway::from_str("{}").unwrap_or_else(|_| unreachable!("empty cascade config parses"))
    }
}

/// What an answer no verifier could judge counts as.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Unverifiable {
    #[default]
    Escalate,
    Accept,
}

/// AutoMix-style self-verification.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfCheckConfig {
    /// Verification calls per answer; the score is the share judged correct.
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// Sampling temperature of the verification calls (AutoMix samples at 1).
    #[serde(default = "default_self_check_temperature")]
    pub temperature: f32,
    /// Tokens each verdict may take.
    #[serde(default = "default_verdict_tokens")]
    pub max_tokens: u32,
}

impl Default for SelfCheckConfig {
    fn default() -> Self {
        Self {
            samples: default_samples(),
            temperature: default_self_check_temperature(),
            max_tokens: default_verdict_tokens(),
        }
    }
}

/// P(good) = logistic(bias + mean_weight * mean log-prob + min_weight *
/// lowest log-prob). The defaults put 0.5 at a mean log-prob of about -0.35
/// (a model picking tokens it gives 70% on average); no routing data here
/// carries log-probabilities, so they are a reasoned start, not a fit: set
/// them from your engine's answers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfidenceConfig {
    #[serde(default = "default_confidence_bias")]
    pub bias: f64,
    #[serde(default = "default_mean_weight")]
    pub mean_weight: f64,
    #[serde(default = "default_min_weight")]
    pub min_weight: f64,
}

impl Default for ConfidenceConfig {
    fn default() -> Self {
        Self {
            bias: default_confidence_bias(),
            mean_weight: default_mean_weight(),
            min_weight: default_min_weight(),
        }
    }
}

impl CascadeConfig {
    /// The first invalid setting, as (key under `gateway.cascade`, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("gateway.cascade.{key}"), message));
        if self.max_steps < 2 {
            return bad(
                "max_steps",
                format!(
                    "{} must be at least 2 (one answer and one escalation)",
                    self.max_steps
                ),
            );
        }
        for (key, value) in [
            ("accept_threshold", self.accept_threshold),
            ("target_escalation_share", self.target_escalation_share),
            ("direct_below", self.direct_below),
        ] {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return bad(key, format!("{v} must be in [0, 1]"));
            }
        }
        if self.self_check.samples == 0 || self.self_check.samples > 10 {
            return bad(
                "self_check.samples",
                format!("{} must be between 1 and 10", self.self_check.samples),
            );
        }
        if !(0.0..=2.0).contains(&self.self_check.temperature) {
            return bad(
                "self_check.temperature",
                format!("{} must be in [0, 2]", self.self_check.temperature),
            );
        }
        if self.self_check.max_tokens == 0 {
            return bad("self_check.max_tokens", "must be at least 1".into());
        }
        let c = &self.confidence;
        for (key, v) in [
            ("confidence.bias", c.bias),
            ("confidence.mean_weight", c.mean_weight),
            ("confidence.min_weight", c.min_weight),
        ] {
            if !v.is_finite() {
                return bad(key, format!("{v} must be a finite number"));
            }
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn default_max_steps() -> u32 {
    2
}
fn default_samples() -> u32 {
    3
}
fn default_self_check_temperature() -> f32 {
    1.0
}
fn default_verdict_tokens() -> u32 {
    16
}
fn default_confidence_bias() -> f64 {
    3.0
}
fn default_mean_weight() -> f64 {
    8.0
}
fn default_min_weight() -> f64 {
    0.05
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<CascadeConfig, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_settings_are_named() {
        let invalid = |yaml: &str| parse(yaml).unwrap_or_default().validate().unwrap_err();
        assert_eq!(invalid("{max_steps: 1}").0, "gateway.cascade.max_steps");
        let (key, why) = invalid("{accept_threshold: 1.5}");
        assert_eq!(key, "gateway.cascade.accept_threshold");
        assert!(why.contains("[0, 1]"), "{why}");
        assert_eq!(
            invalid("{self_check: {samples: 0}}").0,
            "gateway.cascade.self_check.samples"
        );
        // Unknown keys and verifiers are refused when parsed, naming them.
        assert!(parse("{verifier: oracle}").unwrap_err().contains("oracle"));
        assert!(parse("{max_step: 3}").unwrap_err().contains("max_step"));
        assert!(CascadeConfig::default().validate().is_ok());
    }
}
