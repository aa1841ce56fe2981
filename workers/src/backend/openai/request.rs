//! The chat-completions request body an OpenAI-compatible engine is sent,
//! as typed structs: every feature of the request forwarded as OpenAI
//! spells it, and every absent field left out (engines differ in what they
//! accept, and an absent field is one none of them can reject).

use routemesh_proto::v1::{
    ChatMessage, ContentPart, GenerationParams, ResponseFormat, Tool, ToolChoice, content_part,
    tool_choice,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::backend::{EngineError, GenerateInput};

#[derive(Debug, Serialize)]
pub(super) struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<Message<'a>>,
    pub max_tokens: u32,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "no_strings")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<FunctionTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Format<'a>>,
    /// Only when asked: some engines reject the parameter, and those that
    /// accept it do more work for it.
    #[serde(skip_serializing_if = "is_false")]
    pub logprobs: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(skip_serializing_if = "is_empty")]
    pub user: &'a str,
}

#[derive(Debug, Serialize)]
pub(super) struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct Message<'a> {
    role: &'a str,
    /// `None` is sent as `null`: an assistant turn that only calls tools.
    content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallOut<'a>>,
    #[serde(skip_serializing_if = "is_empty")]
    tool_call_id: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    name: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(&'a str),
    Parts(Vec<Part<'a>>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: Image<'a> },
}

#[derive(Debug, Serialize)]
struct Image<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    detail: &'a str,
}

/// A call an earlier assistant turn made.
#[derive(Debug, Serialize)]
struct CallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
pub(super) struct FunctionTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Debug, Serialize)]
struct Function<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    description: &'a str,
    /// The schema exactly as the client wrote it: passed through unparsed,
    /// so its key order (which strict engines generate in) is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Choice<'a> {
    /// "none", "auto" or "required".
    Mode(&'a str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: Named<'a>,
    },
}

#[derive(Debug, Serialize)]
pub(super) struct Named<'a> {
    name: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum Format<'a> {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema<'a> },
}

#[derive(Debug, Serialize)]
pub(super) struct JsonSchema<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

// serde hands `skip_serializing_if` a reference to the field.
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_empty(s: &&str) -> bool {
    s.is_empty()
}
fn no_strings(s: &&[String]) -> bool {
    s.is_empty()
}

/// The body for `input`. Fails (as the engine would, but naming the field)
/// when a schema the client gave is not a JSON object.
pub(super) fn chat_request<'a>(
    model: &'a str,
    input: &'a GenerateInput,
    stream: bool,
) -> Result<ChatRequest<'a>, EngineError> {
    let p: &GenerationParams = &input.params;
    Ok(ChatRequest {
        model,
        messages: input.messages.iter().map(message).collect(),
        max_tokens: input.max_tokens(),
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        temperature: p.temperature,
        top_p: p.top_p,
        stop: &p.stop,
        seed: p.seed,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        tools: p
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<_, _>>()?,
        tool_choice: p.tool_choice.as_ref().and_then(choice),
        parallel_tool_calls: p.parallel_tool_calls,
        response_format: p
            .response_format
            .as_ref()
            .map(format)
            .transpose()?
            .flatten(),
        logprobs: input.engine_logprobs(),
        // Only with the client's own `logprobs`: the confidence summary
        // needs no alternatives, and OpenAI refuses top_logprobs alone.
        top_logprobs: p.top_logprobs.filter(|_| input.token_logprobs()),
        user: &input.user,
    })
}

fn message(m: &ChatMessage) -> Message<'_> {
    let content = if !m.parts.is_empty() {
        let lead = (!m.content.is_empty()).then_some(Part::Text { text: &m.content });
        Some(Content::Parts(
            lead.into_iter()
                .chain(m.parts.iter().filter_map(part))
                .collect(),
        ))
    } else if m.content.is_empty() && !m.tool_calls.is_empty() {
        None
    } else {
        Some(Content::Text(&m.content))
    };
    Message {
        role: &m.role,
        content,
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| CallOut {
                id: &c.id,
                kind: "function",
                function: FunctionCall {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect(),
        tool_call_id: &m.tool_call_id,
        name: &m.name,
    }
}

fn part(p: &ContentPart) -> Option<Part<'_>> {
    match p.part.as_ref()? {
        content_part::Part::Text(text) => Some(Part::Text { text }),
        content_part::Part::ImageUrl(image) => Some(Part::ImageUrl {
            image_url: Image {
                url: &image.url,
                detail: &image.detail,
            },
        }),
    }
}

