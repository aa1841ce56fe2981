//! routemesh-router: the learned model router (encoder, quality predictors, metrics, artifacts, CLI).
pub mod cli;
pub mod data;
pub mod embed;
pub mod encoder;
pub mod metrics;
pub mod predict;
