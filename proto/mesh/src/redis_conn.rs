//! The one way routemesh connects to Redis, and the versioned key prefix that
//! everything it stores for a mesh lives under: `rm:v1:{<mesh>}:`. The braces
//! make the mesh name the hash tag, so all of a mesh's keys share one slot
//! and multi-key commands work on Redis Cluster; `v1` changes when a stored
//! format does.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
        url: &str,
        mesh: &str,
        patience: Patience,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
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
