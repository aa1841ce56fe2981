//! The answer as Responses output items and Response objects, and the
//! stream events that announce the items as they are written.

use std::collections::HashMap;

use axum::body::Bytes;
use routemesh_proto::v1::{FinishReason, ToolCallDelta, Usage};
use serde::Serialize;
use serde_json::{Value, json};

use super::super::unix_now;
use super::request::Echo;

#[derive(Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum OutputItem {
    Message {
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: &'static str,
    },
}

#[derive(Clone, Serialize)]
pub(super) struct OutputText {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
    annotations: Vec<Value>,
    logprobs: Vec<Value>,
}

impl OutputText {
    fn new(text: String) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: Vec::new(),
            logprobs: Vec::new(),
        }
    }
}

impl OutputItem {
    fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. } | OutputItem::FunctionCall { id, .. } => id,
        }
    }

    fn set_status(&mut self, to: &'static str) {
        match self {
            OutputItem::Message { status, .. } | OutputItem::FunctionCall { status, .. } => {
                *status = to;
            }
        }
    }
}

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    completed_at: Option<u64>,
    error: Option<ResponseError>,
    incomplete_details: Option<IncompleteDetails>,
    model: &'a str,
    output: &'a [OutputItem],
    usage: Option<ResponseUsage>,
    #[serde(flatten)]
    echo: &'a Echo,
}

#[derive(Serialize)]
pub(super) struct ResponseError {
    pub(super) code: &'static str,
    pub(super) message: String,
}

#[derive(Serialize)]
pub(super) struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Serialize)]
struct ResponseUsage {
    input_tokens: u32,
    input_tokens_details: InputTokensDetails,
    output_tokens: u32,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u32,
    // routemesh's additions, as on chat completions.
    cost_usd: f64,
    estimated: bool,
}

#[derive(Serialize)]
struct InputTokensDetails {
    cached_tokens: u32,
    /// The SDK's type requires it; no engine behind routemesh reports cache
    /// writes.
    cache_write_tokens: u32,
}

#[derive(Serialize)]
struct OutputTokensDetails {
    reasoning_tokens: u32,
}

impl ResponseUsage {
    fn new(usage: &Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: usage.cached_prompt_tokens.unwrap_or(0),
                cache_write_tokens: 0,
            },
            output_tokens: usage.completion_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
            cost_usd: usage.cost_usd,
            estimated: usage.estimated,
        }
    }
}

/// How the answer ended, as a Response's status.
pub(super) fn ending(finish_reason: i32) -> (&'static str, Option<IncompleteDetails>) {
    match FinishReason::try_from(finish_reason) {
        Ok(FinishReason::Length) => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
        ),
        Ok(FinishReason::ContentFilter) => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "content_filter",
            }),
        ),
        _ => ("completed", None),
    }
}

/// The item being written: output items are written one at a time.
#[derive(Clone, Copy)]
enum Open {
    Message(usize),
    /// A function call: its index among the output items and the engine's
    /// index of the call.
    Call(usize, u32),
}

/// Builds the output items from the engine's text and tool-call pieces and
/// writes the stream events that announce them (with their sequence
/// numbers). A whole answer goes through it too, its events unused.
pub(super) struct Output {
    /// The request id, to name items.
    request_id: String,
    pub(super) items: Vec<OutputItem>,
    open: Option<Open>,
    /// The engine's call index to the call's output index, for pieces that
    /// arrive after their call was closed.
    calls: HashMap<u32, usize>,
    sequence: u64,
    pub(super) events: Vec<Value>,
}

