//! Choosing where a request goes: predicted quality (the learned router,
//! priors and feedback), the policy's decision with its explanation, and the
//! strategies that drive a request through one or more calls.

pub mod quality;
pub(crate) mod route;
pub(crate) mod strategy;
