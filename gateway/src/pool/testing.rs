//! What the pool's tests share: a pool of network workers found in a
//! registry, and a small request a sim worker of model `m` serves.

use std::sync::Arc;
use std::time::Duration;

use routemesh_mesh::{MemoryRegistry, Registry};
use routemesh_proto::v1::{ChatMessage, WorkerGenerateRequest};

use super::Pool;
use super::transport::LocalWorkers;

/// A pool that reaches every worker in `registry` over the network (none
/// in-process), with default breakers, already refreshed.
pub(super) async fn network_pool(
    registry: Arc<MemoryRegistry>,
    load_timeout: Duration,
) -> Arc<Pool> {
    let registry: Arc<dyn Registry> = registry;
    let pool = Pool::new(
        registry,
        LocalWorkers::new([]),
        load_timeout,
        Duration::from_secs(10),
        None,
        Default::default(),
    )
    .expect("pool");
    pool.refresh().await;
    pool
}

/// A one-message request for model `m`.
pub(super) fn generate_request() -> WorkerGenerateRequest {
    WorkerGenerateRequest {
        request_id: "r".into(),
        model: "m".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