impl Output {
    pub(super) fn new(request_id: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            items: Vec::new(),
            open: None,
            calls: HashMap::new(),
            sequence: 0,
            events: Vec::new(),
        }
    }

    pub(super) fn emit(&mut self, kind: &'static str, mut data: Value) {
        if let Value::Object(map) = &mut data {
            map.insert("type".into(), kind.into());
            map.insert("sequence_number".into(), self.sequence.into());
        }
        self.sequence += 1;
        self.events.push(data);
    }

    /// The events written since the last call, as SSE.
    pub(super) fn take_sse(&mut self) -> Vec<Bytes> {
        self.events
            .drain(..)
            .map(|event| {
                let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
                Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
            })
            .collect()
    }

    pub(super) fn text(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let index = match self.open {
            Some(Open::Message(index)) => index,
            _ => {
                self.close("completed");
                self.open_message()
            }
        };
        let item_id = self.items[index].id().to_owned();
        if let OutputItem::Message { content, .. } = &mut self.items[index]
            && let Some(part) = content.first_mut()
        {
            part.text.push_str(delta);
        }
        self.emit(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "delta": delta, "logprobs": []}),
        );
    }

    fn open_message(&mut self) -> usize {
        let index = self.items.len();
        let id = format!("msg_{}_{index}", self.request_id);
        let item = OutputItem::Message {
            id: id.clone(),
            status: "in_progress",
            role: "assistant",
            content: Vec::new(),
        };
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        let part = OutputText::new(String::new());
        self.emit(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        );
        let mut item = item;
        if let OutputItem::Message { content, .. } = &mut item {
            content.push(part);
        }
        self.items.push(item);
        self.open = Some(Open::Message(index));
        index
    }

    pub(super) fn tool_call(&mut self, piece: ToolCallDelta) {
        let (index, opened) = match self.open {
            Some(Open::Call(index, call)) if call == piece.index => (index, false),
            _ => match self.calls.get(&piece.index) {
                // A piece of a call already closed (an engine interleaving
                // calls): its `done` events are out, so it can only be added
                // to the item, which the final response carries whole.
                Some(&index) => {
                    if let OutputItem::FunctionCall {
                        name, arguments, ..
                    } = &mut self.items[index]
                    {
                        name.push_str(&piece.name);
                        arguments.push_str(&piece.arguments);
                    }
                    return;
                }
                None => {
                    self.close("completed");
                    (self.open_call(&piece), true)
                }
            },
        };
        let item_id = self.items[index].id().to_owned();
        if let OutputItem::FunctionCall {
            name, arguments, ..
        } = &mut self.items[index]
        {
            // As the serving path joins pieces: the first names the call,
            // later ones add to the name.
            if !opened {
                name.push_str(&piece.name);
            }
            arguments.push_str(&piece.arguments);
        }
        if !piece.arguments.is_empty() {
            self.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": piece.arguments}),
            );
        }
    }

    fn open_call(&mut self, piece: &ToolCallDelta) -> usize {
        let index = self.items.len();
        // The client answers the call by its call_id; an engine that gave
        // none gets one that is unique within the request.
        let call_id = if piece.id.is_empty() {
            format!("call_{}_{}", self.request_id, piece.index)
        } else {
            piece.id.clone()
        };
        let item = OutputItem::FunctionCall {
            id: format!("fc_{}_{index}", self.request_id),
            call_id,
            name: piece.name.clone(),
            arguments: String::new(),
            status: "in_progress",
        };
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        self.items.push(item);
        self.calls.insert(piece.index, index);
        self.open = Some(Open::Call(index, piece.index));
        index
    }

    /// Closes the item being written, with `status`.
    pub(super) fn close(&mut self, status: &'static str) {
        let Some(open) = self.open.take() else {
            return;
        };
        let index = match open {
            Open::Message(index) | Open::Call(index, _) => index,
        };
        let item = &mut self.items[index];
        item.set_status(status);
        let item = item.clone();
        let item_id = item.id().to_owned();
        match &item {
            OutputItem::Message { content, .. } => {
                for (content_index, part) in content.iter().enumerate() {
                    self.emit(
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": index,
                               "content_index": content_index, "text": part.text, "logprobs": []}),
                    );
                    self.emit(
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": index,
                               "content_index": content_index, "part": part}),
                    );
                }
            }
            OutputItem::FunctionCall { arguments, .. } => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
                );
            }
        }
        self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }

    /// Ends the output with the answer's status. A response always holds
    /// an item: an answer with neither text nor calls is an empty message.
    pub(super) fn finish(&mut self, status: &'static str) {
        let item_status = if status == "completed" {
            "completed"
        } else {
            "incomplete"
        };
        if self.open.is_none() && self.items.is_empty() {
            self.open_message();
        }
        self.close(item_status);
    }
}

/// What every Response object of one request shares.
pub(super) struct Frame {
    pub(super) id: String,
    pub(super) created_at: u64,
    pub(super) model: String,
    pub(super) echo: Echo,
}

impl Frame {
    pub(super) fn object<'a>(
        &'a self,
        status: &'static str,
        output: &'a [OutputItem],
        usage: Option<&Usage>,
        error: Option<ResponseError>,
        incomplete_details: Option<IncompleteDetails>,
    ) -> Value {
        let object = ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status,
            // Only a completed response has one, as the SDK documents.
            completed_at: (status == "completed").then(unix_now),
            error,
            incomplete_details,
            model: &self.model,
            output,
            usage: usage.map(ResponseUsage::new),
            echo: &self.echo,
        };
        // Serializing plain structs and maps cannot fail; an empty object
        // would only hide a bug, so it is logged.
        serde_json::to_value(object).unwrap_or_else(|e| {
            tracing::error!(error = %e, "a Response object did not serialize");
            Value::Object(Default::default())
        })
    }
}
