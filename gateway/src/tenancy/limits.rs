//! Tenant rate limits and spend budgets, enforced across every gateway
//! replica: requests per minute are counted when admitted; tokens and USD are
//! charged when a request finishes (streams included) and checked before the
//! next one is admitted. In Redis one atomic script admits or refuses; in
//! memory the same rules hold for one process.
//!
//! When Redis is unreachable, `limits_fail_open` decides: admit (the
//! default, availability first; spend is reconciled from telemetry) or refuse
//! with UNAVAILABLE.

use std::collections::HashMap;
use std::sync::Mutex;

use routemesh_mesh::{Patience, RedisConn};

use crate::tenancy::tenants::TenantConfig;

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

    /// The limit the admission script named.
    fn from_script(name: &str) -> Option<Self> {
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
        value: String,
    },
    /// The limits store is down and the gateway fails closed.
    StoreDown(String),
}

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
const MONTH_MS: u64 = 30 * DAY_MS;

/// Keys of one tenant at one moment (relative; Redis adds the mesh prefix).
fn keys(tenant: &str, now_ms: u64) -> [String; 4] {
    [
        format!("lim:{tenant}:rpm:{}", now_ms / MINUTE_MS),
        format!("lim:{tenant}:tpm:{}", now_ms / MINUTE_MS),
        format!("lim:{tenant}:usd:d:{}", now_ms / DAY_MS),
        format!("lim:{tenant}:usd:m:{}", now_ms / MONTH_MS),
    ]
}

/// Admit atomically: refuse if tokens or spend already reached their limit,
/// else count the request and refuse if that passes the per-minute limit.
/// KEYS: rpm, tpm, day, month. ARGV: rpm limit, tpm limit, day budget,
/// month budget (negative = none). Returns {0, ""} or {1, limit name}.
const ADMIT: &str = r#"
local tpm = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) >= 0 and tpm >= tonumber(ARGV[2]) then return {1, 'tokens_per_minute'} end
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[3]) >= 0 and day >= tonumber(ARGV[3]) then return {1, 'budget_usd_per_day'} end
local month = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[4]) >= 0 and month >= tonumber(ARGV[4]) then return {1, 'budget_usd_per_month'} end
if tonumber(ARGV[1]) >= 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('PEXPIRE', KEYS[1], 120000) end
  if n > tonumber(ARGV[1]) then return {1, 'requests_per_minute'} end
end
return {0, ''}
"#;

/// Counters of this process: one per tenant and limit, for the limit's
/// current window only (a new window starts from zero and replaces the old
/// one), so the map is bounded by the tenants with limits.
#[derive(Debug, Default)]
struct Memory {
    counters: HashMap<(String, LimitKind), (u64, f64)>,
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
}

enum Store {
    Memory(Mutex<Memory>),
    Redis {
        redis: RedisConn,
        script: redis::Script,
    },
}

pub struct Limits {
    tenants: HashMap<String, TenantConfig>,
    store: Store,
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

fn or_none<T: Into<f64>>(v: Option<T>) -> f64 {
    v.map_or(-1.0, Into::into)
}

impl Limits {
    /// In this process only.
    pub fn in_memory(tenants: &HashMap<String, TenantConfig>, fail_open: bool) -> Self {
        Self {
            tenants: limited(tenants),
            store: Store::Memory(Mutex::default()),
            fail_open,
        }
    }

    /// Shared through Redis by every replica of `mesh`.
    pub async fn redis(
        url: impl Into<routemesh_mesh::RedisEndpoint>,
        mesh: &str,
        tenants: &HashMap<String, TenantConfig>,
        fail_open: bool,
    ) -> Result<Self, redis::RedisError> {
        // Short timeouts: admission sits on the request path.
        let patience = Patience {
            connect_timeout: std::time::Duration::from_millis(500),
            response_timeout: std::time::Duration::from_millis(500),
            retries: 1,
            max_retry_delay: None,
        };
        Ok(Self {
            tenants: limited(tenants),
            store: Store::Redis {
                redis: RedisConn::connect(url, mesh, patience).await?,
                script: redis::Script::new(ADMIT),
            },
            fail_open,
        })
    }

