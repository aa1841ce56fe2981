//! The gateway's request connection to a network worker: how it is dialled,
//! and its replacement once a burst is over, because h2 keeps a
//! connection's stream tables at their peak size for the connection's life.
//!
//! After 10,000 req/s of overload the tables of the gateway's connection to
//! its worker (and of the worker's side of it) held about 13 MiB that no
//! later traffic needed (heaptrack, docs/BENCHMARKS.md §19). Closing the
//! connection is the only way h2 gives that memory back, so a connection
//! that carried a burst is replaced by a fresh one when the burst is over:
//! the new one is connected first, calls still on the old one finish on it,
//! and the old one closes when its last call ends.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use routemesh_mesh::WorkerRecord;
use routemesh_mesh::tls::TlsConnector;
use routemesh_proto::v1::worker_client::WorkerClient;
use tonic::transport::{Channel, Endpoint};

use super::WorkerTls;
use super::transport::WorkerChannel;

/// Reset streams a worker connection remembers (per connection; a few
/// hundred bytes each, only while calls are being cancelled).
const WORKER_RESET_STREAMS_REMEMBERED: usize = 10_000;

/// Concurrent calls on one connection from which it counts as having
/// carried a burst (its tables then hold a few hundred KiB or more).
pub(super) const BURST_CALLS: u32 = 256;

/// A burst is over when the calls in flight have fallen to this fraction
/// of the connection's peak.
const BURST_OVER_DIVISOR: u32 = 8;

/// How long a replacement connection may take to connect; the old one
/// stays in use meanwhile, and after a failure.
const REDIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How to open a connection to one worker.
#[derive(Debug, Clone)]
pub(super) struct Dialer {
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
}

impl Dialer {
    pub(super) fn new(record: &WorkerRecord, tls: Option<&WorkerTls>) -> Result<Self, String> {
        let https = record.endpoint.starts_with("https://");
        // With TLS the connector does the handshake (with the client
        // certificate current at each connection), so tonic sees http://.
        let uri = if https && tls.is_some() {
            record.endpoint.replacen("https://", "http://", 1)
        } else {
            record.endpoint.clone()
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("{}: {e}", record.endpoint))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            // Calls the gateway gives up on (the client left, a deadline)
            // are reset; the worker's answers to them may still arrive. h2
            // remembers only 10 reset streams by default and treats a late
            // frame on a forgotten one as the peer's error, and after 1,024
            // of those closes the connection, failing every call on it.
            // Under overload thousands are cancelled a second: remember
            // them, and do not count the worker's late answers against it
            // (it is one of the mesh's own agents).
            .http2_max_concurrent_reset_streams(WORKER_RESET_STREAMS_REMEMBERED)
            .http2_max_local_error_reset_streams(None);
        let tls = match tls.filter(|_| https) {
            Some(tls) => {
                let host = endpoint.uri().host().unwrap_or_default().to_string();
                let name = tls.server_name.as_deref().unwrap_or(&host);
                Some(TlsConnector::new(tls.config.clone(), name).map_err(|e| e.to_string())?)
            }
            None if https => {
                return Err(format!(
                    "{}: an https:// worker needs gateway.worker_tls",
                    record.endpoint
                ));
            }
            None => None,
        };
        Ok(Self { endpoint, tls })
    }

    /// A channel that connects on its first call (and reconnects after a
    /// failure), on the calling runtime.
    pub(super) fn lazy(&self) -> Channel {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector_lazy(tls.clone()),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// A channel connected now, so that no call waits for its handshake.
    async fn connected(&self) -> Result<Channel, String> {
        let connecting = async {
            match &self.tls {
                Some(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
                None => self.endpoint.connect().await,
            }
        };
        match tokio::time::timeout(REDIAL_TIMEOUT, connecting).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {REDIAL_TIMEOUT:?}")),
        }
    }
}

/// The client requests to one worker go through, replaced after a burst.
#[derive(Debug)]
pub(super) struct RequestConnection {
    client: RwLock<WorkerClient<WorkerChannel>>,
    /// `None` for a worker agent of this process (no connection to replace).
    dialer: Option<Dialer>,
    /// Most calls in flight at once since this connection was dialled.
    peak: AtomicU32,
}

impl RequestConnection {
    pub(super) fn new(channel: WorkerChannel, dialer: Option<Dialer>) -> Self {
        Self {
            client: RwLock::new(WorkerClient::new(channel)),
            dialer,
            peak: AtomicU32::new(0),
        }
    }

