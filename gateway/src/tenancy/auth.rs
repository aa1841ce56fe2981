//! API keys: each maps to a tenant. Keys are known as SHA-256 hashes only, so
//! the configuration (and a leaked copy of it, or of Redis) never holds a
//! usable key. They come from the configuration (which a mounted Secret can
//! fill) and, with `auth.redis`, from Redis (`routemesh keys`), looked up
//! through a small cache so Redis is not asked on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::tenancy::keys::{RedisKeys, StoredKey, digest};

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No API key, or one the gateway does not know.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A known API key past its expiry time.
    #[error("API key expired at {0}; ask for a new key")]
    KeyExpired(String),
    /// A key not seen before cannot be checked: the key store is down.
    #[error("API key cannot be checked (key store unavailable): {0}")]
    KeyStoreUnavailable(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted keys. Empty (and `redis` off): no key is required and the
    /// request's `tenant` field (or "default") names the tenant.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Also accept keys stored in `registry.redis` (added with `routemesh
    /// keys add`).
    #[serde(default)]
    pub redis: bool,
    /// How long a key read from Redis is remembered by each gateway: a
    /// revoked key keeps working for at most this long. Expiry is exact.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub cache_ttl: Duration,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(5)
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            redis: false,
            cache_ttl: default_cache_ttl(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The tenant this key bills to.
    pub tenant: String,
    /// Hex SHA-256 of the key, e.g. `printf %s "$KEY" | sha256sum`.
    pub sha256: String,
    /// When the key stops working (RFC 3339, e.g. `2027-01-31T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// The tenant a request was authenticated as; put in request extensions by
/// the authentication step of each API (gRPC, HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// Entries the Redis key cache holds before it drops what has gone stale.
const CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone)]
struct Cached {
    key: Option<StoredKey>,
    fetched: Instant,
}

/// Where keys not in the configuration are looked up.
#[derive(Debug)]
enum Store {
    Redis(RedisKeys),
    /// For unit tests of the cache: a map, and whether it is "down".
    #[cfg(test)]
    Map(Mutex<(HashMap<[u8; 32], StoredKey>, bool)>),
}

impl Store {
    async fn get(&self, digest: &[u8; 32]) -> Result<Option<StoredKey>, String> {
        match self {
            Store::Redis(r) => r.get(digest).await.map_err(|e| e.to_string()),
            #[cfg(test)]
            Store::Map(m) => {
                let m = m.lock().map_err(|e| e.to_string())?;
                if m.1 {
                    return Err("store down".into());
                }
                Ok(m.0.get(digest).cloned())
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    configured: HashMap<[u8; 32], StoredKey>,
    store: Option<Store>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    cache_ttl: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

fn parse_expiry(text: &str) -> Result<u64, String> {
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| format!("{text:?} is before 1970"))
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl ApiKeys {
    /// The configured keys; `Err((key path, why))` names the entry at fault.
    pub fn from_config(config: &AuthConfig) -> Result<Self, (String, String)> {
        let mut configured = HashMap::new();
        for (i, key) in config.keys.iter().enumerate() {
            let bytes = hex::decode(&key.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    (
                        format!("gateway.auth.keys[{i}].sha256"),
                        "must be 64 hex digits (a SHA-256)".to_string(),
                    )
                })?;
            if key.tenant.is_empty() {
                return Err((
                    format!("gateway.auth.keys[{i}].tenant"),
                    "must not be empty".into(),
                ));
            }
            let expires_ms = key
                .expires
                .as_deref()
                .map(parse_expiry)
                .transpose()
                .map_err(|why| (format!("gateway.auth.keys[{i}].expires"), why))?;
            configured.insert(
                bytes,
                StoredKey {
                    tenant: key.tenant.clone(),
                    expires_ms,
                },
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                configured,
                store: None,
                cache: Mutex::default(),
                cache_ttl: config.cache_ttl,
            }),
        })
    }

    /// The configured keys plus those stored in Redis.
    pub fn with_redis(config: &AuthConfig, redis: RedisKeys) -> Result<Self, (String, String)> {
        let keys = Self::from_config(config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                configured: keys.inner.configured.clone(),
                store: Some(Store::Redis(redis)),
                cache: Mutex::default(),
                cache_ttl: config.cache_ttl,
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.inner.configured.is_empty() || self.inner.store.is_some()
    }

    /// The tenant for an `Authorization` header value; `Ok(None)` when keys
    /// are not enabled.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<Tenant>, AuthError> {
        self.authenticate_at(authorization, routemesh_telemetry::record::now_ms())
            .await
    }

    async fn authenticate_at(
        &self,
        authorization: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<Tenant>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let key = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Unauthenticated(
                "missing API key: send `authorization: Bearer <key>`",
            ))?;
        let digest = digest(key);
        let found = match self.inner.configured.get(&digest) {
            Some(k) => Some(k.clone()),
            None => self.lookup(&digest).await?,
        };
        let found = found.ok_or(AuthError::Unauthenticated("invalid API key"))?;
        match found.expires_ms {
            Some(at) if at <= now_ms => Err(AuthError::KeyExpired(format_ms(at))),
            _ => Ok(Some(Tenant(found.tenant))),
        }
    }

