//! Tenant rate limits and spend budgets, enforced across every gateway
//! replica and under concurrency. Requests per minute are counted when
//! admitted. Tokens and USD are *reserved* at admission: the request's
//! maximum (its estimated prompt plus `max_tokens`, at the pool's highest
//! prices) must fit in what is left after spend and every other request's
//! reservation, so a hundred concurrent requests cannot each see the same
//! remaining budget. When the request ends, its reservation is replaced by
//! what its calls actually used (streams and failed-over attempts included).
//! In Redis one atomic script admits and reserves, one settles; in memory the
//! same rules hold for one process.
//!
//! When Redis is unreachable, `limits_fail_open` decides: admit (the
//! default, availability first) or refuse with UNAVAILABLE. Spend during an
//! outage is buffered and charged when Redis answers again, each settlement
//! at most once (by its id).

mod memory;
mod redis_store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routemesh_mesh::RedisEndpoint;

use crate::tenancy::tenants::TenantConfig;
use memory::Memory;
use redis_store::RedisLimits;

/// One of a tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    BudgetUsdPerDay,
    BudgetUsdPerMonth,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::RequestsPerMinute,
        LimitKind::TokensPerMinute,
        LimitKind::BudgetUsdPerDay,
        LimitKind::BudgetUsdPerMonth,
    ];

    /// The limit's name in the tenant configuration and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::BudgetUsdPerDay => "budget_usd_per_day",
            LimitKind::BudgetUsdPerMonth => "budget_usd_per_month",
        }
    }

    /// The limit an admission script named.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// How long one window of the limit lasts.
    fn window_ms(self) -> u64 {
        match self {
            LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => MINUTE_MS,
            LimitKind::BudgetUsdPerDay => DAY_MS,
            LimitKind::BudgetUsdPerMonth => MONTH_MS,
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A limit a request ran into; named in the RESOURCE_EXHAUSTED message.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Over {
        limit: LimitKind,
        /// The limit's configured value.
        value: String,
        /// How the request met it: what is used or reserved, what it asked.
        detail: String,
    },
    /// The limits store is down and the gateway fails closed.
    StoreDown(String),
}

pub(crate) const MINUTE_MS: u64 = 60_000;
pub(crate) const DAY_MS: u64 = 86_400_000;
pub(crate) const MONTH_MS: u64 = 30 * DAY_MS;

/// What a request may consume at most: reserved at admission.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ask {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// What a request's calls actually consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Used {
    pub(crate) tokens: u64,
    pub(crate) cost_usd: f64,
}

/// A tenant's configured limits, negative where there is none.
#[derive(Debug, Clone, Copy)]
struct Caps {
    requests_per_minute: f64,
    tokens_per_minute: f64,
    usd_per_day: f64,
    usd_per_month: f64,
}

impl Caps {
    fn of(t: &TenantConfig) -> Self {
        let or_none = |v: Option<f64>| v.unwrap_or(-1.0);
        Self {
            requests_per_minute: or_none(t.requests_per_minute.map(|v| v as f64)),
            tokens_per_minute: or_none(t.tokens_per_minute.map(|v| v as f64)),
            usd_per_day: or_none(t.budget_usd_per_day),
            usd_per_month: or_none(t.budget_usd_per_month),
        }
    }

    fn get(&self, kind: LimitKind) -> f64 {
        match kind {
            LimitKind::RequestsPerMinute => self.requests_per_minute,
            LimitKind::TokensPerMinute => self.tokens_per_minute,
            LimitKind::BudgetUsdPerDay => self.usd_per_day,
            LimitKind::BudgetUsdPerMonth => self.usd_per_month,
        }
    }

    /// The refusal for `kind`, given what was already used or reserved.
    fn refusal(&self, kind: LimitKind, taken: f64, ask: Ask) -> Refusal {
        let limit = self.get(kind);
        let (unit, asked) = match kind {
            LimitKind::RequestsPerMinute => ("requests", 1.0),
            LimitKind::TokensPerMinute => ("tokens", ask.tokens as f64),
            _ => ("USD", ask.cost_usd),
        };
        let detail = if kind == LimitKind::RequestsPerMinute {
            String::new()
        } else if asked > limit {
            format!(
                ": this request alone may use {asked:.6} {unit} (estimated prompt plus max_tokens at the highest price it may be served at); lower max_tokens"
            )
        } else {
            format!(
                ": {taken:.6} {unit} used or reserved by requests in flight, this request may use up to {asked:.6}"
            )
        };
        Refusal::Over {
            limit: kind,
            value: format!("{limit}"),
            detail,
        }
    }
}

/// Whether `ask` fits under `limit` after `taken`: nothing left refuses
/// even a request that asks for nothing.
fn fits(limit: f64, taken: f64, ask: f64) -> bool {
    limit < 0.0 || (taken < limit && taken + ask <= limit)
}

enum Store {
    Memory(Mutex<Memory>),
    Redis(RedisLimits),
}

impl Store {
    /// Replaces a reservation by what was used (or charges an admission
    /// made while Redis was down).
    fn settle(&self, settlement: Settlement) {
        match self {
            Store::Memory(m) => {
                if let Ok(mut m) = m.lock() {
                    m.settle(&settlement);
                }
            }
            Store::Redis(r) => r.settle(settlement),
        }
    }
}

