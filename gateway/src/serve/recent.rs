//! Recently served requests, remembered so Feedback can attribute a score to
//! the model and worker that answered. Bounded: the least useful are
//! forgotten first (S3-FIFO), so a flood of requests never grows it.
//!
//! Requests are keyed by their owner (the tenant whose API key made them,
//! `None` without auth) and their id: a client-chosen id is namespaced by
//! its tenant, so another tenant choosing the same id neither overwrites
//! the request nor can score it. Each remembered request also holds the
//! score it was given, so a second score replaces the first.
//!
//! With `registry.redis`, every served request is also written to Redis
//! (off the request path, about 500 bytes, `gateway.shared_request_ttl`),
//! with its score beside it, so Feedback sent to any replica finds it and
//! a request keeps one score whichever replicas score it. The records of
//! one flush go into one time-bucketed hash (see `redis_writes`): a share
//! of two commands per flush, not a `SET` per request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use routemesh_mesh::{ModelSpec, RedisConn};
use tokio_util::sync::CancellationToken;

use crate::redis_writes::{Buckets, RedisCost, WriteBehind};
use crate::routing::feedback::wire;
use crate::routing::quality::{Predicted, RoutedPrompt};

/// Swaps a request's score: KEYS score key; ARGV `score`, `now_ms`, ttl ms.
/// Keeps the first score's time (a replacement lands in the same day's
/// feedback) and returns the earlier `score,at_ms`, if any.
const SWAP_SCORE: &str = r"
local prev = redis.call('GET', KEYS[1])
local at = ARGV[2]
if prev then at = string.match(prev, ',(%d+)$') or at end
redis.call('SET', KEYS[1], ARGV[1] .. ',' .. at, 'PX', ARGV[3])
return prev
";

#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The model that answered, as the pool knows it (shared with the
    /// pool: this window holds thousands of entries).
    pub spec: Arc<ModelSpec>,
    pub worker_id: Arc<str>,
    /// What the router said about the prompt (its point in embedding
    /// space, where feedback on this request is kept).
    pub predicted: Option<Predicted>,
    /// The score this request was given, shared by every copy of this entry
    /// so that concurrent Feedback calls for one request see each other.
    pub scored: Arc<Mutex<Option<Scored>>>,
}

/// A score already counted for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scored {
    pub score: f64,
    /// When it was first recorded: a replacement is recorded in the same
    /// day's feedback, so both expire from the window together.
    pub at_ms: u64,
}

impl Served {
    pub(crate) fn new(
        spec: Arc<ModelSpec>,
        worker_id: Arc<str>,
        predicted: Option<Predicted>,
    ) -> Self {
        Self {
            spec,
            worker_id,
            predicted,
            scored: Arc::default(),
        }
    }
}

/// Who made a request: the tenant its API key authenticated, or `None`
/// when auth is off (every caller is then the same anonymous tenant).
pub(crate) type Owner = Option<String>;

