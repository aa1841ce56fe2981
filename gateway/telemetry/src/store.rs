//! The storage interface under telemetry: hashes of float counters that only
//! grow by increments, or whose fields only one writer owns and replaces
//! (so concurrent replicas merge without coordination), and that expire,
//! plus index sets naming which hashes exist. Two implementations:
//! in memory and Redis. Keys are relative; each store adds its own prefix.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use routemesh_mesh::{Patience, RedisConn};

/// Changes to one hash, and how long the hash lives after this write.
#[derive(Debug, Clone, PartialEq)]
pub struct HashUpdate {
    pub key: String,
    pub ttl: Duration,
    pub fields: Vec<(String, f64)>,
    pub apply: Apply,
}

/// How an update's fields change the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// `field += value` (Redis: one HINCRBYFLOAT per field).
    Add,
    /// `field = value` (Redis: one HSET for all the fields).
    Replace,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[async_trait::async_trait]
pub trait HashStore: Send + Sync + 'static {
    /// Applies every update (`field += by` or `field = value`), then the
    /// key's TTL is renewed.
    async fn update(&self, updates: &[HashUpdate]) -> Result<(), StoreError>;
    /// Adds members to an index set whose TTL is renewed.
    async fn index_add(
        &self,
        index: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// The members of an index set.
    async fn index(&self, index: &str) -> Result<Vec<String>, StoreError>;
    /// The hashes at `keys`, in order (empty for a missing key).
    async fn read(&self, keys: &[String]) -> Result<Vec<HashMap<String, f64>>, StoreError>;
    /// Network round trips made so far (0 for stores without a network).
    fn round_trips(&self) -> u64 {
        0
    }
    /// Commands sent so far, pipelined ones each counted (0 for stores
    /// without a network).
    fn commands(&self) -> u64 {
        0
    }
}

#[derive(Debug, Default)]
struct MemoryState {
    hashes: HashMap<String, (HashMap<String, f64>, Instant)>,
    sets: HashMap<String, (HashSet<String>, Instant)>,
}

/// The embedded default: one process's view, nothing shared.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        match self.state.lock() {
            Ok(mut state) => {
                let now = Instant::now();
                state.hashes.retain(|_, (_, expires)| *expires > now);
                state.sets.retain(|_, (_, expires)| *expires > now);
                f(&mut state)
            }
            // A panic while holding the lock cannot corrupt counters badly
            // enough to matter; keep serving with the data as it is.
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

#[async_trait::async_trait]
impl HashStore for MemoryStore {
    async fn update(&self, updates: &[HashUpdate]) -> Result<(), StoreError> {
        self.with(|state| {
            let now = Instant::now();
            for u in updates {
                let entry = state
                    .hashes
                    .entry(u.key.clone())
                    .or_insert_with(|| (HashMap::new(), now));
                for (field, value) in &u.fields {
                    let stored = entry.0.entry(field.clone()).or_insert(0.0);
                    match u.apply {
                        Apply::Add => *stored += value,
                        Apply::Replace => *stored = *value,
                    }
                }
                entry.1 = now + u.ttl;
            }
        });
        Ok(())
    }

    async fn index_add(
        &self,
        index: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.with(|state| {
            let now = Instant::now();
            let entry = state
                .sets
                .entry(index.to_string())
                .or_insert_with(|| (HashSet::new(), now));
            entry.0.extend(members.iter().cloned());
            entry.1 = now + ttl;
        });
        Ok(())
    }

    async fn index(&self, index: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|state| {
            let mut members: Vec<String> = state
                .sets
                .get(index)
                .map(|(s, _)| s.iter().cloned().collect())
                .unwrap_or_default();
            members.sort();
            members
        }))
    }

    async fn read(&self, keys: &[String]) -> Result<Vec<HashMap<String, f64>>, StoreError> {
        Ok(self.with(|state| {
            keys.iter()
                .map(|k| {
                    state
                        .hashes
                        .get(k)
                        .map(|(h, _)| h.clone())
                        .unwrap_or_default()
                })
                .collect()
        }))
    }
}

/// Redis: every key under `rm:v1:{<mesh>}:` (one hash slot per mesh, so it
/// works on Redis Cluster); every write pipelined into one round trip.
#[derive(Clone)]
pub struct RedisStore {
    redis: RedisConn,
    round_trips: std::sync::Arc<std::sync::atomic::AtomicU64>,
    commands: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.redis.prefix())
            .finish()
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisStore {
    /// Connects (and keeps reconnecting with backoff) to `url`.
    pub async fn connect(
        url: impl Into<routemesh_mesh::RedisEndpoint>,
        mesh: &str,
    ) -> Result<Self, StoreError> {
        let patience = Patience {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            retries: 1,
            max_retry_delay: Some(Duration::from_secs(2)),
        };
        Ok(Self {
            redis: RedisConn::connect(url, mesh, patience).await?,
            round_trips: Default::default(),
            commands: Default::default(),
        })
    }

    fn key(&self, key: &str) -> String {
        self.redis.key(key)
    }

    /// Counts one round trip of `commands` commands.
    fn trip(&self, commands: usize) {
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.commands
            .fetch_add(commands as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl HashStore for RedisStore {
    async fn update(&self, updates: &[HashUpdate]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for u in updates {
            let key = self.key(&u.key);
            match u.apply {
                Apply::Add => {
                    for (field, by) in &u.fields {
                        pipe.cmd("HINCRBYFLOAT")
                            .arg(&key)
                            .arg(field)
                            .arg(*by)
                            .ignore();
                    }
                }
                Apply::Replace if u.fields.is_empty() => {}
                Apply::Replace => {
                    let hset = pipe.cmd("HSET").arg(&key);
                    for (field, value) in &u.fields {
                        hset.arg(field).arg(*value);
                    }
                    hset.ignore();
                }
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms(u.ttl)).ignore();
        }
        let mut conn = self.redis.manager();
        self.trip(pipe.len());
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn index_add(
        &self,
        index: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if members.is_empty() {
            return Ok(());
        }
        let key = self.key(index);
        let mut conn = self.redis.manager();
        self.trip(2);
        redis::pipe()
            .cmd("SADD")
            .arg(&key)
            .arg(members)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms(ttl))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn index(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.redis.manager();
        self.trip(1);
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(index))
            .query_async(&mut conn)
            .await?;
        members.sort();
        Ok(members)
    }

    async fn read(&self, keys: &[String]) -> Result<Vec<HashMap<String, f64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HGETALL").arg(self.key(k));
        }
        let mut conn = self.redis.manager();
        self.trip(pipe.len());
        let raw: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(raw
            .into_iter()
            .map(|h| {
                h.into_iter()
                    .filter_map(|(f, v)| v.parse::<f64>().ok().map(|v| (f, v)))
                    .collect()
            })
            .collect())
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn commands(&self) -> u64 {
        self.commands.load(std::sync::atomic::Ordering::Relaxed)
    }
}
