"""Fixtures for the real-client tests: stubs generated from proto/, and the
real routemesh binary started as separate processes on free ports."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def routemesh_bin() -> str:
    path = os.environ.get("ROUTEMESH_BIN") or str(ROOT / "target" / "debug" / "routemesh")
    if not os.path.exists(path):
        pytest.exit(f"{path} not found: build it first (cargo build --bin routemesh)", returncode=2)
    return path


@pytest.fixture(scope="session")
def stubs():
    """Python modules generated from proto/ with grpcio-tools, as a client would."""
    out = tempfile.mkdtemp(prefix="routemesh-stubs-")
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "routemesh" / "v1").glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    from routemesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402

    class Stubs:
        pass

    s = Stubs()
    s.common, s.gateway, s.gateway_grpc, s.worker, s.worker_grpc = common_pb2, gateway_pb2, gateway_pb2_grpc, worker_pb2, worker_pb2_grpc
    return s


class Running:
    def __init__(self, args, config_text=None):
        self.dir = tempfile.TemporaryDirectory(prefix="routemesh-test-")
        ready = pathlib.Path(self.dir.name) / "ready.json"
        cmd = [routemesh_bin(), *args, "--ready-file", str(ready)]
        if config_text is not None:
            cfg = pathlib.Path(self.dir.name) / "config.yaml"
            cfg.write_text(config_text)
            cmd += ["--config", str(cfg)]
        self.log = open(pathlib.Path(self.dir.name) / "log.txt", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "NO_COLOR": "1"})
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args} exited early: {(pathlib.Path(self.dir.name) / 'log.txt').read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args} did not become ready")
            time.sleep(0.02)
        self.ready = json.loads(ready.read_text())

    @property
    def gateway(self) -> str:
        return self.ready["gateway"]

    @property
    def http(self) -> str:
        return "http://" + self.ready["http"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()


FAST_MESH = """
gateway:
  router: {enabled: false}
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
workers:
  - id: small-0
    model: small-model
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    backend:
      sim: {ttft_ms: {median: 2}, tokens_per_second: {median: 2000}, seed: 5}
  - id: large-0
    model: large-model
    tier: large
    input_usd_per_mtok: 10
    output_usd_per_mtok: 30
    backend:
      sim: {ttft_ms: {median: 5}, tokens_per_second: {median: 1000}, seed: 6}
"""


@pytest.fixture(scope="module")
def mesh():
    """`routemesh up` with a fast two-model sim pool, one process."""
    running = Running(["up"], FAST_MESH)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def demo():
    """`routemesh up` exactly as the quickstart runs it: the embedded demo."""
    running = Running(["up", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield running
    running.stop()
