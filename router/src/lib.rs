//! routemesh's learned router at serving time: the encoder, the fast path,
//! the quality predictors and artifact loading, which predict how well each
//! model would answer a prompt, and the answer verifier of cascades (`verify`). No networking lives here. The policies that
//! turn predictions, cost and latency into a decision live in the gateway
//! (`routing::policy`); training, evaluation, metrics and their command line
//! are in `routemesh-router-train` (`router/train`), which only the binary
//! links.

pub mod artifact;
pub mod embed;
pub mod encoder;
pub mod fast;
pub mod names;
pub mod onboard;
pub mod predict;
pub mod router;
pub mod verify;

pub use crate::predict::QualityPredictor;
pub use crate::router::{EmbedPath, EmbeddingSpace, Router, RouterConfig, RouterError};
pub use crate::verify::{AnswerVerifier, VerifyInput};
