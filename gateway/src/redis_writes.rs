//! Writes to Redis off the request path: the request side queues a key's
//! new value (bounded; a full queue drops the write, and the caller keeps
//! its own copy), one task per store pipelines what has queued up with a
//! TTL, until its owner stops it.

use std::time::Duration;

use routemesh_mesh::RedisConn;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Writes queued before new ones are dropped.
const QUEUE: usize = 4096;

/// The request side of a write-behind queue.
#[derive(Debug, Clone)]
pub(crate) struct WriteBehind {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl WriteBehind {
    /// Starts the writer for `conn`; every key is written with `ttl`. The
    /// task ends when `stop` is cancelled (or every sender is gone).
    pub(crate) fn start(
        conn: RedisConn,
        ttl: Duration,
        what: &'static str,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(conn, rx, ttl, what, stop));
        (Self { tx }, task)
    }

    /// Queues `key = value`; false when the queue is full (the write is
    /// dropped).
    pub(crate) fn set(&self, key: String, value: Vec<u8>) -> bool {
        self.tx.try_send((key, value)).is_ok()
    }
}

async fn write_loop(
    conn: RedisConn,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    ttl: Duration,
    what: &'static str,
    stop: CancellationToken,
) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
            }
        }
        let mut pipe = redis::pipe();
        for (key, value) in batch.drain(..) {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        let mut manager = conn.manager();
        if let Err(e) = pipe.query_async::<()>(&mut manager).await {
            tracing::debug!(error = %e, what, "writes lost (Redis unavailable); kept in this replica only");
        }
    }
}
