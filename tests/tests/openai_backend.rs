//! The worker's `openai` backend against an HTTP server that speaks the OpenAI
//! wire format: plain and SSE, usage reported or counted, engine errors,
//! timeouts and malformed chunks mapped to gRPC codes; and a gateway that
//! dials the worker from static configuration. Agent features: tools, tool
//! turns, response formats, log-probabilities and the user forwarded as
//! OpenAI spells them; tool calls back whole and in streamed pieces; a
//! context refusal as OUT_OF_RANGE (not retryable); cached prompt tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use routemesh_proto::v1::{
    ChatMessage, ContentPart, FinishReason, GenerationParams, ImageUrl, LoadRequest,
    ResponseFormat, Tool, ToolCall, ToolChoice, WorkerGenerateRequest, content_part, tool_choice,
    worker_stream_event,
};
use routemesh_tests::fake_openai::{
    ANSWER_PIECES, CACHED_TOKENS, CONTEXT_ERROR, FakeOpenAi, SURE_LOGPROBS,
    TOOL_ARGUMENT_FRAGMENTS, TOOL_ARGUMENTS, TOOL_CALL_ID, TOOL_NAME,
};
use routemesh_tests::*;
use serde_json::json;
use tonic::Code;

fn worker_yaml(base_url: &str) -> String {
    format!(
        "workers:\n  - id: engine-0\n    model: fake-model\n    tier: large\n    input_usd_per_mtok: 1.0\n    output_usd_per_mtok: 2.0\n    backend:\n      openai:\n        base_url: {base_url}\n        engine_model: served-name\n        timeout: 1s\n"
    )
}

