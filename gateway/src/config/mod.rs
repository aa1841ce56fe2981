//! The routemesh configuration file: one YAML format for `up`, `gateway` and
//! `worker`. Parsed strictly (unknown keys are errors), then validated; every
//! error names the key at fault and why.

mod cascade;
mod gateway;
mod registry;
pub mod schema;

use std::path::Path;
use std::time::Duration;

use routemesh_worker::WorkerConfig;
use serde::{Deserialize, Serialize};

pub use self::cascade::{
    CascadeConfig, ConfidenceConfig, SelfCheckConfig, StrategyKind, Unverifiable, VerifierKind,
};
pub use self::gateway::{AdminAuth, GatewayConfig, TelemetryConfig};
pub use self::registry::{RedisRegistryConfig, RegistryConfig, StaticWorker};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
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
        if g.feedback_per_minute == 0 {
            return bad(
                "feedback_per_minute",
                "must be at least 1 (Feedback would always be refused)".into(),
            );
        }
        crate::tenancy::auth::ApiKeys::from_config(&g.auth)?;
        g.circuit_breaker.validate()?;
        g.cascade.validate()?;
        for (key, tls) in [("tls", &g.tls), ("worker_tls", &g.worker_tls)] {
            // Its errors read "<field>: <why>".
            if let Some(Err(e)) = tls.as_ref().map(|t| t.validate()) {
                let e = e.to_string();
                let (field, why) = e.split_once(": ").unwrap_or(("", &e));
                return bad(&format!("{key}.{field}"), why.to_string());
            }
        }
        if let Some(a) = &g.admin_auth
            && !(a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(
                "admin_auth.sha256",
                "must be 64 hex digits: the SHA-256 of the token (printf %s \"$TOKEN\" | sha256sum)"
                    .into(),
            );
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
        if let Err((key, why)) = g.feedback_memory.check() {
            return bad(&format!("feedback_memory.{key}"), why);
        }
        let margin = g.router.unknown_model_margin;
        if !(margin.is_finite() && (0.0..=1.0).contains(&margin)) {
            return bad(
                "router.unknown_model_margin",
                format!("{margin} is not in [0, 1]"),
            );
        }
        if let Err((key, why)) = g.router.batch.check() {
            return bad(&format!("router.batch.{key}"), why);
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
        if g.max_request_bytes_in_flight < g.max_request_bytes {
            return bad(
                "max_request_bytes_in_flight",
                format!(
                    "{} is less than max_request_bytes ({}): the largest request could never be read",
                    g.max_request_bytes_in_flight, g.max_request_bytes
                ),
            );
        }
        for (section, limits) in [
            ("connections", &g.connections),
            ("admin_connections", &g.admin_connections),
        ] {
            if let Err((key, why)) = limits.check() {
                return bad(&format!("{section}.{key}"), why);
            }
        }
        for (key, d) in [
            ("discovery_interval", g.discovery_interval),
            ("load_interval", g.load_interval),
            ("shared_request_ttl", g.shared_request_ttl),
            ("stream_stall_timeout", g.stream_stall_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return bad(key, format!("{d:?} is shorter than 10ms"));
            }
        }
        if let Some(r) = &self.registry.redis {
            r.endpoint()
                .check()
                .map_err(|(key, why)| (format!("registry.redis.{key}"), why))?;
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
            routemesh_mesh::check_declared_speed(w.expected_ttft_ms, w.expected_tokens_per_second)
                .map_err(|(key, why)| (format!("static_workers[{i}].{key}"), why))?;
            routemesh_mesh::check_model_identity(w.router_model.as_deref(), w.params_b)
                .map_err(|(key, why)| (format!("static_workers[{i}].{key}"), why))?;
            w.capabilities
                .check()
                .map_err(|(key, why)| (format!("static_workers[{i}].{key}"), why))?;
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
/// there; returns whether it did. Its price is the CPU's (near zero); the
/// router does not know it, so per prompt it stands on the smallest known
/// models' predictions, less the margin and a penalty for being ~50x smaller:
/// it gets what the router predicts those would answer well anyway.
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
        "workers:\n  - id: smollm2-135m-0\n    model: smollm2-135m-instruct\n    tier: small\n    input_usd_per_mtok: 0.01\n    output_usd_per_mtok: 0.01\n    capacity: 2\n    max_queue: 32\n    backend:\n      local: {{model: {path}, threads: 2}}\n"
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
        let e = err("gateway: {admin_auth: {sha256: nope}}\n");
        assert!(
            e.contains("gateway.admin_auth.sha256: must be 64 hex"),
            "{e}"
        );
        let e = err("gateway: {router: {batch: {wait: 5ms, max_queue_wait: 1ms}}}\n");
        assert!(
            e.contains("gateway.router.batch.max_queue_wait: 1ms is shorter than wait"),
            "{e}"
        );
        let e = err("gateway: {router: {batch: {max_size: 0}}}\n");
        assert!(e.contains("gateway.router.batch.max_size"), "{e}");
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
