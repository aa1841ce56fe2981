//! Worker agent configuration, as written in the `workers:` list of a
//! routemesh configuration file or given to `routemesh worker`.

use std::net::SocketAddr;
use std::time::Duration;

use routemesh_mesh::tls::TlsFiles;
use routemesh_mesh::{DeclaredCapabilities, Tier};
use serde::{Deserialize, Serialize};

use crate::backend::{LocalConfig, OpenAiConfig, SimConfig};

/// The decode speed a sim engine configured as instant declares: fast
/// enough that decoding adds nothing measurable to an expected latency.
pub const INSTANT_TOKENS_PER_SECOND: f64 = 1e9;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Unique id in the mesh; defaults to `<model>-<random suffix>`.
    #[serde(default)]
    pub id: Option<String>,
    /// The model this worker serves, as clients name it.
    pub model: String,
    pub tier: Tier,
    /// Price of prompt tokens, USD per million.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub input_usd_per_mtok: f64,
    /// Price of completion tokens, USD per million.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub output_usd_per_mtok: f64,
    /// A fixed quality for a model the router does not know, in [0, 1].
    /// Unset (recommended): the router's predictions for the known models
    /// nearest to it, per prompt, minus `router.unknown_model_margin`.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quality_prior: Option<f64>,
    /// The artifact model the learned router knows this one as, when its
    /// name differs in more than spelling (a fine-tune, a renamed
    /// deployment). Unset: the name, matched leniently (Hugging Face ids,
    /// vLLM served names and Ollama tags of a known model match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_model: Option<String>,
    /// Parameters in billions, for a model the router does not know: its
    /// prior is taken from the known models nearest in size. Unset: read
    /// from the name (`8b`, `135m`), else the tier decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_b: Option<f64>,
    /// Median time to first token (milliseconds) gateways assume until
    /// they have observed this worker; unset, a `sim` backend's configured
    /// `ttft_ms`, else the tier's observed median or default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ttft_ms: Option<f64>,
    /// Decode speed (tokens per second) assumed the same way; unset, a
    /// `sim` backend's configured `tokens_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_tokens_per_second: Option<f64>,
    /// What the engine can serve, where it differs from the backend's
    /// default (see `Capabilities`): `tools`, `json_output`,
    /// `structured_output`, `vision`, `logprobs`, `context_tokens`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub capabilities: DeclaredCapabilities,
    /// Address to listen on; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// URL the gateway dials; defaults to `http://<bound address>`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Requests generated concurrently.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1))]
    pub capacity: u32,
    /// Requests that may wait for a slot before new ones are refused.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// The registry entry expires unless refreshed within this time.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub registration_ttl: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub drain_grace: Duration,
    /// The agent's port's connection limits (cap, header and idle
    /// timeouts, HTTP/2 keepalive).
    #[serde(default)]
    pub connections: routemesh_mesh::conn::ConnectionLimits,
    pub backend: BackendConfig,
    /// Serve the Worker API over TLS; with `ca`, only clients (gateways)
    /// holding a certificate from that CA may call (mutual TLS).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// The engine behind the worker: exactly one of the sections.
///
/// A struct of optional sections rather than a tagged enum, so that a bad key
/// deep inside is reported with its whole path.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// An OpenAI-compatible HTTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<OpenAiConfig>,
    /// A simulated engine (labelled simulated wherever it shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimConfig>,
    /// A GGUF model run in-process on the CPU; the worker's `capacity` is
    /// its number of slots (requests generated at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalConfig>,
}

/// The one backend a [`BackendConfig`] selects.
#[derive(Debug, Clone, Copy)]
pub enum BackendChoice<'a> {
    Openai(&'a OpenAiConfig),
    Sim(&'a SimConfig),
    Local(&'a LocalConfig),
}

impl BackendConfig {
    pub fn sim(config: SimConfig) -> Self {
        Self {
            sim: Some(config),
            ..Self::default()
        }
    }

    pub fn choice(&self) -> Result<BackendChoice<'_>, String> {
        match (&self.openai, &self.sim, &self.local) {
            (Some(c), None, None) => Ok(BackendChoice::Openai(c)),
            (None, Some(c), None) => Ok(BackendChoice::Sim(c)),
            (None, None, Some(c)) => Ok(BackendChoice::Local(c)),
            _ => Err("backend: give exactly one of `openai`, `sim` or `local`".into()),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_capacity() -> u32 {
    4
}
fn default_max_queue() -> u32 {
    16
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_grace() -> Duration {
    Duration::from_secs(20)
}

impl WorkerConfig {
    /// Checks what serde cannot: every error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("model: must not be empty".into());
        }
        if self.capacity == 0 {
            return Err("capacity: must be at least 1".into());
        }
        if let Err((key, why)) = self.connections.check() {
            return Err(format!("connections.{key}: {why}"));
        }
        for (key, price) in [
            ("input_usd_per_mtok", self.input_usd_per_mtok),
            ("output_usd_per_mtok", self.output_usd_per_mtok),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(format!(
                    "{key}: {price} is not a price (a finite number >= 0)"
                ));
            }
        }
        if let Some(q) = self.quality_prior
            && !(0.0..=1.0).contains(&q)
        {
            return Err(format!("quality_prior: {q} is not in [0, 1]"));
        }
        routemesh_mesh::check_declared_speed(
            self.expected_ttft_ms,
            self.expected_tokens_per_second,
        )
        .map_err(|(key, why)| format!("{key}: {why}"))?;
        self.capabilities
            .check()
            .map_err(|(key, why)| format!("{key}: {why}"))?;
        routemesh_mesh::check_model_identity(self.router_model.as_deref(), self.params_b)
            .map_err(|(key, why)| format!("{key}: {why}"))?;
        self.backend.choice()?;
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| format!("tls.{e}"))?;
        }
        if self.registration_ttl < Duration::from_millis(100) {
            return Err("registration_ttl: must be at least 100ms".into());
        }
        if let Some(id) = &self.id
            && (id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)))
        {
            return Err(format!(
                "id: {id:?} must be non-empty ASCII letters, digits, '-', '_', '.' or ':'"
            ));
        }
        Ok(())
    }

    /// The speed the worker declares to gateways: its `expected_*` keys,
    /// each falling back to a sim engine's configured medians (a sim's speed
    /// is known before it serves anything). A sim decode speed of 0 means
    /// instant decoding; it is declared as [`INSTANT_TOKENS_PER_SECOND`]
    /// because a record's 0 (and JSON's lack of infinity) would read as
    /// "nothing declared".
    pub fn declared_speed(&self) -> (Option<f64>, Option<f64>) {
        let sim = self.backend.sim.as_ref();
        let sim_ttft = sim.map(|s| s.ttft_ms.median.max(0.0));
        let sim_tps = sim.map(|s| match s.tokens_per_second.median {
            tps if tps > 0.0 => tps,
            _ => INSTANT_TOKENS_PER_SECOND,
        });
        (
            self.expected_ttft_ms.or(sim_ttft),
            self.expected_tokens_per_second.or(sim_tps),
        )
    }

    pub fn worker_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let suffix: u32 = rand::random();
            format!(
                "{}-{suffix:08x}",
                self.model
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
            )
        })
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
