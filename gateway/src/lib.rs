//! The routemesh gateway: the public gRPC API in front of a pool of model
//! workers, choosing a model and worker per request.

pub mod admin;
pub mod auth;
pub mod breaker;
pub mod config;
pub mod cost;
pub mod error;
pub mod grpc_auth;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod pool;
pub mod quality;
pub mod recent;
pub mod retry;
pub mod server;
pub mod service;
pub mod tenants;
pub mod tracing_setup;
pub mod transport;
pub mod up;
pub mod validate;

pub use config::{Config, ConfigError, GatewayConfig, RegistryConfig};
pub use server::{RunningGateway, start_gateway};
