//! Connection hygiene for every listener (gateway gRPC, HTTP and admin;
//! worker gRPC): a cap on open connections (beyond it a new connection is
//! closed at once, so a flood of idle sockets cannot exhaust the process's
//! file descriptors; each listener has its own cap, so the admin port's
//! health probes keep their room), and a connection with no request in
//! progress is closed after `header_timeout` (before its first request: a
//! slowloris client that never finishes its headers or HTTP/2 preface) or
//! `idle_timeout` (between requests). Requests in progress (until their
//! response body ends, streams included) keep a connection open. A full
//! listener makes room by closing its oldest connection with no request in
//! progress, so a slowloris flood cannot lock real clients out: they send
//! their request at once, the flood's sockets never do.

mod track;

pub use track::{TrackRequests, TrackRequestsLayer, Tracked};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// Limits on one listener's connections (config: `connections:`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections open at once; beyond it new ones are closed at once.
    #[serde(default = "default_max_open")]
    pub max_open: usize,
    /// A connection must start its first request (TLS handshake, HTTP/2
    /// preface or HTTP/1 headers included) within this.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "crate::config_schema::duration")]
    pub header_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "crate::config_schema::duration")]
    pub idle_timeout: Duration,
    /// HTTP/2 pings to the client this often (gRPC ports)...
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    #[schemars(schema_with = "crate::config_schema::duration")]
    pub keepalive_interval: Duration,
    /// ...and the connection is closed if one is not answered within this.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "crate::config_schema::duration")]
    pub keepalive_timeout: Duration,
    /// Requests one HTTP/2 client connection may have open at once on a
    /// gateway's gRPC port (further ones wait in the client, as HTTP/2
    /// intends); also how many of its requests may be cancelled before the
    /// gateway has read them. Bounds what one connection can make the
    /// gateway buffer: without it an overloaded gateway's HTTP/2 guards
    /// close a busy client's connection, failing every call on it.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

fn default_max_open() -> usize {
    10_000
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_max_concurrent_streams() -> u32 {
    1024
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_open: default_max_open(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

impl ConnectionLimits {
    /// The same timeouts with a different cap (the admin port's own).
    pub fn with_max_open(self, max_open: usize) -> Self {
        Self { max_open, ..self }
    }

    /// What is wrong with these limits, if anything: the key (under
    /// `connections.`) and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_open == 0 {
            return Err(("max_open", "must be at least 1".into()));
        }
        if self.max_concurrent_streams == 0 {
            return Err(("max_concurrent_streams", "must be at least 1".into()));
        }
        for (key, d) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err((key, format!("{d:?} is shorter than 10ms")));
            }
        }
        Ok(())
    }
}

/// Raises this process's soft limit on open files to its hard limit (the
/// default soft limit, often 1,024, is far below what a gateway's caps
/// allow); returns the limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// What a connection's requests tell its reader: how many are in
/// progress, and since when none has been.
#[derive(Debug)]
pub struct ConnState {
    born: Instant,
    open: AtomicUsize,
    /// When the last request ended (nanoseconds after `born`).
    quiet_since: AtomicU64,
    started_any: AtomicBool,
    /// The listener needed the slot: close unless a request is in progress.
    evicted: AtomicBool,
    reader: AtomicWaker,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnState {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            started_any: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// A request started on this connection; it is in progress until the
    /// guard is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.started_any.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Asks the connection to close if no request is in progress; false if
    /// one is.
    fn evict(&self) -> bool {
        if self.open.load(Ordering::Acquire) > 0 {
            return false;
        }
        self.evicted.store(true, Ordering::Release);
        self.reader.wake();
        true
    }

    /// When the connection is closed if no request starts before.
    fn quiet_deadline(&self) -> Instant {
        let since = Duration::from_nanos(self.quiet_since.load(Ordering::Acquire));
        let allowed = if self.started_any.load(Ordering::Relaxed) {
            self.idle_timeout
        } else {
            self.header_timeout
        };
        self.born + since + allowed
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.0;
        let now = u64::try_from(state.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        state.quiet_since.store(now, Ordering::Release);
        if state.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The reader re-arms its idle timer.
            state.reader.wake();
        }
    }
}

/// What request handlers see of their connection (a request extension,
/// through tonic's and axum's connect info).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub state: Arc<ConnState>,
}

