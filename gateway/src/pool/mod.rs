//! The pool of workers the gateway routes to: discovered from the registry,
//! health- and load-checked in the background, read without locks held across
//! awaits on the request path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use routemesh_mesh::ModelSpec;
use routemesh_mesh::tls::Reloading;
use routemesh_mesh::{Registry, WorkerRecord};
use routemesh_proto::v1::worker_client::WorkerClient;
use routemesh_proto::v1::{LoadReport, LoadRequest};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod breaker;
mod connection;
mod health;
pub(crate) mod retry;
pub(crate) mod series;
#[cfg(test)]
mod testing;
pub(crate) mod transport;

use self::breaker::{Breaker, BreakerConfig, Permit, State, Transition};
use self::connection::{Dialer, RequestConnection};
use self::health::HealthThread;
use self::transport::{LocalWorkers, WorkerChannel};

/// What one finished call says about a worker's health, for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It answered.
    Served,
    /// It failed (its own fault: an error, a broken connection, a timeout
    /// of the gateway's whole budget).
    Failed,
    /// Nothing about its health: the client's bad input, a client's own
    /// short deadline, a client that left, or mere load.
    NoSignal,
}

/// One worker and the gateway's view of it.
#[derive(Debug)]
pub struct WorkerHandle {
    pub record: WorkerRecord,
    /// Shared with what remembers its requests (one per served request).
    pub spec: Arc<ModelSpec>,
    /// `record.id`, shared likewise.
    pub id: Arc<str>,
    /// In-process for a worker agent of this process, else over the
    /// network (see [`WorkerHandle::client`]).
    connection: RequestConnection,
    /// For load checks only: driven by the health thread, over a connection
    /// of its own for a network worker.
    load_client: WorkerClient<WorkerChannel>,
    transport: &'static str,
    /// Whether its requests succeed (load checks say whether it answers).
    pub breaker: Breaker,
    in_flight: AtomicU32,
    healthy: AtomicBool,
    /// When this worker last served a call, for telling a slow load check on
    /// saturated cores from a dead worker.
    last_served: Mutex<Option<tokio::time::Instant>>,
    last_load: Mutex<Option<LoadReport>>,
    /// Load checks in a row that got no answer in time.
    missed_checks: AtomicU32,
    /// Load checks answered since it joined.
    load_checks_answered: AtomicU64,
    /// Since when the registry stopped listing this worker (while it still
    /// answers); `None` while listed.
    missing_since: Mutex<Option<std::time::Instant>>,
    /// Its calls and breaker moves, exported while it is in the pool.
    pub(crate) counters: series::WorkerCounters,
}

/// Counts a request against a worker while it lives, and holds the call's
/// breaker permit (a half-open probe slot is freed if no outcome came).
#[derive(Debug)]
pub struct InFlight(Arc<WorkerHandle>, Permit);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.breaker.release(self.1);
    }
}

impl WorkerHandle {
    fn new(
        record: WorkerRecord,
        tls: Option<&WorkerTls>,
        breaker: &BreakerConfig,
        local: &LocalWorkers,
        health: &HealthThread,
    ) -> Result<Self, String> {
        let (channel, load_channel, dialer) = match local.channel_for(&record) {
            Some(in_process) => (in_process.clone(), in_process, None),
            None => {
                let dialer = Dialer::new(&record, tls)?;
                let requests = dialer.lazy();
                let loads = {
                    let _on_health_thread = health.enter();
                    dialer.lazy()
                };
                (
                    WorkerChannel::Network(requests),
                    WorkerChannel::Network(loads),
                    Some(dialer),
                )
            }
        };
        let spec = Arc::new(ModelSpec {
            name: record.model.clone(),
            tier: record.tier,
            input_usd_per_mtok: record.input_usd_per_mtok,
            output_usd_per_mtok: record.output_usd_per_mtok,
            quality_prior: record.quality_prior,
            router_model: record.router_model.clone(),
            params_b: record.params_b,
        });
        Ok(Self {
            spec,
            id: record.id.as_str().into(),
            transport: channel.kind(),
            connection: RequestConnection::new(channel, dialer),
            load_client: WorkerClient::new(load_channel),
            breaker: Breaker::new(breaker.clone()),
            record,
            in_flight: AtomicU32::new(0),
            // Healthy until a load check says otherwise: it just registered.
            healthy: AtomicBool::new(true),
            last_served: Mutex::new(None),
            last_load: Mutex::new(None),
            missed_checks: AtomicU32::new(0),
            load_checks_answered: AtomicU64::new(0),
            missing_since: Mutex::new(None),
            counters: series::WorkerCounters::default(),
        })
    }

