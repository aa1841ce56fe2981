//! The chat-completions body as OpenAI defines it, read into typed structs:
//! strings-or-arrays and strings-or-objects read by hand so that unknown
//! keys inside them are still seen, and [`read_body`], which names the
//! path of a value of the wrong type and of every field nobody knows.

use std::collections::HashMap;
use std::fmt;

use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::error::{ApiError, bad_request, openai_error};

/// A string, or an array of them (`stop`).
#[derive(Default)]
pub(super) struct OneOrMany(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A turn's content: a string, or an array of parts. Read by hand rather
/// than as an untagged enum so that unknown keys inside parts are still
/// seen (an untagged enum buffers its input out of reach).
pub(super) enum WireContent {
    Text(String),
    Parts(Vec<WirePart>),
}

impl<'de> Deserialize<'de> for WireContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireContent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<WireContent, E> {
                Ok(WireContent::Text(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<WireContent, E> {
                Ok(WireContent::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireContent, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<WirePart>()? {
                    parts.push(p);
                }
                Ok(WireContent::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub(super) struct WirePart {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) text: Option<String>,
    pub(super) image_url: Option<WireImageUrl>,
    // Present on other part types (audio, files): read so that the error
    // names the part's type, not an unknown key.
    #[serde(default, rename = "input_audio")]
    _input_audio: Option<Value>,
    #[serde(default, rename = "file")]
    _file: Option<Value>,
    #[serde(default, rename = "refusal")]
    _refusal: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WireImageUrl {
    pub(super) url: String,
    #[serde(default)]
    pub(super) detail: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireFunctionCall {
    pub(super) name: String,
    #[serde(default)]
    pub(super) arguments: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireToolCall {
    pub(super) id: String,
    #[serde(rename = "type", default)]
    pub(super) kind: Option<String>,
    pub(super) function: WireFunctionCall,
}

#[derive(Deserialize)]
pub(super) struct WireMessage {
    pub(super) role: String,
    #[serde(default)]
    pub(super) content: Option<WireContent>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    pub(super) tool_call_id: Option<String>,
    // What an SDK echoes back from an earlier answer: accepted when empty.
    #[serde(default)]
    pub(super) refusal: Option<String>,
    #[serde(default)]
    pub(super) annotations: Option<Vec<Value>>,
    #[serde(default)]
    pub(super) audio: Option<Value>,
    #[serde(default)]
    pub(super) function_call: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WireFunction {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) parameters: Option<Value>,
    #[serde(default)]
    pub(super) strict: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct WireTool {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) function: WireFunction,
}

/// `"none" | "auto" | "required"` or `{"type": "function", "function": {"name"}}`.
pub(super) enum WireToolChoice {
    Mode(String),
    Function(String),
}

#[derive(Deserialize)]
pub(super) struct WireNamedFunction {
    pub(super) name: String,
}

impl<'de> Deserialize<'de> for WireToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireToolChoice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""none", "auto", "required" or {"type": "function", "function": {"name": ...}}"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<WireToolChoice, E> {
                Ok(WireToolChoice::Mode(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireToolChoice, A::Error> {
                let mut function = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => {
                            let kind: String = map.next_value()?;
                            if kind != "function" {
                                return Err(de::Error::custom(format!(
                                    "type {kind:?}: only function tools are served"
                                )));
                            }
                        }
                        "function" => function = Some(map.next_value::<WireNamedFunction>()?.name),
                        other => {
                            return Err(de::Error::unknown_field(other, &["type", "function"]));
                        }
                    }
                }
                function
                    .map(WireToolChoice::Function)
                    .ok_or_else(|| de::Error::missing_field("function"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
pub(super) struct WireJsonSchema {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) schema: Option<Value>,
    #[serde(default)]
    pub(super) strict: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct WireResponseFormat {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) json_schema: Option<WireJsonSchema>,
}

#[derive(Deserialize)]
pub(super) struct WireStreamOptions {
    #[serde(default)]
    pub(super) include_usage: Option<bool>,
}

/// routemesh's extension: `"routing": {"max_cost_usd", "latency_slo_ms",
/// "quality_floor", "allowed_models", "allowed_tiers": ["small"|"large"]}`.
/// Always strict: a typo in routemesh's own keys is never dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireRouting {
    #[serde(default)]
    pub(super) allowed_models: Vec<String>,
    #[serde(default)]
    pub(super) allowed_tiers: Vec<String>,
    #[serde(default)]
    pub(super) max_cost_usd: Option<f64>,
    #[serde(default)]
    pub(super) latency_slo_ms: Option<u32>,
    #[serde(default)]
    pub(super) quality_floor: Option<f64>,
}

#[derive(Deserialize)]
pub(super) struct ChatBody {
    pub(super) model: String,
    pub(super) messages: Vec<WireMessage>,
    #[serde(default)]
    pub(super) max_tokens: Option<u32>,
    #[serde(default)]
    pub(super) max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub(super) temperature: Option<f32>,
    #[serde(default)]
    pub(super) top_p: Option<f32>,
    #[serde(default)]
    pub(super) n: Option<u32>,
    #[serde(default)]
    pub(super) stop: Option<OneOrMany>,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    #[serde(default)]
    pub(super) stream_options: Option<WireStreamOptions>,
    #[serde(default)]
    pub(super) tools: Option<Vec<WireTool>>,
    #[serde(default)]
    pub(super) tool_choice: Option<WireToolChoice>,
    #[serde(default)]
    pub(super) parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub(super) response_format: Option<WireResponseFormat>,
    #[serde(default)]
    pub(super) logprobs: Option<bool>,
    #[serde(default)]
    pub(super) top_logprobs: Option<u32>,
    #[serde(default)]
    pub(super) frequency_penalty: Option<f32>,
    #[serde(default)]
    pub(super) presence_penalty: Option<f32>,
    #[serde(default)]
    pub(super) user: Option<String>,
    #[serde(default)]
    pub(super) metadata: Option<HashMap<String, String>>,
    /// routemesh's extension (the `x-session-id` header sets it too).
    #[serde(default)]
    pub(super) session_id: Option<String>,
    #[serde(default)]
    pub(super) routing: Option<WireRouting>,
    // Known to OpenAI, not served by routemesh: refused when set.
    #[serde(default)]
    pub(super) logit_bias: Option<Value>,
    #[serde(default)]
    pub(super) functions: Option<Value>,
    #[serde(default)]
    pub(super) function_call: Option<Value>,
    #[serde(default)]
    pub(super) audio: Option<Value>,
    #[serde(default)]
    pub(super) modalities: Option<Vec<String>>,
    #[serde(default)]
    pub(super) prediction: Option<Value>,
    #[serde(default)]
    pub(super) web_search_options: Option<Value>,
    #[serde(default)]
    pub(super) store: Option<bool>,
    // Accepted and dropped: they ask nothing of the answer routemesh
    // could honour or break.
    #[serde(default, rename = "service_tier")]
    _service_tier: Option<Value>,
    #[serde(default, rename = "reasoning_effort")]
    _reasoning_effort: Option<Value>,
}

/// `messages[0].content[1]` from serde_ignored's path.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// The body read into `T`: type errors name the field's path; fields `T`
/// does not know are refused (the first one named) unless `lenient`.
pub(super) fn read_body<T: de::DeserializeOwned>(
    body: &[u8],
    lenient: bool,
) -> Result<T, ApiError> {
    let mut unknown: Option<String> = None;
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut on_unknown = |path: serde_ignored::Path<'_>| {
        unknown.get_or_insert_with(|| ignored_path(&path));
    };
    let read = serde_ignored::Deserializer::new(&mut json, &mut on_unknown);
    let value: Result<T, _> = serde_path_to_error::deserialize(read);
    let value: T = value.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                format!("request body is not valid JSON: {inner}"),
            )
            .with_code("invalid_json");
        }
        let message = inner.to_string();
        // serde's "at line 1 column 9" says nothing a path does not.
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        let param = if path == "." {
            None
        } else {
            Some(path.as_str())
        };
        let code = if message.starts_with("missing field") {
            "missing_required_parameter"
        } else if message.starts_with("unknown field") {
            "unknown_parameter"
        } else {
            "invalid_type"
        };
        match param {
            Some(param) => bad_request(param, message).with_code(code),
            None => openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                format!("request body: {message}"),
            )
            .with_code(code),
        }
    })?;
    json.end().map_err(|e| {
        openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!("request body is not valid JSON: {e}"),
        )
        .with_code("invalid_json")
    })?;
    if let Some(field) = unknown.filter(|_| !lenient) {
        return Err(bad_request(
            &field,
            "unknown parameter (gateway.openai.ignore_unknown_fields: true drops unknown fields instead)",
        )
        .with_code("unknown_parameter"));
    }
    Ok(value)
}
