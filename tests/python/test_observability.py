"""The admin port: Prometheus metrics (scraped by a real Prometheus server),
readiness, and the cost report with savings against the all-strongest-model
counterfactual."""

import json
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import grpc
import pytest


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def send(mesh, stubs, n, model=""):
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        for _ in range(n):
            req = stubs.gateway.GenerateRequest(
                model=model, messages=[stubs.common.ChatMessage(role="user", content="How are you?")], tenant="acme"
            )
            gw.Generate(req, timeout=10)


def test_metrics_readiness_and_cost_report(mesh, stubs):
    admin = "http://" + mesh.ready["admin"]
    send(mesh, stubs, 5, model="small-model")
    send(mesh, stubs, 2, model="large-model")
    status, text = get(admin + "/metrics")
    assert status == 200
    for name in (
        "routemesh_requests_total",
        "routemesh_request_duration_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_client_token_usage_bucket",
        "routemesh_request_cost_usd_sum",
        "routemesh_request_counterfactual_cost_usd_sum",
        "routemesh_routing_decisions_total",
        "routemesh_worker_healthy",
    ):
        assert name in text, name
    assert 'routemesh_requests_total{api="grpc",method="Generate",code="Ok"}' in text
    assert 'tenant="acme"' in text

    status, body = get(admin + "/readyz")
    assert status == 200 and json.loads(body)["healthy_workers"] == 2

    # Cost: 5 small + 2 large calls against "everything on large-model".
    deadline = time.monotonic() + 10
    while True:
        report = json.loads(get(admin + "/v1/cost?hours=1")[1])
        acme = [t for t in report["by_tenant"] if t["name"] == "acme"]
        if acme and acme[0]["requests"] >= 7:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    assert report["counterfactual"]["model"] == "large-model"
    by_model = {m["name"]: m for m in report["by_model"]}
    assert by_model["large-model"]["savings_usd"] == pytest.approx(0.0, abs=1e-12)
    assert by_model["small-model"]["savings_usd"] > 0
    assert 0 < report["total"]["savings_share"] < 1
    total = report["total"]
    assert total["savings_usd"] == pytest.approx(total["counterfactual_usd"] - total["cost_usd"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (Debian package prometheus)")
def test_a_real_prometheus_scrapes_the_gateway(mesh, stubs):
    send(mesh, stubs, 3, model="small-model")
    work = pathlib.Path(tempfile.mkdtemp(prefix="routemesh-prom-"))
    port = free_port()
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: routemesh\n    static_configs: [{{targets: ['{mesh.ready['admin']}']}}]\n"
    )
    log = open(work / "log.txt", "w")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=log,
    )
    try:
        query = urllib.parse.quote('sum(routemesh_requests_total{code="Ok"})')
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline:
            try:
                body = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?query={query}")[1])
                result = body["data"]["result"]
                if result and float(result[0]["value"][1]) >= 3:
                    value = float(result[0]["value"][1])
                    break
            except OSError:
                pass
            time.sleep(0.25)
        assert value is not None, (work / "log.txt").read_text()[-2000:]
        up = json.loads(get(f"http://127.0.0.1:{port}/api/v1/query?query=up")[1])["data"]["result"]
        assert up[0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
