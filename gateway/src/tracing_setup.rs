//! Logs and traces for the `routemesh` process: human-readable logs on
//! stderr, and (when configured) OpenTelemetry spans over OTLP/gRPC, with W3C
//! trace context taken from callers and passed on to workers. The spans'
//! resource says which build and which instance sent them: `service.version`,
//! `service.instance.id`, and in Kubernetes the pod, namespace, node and
//! container, from environment variables the Helm chart sets from the
//! downward API ([`K8S_ENV`]).

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, in [0, 1]; a caller's sampling decision
    /// (its `traceparent`) is followed.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// `service.name` of the spans; default `routemesh-<subcommand>`.
    #[serde(default)]
    pub service_name: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("tracing.otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("tracing.sample_ratio: {0} is not in [0, 1]")]
    Ratio(f64),
    #[error("logging: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Only routemesh's own spans are exported: HTTP/2 and gRPC plumbing would
/// drown them.
const EXPORTED: &str =
    "routemesh_gateway=info,routemesh_worker=info,routemesh_mesh=info,routemesh_telemetry=info,off";

/// Installs logging, and tracing when `config` names a collector. The
/// returned provider must be shut down at exit so the last spans are sent.
pub fn init(
    config: &TracingConfig,
    default_service: &str,
) -> Result<Option<SdkTracerProvider>, TracingError> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            "info,h2=warn,hyper=warn,tower=warn,tonic=warn,redis::cluster_handling=error".into()
        }));
    let Some(endpoint) = &config.otlp_endpoint else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(None);
    };
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(TracingError::Ratio(config.sample_ratio));
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()?;
    let service = config
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            // OTEL_RESOURCE_ATTRIBUTES is read too; what is set here wins.
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .with_attributes(resource_attributes(|var| std::env::var(var).ok()))
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("routemesh"))
        .with_filter(EnvFilter::new(EXPORTED));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()?;
    Ok(Some(provider))
}

/// Resource attributes and the environment variables they are read from;
/// the chart fills these from the pod's downward API.
pub const K8S_ENV: [(&str, &str); 6] = [
    ("k8s.pod.name", "K8S_POD_NAME"),
    ("k8s.pod.uid", "K8S_POD_UID"),
    ("k8s.namespace.name", "K8S_NAMESPACE_NAME"),
    ("k8s.node.name", "K8S_NODE_NAME"),
    ("k8s.container.name", "K8S_CONTAINER_NAME"),
    ("k8s.deployment.name", "K8S_DEPLOYMENT_NAME"),
];

/// What identifies this process's spans beside `service.name`, with `env`
/// looking up an environment variable. `service.instance.id` is the pod's
/// UID in Kubernetes (one routemesh container per pod), else a random id
/// for this process's life.
fn resource_attributes(env: impl Fn(&str) -> Option<String>) -> Vec<KeyValue> {
    let set = |var: &str| env(var).filter(|v| !v.is_empty());
    let instance = set("K8S_POD_UID").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut attributes = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance),
    ];
    attributes.extend(
        K8S_ENV
            .iter()
            .filter_map(|(key, var)| set(var).map(|value| KeyValue::new(*key, value))),
    );
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(attributes: &[KeyValue], key: &str) -> Option<String> {
        attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn a_pod_is_named_by_the_downward_api() {
        let env = |var: &str| match var {
            "K8S_POD_NAME" => Some("gateway-7d9f-abcde".to_string()),
            "K8S_POD_UID" => Some("0f6c-uid".to_string()),
            "K8S_NAMESPACE_NAME" => Some("llm".to_string()),
            "K8S_NODE_NAME" => Some(String::new()),
            _ => None,
        };
        let attributes = resource_attributes(env);
        assert_eq!(
            value(&attributes, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            value(&attributes, "service.instance.id").as_deref(),
            Some("0f6c-uid")
        );
        assert_eq!(
            value(&attributes, "k8s.pod.name").as_deref(),
            Some("gateway-7d9f-abcde")
        );
        assert_eq!(
            value(&attributes, "k8s.namespace.name").as_deref(),
            Some("llm")
        );
        // Unset or empty variables add nothing.
        assert_eq!(value(&attributes, "k8s.node.name"), None);
        assert_eq!(value(&attributes, "k8s.container.name"), None);
    }

    #[test]
    fn outside_kubernetes_each_process_is_its_own_instance() {
        let first = resource_attributes(|_| None);
        let second = resource_attributes(|_| None);
        assert_ne!(
            value(&first, "service.instance.id"),
            value(&second, "service.instance.id")
        );
        assert!(first.iter().all(|kv| !kv.key.as_str().starts_with("k8s.")));
    }
}
