//! W3C trace context across gRPC hops: read a caller's `traceparent` from
//! request metadata, write ours into outgoing requests, so a client's trace
//! continues through the gateway into the worker.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Read<'a>(&'a MetadataMap);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct Write<'a>(&'a mut MetadataMap);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The trace context a caller sent (empty when it sent none).
fn extract(metadata: &MetadataMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Read(metadata)))
}

/// Makes `span` a child of the caller's trace, when the caller sent one.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    let _ = span.set_parent(extract(metadata));
}

/// Writes `span`'s context into outgoing metadata.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Write(metadata)));
}
