//! Records shared through Redis off the request path, in time-bucketed
//! hashes: the request side queues `field = value` (bounded; a full queue
//! drops the write, and the caller keeps its own copy), and one task per
//! kind writes what has queued up as one `HSET <bucket> f1 v1 f2 v2 …` plus
//! one `PEXPIREAT`, at most once per `linger`. A record therefore costs
//! Redis a share of two commands per flush instead of one `SET` of its own,
//! so commands per request fall as the rate rises.
//!
//! A bucket spans a quarter of the TTL and expires a TTL after it ends: a
//! record stays readable between `ttl` and `ttl + ttl/4` after it was
//! written. A lookup asks every bucket that may still hold it, newest first,
//! in one pipelined round trip (six `HGET`s), and the newest copy wins.
//! Every key is under the mesh prefix (one hash slot), so the pipelines work
//! on Redis Cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use routemesh_mesh::RedisConn;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Writes queued before new ones are dropped.
const QUEUE: usize = 65_536;
/// Buckets per TTL: more buckets keep less beyond the TTL but make a lookup
/// ask more of them.
const BUCKETS_PER_TTL: u64 = 4;
/// Longest the last flush may take when the gateway stops.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Commands and round trips one kind of record has cost Redis.
#[derive(Debug, Default)]
pub(crate) struct RedisCost {
    pub(crate) commands: AtomicU64,
    pub(crate) round_trips: AtomicU64,
}

impl RedisCost {
    fn add(&self, commands: usize) {
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }
}

/// How records of one kind are laid out in buckets (no I/O: the layout
/// alone decides which keys a write and a lookup touch).
#[derive(Debug, Clone)]
struct Layout {
    /// `<mesh prefix><kind>:b:`; the bucket number follows.
    key_prefix: String,
    ttl_ms: u64,
    bucket_ms: u64,
}

impl Layout {
    fn new(mesh_prefix: &str, kind: &str, ttl: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            key_prefix: format!("{mesh_prefix}{kind}:b:"),
            ttl_ms,
            bucket_ms: (ttl_ms / BUCKETS_PER_TTL).max(1),
        }
    }

    fn bucket_of(&self, at_ms: u64) -> u64 {
        at_ms / self.bucket_ms
    }

    fn key(&self, bucket: u64) -> String {
        format!("{}{bucket}", self.key_prefix)
    }

    /// When a bucket's key goes: a TTL after the bucket ends.
    fn expires_at_ms(&self, bucket: u64) -> u64 {
        bucket
            .saturating_add(1)
            .saturating_mul(self.bucket_ms)
            .saturating_add(self.ttl_ms)
    }

    /// The buckets a record still alive at `now_ms` may be in, newest first:
    /// one ahead of this clock's (another replica's clock may run ahead), down
    /// to the one a TTL ago.
    fn live_buckets(&self, now_ms: u64) -> Vec<u64> {
        let newest = self.bucket_of(now_ms).saturating_add(1);
        let oldest = self.bucket_of(now_ms.saturating_sub(self.ttl_ms));
        (oldest..=newest).rev().collect()
    }

    /// The commands that write `records` (written at `now_ms`): one `HSET`
    /// of every field and one `PEXPIREAT`, whatever their number.
    fn write_pipeline(&self, now_ms: u64, records: &[(String, Vec<u8>)]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        if records.is_empty() {
            return pipe;
        }
        let bucket = self.bucket_of(now_ms);
        let key = self.key(bucket);
        let hset = pipe.cmd("HSET").arg(&key);
        for (field, value) in records {
            hset.arg(field).arg(value);
        }
        hset.ignore();
        pipe.cmd("PEXPIREAT")
            .arg(&key)
            .arg(self.expires_at_ms(bucket))
            .ignore();
        pipe
    }

    /// The commands that look `field` up at `now_ms`: one `HGET` per live
    /// bucket, newest first.
    fn read_pipeline(&self, now_ms: u64, field: &str) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for b in self.live_buckets(now_ms) {
            pipe.cmd("HGET").arg(self.key(b)).arg(field);
        }
        pipe
    }
}

/// Records of one kind in Redis: where they are, and what they cost.
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    conn: RedisConn,
    layout: Layout,
    pub(crate) cost: Arc<RedisCost>,
}

impl Buckets {
    /// `kind` names the keys (`<prefix><kind>:b:<bucket>`); records live
    /// `ttl` (to `ttl + ttl/4`).
    pub(crate) fn new(conn: RedisConn, kind: &str, ttl: Duration) -> Self {
        Self {
            layout: Layout::new(conn.prefix(), kind, ttl),
            conn,
            cost: Arc::default(),
        }
    }

    /// The newest stored value of `field`, in one round trip.
    pub(crate) async fn get(&self, field: &str) -> Result<Option<Vec<u8>>, redis::RedisError> {
        let pipe = self
            .layout
            .read_pipeline(routemesh_telemetry::record::now_ms(), field);
        let mut conn = self.conn.manager();
        self.cost.add(pipe.len());
        let found: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await?;
        Ok(found.into_iter().flatten().next())
    }
}

/// The request side of a write-behind queue.
#[derive(Debug, Clone)]
pub(crate) struct WriteBehind {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl WriteBehind {
    /// Starts the writer of `buckets`, writing at most once per `linger` (a
    /// record queued while the writer is idle goes at once). The task ends
    /// when `stop` is cancelled (after one last bounded flush) or every
    /// sender is gone.
    pub(crate) fn start(
        buckets: Buckets,
        linger: Duration,
        what: &'static str,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(buckets, rx, linger, what, stop));
        (Self { tx }, task)
    }

