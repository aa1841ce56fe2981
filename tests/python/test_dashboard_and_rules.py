"""The Grafana dashboard and the Prometheus rules: rules pass promtool's
checks and unit tests; every expression parses; every metric they name is one
the gateway exports (its declared names, and a live gateway's /metrics)."""

import json
import pathlib
import re
import shutil
import subprocess
import urllib.request

import grpc
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "routemesh.rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "routemesh-overview.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")

PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "avg_over_time", "max", "and", "or", "le", "round",
    "without", "on", "ignoring", "avg", "min", "count", "label_values",
}


def declared_metrics():
    """Metric names the gateway declares (gateway/src/metrics/)."""
    source = "".join(p.read_text() for p in (ROOT / "gateway" / "src" / "metrics").glob("*.rs"))
    source += (ROOT / "gateway" / "src" / "pool" / "series.rs").read_text()
    names = set(re.findall(r'pub(?:\(crate\))? const \w+: &str = "([a-z_:]+)"', source))
    return names | {f"{n}_{s}" for n in names for s in ("bucket", "sum", "count")}


def recorded_names():
    rules = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def metric_names(expr):
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # selectors
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\bby\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and ("_" in w or ":" in w)}


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def variable_queries():
    dash = json.loads(DASHBOARD.read_text())
    return [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]


def alerts():
    rules = yaml.safe_load(RULES.read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def rule_exprs():
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


@needs_promtool
def test_rules_check_and_unit_tests():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "routemesh.rules.test.yaml"], cwd=RULES.parent, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_chart_ships_the_same_rules_and_dashboard():
    chart = ROOT / "deploy" / "helm" / "routemesh"
    assert (chart / "files" / "routemesh.rules.yaml").read_text() == RULES.read_text()
    assert (chart / "dashboards" / DASHBOARD.name).read_text() == DASHBOARD.read_text()


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    titles = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert titles == [
        "Cost", "Savings", "Routing", "Cascades", "Latency and errors", "Health", "Autoscaling signals", "Circuit breakers",
        "Limits and load shedding", "Redis",
    ]
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "namespace", "job", "tenant", "model"]
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            for t in p["targets"]:
                # Scoped to the chosen gateway: every selector names namespace and job.
                for selector in re.findall(r"\{[^}]*\}", re.sub(r'"[^"]*"', '""', t["expr"])):
                    if selector != "{{}}" and "=" in selector:
                        assert "namespace" in selector and "job" in selector, (p["title"], t["expr"])
            if any(k in str(p["targets"]) for k in ("healthy_workers", "worker_healthy", "routemesh_pool_")):
                # Every replica reports the same pool: never add them up.
                assert all(not t["expr"].startswith("sum") for t in p["targets"]), p["title"]
            if "cache hit ratio" in p["title"].lower():
                assert p["fieldConfig"]["defaults"]["unit"] == "percentunit"


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path):
    exprs = [e.replace("$__rate_interval", "5m").replace("$__range", "1h") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_is_annotated_scoped_and_tested():
    tests = yaml.safe_load((RULES.parent / "routemesh.rules.test.yaml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    for alert in alerts():
        name = alert["alert"]
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"] == f"docs/runbooks/{name}.md", name
        runbook = ROOT / annotations["runbook_url"]
        assert runbook.exists(), runbook
        text = runbook.read_text()
        for part in ("**Meaning.**", "**Impact.**", "**Diagnose.**", "**Act.**"):
            assert part in text, (runbook, part)
        assert "job" in alert["expr"] or alert["expr"].startswith("routemesh:"), name
        assert name in tested, f"{name} has no promtool test that fires it"


@pytest.fixture(scope="module")
def limited_mesh():
    """The fast mesh with a tenant that has a limit (whose series start at zero)."""
    from conftest import FAST_MESH, Running

    config = FAST_MESH.replace("  admin_listen: 127.0.0.1:0\n", "  admin_listen: 127.0.0.1:0\n  tenants:\n    acme: {requests_per_minute: 100000}\n")
    running = Running(["up"], config)
    yield running
    running.stop()


def test_every_metric_named_is_exported(limited_mesh, stubs):
    mesh = limited_mesh
    known = declared_metrics() | recorded_names()
    for expr in dashboard_exprs() + rule_exprs() + variable_queries():
        for name in metric_names(expr):
            assert name in known, f"{name} in {expr!r}"
    # And the core series are really there on a live gateway after traffic.
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        gw.Generate(stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="hi")]), timeout=10)
    text = urllib.request.urlopen("http://" + mesh.ready["admin"] + "/metrics", timeout=10).read().decode()
    live = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M))
    # Every name a panel, an alert or a variable queries is on the page,
    # except those only a configured feature exports.
    conditional = {"routemesh_cascade_verdicts_total", "routemesh_cascade_escalations_total",
                   "routemesh_cascade_verify_duration_seconds_bucket", "routemesh_router_inference_seconds_bucket",
                   "routemesh_feedback_exemplars", "routemesh_pool_kv_cache_usage"}
    rules = recorded_names()
    for expr in dashboard_exprs() + rule_exprs() + variable_queries():
        for name in metric_names(expr) - rules - conditional:
            assert name in live, f"{name} in {expr!r} is not exported by a live gateway"
