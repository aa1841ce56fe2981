//! What the gateway records: one line per request, one per feedback score.

use serde::{Deserialize, Serialize};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The worker or engine failed (its fault, not the client's).
    WorkerError,
    /// The request ran out of time.
    Timeout,
    /// The worker refused for lack of capacity.
    Overloaded,
    /// The client went away before the answer was complete: nobody's fault,
    /// and not counted as an error. What was generated is still charged.
    Cancelled,
}

/// One served (or failed) request at one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// When it finished, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub tenant: String,
    pub model: String,
    pub worker_id: String,
    pub outcome: Outcome,
    pub ttft_ms: f64,
    pub total_ms: f64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_usd: f64,
    /// A follow-up call of a request another call answers too: a cascade's
    /// escalation after a weak answer, or a verification question. Its
    /// tokens are spend but not counterfactual: a request's counterfactual
    /// is counted once, on its first answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_up: bool,
    /// A call that failed before any model ran, after which the request
    /// moved on to another worker: an attempt, not a client request (the
    /// call that ended the request counts it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed_over: bool,
}

impl RequestRecord {
    /// True when this call is the one that counts its client request: not a
    /// failed-over attempt, nor a follow-up of a request its first answer
    /// counted.
    pub fn counts_request(&self) -> bool {
        !self.follow_up && !self.failed_over
    }

    /// Milliseconds per output token after the first, when there is more than one.
    pub fn time_per_output_token_ms(&self) -> Option<f64> {
        (self.completion_tokens > 1 && self.total_ms > self.ttft_ms)
            .then(|| (self.total_ms - self.ttft_ms) / f64::from(self.completion_tokens - 1))
    }
}

/// A quality score for a served request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEvent {
    pub at_ms: u64,
    pub model: String,
    /// Whose routing the score moves: `*` (every tenant's: a trusted
    /// tenant's feedback) or the scoring tenant's own scope. Feedback is
    /// kept per (model, scope) and per model.
    pub scope: String,
    pub score: f64,
    /// The earlier score of the same request that this one replaces (one
    /// score per request). `at_ms` is then the earlier score's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<f64>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
