#!/usr/bin/env bash
# Redis CPU per command of the gateway's command mix, on a redis-server of
# this run (INFO cpu around redis-benchmark or redis-cli): HGETALL of a
# telemetry slot hash as the number of writing gateways grows, the former
# per-request SET … PX, HINCRBYFLOAT, and one flush's HSET of 1,000 served
# records. For sizing a shard (docs/DEPLOY.md, "Sizing").
#
#   tests/bench/redis_command_cost.sh
source "$(dirname "$0")/lib.sh"
machine_info
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port $PORT --bind 127.0.0.1 --save '' --appendonly no > "$WORK/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
until redis-cli -p $PORT ping >/dev/null 2>&1; do sleep 0.05; done
cpu() { redis-cli -p $PORT info cpu | python3 -c 'import re,sys; t=sys.stdin.read(); print(sum(float(v) for v in re.findall(r"used_cpu_(?:sys|user):([0-9.]+)", t)))'; }
per() { python3 -c "import sys; print(f'{(float(sys.argv[2])-float(sys.argv[1]))/float(sys.argv[3])*1e6:.2f}')" "$1" "$2" "$3"; }
for G in 1 10 50 100; do
  redis-cli -p $PORT del h > /dev/null
  python3 - "$G" <<'PY' | redis-cli -p $PORT > /dev/null
import sys
g = int(sys.argv[1])
for w in range(g):
    args = ["HSET", "h"]
    for f in ["n","ok","ttft_sum","total_sum","t3","l5","p2","decode_tok","decode_ms","tok_in","tok_out","cost"]:
        args += [f"{w:012x}.1:{f}", "123.456"]
    print(" ".join(args))
PY
  a=$(cpu); redis-benchmark -p $PORT -n 20000 -c 4 -q HGETALL h > /dev/null; b=$(cpu)
  echo "HGETALL of a slot hash of $G writers ($(redis-cli -p $PORT hlen h) fields): $(per $a $b 20000) us"
done
V=$(python3 -c "print('x'*500)")
a=$(cpu); redis-benchmark -p $PORT -n 100000 -c 4 -r 100000000 -q SET "k:__rand_int__" "$V" PX 3600000 > /dev/null; b=$(cpu)
echo "SET of 500 B with PX into fresh keys (the former per-request write), unpipelined: $(per $a $b 100000) us"
a=$(cpu); redis-benchmark -p $PORT -n 100000 -c 4 -P 50 -r 100000000 -q SET "k:__rand_int__" "$V" PX 3600000 > /dev/null; b=$(cpu)
echo "the same, pipelined 50 deep: $(per $a $b 100000) us"
a=$(cpu); redis-benchmark -p $PORT -n 100000 -c 4 -P 50 -q HINCRBYFLOAT k2 f 1.5 > /dev/null; b=$(cpu)
echo "HINCRBYFLOAT, pipelined 50 deep: $(per $a $b 100000) us"
# One flush of 1,000 served records (500 B each) in one HSET, 20 times into fresh fields.
a=$(cpu)
for r in $(seq 20); do
  python3 - "$r" <<'PY' | redis-cli -p $PORT > /dev/null
import sys
r = sys.argv[1]
print(" ".join(["HSET", "big"] + [f"r{r}-id-{i} {'x' * 500}" for i in range(1000)]))
PY
done
b=$(cpu)
echo "HSET of 1,000 fields of 500 B (one flush at 1,000 req/s): $(per $a $b 20) us, $(per $a $b 20000) us per record"
redis-cli -p $PORT info memory | grep -E "^used_memory:" 
echo "fields in big: $(redis-cli -p $PORT hlen big)"
