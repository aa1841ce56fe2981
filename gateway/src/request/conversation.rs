//! The agent-shaped parts of a request: turns with content parts, tool calls
//! and tool results, the tools offered, the answer's format and log-prob
//! options. Checked here once (each error names its field), then summarised
//! as what the serving engine must be able to do ([`Needs`]) and as the text
//! the router reads.

use std::borrow::Cow;
use std::collections::HashSet;

use routemesh_mesh::Needs;
use routemesh_proto::v1::{ChatMessage, GenerationParams, content_part, tool_choice};

use crate::error::GatewayError;

const MAX_TOOLS: usize = 128;
const MAX_TOOL_NAME_CHARS: usize = 64;
const MAX_TOP_LOGPROBS: u32 = 20;
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;
const MAX_USER_CHARS: usize = 256;
/// What an image counts for in the prompt's length: about 765 tokens (a
/// high-detail 512x512 tile as OpenAI counts it), at 4 characters each, so
/// cost estimates and context checks do not treat images as free.
pub(crate) const IMAGE_PROMPT_CHARS: usize = 765 * 4;
/// The most of a conversation the router reads: its encoder keeps the
/// head of what it is given, so the text is cut to the most recent turns.
const ROUTING_TEXT_CHARS: usize = 2000;

fn invalid(field: impl Into<String>, why: impl Into<String>) -> GatewayError {
    GatewayError::invalid(field, why)
}

/// Checks one turn beyond its role; returns its length in characters as it
/// counts toward the prompt (text, images, tool calls).
pub(super) fn check_turn(i: usize, m: &ChatMessage) -> Result<usize, GatewayError> {
    if !m.parts.is_empty() && !m.content.is_empty() {
        return Err(invalid(
            format!("messages[{i}].parts"),
            "give the turn's content either as text or as parts, not both",
        ));
    }
    let mut chars = m.content.chars().count();
    for (j, part) in m.parts.iter().enumerate() {
        match &part.part {
            Some(content_part::Part::Text(t)) => chars += t.chars().count(),
            Some(content_part::Part::ImageUrl(image)) => {
                if m.role != "user" {
                    return Err(invalid(
                        format!("messages[{i}].content[{j}]"),
                        "image parts are allowed in user turns only",
                    ));
                }
                let url = image.url.trim();
                if !(url.starts_with("https://")
                    || url.starts_with("http://")
                    || url.starts_with("data:image/"))
                {
                    return Err(invalid(
                        format!("messages[{i}].content[{j}].image_url.url"),
                        "must be an http(s) URL or a data:image/... URL",
                    ));
                }
                if !matches!(image.detail.as_str(), "" | "auto" | "low" | "high") {
                    return Err(invalid(
                        format!("messages[{i}].content[{j}].image_url.detail"),
                        format!("{:?} is not one of auto, low, high", image.detail),
                    ));
                }
                chars += IMAGE_PROMPT_CHARS;
            }
            None => {
                return Err(invalid(
                    format!("messages[{i}].content[{j}]"),
                    "an empty content part",
                ));
            }
        }
    }
    if m.role == "user" && m.text_content().trim().is_empty() && !has_image(m) {
        return Err(invalid(
            format!("messages[{i}].content"),
            "a user message must not be empty",
        ));
    }
    if !m.tool_calls.is_empty() && m.role != "assistant" {
        return Err(invalid(
            format!("messages[{i}].tool_calls"),
            "only assistant turns hold tool calls",
        ));
    }
    for (j, call) in m.tool_calls.iter().enumerate() {
        if call.id.is_empty() {
            return Err(invalid(
                format!("messages[{i}].tool_calls[{j}].id"),
                "required: the id a tool turn answers",
            ));
        }
        if call.name.is_empty() {
            return Err(invalid(
                format!("messages[{i}].tool_calls[{j}].function.name"),
                "required",
            ));
        }
        chars += call.name.chars().count() + call.arguments.chars().count();
    }
    if m.role == "tool" && m.tool_call_id.is_empty() {
        return Err(invalid(
            format!("messages[{i}].tool_call_id"),
            "required on a tool turn: the id of the call it answers",
        ));
    }
    if m.role != "tool" && !m.tool_call_id.is_empty() {
        return Err(invalid(
            format!("messages[{i}].tool_call_id"),
            "only tool turns answer a tool call",
        ));
    }
    Ok(chars)
}

fn has_image(m: &ChatMessage) -> bool {
    m.parts
        .iter()
        .any(|p| matches!(p.part, Some(content_part::Part::ImageUrl(_))))
}

fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_TOOL_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A JSON text that must hold an object (a JSON Schema).
fn check_json_object(field: &str, text: &str) -> Result<(), GatewayError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(invalid(field, "must be a JSON object (a JSON Schema)")),
        Err(e) => Err(invalid(field, format!("is not valid JSON: {e}"))),
    }
}

