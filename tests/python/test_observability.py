"""The admin port: Prometheus metrics (scraped by a real Prometheus server),
readiness, and the cost report with savings against the all-strongest-model
counterfactual."""

import json
import re
import urllib.error
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


# --- The README's metrics table against a live gateway --------------------

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "rm-observability-test-key"

# Documented metrics a gateway exports only when the feature they measure is
# configured or has run; this test's gateway has none of them. Each must still
# be declared in the gateway's source.
CONDITIONAL = {
    "routemesh_cascade_verdicts_total": "strategy: cascade",
    "routemesh_cascade_escalations_total": "strategy: cascade",
    "routemesh_cascade_skips_total": "strategy: cascade with routing",
    "routemesh_cascade_verify_duration_seconds": "strategy: cascade",
    "routemesh_router_inference_seconds": "the learned router enabled",
    "routemesh_feedback_exemplars": "feedback received",
    "routemesh_tls_reloads_total": "TLS certificates reloaded",
    "routemesh_connections_refused_total": "a port full of busy connections",
    "routemesh_connections_evicted_total": "a full port",
    "routemesh_pool_kv_cache_usage": "an engine that reports its KV cache (vLLM, SGLang)",
    "routemesh_router_batches_total": "the learned router batching full-path prompts",
}


def documented_metrics():
    """{metric: set of labels} from README's metrics table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| metric | type | labels | what |"):]
    out = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        out[name] = {l.strip().strip("`") for l in cells[2].split(",") if l.strip()}
    return out


def exported(text):
    """{metric family: set of labels} from a /metrics page."""
    families = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        name = name.split(" ")[0]
        labels = set(re.findall(r'(\w+)="', rest)) if rest else set()
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] + "_count" in text:
                name = name[: -len(suffix)]
                break
        labels.discard("le")
        families.setdefault(name, set()).update(labels)
    return families


OBSERVED_MESH = """
gateway:
  router: {enabled: false}
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  tenants:
    acme: {requests_per_minute: 100000}
  auth:
    keys:
      - tenant: acme
        sha256: %s
workers:
  - id: small-0
    model: small-model
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    backend:
      sim: {ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, seed: 5}
  - id: broken-0
    model: broken-model
    tier: large
    input_usd_per_mtok: 10
    output_usd_per_mtok: 30
    backend:
      sim: {ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, seed: 6, error_rate: 1.0}