    /// Admits one request of `tenant`, or names the limit it hit.
    pub async fn admit(&self, tenant: &str, now_ms: u64) -> Result<(), Refusal> {
        let Some(t) = self.tenants.get(tenant) else {
            return Ok(());
        };
        let [rpm, tpm, day, month] = keys(tenant, now_ms);
        let limits = [
            or_none(t.requests_per_minute.map(|v| v as f64)),
            or_none(t.tokens_per_minute.map(|v| v as f64)),
            or_none(t.budget_usd_per_day),
            or_none(t.budget_usd_per_month),
        ];
        let over = |limit: LimitKind| {
            let value = match limit {
                LimitKind::RequestsPerMinute => limits[0],
                LimitKind::TokensPerMinute => limits[1],
                LimitKind::BudgetUsdPerDay => limits[2],
                LimitKind::BudgetUsdPerMonth => limits[3],
            };
            Refusal::Over {
                limit,
                value: format!("{value}"),
            }
        };
        match &self.store {
            Store::Memory(m) => {
                let Ok(mut m) = m.lock() else { return Ok(()) };
                for (limit, kind) in [
                    (limits[1], LimitKind::TokensPerMinute),
                    (limits[2], LimitKind::BudgetUsdPerDay),
                    (limits[3], LimitKind::BudgetUsdPerMonth),
                ] {
                    if limit >= 0.0 && m.get(tenant, kind, now_ms) >= limit {
                        return Err(over(kind));
                    }
                }
                if limits[0] >= 0.0
                    && m.add(tenant, LimitKind::RequestsPerMinute, now_ms, 1.0) > limits[0]
                {
                    return Err(over(LimitKind::RequestsPerMinute));
                }
                Ok(())
            }
            Store::Redis { redis, script } => {
                let mut conn = redis.manager();
                let result: Result<(i64, String), _> = script
                    .key(redis.key(&rpm))
                    .key(redis.key(&tpm))
                    .key(redis.key(&day))
                    .key(redis.key(&month))
                    .arg(limits[0])
                    .arg(limits[1])
                    .arg(limits[2])
                    .arg(limits[3])
                    .invoke_async(&mut conn)
                    .await;
                match result {
                    Ok((0, _)) => Ok(()),
                    Ok((_, name)) => Err(over(
                        LimitKind::from_script(&name).unwrap_or(LimitKind::RequestsPerMinute),
                    )),
                    Err(e) if self.fail_open => {
                        tracing::warn!(error = %e, "limits store unreachable; admitting (limits_fail_open)");
                        Ok(())
                    }
                    Err(e) => Err(Refusal::StoreDown(e.to_string())),
                }
            }
        }
    }

    /// Charges a finished request's tokens and cost to its tenant.
    pub async fn charge(&self, tenant: &str, tokens: u64, cost_usd: f64, now_ms: u64) {
        if !self.tenants.contains_key(tenant) {
            return;
        }
        let [_, tpm, day, month] = keys(tenant, now_ms);
        match &self.store {
            Store::Memory(m) => {
                if let Ok(mut m) = m.lock() {
                    m.add(tenant, LimitKind::TokensPerMinute, now_ms, tokens as f64);
                    m.add(tenant, LimitKind::BudgetUsdPerDay, now_ms, cost_usd);
                    m.add(tenant, LimitKind::BudgetUsdPerMonth, now_ms, cost_usd);
                }
            }
            Store::Redis { redis, .. } => {
                let mut conn = redis.manager();
                let result = redis::pipe()
                    .cmd("INCRBY")
                    .arg(redis.key(&tpm))
                    .arg(tokens)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(redis.key(&tpm))
                    .arg(120_000)
                    .ignore()
                    .cmd("INCRBYFLOAT")
                    .arg(redis.key(&day))
                    .arg(cost_usd)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(redis.key(&day))
                    .arg(2 * DAY_MS)
                    .ignore()
                    .cmd("INCRBYFLOAT")
                    .arg(redis.key(&month))
                    .arg(cost_usd)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(redis.key(&month))
                    .arg(2 * MONTH_MS)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, %tenant, "could not charge usage to the limits store");
                }
            }
        }
    }
}

fn limited(tenants: &HashMap<String, TenantConfig>) -> HashMap<String, TenantConfig> {
    tenants
        .iter()
        .filter(|(_, t)| t.has_limits())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_limits() {
        let tenants = HashMap::from([(
            "t".to_string(),
            TenantConfig {
                requests_per_minute: Some(2),
                budget_usd_per_day: Some(1.0),
                ..Default::default()
            },
        )]);
        let l = Limits::in_memory(&tenants, true);
        let now = 10 * DAY_MS;
        assert!(l.admit("t", now).await.is_ok() && l.admit("t", now).await.is_ok());
        assert_eq!(
            l.admit("t", now).await,
            Err(Refusal::Over {
                limit: LimitKind::RequestsPerMinute,
                value: "2".into()
            })
        );
        assert!(l.admit("t", now + MINUTE_MS).await.is_ok(), "a new minute");
        l.charge("t", 10, 1.5, now).await;
        assert!(matches!(
            l.admit("t", now + 2 * MINUTE_MS).await,
            Err(Refusal::Over {
                limit: LimitKind::BudgetUsdPerDay,
                ..
            })
        ));
        assert!(
            l.admit("other", now).await.is_ok(),
            "tenants without limits pass"
        );
    }

    #[tokio::test]
    async fn memory_forgets_past_windows() {
        let tenants = HashMap::from([(
            "t".to_string(),
            TenantConfig {
                requests_per_minute: Some(100),
                tokens_per_minute: Some(100_000),
                budget_usd_per_day: Some(100.0),
                ..Default::default()
            },
        )]);
        let l = Limits::in_memory(&tenants, true);
        // A month of minutes, each with a request and a charge.
        for minute in 0..(30 * 24 * 60) {
            let now = minute * MINUTE_MS;
            assert!(l.admit("t", now).await.is_ok());
            l.charge("t", 10, 0.0001, now).await;
        }
        let Store::Memory(m) = &l.store else {
            panic!("in memory")
        };
        let counters = m.lock().map(|m| m.counters.len()).unwrap_or(0);
        assert!(
            counters <= 4,
            "{counters} counters kept for one tenant after a month"
        );
    }
}
