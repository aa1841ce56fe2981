#!/usr/bin/env bash
# Slowloris: CONNECTIONS half-open connections (half-sent HTTP/1 headers on
# the HTTP port, nothing at all on the gRPC port) held for HOLD seconds while
# a prober checks, every 0.5 s, that the admin port's /healthz and the
# OpenAI API (a fresh connection each time) answer within 1 s. Reports the
# probes' worst latency and failures, how many of the flood's sockets the
# gateway closed, and the gateway's RSS before, at peak and after.
#
#   tests/bench/slowloris.sh                 (CONNECTIONS=19000 HOLD=45)
#   CONNECTIONS=5000 HOLD=20 tests/bench/slowloris.sh
#
# Loopback only; stops by itself. Needs an open-file limit above
# CONNECTIONS for this shell (ulimit -n).
source "$(dirname "$0")/lib.sh"

CONNECTIONS=${CONNECTIONS:-19000}
HOLD=${HOLD:-45}

build_release
machine_info
start_zero_mesh slowloris
HTTP=$(ready_field "$MESH_READY" 'd["http"]')
GRPC=$(ready_field "$MESH_READY" 'd["gateway"]')
ADMIN=$(ready_field "$MESH_READY" 'd["admin"]')
echo "gateway: grpc $GRPC, http $HTTP, admin $ADMIN, pid $MESH_PID; rss $(rss_mib "$MESH_PID") MiB idle"

python3 - "$HTTP" "$GRPC" "$ADMIN" "$CONNECTIONS" "$HOLD" "$MESH_PID" <<'PY'
import asyncio, json, sys, time

http, grpc, admin, total, hold, pid = sys.argv[1:7]
total, hold = int(total), float(hold)

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

def split(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)

async def request(addr, raw):
    """One HTTP/1.1 request on a fresh connection; (ok, seconds)."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*split(addr)), 1.0)
        writer.write(raw)
        line = await asyncio.wait_for(reader.readline(), 1.0 - (time.monotonic() - start))
        writer.close()
        return line.startswith(b"HTTP/1.1 200"), time.monotonic() - start
    except Exception:
        return False, time.monotonic() - start

body = json.dumps({"model": "zero", "messages": [{"role": "user", "content": "hi"}]}).encode()
chat = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
health = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

async def main():
    held, failed_opens = [], 0
    probes = {"health": [], "chat": []}
    stop = asyncio.Event()

    async def prober():
        while not stop.is_set():
            for name, addr, raw in (("health", admin, health), ("chat", http, chat)):
                probes[name].append(await request(addr, raw))
            await asyncio.sleep(0.5)

    closed = 0

    async def watch(r):
        # Reads whatever the gateway sends (HTTP/2 settings) until it closes.
        nonlocal closed
        try:
            await r.read()
        except Exception:
            pass
        closed += 1

    watchers = []

    async def open_one(addr, opening):
        nonlocal failed_opens
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(*split(addr)), 5)
            if opening:
                w.write(opening)
            held.append((r, w))
            watchers.append(asyncio.create_task(watch(r)))
        except Exception:
            failed_opens += 1

    probe = asyncio.create_task(prober())
    rss0 = rss_mib()
    start = time.monotonic()
    for i in range(0, total, 500):
        batch = range(i, min(total, i + 500))
        await asyncio.gather(*(open_one(http, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                               if j % 2 == 0 else open_one(grpc, b"") for j in batch))
    opened = time.monotonic() - start
    peak = rss_mib()
    end = time.monotonic() + hold
    while time.monotonic() < end:
        await asyncio.sleep(1)
        peak = max(peak, rss_mib())
    closed_by_gateway = closed
    stop.set()
    await probe
    for _, w in held:
        w.close()
    for t in watchers:
        t.cancel()
    await asyncio.sleep(30)
    after = rss_mib()
    def summary(name):
        results = probes[name]
        ok = sum(1 for good, _ in results if good)
        worst = max((s for _, s in results), default=0.0)
        return f"{name}: {ok}/{len(results)} ok within 1 s, worst {worst * 1000:.0f} ms"
    print(f"flood:   {total} connections opened in {opened:.1f} s ({failed_opens} refused at connect), held {hold:.0f} s")
    print(f"closed:  {closed_by_gateway} of the {len(held)} flood sockets closed by the gateway by the end of the hold")
    print("probes:  " + summary("health") + "; " + summary("chat"))
    print(f"rss:     {rss0:.0f} MiB before, {peak:.0f} MiB peak, {after:.0f} MiB 30 s after the flood closed")

asyncio.run(main())
PY
