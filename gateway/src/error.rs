//! Every way a gateway request can fail, and the one mapping to gRPC statuses.
//!
//! Each variant records which side failed (the client's request, the pool, a
//! worker) so logs and metrics can tell them apart; `Status` is made here only.

use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Code, Status};

use crate::tenancy::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request itself is wrong; `field` names the part at fault.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The request names a model the pool does not have.
    #[error("{field}: unknown model {model:?}; the pool serves: {known}")]
    UnknownModel {
        field: String,
        model: String,
        known: String,
    },
    /// No model satisfies the request's routing hints.
    #[error("{0}")]
    Unsatisfiable(String),
    /// Nobody can serve now (no workers, all unhealthy or full).
    #[error("{0}")]
    NoWorker(String),
    /// The worker failed; `status` is what it said.
    #[error("worker {worker_id} failed: {}", status.message())]
    Worker { worker_id: String, status: Status },
    /// The request ran out of time.
    #[error("request exceeded its deadline of {0:?}")]
    Deadline(std::time::Duration),
    /// A streaming client left its stream unread for this long.
    #[error(
        "the client did not read its stream for {0:?}; the stream was ended and its worker call cancelled"
    )]
    ClientStalled(std::time::Duration),
    /// The tenant is over one of its limits.
    #[error("tenant {tenant:?} is over its {limit} limit ({value}){detail}; retry later")]
    OverLimit {
        tenant: String,
        limit: crate::tenancy::limits::LimitKind,
        value: String,
        /// What is used or reserved, and what the request asked.
        detail: String,
    },
    /// Limits cannot be checked and the gateway fails closed.
    #[error(
        "tenant limits cannot be checked (limits store unavailable, limits_fail_open is false): {0}"
    )]
    LimitsUnavailable(String),
    /// Every healthy worker that fits is at capacity.
    #[error("{0}; retry with backoff")]
    Saturated(String),
    /// The gateway is at its concurrency limit.
    #[error("gateway at its limit of {0} concurrent requests; retry with backoff")]
    Overloaded(usize),
    /// The request's credentials were not accepted.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The tenant sent more Feedback this minute than
    /// `gateway.feedback_per_minute` allows.
    #[error(
        "tenant {tenant:?} is over its feedback limit of {per_minute} per minute \
         (gateway.feedback_per_minute; across replicas with registry.redis); retry later"
    )]
    FeedbackRateLimited { tenant: String, per_minute: u32 },
    /// Feedback for a request id the gateway does not remember (or that
    /// another tenant made: the same answer, so ids are not revealed).
    #[error("request_id: no recent request {0:?} (feedback is kept for the last requests only)")]
    UnknownRequest(String),
}

