"""Writes the routemesh Grafana dashboard (deploy/grafana/routemesh-overview.json
and the Helm chart's copy). Edit here, run `python3 deploy/grafana/build_dashboard.py`.
Every expression uses metrics the gateway exports (tests/python/test_dashboard.py
checks each name against a live gateway's /metrics)."""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
OUT = [HERE / "routemesh-overview.json", HERE.parent / "helm" / "routemesh" / "dashboards" / "routemesh-overview.json"]
DS = {"type": "prometheus", "uid": "${datasource}"}

panels = []
y = 0


def row(title):
    global y
    panels.append({"id": len(panels) + 1, "type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def panel(title, kind, targets, unit, w=8, h=8, x=0, description=""):
    panels.append(
        {
            "id": len(panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": DS} for i, (e, l) in enumerate(targets)],
        }
    )


row("Cost: what routing saved")
panel("Savings (USD/hour)", "stat", [("sum(routemesh:savings_usd_per_hour)", "saved")], "currencyUSD", x=0,
      description="What the same requests would have cost on the pool's most expensive model, minus what they cost.")
panel("Spend by tenant (USD/hour)", "timeseries", [("sum by (tenant) (routemesh:spend_usd_per_hour)", "{{tenant}}")], "currencyUSD", x=8)
panel("Spend by model (USD/hour)", "timeseries", [("sum by (gen_ai_request_model) (routemesh:spend_usd_per_hour)", "{{gen_ai_request_model}}")], "currencyUSD", x=16)
y += 8
panel("Cost per request", "timeseries", [("routemesh:cost_per_request_usd", "USD/request")], "currencyUSD", x=0)
panel("Share of large-model calls", "timeseries", [("routemesh:large_model_share", "large")], "percentunit", x=8)
panel("Savings share", "stat", [
    ("1 - sum(rate(routemesh_request_cost_usd_sum[$__rate_interval])) / sum(rate(routemesh_request_counterfactual_cost_usd_sum[$__rate_interval]))", "saved share")
], "percentunit", x=16)
y += 8
row("Performance")
panel("Requests per second by code", "timeseries", [("sum by (code) (rate(routemesh_requests_total[$__rate_interval]))", "{{code}}")], "reqps", x=0)
panel("Request latency", "timeseries", [
    (f"histogram_quantile({q}, sum by (le) (rate(routemesh_request_duration_seconds_bucket[$__rate_interval])))", f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)
], "s", x=8)
panel("Time to first token by model (p95)", "timeseries", [
    ("histogram_quantile(0.95, sum by (le, gen_ai_request_model) (rate(gen_ai_server_time_to_first_token_seconds_bucket[$__rate_interval])))", "{{gen_ai_request_model}}")
], "s", x=16)
y += 8
panel("Time per output token (p50)", "timeseries", [
    ("histogram_quantile(0.5, sum by (le, gen_ai_request_model) (rate(gen_ai_server_time_per_output_token_seconds_bucket[$__rate_interval])))", "{{gen_ai_request_model}}")
], "s", x=0)
panel("Tokens per second", "timeseries", [
    ("sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum[$__rate_interval]))", "{{gen_ai_token_type}}")
], "short", x=8)
panel("Worker calls by outcome", "timeseries", [("sum by (outcome) (rate(routemesh_worker_calls_total[$__rate_interval]))", "{{outcome}}")], "reqps", x=16)
y += 8
row("Routing")
panel("Decisions by model", "timeseries", [("sum by (model) (rate(routemesh_routing_decisions_total[$__rate_interval]))", "{{model}}")], "reqps", x=0)
panel("Decisions by deciding term", "piechart", [("sum by (reason) (increase(routemesh_routing_decisions_total[$__range]))", "{{reason}}")], "short", x=8)
panel("Router latency (p99) and cache hit ratio", "timeseries", [
    ("histogram_quantile(0.99, sum by (le) (rate(routemesh_routing_decision_duration_seconds_bucket[$__rate_interval])))", "decision p99"),
    ("histogram_quantile(0.99, sum by (le) (rate(routemesh_router_inference_seconds_bucket[$__rate_interval])))", "encoder+predictor p99"),
    ("sum(rate(routemesh_router_cache_lookups_total{result=\"hit\"}[$__rate_interval])) / sum(rate(routemesh_router_cache_lookups_total[$__rate_interval]))", "cache hit ratio"),
], "s", x=16)
y += 8
row("Cascades")
panel("Verdicts on first answers", "timeseries", [("sum by (verdict) (rate(routemesh_cascade_verdicts_total[$__rate_interval]))", "{{verdict}}")], "reqps", x=0,
      description="strategy: cascade. accepted: the cheap answer was returned; escalated: judged weak, a stronger model answered; kept: judged weak, nothing stronger could run; unverifiable: the verifier could not judge")
panel("Escalations by model pair", "timeseries", [("sum by (from_model, to_model) (rate(routemesh_cascade_escalations_total[$__rate_interval]))", "{{from_model}} -> {{to_model}}")], "reqps", x=8)
panel("Escalated share and verifier time (p99)", "timeseries", [
    ("sum(rate(routemesh_cascade_verdicts_total{verdict=\"escalated\"}[$__rate_interval])) / sum(rate(routemesh_cascade_verdicts_total[$__rate_interval]))", "escalated share"),
    ("histogram_quantile(0.99, sum by (le, verifier) (rate(routemesh_cascade_verify_duration_seconds_bucket[$__rate_interval])))", "verify p99 {{verifier}}"),
], "short", x=16)
y += 8
row("Health")
panel("Healthy workers", "stat", [("sum(routemesh_healthy_workers)", "healthy")], "short", x=0)
panel("Worker in flight", "timeseries", [("sum by (worker) (routemesh_worker_in_flight)", "{{worker}}")], "short", x=8)
panel("Failovers, sheds, telemetry drops", "timeseries", [
    ("sum(rate(routemesh_failovers_total[$__rate_interval]))", "failovers"),
    ("sum(rate(routemesh_shed_total[$__rate_interval]))", "shed"),
    ("sum(rate(routemesh_telemetry_dropped_total[$__rate_interval]))", "telemetry dropped"),
], "short", x=16)
y += 8

dashboard = {
    "uid": "routemesh-overview",
    "title": "routemesh: cost, performance, routing, health",
    "tags": ["routemesh", "llm", "gateway"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]},
    "panels": panels,
}
for path in OUT:
    path.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {len(panels)} panels to", ", ".join(str(p) for p in OUT))
