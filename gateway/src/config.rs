//! The routemesh configuration file: one YAML format for `up`, `gateway` and
//! `worker`. Parsed strictly (unknown keys are errors), then validated; every
//! error names the key at fault and why.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::routing::policy::PolicyKind;
use routemesh_mesh::Tier;
use routemesh_worker::WorkerConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where workers announce themselves and gateways find them.
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Worker agents: started in-process by `routemesh up`, or one per process
    /// by `routemesh worker`.
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
    /// OpenTelemetry traces of this process.
    #[serde(default)]
    pub tracing: crate::tracing_setup::TracingConfig,
    /// Workers the gateway dials without a registry (without `registry.redis`).
    #[serde(default)]
    pub static_workers: Vec<StaticWorker>,
}

/// Where workers announce themselves: in the gateway's process (the default,
/// when `redis` is absent) or in Redis.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisRegistryConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisRegistryConfig {
    /// e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Name of this mesh: gateways and workers with the same mesh see each other.
    #[serde(default = "default_mesh")]
    pub mesh: String,
}

fn default_mesh() -> String {
    "default".into()
}

/// A worker known from configuration rather than a registry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticWorker {
    pub id: String,
    pub model: String,
    pub tier: Tier,
    /// e.g. `http://10.0.0.7:50061`.
    pub endpoint: String,
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    #[serde(default)]
    pub quality_prior: Option<f64>,
    #[serde(default = "default_static_capacity")]
    pub capacity: u32,
    #[serde(default = "default_static_capacity")]
    pub max_queue: u32,
}

fn default_static_capacity() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Public gRPC address; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Routing policy: `utility` (quality − λ·cost − μ·latency) or `least-loaded`.
    #[serde(default)]
    pub policy: PolicyKind,
    /// λ of the utility policy: quality points per USD of expected cost.
    /// Unset: the loaded router artifact's calibrated λ, else 20.
    #[serde(default)]
    pub cost_weight: Option<f64>,
    /// μ of the utility policy: quality points per second of expected latency.
    #[serde(default = "default_latency_weight")]
    pub latency_weight: f64,
    /// ν of the utility policy: quality points per unit of worker load.
    #[serde(default = "default_load_weight")]
    pub load_weight: f64,
    /// Longest a request may take end to end (a client deadline can shorten it).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests served at once; beyond it requests get RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Tries per request: the first worker plus failovers to others, for
    /// failures where no model ran.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Failovers allowed per request served (a retry budget, so a failing
    /// pool never sees a retry storm).
    #[serde(default = "default_retry_ratio")]
    pub retry_budget_ratio: f64,
    /// Failovers available at once, on top of the ratio.
    #[serde(default = "default_retry_burst")]
    pub retry_budget_burst: f64,
    /// max_tokens when a request gives none.
    #[serde(default = "default_max_tokens")]
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
    pub discovery_interval: Duration,
    /// How long a worker that still answers stays in the pool after the
    /// registry stops listing it (a restarted Redis loses registrations until
    /// the workers' next heartbeat).
    #[serde(default = "default_missing_worker_grace", with = "humantime_serde")]
    pub missing_worker_grace: Duration,
    /// `routemesh up`: call the workers this process runs in-process (no
    /// socket); false sends them through their ports like any other worker,
    /// as a deployment with the workers on other nodes would (benchmarks of
    /// the network hop).
    #[serde(default = "yes")]
    pub in_process_workers: bool,
    /// How often each worker is asked for its load (also its health check).
    #[serde(default = "default_load_interval", with = "humantime_serde")]
    pub load_interval: Duration,
    /// Request ids remembered for Feedback.
    #[serde(default = "default_feedback_window")]
    pub feedback_window: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(default = "default_drain_grace", with = "humantime_serde")]
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
    /// API keys and their tenants.
    #[serde(default)]
    pub auth: crate::tenancy::auth::AuthConfig,
    /// ε of the utility policy: quality points per unit of recent error rate.
    #[serde(default = "default_error_weight")]
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
}

/// Telemetry is shared through `registry.redis` when that is set, and kept in
/// the gateway's memory otherwise.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// History the router's view aggregates (10-second resolution).
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// How often that view is refreshed (one Redis round trip each).
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Longest a record waits before being written (records are batched).
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
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
    Duration::from_millis(100)
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

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

