//! Feedback: a client's score for an answer, attributed to the model that
//! gave it, kept as an exemplar at the prompt's point in the router's
//! embedding space (see `routing::feedback`), for routing to learn from.
//!
//! Feedback is guarded: only the tenant whose API key made a request may
//! score it (another tenant gets the same NOT_FOUND as for an unknown id, so
//! ids are not revealed); a request holds one score, a later one replaces it
//! (500 scores on one request move a model exactly as its last one does);
//! each tenant may send `gateway.feedback_per_minute` Feedback calls a
//! minute; and a tenant's feedback moves only its own routing unless it is
//! `trusted_feedback`.

use std::sync::Arc;

use routemesh_proto::v1::{FeedbackRequest, FeedbackResponse};
use routemesh_telemetry::FeedbackEvent;

use routemesh_mesh::ModelSpec;

use super::recent::{Owner, Scored, Served};
use super::state::GatewayState;
use crate::error::GatewayError;
use crate::routing::feedback::{FeedbackEntry, Scope, entry_key};

impl GatewayState {
    /// Records `owner`'s score for one of its requests.
    pub(crate) async fn feedback(
        &self,
        owner: &Owner,
        request: FeedbackRequest,
    ) -> Result<FeedbackResponse, GatewayError> {
        let now_ms = routemesh_telemetry::record::now_ms();
        // Before anything else, so a flood of calls (valid or not) costs
        // the gateway a counter each.
        self.feedback_rate.admit(owner, now_ms).await?;
        let FeedbackRequest {
            request_id,
            score,
            comment,
        } = request;
        if request_id.is_empty() {
            return Err(GatewayError::invalid("request_id", "must not be empty"));
        }
        if !(score.is_finite() && (0.0..=1.0).contains(&score)) {
            return Err(GatewayError::invalid(
                "score",
                format!("{score} is not in [0, 1]"),
            ));
        }
        if comment.chars().count() > 1000 {
            return Err(GatewayError::invalid(
                "comment",
                "longer than 1000 characters",
            ));
        }
        let served = match self.recent.lookup(owner, &request_id) {
            Some(served) => served,
            None => self
                .served_elsewhere(owner, &request_id)
                .await
                .ok_or_else(|| GatewayError::UnknownRequest(request_id.clone()))?,
        };
        let scope = self.feedback_scope(owner);
        self.count_score(owner, &request_id, &served, &scope, score, now_ms)
            .await;
        if let Some(entry) = self.exemplar(owner, &request_id, &served, scope, score, now_ms) {
            self.routing.feedback.record(entry).await;
        }
        Ok(FeedbackResponse {
            model: served.spec.name.clone(),
            worker_id: served.worker_id.to_string(),
        })
    }

    /// A request another replica served (shared through Redis), with the
    /// model as this replica's pool knows it.
    async fn served_elsewhere(&self, owner: &Owner, request_id: &str) -> Option<Served> {
        let elsewhere = self.recent.lookup_elsewhere(owner, request_id).await?;
        let snapshot = self.pool.snapshot();
        // A model that has left the pool since is still scored, by name.
        let spec = snapshot
            .iter()
            .find(|w| w.spec.name == elsewhere.model)
            .map_or_else(
                || {
                    Arc::new(ModelSpec::named(
                        &elsewhere.model,
                        routemesh_mesh::Tier::Small,
                    ))
                },
                |w| w.spec.clone(),
            );
        Some(Served::new(
            spec,
            elsewhere.worker_id.into(),
            elsewhere.prompt.map(Arc::new),
        ))
    }

    /// Adds the score to the telemetry's per-model totals, as a
    /// replacement when the request was scored before (on any replica,
    /// when requests are shared).
    async fn count_score(
        &self,
        owner: &Owner,
        request_id: &str,
        served: &Served,
        scope: &Scope,
        score: f64,
        now_ms: u64,
    ) {
        if self.recent.is_shared()
            && let Ok(earlier) = self
                .recent
                .swap_shared_score(owner, request_id, score, now_ms)
                .await
        {
            self.recorder
                .feedback(score_event(served, scope, score, now_ms, earlier));
            return;
        }
        // Held while the event is queued: two concurrent scores for one
        // request are recorded one after the other, the second replacing
        // the first, never both counted as new.
        let mut scored = served
            .scored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let earlier = *scored;
        let event = score_event(served, scope, score, now_ms, earlier);
        // A dropped event (telemetry channel full) leaves the request's
        // recorded score as it was, so the next replacement's difference is
        // taken from what the aggregate really holds.
        if self.recorder.feedback(event) {
            *scored = Some(Scored {
                score,
                at_ms: earlier.map_or(now_ms, |e| e.at_ms),
            });
        }
    }

    /// Whose routing `owner`'s feedback moves: every tenant's for a
    /// `trusted_feedback` tenant, else its own.
    fn feedback_scope(&self, owner: &Option<String>) -> Scope {
        let trusted = owner
            .as_ref()
            .and_then(|t| self.config.tenants.get(t))
            .is_some_and(|t| t.trusted_feedback);
        if trusted {
            Scope::Global
        } else {
            Scope::Tenant(owner.clone())
        }
    }

    /// The exemplar of a scored request: at its prompt's point, with the
    /// residual against what routing predicted there for the model before
    /// feedback. `None` without a router point (no router, or a prompt the
    /// encoder could not place): the telemetry's totals still count it.
    fn exemplar(
        &self,
        owner: &Option<String>,
        request_id: &str,
        served: &Served,
        scope: Scope,
        score: f64,
        now_ms: u64,
    ) -> Option<FeedbackEntry> {
        let predicted = served.predicted.as_ref()?;
        let point = predicted.point.clone()?;
        let routing = &self.routing;
        let snapshot = self.pool.snapshot();
        let workers: Vec<_> = snapshot.iter().collect();
        let pool = routing.training_pool(&workers);
        let knowledge = routing.quality.knowledge(&served.spec);
        let (base, _, _) = routing.base_quality(&served.spec, &knowledge, Some(predicted), pool);
        Some(FeedbackEntry {
            key: entry_key(owner, request_id),
            scope,
            source: owner.clone(),
            model: served.spec.name.clone(),
            score: score as f32,
            base: base as f32,
            space: predicted.space.to_string(),
            point,
            embedding: predicted.embedding.clone(),
            at_ms: now_ms,
        })
    }
}

/// The telemetry event of a score: a replacement of `earlier` (dated as
/// it was, so both leave the window together) or a new one.
fn score_event(
    served: &Served,
    scope: &Scope,
    score: f64,
    now_ms: u64,
    earlier: Option<Scored>,
) -> FeedbackEvent {
    FeedbackEvent {
        at_ms: earlier.map_or(now_ms, |e| e.at_ms),
        model: served.spec.name.clone(),
        scope: scope.label(),
        score,
        replaces: earlier.map(|e| e.score),
    }
}
