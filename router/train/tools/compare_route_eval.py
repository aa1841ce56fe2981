#!/usr/bin/env python3
"""Compare routemesh's own metrics with shared/tools/route_eval.py on the same predictions.

  router-cli eval --cv 5 DATA... --pred-out DIR      # writes DIR/group*.{data,pred}.jsonl + group*.report.json
  .venv/bin/python router/train/tools/compare_route_eval.py DIR [--route-eval PATH] [--models models.json]

For every group it runs route_eval.py --json and prints the largest absolute difference per metric.
Exit code 1 if any metric differs by more than 1e-9 (10-bin CPT is reported but not enforced: np.interp on
non-monotone accuracies is ill-defined, see route_eval.py).
"""
import argparse, glob, json, os, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--route-eval", default=os.path.join(os.path.dirname(__file__), "../../../../shared/tools/route_eval.py"))
ap.add_argument("--models", default=None)
a = ap.parse_args()
if not os.path.exists(a.route_eval):
    a.route_eval = "/work/shared/tools/route_eval.py"

def num(v):
    return None if v is None else float(v)

worst = 0.0
for rep in sorted(glob.glob(os.path.join(a.dir, "group*.report.json"))):
    g = rep[: -len(".report.json")]
    cmd = [sys.executable, a.route_eval, "--data", g + ".data.jsonl", "--pred", g + ".pred.jsonl", "--json"]
    if a.models:
        cmd += ["--models", a.models]
    ref = json.loads(subprocess.check_output(cmd))
    ours = json.load(open(rep))
    pairs = []
    mr, mo = ref["multi"], ours["multi"]
    for k in ("c_min", "c_max"):
        pairs.append((f"multi.{k}", mr[k], mo[k]))
    for who in ("router", "oracle", "random", "singles_hull"):
        for k in ("aiq", "aiq_rb_code", "q_max", "cost_at_q_max", "q_at_cheapest", "q_at_best", "cost_to_match_best"):
            pairs.append((f"multi.{who}.{k}", mr[who][k], mo[who][k]))
    for name, m in mo["single"]:
        for k in ("aiq", "q_max", "cost_to_match_best"):
            pairs.append((f"multi.single.{name}.{k}", mr["single"][name][k], m[k]))
    assert mr["cheapest_model"] == mo["cheapest_model"] and mr["best_model"] == mo["best_model"]
    soft = []
    if "binary" in ref and ours.get("binary"):
        br, bo = ref["binary"], ours["binary"]
        for k in ("acc_strong", "acc_weak"):
            pairs.append((f"binary.{k}", br[k], bo[k]))
        for who in ("router", "oracle"):
            for k in ("apgr", "cpt20", "cpt50", "cpt80", "max_acc"):
                pairs.append((f"binary.{who}.{k}", br[who][k], bo[who][k]))
            pairs.append((f"binary.{who}.10bin.apgr", br[who]["routellm_10bin"]["apgr"], bo[who]["routellm_10bin"]["apgr"]))
            for k in ("cpt20", "cpt50", "cpt80"):
                soft.append((f"binary.{who}.10bin.{k}", br[who]["routellm_10bin"][k], bo[who]["routellm_10bin"][k]))
    gw, gname = 0.0, ""
    for name, r, o in pairs:
        if (r is None) != (o is None):
            print(f"{g}: {name}: route_eval {r} vs ours {o}")
            gw = float("inf")
            continue
        if r is not None and abs(num(r) - num(o)) > gw:
            gw, gname = abs(num(r) - num(o)), name
    sw = max([abs(num(r) - num(o)) for _, r, o in soft if r is not None and o is not None] or [0.0])
    print(f"{os.path.basename(g)}: rows {ref['n']}, {len(pairs)} metrics compared, max |diff| {gw:.3g} ({gname or '-'})"
          + (f"; 10-bin CPT max |diff| {sw:.3g} (informational)" if soft else ""))
    if "binary" in ref:
        print(f"   APGR route_eval {ref['binary']['router']['apgr']:.6f} ours {ours['binary']['router']['apgr']:.6f}")
    print(f"   AIQ  route_eval {mr['router']['aiq']:.6f} ours {mo['router']['aiq']:.6f}")
    worst = max(worst, gw)
sys.exit(0 if worst <= 1e-9 else 1)
