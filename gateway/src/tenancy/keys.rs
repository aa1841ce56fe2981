//! API keys stored in Redis, managed with `routemesh keys add|revoke|list`.
//!
//! Only the SHA-256 of a key is stored (as in the configuration), under the
//! mesh's hash tag so that a Redis Cluster keeps a mesh's keys on one slot:
//! `rm:v1:{mesh}:apikey:<sha256 hex>` is a hash (tenant, created_ms, and
//! optionally expires_ms and name); `rm:v1:{mesh}:apikeys` indexes them for
//! listing. An expiring key's entry outlives its expiry by
//! [`EXPIRED_KEPT_MS`], so a client using it is told the key *expired* (not
//! that it is unknown) for a week; after that Redis drops it.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use routemesh_mesh::{Patience, RedisConn};
use sha2::{Digest, Sha256};

/// How long an expired key's entry is kept, to answer "expired" rather than
/// "invalid".
pub const EXPIRED_KEPT_MS: u64 = 7 * 86_400_000;

/// One stored key, as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub tenant: String,
    /// Unix milliseconds after which the key is refused; `None` never expires.
    pub expires_ms: Option<u64>,
}

/// One stored key, as `routemesh keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedKey {
    pub sha256: String,
    pub tenant: String,
    pub name: Option<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store (Redis): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no stored key matches {0:?}")]
    NotFound(String),
    #[error("{0:?} matches more than one stored key; give more of the hash")]
    Ambiguous(String),
    #[error("{0}")]
    Invalid(String),
}

/// The Redis side of API keys, shared by every gateway replica of a mesh.
#[derive(Clone)]
pub struct RedisKeys {
    redis: RedisConn,
}

impl std::fmt::Debug for RedisKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeys")
            .field("prefix", &self.redis.prefix())
            .finish()
    }
}

/// SHA-256 of a key, as stored.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key: `rm-` and 256 bits in hex, from the thread's CSPRNG
/// (ChaCha, seeded from the OS).
pub fn generate_key() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes[..]);
    format!("rm-{}", hex::encode(bytes))
}

impl RedisKeys {
    pub async fn connect(
        url: impl Into<routemesh_mesh::RedisEndpoint>,
        mesh: &str,
    ) -> Result<Self, KeyStoreError> {
        // Short timeouts: a lookup sits on the request path (on a cache miss).
        let patience = Patience {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            retries: 1,
            max_retry_delay: None,
        };
        Ok(Self {
            redis: RedisConn::connect(url, mesh, patience).await?,
        })
    }

    fn key_of(&self, sha256_hex: &str) -> String {
        self.redis.key(&format!("apikey:{sha256_hex}"))
    }

    fn index(&self) -> String {
        self.redis.key("apikeys")
    }

    /// The key with this digest, if stored (expired ones included).
    pub async fn get(&self, digest: &[u8; 32]) -> Result<Option<StoredKey>, KeyStoreError> {
        let key = self.key_of(&hex::encode(digest));
        let mut conn = self.redis.manager();
        let fields: HashMap<String, String> = match conn.hgetall(&key).await {
            // The first command on a connection Redis dropped (a restart)
            // fails and makes the manager reconnect: asked again, a Redis
            // that is back answers, and the client sees no UNAVAILABLE.
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::debug!(error = %e, "key store connection dropped; asking again");
                conn.hgetall(&key).await?
            }
            other => other?,
        };
        Ok(fields.get("tenant").map(|tenant| StoredKey {
            tenant: tenant.clone(),
            expires_ms: fields.get("expires_ms").and_then(|v| v.parse().ok()),
        }))
    }

    /// Stores a new key for `tenant`; returns the key (shown once, never stored).
    pub async fn add(
        &self,
        tenant: &str,
        name: Option<&str>,
        expires_in: Option<Duration>,
        now_ms: u64,
    ) -> Result<(String, ListedKey), KeyStoreError> {
        if tenant.is_empty() {
            return Err(KeyStoreError::Invalid("--tenant must not be empty".into()));
        }
        let key = generate_key();
        let sha256 = hex::encode(digest(&key));
        let expires_ms = expires_in
            .map(|d| now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        let mut fields = vec![
            ("tenant", tenant.to_string()),
            ("created_ms", now_ms.to_string()),
        ];
        if let Some(e) = expires_ms {
            fields.push(("expires_ms", e.to_string()));
        }
        if let Some(n) = name {
            fields.push(("name", n.to_string()));
        }
        let entry = self.key_of(&sha256);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(&entry, &fields)
            .ignore()
            .sadd(self.index(), &sha256)
            .ignore();
        if let Some(e) = expires_ms {
            pipe.cmd("PEXPIREAT")
                .arg(&entry)
                .arg(e.saturating_add(EXPIRED_KEPT_MS))
                .ignore();
        }
        let mut conn = self.redis.manager();
        pipe.query_async::<()>(&mut conn).await?;
        Ok((
            key,
            ListedKey {
                sha256,
                tenant: tenant.into(),
                name: name.map(str::to_string),
                created_ms: now_ms,
                expires_ms,
            },
        ))
    }

    /// Every stored key; index entries whose key Redis already dropped are pruned.
    pub async fn list(&self) -> Result<Vec<ListedKey>, KeyStoreError> {
        let mut conn = self.redis.manager();
        let hashes: Vec<String> = conn.smembers(self.index()).await?;
        let mut pipe = redis::pipe();
        for h in &hashes {
            pipe.hgetall(self.key_of(h));
        }
        let entries: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut listed = Vec::new();
        let mut gone = Vec::new();
        for (sha256, fields) in hashes.into_iter().zip(entries) {
            let Some(tenant) = fields.get("tenant") else {
                gone.push(sha256);
                continue;
            };
            listed.push(ListedKey {
                tenant: tenant.clone(),
                name: fields.get("name").cloned(),
                created_ms: fields
                    .get("created_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                expires_ms: fields.get("expires_ms").and_then(|v| v.parse().ok()),
                sha256,
            });
        }
        if !gone.is_empty() {
            let _: Result<(), _> = conn.srem(self.index(), gone).await;
        }
        listed.sort_by(|a, b| (&a.tenant, a.created_ms).cmp(&(&b.tenant, b.created_ms)));
        Ok(listed)
    }

    /// Removes the key named by `which`: the key itself, its SHA-256, or a
    /// unique prefix (8+ hex digits) of the SHA-256 as `keys list` shows it.
    pub async fn revoke(&self, which: &str) -> Result<ListedKey, KeyStoreError> {
        let which = which.trim();
        let is_hex = which.len() >= 8 && which.chars().all(|c| c.is_ascii_hexdigit());
        let wanted = if is_hex {
            which.to_ascii_lowercase()
        } else {
            hex::encode(digest(which))
        };
        let matches: Vec<ListedKey> = self
            .list()
            .await?
            .into_iter()
            .filter(|k| k.sha256.starts_with(&wanted))
            .collect();
        let key = match matches.as_slice() {
            [one] => one.clone(),
            [] => return Err(KeyStoreError::NotFound(which.into())),
            _ => return Err(KeyStoreError::Ambiguous(which.into())),
        };
        let mut conn = self.redis.manager();
        redis::pipe()
            .atomic()
            .del(self.key_of(&key.sha256))
            .ignore()
            .srem(self.index(), &key.sha256)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(key)
    }
}
