#!/usr/bin/env bash
# CPU per request: the CPU time (utime + stime from /proc) the mesh process
# (`routemesh up`: gateway and its zero-delay worker in one process, the hop
# between them over loopback gRPC as deployed) spends for 10 s of open-loop
# load straight to the worker, then for 10 s through the gateway. The
# gateway's share is the difference per request.
#
#   tests/bench/cpu_per_request.sh [RATE]         (default 2000)
#   LOADGEN=path/to/routemesh tests/bench/cpu_per_request.sh
#       (the load generator of another build, so two builds are compared
#       under the same client)
#
# Loopback only; about 30 s. Run builds alternately: the spread between runs
# of one build on a shared 2-core machine is wide (docs/BENCHMARKS.md).
source "$(dirname "$0")/lib.sh"
build_release
LOADGEN=${LOADGEN:-$BIN}
bench() {
    local out=$1
    shift
    "$LOADGEN" bench --json --output "$out" "$@" > /dev/null
}
RATE=${1:-2000}
start_zero_mesh cpu
GATEWAY=$(ready_field "$MESH_READY" 'd["gateway"]')
WORKER=$(ready_field "$MESH_READY" 'd["workers"][0]["endpoint"]')
ticks() { awk '{print $14+$15}' /proc/$MESH_PID/stat; }
hz=$(getconf CLK_TCK)
# direct to the worker: its cost alone
bench "$WORK/w.json" --target worker-generate --url "$WORKER" --rate "$RATE" --duration 2s > /dev/null
t0=$(ticks); bench "$WORK/d.json" --target worker-generate --url "$WORKER" --rate "$RATE" --duration 10s; t1=$(ticks)
bench "$WORK/w2.json" --target generate --url "$GATEWAY" --rate "$RATE" --duration 2s > /dev/null
t2=$(ticks); bench "$WORK/g.json" --target generate --url "$GATEWAY" --rate "$RATE" --duration 10s; t3=$(ticks)
n=$((RATE*10))
python3 -c "
hz=$hz; n=$n
d=($t1-$t0)/hz; g=($t3-$t2)/hz
print(f'commit $(git -C "$ROOT" rev-parse --short HEAD) rate $RATE: direct {d:.2f} s CPU ({d/n*1e3:.3f} ms/req), through gateway {g:.2f} s ({g/n*1e3:.3f} ms/req), gateway share {(g-d)/n*1e3:.3f} ms/req')
"
