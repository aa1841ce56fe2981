//! A Responses request parsed into typed structs and turned into the native
//! `GenerateRequest`: the conversation as chat turns, function tools, tool
//! choice and text format. A 400 names the field at fault by its path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use axum::http::StatusCode;
use routemesh_proto::v1::{
    ChatMessage, ContentPart as WirePart, GenerateRequest, GenerationParams, ImageUrl,
    ResponseFormat, Tool, ToolCall, ToolChoice, content_part, tool_choice,
};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::super::error::{ApiError, bad_request, openai_error};
use super::super::request::{ROUTER_MODEL, parse_hints};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    model: Option<String>,
    input: Option<TextOr<InputItem>>,
    instructions: Option<String>,
    tools: Option<Vec<ToolParam>>,
    tool_choice: Option<ToolChoiceParam>,
    parallel_tool_calls: Option<bool>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    text: Option<TextParam>,
    stream: Option<bool>,
    user: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    store: Option<bool>,
    previous_response_id: Option<String>,
    /// routemesh's extension, as on chat completions.
    routing: Option<Value>,
}

/// A field that OpenAI lets be a string or a list: `input`, a message's
/// `content`, a function call's `output`. Hand-written rather than an
/// untagged enum so that an error inside the list keeps its path
/// (`input[2].content[0].type`) instead of "did not match any variant".
enum TextOr<T> {
    Text(String),
    List(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOr<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextOrVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for TextOrVisitor<T> {
            type Value = TextOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(TextOr::Text(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(TextOr::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(TextOr::List(items))
            }
        }
        deserializer.deserialize_any(TextOrVisitor(PhantomData))
    }
}

/// One input item. The item kinds share one flat struct (rather than an
/// enum tagged by `type`) because a message may leave `type` out, and so
/// that every field error keeps its path; fields of another kind are
/// refused by [`InputItem::refuse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputItem {
    #[serde(rename = "type")]
    kind: Option<String>,
    role: Option<String>,
    content: Option<TextOr<ContentPartParam>>,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
    output: Option<TextOr<ContentPartParam>>,
    // Items passed back from an earlier response (`input += response.output`)
    // carry these; routemesh keeps no items, so they are accepted and unused.
    #[serde(rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
    phase: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentPartParam {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    image_url: Option<String>,
    detail: Option<String>,
    file_id: Option<String>,
    // `output_text` parts passed back from an earlier response carry these.
    #[serde(rename = "annotations")]
    _annotations: Option<IgnoredAny>,
    #[serde(rename = "logprobs")]
    _logprobs: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ToolParam {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
    /// Fields of other tool types (web_search, file_search, ...) are
    /// collected rather than refused while parsing, so that the 400 names
    /// `tools[i].type`, which says more than a field of an unsupported tool.
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `"none" | "auto" | "required"` or `{"type": "function", "name": ...}`.
#[derive(Clone, Serialize)]
#[serde(untagged)]
enum ToolChoiceParam {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl<'de> Deserialize<'de> for ToolChoiceParam {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoiceVisitor;
        impl<'de> Visitor<'de> for ChoiceVisitor {
            type Value = ToolChoiceParam;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": ...}",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(ToolChoiceParam::Mode(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                NamedToolChoice::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ToolChoiceParam::Named)
            }
        }
        deserializer.deserialize_any(ChoiceVisitor)
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextParam {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<FormatParam>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatParam {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

// ---------------------------------------------------------------------------
// The request turned into the native one.

/// A Responses request ready for the serving path.
pub(super) struct ResponsesRequest {
    pub(super) grpc: GenerateRequest,
    pub(super) stream: bool,
    /// What the response echoes of the request.
    pub(super) echo: Echo,
}

/// The request's settings every Response object repeats (the SDK's
/// `Response` type requires `tools`, `tool_choice` and
/// `parallel_tool_calls`; the rest it reads when present).
#[derive(Clone, Serialize)]
pub(super) struct Echo {
    instructions: Option<String>,
    max_output_tokens: Option<u64>,
    parallel_tool_calls: bool,
    temperature: Option<f64>,
    top_p: Option<f64>,
    text: TextParam,
    tool_choice: ToolChoiceParam,
    tools: Vec<FunctionTool>,
    user: Option<String>,
    metadata: BTreeMap<String, String>,
    /// routemesh keeps no responses (`store: true` is refused).
    store: bool,
    previous_response_id: Option<String>,
    truncation: &'static str,
}

#[derive(Clone, Serialize)]
struct FunctionTool {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

pub(super) fn parse(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
    let not_json = |e: serde_json::Error| {
        openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!("request body is not a valid Responses request: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let req: CreateRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let param = e.path().to_string();
        let inner = e.into_inner();
        // A field's value is wrong: name it. Broken JSON, or a body that is
        // not an object, has no field to name.
        if inner.classify() == serde_json::error::Category::Data && param != "." {
            bad_request(&param, inner.to_string())
        } else {
            not_json(inner)
        }
    })?;
    // Trailing bytes after the object are as broken as a missing brace.
    de.end().map_err(not_json)?;
    if req.store == Some(true) {
        return Err(bad_request(
            "store",
            "routemesh keeps no responses: send store: false (or leave it out) and the whole conversation as input",
        ));
    }
    if req.previous_response_id.is_some() {
        return Err(bad_request(
            "previous_response_id",
            "not supported: routemesh keeps no responses; send the whole conversation as input",
        ));
    }
    let model = match req.model {
        None => {
            return Err(bad_request(
                "model",
                "required: a model name from /v1/models, or \"router\"",
            ));
        }
        Some(m) if m.is_empty() => return Err(bad_request("model", "must not be empty")),
        Some(m) => m,
    };
    let input = match req.input {
        None => {
            return Err(bad_request(
                "input",
                "required: a string or an array of items",
            ));
        }
        Some(TextOr::Text(s)) if s.trim().is_empty() => {
            return Err(bad_request("input", "must not be empty"));
        }
        Some(TextOr::List(items)) if items.is_empty() => {
            return Err(bad_request("input", "must hold at least one item"));
        }
        Some(input) => input,
    };
    let messages = conversation(req.instructions.as_deref(), input)?;
    let (tools, echo_tools) = tools(req.tools.unwrap_or_default())?;
    let choice = req
        .tool_choice
        .unwrap_or_else(|| ToolChoiceParam::Mode("auto".into()));
    let wire_choice = tool_choice(&choice, &tools)?;
    let text = req.text.unwrap_or(TextParam {
        format: Some(FormatParam {
            kind: "text".into(),
            name: None,
            schema: None,
            description: None,
            strict: None,
        }),
    });
    let response_format = match &text.format {
        Some(format) => response_format(format)?,
        None => None,
    };
    let hints = match req.routing {
        None | Some(Value::Null) => None,
        Some(r) if r.is_object() => Some(parse_hints(&r)?),
        Some(_) => return Err(bad_request("routing", "must be an object")),
    };
    let params = GenerationParams {
        max_tokens: req
            .max_output_tokens
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        temperature: req.temperature.map(|t| t as f32),
        top_p: req.top_p.map(|p| p as f32),
        tools,
        tool_choice: wire_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        response_format,
        ..Default::default()
    };
    let metadata = req.metadata.unwrap_or_default();
    let grpc = GenerateRequest {
        model: if model == ROUTER_MODEL {
            String::new()
        } else {
            model
        },
        messages,
        params: Some(params),
        hints,
        user: req.user.clone().unwrap_or_default(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    };
    Ok(ResponsesRequest {
        grpc,
        stream: req.stream.unwrap_or(false),
        echo: Echo {
            instructions: req.instructions,
            max_output_tokens: req.max_output_tokens,
            // OpenAI's default.
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            temperature: req.temperature,
            top_p: req.top_p,
            text,
            tool_choice: choice,
            tools: echo_tools,
            user: req.user,
            metadata,
            store: false,
            previous_response_id: None,
            truncation: "disabled",
        },
    })
}

/// The conversation as chat turns: `instructions` as a system turn first,
/// then the items in order. Function calls join the assistant turn before
/// them (as a chat template expects an assistant's text and calls in one
/// turn); a call's output becomes a `tool` turn naming the call.
fn conversation(
    instructions: Option<&str>,
    input: TextOr<InputItem>,
) -> Result<Vec<ChatMessage>, ApiError> {
    let mut messages = Vec::new();
    if let Some(instructions) = instructions.filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::text("system", instructions));
    }
    let items = match input {
        TextOr::Text(text) => {
            messages.push(ChatMessage::text("user", text));
            return Ok(messages);
        }
        TextOr::List(items) => items,
    };
    // Call ids to function names, so a tool turn can name its tool.
    let mut calls: HashMap<String, String> = HashMap::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = |field: &str| format!("input[{i}].{field}");
        let kind = match (item.kind.as_deref(), item.role.is_some()) {
            (Some(kind), _) => kind.to_owned(),
            // A message may leave `type` out (EasyInputMessage).
            (None, true) => "message".to_owned(),
            (None, false) => {
                return Err(bad_request(
                    &at("type"),
                    "required: \"message\", \"function_call\" or \"function_call_output\" (or a message's role)",
                ));
            }
        };
        match kind.as_str() {
            "message" => {
                item.refuse(i, &kind, &["call_id", "name", "arguments", "output"])?;
                let role = match item.role.as_deref() {
                    Some(role @ ("user" | "assistant" | "system")) => role,
                    // OpenAI's newer name for the system role.
                    Some("developer") => "system",
                    Some(other) => {
                        return Err(bad_request(
                            &at("role"),
                            format!("{other:?} is not one of user, assistant, system, developer"),
                        ));
                    }
                    None => return Err(bad_request(&at("role"), "required")),
                };
                let Some(content) = item.content else {
                    return Err(bad_request(&at("content"), "required"));
                };
                let (content, parts) = message_content(content, &at("content"))?;
                messages.push(ChatMessage {
                    role: role.to_owned(),
                    content,
                    parts,
                    ..Default::default()
                });
            }
            "function_call" => {
                item.refuse(i, &kind, &["role", "content", "output", "phase"])?;
                let call_id = required(item.call_id, &at("call_id"))?;
                let name = required(item.name, &at("name"))?;
                let Some(arguments) = item.arguments else {
                    return Err(bad_request(
                        &at("arguments"),
                        "required: the call's arguments as JSON text",
                    ));
                };
                calls.insert(call_id.clone(), name.clone());
                let call = ToolCall {
                    id: call_id,
                    name,
                    arguments,
                };
                match messages.last_mut() {
                    Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                    _ => messages.push(ChatMessage {
                        role: "assistant".into(),
                        tool_calls: vec![call],
                        ..Default::default()
                    }),
                }
            }
            "function_call_output" => {
                item.refuse(i, &kind, &["role", "content", "arguments", "phase"])?;
                let call_id = required(item.call_id, &at("call_id"))?;
                let Some(name) = calls.get(&call_id) else {
                    return Err(bad_request(
                        &at("call_id"),
                        format!("no function_call item before this one has call_id {call_id:?}"),
                    ));
                };
                let output = match item.output {
                    None => return Err(bad_request(&at("output"), "required")),
                    Some(output) => tool_output(output, &at("output"))?,
                };
                messages.push(ChatMessage {
                    role: "tool".into(),
                    content: output,
                    tool_call_id: call_id,
                    name: name.clone(),
                    ..Default::default()
                });
            }
            other => {
                return Err(bad_request(
                    &at("type"),
                    format!(
                        "{other:?} items are not supported; routemesh takes message, function_call and function_call_output items"
                    ),
                ));
            }
        }
    }
    Ok(messages)
}

impl InputItem {
    /// Refuses the fields a `kind` item does not have, naming the first.
    fn refuse(&self, i: usize, kind: &str, fields: &[&str]) -> Result<(), ApiError> {
        for &field in fields {
            let present = match field {
                "role" => self.role.is_some(),
                "content" => self.content.is_some(),
                "call_id" => self.call_id.is_some(),
                "name" => self.name.is_some(),
                "arguments" => self.arguments.is_some(),
                "output" => self.output.is_some(),
                "phase" => self.phase.is_some(),
                _ => false,
            };
            if present {
                return Err(bad_request(
                    &format!("input[{i}].{field}"),
                    format!("not a field of a {kind} item"),
                ));
            }
        }
        Ok(())
    }
}

fn required(value: Option<String>, param: &str) -> Result<String, ApiError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad_request(param, "required")),
    }
}

/// A message's content: its text, or (when it holds an image) its parts.
/// Text-only parts are joined into the text as the chat edge joins them,
/// so one conversation reads the same to the router on either API.
fn message_content(
    content: TextOr<ContentPartParam>,
    param: &str,
) -> Result<(String, Vec<WirePart>), ApiError> {
    let parts = match content {
        TextOr::Text(text) => return Ok((text, Vec::new())),
        TextOr::List(parts) => parts,
    };
    let mut wire = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let at = |field: &str| format!("{param}[{j}].{field}");
        wire.push(match part.kind.as_str() {
            "input_text" | "output_text" => {
                WirePart {
                    part: Some(content_part::Part::Text(part.text.ok_or_else(|| {
                        bad_request(&at("text"), "required")
                    })?)),
                }
            }
            "input_image" => {
                if part.file_id.is_some() {
                    return Err(bad_request(
                        &at("file_id"),
                        "routemesh stores no files; give the image as image_url (https or a data: URL)",
                    ));
                }
                let url = required(part.image_url, &at("image_url"))?;
                WirePart {
                    part: Some(content_part::Part::ImageUrl(ImageUrl {
                        url,
                        detail: part.detail.unwrap_or_default(),
                    })),
                }
            }
            other => {
                return Err(bad_request(
                    &at("type"),
                    format!(
                        "{other:?} parts are not supported; routemesh takes input_text, output_text and input_image"
                    ),
                ));
            }
        });
    }
    let text_only = wire
        .iter()
        .all(|p| matches!(p.part, Some(content_part::Part::Text(_))));
    if text_only {
        let text = wire
            .into_iter()
            .filter_map(|p| match p.part {
                Some(content_part::Part::Text(t)) => Some(t),
                _ => None,
            })
            .collect();
        return Ok((text, Vec::new()));
    }
    Ok((String::new(), wire))
}

/// A function call's output as the tool turn's text.
fn tool_output(output: TextOr<ContentPartParam>, param: &str) -> Result<String, ApiError> {
    match output {
        TextOr::Text(text) => Ok(text),
        TextOr::List(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| match (part.kind.as_str(), part.text) {
                ("input_text" | "output_text", Some(text)) => Ok(text),
                _ => Err(bad_request(
                    &format!("{param}[{j}]"),
                    "a function call's output must be text (a string or input_text parts)",
                )),
            })
            .collect(),
    }
}

/// The function tools, as the engine takes them and as the response
/// repeats them.
fn tools(params: Vec<ToolParam>) -> Result<(Vec<Tool>, Vec<FunctionTool>), ApiError> {
    let mut wire = Vec::with_capacity(params.len());
    let mut echo = Vec::with_capacity(params.len());
    let mut names = HashSet::new();
    for (i, tool) in params.into_iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        match tool.kind.as_deref() {
            Some("function") => {}
            Some(other) => {
                return Err(bad_request(
                    &at("type"),
                    format!("{other:?} tools are not supported; routemesh serves function tools"),
                ));
            }
            None => return Err(bad_request(&at("type"), "required: \"function\"")),
        }
        if let Some(field) = tool.other.keys().next() {
            return Err(bad_request(
                &at(field),
                "unknown field of a function tool (name, description, parameters, strict)",
            ));
        }
        let name = required(tool.name, &at("name"))?;
        // OpenAI's rule for function names; engines' templates rely on it.
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad_request(
                &at("name"),
                "must be 1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(bad_request(
                &at("name"),
                format!("{name:?} is offered twice"),
            ));
        }
        let parameters_json = match &tool.parameters {
            None | Some(Value::Null) => String::new(),
            Some(schema @ Value::Object(_)) => schema.to_string(),
            Some(_) => {
                return Err(bad_request(
                    &at("parameters"),
                    "must be a JSON Schema object",
                ));
            }
        };
        wire.push(Tool {
            name: name.clone(),
            description: tool.description.clone().unwrap_or_default(),
            parameters_json,
            strict: tool.strict,
        });
        echo.push(FunctionTool {
            kind: "function",
            name,
            description: tool.description,
            parameters: tool.parameters,
            strict: tool.strict,
        });
    }
    Ok((wire, echo))
}