fn request(prompt: &str) -> WorkerGenerateRequest {
    WorkerGenerateRequest {
        request_id: "r".into(),
        model: "fake-model".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        params: Some(GenerationParams {
            max_tokens: Some(32),
            temperature: Some(0.5),
            stop: vec!["\n\n".into()],
            seed: Some(3),
            ..Default::default()
        }),
        tenant: "t".into(),
        want_logprobs: false,
        user: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_behind_the_worker() {
    let fake = FakeOpenAi::start().await;
    let worker =
        Process::start("openai-worker", "worker", &worker_yaml(&fake.base_url), &[]).unwrap();
    let mut client = worker_client(&worker.worker_endpoint(0)).await;

    // Plain completion: text, usage from the engine, cost from the prices.
    let done = client.generate(request("hi")).await.unwrap().into_inner();
    assert_eq!(done.text, ANSWER_PIECES.concat());
    let usage = done.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.estimated
        ),
        (11, 4, false)
    );
    assert!((usage.cost_usd - (11.0 * 1.0 + 4.0 * 2.0) / 1e6).abs() < 1e-12);
    assert!(!usage.simulated);
    let sent = fake.state.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "served-name");
    assert_eq!(sent["max_tokens"], 32);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["stop"][0], "\n\n");
    assert_eq!(sent["seed"], 3);
    assert_eq!(sent["stream"], false);

    // SSE streaming: the deltas in order, then usage from the final chunk.
    let mut stream = client
        .generate_stream(request("hi"))
        .await
        .unwrap()
        .into_inner();
    let (mut text, mut end) = (String::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            worker_stream_event::Event::Delta(d) => text.push_str(&d.text),
            worker_stream_event::Event::End(e) => end = Some(e),
            worker_stream_event::Event::ToolCall(c) => panic!("no tools were offered: {c:?}"),
        }
    }
    assert_eq!(text, ANSWER_PIECES.concat());
    let end = end.unwrap();
    assert_eq!(end.finish_reason, FinishReason::Stop as i32);
    assert_eq!(
        end.usage
            .as_ref()
            .map(|u| (u.completion_tokens, u.estimated)),
        Some((4, false))
    );
    let sent = fake.state.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (
            sent["stream"].as_bool(),
            sent["stream_options"]["include_usage"].as_bool()
        ),
        (Some(true), Some(true))
    );

    // No usage from the engine: estimated (ceil(chars / 4); one token per
    // streamed delta) and flagged as such.
    let usage = client
        .generate(request("no-usage"))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert!(
        usage.estimated && usage.prompt_tokens == 2 && usage.completion_tokens == 7,
        "{usage:?}"
    );
    let mut stream = client
        .generate_stream(request("no-usage"))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        last = e.event;
    }
    let Some(worker_stream_event::Event::End(end)) = last else {
        panic!("no end")
    };
    assert_eq!(
        end.usage.map(|u| (u.completion_tokens, u.estimated)),
        Some((4, true))
    );

    // Engine errors and timeouts map to gRPC codes with the engine's message.
    for (prompt, code, needle) in [
        (
            "error-400",
            Code::InvalidArgument,
            "max_tokens is too large",
        ),
        ("error-429", Code::ResourceExhausted, "slow down"),
        ("error-503", Code::Unavailable, "engine overloaded"),
        ("slow", Code::DeadlineExceeded, "did not answer within 1s"),
    ] {
        for streaming in [false, true] {
            let status = if streaming {
                client
                    .generate_stream(request(prompt))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            } else {
                client
                    .generate(request(prompt))
                    .await
                    .map(|_| ())
                    .unwrap_err()
            };
            assert_eq!(
                status.code(),
                code,
                "{prompt} (stream {streaming}): {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{prompt}: {}",
                status.message()
            );
        }
    }

    // A malformed chunk or an error object mid-stream ends the stream with an
    // error after the deltas already sent.
    for (prompt, code, needle) in [
        ("malformed", Code::Internal, "malformed"),
        ("midstream-error", Code::Internal, "engine exploded"),
    ] {
        let mut stream = client
            .generate_stream(request(prompt))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(first.event, Some(worker_stream_event::Event::Delta(ref d)) if d.text == "Hello")
        );
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), code, "{prompt}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{prompt}: {}",
            status.message()
        );
    }

    // A request for another model is refused by the worker.
    let status = client
        .generate(WorkerGenerateRequest {
            model: "other".into(),
            ..request("hi")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // The load report tells the backend and counts.
    let load = client.load(LoadRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (load.backend.as_str(), load.in_flight, load.capacity),
        ("openai", 0, 4)
    );
    assert!(load.engine.unwrap().failed >= 8);

    // A gateway with the worker as a static entry (no registry) routes to it.
    let gateway_yaml = format!(
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\nstatic_workers:\n  - id: engine-0\n    model: fake-model\n    tier: large\n    endpoint: {}\n",
        worker.worker_endpoint(0)
    );
    let gateway = Process::start("gateway", "gateway", &gateway_yaml, &[]).unwrap();
    let mut gw = gateway_client(&gateway.gateway_url()).await;
    let response = gw.generate(ask("hi")).await.unwrap().into_inner();
    assert_eq!(response.text, ANSWER_PIECES.concat());
    assert_eq!(response.usage.unwrap().worker_id, "engine-0");
    let status = gw.generate(ask("error-400")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("engine-0")
            && status.message().contains("max_tokens is too large")
    );
}

/// A request an agent makes: tools offered, a conversation with an earlier
/// call and its result, a JSON Schema answer, log-probabilities, penalties.
fn agent_request(prompt: &str) -> WorkerGenerateRequest {
    let mut req = request(prompt);
    req.user = "end-user-42".into();
    req.messages = vec![
        ChatMessage {
            role: "system".into(),
            content: "You are terse.".into(),
            ..Default::default()
        },
        ChatMessage {
            role: "user".into(),
            parts: vec![
                ContentPart {
                    part: Some(content_part::Part::Text("Weather where this is?".into())),
                },
                ContentPart {
                    part: Some(content_part::Part::ImageUrl(ImageUrl {
                        url: "data:image/png;base64,iVBORw0KGgo=".into(),
                        detail: "low".into(),
                    })),
                },
            ],
            ..Default::default()
        },
        ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "call_0".into(),
                name: "locate".into(),
                arguments: r#"{"image":0}"#.into(),
            }],
            ..Default::default()
        },
        ChatMessage {
            role: "tool".into(),
            content: "Paris".into(),
            tool_call_id: "call_0".into(),
            name: "locate".into(),
            ..Default::default()
        },
        ChatMessage {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        },
    ];
    let params = req.params.get_or_insert_with(Default::default);
    params.tools = vec![Tool {
        name: TOOL_NAME.into(),
        description: "The weather in a city".into(),
        parameters_json: r#"{"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["C","F"]}},"required":["city"]}"#.into(),
        strict: Some(true),
    }];
    params.tool_choice = Some(ToolChoice {
        choice: Some(tool_choice::Choice::Mode("auto".into())),
    });
    params.parallel_tool_calls = Some(false);
    params.response_format = Some(ResponseFormat {
        r#type: "json_schema".into(),
        schema_name: "weather".into(),
        schema_description: "A forecast".into(),
        schema_json: r#"{"type":"object","properties":{"summary":{"type":"string"}}}"#.into(),
        strict: Some(true),
    });
    params.logprobs = true;
    params.top_logprobs = Some(2);
    params.frequency_penalty = Some(0.5);
    params.presence_penalty = Some(-0.5);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_features_through_the_openai_backend() {
    let fake = FakeOpenAi::start().await;
    // Vision is declared: an OpenAI engine's default is without it.
    let yaml = worker_yaml(&fake.base_url).replace(
        "    backend:\n",
        "    capabilities: {vision: true}\n    backend:\n",
    );
    let worker = Process::start("openai-agent-worker", "worker", &yaml, &[]).unwrap();
    let mut client = worker_client(&worker.worker_endpoint(0)).await;
    let sent = || fake.state.requests.lock().unwrap().last().cloned().unwrap();

    // Everything an agent sends reaches the engine as OpenAI spells it.
    let done = client
        .generate(agent_request("hi"))
        .await
        .unwrap()
        .into_inner();
    let body = sent();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather where this is?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "locate", "arguments": "{\"image\":0}"}},
            ]},
            {"role": "tool", "content": "Paris", "tool_call_id": "call_0", "name": "locate"},
            {"role": "user", "content": "hi"},
        ])
    );
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {
            "name": TOOL_NAME, "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]},
            "strict": true}}])
    );
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["parallel_tool_calls"], false);
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "weather", "description": "A forecast",
               "schema": {"type": "object", "properties": {"summary": {"type": "string"}}}, "strict": true}})
    );
    assert_eq!(
        (&body["logprobs"], &body["top_logprobs"], &body["user"]),
        (&json!(true), &json!(2), &json!("end-user-42"))
    );
    assert_eq!(
        (&body["frequency_penalty"], &body["presence_penalty"]),
        (&json!(0.5), &json!(-0.5))
    );
    // Per-token log-probabilities come back, with their alternatives; no
    // confidence summary was asked for.
    assert_eq!(done.text, ANSWER_PIECES.concat());
    assert_eq!(
        done.logprobs
            .iter()
            .map(|t| (t.token.as_str(), t.logprob))
            .collect::<Vec<_>>(),
        ANSWER_PIECES
            .iter()
            .copied()
            .zip(SURE_LOGPROBS)
            .collect::<Vec<_>>()
    );
    assert!(done.logprobs.iter().all(|t| t.top_logprobs.len() == 2
        && t.top_logprobs[0].token == t.token
        && t.bytes == t.token.as_bytes()));
    assert!(done.confidence.is_none());
    // Streamed, each delta carries its own.
    let mut stream = client
        .generate_stream(agent_request("hi"))
        .await
        .unwrap()
        .into_inner();
    let mut per_delta = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(worker_stream_event::Event::Delta(d)) = event.event {
            per_delta.push((d.text, d.logprobs.len()));
        }
    }
    assert_eq!(
        per_delta,
        ANSWER_PIECES
            .iter()
            .map(|p| (p.to_string(), 1))
            .collect::<Vec<_>>()
    );

    // A tool call, whole.
    let done = client
        .generate(agent_request("tool-call"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.finish_reason, FinishReason::ToolCalls as i32);
    assert_eq!(done.text, "");
    assert_eq!(
        done.tool_calls,
        vec![ToolCall {
            id: TOOL_CALL_ID.into(),
            name: TOOL_NAME.into(),
            arguments: TOOL_ARGUMENTS.into(),
        }]
    );
    // And in streamed pieces: the id and name first, then the fragments.
    let mut stream = client
        .generate_stream(agent_request("tool-call"))
        .await
        .unwrap()
        .into_inner();
    let (mut pieces, mut end) = (Vec::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            worker_stream_event::Event::ToolCall(piece) => pieces.push(piece),
            worker_stream_event::Event::End(e) => end = Some(e),
            worker_stream_event::Event::Delta(d) => panic!("no text expected: {d:?}"),
        }
    }
    assert_eq!(
        pieces.len(),
        1 + TOOL_ARGUMENT_FRAGMENTS.len(),
        "{pieces:?}"
    );
    assert_eq!(
        (
            pieces[0].index,
            pieces[0].id.as_str(),
            pieces[0].name.as_str(),
            pieces[0].arguments.as_str()
        ),
        (0, TOOL_CALL_ID, TOOL_NAME, "")
    );
    for (piece, fragment) in pieces[1..].iter().zip(TOOL_ARGUMENT_FRAGMENTS) {
        assert_eq!(
            (
                piece.index,
                piece.id.as_str(),
                piece.name.as_str(),
                piece.arguments.as_str()
            ),
            (0, "", "", fragment)
        );
    }
    assert_eq!(end.unwrap().finish_reason, FinishReason::ToolCalls as i32);

    // Too long for the model's context: OUT_OF_RANGE with the engine's
    // words, and no retry hint (every worker of the model would refuse).
    for streaming in [false, true] {
        let status = if streaming {
            client
                .generate_stream(request("error-context"))
                .await
                .map(|_| ())
                .unwrap_err()
        } else {
            client
                .generate(request("error-context"))
                .await
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "stream {streaming}: {status:?}"
        );
        assert!(
            status.message().contains(CONTEXT_ERROR),
            "{}",
            status.message()
        );
        assert!(
            status.metadata().get("x-routemesh-retryable").is_none(),
            "{:?}",
            status.metadata()
        );
    }

    // Prompt tokens the engine served from its cache are reported.
    let usage = client
        .generate(request("cached"))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!(usage.cached_prompt_tokens, Some(CACHED_TOKENS));
    let mut stream = client
        .generate_stream(request("cached"))
        .await
        .unwrap()
        .into_inner();
    let mut cached = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(worker_stream_event::Event::End(e)) = event.event {
            cached = e.usage.and_then(|u| u.cached_prompt_tokens);
        }
    }
    assert_eq!(cached, Some(CACHED_TOKENS));
    assert_eq!(
        client
            .generate(request("hi"))
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap()
            .cached_prompt_tokens,
        None
    );
}
