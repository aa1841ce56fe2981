//! Marking requests in progress on their connection: a tower layer (for
//! tonic and axum alike) that holds a [`RequestGuard`] from the request until
//! its response body ends, so a stream is never taken for an idle connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::{ConnInfo, ConnState, RequestGuard};

/// A layer that marks each request in progress on its connection (found by
/// `conn_of` in the request's extensions) until its response body ends.
#[derive(Clone)]
pub struct TrackRequestsLayer {
    conn_of: fn(&http::Extensions) -> Option<Arc<ConnState>>,
}

impl TrackRequestsLayer {
    pub fn new(conn_of: fn(&http::Extensions) -> Option<Arc<ConnState>>) -> Self {
        Self { conn_of }
    }

    /// For tonic servers: plain or TLS connections accepted by
    /// [`accept_guarded`].
    pub fn tonic() -> Self {
        Self::new(|ext| {
            ext.get::<ConnInfo>()
                .or_else(|| {
                    ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                        .map(|tls| tls.get_ref())
                })
                .map(|info| info.state.clone())
        })
    }
}

impl<S> tower::Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests {
            inner,
            conn_of: self.conn_of,
        }
    }
}

#[derive(Clone)]
pub struct TrackRequests<S> {
    inner: S,
    conn_of: fn(&http::Extensions) -> Option<Arc<ConnState>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TrackRequests<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = (self.conn_of)(request.extensions()).map(|state| state.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Tracked {
                body,
                _guard: guard,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in progress until it ends.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        _guard: Option<RequestGuard>,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
