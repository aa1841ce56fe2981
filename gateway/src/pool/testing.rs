//! What the pool's tests share: a small request a sim worker of model `m` serves.

use routemesh_proto::v1::{ChatMessage, WorkerGenerateRequest};

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