/// A connection under its listener's limits: it holds one of the
/// listener's slots, and reading from it fails (so the server closes it)
/// once it has had no request in progress for too long.
pub struct Guarded<IO> {
    io: IO,
    info: ConnInfo,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Guarded<IO> {
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

/// A connection accepted under a listener's limits, plain or after TLS:
/// what its requests are counted on.
pub trait GuardedConn {
    fn conn_info(&self) -> &ConnInfo;
}

impl<IO> GuardedConn for Guarded<IO> {
    fn conn_info(&self) -> &ConnInfo {
        &self.info
    }
}

impl<IO> GuardedConn for tokio_rustls::server::TlsStream<Guarded<IO>> {
    fn conn_info(&self) -> &ConnInfo {
        &self.get_ref().0.info
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection closed: no request in progress within its timeout",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let state = &this.info.state;
        state.reader.register(cx.waker());
        if state.open.load(Ordering::Acquire) == 0 {
            if state.evicted.load(Ordering::Acquire) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection closed: its listener was full and it had no request in progress",
                )));
            }
            let deadline = state.quiet_deadline();
            if Instant::now() >= deadline {
                return Poll::Ready(Err(timed_out()));
            }
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out()));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> tonic::transport::server::Connected for Guarded<IO>
where
    IO: tonic::transport::server::Connected,
{
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// A TCP connection a listener accepted under its limits.
pub type Admitted = (Guarded<TcpStream>, SocketAddr);

/// Accepts connections on `listener` under `limits` (`what` names the
/// listener in logs and metrics), with TCP_NODELAY. Stops when `stop` is
/// cancelled or the receiver is dropped.
pub fn accept_guarded(
    listener: TcpListener,
    limits: ConnectionLimits,
    what: &'static str,
    stop: CancellationToken,
) -> (mpsc::Receiver<Admitted>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_open));
    let task = tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        // Connections in the order they came, for eviction.
        let mut admitted: VecDeque<Weak<ConnState>> = VecDeque::new();
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                // Full: the oldest connection without a request in progress
                // goes, and its slot comes back as soon as its server drops it.
                Err(_) if evict_oldest_idle(&mut admitted) => {
                    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
            let Some(slot) = slot else {
                // Closed at once: a full listener must not hold sockets.
                drop(tcp);
                metrics::counter!(REFUSED, "listener" => what).increment(1);
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        listener = what,
                        max_open = limits.max_open,
                        "connection limit reached with every connection busy; new connections are closed"
                    );
                    last_warning = Some(Instant::now());
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let state = Arc::new(ConnState::new(&limits));
            let open = limits.max_open - slots.available_permits();
            forget_closed(&mut admitted, open);
            admitted.push_back(Arc::downgrade(&state));
            let guarded = Guarded {
                io: tcp,
                info: ConnInfo {
                    remote: peer,
                    state,
                },
                timer: Box::pin(tokio::time::sleep(limits.header_timeout)),
                _slot: slot,
            };
            if tx.send((guarded, peer)).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// Drops the entries of closed connections once they outnumber the open
/// ones (`open`), so the queue stays within about twice the open
/// connections however many come and go: a `Weak` keeps its connection's
/// state allocated, so without this every connection ever accepted would
/// stay in memory. Amortized O(1) per connection; order is kept.
fn forget_closed(admitted: &mut VecDeque<Weak<ConnState>>, open: usize) {
    if admitted.len() <= 2 * open + 64 {
        return;
    }
    admitted.retain(|c| c.strong_count() > 0);
    admitted.shrink_to(2 * admitted.len() + 64);
}

/// How long a new connection waits for the slot of the one evicted for it.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Asks the oldest open connection with no request in progress to close;
/// false if every connection is busy. Forgets closed connections on the way
/// and moves busy ones to the back, so each call looks at a few entries.
fn evict_oldest_idle(admitted: &mut VecDeque<Weak<ConnState>>) -> bool {
    for _ in 0..admitted.len().min(256) {
        let Some(oldest) = admitted.pop_front() else {
            return false;
        };
        let Some(state) = oldest.upgrade() else {
            continue;
        };
        if !state.evicted.load(Ordering::Acquire) && state.evict() {
            metrics::counter!(EVICTED).increment(1);
            return true;
        }
        admitted.push_back(oldest);
    }
    false
}

/// Connections closed because their listener was full and they had no
/// request in progress.
pub const EVICTED: &str = "routemesh_connections_evicted_total";

/// Connections closed at once because their listener was full.
pub const REFUSED: &str = "routemesh_connections_refused_total";

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max_open: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_open,
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(400),
            ..ConnectionLimits::default()
        }
    }

    async fn listen(limits: ConnectionLimits) -> (SocketAddr, mpsc::Receiver<Admitted>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (rx, _task) = accept_guarded(listener, limits, "test", CancellationToken::new());
        (addr, rx)
    }

    #[test]
    fn closed_connections_are_forgotten_and_the_open_ones_keep_their_order() {
        let l = limits(4);
        let open: Vec<Arc<ConnState>> = (0..3).map(|_| Arc::new(ConnState::new(&l))).collect();
        let mut admitted = VecDeque::new();
        // 10,000 connections come and go between the three that stay open.
        for (i, state) in open.iter().enumerate() {
            admitted.push_back(Arc::downgrade(state));
            for _ in 0..10_000 / (i + 1) {
                forget_closed(&mut admitted, open.len());
                let gone = Arc::new(ConnState::new(&l));
                admitted.push_back(Arc::downgrade(&gone));
            }
        }
        assert!(
            admitted.len() <= 2 * open.len() + 65,
            "{} entries",
            admitted.len()
        );
        admitted.retain(|c| c.strong_count() > 0);
        let kept: Vec<_> = admitted.iter().filter_map(Weak::upgrade).collect();
        assert_eq!(kept.len(), 3);
        for (kept, open) in kept.iter().zip(&open) {
            assert!(
                Arc::ptr_eq(kept, open),
                "the oldest stays first, for eviction"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let (addr, mut rx) = listen(limits(4)).await;
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (mut conn, _) = rx.recv().await.expect("accepted");
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let e = conn.read(&mut buf).await.expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(190));
    }

    #[tokio::test]
    async fn a_request_in_progress_keeps_the_connection_and_its_end_restarts_the_clock() {
        let (addr, mut rx) = listen(limits(4)).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut conn, _) = rx.recv().await.expect("accepted");
        let guard = conn.info().state.begin();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let started = Instant::now();
            let r = conn.read(&mut buf).await;
            (r.map_err(|e| e.kind()), started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !reader.is_finished(),
            "closed while a request was in progress"
        );
        drop(guard);
        let (result, waited) = reader.await.expect("reader");
        assert_eq!(result, Err(io::ErrorKind::TimedOut));
        // 600 ms with the request, then the idle timeout of 400 ms.
        assert!(waited >= Duration::from_millis(950), "{waited:?}");
        let _ = client.write_all(b"x").await;
    }

    #[tokio::test]
    async fn a_full_listener_makes_room_by_closing_its_oldest_idle_connection() {
        let (addr, mut rx) = listen(ConnectionLimits {
            header_timeout: Duration::from_secs(60),
            ..limits(2)
        })
        .await;
        let _a = TcpStream::connect(addr).await.expect("connect");
        let (mut oldest, _) = rx.recv().await.expect("accepted");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let (busy, _) = rx.recv().await.expect("accepted");
        let _request = busy.info().state.begin();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let read = oldest.read(&mut buf).await.map_err(|e| e.kind());
            drop(oldest);
            read
        });
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (_newest, _) = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("the newest is admitted")
            .expect("accepted");
        assert_eq!(
            reader.await.expect("reader"),
            Err(io::ErrorKind::TimedOut),
            "the oldest idle connection made room"
        );
    }

    #[tokio::test]
    async fn a_full_listener_closes_new_connections_at_once() {
        let (addr, mut rx) = listen(limits(1).with_max_open(1)).await;
        let _first = TcpStream::connect(addr).await.expect("connect");
        let (held, _) = rx.recv().await.expect("accepted");
        // Busy: it cannot be evicted for the newcomer.
        let _request = held.info().state.begin();
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
