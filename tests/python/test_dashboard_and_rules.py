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
    "without", "on", "ignoring", "avg", "min", "count",
}


def declared_metrics():
    """Metric names the gateway declares (gateway/src/metrics.rs)."""
    source = (ROOT / "gateway" / "src" / "metrics.rs").read_text()
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
    assert titles == ["Cost: what routing saved", "Performance", "Routing", "Cascades", "Health"]
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path):
    exprs = [e.replace("$__rate_interval", "5m").replace("$__range", "1h") for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_metric_named_is_exported(mesh, stubs):
    known = declared_metrics() | recorded_names()
    for expr in dashboard_exprs() + rule_exprs():
        for name in metric_names(expr):
            assert name in known, f"{name} in {expr!r}"
    # And the core series are really there on a live gateway after traffic.
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        gw.Generate(stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="hi")]), timeout=10)
    text = urllib.request.urlopen("http://" + mesh.ready["admin"] + "/metrics", timeout=10).read().decode()
    live = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M))
    for name in ("routemesh_requests_total", "routemesh_request_cost_usd_sum", "routemesh_request_counterfactual_cost_usd_sum",
                 "routemesh_worker_calls_total", "gen_ai_server_time_to_first_token_seconds_bucket", "routemesh_healthy_workers",
                 "routemesh_routing_decisions_total", "routemesh_routing_decision_duration_seconds_bucket"):
        assert name in live, name