"""


@pytest.fixture(scope="module")
def observed(stubs):
    import hashlib

    from conftest import Running

    running = Running(["up"], OBSERVED_MESH % hashlib.sha256(KEY.encode()).hexdigest())
    yield running
    running.stop()


def scrape(gateway):
    return get("http://" + gateway.ready["admin"] + "/metrics")[1]


def test_every_documented_metric_and_label_is_exported_and_nothing_else(observed, stubs):
    auth = [("authorization", f"Bearer {KEY}")]
    with grpc.insecure_channel(observed.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        hi = [stubs.common.ChatMessage(role="user", content="hi")]
        # Served, over gRPC (whole and streamed) and HTTP.
        gw.Generate(stubs.gateway.GenerateRequest(model="small-model", messages=hi), metadata=auth, timeout=10)
        list(gw.GenerateStream(stubs.gateway.GenerateRequest(model="small-model", messages=hi), metadata=auth, timeout=10))
        gw.Route(stubs.gateway.GenerateRequest(messages=hi), metadata=auth, timeout=10)
        gw.ListModels(stubs.gateway.ListModelsRequest(), metadata=auth, timeout=10)
        # Refused: no key, a wrong key.
        for metadata in ([], [("authorization", "Bearer nope")]):
            with pytest.raises(grpc.RpcError) as refused:
                gw.Generate(stubs.gateway.GenerateRequest(messages=hi), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Failed: the only worker of the model fails every call.
        with pytest.raises(grpc.RpcError) as failed:
            gw.Generate(stubs.gateway.GenerateRequest(model="broken-model", messages=hi), metadata=auth, timeout=10)
    request = urllib.request.Request(
        observed.http + "/v1/chat/completions",
        data=json.dumps({"model": "router", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    unauthorized = urllib.request.Request(observed.http + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as refused_http:
        urllib.request.urlopen(unauthorized, timeout=10)
    assert refused_http.value.code == 401

    text = scrape(observed)
    live = exported(text)
    documented = documented_metrics()
    source = "".join(p.read_text() for p in (ROOT / "gateway" / "src" / "metrics").glob("*.rs"))
    source += (ROOT / "gateway" / "src" / "pool" / "series.rs").read_text()
    source += (ROOT / "proto" / "mesh" / "src" / "tls.rs").read_text()
    source += (ROOT / "proto" / "mesh" / "src" / "conn" / "mod.rs").read_text()
    for name, labels in documented.items():
        if name in CONDITIONAL and name not in live:
            assert f'"{name}"' in source, name
            continue
        assert name in live, f"{name} is documented but not exported"
        assert live[name] == labels, f"{name}: exported labels {sorted(live[name])}, documented {sorted(labels)}"
    undocumented = set(live) - set(documented)
    assert not undocumented, f"exported but not in README: {sorted(undocumented)}"

    # The traffic above is what the counters say, refused and failed included.
    def value(series):
        match = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
        assert match, series
        return float(match.group(1))

    assert value('routemesh_requests_total{api="grpc",method="Generate",code="Unauthenticated"}') == 2
    assert value('routemesh_requests_total{api="grpc",method="Generate",code="Ok"}') == 1
    assert value(f'routemesh_requests_total{{api="grpc",method="Generate",code="{failed.value.code().name.title().replace("_", "")}"}}') >= 1
    for method in ("GenerateStream", "Route", "ListModels"):
        assert value(f'routemesh_requests_total{{api="grpc",method="{method}",code="Ok"}}') == 1
    assert value('routemesh_requests_total{api="http",method="Generate",code="Ok"}') == 1
    assert value('routemesh_requests_total{api="http",method="ListModels",code="Unauthenticated"}') == 1
    assert value('http_server_request_duration_seconds_count{http_request_method="GET",http_route="/v1/models",http_response_status_code="401"}') == 1
    # Known label sets start at zero; the worker that failed says so.
    assert value('routemesh_requests_total{api="grpc",method="Feedback",code="Ok"}') == 0
    assert value('routemesh_limit_rejections_total{tenant="acme",limit="requests_per_minute"}') == 0
    assert value('routemesh_worker_calls_total{worker="broken-0",model="broken-model",tier="large",outcome="worker_error"}') >= 1
    assert value('routemesh_tenant_requests_total{tenant="acme",code="Ok"}') == 3
    assert 'gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="routemesh",gen_ai_request_model="broken-model",gen_ai_response_model="broken-model",error_type="worker_error"}' in text
    assert re.search(r'^routemesh_build_info\{version="[^"]+",profile="\w+",semconv_version="1\.37\.0"\} 1$', text, re.M)


def test_a_departed_workers_series_leave_with_it(stubs):
    """A worker registered through Redis that stops answering leaves the pool,
    and its series leave /metrics; the remaining worker's stay."""
    from conftest import Running

    ns = f"obs-depart-{time.monotonic_ns()}"
    redis_url = "redis://127.0.0.1:6379"
    gateway = Running(["gateway"], f"""
registry: {{redis: {{url: "{redis_url}", mesh: "{ns}"}}}}
gateway:
  router: {{enabled: false}}
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  discovery_interval: 200ms
  load_interval: 200ms
""")
    workers = []
    try:
        for wid in ("stay-0", "leave-0"):
            workers.append(Running(["worker"], f"""
registry: {{redis: {{url: "{redis_url}", mesh: "{ns}"}}}}
workers:
  - id: {wid}
    model: m-{wid}
    tier: small
    listen: 127.0.0.1:0
    backend: {{sim: {{ttft_ms: {{median: 1}}, tokens_per_second: {{median: 2000}}}}}}
"""))
        deadline = time.monotonic() + 30
        while 'worker="leave-0"' not in scrape(gateway):
            assert time.monotonic() < deadline, scrape(gateway)
            time.sleep(0.1)
        workers.pop().stop()
        deadline = time.monotonic() + 30
        while 'worker="leave-0"' in scrape(gateway):
            assert time.monotonic() < deadline, "the departed worker's series stayed"
            time.sleep(0.1)
        text = scrape(gateway)
        assert 'routemesh_worker_healthy{worker="stay-0",model="m-stay-0"} 1' in text
        assert 'routemesh_worker_calls_total{worker="stay-0",model="m-stay-0",tier="small",outcome="ok"} 0' in text
    finally:
        for w in workers:
            w.stop()
        gateway.stop()
