//! Logs and traces for the `routemesh` process: human-readable logs on
//! stderr, and (when configured) OpenTelemetry spans over OTLP/gRPC, with W3C
//! trace context taken from callers and passed on to workers.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
        .with_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,hyper=warn,tower=warn,tonic=warn".into()),
        );
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
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
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
