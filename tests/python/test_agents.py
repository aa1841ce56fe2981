"""Agents through routemesh (issue 19), as they would use it: the official
`openai` SDK and Python grpcio against the real binary, in front of small
OpenAI-compatible engines (`mock_engine.py`) that record what arrives.

The pool: `small-agent` (declares a 4,096-token context), `big-undeclared`
(a large model whose 4,096-token context nobody declared: its engine refuses
long prompts) and `large-agent` (long context, ten times the price). Priors
make the policy prefer the large models when nothing narrows the choice."""

import json
import os
import uuid

import grpc
import openai
import pytest

from conftest import Running
from mock_engine import MockEngine

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
REDIS = os.environ.get("ROUTEMESH_TEST_REDIS", "redis://127.0.0.1:6379")
LONG_PROMPT = "Summarise this report. " + "The quarterly figures rose again. " * 700  # ~6,000 tokens


def mesh_config(engines, redis_mesh=None, with_workers=True):
    small, big, large = engines
    registry = f"registry: {{redis: {{url: '{REDIS}', mesh: {redis_mesh}}}}}\n" if redis_mesh else ""
    workers = f"""
workers:
  - id: small-agent-0
    model: small-agent
    tier: small
    quality_prior: 0.3
    input_usd_per_mtok: 0.1
    output_usd_per_mtok: 0.2
    capabilities: {{context_tokens: 4096}}
    backend: {{openai: {{base_url: "{small.url}"}}}}
  - id: big-undeclared-0
    model: big-undeclared
    tier: large
    quality_prior: 0.9
    input_usd_per_mtok: 1
    output_usd_per_mtok: 1
    backend: {{openai: {{base_url: "{big.url}"}}}}
  - id: large-agent-0
    model: large-agent
    tier: large
    quality_prior: 0.9
    input_usd_per_mtok: 10
    output_usd_per_mtok: 30
    backend: {{openai: {{base_url: "{large.url}"}}}}
""" if with_workers else ""
    return f"""
{registry}gateway:
  router: {{enabled: false}}
  cost_weight: 0
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
{workers}"""


@pytest.fixture(scope="module")
def engines():
    started = (MockEngine("small-agent", context=4096), MockEngine("big-undeclared", context=4096), MockEngine("large-agent"))
    yield started
    for e in started:
        e.stop()


