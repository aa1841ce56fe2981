"""Writes the routemesh Grafana dashboard (deploy/grafana/routemesh-overview.json
and the Helm chart's copy). Edit here, run `python3 deploy/grafana/build_dashboard.py`;
never edit the JSON by hand. Every expression uses metrics the gateway exports
(tests/python/test_dashboard_and_rules.py checks each name against a live
gateway's /metrics, and that every expression parses).

Every query is filtered by the namespace and job variables (one gateway
Deployment is one job); tenant- and model-labelled ones by those variables
too. Figures every replica reports about the shared pool (healthy workers,
a worker's health) are taken with max across replicas, never summed."""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
OUT = [HERE / "routemesh-overview.json", HERE.parent / "helm" / "routemesh" / "dashboards" / "routemesh-overview.json"]
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

panels = []
y = 0


def sel(*extra):
    """A label selector with the dashboard's scope, plus `extra` matchers."""
    return "{" + ", ".join(['namespace=~"$namespace"', 'job=~"$job"', *extra]) + "}"


TENANT = 'tenant=~"$tenant"'
MODEL = 'gen_ai_response_model=~"$model"'
WMODEL = 'model=~"$model"'
LARGE = 'tier="large"'
SERVED = 'outcome="ok"'
HIT = 'result="hit"'
SERVER_FAULT = 'code=~"Unavailable|Internal|DeadlineExceeded|Unknown|DataLoss"'


