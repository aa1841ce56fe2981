//! The `gateway:` section: listeners, policy weights, timeouts, admission,
//! limits of a request, discovery and telemetry settings, with their
//! defaults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::routing::policy::PolicyKind;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Public gRPC address; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Routing policy: `utility` (quality − λ·cost − μ·latency) or `least-loaded`.
    #[serde(default)]
    pub policy: PolicyKind,
    /// How a request is driven: `single` (one routing decision) or `cascade`
    /// (the cheap model first, escalating weak answers; see `cascade`).
    #[serde(default)]
    pub strategy: super::cascade::StrategyKind,
    /// The cascade's steps, verifier and acceptance threshold (read with
    /// `strategy: cascade`).
    #[serde(default)]
    pub cascade: super::cascade::CascadeConfig,
    /// λ of the utility policy: quality points per USD of expected cost.
    /// Unset: the loaded router artifact's calibrated λ, else 20.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub cost_weight: Option<f64>,
    /// μ of the utility policy: quality points per second of expected latency.
    #[serde(default = "default_latency_weight")]
    #[schemars(range(min = 0.0))]
    pub latency_weight: f64,
    /// ν of the utility policy: quality points per unit of worker load.
    #[serde(default = "default_load_weight")]
    #[schemars(range(min = 0.0))]
    pub load_weight: f64,
    /// Longest a request may take end to end (a client deadline can shorten it).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub request_timeout: Duration,
    /// The public ports' (gRPC and HTTP) connection limits: a cap on open
    /// connections, header and idle timeouts, HTTP/2 keepalive.
    #[serde(default)]
    pub connections: routemesh_mesh::conn::ConnectionLimits,
    /// The admin port's: its own cap, so that health probes and scrapes
    /// find room when the public ports are flooded.
    #[serde(default = "default_admin_connections")]
    pub admin_connections: routemesh_mesh::conn::ConnectionLimits,
    /// Longest a streaming client may leave its stream unread (buffers
    /// full) before the stream is ended and its worker call cancelled.
    #[serde(default = "default_stream_stall_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub stream_stall_timeout: Duration,
    /// Requests served at once; beyond it requests get RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1))]
    pub max_concurrent_requests: usize,
    /// Tries per request: the first worker plus failovers to others, for
    /// failures where no model ran.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Failovers allowed per request served (a retry budget, so a failing
    /// pool never sees a retry storm).
    #[serde(default = "default_retry_ratio")]
    #[schemars(range(min = 0.0))]
    pub retry_budget_ratio: f64,
    /// Failovers available at once, on top of the ratio.
    #[serde(default = "default_retry_burst")]
    #[schemars(range(min = 0.0))]
    pub retry_budget_burst: f64,
    /// max_tokens when a request gives none.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1))]
    pub default_max_tokens: u32,
    /// Largest max_tokens a request may ask for.
    #[serde(default = "default_max_tokens_limit")]
    pub max_tokens_limit: u32,
    /// Largest total prompt size in characters.
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// Most messages in one request.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// How often the registry is read for joining and leaving workers.
    #[serde(default = "default_discovery_interval", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub discovery_interval: Duration,
    /// How long a worker that still answers stays in the pool after the
    /// registry stops listing it (a restarted Redis loses registrations until
    /// the workers' next heartbeat).
    #[serde(default = "default_missing_worker_grace", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub missing_worker_grace: Duration,
    /// `routemesh up`: call the workers this process runs in-process (no
    /// socket); false sends them through their ports like any other worker,
    /// as a deployment with the workers on other nodes would (benchmarks of
    /// the network hop).
    #[serde(default = "yes")]
    pub in_process_workers: bool,
    /// How often each worker is asked for its load (also its health check).
    #[serde(default = "default_load_interval", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub load_interval: Duration,
    /// Request ids remembered for Feedback.
    #[serde(default = "default_feedback_window")]
    pub feedback_window: usize,
    /// Feedback calls each tenant may make per minute, counted by each
    /// gateway in its own memory (N replicas admit up to N times as many).
    #[serde(default = "default_feedback_per_minute")]
    #[schemars(range(min = 1))]
    pub feedback_per_minute: u32,
    /// How feedback exemplars count for similar prompts, and how many are kept.
    #[serde(default)]
    pub feedback_memory: crate::routing::feedback::FeedbackMemoryConfig,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(default = "default_drain_grace", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub drain_grace: Duration,
    /// The admin port (metrics, health, cost and telemetry JSON); `null` turns it off.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Option<SocketAddr>,
    /// The OpenAI-compatible HTTP API's address; `null` turns it off.
    #[serde(default = "default_http_listen")]
    pub http_listen: Option<SocketAddr>,
    /// Largest request accepted on either API, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Request bytes the HTTP API holds at once (bodies being read, parsed
    /// and served); beyond it new requests get 429 at once, before their
    /// body is read, so a burst of large bodies cannot take the memory.
    #[serde(default = "default_max_request_bytes_in_flight")]
    pub max_request_bytes_in_flight: usize,
    /// API keys and their tenants.
    #[serde(default)]
    pub auth: crate::tenancy::auth::AuthConfig,
    /// ε of the utility policy: quality points per unit of recent error rate.
    #[serde(default = "default_error_weight")]
    #[schemars(range(min = 0.0))]
    pub error_weight: f64,
    /// Live telemetry: what is recorded, and how the router reads it.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Serve the public APIs (gRPC and the OpenAI-compatible HTTP API) over
    /// TLS; with `ca`, clients must present a certificate from that CA. The
    /// admin port stays plain HTTP (probes and scrapes from inside the cluster).
    #[serde(default)]
    pub tls: Option<routemesh_mesh::tls::TlsFiles>,
    /// TLS towards workers (`https://` endpoints): the gateway's client
    /// certificate for mutual TLS and the workers' CA.
    #[serde(default)]
    pub worker_tls: Option<routemesh_mesh::tls::TlsFiles>,
    /// A bearer token for the admin port's data (every tenant's spend and
    /// traffic): without it, anyone who reaches the port may read them.
    #[serde(default)]
    pub admin_auth: Option<AdminAuth>,
    /// The learned router (quality prediction).
    #[serde(default)]
    pub router: crate::routing::quality::RouterSettings,
    /// When the limits store (Redis) is unreachable: admit requests (true, the
    /// default: availability first; spend is still recorded in telemetry) or
    /// refuse them with UNAVAILABLE (false).
    #[serde(default = "yes")]
    pub limits_fail_open: bool,
    /// The per-worker circuit breaker.
    #[serde(default)]
    pub circuit_breaker: crate::pool::breaker::BreakerConfig,
    /// Per-tenant settings, by tenant name.
    #[serde(default)]
    pub tenants: std::collections::HashMap<String, crate::tenancy::tenants::TenantConfig>,
    /// With `registry.redis`: how long each served request is kept in Redis
    /// so that Feedback on it reaches any replica (about 500 bytes each).
    #[serde(default = "default_shared_request_ttl", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub shared_request_ttl: Duration,
    /// How strictly the OpenAI-compatible API reads requests.
    #[serde(default)]
    pub openai: OpenAiApiConfig,
    /// Keeping each conversation on the model that served its first turn.
    #[serde(default)]
    pub session_affinity: crate::routing::affinity::SessionAffinityConfig,
}