impl GatewayError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            GatewayError::InvalidArgument { .. } => Code::InvalidArgument,
            GatewayError::UnknownModel { .. } | GatewayError::UnknownRequest(_) => Code::NotFound,
            GatewayError::Unsatisfiable(_) => Code::FailedPrecondition,
            GatewayError::NoWorker(_) => Code::Unavailable,
            GatewayError::Worker { status, .. } => match status.code() {
                // A worker's refusal of its own request shape means the gateway
                // sent something wrong: that is the gateway's fault.
                Code::FailedPrecondition => Code::Internal,
                code => code,
            },
            GatewayError::Deadline(_) | GatewayError::ClientStalled(_) => Code::DeadlineExceeded,
            GatewayError::Auth(AuthError::KeyStoreUnavailable(_)) => Code::Unavailable,
            GatewayError::Auth(_) => Code::Unauthenticated,
            GatewayError::Overloaded(_)
            | GatewayError::OverLimit { .. }
            | GatewayError::FeedbackRateLimited { .. }
            | GatewayError::Saturated(_) => Code::ResourceExhausted,
            GatewayError::LimitsUnavailable(_) => Code::Unavailable,
        }
    }

    /// The request field at fault, when the client's request was wrong.
    pub fn field(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidArgument { field, .. }
            | GatewayError::UnknownModel { field, .. } => Some(field),
            GatewayError::UnknownRequest(_) => Some("request_id"),
            _ => None,
        }
    }

    /// Logs the failure at the level its side deserves: the client's
    /// mistakes at debug, everything else as a warning.
    pub fn log(&self) {
        match (self, self.side()) {
            (_, "client") => tracing::debug!(error = %self, "request refused"),
            // Shedding refuses thousands of calls a second by design: a line
            // each would cost the CPU the shedding saves (metrics count them).
            (GatewayError::Overloaded(_) | GatewayError::Saturated(_), _) => {
                if let Some(refused) = SHED_LOG.permit() {
                    tracing::warn!(error = %self, refused, "shedding load (one line a second at most; refused: calls since the last line)");
                }
            }
            (_, side) => tracing::warn!(error = %self, side, "request failed"),
        }
    }

    /// Which side failed, for logs and metrics.
    pub fn side(&self) -> &'static str {
        match self {
            GatewayError::InvalidArgument { .. }
            | GatewayError::UnknownModel { .. }
            | GatewayError::Unsatisfiable(_)
            | GatewayError::UnknownRequest(_)
            | GatewayError::Auth(AuthError::Unauthenticated(_) | AuthError::KeyExpired(_))
            | GatewayError::OverLimit { .. }
            | GatewayError::ClientStalled(_)
            | GatewayError::FeedbackRateLimited { .. } => "client",
            GatewayError::NoWorker(_)
            | GatewayError::Deadline(_)
            | GatewayError::Overloaded(_)
            | GatewayError::Saturated(_)
            | GatewayError::LimitsUnavailable(_)
            | GatewayError::Auth(AuthError::KeyStoreUnavailable(_)) => "gateway",
            GatewayError::Worker { .. } => "worker",
        }
    }
}

/// At most one log line a second for a kind of event that comes in floods.
struct Throttled {
    /// Seconds since the Unix epoch of the last line.
    last_second: AtomicU64,
    /// Events since the last line.
    since: AtomicU64,
}

static SHED_LOG: Throttled = Throttled {
    last_second: AtomicU64::new(0),
    since: AtomicU64::new(0),
};

impl Throttled {
    /// Counts one event; `Some(events since the last line)` when this one
    /// should be logged.
    fn permit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.permit_at(now)
    }

    fn permit_at(&self, now_second: u64) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let last = self.last_second.load(Ordering::Relaxed);
        let first_this_second = now_second > last
            && self
                .last_second
                .compare_exchange(last, now_second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        first_this_second.then(|| self.since.swap(0, Ordering::Relaxed).max(1))
    }
}

/// How long a client refused for load should wait before retrying; sent as
/// gRPC's retry pushback (and as `Retry-After` on HTTP).
pub const RETRY_PUSHBACK_MS: u32 = 250;

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        let code = e.code();
        let overloaded = matches!(
            e,
            GatewayError::Overloaded(_)
                | GatewayError::OverLimit { .. }
                | GatewayError::FeedbackRateLimited { .. }
        );
        e.log();
        let mut status = Status::new(code, e.to_string());
        if overloaded {
            status.metadata_mut().insert(
                "grpc-retry-pushback-ms",
                tonic::metadata::MetadataValue::from(RETRY_PUSHBACK_MS),
            );
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_once_a_second_with_its_count() {
        let log = Throttled {
            last_second: AtomicU64::new(0),
            since: AtomicU64::new(0),
        };
        assert_eq!(log.permit_at(100), Some(1));
        for _ in 0..999 {
            assert_eq!(log.permit_at(100), None);
        }
        // The next second's first event reports the ones held back with it.
        assert_eq!(log.permit_at(101), Some(1000));
        assert_eq!(log.permit_at(101), None);
    }
}
