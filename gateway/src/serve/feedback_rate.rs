//! The per-tenant rate limit on Feedback calls (`gateway.feedback_per_minute`).

use std::collections::HashMap;
use std::sync::Mutex;

use routemesh_mesh::RedisConn;

use super::recent::Owner;
use crate::error::GatewayError;

/// Feedback calls per tenant in the current minute: counted in this
/// gateway's memory, and with `registry.redis` across every replica too
/// (one INCR per call; if Redis cannot count, the replica's own count
/// still bounds it). The map holds the current minute only, so it never
/// grows beyond the tenants that sent feedback within one minute.
pub(crate) struct FeedbackRate {
    per_minute: u32,
    counts: Mutex<(u64, HashMap<Owner, u32>)>,
    shared: Option<RedisConn>,
}

impl std::fmt::Debug for FeedbackRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackRate")
            .field("per_minute", &self.per_minute)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl FeedbackRate {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: Mutex::new((0, HashMap::new())),
            shared: None,
        }
    }

    /// Counted across every replica of the mesh too.
    pub(crate) fn shared(per_minute: u32, conn: RedisConn) -> Self {
        Self {
            shared: Some(conn),
            ..Self::new(per_minute)
        }
    }

    /// Counts one call of `owner` at `now_ms`, or refuses it when the
    /// tenant has used up this minute's calls (on this replica, or on all
    /// of them together when shared).
    pub(crate) async fn admit(&self, owner: &Owner, now_ms: u64) -> Result<(), GatewayError> {
        self.admit_here(owner, now_ms)?;
        let Some(conn) = &self.shared else {
            return Ok(());
        };
        let minute = now_ms / 60_000;
        let who = owner
            .as_deref()
            .map_or_else(|| "-".to_string(), |o| format!("t:{o}"));
        let key = conn.key(&format!("fbrate:{who}:{minute}"));
        let mut manager = conn.manager();
        let counted: Result<(u64,), _> = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .expire(&key, 120)
            .ignore()
            .query_async(&mut manager)
            .await;
        match counted {
            Ok((used,)) if used > u64::from(self.per_minute) => Err(self.refusal(owner)),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "feedback rate not counted across replicas (Redis)");
                Ok(())
            }
        }
    }

    fn refusal(&self, owner: &Owner) -> GatewayError {
        GatewayError::FeedbackRateLimited {
            tenant: owner.clone().unwrap_or_else(|| "(anonymous)".into()),
            per_minute: self.per_minute,
        }
    }

    /// This replica's own count.
    fn admit_here(&self, owner: &Owner, now_ms: u64) -> Result<(), GatewayError> {
        let minute = now_ms / 60_000;
        let mut guard = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (current, counts) = &mut *guard;
        if *current != minute {
            *current = minute;
            counts.clear();
        }
        let used = counts.entry(owner.clone()).or_insert(0);
        if *used >= self.per_minute {
            return Err(self.refusal(owner));
        }
        *used += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_gets_its_own_calls_per_minute() {
        let rate = FeedbackRate::new(3);
        let (a, b) = (Some("a".to_string()), Some("b".to_string()));
        let t0 = 10 * 60_000;
        for _ in 0..3 {
            assert!(rate.admit_here(&a, t0).is_ok());
        }
        let refused = rate.admit_here(&a, t0 + 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.to_string().contains("gateway.feedback_per_minute"),
            "{refused}"
        );
        assert!(rate.admit_here(&b, t0 + 2).is_ok(), "b has its own calls");
        assert!(rate.admit_here(&None, t0 + 3).is_ok(), "so has anonymous");
        assert!(rate.admit_here(&a, t0 + 60_000).is_ok(), "a new minute");
    }
}
