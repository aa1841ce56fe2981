//! Errors in OpenAI's JSON shape, and the one map from the serving path's
//! failures to HTTP statuses and OpenAI error types.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;

use crate::error::GatewayError;
use crate::tenancy::auth::AuthError;

#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<String>,
    message: String,
    code: Option<&'static str>,
}

impl ApiError {
    /// OpenAI's machine-readable `code` for this error.
    pub(super) fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    #[cfg(test)]
    pub(super) fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    #[cfg(test)]
    pub(super) fn code(&self) -> Option<&'static str> {
        self.code
    }

    /// The error as an SSE stream's error event carries it.
    pub(super) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // Whole seconds: the pushback rounded up.
            let secs = crate::error::RETRY_PUSHBACK_MS.div_ceil(1000).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

pub(super) fn openai_error(
    status: StatusCode,
    kind: &'static str,
    param: Option<&str>,
    message: String,
) -> ApiError {
    ApiError {
        status,
        kind,
        param: param.map(str::to_owned),
        message,
        code: None,
    }
}

/// The HTTP status and OpenAI error type for a gRPC status: the one place the
/// HTTP edge translates failures.
pub(super) fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable_error"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        Code::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "cancelled",
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

/// A field of the native request in OpenAI's spelling: `params.temperature`
/// is `temperature`, `hints.max_cost_usd` is `routing.max_cost_usd`.
fn openai_param(field: &str) -> String {
    if let Some(rest) = field.strip_prefix("params.") {
        rest.to_string()
    } else if let Some(rest) = field.strip_prefix("hints.") {
        format!("routing.{rest}")
    } else {
        field.to_string()
    }
}

/// OpenAI's `code` for a failure of the serving path, where OpenAI has one.
fn openai_code(e: &GatewayError) -> Option<&'static str> {
    Some(match e {
        GatewayError::UnknownModel { field, .. } if field == "model" => "model_not_found",
        GatewayError::InvalidArgument { .. } => "invalid_value",
        GatewayError::Auth(AuthError::Unauthenticated(_) | AuthError::KeyExpired(_)) => {
            "invalid_api_key"
        }
        GatewayError::OverLimit { .. }
        | GatewayError::FeedbackRateLimited { .. }
        | GatewayError::Overloaded(_)
        | GatewayError::Saturated(_) => "rate_limit_exceeded",
        GatewayError::Worker { status, .. } if status.code() == Code::OutOfRange => {
            "context_length_exceeded"
        }
        _ => return None,
    })
}

/// A failure of the serving path in OpenAI's shape; `param` names the field
/// at fault when the request was wrong.
pub(super) fn gateway_error(e: GatewayError) -> ApiError {
    e.log();
    let (http, kind) = http_status(e.code());
    let param = e.field().map(openai_param);
    let message = match (e.field(), &param) {
        // The message starts with the field's name: say it as OpenAI does.
        (Some(field), Some(param)) if field != param => e.to_string().replacen(field, param, 1),
        _ => e.to_string(),
    };
    ApiError {
        status: http,
        kind,
        param,
        message,
        code: openai_code(&e),
    }
}

pub(super) fn bad_request(param: &str, message: impl Into<String>) -> ApiError {
    openai_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(param),
        format!("{param}: {}", message.into()),
    )
}