/// The end of one admitted request, for the store.
#[derive(Debug, Clone)]
pub(crate) struct Settlement {
    pub(crate) tenant: String,
    /// The reservation's id; unique per admission.
    pub(crate) id: String,
    /// What was reserved (zero when admission could not reserve).
    pub(crate) reserved: Ask,
    pub(crate) used: Used,
    /// When the request ended: its spend counts in that moment's windows.
    pub(crate) at_ms: u64,
}

pub struct Limits {
    tenants: HashMap<String, Caps>,
    store: Arc<Store>,
    fail_open: bool,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("tenants", &self.tenants.len())
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl Limits {
    /// In this process only.
    pub fn in_memory(tenants: &HashMap<String, TenantConfig>, fail_open: bool) -> Self {
        Self {
            tenants: limited(tenants),
            store: Arc::new(Store::Memory(Mutex::default())),
            fail_open,
        }
    }

    /// Shared through Redis by every replica of `mesh`. Starts the task that
    /// settles reservations (and charges what an outage left unsettled); it
    /// ends when these limits are dropped.
    pub async fn redis(
        url: impl Into<RedisEndpoint>,
        mesh: &str,
        tenants: &HashMap<String, TenantConfig>,
        fail_open: bool,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            tenants: limited(tenants),
            store: Arc::new(Store::Redis(RedisLimits::connect(url, mesh).await?)),
            fail_open,
        })
    }

    /// Whether `tenant` has any limit (else admission costs nothing).
    pub fn limits(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Admits one request of `tenant` that may consume up to `ask`, holding
    /// that much until the returned reservation settles (or, if its holder
    /// vanished, for `hold_for`); or names the limit it hit.
    pub async fn admit(
        &self,
        tenant: &str,
        ask: Ask,
        hold_for: Duration,
        now_ms: u64,
    ) -> Result<Reservation, Refusal> {
        let Some(caps) = self.tenants.get(tenant) else {
            return Ok(Reservation::none());
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let reserved = match &*self.store {
            Store::Memory(m) => {
                let Ok(mut m) = m.lock() else {
                    return Ok(Reservation::none());
                };
                m.admit(tenant, caps, ask, now_ms)?;
                ask
            }
            Store::Redis(r) => match r.admit(tenant, &id, caps, ask, hold_for, now_ms).await {
                Ok(()) => ask,
                Err(redis_store::AdmitError::Refused(refusal)) => return Err(refusal),
                Err(redis_store::AdmitError::Store(e)) if self.fail_open => {
                    tracing::warn!(error = %e, %tenant, "limits store unreachable; admitting (limits_fail_open), spend charged when it returns");
                    Ask::default()
                }
                Err(redis_store::AdmitError::Store(e)) => return Err(Refusal::StoreDown(e)),
            },
        };
        Ok(Reservation(Some(Arc::new(Held {
            store: self.store.clone(),
            tenant: tenant.to_string(),
            id,
            reserved,
            used: Mutex::default(),
            admitted_ms: now_ms,
            admitted_at: std::time::Instant::now(),
        }))))
    }
}

/// What an admitted request holds of its tenant's limits. Clones share it;
/// when the last is dropped, what the request's calls used replaces what was
/// reserved.
#[derive(Clone, Default)]
pub struct Reservation(Option<Arc<Held>>);

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(held) => f
                .debug_struct("Reservation")
                .field("tenant", &held.tenant)
                .field("reserved", &held.reserved)
                .finish(),
            None => f.write_str("Reservation(none)"),
        }
    }
}

impl Reservation {
    /// For a tenant without limits.
    pub fn none() -> Self {
        Self(None)
    }

    /// Counts what one call consumed.
    pub fn charge(&self, tokens: u64, cost_usd: f64) {
        if let Some(held) = &self.0
            && let Ok(mut used) = held.used.lock()
        {
            used.tokens += tokens;
            used.cost_usd += cost_usd.max(0.0);
        }
    }
}

struct Held {
    store: Arc<Store>,
    tenant: String,
    id: String,
    reserved: Ask,
    used: Mutex<Used>,
    /// When it was admitted, on the clock admission was given; the spend
    /// counts in the windows of the request's end on that clock.
    admitted_ms: u64,
    admitted_at: std::time::Instant,
}

impl Drop for Held {
    fn drop(&mut self) {
        let used = self.used.lock().map(|u| *u).unwrap_or_default();
        self.store.settle(Settlement {
            tenant: std::mem::take(&mut self.tenant),
            id: std::mem::take(&mut self.id),
            reserved: self.reserved,
            used,
            at_ms: self
                .admitted_ms
                .saturating_add(u64::try_from(self.admitted_at.elapsed().as_millis()).unwrap_or(0)),
        });
    }
}

fn limited(tenants: &HashMap<String, TenantConfig>) -> HashMap<String, Caps> {
    tenants
        .iter()
        .filter(|(_, t)| t.has_limits())
        .map(|(k, v)| (k.clone(), Caps::of(v)))
        .collect()
}

#[cfg(test)]
mod tests;
