//! Where workers announce themselves and gateways discover them: in memory
//! (embedded mode and static configuration) or in Redis (a real mesh).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::capabilities::Capabilities;
use crate::model::TokenPrices;
use crate::redis_conn::{Patience, RedisConn};
use crate::tier::Tier;

/// What a worker announces about itself. Stored as JSON in Redis: a field
/// added here needs `#[serde(default)]` so that older records still parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub model: String,
    pub tier: Tier,
    /// URL the gateway dials, e.g. `http://10.0.0.7:50061`.
    pub endpoint: String,
    pub capacity: u32,
    pub max_queue: u32,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    #[serde(default)]
    pub quality_prior: Option<f64>,
    /// The artifact model the learned router knows this one as, when its
    /// name differs in more than spelling (a fine-tune, a renamed
    /// deployment). Unset: the name, matched leniently (Hugging Face ids,
    /// vLLM served names and Ollama tags of a known model match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_model: Option<String>,
    /// Parameters in billions, for a model the router does not know: its
    /// prior is taken from the known models nearest in size. Unset: read
    /// from the name (`8b`, `135m`), else the tier decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_b: Option<f64>,
    /// "openai", "sim" or "local".
    pub backend: String,
    pub simulated: bool,
    /// Median time to first token the worker declares (its configuration,
    /// or a sim engine's configured speed), so a gateway that has observed
    /// nothing yet still has a figure for `latency_slo_ms` and the utility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ttft_ms: Option<f64>,
    /// Decode speed, tokens per second, declared the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_tokens_per_second: Option<f64>,
    /// What the worker's engine can serve; `None` from an agent older than
    /// capabilities ([`Capabilities::UNDECLARED`] is assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

impl WorkerRecord {
    /// What the worker's engine can serve, as declared or assumed.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities.unwrap_or(Capabilities::UNDECLARED)
    }

    /// The prices the worker charges.
    pub fn prices(&self) -> TokenPrices {
        TokenPrices {
            input_usd_per_mtok: self.input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
        }
    }
}

/// Checks declared speed figures (worker and static-worker configuration):
/// each, when given, a finite number above zero. The error names the key.
pub fn check_declared_speed(
    expected_ttft_ms: Option<f64>,
    expected_tokens_per_second: Option<f64>,
) -> Result<(), (&'static str, String)> {
    for (key, value) in [
        ("expected_ttft_ms", expected_ttft_ms),
        ("expected_tokens_per_second", expected_tokens_per_second),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && v > 0.0)
        {
            return Err((key, format!("{v} is not a finite number above 0")));
        }
    }
    Ok(())
}

/// Checks what a worker declares about its model's identity: `router_model`
/// not blank, `params_b` a finite number above zero. The error names the key.
pub fn check_model_identity(
    router_model: Option<&str>,
    params_b: Option<f64>,
) -> Result<(), (&'static str, String)> {
    if router_model.is_some_and(|m| m.trim().is_empty()) {
        return Err((
            "router_model",
            "must not be blank (leave it unset to match by name)".into(),
        ));
    }
    if let Some(p) = params_b
        && !(p.is_finite() && p > 0.0)
    {
        return Err((
            "params_b",
            format!("{p} is not a finite number of billions above 0"),
        ));
    }
    Ok(())
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("registry record for {id} is not valid JSON: {source}")]
    BadRecord {
        id: String,
        source: serde_json::Error,
    },
}

/// The registry a worker announces to and a gateway lists.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Adds or refreshes `record`; it disappears unless refreshed within `ttl`.
    async fn announce(&self, record: &WorkerRecord, ttl: Duration) -> Result<(), RegistryError>;
    /// Removes a worker at once.
    async fn withdraw(&self, id: &str) -> Result<(), RegistryError>;
    /// The live workers.
    async fn list(&self) -> Result<Vec<WorkerRecord>, RegistryError>;
    /// Network round trips made so far (0 without a network).
    fn round_trips(&self) -> u64 {
        0
    }
}

/// A record and when it expires (`None`: static, never).
type Entry = (WorkerRecord, Option<Instant>);