pub(crate) struct Recent {
    served: quick_cache::sync::Cache<(Owner, String), Served>,
    shared: Option<SharedRecent>,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

/// The served requests every replica can read.
struct SharedRecent {
    conn: RedisConn,
    records: Buckets,
    writes: WriteBehind,
    ttl: Duration,
    swap: redis::Script,
}

/// A request served by another replica, as read from Redis.
pub(crate) struct ServedElsewhere {
    pub model: String,
    pub worker_id: String,
    pub prompt: Option<RoutedPrompt>,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            served: crate::cache::bounded(capacity),
            shared: None,
        }
    }

    /// Also shared through Redis for `ttl`, written at most once per
    /// `linger`; the writer stops with `stop`.
    pub(crate) fn shared(
        capacity: usize,
        conn: RedisConn,
        ttl: Duration,
        linger: Duration,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let records = Buckets::new(conn.clone(), "req", ttl);
        let (writes, task) = WriteBehind::start(records.clone(), linger, "served requests", stop);
        let shared = SharedRecent {
            conn,
            records,
            writes,
            ttl,
            swap: redis::Script::new(SWAP_SCORE),
        };
        (
            Self {
                served: crate::cache::bounded(capacity),
                shared: Some(shared),
            },
            task,
        )
    }

    pub(crate) fn remember(&self, owner: &Owner, request_id: &str, served: Served) {
        if let Some(shared) = &self.shared {
            let record = wire::encode_served(
                &served.spec.name,
                &served.worker_id,
                served.predicted.as_deref(),
            );
            if !shared.writes.set(field(owner, request_id), record) {
                tracing::debug!(
                    "served-request queue full; feedback on it reaches this replica only"
                );
            }
        }
        self.served
            .insert((owner.clone(), request_id.to_string()), served);
    }

    /// What sharing served requests has cost Redis (`None` unshared).
    pub(crate) fn redis_cost(&self) -> Option<&RedisCost> {
        self.shared.as_ref().map(|s| &*s.records.cost)
    }

    /// True when requests are shared through Redis (scores then live there).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// A request another replica served, from Redis; `None` when nobody
    /// remembers it, Redis is off, or it cannot be read now.
    pub(crate) async fn lookup_elsewhere(
        &self,
        owner: &Owner,
        request_id: &str,
    ) -> Option<ServedElsewhere> {
        let shared = self.shared.as_ref()?;
        let bytes = shared
            .records
            .get(&field(owner, request_id))
            .await
            .map_err(|e| tracing::debug!(error = %e, "served requests unreadable (Redis)"))
            .ok()?;
        let (model, worker_id, prompt) = wire::decode_served(&bytes?)?;
        Some(ServedElsewhere {
            model,
            worker_id,
            prompt,
        })
    }

    /// Records `score` as the request's one score in Redis and returns the
    /// one it replaces, if any. `Err` when Redis cannot say.
    pub(crate) async fn swap_shared_score(
        &self,
        owner: &Owner,
        request_id: &str,
        score: f64,
        now_ms: u64,
    ) -> Result<Option<Scored>, ()> {
        let shared = self.shared.as_ref().ok_or(())?;
        let mut conn = shared.conn.manager();
        let ttl_ms = u64::try_from(shared.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let earlier: Option<String> = shared
            .swap
            .key(shared.key("score", owner, request_id))
            .arg(score)
            .arg(now_ms)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| tracing::debug!(error = %e, "scores unreadable (Redis)"))?;
        Ok(earlier.and_then(|text| {
            let (score, at) = text.split_once(',')?;
            Some(Scored {
                score: score.parse().ok()?,
                at_ms: at.parse().ok()?,
            })
        }))
    }

    /// The request `owner` made with this id, if this replica served it;
    /// another tenant's request with the same id is not found (not revealed).
    pub(crate) fn lookup(&self, owner: &Owner, request_id: &str) -> Option<Served> {
        self.served.get(&(owner.clone(), request_id.to_string()))
    }
}

/// One of `owner`'s requests, as named in Redis (owner and id kept apart
/// by a separator neither may hold).
fn field(owner: &Owner, request_id: &str) -> String {
    let owner = owner
        .as_deref()
        .map_or_else(|| "-".to_string(), |o| format!("t:{o}"));
    format!("{owner}\u{1f}{request_id}")
}

impl SharedRecent {
    /// The Redis key of one of `owner`'s requests' score.
    fn key(&self, kind: &str, owner: &Owner, request_id: &str) -> String {
        self.conn
            .key(&format!("{kind}:{}", field(owner, request_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(model: &str) -> Served {
        Served::new(
            Arc::new(ModelSpec::named(model, routemesh_mesh::Tier::Small)),
            "w".into(),
            None,
        )
    }

    fn model(r: &Recent, owner: &Owner, id: &str) -> Option<String> {
        r.lookup(owner, id).map(|s| s.spec.name.clone())
    }

    #[test]
    fn remembers_recent_requests_and_stays_bounded() {
        let r = Recent::new(100);
        r.remember(&None, "a", served("1"));
        assert_eq!(model(&r, &None, "a"), Some("1".into()));
        assert_eq!(model(&r, &None, "b"), None);
        for i in 0..10_000 {
            r.remember(&None, &format!("req-{i}"), served("x"));
        }
        let kept = (0..10_000)
            .filter(|i| r.lookup(&None, &format!("req-{i}")).is_some())
            .count();
        assert!(kept <= 100, "{kept} of 10000 kept with a capacity of 100");
        assert!(
            r.lookup(&None, "req-9999").is_some(),
            "the newest request is remembered"
        );
    }

    #[test]
    fn request_ids_are_namespaced_by_owner() {
        let r = Recent::new(100);
        let (a, b) = (Some("a".to_string()), Some("b".to_string()));
        r.remember(&a, "id", served("a-model"));
        r.remember(&b, "id", served("b-model"));
        assert_eq!(model(&r, &a, "id"), Some("a-model".into()));
        assert_eq!(model(&r, &b, "id"), Some("b-model".into()));
        assert_eq!(model(&r, &None, "id"), None, "anonymous is not a or b");
    }
}
