//! routemesh-router: the learned model router (encoder, quality predictors, metrics, artifacts, CLI).
pub mod artifact;
pub mod cli;
pub mod data;
pub mod embed;
pub mod encoder;
pub mod eval;
pub mod metrics;
pub mod predict;
pub mod router;

pub use crate::predict::QualityPredictor;
pub use crate::router::{Router, RouterConfig, RouterError};