fn tool_choice(choice: &ToolChoiceParam, tools: &[Tool]) -> Result<Option<ToolChoice>, ApiError> {
    let choice = match choice {
        ToolChoiceParam::Mode(mode) => match mode.as_str() {
            "none" | "auto" => tool_choice::Choice::Mode(mode.clone()),
            "required" if tools.is_empty() => {
                return Err(bad_request(
                    "tool_choice",
                    "\"required\" needs tools to choose from",
                ));
            }
            "required" => tool_choice::Choice::Mode(mode.clone()),
            other => {
                return Err(bad_request(
                    "tool_choice",
                    format!("{other:?} is not one of none, auto, required"),
                ));
            }
        },
        ToolChoiceParam::Named(named) => {
            if named.kind != "function" {
                return Err(bad_request(
                    "tool_choice.type",
                    format!(
                        "{:?} is not supported; routemesh serves function tools",
                        named.kind
                    ),
                ));
            }
            let name = required(named.name.clone(), "tool_choice.name")?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad_request(
                    "tool_choice.name",
                    format!("{name:?} is not one of the tools offered"),
                ));
            }
            tool_choice::Choice::Function(name)
        }
    };
    Ok(Some(ToolChoice {
        choice: Some(choice),
    }))
}

/// `text.format` as the engine's response format; plain text leaves it unset
/// (so the request does not need a worker that declares JSON output).
fn response_format(format: &FormatParam) -> Result<Option<ResponseFormat>, ApiError> {
    let stray = |field: &str, present: bool| {
        if present {
            Err(bad_request(
                &format!("text.format.{field}"),
                format!("only with type json_schema, not {}", format.kind),
            ))
        } else {
            Ok(())
        }
    };
    match format.kind.as_str() {
        "text" | "json_object" => {
            stray("name", format.name.is_some())?;
            stray("schema", format.schema.is_some())?;
            stray("description", format.description.is_some())?;
            stray("strict", format.strict.is_some())?;
            Ok((format.kind == "json_object").then(|| ResponseFormat {
                r#type: "json_object".into(),
                ..Default::default()
            }))
        }
        "json_schema" => {
            let name = required(format.name.clone(), "text.format.name")?;
            let schema = match &format.schema {
                Some(schema @ Value::Object(_)) => schema.to_string(),
                _ => {
                    return Err(bad_request(
                        "text.format.schema",
                        "required: a JSON Schema object",
                    ));
                }
            };
            Ok(Some(ResponseFormat {
                r#type: "json_schema".into(),
                schema_name: name,
                schema_description: format.description.clone().unwrap_or_default(),
                schema_json: schema,
                strict: format.strict,
            }))
        }
        other => Err(bad_request(
            "text.format.type",
            format!("{other:?} is not one of text, json_object, json_schema"),
        )),
    }
}
