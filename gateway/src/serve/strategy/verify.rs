//! Verifiers: how a cascade judges an answer before returning it. Each says
//! P(the answer is good) in [0, 1], or that it cannot judge (an engine that
//! gave no log-probabilities, an artifact without a learned scorer, verdicts
//! it could not read). The cascade compares the score with its acceptance
//! threshold.

use routemesh_proto::v1::{AnswerConfidence, ChatMessage, GenerationParams};

use crate::config::{CascadeConfig, ConfidenceConfig, SelfCheckConfig, VerifierKind};
use crate::error::GatewayError;
use crate::serve::attempt::{Answer, Delivery, Flight, Step};

/// An answer to judge.
pub(crate) struct Judged<'a> {
    pub(crate) model: &'a str,
    /// The prompt the answer answers (the last user turn).
    pub(crate) prompt: &'a str,
    pub(crate) answer: &'a str,
    /// The engine's log-probability summary, when it gave one.
    pub(crate) confidence: Option<&'a AnswerConfidence>,
}

/// A verifier's judgement, with what it cost (a self-check calls models).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Judgement {
    pub(crate) score: Option<f64>,
    pub(crate) cost_usd: f64,
    /// The learned score was adjusted for the router's predicted gap
    /// (cascade routing): its thresholds are the adjusted ones.
    pub(crate) gap_adjusted: bool,
}

#[derive(Debug)]
pub(crate) struct Verifier {
    kind: VerifierKind,
    use_router_gap: bool,
    confidence: ConfidenceConfig,
    self_check: SelfCheckConfig,
}

impl Verifier {
    pub(crate) fn new(config: &CascadeConfig) -> Self {
        Self {
            kind: config.verifier,
            use_router_gap: config.use_router_gap,
            confidence: config.confidence.clone(),
            self_check: config.self_check.clone(),
        }
    }

    pub(crate) fn id(&self) -> &'static str {
        self.kind.as_str()
    }

    pub(crate) fn kind(&self) -> VerifierKind {
        self.kind
    }

    /// Whether the answer's call should ask the engine for log-probabilities.
    pub(crate) fn wants_logprobs(&self) -> bool {
        matches!(self.kind, VerifierKind::Confidence | VerifierKind::Combined)
    }

    pub(crate) async fn judge(
        &self,
        flight: &mut Flight,
        judged: &Judged<'_>,
    ) -> Result<Judgement, GatewayError> {
        if self.kind == VerifierKind::SelfCheck {
            return self.self_check(flight, judged).await;
        }
        let learned = || async {
            let predicted = flight
                .predicted
                .as_ref()
                .and_then(|p| p.scores.get(judged.model).copied());
            let quality = &flight.state.routing.quality;
            let score = quality
                .verify_answer(judged.model, judged.prompt, judged.answer, predicted)
                .await?;
            let adjusted = self
                .use_router_gap
                .then(|| quality.adjust_for_gap(judged.model, score, flight.predicted.as_ref()))
                .flatten();
            Some(adjusted.map_or((score, false), |a| (a, true)))
        };
        let confidence = || judged.confidence.and_then(|c| self.confidence_score(c));
        let (score, gap_adjusted) = match self.kind {
            VerifierKind::Learned => learned().await.map_or((None, false), |(s, a)| (Some(s), a)),
            VerifierKind::Confidence => (confidence(), false),
            // The mean of the probabilities each can give (the learned one
            // gap-adjusted where that applies).
            VerifierKind::Combined => {
                let scores: Vec<f64> = [learned().await.map(|(s, _)| s), confidence()]
                    .into_iter()
                    .flatten()
                    .collect();
                let mean =
                    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
                (mean, false)
            }
            VerifierKind::SelfCheck => (None, false),
        };
        Ok(Judgement {
            score,
            cost_usd: 0.0,
            gap_adjusted,
        })
    }

    /// Engine confidence through the configured logistic; `None` for an
    /// answer of no tokens (nothing to be sure of).
    fn confidence_score(&self, c: &AnswerConfidence) -> Option<f64> {
        if c.tokens == 0 || !c.mean_logprob.is_finite() || !c.min_logprob.is_finite() {
            return None;
        }
        let k = &self.confidence;
        let z = k.bias + k.mean_weight * c.mean_logprob + k.min_weight * c.min_logprob;
        Some(1.0 / (1.0 + (-z).exp()))
    }

    /// AutoMix: the answering model is asked `samples` times whether its
    /// answer is correct; the score is the share of "correct" verdicts among
    /// those it could read. Every sample is a billed call to that model.
    async fn self_check(
        &self,
        flight: &mut Flight,
        judged: &Judged<'_>,
    ) -> Result<Judgement, GatewayError> {
        let step = Step {
            models: Some(vec![judged.model.to_string()]),
            messages: Some(verification_prompt(judged.prompt, judged.answer)),
            params: Some(GenerationParams {
                max_tokens: Some(self.self_check.max_tokens),
                temperature: Some(self.self_check.temperature),
                ..GenerationParams::default()
            }),
            follow_up: true,
            ..Step::default()
        };
        let mut judgement = Judgement::default();
        let (mut correct, mut read) = (0u32, 0u32);
        for _ in 0..self.self_check.samples {
            let response = match flight.call(&step, Delivery::Whole).await {
                Ok(Answer::Whole { response, .. }) => response,
                Ok(Answer::Stream(_)) => continue,
                // Out of time: the request is over.
                Err(e @ GatewayError::Deadline(_)) => return Err(e),
                // A verdict that could not be had is no verdict: the answer
                // in hand is judged on the others (or is unverifiable).
                Err(e) => {
                    tracing::info!(error = %e, "a self-check call failed; judging without it");
                    continue;
                }
            };
            judgement.cost_usd += response.usage.as_ref().map_or(0.0, |u| u.cost_usd);
            if let Some(verdict) = read_verdict(&response.text) {
                read += 1;
                correct += u32::from(verdict);
            }
        }
        judgement.score = (read > 0).then(|| f64::from(correct) / f64::from(read));
        Ok(judgement)
    }
}

