//! The shared ground under the routemesh gateway and its workers: model tiers
//! and specs with the one price formula, worker records and the registry they
//! are announced to, the Redis connection with its versioned key prefix, TLS
//! from reloading PEM files, W3C trace context and the OpenTelemetry GenAI
//! span conventions, and producer-driven streams.
//!
//! Nothing here knows about routing or inference, so the worker agent links
//! this instead of the router (the ML crate) and the router links it for the
//! tier and price of a model.

mod capabilities;
pub mod config_schema;
pub mod conn;
pub mod driven;
pub mod genai;
mod model;
mod redis_conn;
mod registry;
mod tier;
pub mod tls;
pub mod trace_context;

pub use capabilities::{Capabilities, DeclaredCapabilities, Lack, Needs};
pub use model::{ModelSpec, ROUTER_MODEL, TokenPrices};
pub use redis_conn::{
    Patience, RedisConn, RedisEndpoint, RedisHandle, RedisTls, key_prefix, spread_key_prefix,
};
pub use registry::{
    MemoryRegistry, RedisRegistry, Registry, RegistryError, WorkerRecord, check_declared_speed,
    check_model_identity,
};
pub use tier::{ParseTierError, Tier};
