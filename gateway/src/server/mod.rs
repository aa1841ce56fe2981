//! Starting and stopping a gateway: the pool's background maintenance and the
//! public gRPC server on its tower stack.

mod listen;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::routing::policy::{LeastLoaded, Policy, PolicyKind, UtilityPolicy};
use routemesh_mesh::{Registry, conn, tls};

use listen::{PublicTls, TlsTasks, bind_optional, serve_http};
use routemesh_proto::v1::gateway_server::GatewayServer;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use routemesh_telemetry::{Recorder, Telemetry};

use crate::api::grpc::GatewayService;
use crate::config::GatewayConfig;
use crate::pool::Pool;
use crate::pool::transport::LocalWorkers;
use crate::routing::quality::QualityModel;
use crate::serve::Recent;
use crate::serve::{GatewayState, Pipeline};
use crate::tenancy::auth::ApiKeys;
use crate::tenancy::tenants::CostTargets;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gateway task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot start the load-check thread: {0}")]
    HealthThread(std::io::Error),
}

/// A gateway that is serving.
#[derive(Debug)]
pub struct RunningGateway {
    /// The gRPC API.
    pub addr: SocketAddr,
    /// The OpenAI-compatible HTTP API, when enabled.
    pub http_addr: Option<SocketAddr>,
    /// The admin port (metrics, health, cost), when enabled.
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningGateway {
    /// Stops accepting requests, lets in-flight ones finish (up to the drain
    /// grace period) and stops the background tasks.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.task.await?
    }
}

/// Keeps the Gateway service's health status in step with the pool.
/// Onboards the pool's unknown models from feedback as scores arrive
/// (`feedback_memory.onboard_after`), every `interval` until `stop`.
fn spawn_onboarding(
    state: Arc<GatewayState>,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let min_rows = state.config.feedback_memory.onboard_after;
        if min_rows == 0 || !state.routing.quality.loaded() {
            return;
        }
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let specs: Vec<_> = state
                .pool
                .snapshot()
                .iter()
                .map(|w| (*w.spec).clone())
                .collect();
            let memory = state.routing.feedback.memory().clone();
            let oldest_ms = routemesh_telemetry::record::now_ms()
                .saturating_sub(state.routing.feedback_max_age_ms);
            state
                .routing
                .quality
                .onboard_from_feedback(&specs, &memory, min_rows, oldest_ms)
                .await;
        }
    })
}

fn spawn_readiness(
    state: Arc<GatewayState>,
    health: tonic_health::server::HealthReporter,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ready = state.pool.snapshot().iter().any(|w| w.healthy());
            if last != Some(ready) {
                if ready {
                    health.set_serving::<GatewayServer<GatewayService>>().await;
                } else {
                    health
                        .set_not_serving::<GatewayServer<GatewayService>>()
                        .await;
                }
                last = Some(ready);
            }
        }
    })
}

fn policy(config: &GatewayConfig, cost_weight: f64) -> Box<dyn Policy> {
    match config.policy {
        PolicyKind::LeastLoaded => Box::new(LeastLoaded),
        PolicyKind::Utility => Box::new(UtilityPolicy {
            cost_weight,
            latency_weight: config.latency_weight,
            load_weight: config.load_weight,
            error_weight: config.error_weight,
        }),
    }
}

/// Starts a gateway on `config.listen`, discovering workers from `registry`.
/// `shared_telemetry` is the store every replica shares (Redis); without it
/// telemetry stays in this process.
/// `limits` is where tenant limits are counted (Redis for a mesh of
/// replicas); `None` counts them in this process.
/// `keys`: API keys with their store (Redis); `None` uses the configured
/// keys only.
/// `feedback`: feedback exemplars shared through Redis; `None` keeps them
/// in this process.
/// `local`: worker agents running in this process, which the gateway calls
/// in-process when the registry lists them (empty for `routemesh gateway`).
/// The stores a gateway shares with the other replicas of its mesh
/// (through Redis); each left `None` is kept in the gateway's memory.
#[derive(Default)]
pub struct SharedStores {
    pub telemetry: Option<Telemetry>,
    pub limits: Option<crate::tenancy::limits::Limits>,
    pub keys: Option<ApiKeys>,
    pub feedback: Option<crate::routing::feedback::SharedFeedback>,
    /// Per-request state every replica may need: served requests (for
    /// Feedback on any replica) and sessions (affinity).
    pub request_state: Option<routemesh_mesh::RedisConn>,
}

