//! Feedback: a client's score for an answer, attributed to the model that
//! gave it and the prompt's region, for the router to learn from.

use routemesh_proto::v1::{FeedbackRequest, FeedbackResponse};
use routemesh_telemetry::FeedbackEvent;

use super::state::GatewayState;
use crate::error::GatewayError;

impl GatewayState {
    pub(crate) fn feedback(
        &self,
        request: FeedbackRequest,
    ) -> Result<FeedbackResponse, GatewayError> {
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
            .lookup(&request_id)
            .ok_or(GatewayError::UnknownRequest(request_id))?;
        self.recorder.feedback(FeedbackEvent {
            at_ms: routemesh_telemetry::record::now_ms(),
            model: served.model.clone(),
            region: served.region,
            score,
        });
        Ok(FeedbackResponse {
            model: served.model,
            worker_id: served.worker_id,
        })
    }
}
