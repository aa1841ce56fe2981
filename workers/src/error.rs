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

/// The status for an engine's failure. A request too long for the model's
/// context is `OUT_OF_RANGE`, a code nothing else here uses: the gateway
/// reads it as "this model's context is too short" and fails over to a
/// model with a longer one, never to another worker of the same model
/// (hence no retry hint).
pub fn engine_status(error: &EngineError) -> Status {
    let code = match error {
        EngineError::Unreachable(_) | EngineError::Injected => Code::Unavailable,
        EngineError::Upstream {
            status: 502..=504, ..
        } => Code::Unavailable,
        EngineError::Upstream { .. } => Code::Internal,
        EngineError::Timeout(_) => Code::DeadlineExceeded,
        EngineError::Rejected(_) => Code::InvalidArgument,
        EngineError::ContextExceeded(_) => Code::OutOfRange,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_refusals_are_out_of_range_and_not_retried() {
        let status = engine_status(&EngineError::ContextExceeded(
            "maximum context length is 4096 tokens".into(),
        ));
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(status.message().contains("4096"), "{}", status.message());
        assert!(!is_retryable(&status));
        let status = engine_status(&EngineError::Rejected("bad".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(is_retryable(&engine_status(&EngineError::Injected)));
    }
}
