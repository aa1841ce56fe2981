//! One connection type for one server and for a cluster, so that every
//! store runs its commands, pipelines and scripts the same way on both.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to one server (reconnecting on its own) or to a Redis
/// Cluster (routing each command to the node that owns its keys' slot,
/// following MOVED/ASK and reconnecting to nodes that went away). Cheap to
/// clone: clones share the connection.
///
/// On a cluster, every key of one command, script call or pipeline must
/// hash to one slot: routemesh's keys share the mesh's hash tag (see
/// [`super::key_prefix`]) or, for a tenant's limits, a tag of their own
/// used by nothing else in the same call.
#[derive(Clone)]
pub enum RedisHandle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisHandle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
