//! A chat-completions request body read into typed structs and translated
//! into the native request, with a 400 naming the field at fault (in
//! OpenAI's spelling) for anything routemesh cannot carry. Fields nobody
//! knows are refused too, unless `gateway.openai.ignore_unknown_fields`.

use routemesh_mesh::Tier;
use routemesh_proto::v1::{
    ChatMessage, ContentPart, GenerateRequest, GenerationParams, ImageUrl, ResponseFormat,
    RoutingHints, Tool, ToolCall, ToolChoice, content_part, tool_choice,
};
use serde_json::Value;

use super::chat_wire::{
    ChatBody, WireContent, WireMessage, WireRouting, WireToolChoice, read_body,
};
use super::error::{ApiError, bad_request};

pub(crate) use routemesh_mesh::ROUTER_MODEL;

pub(super) struct ChatRequest {
    pub(super) grpc: GenerateRequest,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// The client asked for per-token log-probabilities.
    pub(super) logprobs: bool,
}

fn unsupported(param: &str, why: &str) -> ApiError {
    bad_request(param, why).with_code("unsupported_parameter")
}

fn convert_message(i: usize, m: WireMessage) -> Result<ChatMessage, ApiError> {
    // OpenAI's newer name for the system role.
    let role = if m.role == "developer" {
        "system".to_string()
    } else {
        m.role
    };
    if m.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(unsupported(
            &format!("messages[{i}].audio"),
            "audio turns are not supported",
        ));
    }
    if m.function_call.as_ref().is_some_and(|f| !f.is_null()) {
        return Err(unsupported(
            &format!("messages[{i}].function_call"),
            "the deprecated function_call is not supported; use tool_calls",
        ));
    }
    let _ = (m.refusal, m.annotations);
    let mut out = ChatMessage {
        role,
        name: m.name.unwrap_or_default(),
        tool_call_id: m.tool_call_id.unwrap_or_default(),
        ..Default::default()
    };
    match m.content {
        None => {}
        Some(WireContent::Text(text)) => out.content = text,
        Some(WireContent::Parts(parts)) => {
            for (j, part) in parts.into_iter().enumerate() {
                let field = format!("messages[{i}].content[{j}]");
                let part = match part.kind.as_str() {
                    "text" => content_part::Part::Text(
                        part.text
                            .ok_or_else(|| bad_request(&format!("{field}.text"), "required"))?,
                    ),
                    "image_url" => {
                        let image = part.image_url.ok_or_else(|| {
                            bad_request(&format!("{field}.image_url"), "required")
                        })?;
                        content_part::Part::ImageUrl(ImageUrl {
                            url: image.url,
                            detail: image.detail.unwrap_or_default(),
                        })
                    }
                    other => {
                        return Err(unsupported(
                            &format!("{field}.type"),
                            &format!("{other:?} parts are not supported (text and image_url are)"),
                        ));
                    }
                };
                out.parts.push(ContentPart { part: Some(part) });
            }
            // Text alone travels as text: every engine reads that.
            if out
                .parts
                .iter()
                .all(|p| matches!(p.part, Some(content_part::Part::Text(_))))
            {
                out.content = out.text_content().into_owned();
                out.parts.clear();
            }
        }
    }
    for (j, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
        if call.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(unsupported(
                &format!("messages[{i}].tool_calls[{j}].type"),
                "only function tool calls are served",
            ));
        }
        out.tool_calls.push(ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments.unwrap_or_default(),
        });
    }
    Ok(out)
}

fn json_text(value: Option<Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    }
}