@pytest.fixture(scope="module")
def agents(engines):
    running = Running(["up"], mesh_config(engines))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sdk(agents):
    return openai.OpenAI(base_url=agents.http + "/v1", api_key="unused", max_retries=0, timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def test_a_tool_call_round_trip(sdk, engines):
    small = engines[0]
    first = sdk.chat.completions.create(
        model="small-agent", messages=ask("What is the weather in Paris?"), tools=[WEATHER_TOOL], tool_choice="auto", max_tokens=64
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == ("function", "get_weather", {"city": "Paris"})
    sent = small.last()
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == "auto"

    history = ask("What is the weather in Paris?") + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    final = sdk.chat.completions.create(model="small-agent", messages=history, tools=[WEATHER_TOOL], max_tokens=64)
    assert final.choices[0].message.content == "The tool said: 18C and sunny"
    assert final.choices[0].finish_reason == "stop"
    sent = small.last()
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    assert sent["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}


def test_a_tool_call_streamed(sdk):
    stream = sdk.chat.completions.create(
        model="small-agent",
        messages=ask("weather?"),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=64,
    )
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] += (piece.function and piece.function.name) or ""
            call["arguments"] += (piece.function and piece.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {0: {"id": "call_mock_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_response_formats_are_forwarded(sdk, engines):
    small = engines[0]
    resp = sdk.chat.completions.create(model="small-agent", messages=ask("answer in JSON"), response_format={"type": "json_object"}, max_tokens=32)
    assert json.loads(resp.choices[0].message.content) == {"answer": "42"}
    assert small.last()["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"], "additionalProperties": False}
    sdk.chat.completions.create(
        model="small-agent",
        messages=ask("answer in JSON"),
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        max_tokens=32,
    )
    assert small.last()["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def test_logprobs_and_cached_tokens_come_back(sdk, engines):
    resp = sdk.chat.completions.create(model="small-agent", messages=ask("hello"), logprobs=True, top_logprobs=2, max_tokens=16, user="user-7")
    tokens = resp.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == "Hello from small-agent."
    assert all(t.logprob == -0.25 and len(t.top_logprobs) == 2 for t in tokens)
    assert resp.usage.prompt_tokens_details.cached_tokens == resp.usage.prompt_tokens // 2
    sent = engines[0].last()
    assert (sent["logprobs"], sent["top_logprobs"], sent["user"]) == (True, 2, "user-7")
    # Streamed, each piece carries its own tokens' log-probabilities.
    stream = sdk.chat.completions.create(model="small-agent", messages=ask("hello"), logprobs=True, max_tokens=16, stream=True)
    streamed = [t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(streamed) == "Hello from small-agent."


def test_unknown_fields_are_refused_by_name(sdk):
    for extra, param in [({"temprature": 0.2}, "temprature"), ({"routing": {"max_cost": 1}}, "routing.max_cost")]:
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(model="router", messages=ask("hi"), max_tokens=4, extra_body=extra)
        body = err.value.body
        assert (body["param"], body["code"]) == (param, "unknown_parameter"), body
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="router", messages=ask("hi"), max_tokens=4, temperature=7)
    assert err.value.body["param"] == "temperature"


def test_a_long_prompt_goes_to_a_model_with_room(sdk, stubs, agents):
    # The small model declares 4,096 tokens: routing leaves it out and says why.
    raw = sdk.chat.completions.with_raw_response.create(
        model="router", messages=ask(LONG_PROMPT), max_tokens=256, extra_body={"routing": {"allowed_models": ["small-agent", "large-agent"]}}
    )
    assert raw.parse().model == "large-agent"
    with grpc.insecure_channel(agents.gateway) as channel:
        decision = stubs.gateway_grpc.GatewayStub(channel).Route(
            stubs.gateway.GenerateRequest(
                messages=[stubs.common.ChatMessage(role="user", content=LONG_PROMPT)],
                params=stubs.common.GenerationParams(max_tokens=256),
            )
        )
    small = next(c for c in decision.candidates if c.model == "small-agent")
    assert not small.eligible
    assert small.excluded_because.startswith("context 4096 < prompt ") and small.excluded_because.endswith(" + max_tokens 256")
    # Pinned to it, the request is refused with the reason, not sent.
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="small-agent", messages=ask(LONG_PROMPT), max_tokens=256)
    assert "context 4096 < prompt" in err.value.body["message"]


def test_an_engine_refusing_the_length_fails_over(sdk, engines):
    big, large = engines[1], engines[2]
    before = (len(big.requests), len(large.requests))
    raw = sdk.chat.completions.with_raw_response.create(
        model="router", messages=ask(LONG_PROMPT), max_tokens=256, extra_body={"routing": {"allowed_tiers": ["large"]}}
    )
    # The cheaper large model was tried first; its engine refused the length.
    assert (len(big.requests) - before[0], len(large.requests) - before[1]) == (1, 1)
    assert raw.parse().model == "large-agent"
    # With nowhere else to go, the refusal reaches the client as OpenAI's.
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="big-undeclared", messages=ask(LONG_PROMPT), max_tokens=256)
    assert err.value.body["code"] == "context_length_exceeded"


def session_turns(sdk, session_headers):
    """Turn 1 is narrowed to the small model; turn 2 asks nothing, so the
    policy alone would pick a large one: affinity keeps the small one."""
    first = sdk.chat.completions.with_raw_response.create(
        model="router", messages=ask("plan a trip"), max_tokens=16, extra_headers=session_headers,
        extra_body={"routing": {"allowed_models": ["small-agent"]}},
    )
    history = ask("plan a trip") + [{"role": "assistant", "content": first.parse().choices[0].message.content}] + ask("to Lisbon")
    return first, history


def test_a_conversation_stays_on_its_model(sdk):
    first, history = session_turns(sdk, {"x-session-id": "trip-1"})
    assert (first.headers["x-routemesh-session"], first.headers["x-routemesh-affinity"]) == ("trip-1", "started")
    second = sdk.chat.completions.with_raw_response.create(model="router", messages=history, max_tokens=16, extra_headers={"x-session-id": "trip-1"})
    assert second.parse().model == "small-agent"
    assert second.headers["x-routemesh-affinity"] == "kept"
    # Without an id, the conversation is known by its opening turns.
    first, history = session_turns(sdk, {})
    assert first.headers["x-routemesh-session"].startswith("prefix:")
    second = sdk.chat.completions.with_raw_response.create(model="router", messages=history, max_tokens=16)
    assert (second.parse().model, second.headers["x-routemesh-affinity"]) == ("small-agent", "kept")
    assert second.headers["x-routemesh-session"] == first.headers["x-routemesh-session"]
    # A fresh conversation is routed on its own merits.
    fresh = sdk.chat.completions.create(model="router", messages=ask("something else entirely"), max_tokens=16)
    assert fresh.model != "small-agent"


def test_a_conversation_stays_on_its_model_across_replicas(engines):
    mesh = f"agents-{uuid.uuid4().hex[:8]}"
    one = Running(["up"], mesh_config(engines, redis_mesh=mesh))
    two = Running(["gateway"], mesh_config(engines, redis_mesh=mesh, with_workers=False))
    try:
        sdk_one = openai.OpenAI(base_url=one.http + "/v1", api_key="unused", max_retries=0, timeout=30)
        sdk_two = openai.OpenAI(base_url=two.http + "/v1", api_key="unused", max_retries=0, timeout=30)
        # The second gateway sees the pool through the registry first.
        models = {m.id for m in sdk_two.models.list().data}
        assert {"small-agent", "large-agent"} <= models, models
        first, history = session_turns(sdk_one, {})
        second = sdk_two.chat.completions.with_raw_response.create(model="router", messages=history, max_tokens=16)
        assert (second.parse().model, second.headers["x-routemesh-affinity"]) == ("small-agent", "kept")
        assert second.headers["x-routemesh-session"] == first.headers["x-routemesh-session"]
    finally:
        two.stop()
        one.stop()


def test_the_same_over_grpc(stubs, agents, engines):
    c, g = stubs.common, stubs.gateway
    tool = c.Tool(name="get_weather", description="The weather in a city", parameters_json=json.dumps(WEATHER_TOOL["function"]["parameters"]))
    with grpc.insecure_channel(agents.gateway) as channel:
        gateway = stubs.gateway_grpc.GatewayStub(channel)
        ask_tool = g.GenerateRequest(
            model="small-agent",
            messages=[c.ChatMessage(role="user", content="weather in Paris?")],
            params=c.GenerationParams(max_tokens=64, tools=[tool]),
        )
        resp = gateway.Generate(ask_tool)
        assert resp.finish_reason == c.FINISH_REASON_TOOL_CALLS
        call = resp.tool_calls[0]
        assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
        assert engines[0].last()["tools"][0]["function"]["parameters"] == WEATHER_TOOL["function"]["parameters"]
        # Streamed: the call arrives as pieces, the first naming it.
        pieces = [e.tool_call for e in gateway.GenerateStream(ask_tool) if e.WhichOneof("event") == "tool_call"]
        assert pieces[0].id == call.id and pieces[0].name == "get_weather"
        assert "".join(p.arguments for p in pieces) == call.arguments
        # The result goes back as a tool turn.
        answer = gateway.Generate(
            g.GenerateRequest(
                model="small-agent",
                messages=[
                    c.ChatMessage(role="user", content="weather in Paris?"),
                    c.ChatMessage(role="assistant", tool_calls=[call]),
                    c.ChatMessage(role="tool", tool_call_id=call.id, content="18C"),
                ],
                params=c.GenerationParams(max_tokens=64, tools=[tool]),
            )
        )
        assert answer.text == "The tool said: 18C"
        # A tool turn without the call it answers is named.
        with pytest.raises(grpc.RpcError) as err:
            gateway.Generate(g.GenerateRequest(messages=[c.ChatMessage(role="user", content="x"), c.ChatMessage(role="tool", content="18C")]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "messages[1].tool_call_id" in err.value.details()
        # A model's capabilities are listed.
        listed = {m.name: m.capabilities for m in gateway.ListModels(g.ListModelsRequest()).models}
        assert listed["small-agent"].tools and listed["small-agent"].context_tokens == 4096
        assert listed["large-agent"].context_tokens == 0