pub async fn start_gateway(
    config: GatewayConfig,
    registry: Arc<dyn Registry>,
    local: LocalWorkers,
    shared: SharedStores,
) -> Result<RunningGateway, ServeError> {
    let SharedStores {
        telemetry: shared_telemetry,
        limits,
        keys,
        feedback,
        request_state,
    } = shared;
    let keys = match keys {
        Some(keys) => keys,
        None => ApiKeys::from_config(&config.auth)
            .map_err(|(key, why)| ServeError::Config(format!("{key}: {why}")))?,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let http_listener = bind_optional(config.http_listen).await?;
    let admin_listener = bind_optional(config.admin_listen).await?;
    // Metrics are recorded from here on (a no-op recorder if this fails).
    let _ = crate::metrics::handle();
    crate::metrics::known_series(
        config
            .tenants
            .iter()
            .map(|(name, t)| (name.as_str(), t.has_limits())),
    );
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;

    let quality = QualityModel::load(&config.router)
        .await
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let cost_weight = config
        .cost_weight
        .or_else(|| quality.calibrated_cost_weight())
        .unwrap_or(UtilityPolicy::default().cost_weight);
    let mut tls_tasks = TlsTasks::new();
    let worker_tls = match &config.worker_tls {
        Some(files) => {
            let (certs, watcher) = tls::watch(
                files,
                "gateway.worker_tls",
                tls::client_config,
                tls_tasks.stop.child_token(),
            )
            .map_err(|e| ServeError::Config(e.to_string()))?;
            tls_tasks.tasks.push(watcher);
            Some(crate::pool::WorkerTls {
                config: certs,
                server_name: files.server_name.clone(),
            })
        }
        None => None,
    };
    let public_tls = match &config.tls {
        Some(files) => {
            let (certs, watcher) = tls::watch(
                files,
                "gateway.tls",
                |pem| {
                    Ok(PublicTls {
                        grpc: Arc::new(tls::server_config(pem, &[b"h2"])?),
                        http: Arc::new(tls::server_config(pem, &[b"h2", b"http/1.1"])?),
                    })
                },
                tls_tasks.stop.child_token(),
            )
            .map_err(|e| ServeError::Config(e.to_string()))?;
            tls_tasks.tasks.push(watcher);
            Some(certs)
        }
        None => None,
    };
    let pool = Pool::new(
        registry,
        local,
        config.load_interval.max(Duration::from_millis(200)),
        config.missing_worker_grace,
        worker_tls,
        config.circuit_breaker.clone(),
    )
    .map_err(ServeError::HealthThread)?;
    // Know the pool before the first request arrives, and have the router
    // ready for it (the encoder, if the pool holds a strong/weak pair).
    pool.refresh().await;
    {
        let snapshot = pool.snapshot();
        let names = quality.router_names(snapshot.iter().map(|w| &*w.spec));
        let models: Vec<&str> = names.iter().map(String::as_str).collect();
        quality.prepare(&models).await;
    }
    let shutdown = CancellationToken::new();
    let maintenance = pool.spawn_maintenance(
        config.discovery_interval,
        config.load_interval,
        shutdown.child_token(),
    );

    let feedback = Arc::new(feedback.unwrap_or_else(|| {
        crate::routing::feedback::SharedFeedback::local(Arc::new(
            crate::routing::feedback::FeedbackMemory::new(config.feedback_memory.clone()),
        ))
    }));
    let feedback_sync = feedback
        .clone()
        .spawn_sync(config.telemetry.snapshot_interval, shutdown.child_token());
    let feedback_rate = match &request_state {
        Some(conn) => crate::serve::FeedbackRate::shared(config.feedback_per_minute, conn.clone()),
        None => crate::serve::FeedbackRate::new(config.feedback_per_minute),
    };
    let (sessions, recent, state_writers) = match request_state {
        Some(conn) => {
            // Served requests and sessions are flushed with the telemetry:
            // a record queued while its writer is idle is written at once,
            // later ones wait for the next flush, one HSET for all of them.
            let (sessions, sessions_writer) = crate::routing::affinity::Sessions::shared(
                config.session_affinity.clone(),
                conn.clone(),
                config.telemetry.flush_interval,
                shutdown.child_token(),
            );
            let (recent, recent_writer) = Recent::shared(
                config.feedback_window,
                conn,
                config.shared_request_ttl,
                config.telemetry.flush_interval,
                shutdown.child_token(),
            );
            (sessions, recent, vec![sessions_writer, recent_writer])
        }
        None => (
            crate::routing::affinity::Sessions::local(config.session_affinity.clone()),
            Recent::new(config.feedback_window),
            Vec::new(),
        ),
    };
    let state = Arc::new(GatewayState {
        sessions,
        pool,
        routing: crate::routing::Routing::new(
            policy(&config, cost_weight),
            quality,
            config.telemetry.min_requests,
            config.telemetry.feedback_prior_weight,
            feedback,
            config.telemetry.feedback_days,
        ),
        recent,
        feedback_rate,
        recorder: Recorder::start(shared_telemetry, config.telemetry.recorder()),
        cost_targets: CostTargets::new(&config.tenants, cost_weight),
        retry_budget: crate::pool::retry::RetryBudget::new(
            config.retry_budget_ratio,
            config.retry_budget_burst,
        ),
        // One failover per two requests at most, and half a second of
        // traffic at once: enough for every request in flight to a worker
        // killed at 1,000 req/s, never a storm.
        unreachable_budget: crate::pool::retry::RetryBudget::new(
            config.retry_budget_ratio.max(0.5),
            config.retry_budget_burst,
        )
        .scaled_to_rate(0.5),
        limits: limits.unwrap_or_else(|| {
            crate::tenancy::limits::Limits::in_memory(&config.tenants, config.limits_fail_open)
        }),
        admission: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
        config: config.clone(),
    });
    let onboarding = spawn_onboarding(
        state.clone(),
        config.telemetry.snapshot_interval,
        shutdown.child_token(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    // "" answers liveness (the process serves); the Gateway service answers
    // readiness: SERVING only while at least one worker is healthy.
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let readiness = spawn_readiness(
        state.clone(),
        health.clone(),
        config.load_interval,
        shutdown.child_token(),
    );

    // Every call is traced. Admission (the concurrency limit) is the Gateway
    // service's own business, so health checks and reflection are never shed.
    // Request bytes held at once, over both APIs.
    let body_bytes = Arc::new(tokio::sync::Semaphore::new(
        config.max_request_bytes_in_flight,
    ));
    let stack =
        ServiceBuilder::new()
            .layer(crate::api::body_bytes::BodyBytesLayer::new(
                body_bytes.clone(),
            ))
            // Failures are logged once, at their side's level, by the serving
            // path (`GatewayError::log`); tower-http's default would log every
            // non-OK call (a client's bad request, each shed call) as an error.
            .layer(tower_http::trace::TraceLayer::new_for_grpc().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ))
            .map_response(crate::api::grpc::undecodable_is_invalid_argument)
            .into_inner();
    let pipeline = Arc::new(Pipeline::new(
        state.clone(),
        crate::serve::strategy::from_config(&config),
    ));
    let strategy = pipeline.strategy();
    let service = GatewayService::new(pipeline.clone());
    // Authentication for the Gateway service only: health and reflection stay
    // open for probes and tooling.
    // Counted outside authentication, so refused calls are counted too.
    let grpc_service =
        crate::api::counted::CountedGrpc::new(crate::api::grpc_auth::Authenticated::new(
            GatewayServer::new(service.clone())
                .max_decoding_message_size(config.max_request_bytes)
                .max_encoding_message_size(usize::MAX),
            keys.clone(),
        ));
    let stop_serving = CancellationToken::new();
    let http = match http_listener {
        Some(listener) => {
            let app = crate::api::openai::router(crate::api::openai::HttpState {
                pipeline,
                keys,
                max_body_bytes: config.max_request_bytes,
                body_bytes,
                ignore_unknown_fields: config.openai.ignore_unknown_fields,
            });
            Some(serve_http(
                listener,
                app,
                stop_serving.clone(),
                (config.connections, "http"),
                public_tls.clone().map(|certs| (certs, &mut tls_tasks)),
            )?)
        }
        None => None,
    };
    // The admin port outlives the drain, so metrics can be scraped through it.
    let stop_admin = CancellationToken::new();
    let admin = match admin_listener {
        Some(listener) => Some(serve_http(
            listener,
            crate::api::admin::router(state.clone()),
            stop_admin.clone(),
            (config.admin_connections, "admin"),
            None,
        )?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|(a, _)| *a);
    let http_addr = http.as_ref().map(|(a, _)| *a);
    let limits = config.connections;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // A client's requests beyond the stream limit wait in the client.
        // Without the limit, an overloaded gateway accepts more streams than
        // it reads and h2's guards (unread small DATA frames; streams reset
        // before they were accepted, 20 by default) send the client a GOAWAY
        // that fails every call on its connection. Resets of streams not yet
        // accepted are bounded by the same number, as rapid-reset protection.
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_max_pending_accept_reset_streams(Some(limits.max_concurrent_streams as usize))
        .layer(conn::TrackRequestsLayer::tonic())
        .layer(stack)
        .add_service(health_service)
        .add_service(routemesh_proto::reflection_v1()?)
        .add_service(routemesh_proto::reflection_v1alpha()?)
        .add_service(grpc_service);
    let signal = stop_serving.clone().cancelled_owned();
    // The acceptor ends with the server that reads from it (or with the stop).
    let (admitted, _acceptor) =
        conn::accept_guarded(listener, limits, "grpc", stop_serving.child_token());
    // TLS is terminated here rather than by tonic, so that each new
    // connection gets the certificate current at its handshake.
    let server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match public_tls {
        Some(certs) => {
            let (accepted, acceptor) = tls::accept_tls(
                admitted,
                move || certs.current().grpc.clone(),
                tls_tasks.stop.child_token(),
            );
            tls_tasks.tasks.push(acceptor);
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
    let mut server = tokio::spawn(server);

    let grace = config.drain_grace;
    let state_for_shutdown = state.clone();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = &mut server => {
                    shutdown.cancel();
                    tls_tasks.shutdown().await;
                    return Ok(result??);
                }
            }
            let _ = readiness.await;
            health
                .set_not_serving::<GatewayServer<GatewayService>>()
                .await;
            stop_serving.cancel();
            let result = match tokio::time::timeout(grace, &mut server).await {
                Ok(result) => result?.map_err(ServeError::from),
                Err(_) => {
                    tracing::warn!("requests still running after the drain grace period; closing");
                    server.abort();
                    Ok(())
                }
            };
            if let Some((_, http)) = http {
                match tokio::time::timeout(grace, http).await {
                    Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP API stopped with an error"),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!("HTTP requests still running after the drain grace period")
                    }
                }
            }
            let _ = maintenance.await;
            if let Some(sync) = feedback_sync {
                let _ = sync.await;
            }
            let _ = onboarding.await;
            // After the drain: no request waits for a router batch any more.
            state_for_shutdown.routing.quality.shutdown().await;
            for writer in state_writers {
                let _ = writer.await;
            }
            tls_tasks.shutdown().await;
            state_for_shutdown.recorder.shutdown().await;
            stop_admin.cancel();
            if let Some((_, admin)) = admin {
                let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
            }
            result
        }
    });
    tracing::info!(%addr, http = ?http_addr, admin = ?admin_addr, policy = state.routing.policy.name(), strategy, "gateway serving");
    Ok(RunningGateway {
        addr,
        http_addr,
        admin_addr,
        shutdown,
        task,
    })
}
