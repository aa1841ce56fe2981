//! Bringing up a mesh from a configuration: the registry it names, the
//! workers it lists, and (for `routemesh up` and `routemesh gateway`) a gateway.

use std::sync::Arc;

use routemesh_mesh::{
    Capabilities, MemoryRegistry, RedisRegistry, Registry, RegistryError, WorkerRecord,
};
use routemesh_worker::server::WorkerError;
use routemesh_worker::{RunningWorker, start_worker};

use routemesh_telemetry::{RedisStore, Telemetry};

use crate::config::Config;
use crate::pool::transport::LocalWorkers;
use crate::server::{RunningGateway, ServeError, start_gateway};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("worker {index}: {source}")]
    Worker { index: usize, source: WorkerError },
    #[error("tenant limits (Redis): {0}")]
    Limits(redis::RedisError),
    #[error("feedback memory (Redis): {0}")]
    Feedback(redis::RedisError),
    #[error("request and session state (Redis): {0}")]
    RequestState(redis::RedisError),
    #[error("telemetry: {0}")]
    Telemetry(#[from] routemesh_telemetry::StoreError),
    #[error("gateway: {0}")]
    Gateway(#[from] ServeError),
    #[error("API keys: {0}")]
    Keys(crate::tenancy::keys::KeyStoreError),
}

/// Connects the registry a configuration names. `memory` holds the static
/// workers; a gateway and workers in one process share it.
pub async fn connect_registry(config: &Config) -> Result<Arc<dyn Registry>, UpError> {
    Ok(match &config.registry.redis {
        None => Arc::new(MemoryRegistry::with_static(
            config.static_workers.iter().map(|w| WorkerRecord {
                id: w.id.clone(),
                model: w.model.clone(),
                tier: w.tier,
                endpoint: w.endpoint.clone(),
                capacity: w.capacity,
                max_queue: w.max_queue,
                input_usd_per_mtok: w.input_usd_per_mtok,
                output_usd_per_mtok: w.output_usd_per_mtok,
                quality_prior: w.quality_prior,
                router_model: w.router_model.clone(),
                params_b: w.params_b,
                backend: "static".into(),
                simulated: false,
                expected_ttft_ms: w.expected_ttft_ms,
                expected_tokens_per_second: w.expected_tokens_per_second,
                capabilities: Some(Capabilities::UNDECLARED.overridden(&w.capabilities)),
            }),
        )),
        Some(r) => Arc::new(RedisRegistry::connect(r.endpoint(), &r.mesh).await?),
    })
}

/// The telemetry store every replica shares: Redis when the registry is.
pub async fn shared_telemetry(config: &Config) -> Result<Option<Telemetry>, UpError> {
    match &config.registry.redis {
        None => Ok(None),
        Some(r) => {
            let store = RedisStore::connect(r.endpoint(), &r.mesh).await?;
            Ok(Some(Telemetry::new(Arc::new(store))))
        }
    }
}

/// What a running `routemesh` process serves.
#[derive(Debug, Default)]
pub struct Mesh {
    pub gateway: Option<RunningGateway>,
    pub workers: Vec<RunningWorker>,
}

impl Mesh {
    /// Starts the configured workers and, if `with_gateway`, a gateway.
    pub async fn start(
        config: &Config,
        with_workers: bool,
        with_gateway: bool,
    ) -> Result<Self, UpError> {
        let registry = connect_registry(config).await?;
        let mut mesh = Mesh::default();
        if with_workers {
            for (index, worker) in config.workers.iter().enumerate() {
                match start_worker(worker.clone(), registry.clone()).await {
                    Ok(w) => mesh.workers.push(w),
                    Err(source) => {
                        mesh.shutdown().await;
                        return Err(UpError::Worker { index, source });
                    }
                }
            }
        }
        if with_gateway {
            let telemetry = match shared_telemetry(config).await {
                Ok(t) => t,
                Err(e) => {
                    mesh.shutdown().await;
                    return Err(e);
                }
            };
            let limits = match &config.registry.redis {
                Some(r) if config.gateway.tenants.values().any(|t| t.has_limits()) => {
                    match crate::tenancy::limits::Limits::redis(
                        r.endpoint(),
                        &r.mesh,
                        &config.gateway.tenants,
                        config.gateway.limits_fail_open,
                    )
                    .await
                    {
                        Ok(l) => Some(l),
                        Err(e) => {
                            mesh.shutdown().await;
                            return Err(UpError::Limits(e));
                        }
                    }
                }
                _ => None,
            };
            let keys = match (&config.registry.redis, config.gateway.auth.redis) {
                (Some(r), true) => {
                    let store =
                        crate::tenancy::keys::RedisKeys::connect(r.endpoint(), &r.mesh).await;
                    match store
                        .map(|s| crate::tenancy::auth::ApiKeys::with_redis(&config.gateway.auth, s))
                    {
                        Ok(Ok(keys)) => Some(keys),
                        Ok(Err((key, why))) => {
                            mesh.shutdown().await;
                            return Err(UpError::Gateway(ServeError::Config(format!(
                                "{key}: {why}"
                            ))));
                        }
                        Err(e) => {
                            mesh.shutdown().await;
                            return Err(UpError::Keys(e));
                        }
                    }
                }
                _ => None,
            };
            // The gateway calls this process's own workers without the
            // network; they still serve on their ports for anyone else.
            let local = if config.gateway.in_process_workers {
                LocalWorkers::new(&mesh.workers)
            } else {
                LocalWorkers::default()
            };
            let feedback = match &config.registry.redis {
                Some(r) => {
                    let memory = Arc::new(crate::routing::feedback::FeedbackMemory::new(
                        config.gateway.feedback_memory.clone(),
                    ));
                    match crate::routing::feedback::SharedFeedback::redis(
                        memory,
                        r.endpoint(),
                        &r.mesh,
                    )
                    .await
                    {
                        Ok(f) => Some(f),
                        Err(e) => {
                            mesh.shutdown().await;
                            return Err(UpError::Feedback(e));
                        }
                    }
                }
                None => None,
            };
            let request_state = match &config.registry.redis {
                Some(r) => {
                    // Short timeouts: a later turn reads its session on the
                    // request path.
                    let patience = routemesh_mesh::Patience {
                        connect_timeout: std::time::Duration::from_millis(500),
                        response_timeout: std::time::Duration::from_millis(500),
                        retries: 1,
                        max_retry_delay: None,
                    };
                    match routemesh_mesh::RedisConn::connect(r.endpoint(), &r.mesh, patience).await
                    {
                        Ok(conn) => Some(conn),
                        Err(e) => {
                            mesh.shutdown().await;
                            return Err(UpError::RequestState(e));
                        }
                    }
                }
                _ => None,
            };
            let shared = crate::server::SharedStores {
                telemetry,
                limits,
                keys,
                feedback,
                request_state,
            };
            match start_gateway(config.gateway.clone(), registry, local, shared).await {
                Ok(g) => mesh.gateway = Some(g),
                Err(e) => {
                    mesh.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        Ok(mesh)
    }

    /// Drains the gateway first (so it sends no new work), then the workers.
    pub async fn shutdown(self) {
        if let Some(gateway) = self.gateway
            && let Err(e) = gateway.shutdown().await
        {
            tracing::warn!(error = %e, "gateway stopped with an error");
        }
        let stops = self.workers.into_iter().map(|w| async move {
            let id = w.id.clone();
            if let Err(e) = w.shutdown().await {
                tracing::warn!(worker = %id, error = %e, "worker stopped with an error");
            }
        });
        futures::future::join_all(stops).await;
    }

    /// A JSON description of what is serving where, for `--ready-file`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "gateway": self.gateway.as_ref().map(|g| g.addr.to_string()),
            "http": self.gateway.as_ref().and_then(|g| g.http_addr).map(|a| a.to_string()),
            "admin": self.gateway.as_ref().and_then(|g| g.admin_addr).map(|a| a.to_string()),
            "workers": self.workers.iter().map(|w| serde_json::json!({"id": w.id, "endpoint": w.endpoint})).collect::<Vec<_>>(),
            "pid": std::process::id(),
        })
    }
}
