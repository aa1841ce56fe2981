//! Request bytes in flight on the gRPC port: each request body's frames are
//! counted against `max_request_bytes_in_flight` (shared with the HTTP API)
//! as they are read; a frame that does not fit fails the call with
//! RESOURCE_EXHAUSTED before it is buffered and decoded. The bytes are held
//! until the body is dropped (once its message is decoded).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Body, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was refused for its bytes, on either API.
pub(crate) const FULL: &str = "the gateway holds as many request bytes as it may (gateway.max_request_bytes_in_flight); retry with backoff";

/// Wraps each request body of the service under the shared byte budget.
#[derive(Clone)]
pub(crate) struct BodyBytesLayer {
    bytes: Arc<Semaphore>,
}

impl BodyBytesLayer {
    pub(crate) fn new(bytes: Arc<Semaphore>) -> Self {
        Self { bytes }
    }
}

impl<S> tower::Layer<S> for BodyBytesLayer {
    type Service = BodyBytes<S>;

    fn layer(&self, inner: S) -> BodyBytes<S> {
        BodyBytes {
            inner,
            bytes: self.bytes.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct BodyBytes<S> {
    inner: S,
    bytes: Arc<Semaphore>,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for BodyBytes<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let bytes = self.bytes.clone();
        self.inner.call(request.map(|body| {
            tonic::body::Body::new(Held {
                body,
                bytes,
                held: None,
            })
        }))
    }
}

/// A request body whose bytes read so far are held in the budget.
struct Held {
    body: tonic::body::Body,
    bytes: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
            match this.bytes.clone().try_acquire_many_owned(n) {
                Ok(permit) => match &mut this.held {
                    Some(held) => held.merge(permit),
                    None => this.held = Some(permit),
                },
                Err(_) => {
                    crate::metrics::shed();
                    return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(FULL))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
