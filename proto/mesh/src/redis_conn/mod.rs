//! The one way routemesh connects to Redis, and the versioned key prefix that
//! everything it stores for a mesh lives under: `rm:v1:{<mesh>}:`. The braces
//! make the mesh name the hash tag, so a mesh's keys share one slot and
//! multi-key commands work on Redis Cluster (keys that need not, a tenant's
//! limits, may take a tag of their own: [`spread_key_prefix`]); `v1`
//! changes when a stored format does. Redis is one server or a Redis Cluster (`cluster: true`);
//! either may be reached over TLS (`rediss://`, as managed Redis services
//! require), with a private CA and a client certificate that are read
//! again when they change (see [`RedisConn`]).

mod endpoint;
mod handle;
mod reload;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use endpoint::{RedisEndpoint, RedisTls};
pub use handle::RedisHandle;

/// The prefix of every key routemesh stores for mesh `mesh`.
pub fn key_prefix(mesh: &str) -> String {
    format!("rm:v1:{{{mesh}}}:")
}

/// A prefix of mesh `mesh` with a hash tag of its own: `rm:v1:{<mesh>:<part>}:`.
pub fn spread_key_prefix(mesh: &str, part: &str) -> String {
    format!("rm:v1:{{{mesh}:{part}}}:")
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
///
/// With TLS files, a task owned by the clones (it stops when the last one
/// is dropped) reads them every `reload_interval`; when they change it
/// opens a new connection with them and later commands use it, while
/// commands already sent finish on the old one, which then closes. A new
/// set that does not connect keeps the current connection (logged, counted
/// in `routemesh_tls_reloads_total{what="registry.redis.tls"}`) and is
/// tried again on the next tick.
#[derive(Clone)]
pub struct RedisConn {
    current: Arc<RwLock<RedisHandle>>,
    prefix: String,
    mesh: String,
    cluster: bool,
    /// Stops the TLS files' watcher when the last clone goes.
    _watcher: Option<Arc<DropGuard>>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("prefix", &self.prefix)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Opens a connection to `endpoint` with the TLS `material` given.
async fn open(
    endpoint: &RedisEndpoint,
    material: Option<&endpoint::TlsMaterial>,
    patience: Patience,
) -> Result<RedisHandle, redis::RedisError> {
    if endpoint.cluster {
        let client = endpoint.cluster_client(material, patience)?;
        return Ok(RedisHandle::Cluster(client.get_async_connection().await?));
    }
    let client = endpoint.single_client(material)?;
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(patience.connect_timeout))
        .set_response_timeout(Some(patience.response_timeout))
        .set_number_of_retries(patience.retries);
    if let Some(delay) = patience.max_retry_delay {
        config = config.set_max_delay(delay);
    }
    Ok(RedisHandle::Single(
        ConnectionManager::new_with_config(client, config).await?,
    ))
}

impl RedisConn {
    /// Connects to `endpoint` for mesh `mesh`; fails when the first
    /// connection cannot be made within `patience` (for a cluster: when no
    /// seed answers with the cluster's slots).
    pub async fn connect(
        endpoint: impl Into<RedisEndpoint>,
        mesh: &str,
        patience: Patience,
    ) -> Result<Self, redis::RedisError> {
        let endpoint = endpoint.into();
        let material = endpoint.read_tls().await?;
        let handle = open(&endpoint, material.as_ref(), patience).await?;
        let current = Arc::new(RwLock::new(handle));
        let watcher = match (material, endpoint.reload_interval()) {
            (Some(material), Some(interval)) => {
                let stop = CancellationToken::new();
                tokio::spawn(reload::follow_tls_files(
                    reload::Watch {
                        endpoint: endpoint.clone(),
                        patience,
                        interval,
                        current: Arc::downgrade(&current),
                    },
                    material,
                    stop.clone(),
                ));
                Some(Arc::new(stop.drop_guard()))
            }
            _ => None,
        };
        Ok(Self {
            current,
            prefix: key_prefix(mesh),
            mesh: mesh.to_string(),
            cluster: endpoint.cluster,
            _watcher: watcher,
        })
    }

    /// A handle to run commands on: the current connection (a clone; they
    /// share it). Take one per operation rather than keeping it, so that a
    /// connection reopened with new TLS files is used.
    pub fn manager(&self) -> RedisHandle {
        match self.current.read() {
            Ok(handle) => handle.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The mesh's key prefix, `rm:v1:{<mesh>}:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key of `name` (relative to the mesh).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether Redis is a cluster (keys that need not share the mesh's slot
    /// may then be spread, see [`Self::spread_prefix`]).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// A key prefix of the mesh with a hash tag of its own,
    /// `rm:v1:{<mesh>:<part>}:`: on a cluster its keys land on the slot
    /// of `<mesh>:<part>`, not the mesh's, so one part's traffic (a
    /// tenant's limits) does not all go to one node.
    pub fn spread_prefix(&self, part: &str) -> String {
        spread_key_prefix(&self.mesh, part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_versioned_and_hash_tagged() {
        assert_eq!(key_prefix("prod"), "rm:v1:{prod}:");
        assert_eq!(key_prefix(""), "rm:v1:{}:");
        assert_eq!(spread_key_prefix("prod", "t:acme"), "rm:v1:{prod:t:acme}:");
    }
}
