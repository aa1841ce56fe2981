//! A client request as an API edge hands it to the serving path.

use std::time::Duration;

use crate::tenancy::auth::Tenant;

/// Which API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Grpc,
    Http,
}

impl Api {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::Http => "http",
        }
    }
}

/// The message, the tenant its credentials proved (if keys are on), and the
/// client's own deadline.
#[derive(Debug)]
pub(crate) struct Incoming<T> {
    pub message: T,
    pub tenant: Option<Tenant>,
    pub deadline: Option<Duration>,
}
