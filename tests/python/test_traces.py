"""OpenTelemetry traces in the GenAI semantic conventions (v1.37.0): an
OTLP/gRPC receiver inside the test collects what the gateway and worker
processes export, and the spans must form one trace from the client's
`traceparent` through the gateway's server span, routing, a `chat {model}`
span per worker call, the worker's server span and its `chat {model}` call
to the engine, whose `traceparent` the mock engine records. Served,
failed-over, refused and streamed requests each say so in their spans'
names, attributes and status."""

import hashlib
import secrets
import time
from concurrent import futures

import grpc
import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import Running
from mock_engine import MockEngine

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
KEY = "sk-routemesh-traces-acme"

SERVER, CLIENT = 2, 3  # SpanKind
UNSET, ERROR = 0, 2  # Status.StatusCode


def value_of(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(span_or_resource):
    return {a.key: value_of(a.value) for a in span_or_resource.attributes}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []  # (resource attributes, span)

    def Export(self, request, context):
        for rs in request.resource_spans:
            resource = attrs(rs.resource)
            for ss in rs.scope_spans:
                self.spans.extend((resource, s) for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id):
        return [(r, s) for r, s in list(self.spans) if s.trace_id.hex() == trace_id]

    def wait_for(self, trace_id, names, timeout=15):
        """The trace's spans once every name in `names` has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            have = [s.name for _, s in spans]
            if all(have.count(n) >= names.count(n) for n in set(names)) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        missing = [n for n in names if [s.name for _, s in spans].count(n) < names.count(n)]
        assert not missing, f"missing {missing}; have {sorted(s.name for _, s in spans)}"
        return spans


def start_receiver():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, collector, f"http://127.0.0.1:{port}"


@pytest.fixture()
def receiver():
    server, collector, endpoint = start_receiver()
    yield collector, endpoint
    server.stop(grace=None)


def named(spans, name):
    found = [s for _, s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}"
    return found[0]


def traceparent(trace_id):
    return f"00-{trace_id}-{CLIENT_SPAN}-01"


def new_trace():
    return secrets.token_hex(16)


def test_one_trace_from_client_through_gateway_into_worker(receiver, stubs, monkeypatch):
    collector, endpoint = receiver
    # Export batches quickly rather than every 5 s.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    worker = Running(["worker"], f"""
tracing: {{otlp_endpoint: "{endpoint}"}}
workers:
  - id: traced-w
    model: m
    tier: small
    listen: 127.0.0.1:0
    backend:
      sim: {{ttft_ms: {{median: 1}}, tokens_per_second: {{median: 0}}, output_tokens: {{median: 4}}}}
""")
    try:
        gateway = Running(["gateway"], f"""
tracing: {{otlp_endpoint: "{endpoint}"}}
gateway:
  router: {{enabled: false}}
  listen: 127.0.0.1:0
  http_listen: null
  admin_listen: null
static_workers:
  - {{id: traced-w, model: m, tier: small, endpoint: "{worker.ready['workers'][0]['endpoint']}"}}
""")
        try:
            with grpc.insecure_channel(gateway.gateway) as channel:
                gw = stubs.gateway_grpc.GatewayStub(channel)
                req = stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="trace me")])
                gw.Generate(req, metadata=[("traceparent", traceparent(CLIENT_TRACE))], timeout=10)
        finally:
            gateway.stop()  # flushes its spans
    finally:
        worker.stop()

    spans = collector.wait_for(CLIENT_TRACE, ["routemesh.v1.Gateway/Generate", "routemesh.route", "chat m", "routemesh.v1.Worker/Generate"])
    request = named(spans, "routemesh.v1.Gateway/Generate")
    resource = next(r for r, s in spans if s is request)
    assert resource["service.name"] == "routemesh-gateway"
    assert request.kind == SERVER
    assert request.parent_span_id.hex() == CLIENT_SPAN, "the gateway continues the client's trace"
    a = attrs(request)
    assert (a["rpc.system"], a["rpc.service"], a["rpc.method"], a["rpc.grpc.status_code"]) == ("grpc", "routemesh.v1.Gateway", "Generate", 0)
    # Nothing pinned: the gateway's router chose.
    assert a["gen_ai.request.model"] == "router" and a["gen_ai.response.model"] == "m"
    assert a["routemesh.request_id"], "the request id the gateway made is on the root span"
    route = named(spans, "routemesh.route")
    assert route.parent_span_id == request.span_id
    assert attrs(route)["routemesh.model"] == "m" and attrs(route)["routemesh.worker"] == "traced-w"
    assert attrs(route)["routemesh.policy"] == "utility"
    call = named(spans, "chat m")
    assert call.kind == CLIENT and call.parent_span_id == request.span_id
    served = named(spans, "routemesh.v1.Worker/Generate")
    assert next(r for r, s in spans if s is served)["service.name"] == "routemesh-worker"
    assert served.parent_span_id == call.span_id, "the worker's span joins the trace under the gateway's call"


def test_an_in_process_worker_call_stays_in_the_trace(receiver, stubs, monkeypatch):
    """`routemesh up` calls its own worker without the network; the worker's
    span must still be the child of the gateway's call span, through the
    same metadata as over a connection."""
    collector, endpoint = receiver
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    mesh = Running(["up"], f"""
tracing: {{otlp_endpoint: "{endpoint}"}}
gateway:
  router: {{enabled: false}}
  listen: 127.0.0.1:0
  http_listen: null
  admin_listen: null
workers:
  - id: own-w
    model: m
    tier: small
    backend:
      sim: {{ttft_ms: {{median: 1}}, tokens_per_second: {{median: 0}}, output_tokens: {{median: 4}}}}
""")
    try:
        with grpc.insecure_channel(mesh.gateway) as channel:
            gw = stubs.gateway_grpc.GatewayStub(channel)
            req = stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="trace me")])
            gw.Generate(req, metadata=[("traceparent", traceparent(CLIENT_TRACE))], timeout=10)
    finally:
        mesh.stop()  # flushes its spans

    spans = collector.wait_for(CLIENT_TRACE, ["routemesh.v1.Gateway/Generate", "chat m", "routemesh.v1.Worker/Generate"])
    request = named(spans, "routemesh.v1.Gateway/Generate")
    assert request.parent_span_id.hex() == CLIENT_SPAN
    call = named(spans, "chat m")
    assert call.parent_span_id == request.span_id
    assert named(spans, "routemesh.v1.Worker/Generate").parent_span_id == call.span_id, "the worker's span joins the trace under the gateway's call"


# -- GenAI conventions across openai workers in front of mock engines -----

LONG_PROMPT = "Summarise this report. " + "The quarterly figures rose again. " * 700  # ~6,000 tokens


@pytest.fixture(scope="module")
def traced():
    """A gateway (API keys on) and an agent process with two `openai`
    workers, exporting to one receiver: `primary` (preferred by its prior,
    its engine refuses prompts over 4,096 tokens) and `fallback`."""
    server, collector, endpoint = start_receiver()
    engines = {"primary": MockEngine("primary-engine", context=4096), "fallback": MockEngine("fallback-engine")}
    patch = pytest.MonkeyPatch()
    patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    # What the Helm chart sets from the downward API.
    patch.setenv("K8S_POD_NAME", "routemesh-gateway-7d9f-abcde")
    patch.setenv("K8S_NAMESPACE_NAME", "llm")
    started = []
    try:
        worker = Running(["worker"], f"""
tracing: {{otlp_endpoint: "{endpoint}"}}
workers:
  - id: primary-0
    model: primary
    tier: large
    input_usd_per_mtok: 1
    output_usd_per_mtok: 2
    listen: 127.0.0.1:0
    backend: {{openai: {{base_url: "{engines['primary'].url}", engine_model: primary-engine}}}}
  - id: fallback-0
    model: fallback
    tier: large
    input_usd_per_mtok: 1
    output_usd_per_mtok: 2
    listen: 127.0.0.1:0
    backend: {{openai: {{base_url: "{engines['fallback'].url}", engine_model: fallback-engine}}}}
""")
        started.append(worker)
        endpoints = {w["id"]: w["endpoint"] for w in worker.ready["workers"]}
        gateway = Running(["gateway"], f"""
tracing: {{otlp_endpoint: "{endpoint}"}}
gateway:
  router: {{enabled: false}}
  cost_weight: 0
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: null
  auth:
    keys:
      - tenant: acme
        sha256: {hashlib.sha256(KEY.encode()).hexdigest()}
static_workers:
  - {{id: primary-0, model: primary, tier: large, quality_prior: 0.9, input_usd_per_mtok: 1, output_usd_per_mtok: 2, endpoint: "{endpoints['primary-0']}"}}
  - {{id: fallback-0, model: fallback, tier: large, quality_prior: 0.3, input_usd_per_mtok: 1, output_usd_per_mtok: 2, endpoint: "{endpoints['fallback-0']}"}}
""")
        started.append(gateway)

        class Traced:
            pass

        t = Traced()
        t.collector, t.engines, t.gateway = collector, engines, gateway
        t.sdk = openai.OpenAI(base_url=gateway.http + "/v1", api_key=KEY, max_retries=0, timeout=30)
        yield t
    finally:
        for running in reversed(started):
            running.stop()
        for engine in engines.values():
            engine.stop()
        patch.undo()
        server.stop(grace=None)


def engine_call_of(engine, trace_id):
    """The traceparent and response id of the engine's request in `trace_id`."""
    calls = [(tp, rid) for tp, rid in zip(engine.traceparents, engine.response_ids) if tp and tp.split("-")[1] == trace_id]
    assert len(calls) == 1, f"the engine got {engine.traceparents} for trace {trace_id}"
    return calls[0]


def assert_engine_span(spans, engine, trace_id, worker_span, model):
    """The agent's call to its engine: a `chat {engine model}` client span
    under the worker's span, whose context the engine received."""
    span = named(spans, f"chat {model}")
    assert span.kind == CLIENT and span.parent_span_id == worker_span.span_id
    sent, response_id = engine_call_of(engine, trace_id)
    assert sent == f"00-{trace_id}-{span.span_id.hex()}-01", "the engine's parent is the agent's engine span"
    a = attrs(span)
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"]) == ("chat", "openai", model)
    assert a["http.request.method"] == "POST" and a["server.address"] == "127.0.0.1"
    return span, a, response_id


def test_a_served_request_in_genai_conventions(traced):
    trace = new_trace()
    raw = traced.sdk.chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "trace me"}], max_tokens=16, temperature=0.5, top_p=0.9,
        extra_headers={"traceparent": traceparent(trace)},
    )
    done = raw.parse()
    spans = traced.collector.wait_for(trace, ["POST /v1/chat/completions", "routemesh.route", "chat primary",
                                              "routemesh.v1.Worker/Generate", "chat primary-engine"])

    root = named(spans, "POST /v1/chat/completions")
    assert root.kind == SERVER and root.parent_span_id.hex() == CLIENT_SPAN
    assert root.status.code == UNSET
    a = attrs(root)
    assert "rpc.system" not in a, "an HTTP request is not labelled as gRPC"
    assert (a["http.request.method"], a["http.route"], a["url.path"], a["url.scheme"], a["http.response.status_code"]) == (
        "POST", "/v1/chat/completions", "/v1/chat/completions", "http", 200)
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"]) == ("chat", "routemesh", "primary")
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"], a["gen_ai.request.top_p"]) == (16, 0.5, pytest.approx(0.9))
    assert a["routemesh.request_id"] == raw.headers["x-request-id"] and a["gen_ai.response.id"] == raw.headers["x-request-id"]
    assert a["gen_ai.response.model"] == done.model == "primary"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (done.usage.prompt_tokens, done.usage.completion_tokens)
    assert a["routemesh.cost_usd"] == pytest.approx(done.usage.model_extra["cost_usd"]) and a["routemesh.cost_usd"] > 0
    assert a["routemesh.policy"] == raw.headers["x-routemesh-policy"]
    assert a["routemesh.predicted_quality"] == pytest.approx(float(raw.headers["x-routemesh-predicted-quality"]), abs=1e-4)
    assert (a["routemesh.calls"], a["routemesh.tenant"], a["routemesh.worker"]) == (1, "acme", "primary-0")

    resource = next(r for r, s in spans if s is root)
    assert resource["service.name"] == "routemesh-gateway" and resource["service.version"]
    assert resource["service.instance.id"]
    assert (resource["k8s.pod.name"], resource["k8s.namespace.name"]) == ("routemesh-gateway-7d9f-abcde", "llm")

    assert named(spans, "routemesh.route").parent_span_id == root.span_id
    call = named(spans, "chat primary")
    assert call.kind == CLIENT and call.parent_span_id == root.span_id and call.status.code == UNSET
    c = attrs(call)
    assert (c["gen_ai.operation.name"], c["gen_ai.provider.name"], c["gen_ai.request.model"], c["gen_ai.response.model"]) == (
        "chat", "routemesh", "primary", "primary")
    assert (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"]) == (done.usage.prompt_tokens, done.usage.completion_tokens)
    assert (c["rpc.grpc.status_code"], c["routemesh.worker"], c["gen_ai.request.max_tokens"]) == (0, "primary-0", 16)

    worker = named(spans, "routemesh.v1.Worker/Generate")
    assert worker.kind == SERVER and worker.parent_span_id == call.span_id
    assert next(r for r, s in spans if s is worker)["service.name"] == "routemesh-worker"
    assert attrs(worker)["routemesh.request_id"] == a["routemesh.request_id"]

    engine, e, response_id = assert_engine_span(spans, traced.engines["primary"], trace, worker, "primary-engine")
    assert engine.status.code == UNSET
    assert (e["http.response.status_code"], e["gen_ai.response.id"], e["gen_ai.response.model"]) == (200, response_id, "primary-engine")
    assert e["gen_ai.response.finish_reasons"] == ["stop"] and e["gen_ai.usage.output_tokens"] == done.usage.completion_tokens
    assert e["gen_ai.request.temperature"] == 0.5


def test_a_failed_over_request_shows_each_attempt(traced):
    trace = new_trace()
    done = traced.sdk.chat.completions.create(
        model="router", messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=64,
        extra_headers={"traceparent": traceparent(trace)},
    )
    assert done.model == "fallback"
    spans = traced.collector.wait_for(trace, ["POST /v1/chat/completions", "chat primary", "chat fallback",
                                              "chat primary-engine", "chat fallback-engine"]
                                      + ["routemesh.v1.Worker/Generate"] * 2)
    root = named(spans, "POST /v1/chat/completions")
    a = attrs(root)
    assert (a["gen_ai.request.model"], a["gen_ai.response.model"], a["routemesh.calls"]) == ("router", "fallback", 2)
    assert root.status.code == UNSET and "error.type" not in a

    failed, answered = named(spans, "chat primary"), named(spans, "chat fallback")
    assert failed.parent_span_id == answered.parent_span_id == root.span_id
    assert failed.end_time_unix_nano <= answered.start_time_unix_nano, "the second attempt follows the first"
    f = attrs(failed)
    assert failed.status.code == ERROR and failed.status.message
    assert (f["error.type"], f["rpc.grpc.status_code"]) == ("OUT_OF_RANGE", 11)
    assert "gen_ai.usage.output_tokens" not in f
    assert answered.status.code == UNSET and attrs(answered)["gen_ai.usage.output_tokens"] > 0

    workers = {s.parent_span_id: s for _, s in spans if s.name == "routemesh.v1.Worker/Generate"}
    refused_at_worker = workers[failed.span_id]
    # The worker refused the caller's prompt: the caller's error, not the worker's.
    assert attrs(refused_at_worker)["error.type"] == "OUT_OF_RANGE" and refused_at_worker.status.code == UNSET
    engine, e, _ = assert_engine_span(spans, traced.engines["primary"], trace, refused_at_worker, "primary-engine")
    assert engine.status.code == ERROR
    assert (e["error.type"], e["http.response.status_code"]) == ("context_length_exceeded", 400)
    assert_engine_span(spans, traced.engines["fallback"], trace, workers[answered.span_id], "fallback-engine")


def test_refused_requests_get_a_span(traced, stubs):
    http_trace, grpc_trace = new_trace(), new_trace()
    bad = openai.OpenAI(base_url=traced.gateway.http + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="primary", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                    extra_headers={"traceparent": traceparent(http_trace)})
    with grpc.insecure_channel(traced.gateway.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        req = stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="hi")])
        with pytest.raises(grpc.RpcError) as err:
            gw.Generate(req, metadata=[("traceparent", traceparent(grpc_trace)), ("authorization", "Bearer sk-wrong")], timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    spans = traced.collector.wait_for(http_trace, ["POST /v1/chat/completions"])
    refused = named(spans, "POST /v1/chat/completions")
    a = attrs(refused)
    assert refused.parent_span_id.hex() == CLIENT_SPAN
    assert (a["http.response.status_code"], a["error.type"], a["gen_ai.request.model"]) == (401, "401", "primary")
    # A 4xx is the client's error: the server span's status stays unset.
    assert refused.status.code == UNSET
    assert [s.name for _, s in spans] == ["POST /v1/chat/completions"], "nothing was called"

    spans = traced.collector.wait_for(grpc_trace, ["routemesh.v1.Gateway/Generate"])
    refused = named(spans, "routemesh.v1.Gateway/Generate")
    a = attrs(refused)
    assert refused.kind == SERVER and refused.parent_span_id.hex() == CLIENT_SPAN
    assert (a["rpc.grpc.status_code"], a["error.type"], a["rpc.method"]) == (16, "UNAUTHENTICATED", "Generate")
    assert len(spans) == 1


def test_a_streamed_request_is_traced_to_its_end(traced):
    trace = new_trace()
    chunks = list(traced.sdk.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "stream me"}], max_tokens=16, stream=True,
        stream_options={"include_usage": True}, extra_headers={"traceparent": traceparent(trace)},
    ))
    usage = chunks[-1].usage
    spans = traced.collector.wait_for(trace, ["POST /v1/chat/completions", "chat primary",
                                              "routemesh.v1.Worker/GenerateStream", "chat primary-engine"])
    root = named(spans, "POST /v1/chat/completions")
    a = attrs(root)
    assert (a["http.response.status_code"], a["gen_ai.response.model"], a["gen_ai.response.finish_reasons"]) == (200, "primary", ["stop"])
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert a["routemesh.request_id"] == chunks[0].id.removeprefix("chatcmpl-")
    call = named(spans, "chat primary")
    assert call.parent_span_id == root.span_id
    assert attrs(call)["gen_ai.usage.output_tokens"] == usage.completion_tokens
    # The request's span lasts until the stream's end, past the worker call.
    assert root.end_time_unix_nano >= call.end_time_unix_nano
    worker = named(spans, "routemesh.v1.Worker/GenerateStream")
    assert worker.parent_span_id == call.span_id
    engine, e, response_id = assert_engine_span(spans, traced.engines["primary"], trace, worker, "primary-engine")
    assert (e["gen_ai.response.id"], e["gen_ai.usage.output_tokens"]) == (response_id, usage.completion_tokens)
    assert worker.end_time_unix_nano >= engine.start_time_unix_nano
