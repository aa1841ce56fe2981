//! The one way routemesh connects to Redis, and the versioned key prefix that
//! everything it stores for a mesh lives under: `rm:v1:{<mesh>}:`. The braces
//! make the mesh name the hash tag, so all of a mesh's keys share one slot
//! and multi-key commands work on Redis Cluster; `v1` changes when a stored
//! format does. Redis may be reached over TLS (`rediss://`, as managed Redis
//! services require), with a private CA and a client certificate.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

/// TLS towards Redis beyond what a `rediss://` URL gives by itself (the
/// system's trusted roots): the CA that signed the server's certificate,
/// and a client certificate for servers that ask for one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM CA the server's certificate must chain to (instead of the
    /// system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Where Redis is: its URL and, for `rediss://`, the TLS material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisEndpoint {
    pub url: String,
    pub tls: Option<RedisTls>,
}

impl From<&str> for RedisEndpoint {
    fn from(url: &str) -> Self {
        Self {
            url: url.to_string(),
            tls: None,
        }
    }
}

impl From<&String> for RedisEndpoint {
    fn from(url: &String) -> Self {
        url.as_str().into()
    }
}

impl From<&RedisEndpoint> for RedisEndpoint {
    fn from(endpoint: &RedisEndpoint) -> Self {
        endpoint.clone()
    }
}

impl RedisEndpoint {
    /// Checks what the binary can do with it, naming the key at fault
    /// (relative to the section holding `url` and `tls`).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let tls_url = self.url.starts_with("rediss://");
        if !["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|scheme| self.url.starts_with(scheme))
        {
            return Err((
                "url",
                format!(
                    "{:?} is not a redis://, rediss:// (TLS) or unix:// URL",
                    redacted(&self.url)
                ),
            ));
        }
        redis::parse_redis_url(&self.url).ok_or_else(|| {
            (
                "url",
                format!("{:?} is not a valid URL", redacted(&self.url)),
            )
        })?;
        if let Some(tls) = &self.tls {
            if !tls_url {
                return Err(("tls", "needs a rediss:// url (TLS)".into()));
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(("tls", "a client certificate needs both cert and key".into()));
            }
        }
        Ok(())
    }

    /// A client for the endpoint: with the configured CA and client
    /// certificate when given (read from disk here, once).
    pub async fn client(&self) -> Result<redis::Client, redis::RedisError> {
        let Some(tls) = self.tls.as_ref().filter(|t| **t != RedisTls::default()) else {
            return redis::Client::open(self.url.as_str());
        };
        let read = |path: &PathBuf, what: &'static str| {
            let path = path.clone();
            async move {
                tokio::fs::read(&path).await.map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        what,
                        format!("{}: {e}", path.display()),
                    ))
                })
            }
        };
        let root_cert = match &tls.ca {
            Some(ca) => Some(read(ca, "cannot read registry.redis.tls.ca").await?),
            None => None,
        };
        let client_tls = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "cannot read registry.redis.tls.cert").await?,
                client_key: read(key, "cannot read registry.redis.tls.key").await?,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            self.url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    }
}

/// A URL with its password (if any) hidden, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The prefix of every key routemesh stores for mesh `mesh`.
pub fn key_prefix(mesh: &str) -> String {
    format!("rm:v1:{{{mesh}}}:")
}

/// How long a connection waits and how often it retries. Each user picks
/// its own: a lookup on the request path gives up sooner than a background
/// flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// To establish (or re-establish) the connection.
    pub connect_timeout: Duration,
    /// For one command's reply.
    pub response_timeout: Duration,
    /// Reconnection attempts before a command fails.
    pub retries: usize,
    /// Longest wait between reconnection attempts (`None`: the redis crate's default).
    pub max_retry_delay: Option<Duration>,
}

/// A connection to Redis (reconnecting on its own) and the key prefix of
/// one mesh. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisConn {
    /// Connects to `url` for mesh `mesh`; fails when the first connection
    /// cannot be made within `patience`.
    pub async fn connect(
        endpoint: impl Into<RedisEndpoint>,
        mesh: &str,
        patience: Patience,
    ) -> Result<Self, redis::RedisError> {
        let client = endpoint.into().client().await?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(patience.connect_timeout))
            .set_response_timeout(Some(patience.response_timeout))
            .set_number_of_retries(patience.retries);
        if let Some(delay) = patience.max_retry_delay {
            config = config.set_max_delay(delay);
        }
        let manager = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            manager,
            prefix: key_prefix(mesh),
        })
    }

    /// A handle to run commands on (a clone; they share the connection).
    pub fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// The mesh's key prefix, `rm:v1:{<mesh>}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key of `name` (relative to the mesh).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_versioned_and_hash_tagged() {
        assert_eq!(key_prefix("prod"), "rm:v1:{prod}:");
        assert_eq!(key_prefix(""), "rm:v1:{}:");
    }
}
