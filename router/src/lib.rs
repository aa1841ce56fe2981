//! routemesh's routing brain at serving time: the learned model router
//! (encoder, fast path, quality predictors, artifact loading) and the policies
//! that turn predicted quality, cost and latency into a decision with its
//! explanation.
//!
//! No networking lives here: the gateway feeds in a view of the pool and gets
//! back a decision. Training, evaluation, metrics and their command line are
//! in `routemesh-router-train` (`router/train`), which only the binary links.

pub mod artifact;
pub mod embed;
pub mod encoder;
pub mod fast;
pub mod policy;
pub mod predict;
pub mod router;

pub use crate::policy::{
    CandidateScore, Decision, Hints, LeastLoaded, ModelSpec, NoCandidate, Policy, PolicyKind,
    Prediction, RouteInput, Tier, UtilityPolicy, WorkerView, decide_threshold,
};
pub use crate::predict::QualityPredictor;
pub use crate::router::{EmbedPath, Router, RouterConfig, RouterError};
