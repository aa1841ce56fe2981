"""The Helm chart (deploy/helm/routemesh), tested without a cluster.

Helm's own Go SDK (PyPI helm-python-sdk, no helm binary) lints and renders the
chart; kubernetes-validate checks every rendered object strictly against the
Kubernetes 1.30 OpenAPI schemas; the Prometheus Operator objects, which it has
no schema for, are checked structurally here. Every routemesh configuration the
chart renders goes through the same render-config.sh the init container runs
and then `routemesh check-config` (ROUTEMESH_BIN), so the chart cannot produce
a configuration the binary rejects. Rendered output is compared with golden
files (UPDATE_GOLDEN=1 rewrites them), and each values file under
tests/invalid must be rejected with the message its `# expect:` line gives.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "routemesh"
GOLDEN = CHART / "tests" / "golden"
INVALID = CHART / "tests" / "invalid"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "rm", "routemesh"

# name -> values file (None: the chart's defaults)
SCENARIOS = {
    "default": None,
    "production": CHART / "ci" / "production-values.yaml",
    "options": CHART / "ci" / "options-values.yaml",
    "gateway-only": CHART / "ci" / "gateway-only-values.yaml",
    "integrations": CHART / "ci" / "integrations-values.yaml",
}
# Custom resources kubernetes-validate has no schema for: checked structurally
# here (Prometheus Operator, KEDA, Gateway API).
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/", "gateway.networking.k8s.io/")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def load_values(path):
    return {} if path is None else (yaml.safe_load(path.read_text()) or {})


def render(values: dict, **kwargs) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, **kwargs)


def objects_of(rendered: dict[str, str]) -> list[dict]:
    objs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        objs += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return objs


_cache: dict[str, tuple[dict[str, str], list[dict]]] = {}


def scenario(name: str) -> tuple[dict[str, str], list[dict]]:
    if name not in _cache:
        rendered = render(load_values(SCENARIOS[name]))
        _cache[name] = (rendered, objects_of(rendered))
    return _cache[name]


def find(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def one(objs, kind, name=None):
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def containers(obj, init=False):
    return pod_spec(obj).get("initContainers" if init else "containers", [])


def container(obj, name):
    for c in containers(obj) + containers(obj, init=True):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name} in {obj['metadata']['name']}")


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels / matchExpressions) against labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
        if e["operator"] == "DoesNotExist" and e["key"] in labels:
            return False
        if e["operator"] == "NotIn" and labels.get(e["key"]) in e["values"]:
            return False
    return True


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total


# --- lint and render -------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_lint_strict(name):
    report = helm.lint(CHART, load_values(SCENARIOS[name]), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, json.dumps(report, indent=1)


@pytest.mark.parametrize("name", SCENARIOS)
def test_objects_validate_strictly_against_kubernetes(name):
    _, objs = scenario(name)
    assert objs
    failures = []
    for obj in objs:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # not in kubernetes-validate's schemas: see test_prometheus_operator_objects
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(e).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def test_the_validator_is_strict():
    """Guards the guard: a misspelt nested field and a wrong type fail validation."""
    _, objs = scenario("default")
    gw = json.loads(json.dumps(one(objs, "Deployment", "rm-routemesh-gateway")))
    kubernetes_validate.validate(gw, KUBE_VERSION, strict=True)
    bad = json.loads(json.dumps(gw))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["serviceName"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)
    bad = json.loads(json.dumps(gw))
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "35s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


def test_odd_model_names_make_valid_labels():
    objs = objects_of(render({"workerPools": [{"name": "ollama", "replicas": 1, "model": "org/llama3:70b-q4", "tier": "large", "sim": {}}]}))
    d = one(objs, "Deployment", "rm-routemesh-worker-ollama")
    assert d["metadata"]["labels"]["routemesh.io/model"] == "org_llama3_70b-q4"
    for obj in objs:
        if not obj["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("name", SCENARIOS)
def test_standard_labels_and_names(name):
    _, objs = scenario(name)
    names = set()
    for obj in objs:
        meta = obj["metadata"]
        labels = meta["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']}/{meta['name']} lacks label {key}"
        assert len(meta["name"]) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
        pod_labels = obj["spec"]["template"]["metadata"]["labels"] if obj["kind"] in ("Deployment", "StatefulSet") else {}
        for k, v in {**labels, **pod_labels}.items():
            assert isinstance(v, str) and LABEL_VALUE.fullmatch(v), f"{obj['kind']}/{meta['name']}: label {k}={v!r}"
        key = (obj["kind"], meta.get("namespace"), meta["name"])
        assert key not in names, f"{key} rendered twice"
        names.add(key)


@pytest.mark.parametrize("name", SCENARIOS)
def test_workload_selectors_select_their_pods(name):
    _, objs = scenario(name)
    workloads = find(objs, "Deployment") + find(objs, "StatefulSet")
    for w in workloads:
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        assert matches(w["spec"]["selector"], pod_labels), w["metadata"]["name"]
        # No other workload's pods are selected (selectors must not overlap).
        for other in workloads:
            if other is not w:
                assert not matches(w["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]), (
                    w["metadata"]["name"], other["metadata"]["name"])
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in find(objs, kind):
            sel = obj["spec"]["selector"]
            sel = sel if "matchLabels" in sel or "matchExpressions" in sel else {"matchLabels": sel}
            selected = [w for w in workloads if matches(sel, w["spec"]["template"]["metadata"]["labels"])]
            assert len(selected) == 1, f"{kind}/{obj['metadata']['name']} selects {len(selected)} workloads"
            if kind == "Service":
                ports = {p["name"] for c in containers(selected[0]) + containers(selected[0], True)
                         for p in c.get("ports", [])}
                for p in obj["spec"]["ports"]:
                    assert p["targetPort"] in ports, f"{obj['metadata']['name']}: no container port {p['targetPort']}"


# --- the routemesh configurations ------------------------------------------


def routemesh_bin() -> str:
    path = os.environ.get("ROUTEMESH_BIN")
    if not path:
        pytest.skip("ROUTEMESH_BIN is not set (./dev test sets it): cannot check rendered configs with `routemesh check-config`")
    if not os.path.exists(path):
        pytest.fail(f"ROUTEMESH_BIN={path} does not exist")
    return path


def render_config(script: str, template: str, env: dict) -> subprocess.CompletedProcess:
    """Runs render-config.sh as the init container does: /bin/sh, the template
    from the ConfigMap, `routemesh` on PATH."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="routemesh-deploy-"))
    try:
        (work / "bin").mkdir()
        os.symlink(routemesh_bin(), work / "bin" / "routemesh")
        # debian-slim, the images' base, has mawk as its only awk: use it when here.
        if shutil.which("mawk"):
            os.symlink(shutil.which("mawk"), work / "bin" / "awk")
        (work / "render-config.sh").write_text(script)
        (work / "template.yaml").write_text(template)
        full_env = {**env, "PATH": f"{work / 'bin'}:/usr/bin:/bin", "TEMPLATE": str(work / "template.yaml"),
                    "OUT": str(work / "config.yaml")}
        result = subprocess.run(["/bin/sh", str(work / "render-config.sh")], env=full_env,
                                capture_output=True, text=True, timeout=60)
        out = work / "config.yaml"
        result.config = out.read_text() if out.exists() else None
        if result.returncode == 0:
            checked = subprocess.run([routemesh_bin(), "check-config", str(out)], capture_output=True, text=True,
                                     timeout=60, env={"PATH": "/usr/bin:/bin"})
            assert checked.returncode == 0, checked.stderr
            result.effective = yaml.safe_load(checked.stdout)
        return result
    finally:
        shutil.rmtree(work)