/// Parses a chat-completions body; `lenient` drops unknown fields.
pub(super) fn parse_chat(body: &[u8], lenient: bool) -> Result<ChatRequest, ApiError> {
    let body: ChatBody = read_body(body, lenient)?;
    for (param, set) in [
        (
            "logit_bias",
            body.logit_bias.as_ref().is_some_and(|v| !v.is_null()),
        ),
        (
            "functions",
            body.functions.as_ref().is_some_and(|v| !v.is_null()),
        ),
        (
            "function_call",
            body.function_call.as_ref().is_some_and(|v| !v.is_null()),
        ),
        ("audio", body.audio.as_ref().is_some_and(|v| !v.is_null())),
        (
            "prediction",
            body.prediction.as_ref().is_some_and(|v| !v.is_null()),
        ),
        (
            "web_search_options",
            body.web_search_options
                .as_ref()
                .is_some_and(|v| !v.is_null()),
        ),
    ] {
        if set {
            let why = match param {
                "functions" | "function_call" => {
                    "deprecated by OpenAI and not served; use tools and tool_choice"
                }
                _ => "not supported by routemesh",
            };
            return Err(unsupported(param, why));
        }
    }
    if body
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m != "text"))
    {
        return Err(unsupported("modalities", "only text output is served"));
    }
    if body.store == Some(true) {
        return Err(unsupported("store", "routemesh does not store completions"));
    }
    if let Some(n) = body.n
        && n != 1
    {
        // Several choices would be several calls billed as one; not served
        // rather than served dishonestly.
        return Err(unsupported("n", "only n = 1 is supported"));
    }
    if body.model.is_empty() {
        return Err(bad_request("model", "must not be empty"));
    }
    let messages = body
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| convert_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tools = Vec::new();
    for (i, tool) in body.tools.unwrap_or_default().into_iter().enumerate() {
        if tool.kind != "function" {
            return Err(unsupported(
                &format!("tools[{i}].type"),
                &format!("{:?} tools are not served (function tools are)", tool.kind),
            ));
        }
        tools.push(Tool {
            name: tool.function.name,
            description: tool.function.description.unwrap_or_default(),
            parameters_json: json_text(tool.function.parameters),
            strict: tool.function.strict,
        });
    }
    let response_format = match body.response_format {
        None => None,
        Some(f) => {
            let schema = f.json_schema;
            if f.kind == "json_schema" && schema.is_none() {
                return Err(bad_request("response_format.json_schema", "required"));
            }
            Some(match schema {
                Some(s) => ResponseFormat {
                    r#type: f.kind,
                    schema_name: s.name,
                    schema_description: s.description.unwrap_or_default(),
                    schema_json: json_text(s.schema),
                    strict: s.strict,
                },
                None => ResponseFormat {
                    r#type: f.kind,
                    ..Default::default()
                },
            })
        }
    };
    let params = GenerationParams {
        max_tokens: body.max_completion_tokens.or(body.max_tokens),
        temperature: body.temperature,
        top_p: body.top_p,
        stop: body.stop.unwrap_or_default().0,
        seed: body.seed,
        tools,
        tool_choice: body.tool_choice.map(|c| ToolChoice {
            choice: Some(match c {
                WireToolChoice::Mode(m) => tool_choice::Choice::Mode(m),
                WireToolChoice::Function(f) => tool_choice::Choice::Function(f),
            }),
        }),
        parallel_tool_calls: body.parallel_tool_calls,
        response_format,
        logprobs: body.logprobs.unwrap_or(false),
        top_logprobs: body.top_logprobs,
        frequency_penalty: body.frequency_penalty,
        presence_penalty: body.presence_penalty,
    };
    let hints = body.routing.map(hints_of).transpose()?;
    let logprobs = params.logprobs;
    let grpc = GenerateRequest {
        request_id: String::new(),
        model: if body.model == ROUTER_MODEL {
            String::new()
        } else {
            body.model
        },
        messages,
        params: Some(params),
        hints,
        tenant: String::new(),
        user: body.user.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        session_id: body.session_id.unwrap_or_default(),
    };
    Ok(ChatRequest {
        grpc,
        stream: body.stream.unwrap_or(false),
        include_usage: body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
    })
}

/// routemesh's `routing` extension from a JSON value (the Responses API
/// reads its body as a value first): as strict as the chat body's.
pub(super) fn parse_hints(r: &Value) -> Result<RoutingHints, ApiError> {
    let routing: WireRouting = serde_path_to_error::deserialize(r).map_err(|e| {
        let path = format!("routing.{}", e.path());
        let inner = e.into_inner().to_string();
        let code = if inner.starts_with("unknown field") {
            "unknown_parameter"
        } else {
            "invalid_type"
        };
        bad_request(path.trim_end_matches(".."), inner).with_code(code)
    })?;
    hints_of(routing)
}