    /// How the gateway reaches this worker: `in-process` or `network`.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// A call begins, let through by the breaker with `permit`.
    pub fn begin(self: &Arc<Self>, permit: Permit) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.connection.note_in_flight(now);
        InFlight(self.clone(), permit)
    }

    /// The client for one call to this worker.
    pub fn client(&self) -> WorkerClient<WorkerChannel> {
        self.connection.client()
    }

    /// Claims a call through the breaker; `None` if it is open (or its
    /// half-open probe slots were just taken).
    pub fn try_begin(self: &Arc<Self>) -> Option<InFlight> {
        let (permit, transition) = self.breaker.acquire(tokio::time::Instant::now());
        if let Some(t) = transition {
            self.breaker_moved(t);
        }
        permit.map(|p| self.begin(p))
    }

    /// Reports a call's outcome to the breaker.
    pub(crate) fn report(&self, verdict: Verdict) {
        let now = tokio::time::Instant::now();
        let transition = match verdict {
            Verdict::Failed => self.breaker.on_failure(now),
            Verdict::Served => {
                if let Ok(mut last) = self.last_served.lock() {
                    *last = Some(now);
                }
                self.breaker.on_success(now)
            }
            Verdict::NoSignal => None,
        };
        if let Some(t) = transition {
            self.breaker_moved(t);
        }
    }

    fn breaker_moved(&self, t: Transition) {
        if t.to == State::Open {
            tracing::warn!(worker = %self.record.id, from = t.from.as_str(), "circuit breaker opened");
        } else {
            tracing::info!(worker = %self.record.id, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker");
        }
        self.counters.transition(t.from.as_str(), t.to.as_str());
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// A failed call: stop routing here until a load check succeeds. `why`
    /// is logged if this changes the worker's health.
    pub fn mark_unhealthy(&self, why: impl FnOnce() -> String) {
        self.set_health(false, why);
    }

    /// Sets the worker's health; a transition (not the steady state) is
    /// logged with its reason, so an operator can tell why a worker left
    /// or rejoined the routing.
    fn set_health(&self, healthy: bool, why: impl FnOnce() -> String) {
        if self.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return;
        }
        let (worker, model) = (&self.record.id, &self.record.model);
        if healthy {
            tracing::info!(%worker, %model, reason = %why(), "worker healthy again");
        } else {
            tracing::warn!(%worker, %model, reason = %why(), "worker marked unhealthy");
        }
    }

    fn served_within(&self, window: Duration) -> bool {
        self.last_served
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() <= window)
    }

    /// Load checks it has answered since it joined the pool.
    pub fn load_checks_answered(&self) -> u64 {
        self.load_checks_answered.load(Ordering::Relaxed)
    }

    pub fn last_load(&self) -> Option<LoadReport> {
        self.last_load.lock().ok().and_then(|l| l.clone())
    }

    /// Asks the worker for its load (on the health thread) and updates its
    /// health from the answer. A check that gets no answer in time counts
    /// against the worker only when nothing else shows it alive: a call it
    /// served meanwhile proves it up, and a worker that answered before is
    /// taken out on the second miss in a row, not the first (a worker never
    /// heard from yet is kept out from the first).
    async fn check_load(&self, timeout: Duration) {
        let mut client = self.load_client.clone();
        let mut request = tonic::Request::new(LoadRequest {});
        request.set_timeout(timeout);
        let answer = match tokio::time::timeout(timeout, client.load(request)).await {
            Ok(Ok(report)) => Ok(report.into_inner()),
            // The worker's server gave up on the deadline: as slow as a timeout.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                Err(None)
            }
            Ok(Err(status)) => Err(Some(status)),
            Err(_) => Err(None),
        };
        match answer {
            Ok(report) => {
                self.missed_checks.store(0, Ordering::Release);
                self.load_checks_answered.fetch_add(1, Ordering::Relaxed);
                let up = !report.draining && report.engine_down.is_empty();
                self.set_health(up, || {
                    if report.draining {
                        "it reports draining".into()
                    } else if !report.engine_down.is_empty() {
                        format!("its engine is down: {}", report.engine_down)
                    } else {
                        "a load check answered".into()
                    }
                });
                if let Ok(mut last) = self.last_load.lock() {
                    *last = Some(report);
                }
            }
            Err(Some(status)) => {
                tracing::debug!(worker = %self.record.id, %status, "load check failed");
                self.mark_unhealthy(|| format!("load check failed: {status}"));
            }
            Err(None) if self.served_within(timeout * 2) => {
                // The data plane proves the worker alive: a load check that
                // times out while calls are being served means the cores are
                // saturated, and taking the only worker out would turn
                // overload into UNAVAILABLE for everyone.
                self.missed_checks.store(0, Ordering::Release);
                tracing::debug!(worker = %self.record.id, "load check timed out; worker still serving");
            }
            Err(None) => {
                let missed = self.missed_checks.fetch_add(1, Ordering::AcqRel) + 1;
                let known = self.last_load().is_some();
                tracing::debug!(worker = %self.record.id, missed, "load check timed out");
                if missed >= 2 || !known {
                    self.mark_unhealthy(|| {
                        format!(
                            "{missed} load check(s) in a row got no answer within {timeout:?} and no call was served meanwhile"
                        )
                    });
                }
            }
        }
    }
}