def row(title):
    global y
    panels.append({"id": len(panels) + 1, "type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def panel(title, kind, targets, unit, w=8, h=8, x=0, description="", **defaults):
    field_defaults = {"unit": unit, **defaults}
    panels.append(
        {
            "id": len(panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": x, "y": y},
            "fieldConfig": {"defaults": field_defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": DS} for i, (e, l) in enumerate(targets)],
        }
    )


def next_line(h=8):
    global y
    y += h


def variable(name, label, query, include_all=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": include_all,
        "multi": include_all,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"} if include_all else {},
        "sort": 1,
    }


COST = f"rate(routemesh_request_cost_usd_sum{sel(TENANT, MODEL)}[{RATE}])"
COUNTERFACTUAL = f"rate(routemesh_request_counterfactual_cost_usd_sum{sel(TENANT)}[{RATE}])"
COST_ALL_MODELS = f"rate(routemesh_request_cost_usd_sum{sel(TENANT)}[{RATE}])"

row("Cost")
panel("Spend (USD/hour)", "stat", [(f"sum({COST}) * 3600", "spend")], "currencyUSD", x=0, w=6,
      description="What served requests cost at their models' prices, per hour.")
panel("Spend by tenant (USD/hour)", "timeseries", [(f"sum by (tenant) ({COST}) * 3600", "{{tenant}}")], "currencyUSD", x=6, w=9)
panel("Spend by model (USD/hour)", "timeseries", [(f"sum by (gen_ai_response_model) ({COST}) * 3600", "{{gen_ai_response_model}}")], "currencyUSD", x=15, w=9)
next_line()
panel("Cost per request", "timeseries", [
    (f"sum({COST}) / sum(rate(routemesh_request_cost_usd_count{sel(TENANT, MODEL)}[{RATE}]))", "USD/request")
], "currencyUSD", x=0, w=8)
panel("Tokens by tenant (per second)", "timeseries", [
    (f"sum by (tenant, gen_ai_token_type) (rate(routemesh_tenant_tokens_total{sel(TENANT, MODEL)}[{RATE}]))", "{{tenant}} {{gen_ai_token_type}}")
], "short", x=8, w=8)
panel("Requests by tenant and code", "timeseries", [
    (f"sum by (tenant, code) (rate(routemesh_tenant_requests_total{sel(TENANT)}[{RATE}]))", "{{tenant}} {{code}}")
], "reqps", x=16, w=8)
next_line()

row("Savings")
panel("Savings (USD/hour)", "stat", [(f"(sum({COUNTERFACTUAL}) - sum({COST_ALL_MODELS})) * 3600", "saved")], "currencyUSD", x=0, w=6,
      description="What the same requests would have cost on the pool's most expensive model, minus what they cost.")
panel("Savings share", "stat", [(f"1 - sum({COST_ALL_MODELS}) / sum({COUNTERFACTUAL})", "saved share")], "percentunit", x=6, w=6)
panel("Spend and counterfactual (USD/hour)", "timeseries", [
    (f"sum({COST_ALL_MODELS}) * 3600", "spend"),
    (f"sum({COUNTERFACTUAL}) * 3600", "all on the strongest model"),
], "currencyUSD", x=12, w=12)
next_line()

row("Routing")
panel("Decisions by model", "timeseries", [(f"sum by (model) (rate(routemesh_routing_decisions_total{sel(WMODEL)}[{RATE}]))", "{{model}}")], "reqps", x=0)
panel("Decisions by deciding term", "piechart", [(f"sum by (reason) (increase(routemesh_routing_decisions_total{sel(WMODEL)}[$__range]))", "{{reason}}")], "short", x=8)
panel("Share of large-model calls", "timeseries", [
    (f'sum(rate(routemesh_worker_calls_total{sel(WMODEL, LARGE, SERVED)}[{RATE}])) / sum(rate(routemesh_worker_calls_total{sel(WMODEL, SERVED)}[{RATE}]))', "large")
], "percentunit", x=16, min=0, max=1)
next_line()
panel("Router latency (p99)", "timeseries", [
    (f"histogram_quantile(0.99, sum by (le) (rate(routemesh_routing_decision_duration_seconds_bucket{sel()}[{RATE}])))", "decision"),
    (f"histogram_quantile(0.99, sum by (le, path) (rate(routemesh_router_inference_seconds_bucket{sel()}[{RATE}])))", "encoder+predictor {{path}}"),
], "s", x=0)
panel("Router cache hit ratio", "timeseries", [
    (f'sum(rate(routemesh_router_cache_lookups_total{sel(HIT)}[{RATE}])) / sum(rate(routemesh_router_cache_lookups_total{sel()}[{RATE}]))', "hit ratio")
], "percentunit", x=8, min=0, max=1)
panel("Failovers and requests routed on priors", "timeseries", [
    (f"sum by (model) (rate(routemesh_failovers_total{sel(WMODEL)}[{RATE}]))", "failover from {{model}}"),
    (f"sum(rate(routemesh_router_overloaded_total{sel()}[{RATE}]))", "router overloaded"),
], "reqps", x=16)
next_line()

row("Cascades")
panel("Verdicts on first answers", "timeseries", [(f"sum by (verdict) (rate(routemesh_cascade_verdicts_total{sel(WMODEL)}[{RATE}]))", "{{verdict}}")], "reqps", x=0,
      description="strategy: cascade. accepted: the cheap answer was returned; escalated: judged weak, a stronger model answered; kept: judged weak, nothing stronger could run; unverifiable: the verifier could not judge")
panel("Escalations by model pair", "timeseries", [(f"sum by (from_model, to_model) (rate(routemesh_cascade_escalations_total{sel()}[{RATE}]))", "{{from_model}} -> {{to_model}}")], "reqps", x=8)
panel("Verifier time (p99)", "timeseries", [
    (f"histogram_quantile(0.99, sum by (le, verifier) (rate(routemesh_cascade_verify_duration_seconds_bucket{sel()}[{RATE}])))", "{{verifier}}"),
], "s", x=16)
next_line()

row("Latency and errors")
panel("Requests by method and code", "timeseries", [(f"sum by (api, method, code) (rate(routemesh_requests_total{sel()}[{RATE}]))", "{{api}} {{method}} {{code}}")], "reqps", x=0)
panel("Error ratio (gateway's or workers' fault)", "timeseries", [
    (f'sum(rate(routemesh_requests_total{sel(SERVER_FAULT)}[{RATE}])) / sum(rate(routemesh_requests_total{sel()}[{RATE}]))', "error ratio")
], "percentunit", x=8, min=0)
panel("Generation duration (server)", "timeseries", [
    (f"histogram_quantile({q}, sum by (le) (rate(gen_ai_server_request_duration_seconds_bucket{sel(MODEL)}[{RATE}])))", f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)
], "s", x=16)
next_line()
panel("Time to first token by model (p95)", "timeseries", [
    (f"histogram_quantile(0.95, sum by (le, gen_ai_response_model) (rate(gen_ai_server_time_to_first_token_seconds_bucket{sel(MODEL)}[{RATE}])))", "{{gen_ai_response_model}}")
], "s", x=0)
panel("Time per output token by model (p50)", "timeseries", [
    (f"histogram_quantile(0.5, sum by (le, gen_ai_response_model) (rate(gen_ai_server_time_per_output_token_seconds_bucket{sel(MODEL)}[{RATE}])))", "{{gen_ai_response_model}}")
], "s", x=8)
panel("Tokens per second by type", "timeseries", [
    (f"sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum{sel(MODEL)}[{RATE}]))", "{{gen_ai_token_type}}")
], "short", x=16)
next_line()

row("Health")
panel("Healthy workers", "stat", [(f"max by (job) (routemesh_healthy_workers{sel()})", "{{job}}")], "short", x=0, w=6,
      description="Workers that take traffic, as the pool every replica shares sees them (max across replicas, not a sum).")
panel("Workers by health", "table", [
    (f"max by (worker, model) (routemesh_worker_healthy{sel(WMODEL)})", "{{worker}}"),
], "short", x=6, w=6, description="1 healthy, 0 out of the routing (max across replicas).")
panel("Worker calls by outcome", "timeseries", [(f"sum by (outcome) (rate(routemesh_worker_calls_total{sel(WMODEL)}[{RATE}]))", "{{outcome}}")], "reqps", x=12, w=6)
panel("In flight per worker", "timeseries", [(f"sum by (worker) (routemesh_worker_in_flight{sel(WMODEL)})", "{{worker}}")], "short", x=18, w=6)
next_line()

row("Autoscaling signals")
panel("Pool load per slot by model", "timeseries", [
    (f"max by (model) (routemesh_pool_utilization{sel(WMODEL)})", "{{model}}")
], "percentunit", x=0, w=6, min=0, max=1,
      description="In-flight requests per slot of each model's healthy workers (their own reports; max across replicas). What a worker pool's ScaledObject reads, with the queue.")
panel("Queued at workers by model", "timeseries", [
    (f"max by (model) (routemesh_pool_queue_depth{sel(WMODEL)})", "{{model}}")
], "short", x=6, w=6, description="Requests waiting for a slot: the pool is short of replicas.")
panel("Engine KV-cache use by model", "timeseries", [
    (f"max by (model) (routemesh_pool_kv_cache_usage{sel(WMODEL)})", "{{model}}")
], "percentunit", x=12, w=6, min=0, max=1, description="Mean over the engines that report it (vLLM, SGLang); empty for others.")
panel("Gateway generations in flight per replica", "timeseries", [
    (f"sum by (instance) (routemesh_gateway_requests_in_flight{sel()})", "{{instance}}")
], "short", x=18, w=6, description="What the gateway HPA reads with autoscaling.metric: inFlight.")
next_line()

row("Circuit breakers")
panel("Breaker state per worker", "timeseries", [
    (f"max by (worker) (routemesh_circuit_breaker_state{sel(WMODEL)})", "{{worker}}")
], "short", x=0, w=12, min=0, max=2, description="0 closed, 1 half-open, 2 open; the worst replica's view.")
panel("Breaker moves", "timeseries", [
    (f"sum by (worker, to) (increase(routemesh_circuit_breaker_transitions_total{sel(WMODEL)}[{RATE}]))", "{{worker}} -> {{to}}")
], "short", x=12, w=12)
next_line()

row("Limits and load shedding")
panel("Limit rejections by tenant", "timeseries", [
    (f"sum by (tenant, limit) (rate(routemesh_limit_rejections_total{sel(TENANT)}[{RATE}]))", "{{tenant}} {{limit}}")
], "reqps", x=0, w=12)
panel("Shed for capacity", "timeseries", [(f"sum(rate(routemesh_shed_total{sel()}[{RATE}]))", "shed")], "reqps", x=12, w=12)
next_line()

row("Redis")
panel("Telemetry store errors and drops", "timeseries", [
    (f"sum(rate(routemesh_telemetry_store_errors_total{sel()}[{RATE}]))", "store errors"),
    (f"sum(rate(routemesh_telemetry_dropped_total{sel()}[{RATE}]))", "records dropped"),
], "short", x=0)
panel("Records waiting for Redis", "timeseries", [(f"sum by (instance) (routemesh_telemetry_buffered_records{sel()})", "{{instance}}")], "short", x=8)
panel("Redis round trips", "timeseries", [(f"sum by (component) (rate(routemesh_redis_round_trips_total{sel()}[{RATE}]))", "{{component}}")], "ops", x=16)
next_line()

dashboard = {
    "uid": "routemesh-overview",
    "title": "routemesh: cost, savings, routing, latency, health",
    "tags": ["routemesh", "llm", "gateway"],
    "schemaVersion": 39,
    "version": 2,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "templating": {
        "list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            variable("namespace", "Namespace", "label_values(routemesh_build_info, namespace)"),
            variable("job", "Gateway", 'label_values(routemesh_build_info{namespace=~"$namespace"}, job)'),
            variable("tenant", "Tenant", 'label_values(routemesh_tenant_requests_total{namespace=~"$namespace", job=~"$job"}, tenant)'),
            variable("model", "Model", 'label_values(routemesh_worker_calls_total{namespace=~"$namespace", job=~"$job"}, model)'),
        ]
    },
    "panels": panels,
}
for path in OUT:
    path.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {len(panels)} panels to", ", ".join(str(p) for p in OUT))
