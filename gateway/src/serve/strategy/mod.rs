//! Strategies: how one request is driven through calls to workers. A strategy
//! asks `Flight::call` for a step (route, call, fail over), may look at the
//! answer, and decides whether to call again; the serving path delivers
//! whatever answer it ends with. A new way of combining models (a cascade
//! that escalates weak answers) is one new file here.

mod cascade;
mod single;
mod verify;

use super::attempt::{Answer, Delivery, Flight};
use crate::config::{GatewayConfig, StrategyKind};
use crate::error::GatewayError;

pub(crate) use cascade::Cascade;
pub(crate) use single::Single;

/// The strategy the configuration names.
pub(crate) fn from_config(config: &GatewayConfig) -> Box<dyn Strategy> {
    match config.strategy {
        StrategyKind::Single => Box::new(Single),
        StrategyKind::Cascade => Box::new(Cascade::new(config.cascade.clone())),
    }
}

#[async_trait::async_trait]
pub(crate) trait Strategy: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;

    /// Drives `flight` to the answer it returns to the client, in the
    /// client's `delivery` where it can (a strategy that must read an answer
    /// before deciding asks for it whole; the serving path streams it).
    async fn run(&self, flight: &mut Flight, delivery: Delivery) -> Result<Answer, GatewayError>;

    /// For a dry run (`Route`): the models the first call would route
    /// among, when the strategy narrows the pool (`None`: the whole pool).
    fn first_step_models(
        &self,
        _snapshot: &crate::pool::Snapshot,
        _req: &crate::request::ValidRequest,
        _predicted: Option<&crate::routing::quality::Predicted>,
    ) -> Option<Vec<String>> {
        None
    }
}
