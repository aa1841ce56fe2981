//! Who may read the admin port's data. With `gateway.admin_auth`, the cost,
//! overview and telemetry views (every tenant's spend and traffic) answer
//! only `Authorization: Bearer <token>` whose SHA-256 is configured;
//! liveness, readiness and the page itself (which holds no data) stay open,
//! and `/metrics` too unless `protect_metrics`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::AdminAuth;

/// The configured token's digest, decoded once.
#[derive(Clone)]
pub(super) struct AdminAccess {
    digest: [u8; 32],
    protect_metrics: bool,
}

impl AdminAccess {
    /// Hex that does not decode (check-config refuses such a file before it
    /// gets here) fails closed: no token's digest is all zeros.
    pub(super) fn new(auth: &AdminAuth) -> Self {
        let digest = hex::decode(&auth.sha256)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .unwrap_or([0; 32]);
        Self {
            digest,
            protect_metrics: auth.protect_metrics,
        }
    }

    fn open(&self, path: &str) -> bool {
        matches!(path, "/" | "/healthz" | "/readyz")
            || (path == "/metrics" && !self.protect_metrics)
    }

    fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest = crate::tenancy::keys::digest(token.trim());
        // Every byte compared, whatever the first difference.
        digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

/// Refuses the admin port's protected paths without the token: 401 with
/// `WWW-Authenticate: Bearer`.
pub(super) async fn require_token(
    State(access): State<Arc<AdminAccess>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if access.open(request.uri().path()) || access.admits(authorization) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({
            "error": "the admin port's data needs `Authorization: Bearer <token>` (gateway.admin_auth)"
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_opens_the_protected_paths() {
        let access = AdminAccess::new(&AdminAuth {
            sha256: hex::encode(crate::tenancy::keys::digest("s3cret")),
            protect_metrics: false,
        });
        assert!(access.admits(Some("Bearer s3cret")));
        for wrong in [None, Some("s3cret"), Some("Bearer nope"), Some("Bearer ")] {
            assert!(!access.admits(wrong), "{wrong:?}");
        }
        assert!(access.open("/healthz") && access.open("/metrics") && access.open("/"));
        assert!(!access.open("/v1/overview") && !access.open("/v1/cost"));
    }
}