/// Checks the tools, tool choice, response format and log-prob options.
pub(super) fn check_params(params: &GenerationParams) -> Result<(), GatewayError> {
    if params.tools.len() > MAX_TOOLS {
        return Err(invalid(
            "params.tools",
            format!("{} tools; at most {MAX_TOOLS}", params.tools.len()),
        ));
    }
    let mut names = HashSet::new();
    for (i, tool) in params.tools.iter().enumerate() {
        if !valid_tool_name(&tool.name) {
            return Err(invalid(
                format!("params.tools[{i}].function.name"),
                format!(
                    "{:?} must be 1 to {MAX_TOOL_NAME_CHARS} letters, digits, '_' or '-'",
                    tool.name
                ),
            ));
        }
        if !names.insert(tool.name.as_str()) {
            return Err(invalid(
                format!("params.tools[{i}].function.name"),
                format!("{:?} is offered twice", tool.name),
            ));
        }
        if !tool.parameters_json.is_empty() {
            check_json_object(
                &format!("params.tools[{i}].function.parameters"),
                &tool.parameters_json,
            )?;
        }
    }
    if let Some(choice) = params.tool_choice.as_ref().and_then(|c| c.choice.as_ref()) {
        match choice {
            tool_choice::Choice::Mode(mode) => {
                if !matches!(mode.as_str(), "none" | "auto" | "required") {
                    return Err(invalid(
                        "params.tool_choice",
                        format!("{mode:?} is not one of none, auto, required"),
                    ));
                }
                if mode == "required" && params.tools.is_empty() {
                    return Err(invalid(
                        "params.tool_choice",
                        "\"required\" needs tools to choose from",
                    ));
                }
            }
            tool_choice::Choice::Function(name) => {
                if !names.contains(name.as_str()) {
                    return Err(invalid(
                        "params.tool_choice",
                        format!("function {name:?} is not among the tools offered"),
                    ));
                }
            }
        }
    }
    if params.parallel_tool_calls.is_some() && params.tools.is_empty() {
        return Err(invalid(
            "params.parallel_tool_calls",
            "only allowed when tools are offered",
        ));
    }
    if let Some(format) = &params.response_format {
        match format.r#type.as_str() {
            "text" | "json_object" => {}
            "json_schema" => {
                if format.schema_name.is_empty() {
                    return Err(invalid(
                        "params.response_format.json_schema.name",
                        "required",
                    ));
                }
                if format.schema_json.is_empty() {
                    return Err(invalid(
                        "params.response_format.json_schema.schema",
                        "required",
                    ));
                }
                check_json_object(
                    "params.response_format.json_schema.schema",
                    &format.schema_json,
                )?;
            }
            other => {
                return Err(invalid(
                    "params.response_format.type",
                    format!("{other:?} is not one of text, json_object, json_schema"),
                ));
            }
        }
    }
    if let Some(n) = params.top_logprobs {
        if n > MAX_TOP_LOGPROBS {
            return Err(invalid(
                "params.top_logprobs",
                format!("{n} is not in [0, {MAX_TOP_LOGPROBS}]"),
            ));
        }
        if !params.logprobs {
            return Err(invalid("params.top_logprobs", "needs logprobs to be true"));
        }
    }
    for (name, value) in [
        ("params.frequency_penalty", params.frequency_penalty),
        ("params.presence_penalty", params.presence_penalty),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && (-2.0..=2.0).contains(&v))
        {
            return Err(invalid(name, format!("{v} is not in [-2, 2]")));
        }
    }
    Ok(())
}

