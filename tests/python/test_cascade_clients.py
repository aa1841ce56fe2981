"""A cascade (`strategy: cascade`) as other clients see it: Python grpcio
with stubs generated from proto/, and the official `openai` SDK. The learned
verifier of the default artifact judges the small model's answer; a
threshold of 1 (more than any answer proves) escalates every request, a
threshold of 0 accepts every one."""

import grpc
import openai
import pytest

from conftest import ROOT, Running


def cascade_mesh(threshold: float) -> str:
    return f"""
gateway:
  router: {{artifact: {ROOT / "router" / "artifacts" / "default"}}}
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  strategy: cascade
  cascade: {{verifier: learned, accept_threshold: {threshold}}}
workers:
  - id: small-0
    model: small-model
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    backend:
      sim: {{ttft_ms: {{median: 2}}, tokens_per_second: {{median: 2000}}, seed: 5}}
  - id: large-0
    model: large-model
    tier: large
    input_usd_per_mtok: 10
    output_usd_per_mtok: 30
    backend:
      sim: {{ttft_ms: {{median: 5}}, tokens_per_second: {{median: 1000}}, seed: 6}}
"""


@pytest.fixture(scope="module")
def escalating():
    running = Running(["up"], cascade_mesh(1.0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def accepting():
    running = Running(["up"], cascade_mesh(0.0))
    yield running
    running.stop()


def ask(stubs, prompt):
    return stubs.gateway.GenerateRequest(
        messages=[stubs.common.ChatMessage(role="user", content=prompt)],
        params=stubs.common.GenerationParams(max_tokens=12),
    )


def test_grpc_client_sees_the_escalation_and_the_steps(escalating, stubs):
    with grpc.insecure_channel(escalating.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        response = gw.Generate(ask(stubs, "Prove that there are infinitely many primes."), timeout=20)
        route = response.route
        assert route.strategy == "cascade" and route.escalated
        assert [(s.model, s.outcome) for s in route.cascade] == [("small-model", "escalated"), ("large-model", "answering")]
        first = route.cascade[0]
        assert first.verifier == "learned" and 0.0 <= first.score < 1.0 and first.threshold == 1.0
        assert response.usage.model == "large-model"
        assert response.text.startswith("[simulated large-model]")
        # The request's cost is both calls.
        assert response.usage.cost_usd > first.cost_usd > 0

        # Streamed: the route event (with the judged first step) comes first,
        # then only the large model's text.
        events = list(gw.GenerateStream(ask(stubs, "Prove that there are infinitely many primes."), timeout=20))
        assert events[0].WhichOneof("event") == "route"
        assert events[0].route.escalated and len(events[0].route.cascade) == 2
        text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
        assert text.startswith("[simulated large-model]") and "[simulated small-model]" not in text
        assert events[-1].WhichOneof("event") == "end"


def test_openai_sdk_sees_the_header_and_the_answering_model(escalating, accepting):
    for mesh, escalated, model in [(escalating, "true", "large-model"), (accepting, "false", "small-model")]:
        client = openai.OpenAI(base_url=mesh.http + "/v1", api_key="not-checked", max_retries=0, timeout=20)
        raw = client.chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=8
        )
        assert raw.headers["x-routemesh-strategy"] == "cascade"
        assert raw.headers["x-routemesh-escalated"] == escalated
        completion = raw.parse()
        assert completion.model == model
        stream = client.chat.completions.create(
            model="router", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=8, stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text.startswith(f"[simulated {model}]")
