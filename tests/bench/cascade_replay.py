#!/usr/bin/env python3
"""Cascades through the live mesh on recorded GSM8K answers.

Starts `routemesh up` with two sim workers replaying ../shared/data's GSM8K
rows (Mixtral as the small model, GPT-4 as the large one), `strategy:
cascade`, and sends every row's prompt through the gateway's gRPC API. Each
response says whether the cascade escalated and carries the replayed
dataset score of the answer returned (`usage.replay_quality`). Reports, per
setting: the share escalated, the quality reached, the cost, and the quality
gained per escalation next to escalating a random share of the same size
(whose expected gain per escalation is the mean of strong minus weak).

Usage: tests/bench/cascade_replay.py [--shares 0.2,0.3,0.5] [--verifier learned]
       [--concurrency 8] [--limit N] [--json]
Needs ROUTEMESH_BIN (default target/release/routemesh) and grpcio-tools
(tests/python/requirements.txt).
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "routing" / "gsm8k.jsonl"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
PRICES = {WEAK: (0.6, 0.6), STRONG: (10.0, 30.0)}


def stubs(out: pathlib.Path):
    out.mkdir(parents=True, exist_ok=True)
    protos = [str(p) for p in (ROOT / "proto").rglob("*.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
         f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, str(out))


def mesh_yaml(cascade: str) -> str:
    def worker(wid, model, tier):
        i, o = PRICES[model]
        return (
            f"  - id: {wid}\n    model: {model}\n    tier: {tier}\n"
            f"    input_usd_per_mtok: {i}\n    output_usd_per_mtok: {o}\n    capacity: 64\n    max_queue: 256\n"
            f"    backend:\n      sim: {{tokens_per_second: {{median: 0}}, ttft_ms: {{median: 0}}, replay: {DATA}}}\n"
        )

    return (
        "gateway:\n  listen: 127.0.0.1:0\n  http_listen: null\n  admin_listen: 127.0.0.1:0\n"
        "  max_tokens_limit: 8192\n"
        f"  strategy: cascade\n  cascade: {cascade}\n"
        "workers:\n" + worker("mixtral-0", WEAK, "small") + worker("gpt4-0", STRONG, "large")
    )


def start(yaml_text: str, tmp: pathlib.Path):
    cfg = tmp / "mesh.yaml"
    cfg.write_text(yaml_text)
    ready = tmp / "ready.json"
    ready.unlink(missing_ok=True)
    log = open(tmp / "mesh.log", "w")
    binary = os.environ.get("ROUTEMESH_BIN", str(ROOT / "target" / "release" / "routemesh"))
    proc = subprocess.Popen(
        [binary, "up", "--config", str(cfg), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"},
    )
    deadline = time.time() + 60
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"mesh did not start:\n{(tmp / 'mesh.log').read_text()[-3000:]}")
        time.sleep(0.05)
    time.sleep(0.05)  # the file is written whole, but give the writer a moment
    return proc, json.loads(ready.read_text())["gateway"].removeprefix("http://")


def run(rows, cascade: str, concurrency: int, tmp: pathlib.Path):
    import grpc
    from routemesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    proc, addr = start(mesh_yaml(cascade), tmp)
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = gateway_pb2_grpc.GatewayStub(channel)
        time.sleep(1.0)  # both workers' first load checks

        def one(row):
            req = gateway_pb2.GenerateRequest(
                messages=[common_pb2.ChatMessage(role="user", content=row["prompt"])],
                params=common_pb2.GenerationParams(max_tokens=8192),
            )
            resp = stub.Generate(req, timeout=60)
            return row, resp

        results = []
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for row, resp in pool.map(one, rows):
                results.append((row, resp))
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def summarise(results):
    n = len(results)
    escalated = sum(1 for _, r in results if r.route.escalated)
    quality = sum(r.usage.replay_quality for _, r in results) / n
    cost = sum(r.usage.cost_usd for _, r in results) / n
    weak = sum(row["scores"][WEAK] for row, _ in results) / n
    strong = sum(row["scores"][STRONG] for row, _ in results) / n
    share = escalated / n
    gained = (quality - weak) * n / escalated if escalated else 0.0
    random_gain = strong - weak
    pgr = (quality - weak) / (strong - weak) if strong != weak else 0.0
    return {
        "rows": n,
        "escalated_share": round(share, 4),
        "quality": round(quality, 4),
        "weak_only_quality": round(weak, 4),
        "strong_only_quality": round(strong, 4),
        "pgr": round(pgr, 4),
        "random_escalation_quality": round(weak + share * random_gain, 4),
        "gain_per_escalation": round(gained, 4),
        "random_gain_per_escalation": round(random_gain, 4),
        "cost_per_request_usd": cost,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shares", default="0.2,0.3,0.5")
    ap.add_argument("--verifier", default="learned")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this benchmark replays the shared routing data")
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if WEAK in r.get("responses", {}) and STRONG in r.get("responses", {})]
    if args.limit:
        rows = rows[: args.limit]
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        stubs(tmp / "stubs")
        for share in [float(s) for s in args.shares.split(",")]:
            cascade = f"{{verifier: {args.verifier}, target_escalation_share: {share}}}"
            started = time.time()
            out = summarise(run(rows, cascade, args.concurrency, tmp))
            out["target_escalation_share"] = share
            out["seconds"] = round(time.time() - started, 1)
            report.append(out)
            if not args.json:
                print(json.dumps(out))
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