/// A JSON object text as it stands; `None` when empty.
fn schema<'a>(
    text: &'a str,
    field: &dyn Fn() -> String,
) -> Result<Option<&'a RawValue>, EngineError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| EngineError::Rejected(format!("{}: not JSON: {e}", field())))?;
    if !raw.get().starts_with('{') {
        return Err(EngineError::Rejected(format!(
            "{}: not a JSON object",
            field()
        )));
    }
    Ok(Some(raw))
}

fn tool(i: usize, t: &Tool) -> Result<FunctionTool<'_>, EngineError> {
    Ok(FunctionTool {
        kind: "function",
        function: Function {
            name: &t.name,
            description: &t.description,
            parameters: schema(&t.parameters_json, &|| format!("tools[{i}].parameters"))?,
            strict: t.strict,
        },
    })
}

fn choice(c: &ToolChoice) -> Option<Choice<'_>> {
    match c.choice.as_ref()? {
        tool_choice::Choice::Mode(mode) if mode.is_empty() => None,
        tool_choice::Choice::Mode(mode) => Some(Choice::Mode(mode)),
        tool_choice::Choice::Function(name) => Some(Choice::Function {
            kind: "function",
            function: Named { name },
        }),
    }
}

fn format(f: &ResponseFormat) -> Result<Option<Format<'_>>, EngineError> {
    Ok(match f.r#type.as_str() {
        "" => None,
        "text" => Some(Format::Text),
        "json_object" => Some(Format::JsonObject),
        "json_schema" => Some(Format::JsonSchema {
            json_schema: JsonSchema {
                // OpenAI requires a name; the client may not have given one.
                name: if f.schema_name.is_empty() {
                    "response"
                } else {
                    &f.schema_name
                },
                description: &f.schema_description,
                schema: schema(&f.schema_json, &|| {
                    "response_format.json_schema.schema".into()
                })?,
                strict: f.strict,
            },
        }),
        other => {
            return Err(EngineError::Rejected(format!(
                "response_format.type: {other:?} is not text, json_object or json_schema"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemesh_proto::v1::{ImageUrl, ToolCall};
    use serde_json::{Value, json};

    fn body(input: &GenerateInput, stream: bool) -> Value {
        serde_json::to_value(chat_request("served", input, stream).unwrap()).unwrap()
    }

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }
    }

    fn input(messages: Vec<ChatMessage>, params: GenerationParams) -> GenerateInput {
        GenerateInput {
            request_id: "r".into(),
            messages,
            params,
            want_logprobs: false,
            user: String::new(),
        }
    }

    #[test]
    fn a_plain_request_sends_only_what_is_set() {
        let got = body(&input(vec![user("hi")], GenerationParams::default()), false);
        assert_eq!(
            got,
            json!({"model": "served", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 256, "stream": false})
        );
        let got = body(&input(vec![user("hi")], GenerationParams::default()), true);
        assert_eq!(got["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn every_agent_feature_is_forwarded_as_openai_spells_it() {
        let messages = vec![
            ChatMessage {
                role: "user".into(),
                parts: vec![
                    ContentPart {
                        part: Some(content_part::Part::Text("What is here?".into())),
                    },
                    ContentPart {
                        part: Some(content_part::Part::ImageUrl(ImageUrl {
                            url: "https://example.invalid/a.png".into(),
                            detail: "low".into(),
                        })),
                    },
                ],
                name: "ann".into(),
                ..Default::default()
            },
            ChatMessage {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "look".into(),
                    arguments: r#"{"at":"a.png"}"#.into(),
                }],
                ..Default::default()
            },
            ChatMessage {
                role: "tool".into(),
                content: "a cat".into(),
                tool_call_id: "call_1".into(),
                name: "look".into(),
                ..Default::default()
            },
        ];
        let params = GenerationParams {
            temperature: Some(0.7),
            frequency_penalty: Some(0.5),
            presence_penalty: Some(-0.25),
            tools: vec![
                Tool {
                    name: "look".into(),
                    description: "Looks at an image".into(),
                    parameters_json: r#"{"type":"object","properties":{"at":{"type":"string"}}}"#
                        .into(),
                    strict: Some(true),
                },
                Tool {
                    name: "noop".into(),
                    ..Default::default()
                },
            ],
            tool_choice: Some(ToolChoice {
                choice: Some(tool_choice::Choice::Function("look".into())),
            }),
            parallel_tool_calls: Some(false),
            response_format: Some(ResponseFormat {
                r#type: "json_schema".into(),
                schema_name: "answer".into(),
                schema_description: "".into(),
                schema_json: r#"{"type":"object","properties":{"b":{},"a":{}}}"#.into(),
                strict: Some(true),
            }),
            logprobs: true,
            top_logprobs: Some(2),
            ..Default::default()
        };
        let mut req = input(messages, params);
        req.user = "end-user-7".into();
        let got = body(&req, false);
        assert_eq!(
            got["messages"],
            json!([
                {"role": "user", "name": "ann", "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png", "detail": "low"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"at\":\"a.png\"}"}},
                ]},
                {"role": "tool", "content": "a cat", "tool_call_id": "call_1", "name": "look"},
            ])
        );
        assert_eq!(
            got["tools"],
            json!([
                {"type": "function", "function": {"name": "look", "description": "Looks at an image",
                  "parameters": {"type": "object", "properties": {"at": {"type": "string"}}}, "strict": true}},
                {"type": "function", "function": {"name": "noop"}},
            ])
        );
        assert_eq!(
            got["tool_choice"],
            json!({"type": "function", "function": {"name": "look"}})
        );
        assert_eq!(got["parallel_tool_calls"], false);
        assert_eq!(
            got["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "answer",
                   "schema": {"type": "object", "properties": {"b": {}, "a": {}}}, "strict": true}})
        );
        assert_eq!(
            (got["logprobs"].clone(), got["top_logprobs"].clone()),
            (json!(true), json!(2))
        );
        assert_eq!(got["user"], "end-user-7");
        assert_eq!(
            (
                got["frequency_penalty"].clone(),
                got["presence_penalty"].clone()
            ),
            (json!(0.5), json!(-0.25))
        );
        // On the wire (as reqwest writes it): an f32 as written, not widened
        // to 0.699999988; the schema text passed through, its key order kept.
        let text = serde_json::to_string(&chat_request("served", &req, false).unwrap()).unwrap();
        assert!(text.contains(r#""temperature":0.7,"#), "{text}");
        assert!(text.contains(r#""properties":{"b":{},"a":{}}"#), "{text}");
    }

    #[test]
    fn choices_and_formats() {
        let with = |params: GenerationParams| body(&input(vec![user("x")], params), false);
        for mode in ["none", "auto", "required"] {
            let got = with(GenerationParams {
                tool_choice: Some(ToolChoice {
                    choice: Some(tool_choice::Choice::Mode(mode.into())),
                }),
                ..Default::default()
            });
            assert_eq!(got["tool_choice"], mode);
        }
        for (kind, expected) in [
            ("json_object", json!({"type": "json_object"})),
            ("text", json!({"type": "text"})),
        ] {
            let got = with(GenerationParams {
                response_format: Some(ResponseFormat {
                    r#type: kind.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert_eq!(got["response_format"], expected);
        }
        // The confidence summary alone asks for logprobs, never alternatives.
        let mut summary_only = input(
            vec![user("x")],
            GenerationParams {
                top_logprobs: Some(3),
                ..Default::default()
            },
        );
        summary_only.want_logprobs = true;
        let got = body(&summary_only, false);
        assert_eq!(got["logprobs"], true);
        assert!(got.get("top_logprobs").is_none(), "{got}");
    }

    #[test]
    fn bad_schemas_are_refused_naming_the_field() {
        let bad = |params: GenerationParams| {
            chat_request("m", &input(vec![user("x")], params), false).map(|_| ())
        };
        let err = bad(GenerationParams {
            tools: vec![Tool {
                name: "t".into(),
                parameters_json: "{not json".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, EngineError::Rejected(m) if m.starts_with("tools[0].parameters")),
            "{err}"
        );
        let err = bad(GenerationParams {
            response_format: Some(ResponseFormat {
                r#type: "json_schema".into(),
                schema_json: "[1]".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, EngineError::Rejected(m) if m.contains("not a JSON object")),
            "{err}"
        );
    }
}