def pod_env(c: dict) -> dict:
    """Test values for the env a container gets (downward API, Secrets)."""
    values = {"status.podIP": "10.42.7.9", "metadata.name": "rm-pod-0"}
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = values[e["valueFrom"]["fieldRef"]["fieldPath"]]
        elif e["name"] == "AUTH_KEYS":
            # As `kubectl create secret --from-file` would store a pretty-printed file.
            env[e["name"]] = json.dumps([{"tenant": "acme", "sha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"},
                                         {"tenant": "a&b \\ 'c'", "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}], indent=2)
        elif e["name"] == "REDIS_URL":
            # A password with characters that break naive sed substitution.
            env[e["name"]] = "redis://:s3cr%26t%2Fpw@redis.example.internal:6379/0"
        else:
            raise AssertionError(f"unexpected secret env {e['name']}")
    return env


def configured_pods(objs):
    """(workload, its config template, its render-config container) for each workload that has one."""
    cms = {o["metadata"]["name"]: o for o in find(objs, "ConfigMap")}
    for w in find(objs, "Deployment"):
        vols = {v["name"]: v for v in pod_spec(w)["volumes"]}
        template = cms[vols["config-template"]["configMap"]["name"]]["data"]["config.yaml"]
        yield w, template, container(w, "render-config")


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_rendered_config_passes_routemesh_check_config(name):
    _, objs = scenario(name)
    script = one(objs, "ConfigMap", next(o["metadata"]["name"] for o in find(objs, "ConfigMap")
                                         if "render-config.sh" in o["data"]))["data"]["render-config.sh"]
    checked = 0
    for w, template, init in configured_pods(objs):
        env = pod_env(init)
        if "redis-tls" in {v["name"] for v in pod_spec(w)["volumes"]} and "REDIS_URL" in env:
            env["REDIS_URL"] = "rediss://:s3cr%26t%2Fpw@redis.example.internal:6380/0"
        # The init container reads the template and writes the config where the volumes are.
        init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
        assert init_mounts[os.path.dirname(env["TEMPLATE"])] == "config-template"
        assert init_mounts[os.path.dirname(env["OUT"])] == "config"
        assert init["command"][-1].startswith(next(p for p, n in init_mounts.items() if n == "scripts"))
        main_mounts = {m["mountPath"]: m["name"] for m in containers(w)[0]["volumeMounts"]}
        assert main_mounts[os.path.dirname(containers(w)[0]["args"][-1])] == "config"
        assert containers(w)[0]["args"][-1] == env["OUT"]
        # Every placeholder in the template is provided by the init container's env.
        for placeholder in set(re.findall(r"@@([A-Z_]+)@@", "\n".join(l for l in template.splitlines() if not l.lstrip().startswith("#")))):
            assert placeholder in env or placeholder == "POD_HOST", f"{w['metadata']['name']}: @@{placeholder}@@ has no env"
        result = render_config(script, template, env)
        assert result.returncode == 0, f"{w['metadata']['name']}: {result.stderr}"
        assert "@@" not in result.config.replace("between @@ marks", "")
        cfg = result.effective
        redis = cfg["registry"]["redis"]
        assert redis["url"].startswith(("redis://", "rediss://"))
        if "REDIS_URL" in env:
            assert redis["url"] == env["REDIS_URL"]
        main = containers(w)[0]
        assert main["args"][-2:] == ["--config", "/run/routemesh/config.yaml"]
        # Every file the configuration names is on a volume of the main container.
        mounts = [m["mountPath"] for m in main["volumeMounts"]]
        for path in config_files(cfg):
            assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{w['metadata']['name']}: {path} is on no mount"
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        grace = pod_spec(w)["terminationGracePeriodSeconds"]
        if main["name"] == "gateway":
            assert main["args"][0] == "gateway"
            assert cfg["gateway"]["listen"] == f"0.0.0.0:{ports['grpc']}"
            assert cfg["gateway"]["http_listen"] == (f"0.0.0.0:{ports['http']}" if "http" in ports else None)
            assert cfg["workers"] == []
            if "AUTH_KEYS" in env:
                assert cfg["gateway"]["auth"]["keys"] == json.loads(env["AUTH_KEYS"])
            pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert grace > pre_stop + seconds(cfg["gateway"]["drain_grace"])
        else:
            assert main["args"][0] == "worker"
            [worker] = cfg["workers"]
            assert worker["id"] == env["POD_NAME"]
            # With meshTLS the agent serves mutual TLS and says so.
            scheme = "https" if worker.get("tls") else "http"
            assert worker["advertise"] == f"{scheme}://{env['POD_IP']}:{ports['grpc']}"
            assert worker["listen"] == f"0.0.0.0:{ports['grpc']}"
            assert grace > seconds(worker["drain_grace"])
            if "openai" in worker["backend"]:
                engine = container(w, "engine")
                assert engine.get("restartPolicy") == "Always", "the engine is a native sidecar"
                assert worker["backend"]["openai"]["base_url"] == f"http://127.0.0.1:{engine['ports'][0]['containerPort']}/v1"
                if worker["backend"]["openai"].get("api_key_env"):
                    assert worker["backend"]["openai"]["api_key_env"] in {e["name"] for e in main["env"]}
            else:
                assert "sim" in worker["backend"] or "local" in worker["backend"]
                assert [c["name"] for c in containers(w, init=True)] == ["render-config"]
            if "local" in worker["backend"]:
                # The GGUF file is on a volume the agent mounts.
                model = worker["backend"]["local"]["model"]
                assert any(model.startswith(m.rstrip("/") + "/") for m in mounts), model
        checked += 1
    assert checked == len(find(objs, "Deployment"))


def config_files(cfg: dict) -> list[str]:
    """The TLS files a rendered configuration names."""
    sections = [cfg["registry"].get("redis", {}).get("tls"), cfg["gateway"].get("tls"), cfg["gateway"].get("worker_tls")]
    sections += [w.get("tls") for w in cfg["workers"]]
    return [path for s in sections if s for k, path in s.items() if k in ("ca", "cert", "key") and path]


def test_render_config_script_edge_cases():
    _, objs = scenario("production")
    script = one(objs, "ConfigMap", "rm-routemesh-scripts")["data"]["render-config.sh"]
    w, template, init = next((w, t, i) for w, t, i in configured_pods(objs) if "worker" in w["metadata"]["name"])
    env = pod_env(init)
    # IPv6 pod IPs are bracketed in the advertised URL.
    result = render_config(script, template, {**env, "POD_IP": "fd00:10:42::9"})
    assert result.returncode == 0, result.stderr
    # (The production values turn meshTLS on: the agent advertises https.)
    assert result.effective["workers"][0]["advertise"].startswith("https://[fd00:10:42::9]:")
    # A missing Secret value fails the pod with the variable's name, before routemesh starts.
    result = render_config(script, template, {k: v for k, v in env.items() if k != "REDIS_URL"})
    assert result.returncode == 2 and result.config is None
    assert "@@REDIS_URL@@ but $REDIS_URL is not set" in result.stderr
    # A config routemesh rejects fails the init container with routemesh's own message.
    result = render_config(script, template + "bogus_key: 1\n", env)
    assert result.returncode == 1
    assert "bogus_key" in result.stderr and "routemesh rejects the rendered configuration" in result.stderr


# --- structure -------------------------------------------------------------


def test_gateway_pods_are_probed_over_grpc_and_locked_down():
    _, objs = scenario("production")
    gw = one(objs, "Deployment", "rm-routemesh-gateway")
    assert "replicas" not in gw["spec"], "the HPA owns replicas when autoscaling is on"
    c = container(gw, "gateway")
    grpc_port = {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port
    assert c["readinessProbe"]["grpc"]["service"] == "routemesh.v1.Gateway"
    for sc in [c["securityContext"], container(gw, "render-config")["securityContext"]]:
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod_spec(gw)["securityContext"]["runAsNonRoot"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ORT_DYLIB_PATH"].startswith("/")
    init_env = {e["name"]: e["valueFrom"] for e in container(gw, "render-config")["env"] if "valueFrom" in e}
    assert init_env["AUTH_KEYS"]["secretKeyRef"] == {"name": "routemesh-api-keys", "key": "keys.json"}
    assert init_env["REDIS_URL"]["secretKeyRef"] == {"name": "routemesh-redis", "key": "url"}
    assert "AUTH_KEYS" not in json.dumps(c), "secrets reach only the init container"
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rm-routemesh-gateway"}
    assert hpa["spec"]["minReplicas"] == 3
    svc = one(objs, "Service", "rm-routemesh-gateway")
    assert {p["name"] for p in svc["spec"]["ports"]} == {"grpc", "http", "metrics"}


@pytest.mark.parametrize("name", SCENARIOS)
def test_pods_meet_the_restricted_pod_security_standard(name):
    """Every pod but GPU pools' (whose engine image picks its own user) meets
    Kubernetes' `restricted` Pod Security Standard; agents do everywhere."""
    _, objs = scenario(name)
    for w in find(objs, "Deployment") + find(objs, "StatefulSet"):
        spec = pod_spec(w)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in containers(w) + containers(w, init=True):
            if c["name"] == "engine":
                assert c["securityContext"].get("allowPrivilegeEscalation") is False
                continue
            sc = c["securityContext"]
            where = f"{w['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert not sc.get("privileged"), where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert all("hostPath" not in v for v in spec.get("volumes", []))


def test_default_install_is_a_self_contained_trial():
    _, objs = scenario("default")
    assert one(objs, "StatefulSet", "rm-routemesh-redis")
    gw = one(objs, "Deployment", "rm-routemesh-gateway")
    assert gw["spec"]["replicas"] == 1
    svc = one(objs, "Service", "rm-routemesh-gateway")
    assert [p["name"] for p in svc["spec"]["ports"]] == ["grpc", "http", "metrics"]
    assert not find(objs, "ServiceMonitor") and not find(objs, "PrometheusRule") and not find(objs, "HorizontalPodAutoscaler")
    [worker] = [d for d in find(objs, "Deployment") if d is not gw]
    assert [c["name"] for c in containers(worker)] == ["agent"]
    assert "nvidia.com/gpu" not in json.dumps(worker)


def test_gpu_pools_request_gpus_and_schedule_on_gpu_nodes():
    _, objs = scenario("production")
    values = load_values(SCENARIOS["production"])
    for pool in values["workerPools"]:
        d = one(objs, "Deployment", f"rm-routemesh-worker-{pool['name']}")
        engine = container(d, "engine")
        assert engine["resources"]["limits"]["nvidia.com/gpu"] == pool["engine"]["gpus"]
        assert engine["startupProbe"]["httpGet"]["path"] == "/health"
        assert "nvidia.com/gpu" not in json.dumps(container(d, "agent")["resources"])
        spec = pod_spec(d)
        assert spec["nodeSelector"] == pool["nodeSelector"]
        assert spec["tolerations"] == pool["tolerations"]
        assert spec["runtimeClassName"] == "nvidia"
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, "no spare GPU needed to roll"
        assert {v["name"] for v in spec["volumes"]} >= {"dshm", "config", "config-template", "scripts"}
        agent = container(d, "agent")
        assert agent["securityContext"]["runAsNonRoot"] and agent["securityContext"]["readOnlyRootFilesystem"]
    assert one(objs, "PodDisruptionBudget", "rm-routemesh-worker-llama-8b")["spec"]["maxUnavailable"] == 1


def test_network_policies():
    _, objs = scenario("default")
    pols = {p["metadata"]["name"]: p for p in find(objs, "NetworkPolicy")}
    assert set(pols) == {"rm-routemesh-gateway", "rm-routemesh-worker", "rm-routemesh-redis"}
    deployments = find(objs, "Deployment") + find(objs, "StatefulSet")
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deployments}
    gateway_pod = labels["rm-routemesh-gateway"]
    worker_pod = labels["rm-routemesh-worker-sim-small"]
    redis_pod = labels["rm-routemesh-redis"]

    def allowed(policy, src_labels, port):
        if not matches(policy["spec"]["podSelector"], policy_target := policy_target_labels[policy["metadata"]["name"]]):
            return False
        for rule in policy["spec"]["ingress"]:
            if port not in [p["port"] for p in rule.get("ports", [])]:
                continue
            peers = rule.get("from")
            if not peers or any("podSelector" in p and "namespaceSelector" not in p and matches(p["podSelector"], src_labels) for p in peers):
                return True
        return False

    policy_target_labels = {"rm-routemesh-gateway": gateway_pod, "rm-routemesh-worker": worker_pod, "rm-routemesh-redis": redis_pod}
    outsider = {"app": "something-else"}
    assert allowed(pols["rm-routemesh-gateway"], outsider, 50051)
    # The admin port (metrics, every tenant's spend) has a rule of its own:
    # pods of the cluster (any namespace), nothing from outside it.
    [admin_rule] = [r for r in pols["rm-routemesh-gateway"]["spec"]["ingress"] if [p["port"] for p in r["ports"]] == [9090]]
    assert admin_rule["from"] == [{"namespaceSelector": {}}]
    client_rules = [r for r in pols["rm-routemesh-gateway"]["spec"]["ingress"] if 50051 in [p["port"] for p in r["ports"]]]
    assert all(9090 not in [p["port"] for p in r["ports"]] for r in client_rules)
    assert allowed(pols["rm-routemesh-worker"], gateway_pod, 50061)
    assert not allowed(pols["rm-routemesh-worker"], outsider, 50061)
    assert not allowed(pols["rm-routemesh-worker"], worker_pod, 50061)
    assert allowed(pols["rm-routemesh-redis"], gateway_pod, 6379)
    assert allowed(pols["rm-routemesh-redis"], worker_pod, 6379)
    assert not allowed(pols["rm-routemesh-redis"], outsider, 6379)
    # Other pools' agent ports are covered too.
    _, objs = scenario("options")
    [worker_pol] = [p for p in find(objs, "NetworkPolicy") if p["metadata"]["name"] == "mesh-worker"]
    assert sorted(p["port"] for p in worker_pol["spec"]["ingress"][0]["ports"]) == [50061, 50071]
    _, objs = scenario("gateway-only")
    assert not find(objs, "NetworkPolicy")


@pytest.mark.parametrize("name", ["production", "options"])
def test_prometheus_operator_objects(name):
    """ServiceMonitor and PrometheusRule are CRs kubernetes-validate has no schema for."""
    _, objs = scenario(name)
    sm = one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    [svc] = [s for s in find(objs, "Service") if matches(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert seconds(ep["scrapeTimeout"]) <= seconds(ep["interval"])
    rule = one(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    deployments = {d["metadata"]["name"] for d in find(objs, "Deployment")}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str) and r["expr"]
            if "for" in r:
                assert re.fullmatch(r"[0-9]+(ms|s|m|h)", r["for"])
            assert r["expr"].count("(") == r["expr"].count(")")
            # Alerts name deployments this release really has.
            for dep in re.findall(r'deployment="([^"]+)"', r["expr"]):
                assert dep in deployments, dep
    if name == "production":
        assert {m["metadata"]["labels"].get("release") for m in (sm, rule)} == {"kube-prometheus-stack"}


def test_prometheus_rules_with_promtool(tmp_path):
    """promtool parses every expression and unit-tests the alerts on synthetic
    kube-state-metrics series (Debian's `prometheus` package has promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian: apt-get install prometheus): PromQL not checked")
    _, objs = scenario("production")
    rule = one(objs, "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}

    def expect(name, labels, **extra):
        r = next(r for n, r in alerts.items() if n == name and all(r["labels"].get(k) == v for k, v in extra.items()))
        return {"exp_labels": {**labels, **r["labels"]}, "exp_annotations": r.get("annotations", {})}

    ksm = 'kube_deployment_{}{{namespace="routemesh", deployment="{}"}}'
    gw, pool = "rm-routemesh-gateway", "rm-routemesh-worker-llama-70b"
    gw_labels = {"namespace": "routemesh", "deployment": gw}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {   # the gateway loses one replica, then all
                "interval": "1m",
                "input_series": [
                    {"series": ksm.format("spec_replicas", gw), "values": "3x40"},
                    {"series": ksm.format("status_replicas_available", gw), "values": "3x4 2x15 0x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "RoutemeshGatewayReplicasUnavailable", "exp_alerts": []},
                    {"eval_time": "17m", "alertname": "RoutemeshGatewayReplicasUnavailable",
                     "exp_alerts": [expect("RoutemeshGatewayReplicasUnavailable", gw_labels)]},
                    {"eval_time": "17m", "alertname": "RoutemeshGatewayDown", "exp_alerts": []},
                    {"eval_time": "24m", "alertname": "RoutemeshGatewayDown",
                     "exp_alerts": [expect("RoutemeshGatewayDown", gw_labels)]},
                ],
            },
            {   # a pool with no pod fires; a pool scaled to zero on purpose does not
                "interval": "1m",
                "input_series": [
                    {"series": ksm.format("spec_replicas", pool), "values": "2x20 0x20"},
                    {"series": ksm.format("status_replicas_available", pool), "values": "0x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "18m", "alertname": "RoutemeshWorkerPoolUnavailable",
                     "exp_alerts": [expect("RoutemeshWorkerPoolUnavailable", {"namespace": "routemesh", "deployment": pool}, pool="llama-70b")]},
                    {"eval_time": "38m", "alertname": "RoutemeshWorkerPoolUnavailable", "exp_alerts": []},
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["production", "options"])
def test_grafana_dashboard_configmap(name):
    _, objs = scenario(name)
    [cm] = [c for c in find(objs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    if name == "production":
        assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["data"], "the dashboard is in the ConfigMap"
    for fname, text in cm["data"].items():
        assert fname.endswith(".json")
        dash = json.loads(text)
        assert dash["uid"] and dash["title"] and isinstance(dash["panels"], list)
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        # The chart ships a copy of deploy/grafana (charts cannot read outside their directory).
        assert (DEPLOY / "grafana" / fname).read_text() == (CHART / "dashboards" / fname).read_text()


def test_config_change_rolls_the_pods():
    _, before = scenario("default")
    after = objects_of(render({"gateway": {"config": {"cost_weight": 5}}}))
    ann = lambda objs: one(objs, "Deployment", "rm-routemesh-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert ann(before)["checksum/config"] != ann(after)["checksum/config"]


# --- invalid values --------------------------------------------------------


def invalid_cases():
    for path in sorted(INVALID.glob("*.yaml")):
        expect = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
        assert expect, f"{path.name} has no '# expect:' line"
        yield pytest.param(path, expect.group(1).strip(), id=path.stem)


@pytest.mark.parametrize("path,expected", list(invalid_cases()))
def test_invalid_values_are_rejected_naming_the_key(path, expected):
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as err:
        render(load_values(path))
    assert expected in str(err.value), f"{path.name}: expected {expected!r} in:\n{err.value}"
    if err.type is helm.HelmValuesError:
        # `helm lint` reports schema errors too (it ignores templates' `fail` on purpose).
        report = helm.lint(CHART, load_values(path), strict=True)
        assert any(expected in m["error"] for m in report["messages"] if m["severity"] >= 2), report


def test_schema_is_draft7_and_a_second_validator_agrees():
    """values.schema.json is plain draft-07 (Helm 3's validator and Helm 4's
    both read it); Python's jsonschema must accept every valid values file and
    reject every schema-invalid one, as Helm does."""
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    with helm.Chart.load(CHART) as chart:
        for name, path in SCENARIOS.items():
            errors = [e.message for e in validator.iter_errors(chart.merge_values(load_values(path)))]
            assert not errors, (name, errors)
        for param in invalid_cases():
            path, expected = param.values
            if expected.startswith("at '/"):  # a schema error, not a template's `fail`
                merged = chart.merge_values(load_values(path))
                assert list(validator.iter_errors(merged)), f"{path.name}: Python's jsonschema accepts it"


# --- golden files ----------------------------------------------------------


def golden_texts(name) -> dict[str, str]:
    """What `helm template` would print (manifests only, valid multi-document
    YAML), and NOTES.txt apart."""
    rendered, _ = scenario(name)
    manifests = "".join(f"---\n# Source: {path}\n{rendered[path].strip()}\n"
                        for path in sorted(rendered) if rendered[path].strip() and not path.endswith("NOTES.txt"))
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    return {f"{name}.yaml": manifests, f"{name}.NOTES.txt": notes}


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden(name):
    for fname, text in golden_texts(name).items():
        golden = GOLDEN / fname
        if os.environ.get("UPDATE_GOLDEN") == "1" or not golden.exists():
            if os.environ.get("CI") == "true" and not golden.exists():
                pytest.fail(f"{golden} is missing: run UPDATE_GOLDEN=1 pytest {__file__} and commit it")
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), (
            f"the rendered chart differs from {golden.relative_to(ROOT)}; if the change is intended, "
            f"rewrite it with UPDATE_GOLDEN=1 and review the diff"
        )


@pytest.mark.parametrize("name", SCENARIOS)
def test_kubernetes_validate_cli_on_golden_files(name):
    """The CLI as an operator would run it on `helm template` output."""
    cli = pathlib.Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(cli), "--strict", "-k", KUBE_VERSION, str(GOLDEN / f"{name}.yaml")],
                            capture_output=True, text=True, timeout=120)
    lines = [l for l in result.stdout.splitlines() if l.strip()]
    # CRs it has no schema for are warned about; every other object must pass.
    bad = [l for l in lines if not l.startswith("INFO") and not (l.startswith("WARN") and any(g.rstrip("/") in l for g in CRD_GROUPS))]
    assert result.returncode == 0 and not bad, result.stdout + result.stderr
    objs = scenario(name)[1]
    crs = sum(o["apiVersion"].startswith(CRD_GROUPS) for o in objs)
    assert sum(l.startswith("INFO") for l in lines) == len(objs) - crs, result.stdout


def test_packaged_chart_renders_the_same(tmp_path):
    """`helm package` keeps templates, files and dashboards, drops tests/ and
    ci/ (.helmignore), and the archive renders exactly like the directory."""
    import tarfile

    archive = helm.package(CHART, destination=tmp_path)
    names = set(tarfile.open(archive).getnames())
    assert {"routemesh/files/render-config.sh", "routemesh/dashboards/routemesh-overview.json",
            "routemesh/values.schema.json"} <= names
    assert not [n for n in names if n.startswith(("routemesh/tests/", "routemesh/ci/"))], names
    values = load_values(SCENARIOS["production"])
    with helm.Chart.load_archive(pathlib.Path(archive).read_bytes()) as packaged:
        assert packaged.render(values, name=RELEASE, namespace=NAMESPACE) == scenario("production")[0]


# --- the tools themselves --------------------------------------------------


def test_rendering_and_validation_need_no_network():
    """helm-python-sdk and kubernetes-validate work offline (no chart repos,
    no schema downloads): run both in a network namespace with no interfaces up."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root and unshare)")
    code = f"""
import helm_python as helm, kubernetes_validate, yaml, socket
assert [name for _, name in socket.if_nameindex()] == ["lo"], "not isolated: the test would prove nothing"
with helm.Chart.load({str(CHART)!r}) as c:
    out = c.render(yaml.safe_load(open({str(SCENARIOS['production'])!r})), name="rm", namespace="routemesh")
n = 0
for path, text in out.items():
    if path.endswith("NOTES.txt"):
        continue
    for obj in yaml.safe_load_all(text):
        if obj and not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, "{KUBE_VERSION}", strict=True)
            n += 1
assert helm.lint({str(CHART)!r}, strict=True)["errors"] == []
print(n)
"""
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 5


def test_images_match_the_chart():
    """The Dockerfile puts the binary, ONNX Runtime and the router where the chart expects them."""
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    values = helm.Chart.load(CHART).values
    assert values["gateway"]["onnxruntime"]["libraryPath"] in dockerfile
    assert values["gateway"]["router"]["path"] in dockerfile
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I)
    assert {"gateway", "worker"} <= set(stages), stages
    assert re.search(r"^USER\s+10001", dockerfile, re.M), "images run as the chart's non-root uid"
    assert "/usr/local/bin/routemesh" in dockerfile
    assert (DEPLOY / "docker" / "Dockerfile.dockerignore").exists()
    assert "ARG ROUTER_DIR=router/artifacts/default" in dockerfile
    assert (ROOT / "router" / "artifacts" / "default" / "manifest.json").exists()
    assert "ROUTEMESH_ASSETS=/usr/share/routemesh/assets" in dockerfile
