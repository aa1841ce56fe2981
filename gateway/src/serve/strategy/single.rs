//! `single`: one routing decision before any model runs (RouteLLM-style),
//! failing over to another worker while no model has run.

use super::Strategy;
use crate::error::GatewayError;
use crate::serve::attempt::{Answer, Delivery, Flight, Step};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Single;

#[async_trait::async_trait]
impl Strategy for Single {
    fn name(&self) -> &'static str {
        "single"
    }

    async fn run(&self, flight: &mut Flight, delivery: Delivery) -> Result<Answer, GatewayError> {
        flight.call(&Step::whole_pool(), delivery).await
    }
}