/// Checks OpenAI's `user` and `metadata` by OpenAI's own bounds.
pub(super) fn check_tags(
    user: &str,
    metadata: &std::collections::HashMap<String, String>,
) -> Result<(), GatewayError> {
    if user.chars().count() > MAX_USER_CHARS {
        return Err(invalid(
            "user",
            format!("must be at most {MAX_USER_CHARS} characters"),
        ));
    }
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(invalid(
            "metadata",
            format!("{} pairs; at most {MAX_METADATA_PAIRS}", metadata.len()),
        ));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(invalid(
                "metadata",
                format!("key {k:?} must be 1 to {MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        if v.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(invalid(
                format!("metadata.{k}"),
                format!("must be at most {MAX_METADATA_VALUE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// What serving the conversation needs of an engine, besides its length.
pub(super) fn needs(messages: &[ChatMessage], params: &GenerationParams) -> Needs {
    let format = params.response_format.as_ref().map(|f| f.r#type.as_str());
    Needs {
        // An engine without tool calling cannot read tool turns either.
        tools: !params.tools.is_empty()
            || messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty()),
        json_output: format == Some("json_object"),
        structured_output: format == Some("json_schema"),
        vision: messages.iter().any(has_image),
        logprobs: params.logprobs,
        prompt_tokens: 0,
        max_tokens: 0,
    }
}

/// The text the router judges: the last user turn alone for a one-turn
/// request (what it was trained on); for a longer conversation, its turns
/// from the latest back, the newest first so the encoder's cut keeps them,
/// each with its role, up to [`ROUTING_TEXT_CHARS`].
pub(crate) fn routing_text(messages: &[ChatMessage]) -> Cow<'_, str> {
    let spoken: Vec<&ChatMessage> = messages.iter().filter(|m| m.role != "system").collect();
    if let [only] = spoken.as_slice()
        && only.parts.is_empty()
    {
        return Cow::Borrowed(&only.content);
    }
    let mut out = String::new();
    for m in spoken.iter().rev() {
        if out.len() >= ROUTING_TEXT_CHARS {
            break;
        }
        let text = m.text_content();
        let calls = m
            .tool_calls
            .iter()
            .map(|c| format!("{}({})", c.name, c.arguments))
            .collect::<Vec<_>>()
            .join(" ");
        let body = match (text.trim().is_empty(), calls.is_empty()) {
            (false, true) => text.into_owned(),
            (true, false) => calls,
            (false, false) => format!("{text} {calls}"),
            (true, true) => continue,
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&m.role);
        out.push_str(": ");
        out.push_str(&body);
    }
    if out.len() > ROUTING_TEXT_CHARS {
        let mut cut = ROUTING_TEXT_CHARS;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemesh_proto::v1::{ContentPart, ImageUrl, Tool, ToolCall, ToolChoice};

    fn image(url: &str) -> ContentPart {
        ContentPart {
            part: Some(content_part::Part::ImageUrl(ImageUrl {
                url: url.into(),
                detail: String::new(),
            })),
        }
    }

    fn field(e: GatewayError) -> String {
        match e {
            GatewayError::InvalidArgument { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn turns_name_what_is_wrong() {
        let mut tool = ChatMessage::text("tool", "42");
        assert_eq!(
            field(check_turn(2, &tool).unwrap_err()),
            "messages[2].tool_call_id"
        );
        tool.tool_call_id = "call_1".into();
        assert_eq!(check_turn(2, &tool).unwrap(), 2);
        let user = ChatMessage {
            role: "user".into(),
            parts: vec![image("ftp://x")],
            ..Default::default()
        };
        assert_eq!(
            field(check_turn(0, &user).unwrap_err()),
            "messages[0].content[0].image_url.url"
        );
        let user = ChatMessage {
            role: "user".into(),
            parts: vec![image("https://example.org/cat.png")],
            ..Default::default()
        };
        assert_eq!(check_turn(0, &user).unwrap(), IMAGE_PROMPT_CHARS);
        let call = ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: String::new(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            field(check_turn(1, &call).unwrap_err()),
            "messages[1].tool_calls[0].id"
        );
    }

    #[test]
    fn tools_and_formats_are_checked() {
        let tool = |name: &str, parameters: &str| Tool {
            name: name.into(),
            parameters_json: parameters.into(),
            ..Default::default()
        };
        let mut p = GenerationParams {
            tools: vec![tool("get_weather", r#"{"type":"object"}"#)],
            ..Default::default()
        };
        check_params(&p).unwrap();
        p.tools.push(tool("bad name", ""));
        assert_eq!(
            field(check_params(&p).unwrap_err()),
            "params.tools[1].function.name"
        );
        p.tools[1] = tool("other", "[1]");
        assert_eq!(
            field(check_params(&p).unwrap_err()),
            "params.tools[1].function.parameters"
        );
        p.tools.pop();
        p.tool_choice = Some(ToolChoice {
            choice: Some(tool_choice::Choice::Function("nope".into())),
        });
        assert_eq!(field(check_params(&p).unwrap_err()), "params.tool_choice");
        p.tool_choice = None;
        p.top_logprobs = Some(3);
        assert_eq!(field(check_params(&p).unwrap_err()), "params.top_logprobs");
        p.logprobs = true;
        check_params(&p).unwrap();
    }

    #[test]
    fn needs_follow_the_conversation() {
        let mut messages = vec![ChatMessage::text("user", "hi")];
        let p = GenerationParams::default();
        assert_eq!(needs(&messages, &p), Needs::default());
        let mut tool = ChatMessage::text("tool", "42");
        tool.tool_call_id = "c".into();
        messages.push(tool);
        assert!(needs(&messages, &p).tools);
    }

    #[test]
    fn routing_reads_the_whole_conversation_newest_first() {
        let one = [
            ChatMessage::text("system", "be brief"),
            ChatMessage::text("user", "hi"),
        ];
        assert_eq!(routing_text(&one), "hi");
        let turns = [
            ChatMessage::text("user", "prove the theorem"),
            ChatMessage::text("assistant", "which one?"),
            ChatMessage::text("user", "Fermat's last"),
        ];
        let text = routing_text(&turns);
        assert!(text.starts_with("user: Fermat's last\nassistant: which one?\nuser: prove"));
        let long = [
            ChatMessage::text("user", "é".repeat(3000)),
            ChatMessage::text("assistant", "ok"),
        ];
        assert!(routing_text(&long).len() <= ROUTING_TEXT_CHARS);
    }
}
