//! A client request as an API edge hands it to the serving path.

use std::time::Duration;

use crate::tenancy::auth::Tenant;

/// The message, the tenant its credentials proved (if keys are on), the
/// client's own deadline, and the server span the edge opened for it
/// (where the serving path records what the request asked and got).
#[derive(Debug)]
pub(crate) struct Incoming<T> {
    pub message: T,
    pub tenant: Option<Tenant>,
    pub deadline: Option<Duration>,
    pub span: tracing::Span,
}
