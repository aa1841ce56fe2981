//! Serving one client request, whichever API it came in on: admission, the
//! strategy's calls to workers, accounting, and delivery in the shape the
//! client asked for (one answer or a stream of events).
//!
//! The path reads top to bottom: [`admit`] (slot, deadline, validation,
//! limits, prediction) -> a [`Strategy`](crate::routing::strategy::Strategy)
//! drives [`Flight::call`] (route, call, fail over: the one attempt loop) ->
//! [`deliver`] (the answer as a response or a stream). Every call to a worker
//! is accounted by its [`call::CallGuard`], exactly once on every exit.

mod admit;
pub(crate) mod attempt;
pub(crate) mod call;
mod deliver;
mod feedback;
mod models;
pub(crate) mod recent;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use routemesh_proto::v1::{GenerateRequest, GenerateResponse, GenerateStreamEvent, RouteDecision};
use routemesh_telemetry::Recorder;

pub(crate) use self::attempt::{Answer, Delivery, Flight, Step};
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::pool::Pool;
use crate::pool::retry::RetryBudget;
use crate::routing::quality::QualityModel;
use crate::routing::strategy::Strategy;
use crate::tenancy::auth::Tenant;
use crate::tenancy::limits::Limits;
use crate::tenancy::tenants::CostTargets;
use routemesh_router::Policy;

/// Everything the request path shares: the pool, the routing brain, the
/// tenants' limits and the telemetry recorder.
pub struct GatewayState {
    pub pool: Arc<Pool>,
    pub policy: Box<dyn Policy>,
    /// How a request is driven through calls (route once; later, cascades).
    pub(crate) strategy: Box<dyn Strategy>,
    pub config: GatewayConfig,
    pub(crate) recent: recent::Recent,
    pub recorder: Recorder,
    pub cost_targets: CostTargets,
    /// Requests generating now, bounded by `max_concurrent_requests`; a
    /// stream holds its permit until it ends.
    pub(crate) admission: Arc<tokio::sync::Semaphore>,
    /// The learned router (or priors).
    pub quality: QualityModel,
    pub(crate) retry_budget: RetryBudget,
    /// Tenant rate limits and budgets.
    pub limits: Limits,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("policy", &self.policy.name())
            .field("strategy", &self.strategy.name())
            .finish()
    }
}

/// Which API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Grpc,
    Http,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::Http => "http",
        }
    }
}

/// A client request as an API edge hands it to the path: the message, the
/// tenant its credentials proved (if keys are on), and its own deadline.
#[derive(Debug)]
pub struct Incoming<T> {
    pub message: T,
    pub tenant: Option<Tenant>,
    pub deadline: Option<Duration>,
}

impl<T> Incoming<T> {
    pub fn new(message: T) -> Self {
        Self {
            message,
            tenant: None,
            deadline: None,
        }
    }
}

/// The events of a streamed generation: the route, deltas, then the end (or
/// an error, mid-stream).
pub type EventStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<GenerateStreamEvent, GatewayError>> + Send>,
>;

impl GatewayState {
    /// Generates a whole answer.
    pub async fn generate(
        self: &Arc<Self>,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<GenerateResponse, GatewayError> {
        let mut flight = self.admit(incoming).await?;
        let answer = self.strategy.run(&mut flight, Delivery::Whole).await?;
        deliver::whole(flight, answer).await
    }

    /// Generates a stream of events, with the request's id. The routing
    /// decision and the first token have arrived when this returns; failures
    /// before that fail the call.
    pub async fn generate_stream(
        self: &Arc<Self>,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<(String, EventStream), GatewayError> {
        let mut flight = self.admit(incoming).await?;
        let answer = self.strategy.run(&mut flight, Delivery::Stream).await?;
        let request_id = flight.req.request_id.clone();
        Ok((request_id, deliver::stream(flight, answer)))
    }

    /// The decision a generation would get now, without calling any worker.
    pub async fn route_only(
        &self,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<RouteDecision, GatewayError> {
        let snapshot = self.pool.snapshot();
        let req = self.accept(incoming, &snapshot)?;
        let predicted = self.predict(&req, &snapshot).await;
        let workers: Vec<_> = snapshot.iter().collect();
        let routed = self.route(&req, &workers, &[], predicted.as_ref())?;
        Ok(routed.explanation)
    }

    /// Whether a request's time budget was the gateway's whole
    /// `request_timeout` (no shorter client deadline).
    pub(crate) fn full_budget(&self, budget: Duration) -> bool {
        budget >= self.config.request_timeout
    }
}
