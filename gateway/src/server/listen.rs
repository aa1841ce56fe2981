//! The gateway's listeners: binding, serving the HTTP apps (OpenAI API and
//! admin) through the capped, timed acceptor (and TLS), and the tasks that
//! own certificate watchers and acceptors.

use std::net::SocketAddr;
use std::sync::Arc;

use routemesh_mesh::{conn, tls};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ServeError;

pub(super) async fn bind_optional(
    addr: Option<SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, ServeError> {
    match addr {
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| ServeError::Bind { addr, source }),
        None => Ok(None),
    }
}

pub(super) type HttpTask = JoinHandle<Result<(), std::io::Error>>;

/// The public ports' TLS configurations, built from one set of files: gRPC
/// offers HTTP/2 only, the HTTP API both HTTP/2 and HTTP/1.1.
pub(super) struct PublicTls {
    pub(super) grpc: Arc<rustls::ServerConfig>,
    pub(super) http: Arc<rustls::ServerConfig>,
}

/// Connections an acceptor task hands over (plain, under the listener's
/// limits, or after their TLS handshake), as an axum listener.
struct ChannelListener<IO> {
    accepted: tokio::sync::mpsc::Receiver<(IO, SocketAddr)>,
    addr: SocketAddr,
}

impl<IO> axum::serve::Listener for ChannelListener<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = IO;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped: so does serving, by its shutdown signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A connection's state as axum hands it to requests (connect info), so
/// that [`conn::TrackRequestsLayer`] can mark requests in progress.
#[derive(Clone)]
struct HttpConn(Arc<conn::ConnState>);

impl<IO>
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ChannelListener<IO>>>
    for HttpConn
where
    IO: conn::GuardedConn + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, ChannelListener<IO>>) -> Self {
        HttpConn(stream.io().conn_info().state.clone())
    }
}

fn http_conn_of(ext: &http::Extensions) -> Option<Arc<conn::ConnState>> {
    ext.get::<axum::extract::ConnectInfo<HttpConn>>()
        .map(|info| info.0.0.clone())
}

/// Serves an axum app (traced) until `stop`, with its connections under
/// `limits` (`what`: the listener's name), over TLS when `tls` gives a
/// configuration (per connection, so certificates can change); returns its
/// address and task.
pub(super) fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    (limits, what): (conn::ConnectionLimits, &'static str),
    tls: Option<(tls::Reloading<PublicTls>, &mut TlsTasks)>,
) -> Result<(SocketAddr, HttpTask), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let scheme = crate::api::spans::UrlScheme(if tls.is_some() { "https" } else { "http" });
    let app =
        app.layer(axum::Extension(scheme))
            // Failures are logged by the serving path at their side's level.
            .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ))
            .layer(conn::TrackRequestsLayer::new(http_conn_of));
    // The acceptor ends with the server that reads from it (or with `stop`).
    let (admitted, _acceptor) = conn::accept_guarded(listener, limits, what, stop.child_token());
    let task = match tls {
        Some((certs, tasks)) => {
            let (accepted, acceptor) = tls::accept_tls(
                admitted,
                move || certs.current().http.clone(),
                tasks.stop.child_token(),
            );
            tasks.tasks.push(acceptor);
            let listener = ChannelListener { accepted, addr };
            let app = app.into_make_service_with_connect_info::<HttpConn>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        }
        None => {
            let listener = ChannelListener {
                accepted: admitted,
                addr,
            };
            let app = app.into_make_service_with_connect_info::<HttpConn>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        }
    };
    Ok((addr, task))
}

/// The certificate watchers and TLS acceptors of a gateway, stopped when it
/// stops (or when starting it fails part way: `stop` is cancelled on drop).
pub(super) struct TlsTasks {
    pub(super) stop: CancellationToken,
    _guard: tokio_util::sync::DropGuard,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl TlsTasks {
    pub(super) fn new() -> Self {
        let stop = CancellationToken::new();
        Self {
            _guard: stop.clone().drop_guard(),
            stop,
            tasks: Vec::new(),
        }
    }

    pub(super) async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
