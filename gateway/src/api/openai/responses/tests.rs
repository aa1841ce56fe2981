//! Input-item conversion, refusals by field, and the output builder's events.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use routemesh_proto::v1::{
    FinishReason, ImageUrl, ToolCall, ToolCallDelta, content_part, tool_choice,
};
use serde_json::{Value, json};
use tonic::Code;

use super::fail;
use super::output::{Frame, Output, ending};
use super::request::{ResponsesRequest, parse};

fn parsed(body: Value) -> ResponsesRequest {
    match parse(body.to_string().as_bytes()) {
        Ok(req) => req,
        Err(e) => panic!("{body} was refused: {e:?}"),
    }
}

/// The refusal's status and `param`.
async fn refused(body: &str) -> (StatusCode, Value) {
    let Err(e) = parse(body.as_bytes()) else {
        panic!("{body} was accepted");
    };
    let response = e.into_response();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    (status, body["error"]["param"].clone())
}

/// What the Response objects repeat of the request.
fn echoed(req: &ResponsesRequest) -> Value {
    serde_json::to_value(&req.echo).unwrap()
}

fn roles(req: &ResponsesRequest) -> Vec<&str> {
    req.grpc.messages.iter().map(|m| m.role.as_str()).collect()
}

#[test]
fn string_input_is_one_user_turn_and_router_routes() {
    let req = parsed(json!({"model": "router", "input": "What is 2+2?"}));
    assert_eq!(roles(&req), ["user"]);
    assert_eq!(req.grpc.messages[0].content, "What is 2+2?");
    assert_eq!(req.grpc.model, "");
    assert!(!req.stream);
    let req = parsed(json!({"model": "small-model", "input": "hi", "stream": true}));
    assert_eq!(req.grpc.model, "small-model");
    assert!(req.stream);
}

#[test]
fn instructions_come_first_as_a_system_turn() {
    let req = parsed(json!({"model": "router", "instructions": "Be brief.",
        "input": [{"role": "developer", "content": "No emoji."}, {"role": "user", "content": "hi"}]}));
    assert_eq!(roles(&req), ["system", "system", "user"]);
    assert_eq!(req.grpc.messages[0].content, "Be brief.");
    assert_eq!(req.grpc.messages[1].content, "No emoji.");
    assert_eq!(echoed(&req)["instructions"], "Be brief.");
}

#[test]
fn message_parts_become_text_or_parts() {
    let req = parsed(json!({"model": "router", "input": [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Hello, "}, {"type": "input_text", "text": "world"}]},
        // An output message passed back from an earlier response.
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [
            {"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": []}]},
        {"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}]},
    ]}));
    let m = &req.grpc.messages;
    assert_eq!(roles(&req), ["user", "assistant", "user"]);
    assert_eq!(
        (m[0].content.as_str(), m[0].parts.len()),
        ("Hello, world", 0)
    );
    assert_eq!(m[1].content, "Hi!");
    assert_eq!(m[2].content, "");
    assert_eq!(m[2].parts.len(), 2);
    assert_eq!(
        m[2].parts[1].part,
        Some(content_part::Part::ImageUrl(ImageUrl {
            url: "https://example.com/cat.png".into(),
            detail: "low".into()
        }))
    );
}

#[test]
fn function_calls_and_outputs_round_trip() {
    let req = parsed(json!({"model": "router",
    "tools": [{"type": "function", "name": "get_weather", "description": "Weather now",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true},
              {"type": "function", "name": "get_time", "parameters": null, "strict": null}],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "parallel_tool_calls": false,
    "input": [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"type": "message", "role": "assistant", "content": "Let me look."},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather",
         "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "noon"}]},
    ]}));
    let m = &req.grpc.messages;
    assert_eq!(roles(&req), ["user", "assistant", "tool", "tool"]);
    // The assistant's text and both calls are one turn.
    assert_eq!(m[1].content, "Let me look.");
    assert_eq!(
        m[1].tool_calls,
        [
            ToolCall {
                id: "call_a".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            },
            ToolCall {
                id: "call_b".into(),
                name: "get_time".into(),
                arguments: "{}".into()
            },
        ]
    );
    assert_eq!(
        (
            m[2].tool_call_id.as_str(),
            m[2].name.as_str(),
            m[2].content.as_str()
        ),
        ("call_a", "get_weather", "sunny")
    );
    assert_eq!(
        (
            m[3].tool_call_id.as_str(),
            m[3].name.as_str(),
            m[3].content.as_str()
        ),
        ("call_b", "get_time", "noon")
    );
    let params = req.grpc.params.clone().unwrap();
    assert_eq!(params.tools.len(), 2);
    assert_eq!(params.tools[0].strict, Some(true));
    let schema: Value = serde_json::from_str(&params.tools[0].parameters_json).unwrap();
    assert_eq!(schema["properties"]["city"]["type"], "string");
    assert_eq!(params.tools[1].parameters_json, "");
    assert_eq!(
        params.tool_choice.and_then(|c| c.choice),
        Some(tool_choice::Choice::Function("get_weather".into()))
    );
    assert_eq!(params.parallel_tool_calls, Some(false));
    assert_eq!(echoed(&req)["parallel_tool_calls"], false);
}

