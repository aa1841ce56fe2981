//! The limits shared through Redis: one script admits and reserves, and a
//! task of its own settles reservations in batches (one script call per
//! tenant), keeping what Redis could not take to charge it when Redis
//! answers again.

use std::collections::HashMap;
use std::time::Duration;

use routemesh_mesh::{Patience, RedisConn, RedisEndpoint};
use tokio::sync::mpsc;

use super::{Ask, Caps, DAY_MS, LimitKind, MINUTE_MS, MONTH_MS, Refusal, Settlement, Used};

/// The prefix of one tenant's limit keys. On one server, under the mesh's
/// prefix (`rm:v1:{<mesh>}:lim:<tenant>:`, the layout since `v1`). On a
/// Redis Cluster, under a hash tag of the tenant's own
/// (`rm:v1:{<mesh>:t:<tenant>}:lim:`): every tenant's limits would
/// otherwise sit in the mesh's one slot, on one node, with every admission
/// of every tenant. A script call touches one tenant's keys only, so it
/// still touches one slot.
fn tenant_prefix(redis: &RedisConn, tenant: &str) -> String {
    if redis.is_cluster() {
        format!("{}lim:", redis.spread_prefix(&format!("t:{tenant}")))
    } else {
        redis.key(&format!("lim:{tenant}:"))
    }
}

/// Keys of one tenant's counters at one moment (`prefix` from
/// [`tenant_prefix`]): requests and tokens this minute, USD today and this
/// month.
fn window_keys(prefix: &str, now_ms: u64) -> [String; 4] {
    [
        format!("{prefix}rpm:{}", now_ms / MINUTE_MS),
        format!("{prefix}tpm:{}", now_ms / MINUTE_MS),
        format!("{prefix}usd:d:{}", now_ms / DAY_MS),
        format!("{prefix}usd:m:{}", now_ms / MONTH_MS),
    ]
}

/// A tenant's reservations: a hash (id -> "tokens usd", or "done" once
/// settled, plus the running sums `#tokens` and `#usd`) and a sorted set of
/// the same ids by when they expire.
fn held_keys(prefix: &str) -> [String; 2] {
    [format!("{prefix}held"), format!("{prefix}heldz")]
}

/// Forgets expired reservations (their holder vanished) and tombstones,
/// then admits only if the request's maximum fits in each limit after spend
/// and reservations; counts the request and reserves its maximum.
/// KEYS: rpm, tpm, day, month, held, heldz. ARGV: rpm, tpm, day and month
/// limits (negative: none), now, id, tokens asked, USD asked, expiry.
/// Returns {0, '', ''} or {1, limit name, used or reserved}.
const ADMIT: &str = r#"
local now = tonumber(ARGV[5])
local stale = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 64)
for _, id in ipairs(stale) do
  local held = redis.call('HGET', KEYS[5], id)
  if held and held ~= 'done' then
    local t, u = string.match(held, '^(%S+) (%S+)$')
    redis.call('HINCRBY', KEYS[5], '#tokens', -tonumber(t))
    redis.call('HINCRBYFLOAT', KEYS[5], '#usd', -tonumber(u))
  end
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[6], id)
end
local held_t, held_u = 0, 0
if redis.call('ZCARD', KEYS[6]) == 0 then
  redis.call('HDEL', KEYS[5], '#tokens', '#usd')
else
  held_t = math.max(0, tonumber(redis.call('HGET', KEYS[5], '#tokens') or '0'))
  held_u = math.max(0, tonumber(redis.call('HGET', KEYS[5], '#usd') or '0'))
end
local ask_t, ask_u = tonumber(ARGV[7]), tonumber(ARGV[8])
local function fits(limit, taken, ask)
  return limit < 0 or (taken < limit and taken + ask <= limit)
end
local tpm = tonumber(redis.call('GET', KEYS[2]) or '0') + held_t
if not fits(tonumber(ARGV[2]), tpm, ask_t) then return {1, 'tokens_per_minute', tostring(tpm)} end
local day = tonumber(redis.call('GET', KEYS[3]) or '0') + held_u
if not fits(tonumber(ARGV[3]), day, ask_u) then return {1, 'budget_usd_per_day', tostring(day)} end
local month = tonumber(redis.call('GET', KEYS[4]) or '0') + held_u
if not fits(tonumber(ARGV[4]), month, ask_u) then return {1, 'budget_usd_per_month', tostring(month)} end
if tonumber(ARGV[1]) >= 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('PEXPIRE', KEYS[1], 120000) end
  if n > tonumber(ARGV[1]) then return {1, 'requests_per_minute', tostring(n - 1)} end