fn hints_of(r: WireRouting) -> Result<RoutingHints, ApiError> {
    let tiers = r
        .allowed_tiers
        .iter()
        .enumerate()
        .map(|(i, t)| match t.parse::<Tier>() {
            Ok(tier) => Ok(tier.to_wire()),
            Err(e) => Err(bad_request(
                &format!("routing.allowed_tiers[{i}]"),
                e.to_string(),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(RoutingHints {
        allowed_models: r.allowed_models,
        allowed_tiers: tiers,
        max_cost_usd: r.max_cost_usd,
        latency_slo_ms: r.latency_slo_ms,
        quality_floor: r.quality_floor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes(), false)
    }

    fn param_of(body: &str) -> (Option<String>, Option<&'static str>) {
        let e = parse(body).err().expect("refused");
        (e.param().map(str::to_owned), e.code())
    }

    #[test]
    fn a_tool_round_trip_is_carried_whole() {
        let chat = parse(
            r#"{"model": "router", "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"}],
              "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}, "strict": true}}],
              "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
              "parallel_tool_calls": false,
              "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
              "logprobs": true, "top_logprobs": 2, "user": "u-1", "metadata": {"app": "x"}}"#,
        )
        .unwrap();
        let m = &chat.grpc.messages;
        assert_eq!(m[1].tool_calls[0].name, "get_weather");
        assert_eq!(m[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(m[2].tool_call_id, "call_1");
        let p = chat.grpc.params.unwrap();
        assert_eq!(p.tools[0].parameters_json, r#"{"type":"object"}"#);
        assert_eq!(p.tools[0].strict, Some(true));
        assert_eq!(
            p.tool_choice.and_then(|c| c.choice),
            Some(tool_choice::Choice::Function("get_weather".into()))
        );
        assert_eq!(p.response_format.unwrap().schema_name, "w");
        assert!(p.logprobs && chat.logprobs);
        assert_eq!(chat.grpc.user, "u-1");
    }

    #[test]
    fn text_parts_become_text_and_images_stay_parts() {
        let chat = parse(
            r#"{"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(chat.grpc.messages[0].content, "ab");
        assert!(chat.grpc.messages[0].parts.is_empty());
        let chat = parse(
            r#"{"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(chat.grpc.messages[0].parts.len(), 2);
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        let base = r#""model": "m", "messages": [{"role": "user", "content": "hi"}]"#;
        assert_eq!(
            param_of(&format!(r#"{{{base}, "temprature": 1}}"#)),
            (Some("temprature".into()), Some("unknown_parameter"))
        );
        assert_eq!(
            param_of(&format!(r#"{{{base}, "routing": {{"max_cost": 1}}}}"#)),
            (Some("routing.max_cost".into()), Some("unknown_parameter"))
        );
        assert_eq!(
            param_of(
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]}]}"#
            ),
            (
                Some("messages[0].content[0].cache_control".into()),
                Some("unknown_parameter")
            )
        );
        assert_eq!(
            param_of(
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}"#
            ),
            (
                Some("messages[0].content[0].type".into()),
                Some("unsupported_parameter")
            )
        );
        assert_eq!(
            param_of(&format!(r#"{{{base}, "temperature": "hot"}}"#)),
            (Some("temperature".into()), Some("invalid_type"))
        );
        assert_eq!(
            param_of(r#"{"messages": []}"#),
            (None, Some("missing_required_parameter"))
        );
        assert_eq!(
            param_of(&format!(r#"{{{base}, "n": 2}}"#)).0.as_deref(),
            Some("n")
        );
        assert_eq!(
            param_of(&format!(r#"{{{base}, "logit_bias": {{"1": 2}}}}"#))
                .0
                .as_deref(),
            Some("logit_bias")
        );
        // The Responses API reads `routing` from a value, as strictly.
        let e = parse_hints(&serde_json::json!({"max_cost": 1})).unwrap_err();
        assert_eq!(
            (e.param(), e.code()),
            (Some("routing.max_cost"), Some("unknown_parameter"))
        );
        let e = parse_hints(&serde_json::json!({"quality_floor": "high"})).unwrap_err();
        assert_eq!(e.param(), Some("routing.quality_floor"));
        // Vendor extras pass when asked to.
        assert!(parse_chat(format!(r#"{{{base}, "top_k": 3}}"#).as_bytes(), true).is_ok());
        // Nulls the SDKs send are not "set".
        assert!(
            parse(&format!(
                r#"{{{base}, "logit_bias": null, "stop": null, "service_tier": "auto"}}"#
            ))
            .is_ok()
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: no body makes the OpenAI edge or validation panic,
    //! including bodies built from the API's own keys in odd shapes.
    use super::*;
    use crate::config::GatewayConfig;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "model",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "image_url",
        "url",
        "tools",
        "function",
        "name",
        "parameters",
        "tool_choice",
        "tool_calls",
        "id",
        "arguments",
        "tool_call_id",
        "response_format",
        "json_schema",
        "schema",
        "logprobs",
        "top_logprobs",
        "stop",
        "n",
        "routing",
        "allowed_tiers",
        "stream",
        "max_tokens",
        "session_id",
        "metadata",
        "user",
        "temperature",
    ];

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop_oneof![
                Just("user".to_string()),
                Just("function".to_string()),
                Just("tool".to_string()),
                ".{0,12}"
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn no_body_panics(body in json(), lenient in any::<bool>()) {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Ok(chat) = parse_chat(&bytes, lenient) {
                let _ = crate::request::validate(chat.grpc, &GatewayConfig::default(), &["m"]);
            }
        }

        #[test]
        fn no_bytes_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_chat(&bytes, false);
        }
    }
}
