"""The gateway through real gRPC clients: Python grpcio with stubs generated
from proto/, grpcio health and reflection, and grpcurl."""

import json
import os
import pathlib
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

GRPCURL = str(pathlib.Path(sys.executable).parent / "grpcurl")


def ask(stubs, prompt, **kwargs):
    return stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content=prompt)], **kwargs)


def test_unary_generate_reports_model_usage_and_route(mesh, stubs):
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        resp, call = gw.Generate.with_call(ask(stubs, "What is 2+2?", request_id="py-1"), timeout=10)
        assert dict(call.initial_metadata())["x-request-id"] == "py-1"
        assert resp.request_id == "py-1"
        assert resp.usage.model in ("small-model", "large-model")
        assert resp.usage.worker_id in ("small-0", "large-0")
        assert resp.usage.completion_tokens > 0 and resp.usage.cost_usd > 0
        assert resp.usage.simulated
        assert resp.route.model == resp.usage.model
        assert len(resp.route.candidates) == 2 and resp.route.reason


def test_pinned_streaming_sends_route_deltas_then_usage(mesh, stubs):
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        params = stubs.common.GenerationParams(max_tokens=6)
        events = list(gw.GenerateStream(ask(stubs, "Tell me a story.", model="small-model", params=params), timeout=10))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "route" and kinds[-1] == "end"
        assert set(kinds[1:-1]) == {"delta"}
        end = events[-1].end
        assert end.usage.model == "small-model" and end.usage.completion_tokens == 6
        assert end.finish_reason == stubs.common.FINISH_REASON_LENGTH
        text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
        assert text.startswith("[simulated small-model]")


@pytest.mark.parametrize(
    "build,code,needle",
    [
        (lambda s: s.gateway.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (lambda s: ask(s, "hi", model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (lambda s: ask(s, "hi", params=s.common.GenerationParams(top_p=2.0)), grpc.StatusCode.INVALID_ARGUMENT, "params.top_p"),
        (lambda s: ask(s, "hi", hints=s.common.RoutingHints(quality_floor=0.99)), grpc.StatusCode.FAILED_PRECONDITION, "quality_floor"),
    ],
)
def test_bad_requests_get_codes_naming_the_field(mesh, stubs, build, code, needle):
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        for rpc in (gw.Generate, lambda r, timeout: list(gw.GenerateStream(r, timeout=timeout))):
            with pytest.raises(grpc.RpcError) as err:
                rpc(build(stubs), timeout=10)
            assert err.value.code() == code
            assert needle in err.value.details()


def test_malformed_protobuf_is_rejected_cleanly(mesh):
    with grpc.insecure_channel(mesh.gateway) as channel:
        raw = channel.unary_unary("/routemesh.v1.Gateway/Generate", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
        # The client's mistake, as the README's table says, with tonic's reason.
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "decode" in err.value.details()
        # The same for a stream.
        raw_stream = channel.unary_stream("/routemesh.v1.Gateway/GenerateStream", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            list(raw_stream(b"\xff\xff\xff\xff\x0f garbage", timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The gateway is still fine afterwards.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_route_list_models_and_feedback(mesh, stubs):
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        models = gw.ListModels(stubs.gateway.ListModelsRequest(), timeout=10).models
        assert sorted(m.name for m in models) == ["large-model", "small-model"]
        decision = gw.Route(ask(stubs, "hi", hints=stubs.common.RoutingHints(allowed_models=["small-model"])), timeout=10)
        assert decision.model == "small-model" and decision.worker_id == "small-0"
        served = gw.Generate(ask(stubs, "hi", request_id="py-feedback"), timeout=10)
        fb = gw.Feedback(stubs.gateway.FeedbackRequest(request_id="py-feedback", score=0.25), timeout=10)
        assert fb.model == served.usage.model


def test_health_and_reflection_on_gateway_and_worker(mesh, stubs):
    worker = mesh.ready["workers"][0]["endpoint"].removeprefix("http://")
    for target, service in ((mesh.gateway, "routemesh.v1.Gateway"), (worker, "routemesh.v1.Worker")):
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
            db = ProtoReflectionDescriptorDatabase(channel)
            services = set(db.get_services())
            assert {service, "grpc.health.v1.Health"} <= services
            desc = db.FindFileContainingSymbol(service)
            assert desc.package == "routemesh.v1"


def grpcurl(*args):
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_describes_and_calls(mesh):
    listed = grpcurl(mesh.gateway, "list")
    assert listed.returncode == 0, listed.stderr
    assert "routemesh.v1.Gateway" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(mesh.gateway, "describe", "routemesh.v1.Gateway")
    assert "rpc GenerateStream" in described.stdout
    called = grpcurl("-d", json.dumps({"messages": [{"role": "user", "content": "Hello"}], "model": "large-model"}), mesh.gateway, "routemesh.v1.Gateway/Generate")
    assert called.returncode == 0, called.stderr
    body = json.loads(called.stdout)
    assert body["usage"]["model"] == "large-model"
    bad = grpcurl("-d", "{}", mesh.gateway, "routemesh.v1.Gateway/Generate")
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "messages" in bad.stderr


def test_quickstart_demo_mesh_answers(demo, stubs):
    """The embedded demo of the quickstart: three simulated workers, plus
    SmolLM2 on the CPU when its model file is present; routed answers."""
    local = pathlib.Path(os.environ.get("ROUTEMESH_LOCAL_MODEL") or ".cache/routemesh/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    with grpc.insecure_channel(demo.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        models = gw.ListModels(stubs.gateway.ListModelsRequest(), timeout=10).models
        assert len(models) == (4 if local.is_file() else 3)
        assert {m.tier for m in models} == {stubs.common.TIER_SMALL, stubs.common.TIER_LARGE}
        resp = gw.Generate(ask(stubs, "What is the capital of France?", params=stubs.common.GenerationParams(max_tokens=8)), timeout=20)
        assert resp.route.reason and resp.usage.model == resp.route.model
        if local.is_file():
            # The real small model answers when pinned, with real token counts.
            pinned = ask(stubs, "What is the capital of France?", params=stubs.common.GenerationParams(max_tokens=3, temperature=0))
            pinned.model = "smollm2-135m-instruct"
            resp = gw.Generate(pinned, timeout=30)
            assert resp.text == "L'É" and resp.usage.completion_tokens == 3 and not resp.usage.simulated
