//! Everything a generation passes before any worker is chosen, in order: a
//! slot under `max_concurrent_requests`, the retry budget's deposit, the
//! deadline, validation and the tenant, the tenant's limits, the prediction.

use std::time::Duration;

use routemesh_proto::v1::GenerateRequest;
use tokio::time::Instant;

use super::attempt::Flight;
use super::incoming::Incoming;
use super::state::GatewayState;
use crate::error::GatewayError;
use crate::pool::Snapshot;
use crate::request::{ValidRequest, validate};
use crate::routing::affinity::{Session, Sticky};
use crate::routing::quality::Predicted;
use crate::tenancy::auth::Tenant;
use crate::tenancy::limits::{Ask, Refusal, Reservation};

impl GatewayState {
    /// Admits a generation or refuses it with the reason.
    pub(crate) async fn admit(
        self: &std::sync::Arc<Self>,
        incoming: Incoming<GenerateRequest>,
    ) -> Result<Flight, GatewayError> {
        let permit = self.take_slot()?;
        self.retry_budget.deposit();
        self.unreachable_budget.deposit();
        let budget = self.budget(incoming.deadline);
        let deadline = Instant::now() + budget;
        let snapshot = self.pool.snapshot();
        let span = incoming.span.clone();
        let req = self.accept(incoming, &snapshot)?;
        let reservation = self.check_limits(&req, &snapshot, budget).await?;
        let predicted = self.predict(&req, &snapshot).await;
        let session = self.session_of(&req).await;
        let mut flight = Flight::new(
            self.clone(),
            permit,
            budget,
            deadline,
            snapshot,
            req,
            predicted,
            span,
        );
        flight.session = session;
        flight.reservation = reservation;
        Ok(flight)
    }

    /// The request's session and where its earlier turns went, if known.
    pub(crate) async fn session_of(&self, req: &ValidRequest) -> Option<(Session, Option<Sticky>)> {
        let session = self.sessions.session_of(
            &req.tenant,
            &req.session_id,
            req.pinned_model.is_some(),
            &req.messages,
        )?;
        let sticky = self.sessions.lookup(&session).await;
        Some((session, sticky))
    }

    /// Validates the request and settles its tenant: the API key's when keys
    /// are on (the request's own `tenant` must then be empty or the same).
    pub(crate) fn accept(
        &self,
        incoming: Incoming<GenerateRequest>,
        snapshot: &Snapshot,
    ) -> Result<ValidRequest, GatewayError> {
        let Incoming {
            message: mut request,
            tenant,
            ..
        } = incoming;
        let owner = tenant.as_ref().map(|Tenant(t)| t.clone());
        if let Some(Tenant(tenant)) = tenant {
            if !request.tenant.is_empty() && request.tenant != tenant {
                return Err(GatewayError::invalid(
                    "tenant",
                    format!(
                        "the API key belongs to tenant {tenant:?}; leave tenant empty or use that"
                    ),
                ));
            }
            request.tenant = tenant;
        }
        let mut models: Vec<&str> = snapshot.iter().map(|w| w.record.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        let mut valid = validate(request, &self.config, &models)?;
        valid.owner = owner;
        Ok(valid)
    }

    /// The learned router's view of this request: predictions for routing
    /// and, even for a pinned model, the prompt's region for feedback.
    pub(crate) async fn predict(
        &self,
        req: &ValidRequest,
        snapshot: &Snapshot,
    ) -> Option<Predicted> {
        let quality = &self.routing.quality;
        let names = quality.router_names(snapshot.iter().map(|w| &*w.spec));
        let models: Vec<&str> = names.iter().map(String::as_str).collect();
        quality.predict(&req.routing_prompt(), &models).await
    }

    /// The tenant's rate limits and budgets, checked before any work: the
    /// request's most (its estimated prompt and `max_tokens`, at the highest
    /// prices of the models that may serve it) is reserved until it ends.
    async fn check_limits(
        &self,
        req: &ValidRequest,
        snapshot: &Snapshot,
        budget: Duration,
    ) -> Result<Reservation, GatewayError> {
        if !self.limits.limits(&req.tenant) {
            return Ok(Reservation::none());
        }
        self.reserve(req, most_a_request_may_use(req, snapshot), budget)
            .await
    }

    /// A `Route` call's limits: a request this minute, nothing to reserve
    /// (and refused, like a generation, once a budget is spent).
    pub(crate) async fn check_route_limits(&self, req: &ValidRequest) -> Result<(), GatewayError> {
        if self.limits.limits(&req.tenant) {
            self.reserve(req, Ask::default(), Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn reserve(
        &self,
        req: &ValidRequest,
        ask: Ask,
        budget: Duration,
    ) -> Result<Reservation, GatewayError> {
        // A holder that vanished (a crashed replica) gives its reservation
        // back after the request's time and a margin.
        let hold_for = budget + Duration::from_secs(60);
        match self
            .limits
            .admit(
                &req.tenant,
                ask,
                hold_for,
                routemesh_telemetry::record::now_ms(),
            )
            .await
        {
            Ok(reservation) => Ok(reservation),
            Err(Refusal::Over {
                limit,
                value,
                detail,
            }) => {
                crate::metrics::limit_rejected(&req.tenant, limit.as_str());
                Err(GatewayError::OverLimit {
                    tenant: req.tenant.clone(),
                    limit,
                    value,
                    detail,
                })
            }
            Err(Refusal::StoreDown(e)) => {
                crate::metrics::limit_rejected(&req.tenant, "store_unavailable");
                Err(GatewayError::LimitsUnavailable(e))
            }
        }
    }

    /// A slot for a generation, or a refusal at once: queueing here would
    /// only add latency in front of workers that are already full.
    pub(crate) fn take_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            crate::metrics::shed();
            GatewayError::Overloaded(self.config.max_concurrent_requests)
        })
    }

    /// The request's time budget: the client's deadline if it is shorter than
    /// the gateway's `request_timeout`, less a margin: the gateway answers
    /// DEADLINE_EXCEEDED (saying why) a moment before the client's deadline,
    /// since at the deadline itself the server's own timer would answer
    /// CANCELLED ("Timeout expired").
    fn budget(&self, client_deadline: Option<Duration>) -> Duration {
        client_deadline.map_or(self.config.request_timeout, |d| {
            let margin = (d / 20).clamp(Duration::from_millis(2), Duration::from_millis(100));
            d.saturating_sub(margin).min(self.config.request_timeout)
        })
    }
}

/// The most one call of `req` may consume: its estimated prompt plus
/// `max_tokens`, at the highest prices among the models that may serve it
/// (the pinned one, or the whole pool). A cascade's follow-up calls are
/// charged when they happen and are not part of the reservation.
fn most_a_request_may_use(req: &ValidRequest, snapshot: &Snapshot) -> Ask {
    let prompt = req.prompt_tokens_estimate();
    let completion = req.max_tokens();
    let cost_usd = snapshot
        .iter()
        .filter(|w| {
            req.pinned_model
                .as_deref()
                .is_none_or(|m| w.record.model == m)
        })
        .map(|w| w.spec.prices().cost_usd(prompt, completion))
        .fold(0.0, f64::max);
    Ask {
        tokens: u64::from(prompt) + u64::from(completion),
        cost_usd,
    }
}
