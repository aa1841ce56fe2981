"""The OpenAI-compatible HTTP API through the official `openai` SDK and curl,
against the real gateway binary with real (simulated-engine) workers."""

import hashlib
import json
import subprocess

import grpc
import openai
import pytest

from conftest import FAST_MESH, Running

KEY = "sk-routemesh-test-acme"


@pytest.fixture(scope="module")
def sdk(mesh):
    return openai.OpenAI(base_url=mesh.http + "/v1", api_key="not-checked", max_retries=0, timeout=20)


def chat(content):
    return [{"role": "user", "content": content}]


def test_chat_completion_routed_with_explaining_headers(sdk):
    raw = sdk.chat.completions.with_raw_response.create(model="router", messages=chat("What is 2+2?"), max_tokens=8)
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model in ("small-model", "large-model")
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content.startswith(f"[simulated {resp.model}]")
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert raw.headers["x-routemesh-model"] == resp.model
    assert raw.headers["x-routemesh-policy"] == "utility"
    assert 0.0 <= float(raw.headers["x-routemesh-predicted-quality"]) <= 1.0
    assert float(raw.headers["x-routemesh-expected-cost-usd"]) > 0
    assert resp.id == "chatcmpl-" + raw.headers["x-request-id"]


def test_streaming_ends_with_usage_and_done(sdk):
    stream = sdk.chat.completions.create(
        model="small-model", messages=chat("Tell me a story."), max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[simulated small-model]")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(c.model == "small-model" for c in chunks)


def test_pinned_model_and_routing_hints(sdk):
    assert sdk.chat.completions.create(model="large-model", messages=chat("hi"), max_tokens=4).model == "large-model"
    resp = sdk.chat.completions.create(
        model="router", messages=chat("hi"), max_tokens=4, extra_body={"routing": {"allowed_tiers": ["small"], "max_cost_usd": 0.01}}
    )
    assert resp.model == "small-model"


def test_errors_are_openai_shaped_with_matching_codes(sdk):
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="gpt-17", messages=chat("hi"))
    assert "gpt-17" in err.value.message
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="router", messages=chat("hi"), temperature=5)
    # OpenAI's own spelling of the field, in `param` and in the message.
    assert err.value.body["param"] == "temperature"
    assert err.value.body["message"].startswith("temperature: ")
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="router", messages=[])
    assert "messages" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="router", messages=chat("hi"), n=2)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="router", messages=chat("hi"), extra_body={"routing": {"quality_floor": 0.99}})
    assert "quality_floor" in err.value.message


def test_model_list_has_the_router_and_the_pool(sdk):
    ids = {m.id for m in sdk.models.list()}
    assert ids == {"router", "small-model", "large-model"}
    one = sdk.models.retrieve("small-model")
    assert one.id == "small-model" and one.owned_by == "routemesh"
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-17")
    assert err.value.body["code"] == "model_not_found"


def curl(*args):
    return subprocess.run(["curl", "-sS", "-i", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


def test_curl_plain_stream_and_bad_bodies(mesh):
    url = mesh.http + "/v1/chat/completions"
    body = json.dumps({"model": "router", "messages": chat("Hello"), "max_tokens": 5})
    plain = curl(url, "-H", "content-type: application/json", "-d", body)
    assert plain.returncode == 0 and " 200 " in plain.stdout.splitlines()[0]
    assert json.loads(plain.stdout.split("\n\n", 1)[1])["choices"][0]["message"]["content"]

    streamed = curl("-N", url, "-H", "content-type: application/json", "-d", body[:-1] + ', "stream": true}')
    assert "content-type: text/event-stream" in streamed.stdout.lower()
    assert streamed.stdout.rstrip().endswith("data: [DONE]")

    broken = curl(url, "-H", "content-type: application/json", "-d", '{"model": "router", "messages": [')
    assert " 400 " in broken.stdout.splitlines()[0]
    error = json.loads(broken.stdout.split("\n\n", 1)[1])["error"]
    assert error["type"] == "invalid_request_error" and "not valid JSON" in error["message"]

    missing = curl(mesh.http + "/v1/nothing")
    assert " 404 " in missing.stdout.splitlines()[0]

    # Over gateway.max_request_bytes (4 MiB by default): OpenAI's error shape, 413.
    huge = json.dumps({"model": "router", "messages": chat("x" * (5 << 20))})
    too_big = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "20", url, "-H", "content-type: application/json", "-H", "Expect:", "--data-binary", "@-"],
        input=huge, capture_output=True, text=True, timeout=30,
    )
    assert " 413 " in too_big.stdout.splitlines()[0]
    error = json.loads(too_big.stdout.split("\n\n", 1)[1])["error"]
    assert error["code"] == "request_too_large" and "max_request_bytes" in error["message"]


@pytest.fixture(scope="module")
def keyed_mesh():
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = FAST_MESH.replace(
        "  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n", f"  http_listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  auth:\n    keys:\n      - tenant: acme\n        sha256: {digest}\n"
    )
    running = Running(["up"], config)
    yield running
    running.stop()


def test_api_keys_map_to_tenants_on_both_apis(keyed_mesh, stubs):
    base = keyed_mesh.http + "/v1"
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).chat.completions.create(model="router", messages=chat("hi"))
    assert "invalid API key" in err.value.message
    good = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    assert good.chat.completions.create(model="router", messages=chat("hi"), max_tokens=3).choices[0].message.content

    with grpc.insecure_channel(keyed_mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        req = stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="hi")])
        with pytest.raises(grpc.RpcError) as err:
            gw.Generate(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in err.value.details()
        assert gw.Generate(req, metadata=[("authorization", f"Bearer {KEY}")], timeout=10).text
        other = stubs.gateway.GenerateRequest(messages=req.messages, tenant="someone-else")
        with pytest.raises(grpc.RpcError) as err:
            gw.Generate(other, metadata=[("authorization", f"Bearer {KEY}")], timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "acme" in err.value.details()