/// In-process registry: the embedded default, and static worker lists.
#[derive(Debug, Default, Clone)]
pub struct MemoryRegistry {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryRegistry {
    /// A registry holding `records` permanently (static configuration).
    pub fn with_static(records: impl IntoIterator<Item = WorkerRecord>) -> Self {
        let registry = Self::default();
        if let Ok(mut entries) = registry.entries.lock() {
            for r in records {
                entries.insert(r.id.clone(), (r, None));
            }
        }
        registry
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn announce(&self, record: &WorkerRecord, ttl: Duration) -> Result<(), RegistryError> {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                record.id.clone(),
                (record.clone(), Some(Instant::now() + ttl)),
            );
        }
        Ok(())
    }

    async fn withdraw(&self, id: &str) -> Result<(), RegistryError> {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<WorkerRecord>, RegistryError> {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return Ok(Vec::new());
        };
        entries.retain(|_, (_, expires)| expires.is_none_or(|at| at > now));
        let mut records: Vec<_> = entries.values().map(|(r, _)| r.clone()).collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }
}

/// Redis registry. Keys (one hash slot per mesh, so Redis Cluster works):
/// `rm:v1:{<mesh>}:workers` (set of ids) and `rm:v1:{<mesh>}:worker:<id>`
/// (the JSON record, with a TTL that Redis's own clock expires).
#[derive(Clone)]
pub struct RedisRegistry {
    redis: RedisConn,
    index_key: String,
    record_prefix: String,
    round_trips: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("index_key", &self.index_key)
            .finish()
    }
}

/// Announcements and listings run in the background (heartbeats, pool
/// refreshes), so they can wait longer than a request-path lookup.
const PATIENCE: Patience = Patience {
    connect_timeout: Duration::from_secs(2),
    response_timeout: Duration::from_secs(2),
    retries: 2,
    max_retry_delay: None,
};

impl RedisRegistry {
    /// Connects to the registry of mesh `mesh` at `url`.
    pub async fn connect(
        url: impl Into<crate::RedisEndpoint>,
        mesh: &str,
    ) -> Result<Self, RegistryError> {
        let redis = RedisConn::connect(url, mesh, PATIENCE).await?;
        Ok(Self {
            index_key: redis.key("workers"),
            record_prefix: redis.key("worker:"),
            redis,
            round_trips: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl Registry for RedisRegistry {
    async fn announce(&self, record: &WorkerRecord, ttl: Duration) -> Result<(), RegistryError> {
        let json = serde_json::to_string(record).map_err(|source| RegistryError::BadRecord {
            id: record.id.clone(),
            source,
        })?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.redis.manager();
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        redis::pipe()
            .atomic()
            .set_options(
                format!("{}{}", self.record_prefix, record.id),
                json,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl_ms)),
            )
            .ignore()
            .sadd(&self.index_key, &record.id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn withdraw(&self, id: &str) -> Result<(), RegistryError> {
        let mut conn = self.redis.manager();
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        redis::pipe()
            .atomic()
            .del(format!("{}{id}", self.record_prefix))
            .ignore()
            .srem(&self.index_key, id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<WorkerRecord>, RegistryError> {
        let mut conn = self.redis.manager();
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ids: Vec<String> = conn.smembers(&self.index_key).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}{id}", self.record_prefix))
            .collect();
        // Second round trip of a listing: the records themselves.
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut records = Vec::new();
        let mut expired = Vec::new();
        for (id, value) in ids.into_iter().zip(values) {
            match value {
                Some(json) => match serde_json::from_str(&json) {
                    Ok(record) => records.push(record),
                    Err(source) => {
                        tracing::warn!(%id, %source, "skipping unreadable worker record");
                    }
                },
                None => expired.push(id),
            }
        }
        if !expired.is_empty() {
            // Ids whose record expired: their worker died without withdrawing.
            self.round_trips
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.round_trips
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _: Result<(), _> = conn.srem(&self.index_key, &expired).await;
        }
        Ok(records)
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }
}