/// AutoMix's few-shot verification prompt: the model judges whether an
/// answer follows from the question, one worked example each way first.
fn verification_prompt(question: &str, answer: &str) -> Vec<ChatMessage> {
    const INSTRUCTION: &str = "You check answers. Read the question and the proposed answer, \
        work out whether the answer is correct and consistent with the question, then reply \
        with one word: Correct or Incorrect.";
    let user = |content: String| ChatMessage {
        role: "user".into(),
        content,
        ..Default::default()
    };
    let assistant = |content: &str| ChatMessage {
        role: "assistant".into(),
        content: content.into(),
        ..Default::default()
    };
    let case = |q: &str, a: &str| format!("Question: {q}\n\nProposed answer: {a}\n\nVerdict:");
    vec![
        ChatMessage {
            role: "system".into(),
            content: INSTRUCTION.into(),
            ..Default::default()
        },
        user(case(
            "Tom has 3 boxes of 12 pencils and gives away 5 pencils. How many are left?",
            "3 boxes of 12 is 36 pencils; 36 - 5 = 31. #### 31",
        )),
        assistant("Correct"),
        user(case(
            "A shirt costs $20 and is discounted by 25%. What does it cost now?",
            "25% of 20 is 4, so it costs 20 - 4 = $16. #### 16",
        )),
        assistant("Incorrect"),
        user(case(question, answer)),
    ]
}

/// "Correct" -> true, "Incorrect" -> false, from the verdict's first word
/// that says either; `None` when it says neither.
fn read_verdict(text: &str) -> Option<bool> {
    text.split(|c: char| !c.is_alphabetic())
        .map(str::to_ascii_lowercase)
        .find_map(|word| match word.as_str() {
            "correct" | "yes" | "consistent" => Some(true),
            "incorrect" | "no" | "inconsistent" | "wrong" => Some(false),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_their_first_deciding_word() {
        assert_eq!(read_verdict("Correct."), Some(true));
        assert_eq!(read_verdict(" incorrect: 20% of 20 is 4"), Some(false));
        assert_eq!(read_verdict("The answer is wrong"), Some(false));
        assert_eq!(read_verdict("Verdict: Yes"), Some(true));
        assert_eq!(read_verdict("banana"), None);
        assert_eq!(read_verdict(""), None);
    }

    #[test]
    fn confidence_maps_log_probs_through_the_logistic() {
        let v = Verifier::new(&CascadeConfig::default());
        let sure = AnswerConfidence {
            tokens: 10,
            mean_logprob: -0.05,
            min_logprob: -0.5,
        };
        let unsure = AnswerConfidence {
            tokens: 10,
            mean_logprob: -2.5,
            min_logprob: -6.0,
        };
        // By hand with the defaults (bias 3, mean 8, min 0.05):
        // z = 3 - 0.4 - 0.025 = 2.575 -> 0.9292; z = 3 - 20 - 0.3 = -17.3 -> 3.1e-8.
        let s = v.confidence_score(&sure).unwrap();
        assert!((s - 1.0 / (1.0 + (-2.575f64).exp())).abs() < 1e-12, "{s}");
        assert!(v.confidence_score(&unsure).unwrap() < 1e-6);
        let empty = AnswerConfidence::default();
        assert_eq!(v.confidence_score(&empty), None);
    }

    #[test]
    fn the_verification_prompt_ends_with_the_answer_to_judge() {
        let messages = verification_prompt("What is 2+2?", "5");
        let last = messages.last().unwrap();
        assert_eq!(last.role, "user");
        assert!(
            last.content.contains("What is 2+2?") && last.content.contains("Proposed answer: 5")
        );
        assert_eq!(messages[0].role, "system");
    }
}
