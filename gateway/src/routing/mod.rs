//! Choosing where a request goes: predicted quality (the learned router,
//! priors and feedback) and the policy's decision with its explanation. Pure
//! decisions: nothing here calls a worker (strategies, which do, live in
//! `serve/`).

pub(crate) mod affinity;
pub mod feedback;
pub mod policy;
pub mod quality;
pub(crate) mod route;
mod view;

use self::policy::Policy;

use self::quality::QualityModel;

/// The routing brain of a gateway: the configured policy and the quality
/// model (the learned router, or priors), with the telemetry settings that
/// decide how much observations and feedback count.
pub struct Routing {
    pub policy: Box<dyn Policy>,
    pub quality: QualityModel,
    /// Calls a worker must have served before its observed speed is used.
    pub(crate) min_requests: f64,
    /// How many feedback scores a prediction is worth.
    pub(crate) feedback_prior_weight: f64,
    /// Feedback exemplars (shared through Redis in a mesh).
    pub(crate) feedback: std::sync::Arc<feedback::SharedFeedback>,
    /// Feedback older than this is ignored (`telemetry.feedback_days`).
    pub(crate) feedback_max_age_ms: u64,
}

impl Routing {
    /// `min_requests`: calls a worker must have served before its observed
    /// speed counts; `feedback_prior_weight`: how many feedback scores a
    /// prediction is worth.
    pub(crate) fn new(
        policy: Box<dyn Policy>,
        quality: QualityModel,
        min_requests: u32,
        feedback_prior_weight: f64,
        feedback: std::sync::Arc<feedback::SharedFeedback>,
        feedback_days: u32,
    ) -> Self {
        Self {
            policy,
            quality,
            min_requests: f64::from(min_requests),
            feedback_prior_weight,
            feedback,
            feedback_max_age_ms: u64::from(feedback_days.max(1)) * 86_400_000,
        }
    }
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("policy", &self.policy.name())
            .finish()
    }
}
