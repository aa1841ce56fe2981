//! Feedback: a client's score for an answer, attributed to the model that
//! gave it and the prompt's region, for the router to learn from.
//!
//! Feedback moves every tenant's routing, so it is guarded: only the tenant
//! whose API key made a request may score it (another tenant gets the same
//! NOT_FOUND as for an unknown id, so ids are not revealed); a request holds
//! one score, a later one replaces it (500 scores on one request move a
//! model exactly as its last one does); and each tenant may send
//! `gateway.feedback_per_minute` Feedback calls a minute.

use routemesh_proto::v1::{FeedbackRequest, FeedbackResponse};
use routemesh_telemetry::FeedbackEvent;

use super::recent::{Owner, Scored};
use super::state::GatewayState;
use crate::error::GatewayError;

impl GatewayState {
    /// Records `owner`'s score for one of its requests.
    pub(crate) fn feedback(
        &self,
        owner: &Owner,
        request: FeedbackRequest,
    ) -> Result<FeedbackResponse, GatewayError> {
        let now_ms = routemesh_telemetry::record::now_ms();
        // Before anything else, so a flood of calls (valid or not) costs
        // the gateway a counter each.
        self.feedback_rate.admit(owner, now_ms)?;
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
        let served = self
            .recent
            .lookup(owner, &request_id)
            .ok_or(GatewayError::UnknownRequest(request_id))?;
        // Held while the event is queued: two concurrent scores for one
        // request are recorded one after the other, the second replacing
        // the first, never both counted as new.
        let mut scored = served
            .scored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let earlier = *scored;
        let event = FeedbackEvent {
            at_ms: earlier.map_or(now_ms, |e| e.at_ms),
            model: served.model.clone(),
            region: served.region.clone(),
            score,
            replaces: earlier.map(|e| e.score),
        };
        // A dropped event (telemetry channel full) leaves the request's
        // recorded score as it was, so the next replacement's difference is
        // taken from what the aggregate really holds.
        if self.recorder.feedback(event) {
            *scored = Some(Scored {
                score,
                at_ms: earlier.map_or(now_ms, |e| e.at_ms),
            });
        }
        drop(scored);
        Ok(FeedbackResponse {
            model: served.model,
            worker_id: served.worker_id,
        })
    }
}
