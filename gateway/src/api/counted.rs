//! Counting every client request at the edge, whatever answered it: the
//! handlers, the API-key check in front of them, the codec refusing a body,
//! or an unknown route. A request is counted when its response ends (a
//! stream's trailers or last chunk), with the code it ended with; a client
//! that leaves first is counted `Cancelled`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::Code;
use tonic::server::NamedService;

use crate::metrics::{GRPC_METHODS, HTTP_METHODS};

/// A body that calls `on_end` once, with how the response ended: the
/// `grpc-status` of its trailers if it had some, `Ok` at a plain end, the
/// body's own error, or `Cancelled` when dropped unfinished.
struct Watched<B> {
    inner: B,
    on_end: Option<Box<dyn FnOnce(Option<Code>) + Send>>,
}

impl<B> Watched<B> {
    fn end(&mut self, code: Option<Code>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        self.end(Some(Code::Cancelled));
    }
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.end(grpc_status(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Some(Code::Internal)),
            Poll::Ready(None) => self.end(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// The Gateway RPC a path names, as a bounded `method` label.
fn grpc_method(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    GRPC_METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or("unknown")
}

/// The Gateway gRPC service, every call counted by method and final code.
#[derive(Debug, Clone)]
pub(crate) struct CountedGrpc<S> {
    inner: S,
}

impl<S> CountedGrpc<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for CountedGrpc<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for CountedGrpc<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = grpc_method(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            // The codec's answer to an undecodable body is corrected here
            // already, so it is counted as the client receives it.
            let response = super::grpc::undecodable_is_invalid_argument(answer.await?);
            let finish = move |code: Code| {
                crate::metrics::request("grpc", method, code, started.elapsed());
            };
            // A trailers-only response (an error before any message).
            if let Some(code) = grpc_status(response.headers()) {
                finish(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = Watched {
                inner: body,
                on_end: Some(Box::new(move |code| finish(code.unwrap_or(Code::Unknown)))),
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

/// What the OpenAI port's handler learned of a request that the response
/// alone does not say: whether it asked for a stream, and the serving path's
/// exact code. Put in the request's extensions by [`count_http`].
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpOutcome(Arc<Mutex<(bool, Option<Code>)>>);

impl HttpOutcome {
    /// The request asked for a stream (`stream: true`).
    pub(crate) fn streamed(&self, stream: bool) {
        if let Ok(mut o) = self.0.lock() {
            o.0 = stream;
        }
    }

    /// The serving path ended the request with `code`.
    pub(crate) fn code(&self, code: Code) {
        if let Ok(mut o) = self.0.lock() {
            o.1 = Some(code);
        }
    }
}

/// The gRPC code of an HTTP status the OpenAI port answered without the
/// serving path (the inverse of `openai::error::http_status`).
fn code_of_status(status: http::StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 405 => Code::NotFound,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// The OpenAI port's middleware: counts each request by route and status
/// (`http_server_request_duration_seconds`) and, as its Gateway method and
/// code, in `routemesh_requests_total`.
pub(crate) async fn count_http(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let route: &'static str = match request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
    {
        Some("/v1/chat/completions") => "/v1/chat/completions",
        Some("/v1/responses") => "/v1/responses",
        Some("/v1/models") => "/v1/models",
        Some("/v1/models/{id}") => "/v1/models/{id}",
        _ => "unmatched",
    };
    let http_method = request.method().as_str().to_string();
    let outcome = HttpOutcome::default();
    request.extensions_mut().insert(outcome.clone());
    let response = next.run(request).await;
    let status = response.status();
    let finish = move |_: Option<Code>| {
        let (stream, code) = outcome.0.lock().map(|o| *o).unwrap_or_default();
        let method = match route {
            "/v1/chat/completions" | "/v1/responses" if stream => HTTP_METHODS[1],
            "/v1/chat/completions" | "/v1/responses" => HTTP_METHODS[0],
            "/v1/models" | "/v1/models/{id}" => HTTP_METHODS[2],
            _ => "unknown",
        };
        let took = started.elapsed();
        let code = code.unwrap_or_else(|| code_of_status(status));
        crate::metrics::request("http", method, code, took);
        crate::metrics::http_request(&http_method, route, status.as_u16(), took);
    };
    let (parts, body) = response.into_parts();
    let body = Watched {
        inner: body,
        on_end: Some(Box::new(finish)),
    };
    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(grpc_method("/routemesh.v1.Gateway/Generate"), "Generate");
        assert_eq!(
            grpc_method("/routemesh.v1.Gateway/ListModels"),
            "ListModels"
        );
        assert_eq!(grpc_method("/routemesh.v1.Gateway/Whatever"), "unknown");
    }

    #[test]
    fn statuses_map_back_to_the_codes_they_came_from() {
        use axum::http::StatusCode;
        assert_eq!(code_of_status(StatusCode::OK), Code::Ok);
        assert_eq!(
            code_of_status(StatusCode::UNAUTHORIZED),
            Code::Unauthenticated
        );
        assert_eq!(
            code_of_status(StatusCode::TOO_MANY_REQUESTS),
            Code::ResourceExhausted
        );
        assert_eq!(
            code_of_status(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(
            code_of_status(StatusCode::INTERNAL_SERVER_ERROR),
            Code::Internal
        );
    }
}
