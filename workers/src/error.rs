//! The one place where worker-side failures become gRPC statuses.

use tonic::{Code, Status};

use crate::admission::Overloaded;
use crate::backend::EngineError;

/// Metadata key telling the gateway whether another worker may be tried.
pub const RETRYABLE_HEADER: &str = "x-routemesh-retryable";

fn with_retry_hint(mut status: Status, retryable: bool) -> Status {
    if retryable {
        status.metadata_mut().insert(
            RETRYABLE_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    status
}

pub fn engine_status(error: &EngineError) -> Status {
    let code = match error {
        EngineError::Unreachable(_) | EngineError::Injected => Code::Unavailable,
        EngineError::Upstream {
            status: 502..=504, ..
        } => Code::Unavailable,
        EngineError::Upstream { .. } => Code::Internal,
        EngineError::Timeout(_) => Code::DeadlineExceeded,
        EngineError::Rejected(_) => Code::InvalidArgument,
        EngineError::RateLimited(_) => Code::ResourceExhausted,
        EngineError::Malformed(_) => Code::Internal,
    };
    with_retry_hint(Status::new(code, error.to_string()), error.retryable())
}

pub fn overloaded_status(error: &Overloaded) -> Status {
    with_retry_hint(Status::resource_exhausted(error.to_string()), true)
}

pub fn draining_status() -> Status {
    with_retry_hint(Status::unavailable("worker is draining"), true)
}

pub fn wrong_model_status(requested: &str, served: &str) -> Status {
    Status::failed_precondition(format!(
        "this worker serves model {served:?}, not {requested:?}"
    ))
}

/// True when the status says no model ran, so another worker may be tried.
pub fn is_retryable(status: &Status) -> bool {
    status
        .metadata()
        .get(RETRYABLE_HEADER)
        .is_some_and(|v| v == "true")
}