    /// A key from the store, through the cache. While the store is down a
    /// key seen before keeps its last known state; an unseen one cannot be
    /// checked (UNAVAILABLE).
    async fn lookup(&self, digest: &[u8; 32]) -> Result<Option<StoredKey>, AuthError> {
        let Some(store) = &self.inner.store else {
            return Ok(None);
        };
        let cached = self
            .inner
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(digest).cloned());
        if let Some(c) = &cached
            && c.fetched.elapsed() < self.inner.cache_ttl
        {
            return Ok(c.key.clone());
        }
        match store.get(digest).await {
            Ok(key) => {
                if let Ok(mut cache) = self.inner.cache.lock() {
                    if cache.len() >= CACHE_MAX {
                        let ttl = self.inner.cache_ttl;
                        cache.retain(|_, c| c.fetched.elapsed() < ttl);
                        if cache.len() >= CACHE_MAX {
                            cache.clear();
                        }
                    }
                    cache.insert(
                        *digest,
                        Cached {
                            key: key.clone(),
                            fetched: Instant::now(),
                        },
                    );
                }
                Ok(key)
            }
            Err(e) => match cached {
                Some(c) => {
                    tracing::debug!(error = %e, "key store unavailable; using the cached key");
                    Ok(c.key)
                }
                None => Err(AuthError::KeyStoreUnavailable(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(key: &str) -> String {
        hex::encode(digest(key))
    }

    fn config(keys: Vec<KeyConfig>) -> AuthConfig {
        AuthConfig {
            keys,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keys_map_to_tenants() {
        let keys = ApiKeys::from_config(&config(vec![KeyConfig {
            tenant: "acme".into(),
            sha256: hash("sk-acme"),
            expires: None,
        }]))
        .unwrap();
        assert_eq!(
            keys.authenticate(Some("Bearer sk-acme")).await.unwrap(),
            Some(Tenant("acme".into()))
        );
        assert!(keys.authenticate(Some("Bearer sk-other")).await.is_err());
        assert!(keys.authenticate(None).await.is_err());
        assert!(keys.authenticate(Some("sk-acme")).await.is_err());
        assert_eq!(ApiKeys::default().authenticate(None).await.unwrap(), None);
        let bad = ApiKeys::from_config(&config(vec![KeyConfig {
            tenant: "a".into(),
            sha256: "xyz".into(),
            expires: None,
        }]));
        assert_eq!(bad.unwrap_err().0, "gateway.auth.keys[0].sha256");
        let bad = ApiKeys::from_config(&config(vec![KeyConfig {
            tenant: "a".into(),
            sha256: hash("k"),
            expires: Some("tomorrow".into()),
        }]));
        assert_eq!(bad.unwrap_err().0, "gateway.auth.keys[0].expires");
    }

    #[tokio::test]
    async fn configured_keys_expire() {
        let keys = ApiKeys::from_config(&config(vec![KeyConfig {
            tenant: "acme".into(),
            sha256: hash("sk-acme"),
            expires: Some("2026-01-01T00:00:00Z".into()),
        }]))
        .unwrap();
        let at = parse_expiry("2026-01-01T00:00:00Z").unwrap();
        assert!(
            keys.authenticate_at(Some("Bearer sk-acme"), at - 1)
                .await
                .is_ok()
        );
        let e = keys
            .authenticate_at(Some("Bearer sk-acme"), at)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::KeyExpired(_)), "{e:?}");
        assert_eq!(
            crate::error::GatewayError::from(e.clone()).code(),
            tonic::Code::Unauthenticated
        );
        assert!(
            e.to_string().contains("expired at 2026-01-01T00:00:00Z"),
            "{e}"
        );
    }

    fn stored(ttl: Duration) -> (ApiKeys, impl Fn(&str, Option<StoredKey>), impl Fn(bool)) {
        let keys = ApiKeys {
            inner: Arc::new(Inner {
                store: Some(Store::Map(Mutex::default())),
                cache_ttl: ttl,
                ..Default::default()
            }),
        };
        let (a, b) = (keys.clone(), keys.clone());
        let set = move |k: &str, v: Option<StoredKey>| {
            let Some(Store::Map(m)) = &a.inner.store else {
                unreachable!()
            };
            let mut m = m.lock().unwrap();
            match v {
                Some(v) => m.0.insert(digest(k), v),
                None => m.0.remove(&digest(k)),
            };
        };
        let down = move |down: bool| {
            let Some(Store::Map(m)) = &b.inner.store else {
                unreachable!()
            };
            m.lock().unwrap().1 = down;
        };
        (keys, set, down)
    }

    #[tokio::test]
    async fn stored_keys_are_cached_revoked_within_the_ttl_and_expire_exactly() {
        let (keys, set, down) = stored(Duration::from_secs(3600));
        let acme = StoredKey {
            tenant: "acme".into(),
            expires_ms: Some(1_000),
        };
        set("k1", Some(acme));
        assert_eq!(
            keys.authenticate_at(Some("Bearer k1"), 999).await.unwrap(),
            Some(Tenant("acme".into()))
        );
        // Revoked in the store, but cached: still accepted within the TTL...
        set("k1", None);
        assert!(keys.authenticate_at(Some("Bearer k1"), 999).await.is_ok());
        // ...while expiry needs no round trip.
        let e = keys
            .authenticate_at(Some("Bearer k1"), 1_000)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::KeyExpired(_)), "{e:?}");

        // With a zero TTL, revocation is seen at once.
        let (keys, set, down2) = stored(Duration::ZERO);
        set(
            "k2",
            Some(StoredKey {
                tenant: "t".into(),
                expires_ms: None,
            }),
        );
        assert!(keys.authenticate_at(Some("Bearer k2"), 0).await.is_ok());
        // Store down: a key seen before keeps working, an unseen one is UNAVAILABLE.
        down2(true);
        assert!(keys.authenticate_at(Some("Bearer k2"), 0).await.is_ok());
        let e = keys
            .authenticate_at(Some("Bearer k3"), 0)
            .await
            .unwrap_err();
        assert_eq!(
            crate::error::GatewayError::from(e.clone()).code(),
            tonic::Code::Unavailable,
            "{e}"
        );
        down2(false);
        set("k2", None);
        let e = keys
            .authenticate_at(Some("Bearer k2"), 0)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "invalid API key");
        down(false);
    }
}