impl Config {
    /// Parses and validates YAML; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde_norway already prefixes some messages with the path.
            let message = match message.split_once(": ") {
                Some((path, rest)) if key.starts_with(path) => rest.to_string(),
                _ => message,
            };
            ConfigError::Invalid {
                origin: origin.into(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message,
            }
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.into(),
                key,
                message,
            })?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let g = &self.gateway;
        let bad = |key: &str, message: String| Err((format!("gateway.{key}"), message));
        for (key, w) in [
            ("cost_weight", g.cost_weight.unwrap_or(0.0)),
            ("latency_weight", g.latency_weight),
            ("load_weight", g.load_weight),
            ("error_weight", g.error_weight),
            ("retry_budget_ratio", g.retry_budget_ratio),
            ("retry_budget_burst", g.retry_budget_burst),
            (
                "telemetry.feedback_prior_weight",
                g.telemetry.feedback_prior_weight,
            ),
        ] {
            if !w.is_finite() || w < 0.0 {
                return bad(key, format!("{w} must be a finite number >= 0"));
            }
        }
        crate::tenancy::auth::ApiKeys::from_config(&g.auth)?;
        g.circuit_breaker.validate()?;
        for (key, tls) in [("tls", &g.tls), ("worker_tls", &g.worker_tls)] {
            // Its errors read "<field>: <why>".
            if let Some(Err(e)) = tls.as_ref().map(|t| t.validate()) {
                let e = e.to_string();
                let (field, why) = e.split_once(": ").unwrap_or(("", &e));
                return bad(&format!("{key}.{field}"), why.to_string());
            }
        }
        if let Some(t) = &g.worker_tls
            && t.ca.is_none()
        {
            return bad(
                "worker_tls.ca",
                "needed to verify the workers' certificates".into(),
            );
        }
        if g.auth.redis && self.registry.redis.is_none() {
            return bad(
                "auth.redis",
                "needs `registry.redis`: stored keys live in the mesh's Redis".into(),
            );
        }
        if g.telemetry.window < Duration::from_secs(10)
            || g.telemetry.window > Duration::from_secs(3600)
        {
            return bad(
                "telemetry.window",
                format!("{:?} must be between 10s and 1h", g.telemetry.window),
            );
        }
        for (name, t) in &g.tenants {
            for (key, v) in [
                ("budget_usd_per_day", t.budget_usd_per_day),
                ("budget_usd_per_month", t.budget_usd_per_month),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    return bad(
                        &format!("tenants.{name}.{key}"),
                        format!("{v} must be a number >= 0"),
                    );
                }
            }
            if let Some(target) = t.target_cost_per_request_usd
                && !(target.is_finite() && target > 0.0)
            {
                return bad(
                    &format!("tenants.{name}.target_cost_per_request_usd"),
                    format!("{target} must be a positive number"),
                );
            }
        }
        if g.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1".into());
        }
        if g.default_max_tokens == 0 || g.default_max_tokens > g.max_tokens_limit {
            return bad(
                "default_max_tokens",
                format!(
                    "{} must be in [1, max_tokens_limit = {}]",
                    g.default_max_tokens, g.max_tokens_limit
                ),
            );
        }
        if g.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests", "must be at least 1".into());
        }
        for (key, d) in [
            ("discovery_interval", g.discovery_interval),
            ("load_interval", g.load_interval),
        ] {
            if d < Duration::from_millis(10) {
                return bad(key, format!("{d:?} is shorter than 10ms"));
            }
        }
        if let Some(r) = &self.registry.redis {
            if !r.url.starts_with("redis://")
                && !r.url.starts_with("rediss://")
                && !r.url.starts_with("unix://")
            {
                return Err((
                    "registry.redis.url".into(),
                    format!("{:?} is not a redis:// URL", r.url),
                ));
            }
            if r.mesh.is_empty() || r.mesh.contains(['{', '}']) {
                return Err((
                    "registry.redis.mesh".into(),
                    format!("{:?} must be non-empty without braces", r.mesh),
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, w) in self.workers.iter().enumerate() {
            w.validate().map_err(|m| match m.split_once(": ") {
                Some((key, why)) => (format!("workers[{i}].{key}"), why.to_string()),
                None => (format!("workers[{i}]"), m),
            })?;
            if let Some(id) = &w.id
                && !ids.insert(id.clone())
            {
                return Err((format!("workers[{i}].id"), format!("{id:?} is used twice")));
            }
        }
        if !self.static_workers.is_empty() && self.registry.redis.is_some() {
            return Err((
                "static_workers".into(),
                "only without `registry.redis`; with Redis, workers announce themselves".into(),
            ));
        }
        for (i, w) in self.static_workers.iter().enumerate() {
            if !w.endpoint.starts_with("http://") && !w.endpoint.starts_with("https://") {
                return Err((
                    format!("static_workers[{i}].endpoint"),
                    format!("{:?} must start with http:// or https://", w.endpoint),
                ));
            }
            if !ids.insert(w.id.clone()) {
                return Err((
                    format!("static_workers[{i}].id"),
                    format!("{:?} is used twice", w.id),
                ));
            }
        }
        Ok(())
    }
}

/// The embedded demo mesh of `routemesh up`: two small models and one large,
/// simulated, with in-memory registry.
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// The demo's real small model: SmolLM2-135M-Instruct on the CPU (backend
/// `local`), where `scripts/fetch-local-model.sh` put it.
pub fn demo_local_model_path() -> std::path::PathBuf {
    match std::env::var_os("ROUTEMESH_LOCAL_MODEL") {
        Some(path) => path.into(),
        None => routemesh_worker::backend::local::default_model_path(std::path::Path::new(
            &std::env::var_os("ROUTEMESH_CACHE").unwrap_or_else(|| ".cache/routemesh".into()),
        )),
    }
}

/// Adds the local model to the demo pool as a small model, if its file is
/// there; returns whether it did. Its price is the CPU's (near zero) and its
/// prior modest: the router sends it what it predicts the simulated models
/// answer little better.
pub fn add_demo_local_worker(
    config: &mut Config,
    model: &std::path::Path,
) -> Result<bool, ConfigError> {
    if !model.is_file() {
        return Ok(false);
    }
    // JSON quoting is valid YAML, whatever the path holds.
    let path = serde_json::Value::from(model.display().to_string());
    let yaml = format!(
        "workers:\n  - id: smollm2-135m-0\n    model: smollm2-135m-instruct\n    tier: small\n    input_usd_per_mtok: 0.01\n    output_usd_per_mtok: 0.01\n    quality_prior: 0.3\n    capacity: 2\n    max_queue: 32\n    backend:\n      local: {{model: {path}, threads: 2}}\n"
    );
    let extra = Config::from_yaml(&yaml, "demo local worker")?;
    config.workers.extend(extra.workers);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml, "test.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn demo_adds_the_local_model_when_present() {
        let mut c = Config::from_yaml(DEMO_CONFIG, "demo").unwrap();
        let dir = std::env::temp_dir().join(format!("rm-demo-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let absent = dir.join("absent.gguf");
        assert!(!add_demo_local_worker(&mut c, &absent).unwrap());
        assert_eq!(c.workers.len(), 3);
        let present = dir.join("model 'q'.gguf");
        std::fs::write(&present, b"GGUF").unwrap();
        assert!(add_demo_local_worker(&mut c, &present).unwrap());
        let local = c.workers[3].backend.local.as_ref().unwrap();
        assert_eq!(local.model, present);
        assert_eq!(c.workers[3].tier, routemesh_mesh::Tier::Small);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn demo_config_is_valid() {
        let c = Config::from_yaml(DEMO_CONFIG, "demo").unwrap();
        assert_eq!(c.workers.len(), 3);
        assert_eq!(c.registry.redis, None);
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("gateway:\n  listn: 1.2.3.4:5\n");
        assert!(
            e.starts_with("test.yaml: gateway.listn: unknown field `listn`"),
            "{e}"
        );
        let e = err("workers:\n  - model: m\n    tier: huge\n    backend: {sim: {}}\n");
        assert!(
            e.contains("workers[0].tier") && e.contains("unknown variant `huge`"),
            "{e}"
        );
        let e = err(
            "workers:\n  - model: m\n    tier: small\n    capacity: 0\n    backend: {sim: {}}\n",
        );
        assert!(e.contains("workers[0].capacity: must be at least 1"), "{e}");
        let e = err("gateway: {cost_weight: -1}\n");
        assert!(e.contains("gateway.cost_weight"), "{e}");
        let e = err("registry: {redis: {url: 'http://x'}}\n");
        assert!(e.contains("registry.redis.url"), "{e}");
        let e = err(
            "workers:\n  - model: m\n    tier: small\n    backend: {sim: {ttft_ms: {median: fast}}}\n",
        );
        assert!(e.contains("workers[0].backend.sim.ttft_ms.median"), "{e}");
        let e = err(
            "workers:\n  - model: m\n    tier: small\n    backend: {local: {model: m.gguf, thread: 2}}\n",
        );
        assert!(
            e.contains("workers[0].backend.local") && e.contains("unknown field `thread`"),
            "{e}"
        );
        let e = err(
            "workers:\n  - model: m\n    tier: small\n    backend: {local: {model: m.gguf}, sim: {}}\n",
        );
        assert!(
            e.contains("exactly one of `openai`, `sim` or `local`"),
            "{e}"
        );
        let e = err("gateway: {tls: {cert: a, key: b, reload_interval: 1ms}}\n");
        assert!(e.contains("gateway.tls.reload_interval: must be"), "{e}");
        let e = err("gateway: {worker_tls: {cert: a, key: b}}\n");
        assert!(e.contains("gateway.worker_tls.ca: needed"), "{e}");
        let e = err("gateway: {auth: {redis: true}}\n");
        assert!(
            e.contains("gateway.auth.redis: needs `registry.redis`"),
            "{e}"
        );
        let e = err("gateway: {circuit_breaker: {half_open_probes: 0}}\n");
        assert!(
            e.contains("gateway.circuit_breaker.half_open_probes"),
            "{e}"
        );
        let e = err(
            "gateway: {auth: {keys: [{tenant: a, sha256: 4c3fe847ba5369a26bb663f9713c893e7e9407c376d5e33038740063b5a09125, expires: soon}]}}\n",
        );
        assert!(e.contains("gateway.auth.keys[0].expires"), "{e}");
    }
}
