//! The per-tenant rate limit on Feedback calls (`gateway.feedback_per_minute`).

use std::collections::HashMap;
use std::sync::Mutex;

use super::recent::Owner;
use crate::error::GatewayError;

/// Feedback calls per tenant in the current minute, in this gateway's
/// memory only: with N replicas a tenant may send N times the limit (shared
/// counting through Redis belongs with the shared feedback state). The map
/// holds the current minute only, so it never grows beyond the tenants
/// that sent feedback within one minute.
#[derive(Debug)]
pub(crate) struct FeedbackRate {
    per_minute: u32,
    counts: Mutex<(u64, HashMap<Owner, u32>)>,
}

impl FeedbackRate {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    /// Counts one call of `owner` at `now_ms`, or refuses it when the
    /// tenant has used up this minute's calls.
    pub(crate) fn admit(&self, owner: &Owner, now_ms: u64) -> Result<(), GatewayError> {
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
            return Err(GatewayError::FeedbackRateLimited {
                tenant: owner.clone().unwrap_or_else(|| "(anonymous)".into()),
                per_minute: self.per_minute,
            });
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
            assert!(rate.admit(&a, t0).is_ok());
        }
        let refused = rate.admit(&a, t0 + 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.to_string().contains("gateway.feedback_per_minute"),
            "{refused}"
        );
        assert!(rate.admit(&b, t0 + 2).is_ok(), "b has its own calls");
        assert!(rate.admit(&None, t0 + 3).is_ok(), "so has anonymous");
        assert!(rate.admit(&a, t0 + 60_000).is_ok(), "a new minute");
    }
}
