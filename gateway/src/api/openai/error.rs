//! Errors in OpenAI's JSON shape, and the one map from the serving path's
//! failures to HTTP statuses and OpenAI error types.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;

use crate::error::GatewayError;

#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<String>,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": Value::Null}});
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

/// A failure of the serving path in OpenAI's shape; `param` names the field
/// at fault when the request was wrong.
pub(super) fn gateway_error(e: GatewayError) -> ApiError {
    e.log();
    let (http, kind) = http_status(e.code());
    openai_error(http, kind, e.field(), e.to_string())
}

pub(super) fn bad_request(param: &str, message: impl Into<String>) -> ApiError {
    openai_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(param),
        format!("{param}: {}", message.into()),
    )
}
