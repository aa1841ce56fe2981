//! routemesh's learned router: the encoder, the quality predictors and their
//! artifacts, which predict how well each model would answer a prompt. The
//! policies that turn predictions, cost and latency into a decision live in
//! the gateway (`routing::policy`).

pub mod artifact;
pub mod cli;
pub mod data;
pub mod embed;
pub mod encoder;
pub mod eval;
pub mod fast;
pub mod metrics;
pub mod predict;
pub mod router;

pub use crate::predict::QualityPredictor;
pub use crate::router::{EmbedPath, Router, RouterConfig, RouterError};
