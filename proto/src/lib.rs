//! The `routemesh.v1` wire API, generated from `proto/routemesh/v1/*.proto`.

#![allow(clippy::all, missing_docs)]

/// Generated types, clients and servers of package `routemesh.v1`.
pub mod v1 {
    tonic::include_proto!("routemesh.v1");
}

/// The encoded file descriptor set of every routemesh proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/routemesh_descriptor.bin"));

pub use v1::*;

/// gRPC reflection over every routemesh service plus `grpc.health.v1`, v1.
///
/// Both versions are served because grpcurl 1.8 and Python's
/// grpcio-reflection only speak v1alpha.
pub fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1()
}

/// gRPC reflection, v1alpha (see [`reflection_v1`]).
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1alpha()
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

impl v1::ChatMessage {
    /// A turn that is only text, as most turns are.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }

    /// The turn's text: `content`, then its text parts, joined.
    pub fn text_content(&self) -> std::borrow::Cow<'_, str> {
        if self.parts.is_empty() {
            return std::borrow::Cow::Borrowed(&self.content);
        }
        let mut text = self.content.clone();
        for part in &self.parts {
            if let Some(v1::content_part::Part::Text(t)) = &part.part {
                text.push_str(t);
            }
        }
        std::borrow::Cow::Owned(text)
    }
}

impl v1::ToolCallDelta {
    /// Adds this streamed piece of a tool call to the calls read so far: the
    /// first piece of call `index` opens it, later ones add to its arguments.
    pub fn add_to(self, calls: &mut Vec<v1::ToolCall>) {
        let index = self.index as usize;
        // Indices arrive in order; a gap (an engine that skips one) is
        // closed with empty calls rather than misattributing the piece.
        while calls.len() <= index {
            calls.push(v1::ToolCall::default());
        }
        let call = &mut calls[index];
        if !self.id.is_empty() {
            call.id = self.id;
        }
        call.name.push_str(&self.name);
        call.arguments.push_str(&self.arguments);
    }
}
