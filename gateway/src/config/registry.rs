//! The `registry:` and `static_workers:` sections: where workers announce
//! themselves, and the workers a gateway dials without a registry.

use routemesh_mesh::{DeclaredCapabilities, RedisEndpoint, RedisTls, Tier};
use serde::{Deserialize, Serialize};

/// Where workers announce themselves: in the gateway's process (the default,
/// when `redis` is absent) or in Redis.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisRegistryConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisRegistryConfig {
    /// e.g. `redis://127.0.0.1:6379/0`; with `cluster`, one seed node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// With `cluster`: several seed nodes (instead of `url`), e.g.
    /// `[redis://10.0.0.1:6379, redis://10.0.0.2:6379]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Redis Cluster (cluster mode enabled): commands go to the node that
    /// owns their keys' slot; the seeds give the cluster's map.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// Name of this mesh: gateways and workers with the same mesh see each other.
    #[serde(default = "default_mesh")]
    pub mesh: String,
    /// With a `rediss://` url: the CA that signed the server's certificate
    /// (instead of the system's roots) and a client certificate, read again
    /// every `reload_interval` (a change opens a new connection with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
}

impl RedisRegistryConfig {
    /// Where Redis is, with its TLS material.
    pub fn endpoint(&self) -> RedisEndpoint {
        RedisEndpoint {
            url: self.url.clone(),
            urls: self.urls.clone(),
            cluster: self.cluster,
            tls: self.tls.clone(),
        }
    }
}

fn default_mesh() -> String {
    "default".into()
}

/// A worker known from configuration rather than a registry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
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
    #[serde(default = "default_static_capacity")]
    pub capacity: u32,
    #[serde(default = "default_static_capacity")]
    pub max_queue: u32,
    /// Median time to first token to assume until the worker is observed
    /// (milliseconds); unset, the tier's observed median or default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ttft_ms: Option<f64>,
    /// Decode speed to assume until observed, tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_tokens_per_second: Option<f64>,
    /// What its engine cannot serve (`tools: false`, ...) and its context
    /// length; unset keys assume the engine serves it (its own refusal is
    /// the check).
    #[serde(default, skip_serializing_if = "is_default")]
    pub capabilities: DeclaredCapabilities,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_static_capacity() -> u32 {
    4
}