/// The OpenAI-compatible API's reading of requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiApiConfig {
    /// Accept (and drop) fields the API does not know, for clients that
    /// send vendor extras. Off by default: an unknown field, often a typo,
    /// is refused with a 400 naming it. `routing` keys are always checked.
    #[serde(default)]
    pub ignore_unknown_fields: bool,
}

/// Telemetry is shared through `registry.redis` when that is set, and kept in
/// the gateway's memory otherwise.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// History the router's view aggregates (10-second resolution).
    #[serde(default = "default_window", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub window: Duration,
    /// How often that view is refreshed (one Redis round trip each).
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub snapshot_interval: Duration,
    /// Longest a record waits before being written: telemetry, served
    /// requests and sessions are batched and written aggregated once per
    /// interval (one increment per distinct field, one HSET per kind), so
    /// Redis commands per request fall as the rate rises. A served request
    /// or session queued while its writer is idle goes at once.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub flush_interval: Duration,
    /// Records buffered while Redis is down; beyond it the oldest are dropped (counted).
    #[serde(default = "default_buffer_max")]
    pub buffer_max: usize,
    /// Observed requests a worker needs in the window before its observed
    /// latency replaces its own load report.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Weight of the prior (router or tier) against feedback, in pseudo-scores:
    /// quality = (prior·w + sum of feedback) / (w + feedback count).
    #[serde(default = "default_feedback_prior_weight")]
    pub feedback_prior_weight: f64,
    /// Days of feedback the quality estimate uses.
    #[serde(default = "default_feedback_days")]
    pub feedback_days: u32,
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_snapshot_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_buffer_max() -> usize {
    100_000
}
fn default_min_requests() -> u32 {
    5
}
fn default_feedback_prior_weight() -> f64 {
    10.0
}
fn default_feedback_days() -> u32 {
    7
}
fn default_error_weight() -> f64 {
    crate::routing::policy::UtilityPolicy::default().error_weight
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        serde_norway::from_str("{}")
            .unwrap_or_else(|_| unreachable!("empty telemetry config parses"))
    }
}