pub type Snapshot = Arc<Vec<Arc<WorkerHandle>>>;

/// The most expensive model among `workers`: what "everything to the
/// strongest model" would have cost, the counterfactual of the cost report.
pub fn strongest(workers: &[Arc<WorkerHandle>]) -> Option<&ModelSpec> {
    routemesh_mesh::TokenPrices::most_expensive(workers.iter().map(|w| &*w.spec), |s| s.prices())
}

/// How the gateway dials `https://` workers: its client configuration
/// (reloaded with its files) and the name workers' certificates carry, when
/// not the host dialled.
#[derive(Clone)]
pub struct WorkerTls {
    pub config: Reloading<rustls::ClientConfig>,
    pub server_name: Option<String>,
}

pub struct Pool {
    workers: RwLock<Snapshot>,
    worker_tls: Option<WorkerTls>,
    breaker: BreakerConfig,
    registry: Arc<dyn Registry>,
    /// Worker agents of this process: called without the network.
    local: LocalWorkers,
    load_timeout: Duration,
    missing_grace: Duration,
    /// Where load checks run, away from request traffic.
    health: HealthThread,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.snapshot().len())
            .finish()
    }
}

impl Pool {
    /// `missing_grace`: how long a worker that still answers its load checks
    /// stays in the pool after the registry stops listing it, so a registry
    /// that lost its data (a restarted Redis) does not empty the pool before
    /// the workers' next heartbeat. Workers in `local` (agents of this
    /// process) are called in-process; every other one over the network.
    pub fn new(
        registry: Arc<dyn Registry>,
        local: LocalWorkers,
        load_timeout: Duration,
        missing_grace: Duration,
        worker_tls: Option<WorkerTls>,
        breaker: BreakerConfig,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            workers: RwLock::new(Arc::new(Vec::new())),
            worker_tls,
            breaker,
            registry,
            local,
            load_timeout,
            missing_grace,
            health: HealthThread::start()?,
        }))
    }

    /// The workers now; cheap (an `Arc` clone).
    pub fn snapshot(&self) -> Snapshot {
        self.workers.read().map(|w| w.clone()).unwrap_or_default()
    }

    /// Reads the registry and applies joins and leaves. On a registry error the
    /// pool keeps its last known workers.
    pub async fn refresh(&self) {
        let records = match self.registry.list().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "registry unavailable; keeping the last known workers");
                return;
            }
        };
        let current = self.snapshot();
        let mut next = Vec::with_capacity(records.len());
        let mut joined = Vec::new();
        for record in records {
            match current.iter().find(|w| w.record == record) {
                Some(existing) => {
                    if let Ok(mut missing) = existing.missing_since.lock() {
                        *missing = None;
                    }
                    next.push(existing.clone());
                }
                None => match WorkerHandle::new(
                    record,
                    self.worker_tls.as_ref(),
                    &self.breaker,
                    &self.local,
                    &self.health,
                ) {
                    Ok(handle) => {
                        let handle = Arc::new(handle);
                        joined.push(handle.clone());
                        next.push(handle);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring worker with a bad endpoint"),
                },
            }
        }
        // Unlisted workers that still answer stay for a grace period;
        // draining or unreachable ones leave at once.
        let now = std::time::Instant::now();
        for w in current.iter() {
            if next.iter().any(|n| n.record.id == w.record.id) || !w.healthy() {
                continue;
            }
            let Ok(mut missing) = w.missing_since.lock() else {
                continue;
            };
            if now.duration_since(*missing.get_or_insert(now)) < self.missing_grace {
                next.push(w.clone());
            }
        }
        // Check newcomers before they take traffic, so a dead registration
        // never receives a request.
        let timeout = self.load_timeout;
        let newcomers = joined.clone();
        self.health
            .run(async move {
                futures::future::join_all(newcomers.iter().map(|w| w.check_load(timeout))).await
            })
            .await;
        let changed = next.len() != current.len()
            || !joined.is_empty()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            for w in &joined {
                crate::metrics::model_known(&w.record.model);
                tracing::info!(worker = %w.record.id, model = %w.record.model, endpoint = %w.record.endpoint, transport = w.transport(), "worker joined");
            }
            for w in current
                .iter()
                .filter(|w| !next.iter().any(|n| Arc::ptr_eq(n, w)))
            {
                // Its series leave /metrics with it (rendered from the pool).
                tracing::info!(worker = %w.record.id, "worker left");
            }
            if let Ok(mut workers) = self.workers.write() {
                *workers = Arc::new(next);
            }
        }
    }

    /// Round trips this gateway has made to its registry (Redis).
    pub fn registry_round_trips(&self) -> u64 {
        self.registry.round_trips()
    }

    /// Replaces the request connection of each worker whose burst is over
    /// (see [`connection`]); returns how many were replaced.
    pub async fn renew_connections_after_bursts(&self) -> usize {
        // At once: a worker that cannot be reached holds up the discovery
        // tick by its connect timeout, not by one per worker.
        let workers = self.snapshot();
        futures::future::join_all(
            workers
                .iter()
                .map(|w| w.connection.renew_after_burst(w.in_flight(), &w.record.id)),
        )
        .await
        .into_iter()
        .filter(|&renewed| renewed)
        .count()
    }

    /// Checks every worker's load once (on the health thread).
    pub async fn poll_loads(&self) {
        let workers = self.snapshot();
        let timeout = self.load_timeout;
        self.health
            .run(async move {
                futures::future::join_all(workers.iter().map(|w| w.check_load(timeout))).await
            })
            .await;
    }

    /// Runs discovery (on the caller's runtime) and load checks (on the
    /// health thread, so request traffic cannot delay them) until `stop` is
    /// cancelled.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        discovery: Duration,
        load: Duration,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let loads = self.clone();
        let loads_stop = stop.clone();
        let load_checks = self.health.spawn(async move {
            let mut tick = tokio::time::interval(load);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = loads_stop.cancelled() => return,
                    _ = tick.tick() => {
                        let workers = loads.snapshot();
                        let timeout = loads.load_timeout;
                        futures::future::join_all(workers.iter().map(|w| w.check_load(timeout))).await;
                    }
                }
            }
        });
        let pool = self.clone();
        tokio::spawn(async move {
            let mut discovery_tick = tokio::time::interval(discovery);
            discovery_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = discovery_tick.tick() => {
                        pool.refresh().await;
                        pool.renew_connections_after_bursts().await;
                    }
                }
            }
            let _ = load_checks.await;
        })
    }
}
