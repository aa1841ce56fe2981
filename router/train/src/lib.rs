//! Training side of routemesh's learned router: routing data and its cost model, fitting the predictors,
//! writing artifacts, cross-validated evaluation, the route_eval.py metrics, and the
//! `routemesh router ...` command line (train, eval, score, calibrate, predict, onboard), the cascade's
//! acceptance threshold calibrated on recorded answers, and the leave-one-model-out evaluation of
//! onboarding a model from scores (`onboard_eval`).
//!
//! The serving path never links this crate: the gateway library uses `routemesh-router` (encoder, fast
//! path, predictors' inference, artifact loading) and only the `routemesh` binary's `router` subcommand
//! calls into here.

pub mod cascade_threshold;
pub mod cli;
pub mod data;
pub mod distill;
pub mod eval;
pub mod fit;
pub mod metrics;
pub mod onboard_eval;
pub mod save;
pub mod verifier;