impl TelemetryConfig {
    pub fn recorder(&self) -> routemesh_telemetry::RecorderConfig {
        routemesh_telemetry::RecorderConfig {
            flush_interval: self.flush_interval,
            buffer_max: self.buffer_max,
            snapshot_interval: self.snapshot_interval,
            window_secs: u32::try_from(self.window.as_secs())
                .unwrap_or(u32::MAX)
                .max(10),
            feedback_days: self.feedback_days,
            ..routemesh_telemetry::RecorderConfig::default()
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_latency_weight() -> f64 {
    crate::routing::policy::UtilityPolicy::default().latency_weight
}
fn default_load_weight() -> f64 {
    crate::routing::policy::UtilityPolicy::default().load_weight
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_admin_connections() -> routemesh_mesh::conn::ConnectionLimits {
    routemesh_mesh::conn::ConnectionLimits::default().with_max_open(256)
}
fn default_stream_stall_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrent() -> usize {
    4096
}
fn default_max_attempts() -> u32 {
    2
}
fn yes() -> bool {
    true
}
fn default_retry_ratio() -> f64 {
    0.2
}
fn default_retry_burst() -> f64 {
    10.0
}
fn default_max_tokens() -> u32 {
    256
}
fn default_max_tokens_limit() -> u32 {
    8192
}
fn default_max_prompt_chars() -> usize {
    400_000
}
fn default_max_messages() -> usize {
    512
}
fn default_discovery_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_missing_worker_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_load_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_feedback_window() -> usize {
    // About 470 bytes each (measured): 20,000 remembered requests ~ 9 MiB.
    20_000
}
fn default_feedback_per_minute() -> u32 {
    60
}
fn default_shared_request_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_request_bytes_in_flight() -> usize {
    64 * 1024 * 1024
}
fn default_max_request_bytes() -> usize {
    4 << 20
}
fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
}
fn default_http_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
}
fn default_drain_grace() -> Duration {
    Duration::from_secs(20)
}

impl Default for GatewayConfig {
    fn default() -> Self {
        // One source of defaults: the serde ones.
        serde_norway::from_str("{}").unwrap_or_else(|_| unreachable!("empty gateway config parses"))
    }
}

/// The admin port's bearer token (`gateway.admin_auth`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminAuth {
    /// Hex SHA-256 of the token, e.g. `printf %s "$TOKEN" | sha256sum`.
    pub sha256: String,
    /// Put `/metrics` behind the token too (the scraper then sends it;
    /// Prometheus: `authorization: {credentials: ...}`). Health and
    /// readiness always stay open for probes.
    #[serde(default)]
    pub protect_metrics: bool,
}
