//! The routemesh gateway: the public gRPC and OpenAI APIs in front of a pool
//! of model workers, choosing a model and worker per request.
//!
//! A request flows through the folders in order: `api/` (the edges) ->
//! `serve/` (admission, the one attempt loop, accounting, delivery) ->
//! `routing/` (quality, policy, strategy) -> `pool/` (workers, breakers,
//! transport); `tenancy/` (keys, limits, budgets, cost) is consulted on the
//! way. `server` assembles it; `up` runs a whole mesh in one process.

#![warn(unreachable_pub)]

pub(crate) mod api;
mod cache;
pub mod config;
pub mod error;
pub(crate) mod metrics;
pub mod pool;
mod redis_writes;
pub mod request;
pub mod routing;
pub(crate) mod serve;
pub mod server;
pub mod tenancy;
pub mod tracing_setup;
pub mod up;

pub use api::openai::parse_chat_body;
pub use config::{Config, ConfigError, GatewayConfig, RegistryConfig};
pub use server::{RunningGateway, start_gateway};
