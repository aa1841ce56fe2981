"""OpenTelemetry traces: an OTLP/gRPC receiver inside the test collects what
the gateway and worker processes export, and the spans must form one trace
from the client's `traceparent` through routing and the worker call into the
worker."""

import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import Running

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []  # (service name, span)

    def Export(self, request, context):
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                self.spans.extend((service, s) for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture()
def receiver():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, f"http://127.0.0.1:{port}"
    server.stop(grace=None)


def attrs(span):
    return {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}


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
                gw.Generate(req, metadata=[("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")], timeout=10)
        finally:
            gateway.stop()  # flushes its spans
    finally:
        worker.stop()

    deadline = time.monotonic() + 10
    names = set()
    while time.monotonic() < deadline:
        names = {s.name for _, s in collector.spans if s.trace_id.hex() == CLIENT_TRACE}
        if {"routemesh.generate", "routemesh.route", "routemesh.worker_call", "routemesh.worker.generate"} <= names:
            break
        time.sleep(0.1)
    spans = {s.name: (svc, s) for svc, s in collector.spans if s.trace_id.hex() == CLIENT_TRACE}
    assert {"routemesh.generate", "routemesh.route", "routemesh.worker_call", "routemesh.worker.generate"} <= set(spans), names

    svc, request = spans["routemesh.generate"]
    assert svc == "routemesh-gateway"
    assert request.parent_span_id.hex() == CLIENT_SPAN, "the gateway continues the client's trace"
    _, route = spans["routemesh.route"]
    assert route.parent_span_id == request.span_id
    assert attrs(route)["routemesh.model"] == "m" and attrs(route)["routemesh.worker"] == "traced-w"
    assert attrs(route)["routemesh.policy"] == "utility"
    _, call = spans["routemesh.worker_call"]
    assert call.parent_span_id == request.span_id
    svc, served = spans["routemesh.worker.generate"]
    assert svc == "routemesh-worker"
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
            gw.Generate(req, metadata=[("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")], timeout=10)
    finally:
        mesh.stop()  # flushes its spans

    wanted = {"routemesh.generate", "routemesh.worker_call", "routemesh.worker.generate"}
    deadline = time.monotonic() + 10
    names = set()
    while time.monotonic() < deadline:
        names = {s.name for _, s in collector.spans if s.trace_id.hex() == CLIENT_TRACE}
        if wanted <= names:
            break
        time.sleep(0.1)
    spans = {s.name: s for _, s in collector.spans if s.trace_id.hex() == CLIENT_TRACE}
    assert wanted <= set(spans), names
    assert spans["routemesh.generate"].parent_span_id.hex() == CLIENT_SPAN
    call = spans["routemesh.worker_call"]
    assert call.parent_span_id == spans["routemesh.generate"].span_id
    assert spans["routemesh.worker.generate"].parent_span_id == call.span_id, "the worker's span joins the trace under the gateway's call"
