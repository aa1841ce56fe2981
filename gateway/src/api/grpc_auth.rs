//! API-key authentication in front of one gRPC service. Asynchronous (a key
//! may have to be read from Redis), so it is a tower service rather than a
//! tonic interceptor; the tenant goes into the request's extensions, where
//! tonic hands it to the service. A refused call gets its server span here,
//! since the service never sees it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;

use crate::tenancy::auth::ApiKeys;

/// `inner`, answering UNAUTHENTICATED (or UNAVAILABLE when keys cannot be
/// checked) before it when the request's `authorization` is not accepted.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    keys: ApiKeys,
}

impl<S> Authenticated<S> {
    pub(crate) fn new(inner: S, keys: ApiKeys) -> Self {
        Self { inner, keys }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is ready only if polled; keep the polled one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        Box::pin(async move {
            if keys.enabled() {
                let authorization = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match keys.authenticate(authorization).await {
                    Ok(Some(tenant)) => {
                        request.extensions_mut().insert(tenant);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let status = tonic::Status::from(crate::error::GatewayError::from(e));
                        crate::api::spans::grpc_refused(
                            request.uri().path(),
                            request.headers(),
                            &status,
                        );
                        return Ok(status.into_http());
                    }
                }
            }
            inner.call(request).await
        })
    }
}
