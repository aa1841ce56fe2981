//! routemesh's routing brain: which model and worker should serve a request.
//!
//! No networking lives here: the gateway feeds in a view of the pool and gets
//! back a decision with its explanation.

pub mod policy;

pub use policy::{
    CandidateScore, Decision, Hints, LeastLoaded, ModelSpec, NoCandidate, Policy, PolicyKind,
    Prediction, RouteInput, Tier, UtilityPolicy, WorkerView,
};
