//! Worker agent configuration, as written in the `workers:` list of a
//! routemesh configuration file or given to `routemesh worker`.

use std::net::SocketAddr;
use std::time::Duration;

use routemesh_mesh::Tier;
use routemesh_mesh::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::backend::{LocalConfig, OpenAiConfig, SimConfig};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
    pub input_usd_per_mtok: f64,
    /// Price of completion tokens, USD per million.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// Quality assumed before the router knows the model, in [0, 1].
    #[serde(default)]
    pub quality_prior: Option<f64>,
    /// Address to listen on; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// URL the gateway dials; defaults to `http://<bound address>`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Requests generated concurrently.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Requests that may wait for a slot before new ones are refused.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// The registry entry expires unless refreshed within this time.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub registration_ttl: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub drain_grace: Duration,
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
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
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
