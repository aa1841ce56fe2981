//! Feedback exemplars shared by every gateway replica through Redis, or kept in this process.
//!
//! Redis holds the newest `entries` exemplars of a mesh: a sequence counter, a sorted set of entry
//! keys by the sequence number of their last write, and a hash of the encoded exemplars; one script
//! call writes an exemplar (and evicts the oldest beyond the cap), another reads those written after
//! a replica's cursor. Each replica inserts its own exemplars at once and pulls the others' on its
//! sync interval; writes that fail (Redis down) wait in a bounded queue and are retried by the sync.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routemesh_mesh::{Patience, RedisConn};
use tokio_util::sync::CancellationToken;

use super::{FeedbackEntry, FeedbackMemory, wire};

/// Writes an exemplar: KEYS seq, idx, data, epoch; ARGV entry key, record,
/// cap, a fresh epoch id. The epoch names this incarnation of the data: set
/// by the first write, it changes when Redis loses everything (a restart
/// without persistence, a flush), and readers then start over. Evicted
/// records are deleted in chunks (Lua's `unpack` takes a few thousand values
/// at most, and a lowered cap can evict more at once).
const PUT: &str = r"
redis.call('SET', KEYS[4], ARGV[4], 'NX')
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local victims = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  for i = 1, #victims, 1000 do
    redis.call('HDEL', KEYS[3], unpack(victims, i, math.min(i + 999, #victims)))
  end
end
return seq
";

/// Reads exemplars written after ARGV[1] (at most ARGV[2]): KEYS idx, data,
/// epoch, seq. Returns {epoch, current seq, seq1, record1, seq2, record2, ...}
/// in write order; a record deleted meanwhile comes back as "" (its seq still
/// moves the reader's cursor past it).
const FETCH: &str = r"
local epoch = redis.call('GET', KEYS[3]) or ''
local current = tonumber(redis.call('GET', KEYS[4]) or '0')
local hits = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {epoch, current}
for i = 1, #hits, 2 do
  out[#out + 1] = hits[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], hits[i]) or ''
end
return out
";

/// Exemplars read per script call while catching up.
const FETCH_BATCH: usize = 1000;
/// Writes kept for retry while Redis is unreachable.
const PENDING_MAX: usize = 10_000;

struct RedisFeedback {
    conn: RedisConn,
    put: redis::Script,
    fetch: redis::Script,
    /// The sequence number of the newest exemplar read.
    cursor: AtomicU64,
    /// The epoch the cursor counts in (see `PUT`).
    epoch: Mutex<String>,
    pending: Mutex<VecDeque<(String, Vec<u8>)>>,
}

impl RedisFeedback {
    /// The writes waiting for Redis (a poisoned lock still holds a valid queue).
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Vec<u8>)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The feedback memory and, with Redis, its sharing.
pub struct SharedFeedback {
    memory: Arc<FeedbackMemory>,
    redis: Option<RedisFeedback>,
}

impl std::fmt::Debug for SharedFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFeedback")
            .field("memory", &self.memory)
            .field("redis", &self.redis.as_ref().map(|r| r.conn.prefix()))
            .finish()
    }
}

impl SharedFeedback {
    /// Kept in this process only.
    pub fn local(memory: Arc<FeedbackMemory>) -> Self {
        Self {
            memory,
            redis: None,
        }
    }

    /// Shared through Redis at `url` for mesh `mesh`.
    pub async fn redis(
        memory: Arc<FeedbackMemory>,
        url: impl Into<routemesh_mesh::RedisEndpoint>,
        mesh: &str,
    ) -> Result<Self, redis::RedisError> {
        let patience = Patience {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            retries: 2,
            max_retry_delay: Some(Duration::from_secs(1)),
        };
        let conn = RedisConn::connect(url, mesh, patience).await?;
        Ok(Self {
            memory,
            redis: Some(RedisFeedback {
                conn,
                put: redis::Script::new(PUT),
                fetch: redis::Script::new(FETCH),
                cursor: AtomicU64::new(0),
                epoch: Mutex::new(String::new()),
                pending: Mutex::new(VecDeque::new()),
            }),
        })
    }

    pub fn memory(&self) -> &Arc<FeedbackMemory> {
        &self.memory
    }

    /// Records an exemplar: in this replica's memory at once, and for the others through Redis:
    /// one round trip when nothing is queued, else (Redis was down) behind the queue, which the
    /// sync drains, so a Feedback call never waits for more than its own write.
    pub async fn record(&self, entry: FeedbackEntry) {
        let encoded = self.redis.as_ref().map(|_| wire::encode(&entry));
        let key = entry.key.clone();
        self.memory.insert(entry);
        crate::metrics::feedback_exemplars(self.memory.len());
        let (Some(redis), Some(record)) = (&self.redis, encoded) else {
            return;
        };
        let queued = !redis.queue().is_empty();
        if !queued {
            match self.put(redis, &key, &record).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "feedback exemplar not shared yet (Redis); retried on the next sync")
                }
            }
        }
        let mut pending = redis.queue();
        pending.push_back((key, record));
        while pending.len() > PENDING_MAX {
            pending.pop_front();
            crate::metrics::feedback_memory_dropped();
        }
    }

    async fn put(
        &self,
        redis: &RedisFeedback,
        key: &str,
        record: &[u8],
    ) -> Result<(), redis::RedisError> {
        let mut conn = redis.conn.manager();
        let _: u64 = redis
            .put
            .key(redis.conn.key("fbmem:seq"))
            .key(redis.conn.key("fbmem:idx"))
            .key(redis.conn.key("fbmem:data"))
            .key(redis.conn.key("fbmem:epoch"))
            .arg(key)
            .arg(record)
            .arg(self.memory.config().entries)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Writes the queued exemplars, oldest first; stops at the first failure (kept for later).
    /// Only the sync task calls it, so one flusher takes from the queue.
    async fn flush(&self, redis: &RedisFeedback) -> Result<(), redis::RedisError> {
        loop {
            let next = redis.queue().pop_front();
            let Some((key, record)) = next else {
                return Ok(());
            };
            if let Err(e) = self.put(redis, &key, &record).await {
                // Back at the front, ahead of anything queued meanwhile.
                redis.queue().push_front((key, record));
                return Err(e);
            }
        }
    }

    /// Pulls the exemplars other replicas wrote since the last sync (and retries queued writes).
    pub async fn sync(&self) -> Result<usize, redis::RedisError> {
        let Some(redis) = &self.redis else {
            return Ok(0);
        };
        self.flush(redis).await?;
        let mut read = 0;
        loop {
            let mut conn = redis.conn.manager();
            let since = redis.cursor.load(Ordering::Acquire);
            let reply: Vec<redis::Value> = redis
                .fetch
                .key(redis.conn.key("fbmem:idx"))
                .key(redis.conn.key("fbmem:data"))
                .key(redis.conn.key("fbmem:epoch"))
                .key(redis.conn.key("fbmem:seq"))
                .arg(since)
                .arg(FETCH_BATCH)
                .invoke_async(&mut conn)
                .await?;
            let epoch: String = reply
                .first()
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default();
            let current: u64 = reply
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or(0);
            {
                let mut known = redis.epoch.lock().unwrap_or_else(|e| e.into_inner());
                // Another epoch (Redis lost everything), or the same one with a sequence below
                // the cursor (restored from an older snapshot): read everything it has now.
                // This replica's own exemplars are still in its memory.
                let reset = *known != epoch || current < since;
                if reset {
                    let lost = !known.is_empty();
                    *known = epoch;
                    if since > 0 {
                        if lost {
                            tracing::info!(
                                cursor = since,
                                redis = current,
                                "feedback exemplars in Redis were reset; reading them again"
                            );
                        }
                        redis.cursor.store(0, Ordering::Release);
                        continue;
                    }
                }
            }
            let records = reply.get(2..).unwrap_or_default();
            let pairs = records.len() / 2;
            for pair in records.chunks_exact(2) {
                let seq: Option<u64> = redis::from_redis_value_ref(&pair[0]).ok();
                let record: Option<Vec<u8>> = redis::from_redis_value_ref(&pair[1]).ok();
                if let Some(seq) = seq {
                    redis.cursor.fetch_max(seq, Ordering::AcqRel);
                }
                // Deleted since it was listed (evicted by a newer write): nothing to read.
                let Some(record) = record.filter(|r| !r.is_empty()) else {
                    continue;
                };
                if wire::decode(&record).is_some_and(|entry| self.memory.insert(entry)) {
                    read += 1;
                } else {
                    crate::metrics::feedback_memory_rejected();
                }
            }
            if pairs < FETCH_BATCH {
                crate::metrics::feedback_exemplars(self.memory.len());
                return Ok(read);
            }
        }
    }

    /// Syncs every `interval` until `stop` (the gateway's shutdown) is cancelled.
    pub(crate) fn spawn_sync(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.redis.as_ref()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = self.sync().await {
                    tracing::debug!(error = %e, "feedback memory sync failed; retried next interval");
                }
            }
        }))
    }
}
