//! routemesh-router: the learned model router (encoder, quality predictors, metrics, artifacts, CLI).
pub mod data;
pub mod encoder;
