//! The worker agent's lifecycle: bind, serve, announce with a heartbeat, and
//! drain on shutdown (stop taking work, withdraw, finish in-flight requests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use routemesh_proto::v1::worker_server::WorkerServer;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, LocalBackend, OpenAiBackend, SimBackend};
use crate::config::{BackendChoice, WorkerConfig};
use crate::service::{WorkerService, WorkerState};
use routemesh_mesh::{Registry, WorkerRecord, conn, tls};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A worker agent that is serving.
#[derive(Debug)]
pub struct RunningWorker {
    pub id: String,
    pub addr: SocketAddr,
    pub endpoint: String,
    /// The Worker service this agent serves on `addr`, for a gateway in the
    /// same process to call without the network.
    service: WorkerServer<WorkerService>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Drains and stops the worker; returns once it has.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the worker stops (after a shutdown or a server failure).
    pub async fn wait(self) -> Result<(), WorkerError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(WorkerError::Config(format!("worker task failed: {e}"))),
        }
    }

    /// The Worker service itself, the very one the network server runs (same
    /// state, admission and draining), for a caller in this process. It
    /// answers as a draining worker once this agent drains or stops.
    pub fn in_process_service(&self) -> WorkerServer<WorkerService> {
        self.service.clone()
    }
}

async fn build_backend(config: &WorkerConfig) -> Result<Arc<dyn Backend>, WorkerError> {
    Ok(
        match config.backend.choice().map_err(WorkerError::Config)? {
            BackendChoice::Openai(c) => {
                Arc::new(OpenAiBackend::new(c, &config.model).map_err(WorkerError::Config)?)
            }
            BackendChoice::Sim(c) => {
                Arc::new(SimBackend::new(c.clone(), &config.model).map_err(WorkerError::Config)?)
            }
            BackendChoice::Local(c) => Arc::new(
                LocalBackend::load(c, config.capacity)
                    .await
                    .map_err(WorkerError::Config)?,
            ),
        },
    )
}

/// Binds, announces and serves `config` until the returned worker is shut down.
pub async fn start_worker(
    config: WorkerConfig,
    registry: Arc<dyn Registry>,
) -> Result<RunningWorker, WorkerError> {
    config.validate().map_err(WorkerError::Config)?;
    let backend = build_backend(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WorkerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WorkerError::Bind {
        addr: config.listen,
        source,
    })?;
    let id = config.worker_id();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let (expected_ttft_ms, expected_tokens_per_second) = config.declared_speed();
    let record = WorkerRecord {
        id: id.clone(),
        model: config.model.clone(),
        tier: config.tier,
        endpoint: endpoint.clone(),
        capacity: config.capacity,
        max_queue: config.max_queue,
        input_usd_per_mtok: config.input_usd_per_mtok,
        output_usd_per_mtok: config.output_usd_per_mtok,
        quality_prior: config.quality_prior,
        router_model: config.router_model.clone(),
        params_b: config.params_b,
        backend: backend.kind().to_string(),
        simulated: backend.simulated(),
        expected_ttft_ms,
        expected_tokens_per_second,
        capabilities: Some(backend.capabilities().overridden(&config.capabilities)),
    };
    let state = WorkerState::new(record, backend);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkerServer<WorkerService>>().await;

    let shutdown = CancellationToken::new();
    let stop_serving = CancellationToken::new();
    // TLS is terminated here (not by tonic) so that certificate files can
    // be swapped while serving; the watcher and acceptor stop with the server.
    let stop_tls = CancellationToken::new();
    let mut tls_tasks = Vec::new();
    let service = WorkerServer::new(WorkerService::new(state.clone()));
    let limits = config.connections;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // A gateway multiplexes thousands of requests over one connection.
        // h2's guards against abusive peers count small DATA frames not yet
        // read (a budget of half the connection window) and streams reset
        // before they were accepted (20 by default); when this agent is
        // saturated, a gateway's ordinary traffic (small gRPC messages;
        // calls cancelled at their deadline) trips them, and the GOAWAY
        // fails every call on the connection at once. The peers here are
        // the mesh's own gateways: give the guards room for their load.
        .initial_connection_window_size(Some(WORKER_CONNECTION_WINDOW))
        .http2_max_pending_accept_reset_streams(Some(WORKER_PENDING_RESETS))
        .layer(conn::TrackRequestsLayer::tonic())
        .add_service(health_service)
        .add_service(routemesh_proto::reflection_v1()?)
        .add_service(routemesh_proto::reflection_v1alpha()?)
        .add_service(service.clone());
    let signal = stop_serving.clone().cancelled_owned();
    // The acceptor ends with the server that reads from it (or with the stop).
    let (admitted, _acceptor) =
        conn::accept_guarded(listener, limits, "worker", stop_serving.child_token());
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match &config.tls {
        Some(tls_files) => {
            let (certs, watcher) = tls::watch(
                tls_files,
                "tls",
                |pem| tls::server_config(pem, &[b"h2"]),
                stop_tls.child_token(),
            )
            .map_err(|e| WorkerError::Config(e.to_string()))?;
            let (accepted, acceptor) =
                tls::accept_tls(admitted, move || certs.current(), stop_tls.child_token());
            tls_tasks.extend([watcher, acceptor]);
            let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted)
                .map(|(tls, _)| Ok::<_, std::io::Error>(tls));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
        None => {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(admitted)
                .map(|(tcp, _)| Ok::<_, std::io::Error>(tcp));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };
    let server = tokio::spawn(async move {
        // Cancels the TLS tasks however this ends, aborted included.
        let stop_tls = stop_tls.drop_guard();
        let result = server.await;
        drop(stop_tls);
        for task in tls_tasks {
            let _ = task.await;
        }
        result
    });

    let ttl = config.registration_ttl;
    // An engine still loading its model (minutes, for a large one) is not
    // announced until it answers.
    let mut engine = EngineWatch::default();
    engine
        .probe(&state, &*registry, &health, probe_timeout(ttl))
        .await;
    // Announce before returning, so a caller that starts a gateway next finds us.
    if !engine.down
        && let Err(e) = registry
            .announce(&state.record, config.registration_ttl)
            .await
    {
        tracing::warn!(error = %e, "first registration failed; retrying with the heartbeat");
    }
    let grace = config.drain_grace;
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut server = server;
            let mut heartbeat = tokio::time::interval(ttl / 3);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            heartbeat.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = &mut server => {
                        // The server stopped on its own: withdraw and report
                        // why. In-process callers see a draining worker from
                        // now on, as network callers see a closed port.
                        state.draining.store(true, Ordering::Release);
                        let _ = registry.withdraw(&state.record.id).await;
                        return match result {
                            Ok(r) => r.map_err(WorkerError::from),
                            Err(e) => Err(WorkerError::Config(format!("server task failed: {e}"))),
                        };
                    }
                    _ = heartbeat.tick() => {
                        engine.probe(&state, &*registry, &health, probe_timeout(ttl)).await;
                        if !engine.down
                            && let Err(e) = registry.announce(&state.record, ttl).await
                        {
                            tracing::warn!(error = %e, "registry heartbeat failed");
                        }
                    }
                }
            }
            drain(&state, &*registry, &health, grace).await;
            stop_serving.cancel();
            match tokio::time::timeout(grace, &mut server).await {
                Ok(Ok(result)) => result.map_err(WorkerError::from),
                Ok(Err(e)) => Err(WorkerError::Config(format!("server task failed: {e}"))),
                Err(_) => {
                    tracing::warn!("connections still open after the drain grace period; closing");
                    server.abort();
                    Ok(())
                }
            }
        }
    });
    tracing::info!(%id, %endpoint, model = %config.model, "worker serving");
    Ok(RunningWorker {
        id,
        addr,
        endpoint,
        service,
        shutdown,
        task,
    })
}