end
if ask_t > 0 or ask_u > 0 then
  redis.call('HSET', KEYS[5], ARGV[6], ARGV[7] .. ' ' .. ARGV[8])
  redis.call('HINCRBY', KEYS[5], '#tokens', ARGV[7])
  redis.call('HINCRBYFLOAT', KEYS[5], '#usd', ARGV[8])
  redis.call('ZADD', KEYS[6], ARGV[9], ARGV[6])
  local ttl = tonumber(ARGV[9]) - now + 600000
  if redis.call('PTTL', KEYS[5]) < ttl then
    redis.call('PEXPIRE', KEYS[5], ttl)
    redis.call('PEXPIRE', KEYS[6], ttl)
  end
end
return {0, '', ''}
"#;

/// Settles a batch of one tenant's requests, each at most once: releases
/// its reservation (if still held), charges what it used to the windows it
/// names, and leaves a tombstone so that a settlement sent again (its reply
/// was lost) is not charged twice.
/// KEYS: held, heldz, then tpm, day, month per settlement. ARGV: now,
/// tombstone lifetime, then id, tokens used, USD used per settlement.
/// Returns how many were charged now.
const SETTLE: &str = r#"
local now, tomb = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = (#ARGV - 2) / 3
local charged = 0
for i = 0, n - 1 do
  local id = ARGV[3 + 3 * i]
  local held = redis.call('HGET', KEYS[1], id)
  if held ~= 'done' then
    if held then
      local t, u = string.match(held, '^(%S+) (%S+)$')
      redis.call('HINCRBY', KEYS[1], '#tokens', -tonumber(t))
      redis.call('HINCRBYFLOAT', KEYS[1], '#usd', -tonumber(u))
    end
    redis.call('HSET', KEYS[1], id, 'done')
    redis.call('ZADD', KEYS[2], now + tomb, id)
    local tokens, usd = ARGV[4 + 3 * i], ARGV[5 + 3 * i]
    local tpm, day, month = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
    if tonumber(tokens) > 0 then
      redis.call('INCRBY', tpm, tokens)
      redis.call('PEXPIRE', tpm, 120000)
    end
    if tonumber(usd) > 0 then
      redis.call('INCRBYFLOAT', day, usd)
      redis.call('PEXPIRE', day, 172800000)
      redis.call('INCRBYFLOAT', month, usd)
      redis.call('PEXPIRE', month, 5184000000)
    end
    charged = charged + 1
  end
end
if redis.call('PTTL', KEYS[1]) < tomb then
  redis.call('PEXPIRE', KEYS[1], tomb)
  redis.call('PEXPIRE', KEYS[2], tomb)
end
return charged
"#;

/// How long a settled id is remembered, so that a settlement whose reply
/// was lost and that is sent again is not charged twice.
const TOMBSTONE: Duration = Duration::from_secs(300);
/// Settlements queued for the settling task before new ones wait in the
/// task's own buffer.
const QUEUE: usize = 8192;
/// Settlements kept while Redis is down before the oldest are summed per
/// tenant and window (a sum loses nothing but the reservations' ids, which
/// then expire on their own).
const KEEP_SEPARATE: usize = 50_000;
/// Settlements of one tenant in one script call.
const BATCH: usize = 128;

/// Why an admission did not happen.
pub(super) enum AdmitError {
    Refused(Refusal),
    /// Redis did not answer.
    Store(String),
}

pub(super) struct RedisLimits {
    redis: RedisConn,
    admit: redis::Script,
    settlements: mpsc::Sender<Settlement>,
}

impl RedisLimits {
    /// Connects, and starts the settling task: it ends when these limits are
    /// dropped, after one last try to charge what it holds.
    pub(super) async fn connect(
        url: impl Into<RedisEndpoint>,
        mesh: &str,
    ) -> Result<Self, redis::RedisError> {
        // Short timeouts: admission sits on the request path.
        let patience = Patience {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            retries: 1,
            max_retry_delay: None,
        };
        let redis = RedisConn::connect(url, mesh, patience).await?;
        let (settlements, rx) = mpsc::channel(QUEUE);
        tokio::spawn(
            Settler {
                redis: redis.clone(),
                script: redis::Script::new(SETTLE),
                waiting: Vec::new(),
            }
            .run(rx),
        );
        Ok(Self {
            redis,
            admit: redis::Script::new(ADMIT),
            settlements,
        })
    }

    pub(super) async fn admit(
        &self,
        tenant: &str,
        id: &str,
        caps: &Caps,
        ask: Ask,
        hold_for: Duration,
        now_ms: u64,
    ) -> Result<(), AdmitError> {
        let prefix = tenant_prefix(&self.redis, tenant);
        let [rpm, tpm, day, month] = window_keys(&prefix, now_ms);
        let [held, heldz] = held_keys(&prefix);
        let expires = now_ms.saturating_add(u64::try_from(hold_for.as_millis()).unwrap_or(0));
        let mut conn = self.redis.manager();
        let result: Result<(i64, String, String), _> = self
            .admit
            .key(rpm)
            .key(tpm)
            .key(day)
            .key(month)
            .key(held)
            .key(heldz)
            .arg(caps.requests_per_minute)
            .arg(caps.tokens_per_minute)
            .arg(caps.usd_per_day)
            .arg(caps.usd_per_month)
            .arg(now_ms)
            .arg(id)
            .arg(ask.tokens)
            .arg(decimal(ask.cost_usd))
            .arg(expires)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((0, _, _)) => Ok(()),
            Ok((_, name, taken)) => {
                let kind = LimitKind::from_name(&name).unwrap_or(LimitKind::RequestsPerMinute);
                Err(AdmitError::Refused(caps.refusal(
                    kind,
                    taken.parse().unwrap_or(0.0),
                    ask,
                )))
            }
            Err(e) => Err(AdmitError::Store(e.to_string())),
        }
    }

    /// Queues a settlement for the settling task; if its queue is full the
    /// settlement is lost and the reservation expires on its own.
    pub(super) fn settle(&self, settlement: Settlement) {
        if let Err(e) = self.settlements.try_send(settlement) {
            tracing::warn!(error = %e, "limits settlement queue full; a reservation will expire instead");
        }
    }
}