#[test]
fn calls_without_text_start_their_own_assistant_turn() {
    let req = parsed(
        json!({"model": "router", "tools": [{"type": "function", "name": "f"}], "input": [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            {"role": "user", "content": "and again"},
            {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
        ]}),
    );
    assert_eq!(
        roles(&req),
        ["user", "assistant", "tool", "tool", "user", "assistant"]
    );
    assert_eq!(req.grpc.messages[1].tool_calls.len(), 2);
    assert_eq!(req.grpc.messages[1].content, "");
    assert_eq!(req.grpc.messages[5].tool_calls.len(), 1);
}

#[test]
fn settings_reach_the_engine() {
    let req = parsed(
        json!({"model": "router", "input": "hi", "max_output_tokens": 16,
        "temperature": 0.5, "top_p": 0.9, "user": "u-1", "metadata": {"team": "blue"}, "store": false,
        "previous_response_id": null,
        "text": {"format": {"type": "json_schema", "name": "answer",
                 "schema": {"type": "object"}, "strict": true}},
        "routing": {"allowed_tiers": ["small"]}}),
    );
    let params = req.grpc.params.clone().unwrap();
    assert_eq!(params.max_tokens, Some(16));
    assert_eq!(params.temperature, Some(0.5));
    assert_eq!(params.top_p, Some(0.9));
    let format = params.response_format.unwrap();
    assert_eq!(
        (
            format.r#type.as_str(),
            format.schema_name.as_str(),
            format.schema_json.as_str(),
            format.strict
        ),
        ("json_schema", "answer", "{\"type\":\"object\"}", Some(true))
    );
    assert_eq!(req.grpc.user, "u-1");
    assert_eq!(
        req.grpc.metadata.get("team").map(String::as_str),
        Some("blue")
    );
    assert_eq!(req.grpc.hints.unwrap().allowed_tiers.len(), 1);
    // Plain text needs no response format.
    let req =
        parsed(json!({"model": "router", "input": "hi", "text": {"format": {"type": "text"}}}));
    assert_eq!(req.grpc.params.unwrap().response_format, None);
}

#[tokio::test]
async fn unknown_fields_are_refused_by_their_path() {
    for (body, param) in [
        (
            r#"{"model": "router", "input": "hi", "reasoning": {"effort": "low"}}"#,
            "reasoning",
        ),
        (
            r#"{"model": "router", "input": [{"role": "user", "content": "hi", "mood": 1}]}"#,
            "input[0].mood",
        ),
        (
            r#"{"model": "router", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a", "x": 1}]}]}"#,
            "input[0].content[0].x",
        ),
        (
            r#"{"model": "router", "input": "hi", "text": {"verbosity": "low"}}"#,
            "text.verbosity",
        ),
        (
            r#"{"model": "router", "input": "hi", "tools": [{"type": "function", "name": "f", "ttl": 3}]}"#,
            "tools[0].ttl",
        ),
    ] {
        assert_eq!(
            refused(body).await,
            (StatusCode::BAD_REQUEST, json!(param)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn what_routemesh_cannot_do_is_refused_by_field() {
    for (body, param) in [
        (
            r#"{"model": "router", "input": "hi", "store": true}"#,
            "store",
        ),
        (
            r#"{"model": "router", "input": "hi", "previous_response_id": "resp_1"}"#,
            "previous_response_id",
        ),
        (
            r#"{"model": "router", "input": "hi", "tools": [{"type": "web_search", "search_context_size": "low"}]}"#,
            "tools[0].type",
        ),
        (
            r#"{"model": "router", "input": [{"type": "reasoning", "role": "user"}]}"#,
            "input[0].type",
        ),
        (
            r#"{"model": "router", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}"#,
            "input[0].call_id",
        ),
        (
            r#"{"model": "router", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}"#,
            "input[0].arguments",
        ),
        (
            r#"{"model": "router", "input": [{"role": "user", "content": "a", "call_id": "c"}]}"#,
            "input[0].call_id",
        ),
        (
            r#"{"model": "router", "input": [{"role": "robot", "content": "a"}]}"#,
            "input[0].role",
        ),
        (
            r#"{"model": "router", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f", "detail": "auto"}]}]}"#,
            "input[0].content[0].file_id",
        ),
        (
            r#"{"model": "router", "input": "hi", "tool_choice": "required"}"#,
            "tool_choice",
        ),
        (
            r#"{"model": "router", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}"#,
            "tool_choice.name",
        ),
        (
            r#"{"model": "router", "input": "hi", "tools": [{"type": "function", "name": "bad name"}]}"#,
            "tools[0].name",
        ),
        (
            r#"{"model": "router", "input": "hi", "text": {"format": {"type": "json_schema", "name": "a"}}}"#,
            "text.format.schema",
        ),
        (
            r#"{"model": "router", "input": "hi", "temperature": "hot"}"#,
            "temperature",
        ),
        (r#"{"model": "router", "input": ""}"#, "input"),
        (r#"{"model": "router", "input": []}"#, "input"),
        (r#"{"input": "hi"}"#, "model"),
        (
            r#"{"model": "router", "input": "hi", "routing": 3}"#,
            "routing",
        ),
    ] {
        assert_eq!(
            refused(body).await,
            (StatusCode::BAD_REQUEST, json!(param)),
            "{body}"
        );
    }
    // Not JSON at all: no field to name.
    assert_eq!(
        refused(r#"{"model": "#).await,
        (StatusCode::BAD_REQUEST, Value::Null)
    );
    assert_eq!(
        refused(r#"{"model": "router", "input": "hi"} x"#).await,
        (StatusCode::BAD_REQUEST, Value::Null)
    );
}

fn kinds(output: &Output) -> Vec<&str> {
    output
        .events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect()
}

#[test]
fn text_then_calls_stream_as_items_in_order() {
    let mut output = Output::new("r1");
    output.text("The ");
    output.text("answer");
    output.tool_call(ToolCallDelta {
        index: 0,
        id: "call_0".into(),
        name: "f".into(),
        arguments: "{\"a\":".into(),
    });
    output.tool_call(ToolCallDelta {
        index: 0,
        arguments: "1}".into(),
        ..Default::default()
    });
    output.tool_call(ToolCallDelta {
        index: 1,
        id: String::new(),
        name: "g".into(),
        arguments: String::new(),
    });
    output.finish("completed");
    assert_eq!(
        kinds(&output),
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
    );
    let sequence: Vec<u64> = output
        .events
        .iter()
        .filter_map(|e| e["sequence_number"].as_u64())
        .collect();
    assert_eq!(sequence, (0..15).collect::<Vec<_>>());
    let items = serde_json::to_value(&output.items).unwrap();
    assert_eq!(items[0]["type"], "message");
    assert_eq!(items[0]["content"][0]["text"], "The answer");
    assert_eq!(items[0]["status"], "completed");
    assert_eq!(items[1]["arguments"], "{\"a\":1}");
    assert_eq!(items[1]["call_id"], "call_0");
    // An engine that gave no call id gets one the client can answer.
    assert_eq!(items[2]["call_id"], "call_r1_1");
    assert_eq!(items[2]["id"], "fc_r1_2");
    // The added event showed the message before its text arrived.
    assert_eq!(output.events[0]["item"]["content"], json!([]));
    assert_eq!(output.events[10]["arguments"], "{\"a\":1}");
}

#[test]
fn an_empty_answer_is_an_empty_message_and_a_cut_one_is_incomplete() {
    let mut output = Output::new("r2");
    output.finish("completed");
    let items = serde_json::to_value(&output.items).unwrap();
    assert_eq!(items[0]["content"][0]["text"], "");
    let mut output = Output::new("r3");
    output.text("Once upon");
    output.finish("incomplete");
    let items = serde_json::to_value(&output.items).unwrap();
    assert_eq!(items[0]["status"], "incomplete");
    assert_eq!(ending(FinishReason::Length as i32).0, "incomplete");
    assert_eq!(ending(FinishReason::ToolCalls as i32).0, "completed");
}

#[test]
fn a_failure_closes_the_open_item_then_fails_the_response() {
    let frame = Frame {
        id: "resp_r4".into(),
        created_at: 1,
        model: "m".into(),
        echo: parsed(json!({"model": "router", "input": "hi"})).echo,
    };
    let mut output = Output::new("r4");
    output.text("partial");
    output.events.clear();
    fail(&mut output, &frame, Code::Internal, "engine crashed".into());
    assert_eq!(
        kinds(&output),
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "error",
            "response.failed",
        ]
    );
    let failed = &output.events[4]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert_eq!(failed["output"][0]["status"], "incomplete");
    assert_eq!(failed["completed_at"], Value::Null);
    assert_eq!(output.events[3]["message"], "engine crashed");
}
