//! What every request of a gateway shares: the pool, the routing brain, the
//! tenants' limits and targets, the telemetry recorder and the admission
//! semaphore.

use std::sync::Arc;
use std::time::Duration;

use routemesh_telemetry::Recorder;

use super::recent::Recent;
use crate::config::GatewayConfig;
use crate::pool::Pool;
use crate::pool::retry::RetryBudget;
use crate::routing::Routing;
use crate::tenancy::limits::Limits;
use crate::tenancy::tenants::CostTargets;

pub(crate) struct GatewayState {
    pub pool: Arc<Pool>,
    pub routing: Routing,
    pub config: GatewayConfig,
    /// Who answered recent requests, for feedback.
    pub(crate) recent: Recent,
    /// Feedback calls per tenant this minute (`gateway.feedback_per_minute`).
    pub(crate) feedback_rate: super::feedback_rate::FeedbackRate,
    pub recorder: Recorder,
    pub cost_targets: CostTargets,
    /// Requests generating now, bounded by `max_concurrent_requests`; a
    /// stream holds its permit until it ends.
    pub(crate) admission: Arc<tokio::sync::Semaphore>,
    pub(crate) retry_budget: RetryBudget,
    /// Failovers from workers that could not be reached at all.
    pub(crate) unreachable_budget: RetryBudget,
    /// Tenant rate limits and budgets.
    pub limits: Limits,
    /// Where each conversation's earlier turns were served.
    pub(crate) sessions: crate::routing::affinity::Sessions,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("routing", &self.routing)
            .finish()
    }
}

impl GatewayState {
    /// Whether a request's time budget was the gateway's whole
    /// `request_timeout` (no shorter client deadline).
    pub(crate) fn full_budget(&self, budget: Duration) -> bool {
        budget >= self.config.request_timeout
    }
}
