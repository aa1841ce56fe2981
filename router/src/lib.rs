//! routemesh's routing brain: the learned model router (encoder, quality
//! predictors, metrics, artifacts, CLI) and the policies that turn predicted
//! quality, cost and latency into a decision with its explanation.
//!
//! No networking lives here: the gateway feeds in a view of the pool and gets
//! back a decision.

pub mod artifact;
pub mod cli;
pub mod data;
pub mod embed;
pub mod encoder;
pub mod eval;
pub mod fast;
pub mod metrics;
pub mod policy;
pub mod predict;
pub mod router;

pub use crate::policy::{
    CandidateScore, Decision, Hints, LeastLoaded, NoCandidate, Policy, PolicyKind, Prediction,
    RouteInput, UtilityPolicy, WorkerView, decide_threshold,
};
pub use crate::predict::QualityPredictor;
pub use crate::router::{EmbedPath, Router, RouterConfig, RouterError};