    /// Queues `field = value`; false when the queue is full (the write is
    /// dropped).
    pub(crate) fn set(&self, field: String, value: Vec<u8>) -> bool {
        self.tx.try_send((field, value)).is_ok()
    }
}

async fn write_loop(
    buckets: Buckets,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    linger: Duration,
    what: &'static str,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            n = rx.recv_many(&mut batch, QUEUE) => {
                if n == 0 {
                    return;
                }
            }
        }
        while rx.try_recv().map(|r| batch.push(r)).is_ok() {}
        write(&buckets, &mut batch, what).await;
        // What arrives meanwhile waits for the next flush: one write per
        // `linger` however many records it holds.
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(linger) => {}
        }
    }
    while rx.try_recv().map(|r| batch.push(r)).is_ok() {}
    let _ = tokio::time::timeout(FINAL_FLUSH, write(&buckets, &mut batch, what)).await;
}

async fn write(buckets: &Buckets, batch: &mut Vec<(String, Vec<u8>)>, what: &'static str) {
    if batch.is_empty() {
        return;
    }
    let pipe = buckets
        .layout
        .write_pipeline(routemesh_telemetry::record::now_ms(), batch);
    batch.clear();
    let mut manager = buckets.conn.manager();
    buckets.cost.add(pipe.len());
    if let Err(e) = pipe.query_async::<()>(&mut manager).await {
        tracing::debug!(error = %e, what, "writes lost (Redis unavailable); kept in this replica only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour() -> Layout {
        Layout::new("rm:v1:{unit}:", "req", Duration::from_secs(3600))
    }

    fn packed(pipe: &redis::Pipeline) -> String {
        String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned()
    }

    #[test]
    fn a_flush_of_any_size_is_two_commands() {
        let layout = hour();
        for n in [1usize, 10, 1000] {
            let records: Vec<(String, Vec<u8>)> =
                (0..n).map(|i| (format!("id-{i}"), vec![1, 2, 3])).collect();
            let pipe = layout.write_pipeline(1_000_000, &records);
            assert_eq!(pipe.len(), 2, "{n} records: HSET + PEXPIREAT");
            let text = packed(&pipe);
            assert!(
                text.contains("HSET") && text.contains("PEXPIREAT"),
                "{text}"
            );
            assert_eq!(
                text.matches("id-").count(),
                n,
                "every record in the one HSET"
            );
            assert_eq!(text.matches("rm:v1:{unit}:req:b:").count(), 2, "one key");
        }
        assert_eq!(layout.write_pipeline(0, &[]).len(), 0, "nothing to write");
    }

    #[test]
    fn a_record_stays_readable_for_its_ttl_and_a_quarter_at_most() {
        let layout = hour();
        let (ttl, quarter) = (3_600_000, 900_000);
        let written = 10 * ttl + 123_456;
        let bucket = layout.bucket_of(written);
        // The key expires a TTL after its bucket ends: between ttl and ttl + ttl/4.
        let expires = layout.expires_at_ms(bucket);
        assert!(expires >= written + ttl && expires <= written + ttl + quarter);
        // Every lookup while it lives asks its bucket, in one pipeline of six
        // HGETs at most, newest first.
        for now in [written, written + 1, written + ttl, expires - 1] {
            let live = layout.live_buckets(now);
            assert!(live.contains(&bucket), "at {now}: {live:?}");
            assert!(live.len() <= 6, "{live:?}");
            assert!(
                live.windows(2).all(|w| w[0] > w[1]),
                "newest first: {live:?}"
            );
            assert_eq!(layout.read_pipeline(now, "id").len(), live.len());
        }
        // A reader whose clock is a little behind the writer's still asks
        // the writer's bucket.
        assert!(layout.live_buckets(written - 1).contains(&bucket));
    }

    /// Against the development Redis (keys namespaced by a fresh mesh): a
    /// thousand records in one flush, each found by one lookup, newest copy
    /// first, and every key with a TTL.
    #[tokio::test]
    async fn records_written_in_one_flush_are_found_by_one_lookup() {
        let mesh = format!("unit-buckets-{}", uuid::Uuid::new_v4().simple());
        let patience = routemesh_mesh::Patience {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            retries: 1,
            max_retry_delay: None,
        };
        let conn = RedisConn::connect("redis://127.0.0.1:6379", &mesh, patience)
            .await
            .expect("the development Redis at 127.0.0.1:6379");
        let buckets = Buckets::new(conn.clone(), "req", Duration::from_secs(60));
        let mut batch: Vec<(String, Vec<u8>)> = (0..1000)
            .map(|i| (format!("id-{i}"), format!("v{i}").into_bytes()))
            .collect();
        write(&buckets, &mut batch, "test").await;
        assert_eq!(buckets.cost.commands.load(Ordering::Relaxed), 2);
        assert_eq!(buckets.get("id-7").await.unwrap(), Some(b"v7".to_vec()));
        assert_eq!(buckets.get("id-999").await.unwrap(), Some(b"v999".to_vec()));
        assert_eq!(buckets.get("never").await.unwrap(), None);
        let mut batch = vec![("id-7".to_string(), b"newer".to_vec())];
        write(&buckets, &mut batch, "test").await;
        assert_eq!(buckets.get("id-7").await.unwrap(), Some(b"newer".to_vec()));
        let mut redis = conn.manager();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", conn.prefix()))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        for key in &keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            assert!(ttl > 0 && ttl <= 75_000, "{key}: {ttl} ms");
            let _: () = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
}
