#!/usr/bin/env python3
"""Is the router better than each reference by more than the noise? Paired bootstrap over rows.

  router-cli eval --cv 5 DATA... --pred-out DIR     # DIR/group*.pred.jsonl (router), group*.pred<c>.jsonl
  .venv/bin/python router/train/tools/paired_se.py DIR [--boot 200] [--route-eval PATH]

For every group and reference it prints the router's and the reference's metric (APGR for a strong/weak
pair, AIQ for many models), the reference's own bootstrap standard error, and the standard error of the
paired difference (router − reference on the same resampled rows). Metrics come from
shared/tools/route_eval.py itself, so they are the reference definitions.
"""
import argparse, glob, importlib.util, json, os, sys

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--boot", type=int, default=200)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--route-eval", default=os.path.join(os.path.dirname(__file__), "../../../../shared/tools/route_eval.py"))
a = ap.parse_args()

spec = importlib.util.spec_from_file_location("route_eval", a.route_eval)
RE = importlib.util.module_from_spec(spec)
spec.loader.exec_module(RE)

names = json.load(open(os.path.join(a.dir, "predictors.json")))


def metric(true, pred, cost, pair):
    if pair:
        s, w = pair
        if true[:, s].mean() == true[:, w].mean():
            return float("nan")
        return RE.binary_metrics(pred[:, s] - pred[:, w], true[:, s], true[:, w])["apgr"]
    lo, hi = cost.min(1).mean(), cost.max(1).mean()
    return RE.curve_metrics(RE.sweep(pred, true, cost), lo, hi, lo, hi, 1.0)["aiq"]


for data in sorted(glob.glob(os.path.join(a.dir, "group*.data.jsonl"))):
    g = data[: -len(".data.jsonl")]
    models, true, pred0, cost = RE.load(data, g + ".pred.jsonl", RE.DEFAULT_MODELS)
    pair = None
    if len(models) == 2:
        prices = json.load(open(RE.DEFAULT_MODELS))
        by_price = sorted(models, key=lambda m: prices[m]["input_usd_per_mtok"] + prices[m]["output_usd_per_mtok"])
        pair = (models.index(by_price[-1]), models.index(by_price[0]))
    refs = []
    for c in range(1, len(names)):
        p = f"{g}.pred{c}.jsonl"
        if os.path.exists(p):
            refs.append((names[c], RE.load(data, p, RE.DEFAULT_MODELS)[2]))
    rng = np.random.default_rng(a.seed)
    idx = [rng.integers(0, len(true), len(true)) for _ in range(a.boot)]
    kind = "APGR" if pair else "AIQ"
    base = metric(true, pred0, cost, pair)
    boot0 = np.array([metric(true[i], pred0[i], cost[i], pair) for i in idx])
    print(f"\n== {os.path.basename(g)}: {len(true)} rows, {kind}; router = {names[0]}")
    print(f"   router {kind} {base:.4f} (se {np.nanstd(boot0, ddof=1):.4f})")
    print(f"   {'reference':58s} {kind:>7s} {'se':>7s} {'diff':>7s} {'se diff':>7s}  beaten by > se (own / paired)")
    for name, pr in refs:
        v = metric(true, pr, cost, pair)
        b = np.array([metric(true[i], pr[i], cost[i], pair) for i in idx])
        se, se_d = np.nanstd(b, ddof=1), np.nanstd(boot0 - b, ddof=1)
        d = base - v
        print(f"   {name[:58]:58s} {v:7.4f} {se:7.4f} {d:+7.4f} {se_d:7.4f}  {'yes' if d > se else 'no'} / {'yes' if d > se_d else 'no'}")
    sys.stdout.flush()
