//! Serving one client request, whichever API it came in on: admission, the
//! strategy's calls to workers, accounting, and delivery in the shape the
//! client asked for (one answer or a stream of events).
//!
//! The path reads top to bottom: `admit` (slot, deadline, validation,
//! limits, prediction) -> a [`Strategy`] drives `Flight::call` (route, call,
//! fail over: the one attempt loop in `attempt`) -> `deliver` (the answer as
//! a response or a stream). Every call to a worker is accounted by its
//! `CallGuard` (`call`), exactly once on every exit.

mod admit;
mod attempt;
mod call;
mod deliver;
mod feedback;
mod feedback_rate;
mod incoming;
mod models;
mod recent;
mod state;
pub(crate) mod strategy;
pub(crate) mod trace;

use std::sync::Arc;

use routemesh_proto::v1::{GenerateRequest, GenerateResponse, RouteDecision};

use self::attempt::Delivery;
pub(crate) use self::deliver::EventStream;
pub(crate) use self::feedback_rate::FeedbackRate;
pub(crate) use self::incoming::Incoming;
pub(crate) use self::recent::Recent;
pub(crate) use self::state::GatewayState;
use self::strategy::Strategy;
use crate::error::GatewayError;
use crate::routing::route::RouteContext;

/// One client generation being counted: its tenant and requested model as
/// bounded labels, read before the request is consumed.
struct Counted {
    tenant: String,
    request_model: String,
    started: tokio::time::Instant,
}

impl Counted {
    fn of(state: &GatewayState, incoming: &Incoming<GenerateRequest>) -> Self {
        let message = &incoming.message;
        // The tenant as admission settles it: the API key's, else the
        // request's own, else `default`.
        // A tenant name validation would refuse is not a label value.
        let tenant = match &incoming.tenant {
            Some(crate::tenancy::auth::Tenant(t)) => t.as_str(),
            None if message.tenant.is_empty() => "default",
            None if crate::request::valid_tenant(&message.tenant) => message.tenant.as_str(),
            None => "invalid",
        };
        let snapshot = state.pool.snapshot();
        let request_model = crate::metrics::request_model_label(
            &message.model,
            snapshot.iter().map(|w| w.record.model.as_str()),
        )
        .to_string();
        Self {
            tenant: tenant.to_string(),
            request_model,
            started: tokio::time::Instant::now(),
        }
    }

    fn finish(self, response_model: Option<&str>, error: Option<&GatewayError>) {
        let code = error.map_or(tonic::Code::Ok, GatewayError::code);
        crate::metrics::tenant_request(&self.tenant, code);
        crate::metrics::generation(
            &self.request_model,
            response_model.filter(|m| !m.is_empty()),
            code,
            self.started.elapsed(),
        );
    }
}

/// The serving path: the shared state and the strategy each request follows.
#[derive(Debug)]
pub(crate) struct Pipeline {
    state: Arc<GatewayState>,
    strategy: Box<dyn Strategy>,
}

impl Pipeline {
    pub(crate) fn new(state: Arc<GatewayState>, strategy: Box<dyn Strategy>) -> Self {
        Self { state, strategy }
    }

    pub(crate) fn state(&self) -> &Arc<GatewayState> {
        &self.state
    }

    /// The strategy's name, as configuration and logs say it.
    pub(crate) fn strategy(&self) -> &'static str {
        self.strategy.name()
    }

    /// Generates a whole answer.
    pub(crate) async fn generate(
        &self,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<GenerateResponse, GatewayError> {
        let counted = Counted::of(&self.state, &incoming);
        let result = async {
            let mut flight = self.state.admit(incoming).await?;
            trace::admitted(&flight.span, &flight.req, self.strategy.name());
            let answer = self.strategy.run(&mut flight, Delivery::Whole).await?;
            deliver::whole(flight, answer).await
        }
        .await;
        let model = result
            .as_ref()
            .ok()
            .and_then(|r| r.usage.as_ref())
            .map(|u| u.model.as_str());
        counted.finish(model, result.as_ref().err());
        result
    }

    /// Generates a stream of events, with the request's id. The routing
    /// decision and the first token have arrived when this returns; failures
    /// before that fail the call (and are what the request is counted with:
    /// a later failure is counted by its worker call).
    pub(crate) async fn generate_stream(
        &self,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<(String, EventStream), GatewayError> {
        let counted = Counted::of(&self.state, &incoming);
        let started = async {
            let mut flight = self.state.admit(incoming).await?;
            trace::admitted(&flight.span, &flight.req, self.strategy.name());
            let answer = self.strategy.run(&mut flight, Delivery::Stream).await?;
            Ok((flight, answer))
        }
        .await;
        match started {
            Ok((flight, answer)) => {
                counted.finish(Some(&answer.route().model), None);
                let request_id = flight.req.request_id.clone();
                Ok((request_id, deliver::stream(flight, answer)))
            }
            Err(e) => {
                counted.finish(None, Some(&e));
                Err(e)
            }
        }
    }

    /// The decision a generation would get now, without calling any worker.
    pub(crate) async fn route_only(
        &self,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<RouteDecision, GatewayError> {
        let state = &self.state;
        // Routing runs the router: it takes a slot and counts against the
        // tenant's requests per minute like a generation (no tokens).
        let _slot = state.take_slot()?;
        let snapshot = state.pool.snapshot();
        let req = state.accept(incoming, &snapshot)?;
        state.check_route_limits(&req).await?;
        let predicted = state.predict(&req, &snapshot).await;
        let session = state.session_of(&req).await;
        let live = state.recorder.snapshot();
        let cx = RouteContext {
            req: req.routing(),
            predicted: predicted.as_ref(),
            live: &live,
            cost_weight: state.cost_targets.cost_weight(&req.tenant),
            owner: &req.owner,
            session: session.as_ref().map(|(s, sticky)| (s, sticky.as_ref())),
        };
        // A strategy that narrows the first call (a cascade's cheap step)
        // is shown as that call would be routed.
        let first = self
            .strategy
            .first_step_models(&snapshot, &req, predicted.as_ref());
        let workers: Vec<_> = snapshot
            .iter()
            .filter(|w| first.as_ref().is_none_or(|m| m.contains(&w.record.model)))
            .collect();
        let mut decision = state.routing.route(&cx, &workers, &[])?.explanation;
        decision.strategy = self.strategy.name().to_string();
        Ok(decision)
    }
}