    /// A client for one call (a cheap clone of the current connection's).
    pub(super) fn client(&self) -> WorkerClient<WorkerChannel> {
        // Nothing panics while holding the lock: a poisoned one is intact.
        self.client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A call began: `in_flight` calls are now running on this worker.
    pub(super) fn note_in_flight(&self, in_flight: u32) {
        self.peak.fetch_max(in_flight, Ordering::Relaxed);
    }

    /// Whether the connection carried a burst that is now over.
    fn burst_over(&self, in_flight: u32) -> Option<u32> {
        let peak = self.peak.load(Ordering::Relaxed);
        (self.dialer.is_some()
            && peak >= BURST_CALLS
            && in_flight.saturating_mul(BURST_OVER_DIVISOR) <= peak)
            .then_some(peak)
    }

    /// Replaces the connection with a freshly connected one if it carried
    /// a burst that is over; true if it did. Must run on the runtime that
    /// serves requests: the new connection is driven where it is made.
    pub(super) async fn renew_after_burst(&self, in_flight: u32, worker: &str) -> bool {
        let (Some(peak), Some(dialer)) = (self.burst_over(in_flight), &self.dialer) else {
            return false;
        };
        match dialer.connected().await {
            Ok(channel) => {
                *self
                    .client
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    WorkerClient::new(WorkerChannel::Network(channel));
                self.peak.store(in_flight, Ordering::Relaxed);
                tracing::info!(
                    worker,
                    peak_calls = peak,
                    "worker connection replaced after a burst (its stream tables stay at their peak size while it lives)"
                );
                true
            }
            Err(e) => {
                tracing::debug!(worker, error = %e, "could not replace the worker connection after a burst; keeping it");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use routemesh_mesh::MemoryRegistry;
    use routemesh_worker::{WorkerConfig, start_worker};

    use super::*;
    use crate::pool::testing::{generate_request, network_pool};

    #[tokio::test]
    async fn a_connection_is_replaced_after_a_burst_and_its_last_calls_finish_on_it() {
        // A network worker whose answers take 200 ms, so a burst overlaps.
        let config: WorkerConfig = serde_norway::from_str(
            "id: w\nmodel: m\ntier: small\nlisten: 127.0.0.1:0\ncapacity: 2000\nmax_queue: 2000\ndrain_grace: 1s\nbackend: {sim: {ttft_ms: {median: 200}, tokens_per_second: {median: 0}, output_tokens: {median: 3}}}\n",
        )
        .expect("worker config");
        let registry = Arc::new(MemoryRegistry::default());
        let agent = start_worker(config, registry.clone())
            .await
            .expect("worker");
        let pool = network_pool(registry, Duration::from_secs(1)).await;
        let worker = pool.snapshot()[0].clone();
        let call = || {
            let worker = worker.clone();
            async move {
                let _in_flight = worker.try_begin().expect("breaker closed");
                worker
                    .client()
                    .generate(generate_request())
                    .await
                    .map(|_| ())
            }
        };

        // Light traffic leaves the connection alone.
        call().await.expect("served");
        assert_eq!(pool.renew_connections_after_bursts().await, 0);

        // A burst of 2 x BURST_CALLS calls at once, all served.
        let burst = (0..2 * BURST_CALLS).map(|_| tokio::spawn(call()));
        for served in futures::future::join_all(burst).await {
            served.expect("task").expect("served");
        }
        // One call is still on the old connection when it is replaced.
        let last_on_old = tokio::spawn(call());
        while worker.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.renew_connections_after_bursts().await, 1);
        last_on_old
            .await
            .expect("task")
            .expect("a call on the replaced connection finishes on it");
        call().await.expect("served on the new connection");
        // The new connection has carried no burst.
        assert_eq!(pool.renew_connections_after_bursts().await, 0);
        agent.shutdown().await.expect("worker stops");
    }
}
