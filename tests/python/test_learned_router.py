"""RouteLLM-style threshold routing through the OpenAI API, with the default
learned router on the GPT-4 / Mixtral pair it was trained on. Needs the
encoder assets (`./dev test` fetches them and sets ROUTEMESH_ASSETS)."""

import os
import re
import urllib.request

import openai
import pytest

from conftest import ROOT, Running

ASSETS = os.environ.get("ROUTEMESH_ASSETS")
pytestmark = pytest.mark.skipif(not ASSETS, reason="ROUTEMESH_ASSETS not set: run scripts/fetch-router-assets.sh (./dev test does)")

PAIR = f"""
gateway:
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  router: {{artifact: {ROOT / "router/artifacts/default"}, assets: {ASSETS}}}
workers:
  - id: gpt4-0
    model: gpt-4-1106-preview
    tier: large
    input_usd_per_mtok: 10
    output_usd_per_mtok: 30
    backend:
      sim: {{ttft_ms: {{median: 1}}, tokens_per_second: {{median: 0}}, output_tokens: {{median: 8}}}}
  - id: mixtral-0
    model: mistralai/Mixtral-8x7B-Instruct-v0.1
    tier: small
    input_usd_per_mtok: 0.6
    output_usd_per_mtok: 0.6
    backend:
      sim: {{ttft_ms: {{median: 1}}, tokens_per_second: {{median: 0}}, output_tokens: {{median: 8}}}}
"""

PROMPTS = [
    "What is the capital of France?",
    "Say hello in Spanish.",
    "Prove that there are infinitely many primes.",
    "A train leaves at 3pm going 60 mph; another at 4pm going 80 mph. When does the second catch up?",
    "Write a haiku about autumn.",
    "Explain the difference between TCP and UDP.",
    "Which of these is a mammal? (A) shark (B) dolphin (C) trout (D) squid",
    "Solve for x: 3x^2 - 12x + 9 = 0.",
    "Summarize the plot of Hamlet in two sentences.",
    "Janet has 16 eggs, eats 3 and bakes with 4. She sells the rest at $2 each. How much does she earn?",
    "What does the mitochondria do?",
    "Write a Python function that checks whether a string is a palindrome.",
    "In contract law, what is consideration?",
    "Translate 'good morning' into French.",
    "Derive the formula for the sum of a geometric series.",
    "Who wrote Pride and Prejudice?",
]


@pytest.fixture(scope="module")
def pair():
    running = Running(["up"], PAIR)
    yield running
    running.stop()


def strong_calls(client, model):
    count = 0
    for prompt in PROMPTS:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=4)
        assert raw.headers["x-routemesh-policy"] == "threshold"
        assert raw.headers["x-routemesh-quality-source"] == "router"
        count += raw.parse().model == "gpt-4-1106-preview"
    return count


def test_threshold_names_route_monotonically(pair):
    client = openai.OpenAI(base_url=pair.http + "/v1", api_key="-", max_retries=0, timeout=30)
    names = [m.id for m in client.models.list() if m.id.startswith("router-mf-")]
    assert len(names) >= 3, names
    thresholds = sorted(float(n.rsplit("-", 1)[1]) for n in names)
    low, mid, high = thresholds[0], thresholds[len(thresholds) // 2], thresholds[-1]
    counts = [strong_calls(client, f"router-mf-{t}") for t in (-1.0, low, mid, high, 1.0)]
    print("strong calls out of", len(PROMPTS), "at thresholds -1, low, mid, high, 1:", counts, (low, mid, high))
    assert counts[0] == len(PROMPTS) and counts[-1] == 0
    assert counts == sorted(counts, reverse=True), counts
    # The calibrated middle threshold splits these prompts between the two models.
    assert 0 < counts[2] < len(PROMPTS), counts


def test_the_pair_is_predicted_with_the_encoder_by_default(pair):
    """`router.path: auto`: the fast path is weaker on a strong/weak pair, so a
    pool holding the calibrated pair is predicted with the encoder."""
    client = openai.OpenAI(base_url=pair.http + "/v1", api_key="-", max_retries=0, timeout=30)
    client.chat.completions.create(model="router", messages=[{"role": "user", "content": "Is 91 a prime number? (auto path check)"}], max_tokens=4)
    text = urllib.request.urlopen("http://" + pair.ready["admin"] + "/metrics", timeout=10).read().decode()
    counts = {m.group(1): float(m.group(2)) for m in re.finditer(r'^routemesh_router_inference_seconds_count\{path="(\w+)"\} (\S+)$', text, re.M)}
    assert counts.get("full", 0) >= 1, counts
    assert counts.get("fast", 0) == 0, counts
    # The encoder was loaded at start for the pair, not on the first request.
    log = open(os.path.join(pair.dir.name, "log.txt")).read()
    assert "router encoder loaded for the pool's strong/weak pair" in log, log[-2000:]



def test_models_say_how_the_router_knows_them(pair):
    """The official SDK's model list carries routemesh's extension: both
    models of the pair are ones the router learned, under their own names."""
    client = openai.OpenAI(base_url=pair.http + "/v1", api_key="-", max_retries=0, timeout=30)
    models = {m.id: m for m in client.models.list()}
    for name in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"):
        extra = models[name].model_extra["routemesh"]
        assert extra["router_knowledge"] == "learned", extra
        assert extra["router_model"] == name, extra