/// A float as a plain decimal that Redis' INCRBYFLOAT reads (Rust prints
/// no exponent).
fn decimal(v: f64) -> String {
    if v.is_finite() && v > 0.0 {
        format!("{v}")
    } else {
        "0".to_string()
    }
}

/// The settling task: batches queued settlements by tenant, and keeps what
/// Redis did not take to send again.
struct Settler {
    redis: RedisConn,
    script: redis::Script,
    /// Settlements Redis did not take, oldest first.
    waiting: Vec<Settlement>,
}

impl Settler {
    async fn run(mut self, mut rx: mpsc::Receiver<Settlement>) {
        let mut batch = Vec::with_capacity(BATCH * 4);
        let mut backoff = Duration::from_millis(250);
        loop {
            let retry = !self.waiting.is_empty();
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH * 4) => Some(n),
                () = tokio::time::sleep(backoff), if retry => None,
            };
            if received == Some(0) {
                // Every sender is gone: the gateway is stopping.
                self.last_try().await;
                return;
            }
            // New settlements first; what waits from an outage goes on its
            // timer, or as soon as new ones show that Redis answers again
            // (not with every new one while it is down).
            let mut failed = false;
            if received.is_some() {
                failed = self.send(std::mem::take(&mut batch)).await;
            }
            if !failed && retry {
                let waiting = std::mem::take(&mut self.waiting);
                failed = self.send(waiting).await;
            }
            backoff = if failed {
                (backoff * 2).min(Duration::from_secs(5))
            } else {
                Duration::from_millis(250)
            };
            self.bound_waiting();
        }
    }

    /// Sends `batch`, one script call per tenant chunk; keeps what failed.
    /// True if anything failed.
    async fn send(&mut self, batch: Vec<Settlement>) -> bool {
        let mut by_tenant: HashMap<String, Vec<Settlement>> = HashMap::new();
        for s in batch {
            by_tenant.entry(s.tenant.clone()).or_default().push(s);
        }
        let mut failed = false;
        for (tenant, settlements) in by_tenant {
            for chunk in settlements.chunks(BATCH) {
                // After one failure the rest waits too, rather than each
                // waiting out its own timeout.
                if failed {
                    self.waiting.extend_from_slice(chunk);
                } else if let Err(e) = self.settle_chunk(&tenant, chunk).await {
                    tracing::warn!(error = %e, %tenant, "limits store unreachable; spend will be charged when it answers");
                    failed = true;
                    self.waiting.extend_from_slice(chunk);
                }
            }
        }
        failed
    }

    async fn settle_chunk(
        &self,
        tenant: &str,
        chunk: &[Settlement],
    ) -> Result<i64, redis::RedisError> {
        let prefix = tenant_prefix(&self.redis, tenant);
        let [held, heldz] = held_keys(&prefix);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(held)
            .key(heldz)
            .arg(routemesh_telemetry::record::now_ms())
            .arg(u64::try_from(TOMBSTONE.as_millis()).unwrap_or(u64::MAX));
        for s in chunk {
            let [_, tpm, day, month] = window_keys(&prefix, s.at_ms);
            invocation
                .key(tpm)
                .key(day)
                .key(month)
                .arg(&s.id)
                .arg(s.used.tokens)
                .arg(decimal(s.used.cost_usd));
        }
        let mut conn = self.redis.manager();
        invocation.invoke_async(&mut conn).await
    }

    /// Keeps the waiting list bounded through a long outage: beyond
    /// `KEEP_SEPARATE`, the oldest settlements are summed per tenant and
    /// windows into new ones (nothing is charged twice: a sum gets an id of
    /// its own, and its parts' reservations expire on their own).
    fn bound_waiting(&mut self) {
        if self.waiting.len() <= KEEP_SEPARATE {
            return;
        }
        let excess = self.waiting.len() - KEEP_SEPARATE / 2;
        // Per tenant and minute: a minute lies in one day and one month.
        let mut sums: HashMap<(String, u64), Used> = HashMap::new();
        for s in self.waiting.drain(..excess) {
            let sum = sums.entry((s.tenant, s.at_ms / MINUTE_MS)).or_default();
            sum.tokens += s.used.tokens;
            sum.cost_usd += s.used.cost_usd;
        }
        let summed = sums.into_iter().map(|((tenant, minute), used)| Settlement {
            tenant,
            id: uuid::Uuid::new_v4().simple().to_string(),
            reserved: Ask::default(),
            used,
            at_ms: minute * MINUTE_MS,
        });
        let rest = std::mem::take(&mut self.waiting);
        self.waiting = summed.chain(rest).collect();
    }

    /// One last send with a short deadline; what is still left is logged.
    async fn last_try(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        let sent = tokio::time::timeout(Duration::from_secs(2), self.send(waiting)).await;
        let lost: f64 = self.waiting.iter().map(|s| s.used.cost_usd).sum();
        if sent.is_err() || !self.waiting.is_empty() {
            tracing::warn!(
                settlements = self.waiting.len(),
                usd = lost,
                "stopping with spend the limits store never took"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keys_keep_the_v1_layout_under_a_prefix() {
        let prefix = "rm:v1:{prod}:lim:acme:";
        let [rpm, _, day, month] = window_keys(prefix, 61 * MINUTE_MS);
        assert_eq!(rpm, "rm:v1:{prod}:lim:acme:rpm:61");
        assert_eq!(day, "rm:v1:{prod}:lim:acme:usd:d:0");
        assert_eq!(month, "rm:v1:{prod}:lim:acme:usd:m:0");
        assert_eq!(held_keys(prefix)[1], "rm:v1:{prod}:lim:acme:heldz");
    }

    #[test]
    fn decimals_have_no_exponent() {
        assert_eq!(decimal(0.000_000_12), "0.00000012");
        assert_eq!(decimal(f64::NAN), "0");
        assert_eq!(decimal(-1.0), "0");
    }
}
