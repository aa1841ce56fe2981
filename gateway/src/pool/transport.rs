//! How the pool reaches a worker: over the network (an HTTP/2 channel), or,
//! for a worker agent running in this very process (`routemesh up`), by
//! calling that agent's own Worker service directly.
//!
//! The in-process path keeps the gRPC contract whole (the same generated
//! client and server, protobuf messages, metadata, status codes, trailers and
//! streaming) and drops only what a process boundary needs: the loopback
//! socket, HTTP/2 framing, and the hand-off between the gateway's task and
//! the worker server's task. Everything above the transport (load checks,
//! health, the breaker, failover, telemetry) cannot tell the two apart.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use routemesh_mesh::WorkerRecord;
use routemesh_proto::v1::worker_server::WorkerServer;
use routemesh_worker::RunningWorker;
use routemesh_worker::service::WorkerService;
use tonic::body::Body;
use tonic::transport::Channel;

/// What a transport fails with; tonic's client turns it into a `Status` by
/// looking through it (a refused connection stays UNAVAILABLE).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

/// The transport under every worker client in the pool: one type for both
/// kinds, so the code that calls workers is the same for both.
#[derive(Clone)]
pub enum WorkerChannel {
    /// A worker elsewhere (registered in Redis, or a static `endpoint:`).
    Network(Channel),
    /// A worker agent started by this process.
    InProcess(WorkerServer<WorkerService>),
}

impl WorkerChannel {
    pub fn is_in_process(&self) -> bool {
        matches!(self, Self::InProcess(_))
    }

    /// How the pool reaches the worker, as operators read it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Network(_) => "network",
            Self::InProcess(_) => "in-process",
        }
    }
}

impl std::fmt::Debug for WorkerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl tower::Service<http::Request<Body>> for WorkerChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Network(channel) => {
                tower::Service::poll_ready(channel, cx).map_err(BoxError::from)
            }
            // The generated server is always ready; admission (capacity and
            // queue) is decided inside the call, as over the network.
            Self::InProcess(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Self::Network(channel) => {
                let call = tower::Service::call(channel, request);
                Box::pin(async move { call.await.map_err(BoxError::from) })
            }
            Self::InProcess(service) => {
                // No grpc-timeout layer here (the network server has one):
                // the gateway bounds every call with its own timer, and
                // dropping the call future cancels the worker's work, as a
                // reset stream does over HTTP/2.
                let call = tower::Service::call(service, request);
                Box::pin(async move {
                    // A panic in the worker's handler would otherwise unwind
                    // through the gateway's request; over the network it
                    // would only break the connection. Keep it the worker's
                    // failure: an error the gateway reads as a lost
                    // connection (UNAVAILABLE, so it fails over).
                    match AssertUnwindSafe(call).catch_unwind().await {
                        Ok(Ok(response)) => Ok(response),
                        Ok(Err(never)) => match never {},
                        Err(_) => Err(BoxError::from(tonic::Status::unknown(
                            "the in-process worker panicked",
                        ))),
                    }
                })
            }
        }
    }
}

/// The worker agents this process runs, by id, that a gateway in the same
/// process calls in-process rather than through their ports.
#[derive(Clone, Default)]
pub struct LocalWorkers {
    by_id: Arc<HashMap<String, (String, WorkerServer<WorkerService>)>>,
}

impl std::fmt::Debug for LocalWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_id.keys()).finish()
    }
}

impl LocalWorkers {
    pub fn new<'a>(workers: impl IntoIterator<Item = &'a RunningWorker>) -> Self {
        let by_id = workers
            .into_iter()
            .map(|w| (w.id.clone(), (w.endpoint.clone(), w.in_process_service())))
            .collect();
        Self {
            by_id: Arc::new(by_id),
        }
    }

    /// The in-process transport for `record`, when it is one of ours. The
    /// endpoint must match too: a worker elsewhere that announces the same id
    /// (another `routemesh up` on the same Redis mesh) is not this one.
    pub fn channel_for(&self, record: &WorkerRecord) -> Option<WorkerChannel> {
        self.by_id
            .get(&record.id)
            .filter(|(endpoint, _)| *endpoint == record.endpoint)
            .map(|(_, service)| WorkerChannel::InProcess(service.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use routemesh_mesh::{MemoryRegistry, Registry};
    use routemesh_proto::v1::worker_client::WorkerClient;
    use routemesh_proto::v1::{LoadRequest, WorkerGenerateRequest};
    use routemesh_worker::{WorkerConfig, start_worker};
    use tonic::Code;

    use super::*;
    use crate::pool::testing::generate_request;

    #[tokio::test]
    async fn an_agent_of_this_process_is_called_in_process_until_it_stops() {
        let config: WorkerConfig = serde_norway::from_str(
            "id: w\nmodel: m\ntier: small\ndrain_grace: 1s\nbackend: {sim: {ttft_ms: {median: 0}, tokens_per_second: {median: 0}, output_tokens: {median: 3}}}\n",
        )
        .unwrap();
        let registry = Arc::new(MemoryRegistry::default());
        let worker = start_worker(config, registry.clone()).await.unwrap();
        let local = LocalWorkers::new([&worker]);
        let record = registry.list().await.unwrap().remove(0);

        // Only the very worker: same id elsewhere (another endpoint) is not ours.
        let elsewhere = WorkerRecord {
            endpoint: "http://10.0.0.9:50061".into(),
            ..record.clone()
        };
        assert!(local.channel_for(&elsewhere).is_none());
        let other = WorkerRecord {
            id: "other".into(),
            ..record.clone()
        };
        assert!(local.channel_for(&other).is_none());
        let channel = local.channel_for(&record).unwrap();
        assert!(channel.is_in_process());
        let mut client = WorkerClient::new(channel);

        let load = client.load(LoadRequest {}).await.unwrap().into_inner();
        assert_eq!((load.worker_id.as_str(), load.draining), ("w", false));
        let done = client
            .generate(generate_request())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(done.usage.unwrap().worker_id, "w");
        let mut stream = client
            .generate_stream(generate_request())
            .await
            .unwrap()
            .into_inner();
        let mut events = 0;
        while stream.message().await.unwrap().is_some() {
            events += 1;
        }
        assert!(events >= 2, "deltas then the end: {events}");
        // The worker's own refusals arrive as its status codes.
        let status = client
            .generate(WorkerGenerateRequest {
                model: "another".into(),
                ..generate_request()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);

        // Once the agent has drained and stopped, in-process callers see a
        // draining worker (the gateway's load check takes it out of the
        // pool), not a service that keeps serving behind a closed port.
        tokio::time::timeout(Duration::from_secs(5), worker.shutdown())
            .await
            .unwrap()
            .unwrap();
        assert!(
            client
                .load(LoadRequest {})
                .await
                .unwrap()
                .into_inner()
                .draining
        );
        let status = client.generate(generate_request()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(routemesh_worker::error::is_retryable(&status));
    }
}
