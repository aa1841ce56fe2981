"""The Helm chart's integrations and its configuration schema.

Beside test_deploy.py (which lints, renders, validates and checks every
scenario, `ci/integrations-values.yaml` among them): the custom resources
kubernetes-validate has no schema for (KEDA's ScaledObject, Gateway API
routes) are checked here structurally, and their PromQL with promtool; the
schema embedded in values.schema.json is compared with what `routemesh
config-schema` prints now; and every key of routemesh's configuration is shown
to pass the chart: the whole effective default `gateway:` section, given as
`gateway.config`, renders and comes out of `routemesh check-config` unchanged,
and every worker, engine and Redis key has a value in a pool or a reason it is
the chart's.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tempfile

import helm_python as helm
import jsonschema
import pytest
import yaml

from test_deploy import (
    CHART, ROOT, containers, find, load_values, one, objects_of, pod_spec, render, render_config, routemesh_bin,
    scenario, configured_pods, pod_env,
)

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFS = SCHEMA["definitions"]


def updater():
    spec = importlib.util.spec_from_file_location("update_chart_schema", ROOT / "scripts" / "update-chart-schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the schema ------------------------------------------------------------


def test_the_embedded_config_schema_is_current():
    """values.schema.json embeds exactly what `routemesh config-schema` prints
    (the gateway crate's unit test checks the same without the binary)."""
    text = updater().updated_text(routemesh_bin())
    assert text == (CHART / "values.schema.json").read_text(), (
        "values.schema.json differs from the config types: run "
        "`cargo build --bin routemesh && scripts/update-chart-schema.py` and commit the result")


def test_config_schema_accepts_the_effective_default_config():
    """The printed schema (draft-07) accepts what check-config prints, and refuses a typo."""
    schema = json.loads(subprocess.run([routemesh_bin(), "config-schema"], capture_output=True, text=True,
                                       check=True).stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    effective = effective_config("workers:\n  - {model: m, tier: small, backend: {sim: {}}}\n")
    jsonschema.validate(effective, schema, cls=jsonschema.Draft7Validator)
    effective["gateway"]["cost_wieght"] = 1
    with pytest.raises(jsonschema.ValidationError, match="cost_wieght"):
        jsonschema.validate(effective, schema, cls=jsonschema.Draft7Validator)


def effective_config(yaml_text: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(yaml_text)
        f.flush()
        out = subprocess.run([routemesh_bin(), "check-config", f.name], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


# The keys the chart sets itself, and from which values.
GATEWAY_OWNED = {"listen": "gateway.ports.grpc", "http_listen": "gateway.ports.http",
                 "admin_listen": "gateway.ports.metrics", "drain_grace": "gateway.drainGraceSeconds"}
WORKER_OWNED = {"id": "the pod name", "listen": "agentPort", "advertise": "the pod IP and agentPort",
                "drain_grace": "drainGraceSeconds", "backend": "sim / local / openai + engine",
                "tls": "meshTLS"}
OPENAI_OWNED = {"base_url": "the engine sidecar's port"}
REDIS_OWNED = {"url": "redis.external.url / existingSecret / trial", "mesh": "mesh", "tls": "redis.external.tls",
               "cluster": "redis.external.cluster", "urls": "redis.external.urls"}


def test_every_gateway_key_passes_the_chart_unchanged():
    """The whole `gateway:` section with every default spelled out, given as
    gateway.config: the schema accepts it, and the pod's checked configuration
    holds every key with its value."""
    gateway = effective_config("{}\n")["gateway"]
    assert set(GATEWAY_OWNED) <= set(gateway)
    given = {k: v for k, v in gateway.items() if k not in GATEWAY_OWNED}
    given["auth"] = {k: v for k, v in given["auth"].items() if k != "keys"}
    given["router"] = {k: v for k, v in given["router"].items() if k != "artifact"}
    values = {"gateway": {"config": given}}
    objs = objects_of(render(values))
    w, template, init = next((w, t, i) for w, t, i in configured_pods(objs) if w["metadata"]["name"].endswith("gateway"))
    script = one(objs, "ConfigMap", "rm-routemesh-scripts")["data"]["render-config.sh"]
    result = render_config(script, template, pod_env(init))
    assert result.returncode == 0, result.stderr
    out = result.effective["gateway"]
    for key, value in given.items():
        if key in ("router", "auth"):  # beside the chart's own artifact, assets and keys
            assert {k: out[key][k] for k in value if k != "assets"} == {k: v for k, v in value.items() if k != "assets"}
        else:
            assert out[key] == value, key


@pytest.mark.parametrize("key,source", sorted(GATEWAY_OWNED.items()))
def test_keys_the_chart_sets_are_refused_in_gateway_config(key, source):
    with pytest.raises(helm.HelmRenderError, match=f"gateway.config.{key} is set by the chart from {source}"):
        render({"gateway": {"config": {key: "0.0.0.0:1" if key.endswith("listen") else "5s"}}})


def test_every_worker_engine_and_redis_key_has_a_value_in_the_chart():
    """A new key in WorkerConfig, OpenAiConfig or RedisRegistryConfig fails
    here until the chart passes it (a pool key referring to the generated
    definition) or says why it is the chart's own."""
    pool = DEFS["pool"]["properties"]
    refs = {v["$ref"].rsplit("/", 1)[-1] for v in pool.values() if "$ref" in v and "/WorkerConfig/" in v["$ref"]}
    missing = set(DEFS["WorkerConfig"]["properties"]) - refs - set(WORKER_OWNED)
    assert not missing, f"WorkerConfig keys no pool value maps: {missing} (add them to the chart's pool)"
    assert not refs & set(WORKER_OWNED)
    openai = {v["$ref"].rsplit("/", 1)[-1] for v in DEFS["poolOpenai"]["properties"].values() if "$ref" in v
              and "/OpenAiConfig/" in v["$ref"]}
    missing = set(DEFS["OpenAiConfig"]["properties"]) - openai - set(OPENAI_OWNED)
    assert not missing, f"OpenAiConfig keys the chart does not pass: {missing}"
    backends = set(DEFS["BackendConfig"]["properties"])
    assert backends == {"openai", "sim", "local"} and {"sim", "local", "engine", "openai"} <= set(pool)
    missing = set(DEFS["RedisRegistryConfig"]["properties"]) - set(REDIS_OWNED)
    assert not missing, f"registry.redis keys the chart does not set: {missing} (map them from redis.external)"


def test_a_redis_cluster_is_configured_from_its_seeds():
    """redis.external.cluster with several seeds reaches every pod's checked
    configuration; a single-node trial Redis or seeds without `cluster` fail
    the render with the key at fault."""
    seeds = ["redis://redis-0.cache:6379", "redis://redis-1.cache:6379"]
    values = {"redis": {"trial": {"enabled": False}, "external": {"cluster": True, "urls": seeds}}}
    objs = objects_of(render(values))
    script = one(objs, "ConfigMap", "rm-routemesh-scripts")["data"]["render-config.sh"]
    pods = list(configured_pods(objs))
    assert pods
    for _, template, init in pods:
        result = render_config(script, template, pod_env(init))
        assert result.returncode == 0, result.stderr
        redis = result.effective["registry"]["redis"]
        assert redis["cluster"] is True and redis["urls"] == seeds and "url" not in redis
    with pytest.raises(helm.HelmRenderError, match="redis.external.urls: several seed nodes need redis.external.cluster=true"):
        render({"redis": {"trial": {"enabled": False}, "external": {"urls": seeds}}})
    with pytest.raises(helm.HelmRenderError, match="redis.external.cluster: the trial Redis is a single node"):
        render({"redis": {"external": {"cluster": True}}})


def test_typos_deep_in_the_config_are_refused_with_their_path():
    with pytest.raises(helm.HelmValuesError, match="at '/gateway/config/cascade/self_check': additional properties 'sample' not allowed"):
        render({"gateway": {"config": {"cascade": {"self_check": {"sample": 3}}}}})
    with pytest.raises(helm.HelmValuesError, match="at '/workerPools/0/local': additional properties 'thread' not allowed"):
        render({"workerPools": [{"name": "g", "replicas": 1, "model": "m", "tier": "small",
                                 "local": {"model": "/m.gguf", "thread": 2}}]})
    with pytest.raises(helm.HelmValuesError, match="at '/gateway/config/telemetry/window'"):
        render({"gateway": {"config": {"telemetry": {"window": "a minute"}}}})


# --- integrations ------------------------------------------------------------


def test_service_account_and_extra_volumes_reach_every_pod():
    _, objs = scenario("integrations")
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"]["name"] == "mesh" and sa["automountServiceAccountToken"] is False
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for d in find(objs, "Deployment"):
        spec = pod_spec(d)
        assert spec["serviceAccountName"] == "mesh" and spec["automountServiceAccountToken"] is False
        main = containers(d)[0]
        assert {"name": "RUST_LOG", "value": "info"} in main["env"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        # Redis TLS: only the Secret keys asked for, where the config looks.
        assert volumes["redis-tls"]["secret"] == {"secretName": "routemesh-redis-tls", "items": [
            {"key": k, "path": k} for k in ("ca.crt", "tls.crt", "tls.key")]}
        for m in main.get("volumeMounts", []):
            assert m["name"] in volumes, m
    gw = one(objs, "Deployment", "mesh-gateway")
    assert {"name": "public-tls", "mountPath": "/etc/routemesh/public-tls", "readOnly": True} in containers(gw)[0]["volumeMounts"]
    local = one(objs, "Deployment", "mesh-worker-smollm")
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "gguf-models" for v in pod_spec(local)["volumes"])
    _, default = scenario("default")
    assert not find(default, "ServiceAccount")
    assert all("serviceAccountName" not in pod_spec(d) for d in find(default, "Deployment"))


def test_ingress_routes_and_headless_service():
    _, objs = scenario("integrations")
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    port_names = lambda svc: {p["name"] for p in svc["spec"]["ports"]}
    ing = one(objs, "Ingress")
    assert ing["spec"]["ingressClassName"] == "nginx"
    for rule in ing["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"]["name"] in port_names(services[backend["name"]])
    for kind, port_name in (("GRPCRoute", "grpc"), ("HTTPRoute", "http")):
        route = one(objs, kind)
        assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert set(route["spec"]) <= {"parentRefs", "hostnames", "rules"}
        assert route["spec"]["parentRefs"][0]["name"] == "public"
        for rule in route["spec"]["rules"]:
            assert set(rule) <= {"matches", "backendRefs", "filters", "timeouts"}
            for ref in rule["backendRefs"]:
                assert set(ref) <= {"name", "port", "weight", "namespace", "kind", "group"}
                svc_ports = {p["port"]: p["name"] for p in services[ref["name"]]["spec"]["ports"]}
                assert svc_ports[ref["port"]] == port_name, (kind, ref)
    http = one(objs, "HTTPRoute")
    assert http["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    headless = services["mesh-gateway-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == services["mesh-gateway"]["spec"]["selector"]
    assert port_names(headless) == {"grpc", "http"}, "no metrics port: scraped once, through the main Service"
    _, default = scenario("default")
    assert not find(default, "Ingress") and not find(default, "GRPCRoute") and not find(default, "HTTPRoute")
    assert [s["metadata"]["name"] for s in find(default, "Service")] == ["rm-routemesh-gateway", "rm-routemesh-redis"]


def test_gateway_hpa_scales_on_in_flight_requests():
    _, objs = scenario("integrations")
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "routemesh_gateway_requests_in_flight"},
        "target": {"type": "AverageValue", "averageValue": "150"}}}]
    _, production = scenario("production")
    assert one(production, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def scaled_objects(objs):
    return {o["spec"]["scaleTargetRef"]["name"]: o for o in find(objs, "ScaledObject")}


def test_a_scaled_object_per_pool_on_the_pool_series():
    _, objs = scenario("integrations")
    deployments = {d["metadata"]["name"]: d for d in find(objs, "Deployment")}
    scaled = scaled_objects(objs)
    assert set(scaled) == {"mesh-worker-vllm", "mesh-worker-smollm"}
    for target, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert set(so["spec"]) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                                   "cooldownPeriod", "advanced", "triggers", "fallback", "idleReplicaCount"}
        assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
        assert "replicas" not in deployments[target]["spec"], "KEDA's HPA owns the replica count"
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        for t in so["spec"]["triggers"]:
            assert t["type"] == "prometheus" and t["metricType"] in ("AverageValue", "Value")
            assert t["authenticationRef"] == {"name": "prometheus-creds"}
            meta = t["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata are strings"
            assert meta["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
            assert float(meta["threshold"]) > 0
            assert 'namespace="routemesh"' in meta["query"] and 'service="mesh-gateway"' in meta["query"]
    vllm = scaled["mesh-worker-vllm"]["spec"]
    assert vllm["maxReplicaCount"] == 10 and vllm["minReplicaCount"] == 1
    load, kv = vllm["triggers"]
    assert load["metadata"]["query"] == (
        'max(routemesh_pool_in_flight{model="llama-3.1-8b-instruct",namespace="routemesh",service="mesh-gateway"})'
        ' + max(routemesh_pool_queue_depth{model="llama-3.1-8b-instruct",namespace="routemesh",service="mesh-gateway"})')
    assert load["metadata"]["threshold"] == "12"
    assert kv["metricType"] == "Value" and kv["metadata"]["threshold"] == "0.85"
    assert "routemesh_pool_kv_cache_usage" in kv["metadata"]["query"]
    # Default target: 80% of a pod's slots; no KV-cache trigger unless asked.
    [smollm_load] = scaled["mesh-worker-smollm"]["spec"]["triggers"]
    assert float(smollm_load["metadata"]["threshold"]) == pytest.approx(1.6)
    _, default = scenario("default")
    assert not find(default, "ScaledObject")


def test_keda_queries_are_promql_over_exported_series(tmp_path):
    """promtool parses each query (as a recording rule), and every series it
    reads is one the gateway exports and the README documents."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian: apt-get install prometheus): PromQL not checked")
    _, objs = scenario("integrations")
    queries = [t["metadata"]["query"] for so in find(objs, "ScaledObject") for t in so["spec"]["triggers"]]
    rules = {"groups": [{"name": "keda", "rules": [{"record": f"keda:q{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    readme = (ROOT / "README.md").read_text()
    for series in {s for q in queries for s in re.findall(r"(routemesh_\w+)\{", q)}:
        assert f"`{series}`" in readme, f"{series} is not in the README's metrics table"


@pytest.mark.parametrize("values,message", [
    ({"workerDefaults": {"autoscaling": {"enabled": True}}}, "needs keda.prometheus.serverAddress"),
    ({"redis": {"trial": {"enabled": False}, "external": {"url": "redis://r:6379/0",
                                                          "tls": {"existingSecret": "s"}}}},
     'redis.external.tls.existingSecret needs a rediss:// URL, not "redis://r:6379/0"'),
    ({"redis": {"trial": {"enabled": False}, "external": {"url": "rediss://r:6379/0",
                                                          "tls": {"existingSecret": "s", "cert": "tls.crt"}}}},
     "a client certificate needs both cert and key"),
    ({"redis": {"external": {"tls": {"existingSecret": "s"}}}}, "the trial Redis speaks no TLS"),
    ({"gateway": {"gatewayAPI": {"grpcRoute": {"enabled": True}}}}, "grpcRoute.parentRefs: name the Gateway"),
    ({"gateway": {"ingress": {"enabled": True}}}, "gateway.ingress.hosts: give at least one host"),
    ({"gateway": {"config": {"auth": {"keys": []}}}}, "gateway.config.auth.keys is set by the chart"),
    ({"gateway": {"config": {"router": {"artifact": "/r"}}}}, "gateway.config.router.artifact is set by the chart"),
])
def test_integrations_refuse_what_cannot_work(values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert message in str(err.value)


def test_integrations_values_pass_the_schema_of_a_second_validator():
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(load_values(CHART / "ci" / "integrations-values.yaml"))
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(merged)]
    assert not errors
