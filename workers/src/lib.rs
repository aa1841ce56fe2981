//! The routemesh worker agent: serves the Worker gRPC API in front of one
//! inference engine, announces itself to a registry and drains on shutdown.

pub mod admission;
pub mod backend;
pub mod config;
pub mod error;
pub mod server;
pub mod service;
mod spans;

pub use config::{BackendConfig, WorkerConfig};
pub use server::{RunningWorker, start_worker};
