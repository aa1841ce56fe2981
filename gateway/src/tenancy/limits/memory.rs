//! The limits of one process: per tenant, each limit's counter for its
//! current window, and what requests in flight have reserved.

use std::collections::HashMap;

use super::{Ask, Caps, LimitKind, Refusal, Settlement, fits};

#[derive(Debug, Default)]
pub(super) struct Memory {
    /// One counter per tenant and limit, for the limit's current window only
    /// (a new window starts from zero and replaces the old one), so the map
    /// is bounded by the tenants with limits.
    counters: HashMap<(String, LimitKind), (u64, f64)>,
    /// Per tenant with requests in flight: tokens and USD reserved, and by
    /// how many requests (the entry goes when the last settles).
    reserved: HashMap<String, (Ask, usize)>,
}

impl Memory {
    fn get(&self, tenant: &str, kind: LimitKind, now_ms: u64) -> f64 {
        let window = now_ms / kind.window_ms();
        self.counters
            .get(&(tenant.to_string(), kind))
            .filter(|(w, _)| *w == window)
            .map_or(0.0, |(_, v)| *v)
    }

    /// Adds `amount` to the current window's counter; returns the new value.
    fn add(&mut self, tenant: &str, kind: LimitKind, now_ms: u64, amount: f64) -> f64 {
        let window = now_ms / kind.window_ms();
        let counter = self
            .counters
            .entry((tenant.to_string(), kind))
            .or_insert((window, 0.0));
        if counter.0 != window {
            *counter = (window, 0.0);
        }
        counter.1 += amount;
        counter.1
    }

    /// Refuses, or counts the request and reserves `ask`.
    pub(super) fn admit(
        &mut self,
        tenant: &str,
        caps: &Caps,
        ask: Ask,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let (held, _) = self.reserved.get(tenant).copied().unwrap_or_default();
        for (kind, reserved, asked) in [
            (
                LimitKind::TokensPerMinute,
                held.tokens as f64,
                ask.tokens as f64,
            ),
            (LimitKind::BudgetUsdPerDay, held.cost_usd, ask.cost_usd),
            (LimitKind::BudgetUsdPerMonth, held.cost_usd, ask.cost_usd),
        ] {
            let taken = self.get(tenant, kind, now_ms) + reserved;
            if !fits(caps.get(kind), taken, asked) {
                return Err(caps.refusal(kind, taken, ask));
            }
        }
        let rpm = caps.get(LimitKind::RequestsPerMinute);
        if rpm >= 0.0 && self.add(tenant, LimitKind::RequestsPerMinute, now_ms, 1.0) > rpm {
            return Err(caps.refusal(LimitKind::RequestsPerMinute, rpm, ask));
        }
        let entry = self.reserved.entry(tenant.to_string()).or_default();
        entry.0.tokens += ask.tokens;
        entry.0.cost_usd += ask.cost_usd;
        entry.1 += 1;
        Ok(())
    }

    /// Releases the reservation and charges what was used.
    pub(super) fn settle(&mut self, s: &Settlement) {
        if let Some(entry) = self.reserved.get_mut(&s.tenant) {
            entry.1 = entry.1.saturating_sub(1);
            entry.0.tokens = entry.0.tokens.saturating_sub(s.reserved.tokens);
            entry.0.cost_usd = (entry.0.cost_usd - s.reserved.cost_usd).max(0.0);
            if entry.1 == 0 {
                self.reserved.remove(&s.tenant);
            }
        }
        let (tenant, at) = (s.tenant.as_str(), s.at_ms);
        self.add(tenant, LimitKind::TokensPerMinute, at, s.used.tokens as f64);
        self.add(tenant, LimitKind::BudgetUsdPerDay, at, s.used.cost_usd);
        self.add(tenant, LimitKind::BudgetUsdPerMonth, at, s.used.cost_usd);
    }

    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.counters.len(), self.reserved.len())
    }
}