/// The HTTP/2 connection window a gateway's connection gets (h2 allows half
/// of it in small DATA frames not yet read: about 85,000 small requests).
const WORKER_CONNECTION_WINDOW: u32 = 32 << 20;
/// Streams a gateway may reset before this agent accepted them.
const WORKER_PENDING_RESETS: usize = 10_000;

/// Failed probes in a row before the engine counts as down: one lost probe
/// does not take a worker out of the pool.
const DOWN_AFTER: u32 = 2;

/// The engine health probe's budget: well inside one heartbeat.
fn probe_timeout(ttl: Duration) -> Duration {
    (ttl / 6).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Whether the engine behind this worker answers. While it does not, the
/// worker is out of the registry, NOT_SERVING (the pod is not ready) and
/// says so in its load reports; it comes back when the engine answers.
#[derive(Default)]
struct EngineWatch {
    failures: u32,
    down: bool,
    /// The first probe (at start) has run.
    probed: bool,
}

impl EngineWatch {
    async fn probe(
        &mut self,
        state: &WorkerState,
        registry: &dyn Registry,
        health: &tonic_health::server::HealthReporter,
        timeout: Duration,
    ) {
        let probe = state.backend.check_health(timeout).await;
        let first = !self.probed;
        self.probed = true;
        match probe {
            Ok(()) => {
                self.failures = 0;
                let kv_cache = state.backend.kv_cache_usage(timeout).await;
                if let Ok(mut usage) = state.kv_cache_usage.lock() {
                    *usage = kv_cache;
                }
                if self.down {
                    self.down = false;
                    tracing::info!(worker = %state.record.id, "engine answers again; back in the pool");
                    set_engine_down(state, None);
                    health.set_serving::<WorkerServer<WorkerService>>().await;
                }
            }
            Err(e) => {
                self.failures += 1;
                // Down at once on the first probe (a worker whose engine
                // is not up yet is not announced), else after DOWN_AFTER.
                if !self.down && (self.failures >= DOWN_AFTER || first) {
                    self.down = true;
                    tracing::warn!(worker = %state.record.id, error = %e, "engine does not answer; out of the pool until it does");
                    set_engine_down(state, Some(e.to_string()));
                    health
                        .set_not_serving::<WorkerServer<WorkerService>>()
                        .await;
                    if let Err(e) = registry.withdraw(&state.record.id).await {
                        tracing::warn!(error = %e, "could not withdraw from the registry; the entry will expire");
                    }
                }
            }
        }
    }
}

fn set_engine_down(state: &WorkerState, why: Option<String>) {
    if let Ok(mut down) = state.engine_down.lock() {
        *down = why;
    }
}

/// Stops taking work and waits (up to `grace`) for in-flight requests.
async fn drain(
    state: &WorkerState,
    registry: &dyn Registry,
    health: &tonic_health::server::HealthReporter,
    grace: Duration,
) {
    state.draining.store(true, Ordering::Release);
    health
        .set_not_serving::<WorkerServer<WorkerService>>()
        .await;
    if let Err(e) = registry.withdraw(&state.record.id).await {
        tracing::warn!(error = %e, "could not withdraw from the registry; the entry will expire");
    }
    let deadline = tokio::time::Instant::now() + grace;
    while state.admission.in_flight() + state.admission.waiting() > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
