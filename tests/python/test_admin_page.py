"""The built-in cost page on the admin port, in headless Chromium, after a
known workload: the numbers it shows are those of `/v1/overview` and of
`routemesh cost`, client requests are counted once however many workers
they tried, charts are drawn on real UTC time axes, names are shown as
text, and nothing is loaded from elsewhere. Run against both telemetry
stores: a gateway's own memory and a Redis mesh. A screenshot is kept as a
test artefact (UPDATE_SCREENSHOT=1 also writes the README's copy)."""

import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone

import grpc
import pytest

from conftest import ROOT, Running, routemesh_bin

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = ROOT / "target" / "test-artefacts"
README_SCREENSHOT = ROOT / "docs" / "cost-page.png"
REDIS = os.environ.get("ROUTEMESH_TEST_REDIS", "redis://127.0.0.1:6379")
ACME_KEY, BETA_KEY = "key-acme-" + uuid.uuid4().hex, "key-beta-" + uuid.uuid4().hex
# A model name that is markup (operators name models freely): shown as text
# it is harmless; parsed, it would add an element to the page. The Redis run
# uses it (on the page and in `routemesh cost`); the in-memory run, whose
# screenshot the README shows, keeps a plain name.
MARKUP_LARGE = 'large-model <img src=x onerror="document.body.dataset.owned=1">'


def config(redis_mesh, large):
    registry = f"registry: {{redis: {{url: '{REDIS}', mesh: {redis_mesh}}}}}\n" if redis_mesh else ""
    sha = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    return f"""{registry}
gateway:
  router: {{enabled: false}}
  listen: 127.0.0.1:0
  http_listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  auth:
    keys:
      - {{tenant: acme, sha256: {sha(ACME_KEY)}}}
      - {{tenant: beta, sha256: {sha(BETA_KEY)}}}
workers:
  - id: small-0
    model: small-model
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    backend:
      sim: {{ttft_ms: {{median: 2}}, tokens_per_second: {{median: 2000}}, seed: 5}}
  # Fails every call before any token: the gateway moves its requests to
  # small-0. Its id comes first, so that it wins ties and is tried first.
  - id: a-flaky
    model: small-model
    tier: small
    input_usd_per_mtok: 0.2
    output_usd_per_mtok: 0.2
    backend:
      sim: {{ttft_ms: {{median: 2}}, tokens_per_second: {{median: 2000}}, error_rate: 1.0, seed: 7}}
  - id: large-0
    model: {json.dumps(large)}
    tier: large
    input_usd_per_mtok: 10
    output_usd_per_mtok: 30
    backend:
      sim: {{ttft_ms: {{median: 5}}, tokens_per_second: {{median: 1000}}, seed: 6}}
"""


class Dom(html.parser.HTMLParser):
    """The rendered page: elements by id, rows by kind, chart points, tags seen."""

    def __init__(self):
        super().__init__()
        self.by_id, self.tags, self.rows, self.points, self.bars, self.ticks = {}, set(), {}, {}, {}, {}
        self.texts = []
        self._svg, self._series, self._table, self._row, self._tick, self._cells = None, None, None, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "body":
            self.body = a
        if "id" in a:
            self.by_id[a["id"]] = a
        if tag == "svg":
            self._svg = a.get("id")
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr":
            key = next(((k, v) for k, v in a.items() if k in ("data-tenant", "data-model", "data-worker")), None)
            if key is None and a.get("class") == "total":
                key = ("total", "total")
            self._row, self._cells = key, []
            if key:
                self.rows.setdefault(self._table, {})[key[1]] = self._cells
        if tag == "td" and self._row is not None:
            self._cells.append(a)
        if tag == "circle" and "data-t" in a:
            series = self.points.setdefault(self._svg, {}).setdefault(self._series, [])
            series.append((int(a["data-t"]), float(a["data-value"]), float(a["cx"])))
        if tag == "g" and "data-series" in a:
            self._series = a["data-series"]
        if tag == "g" and a.get("class") == "bar":
            self.bars.setdefault(self._svg, {})[a["data-name"]] = float(a["data-value"])
        if tag == "text" and a.get("class") == "tick-x":
            self._tick = (self._svg, int(a["data-t"]), float(a["x"]))

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._tick:
            self.ticks.setdefault(self._tick[0], []).append((self._tick[1], self._tick[2], data))
            self._tick = None
        if self._row is not None and self._cells and "text" not in self._cells[-1]:
            self._cells[-1]["text"] = data


def chromium(*args):
    profile = tempfile.mkdtemp(prefix="routemesh-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=8000", *args],
            capture_output=True, text=True, timeout=90,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def load(url):
    dumped = chromium("--window-size=1400,2400", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert 'data-loaded="true"' in dumped.stdout, dumped.stdout[-3000:]
    dom = Dom()
    dom.feed(dumped.stdout)
    return dom


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def failovers(admin):
    with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("routemesh_failovers_total"))


def workload(mesh, stubs, large):
    """Known traffic: acme asks small-model until one request has failed over
    (a-flaky fails every call), then the large model twice; beta asks once. Returns the client requests sent, by (tenant, model)."""
    admin = "http://" + mesh.ready["admin"]
    sent = {}
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)

        def ask(key, tenant, model):
            req = stubs.gateway.GenerateRequest(model=model, messages=[stubs.common.ChatMessage(role="user", content="What is routing?")])
            gw.Generate(req, metadata=[("authorization", f"Bearer {key}")], timeout=10)
            sent[(tenant, model)] = sent.get((tenant, model), 0) + 1

        for _ in range(60):
            ask(ACME_KEY, "acme", "small-model")
            if failovers(admin) >= 1 and sent[("acme", "small-model")] >= 6:
                break
        assert failovers(admin) >= 1, "a request moved from a-flaky to small-0"
        for _ in range(2):
            ask(ACME_KEY, "acme", large)
        ask(BETA_KEY, "beta", "small-model")
    return sent


def settled_overview(admin, requests):
    """The overview once every request sent is in the report (telemetry is flushed in the background)."""
    deadline = time.monotonic() + 15
    while True:
        overview = get_json(admin + "/v1/overview")
        live_calls = sum(m["calls"] for m in overview["live"]["models"])
        if min(overview["cost"]["total"]["requests"], overview["daily"]["total"]["requests"], live_calls) >= requests:
            return overview
        assert time.monotonic() < deadline, overview["cost"]["total"]
        time.sleep(0.1)


def utc(ms):
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def check_time_axis(dom, svg_id, report):
    """Points at the middle of their period, placed by time; ticks labelled with their UTC time."""
    period = {"hour": 3_600_000, "day": 86_400_000}[report["period"]]
    attrs = dom.by_id[svg_id]
    t0, t1 = int(attrs["data-from"]), int(attrs["data-to"])
    x0, x1 = float(attrs["data-x0"]), float(attrs["data-x1"])
    assert (t0, t1) == (report["from_ms"], report["from_ms"] + report["periods"] * period)
    for series, points in dom.points[svg_id].items():
        for t, _, cx in points:
            assert (t - t0) % period == 0, series
            assert cx == pytest.approx(x0 + (x1 - x0) * (t + period / 2 - t0) / (t1 - t0), abs=0.06), (series, t)
    ticks = dom.ticks[svg_id]
    assert len(ticks) >= 4, ticks
    for t, x, label in ticks:
        assert t0 <= t <= t1 and x == pytest.approx(x0 + (x1 - x0) * (t - t0) / (t1 - t0), abs=0.06)
        at = utc(t)
        if report["period"] == "day" or at.hour == 0:
            assert label == f"{at.day} {at.strftime('%b')}", (t, label)
        else:
            assert label == f"{at.hour:02d}:00", (t, label)


def check_page(dom, report, overview, sent, large):
    total = report["total"]
    for element, key in (("requests", "requests"), ("spend", "cost_usd"), ("counterfactual", "counterfactual_usd"),
                         ("savings", "savings_usd"), ("savings-share", "savings_share"),
                         ("cost-per-request", "cost_per_request_usd"), ("large-share", "large_share")):
        assert float(dom.by_id[element]["data-value"]) == pytest.approx(total[key], rel=1e-9, abs=1e-15), element
    # Requests once per client request; the failed-over calls are attempts.
    assert total["requests"] == sum(sent.values())
    assert total["attempts"] > total["requests"]
    assert total["large_share"] == pytest.approx(sent[("acme", large)] / total["requests"])
    assert 0 < total["savings_share"] < 1 and total["savings_usd"] > 0
    # Tables by tenant and by model: every figure as the report has it.
    for table, lines in (("tenants", report["by_tenant"]), ("models", report["by_model"])):
        rows = dom.rows[table]
        assert set(rows) == {line["name"] for line in lines} | {"total"}, rows.keys()
        for line in lines + [dict(total, name="total")]:
            cells = rows[line["name"]]
            assert cells[0]["text"] == line["name"]
            shown = [float(c["data-value"]) for c in cells[1:]]
            expected = [line[k] for k in ("requests", "attempts", "cost_usd", "counterfactual_usd", "savings_usd",
                                          "savings_share", "cost_per_request_usd", "large_share")]
            assert shown == pytest.approx(expected, rel=1e-9, abs=1e-15), line["name"]
    by_tenant = {line["name"]: line["requests"] for line in report["by_tenant"]}
    assert by_tenant == {"acme": sum(n for (t, _), n in sent.items() if t == "acme"), "beta": 1}
    by_model = {line["name"]: line["requests"] for line in report["by_model"]}
    assert by_model == {m: sum(n for (_, mm), n in sent.items() if mm == m) for m in ("small-model", large)}
    # Charts: spend by tenant and model, the routing mix, and the time series.
    assert dom.bars["tenant-bars"] == {line["name"]: line["cost_usd"] for line in report["by_tenant"]}
    assert dom.bars["model-bars"] == {line["name"]: line["cost_usd"] for line in report["by_model"]}
    assert dom.bars["routing-mix"] == by_model
    periods = report["by_period"]
    spend = dom.points["spend-chart"]
    assert len(spend["spend"]) == len(spend["counterfactual"]) == len(spend["savings"]) == report["periods"] == len(periods)
    for (t, v, _), line in zip(spend["spend"], periods):
        assert (t, v) == (line["start_ms"], pytest.approx(line["cost_usd"], rel=1e-9, abs=1e-15))
    assert sum(v for _, v, _ in spend["savings"]) == pytest.approx(total["savings_usd"])
    # Cost per request and large-model share only where there were requests.
    with_requests = [line for line in periods if line["requests"] > 0]
    assert [(t, v) for t, v, _ in dom.points["cpr-chart"]["cpr"]] == [(line["start_ms"], pytest.approx(line["cost_per_request_usd"])) for line in with_requests]
    assert [(t, v) for t, v, _ in dom.points["large-chart"]["large"]] == [(line["start_ms"], pytest.approx(line["large_share"])) for line in with_requests]
    for svg in ("spend-chart", "cpr-chart", "large-chart"):
        check_time_axis(dom, svg, report)
    # Names are text: the markup-named model is shown as written and added no element.
    assert "img" not in dom.tags and "data-owned" not in dom.body
    assert large in dom.texts
    # Each part says what time it covers, in UTC.
    covers = "".join(t for t in dom.texts if t.startswith("Cost over the"))
    first = utc(report["from_ms"])
    assert (first.strftime("%Y-%m-%d %H:%M") if report["period"] == "hour" else first.strftime("%Y-%m-%d")) in covers, covers
    assert "UTC" in covers
    live_label = next(t for t in dom.texts if "live window" in t)
    assert f"the last {overview['live']['window_secs']} s" in live_label and "UTC" in live_label
    # Worker health as the pool has it.
    assert set(dom.rows["workers"]) == {w["id"] for w in overview["workers"]}
    assert {w: cells[4]["data-health"] for w, cells in dom.rows["workers"].items() if w != "a-flaky"} == {"small-0": "healthy", "large-0": "healthy"}
    assert set(dom.rows["latency"]) == {m["name"] for m in overview["live"]["models"]}


def cost_cli(cfg_path, *args):
    run = subprocess.run([routemesh_bin(), "cost", "--config", str(cfg_path), *args], capture_output=True, text=True, timeout=60)
    return run


def check_cli(cfg_path, overview, sent, large):
    """`routemesh cost` reads the same spend from Redis and reports the same figures."""
    for flag, key in (([], "cost"), (["--daily"], "daily")):
        run = cost_cli(cfg_path, "--json", *flag, *(["--hours", str(30 * 24)] if flag else []))
        assert run.returncode == 0, run.stderr
        cli, page = json.loads(run.stdout), overview[key]
        assert (cli["period"], cli["from_ms"], cli["periods"]) == (page["period"], page["from_ms"], page["periods"])
        for field in ("requests", "attempts", "cost_usd", "counterfactual_usd", "savings_usd", "large_share"):
            assert cli["total"][field] == pytest.approx(page["total"][field], rel=1e-9), field
        assert [(line["name"], line["requests"], line["attempts"]) for line in cli["by_tenant"]] == \
               [(line["name"], line["requests"], line["attempts"]) for line in page["by_tenant"]]
    for flag, title, label in (("--hourly", "HOUR (UTC)", "%Y-%m-%d %H:00"), ("--daily", "DAY (UTC)", "%Y-%m-%d")):
        run = cost_cli(cfg_path, flag)
        assert run.returncode == 0, run.stderr
        text = run.stdout
        tables = [t for t in text.split("\n\n") if re.search(r"^\S.*  REQUESTS  ", t, re.M)]
        assert [t.split()[0] for t in tables] == ["TENANT", "MODEL", title.split()[0]], text
        # Columns aligned whatever the names: the figures are right-aligned, so
        # every line of a table is as long as its header.
        for table in tables:
            lines = [line for line in table.splitlines() if not line.startswith("(")]
            assert len({len(line) for line in lines}) == 1, table
        period_rows = [line for line in tables[2].splitlines()[1:] if not line.startswith(("(", "total"))]
        now_label = datetime.now(timezone.utc).strftime(label)
        assert any(line.startswith(now_label) for line in period_rows), text
        total = next(line for line in tables[2].splitlines() if line.startswith("total")).split()
        assert (int(total[1]), int(total[2])) == (overview["cost"]["total"]["requests"], overview["cost"]["total"]["attempts"]), text
        # beta's one request, with the attempts the report has for it (two
        # when it was routed to a-flaky first: routing reads telemetry that
        # arrives a flush later, so that is not fixed here).
        page = overview["cost" if flag == "--hourly" else "daily"]
        beta_attempts = next(line["attempts"] for line in page["by_tenant"] if line["name"] == "beta")
        beta = next(line for line in tables[0].splitlines() if line.startswith("beta "))
        assert beta.split()[1:3] == ["1", str(int(beta_attempts))], beta
        # A name with spaces and markup is printed as it is, its row aligned.
        assert any(line.startswith(large + " ") for line in tables[1].splitlines()), tables[1]
    assert sum(sent.values()) == overview["cost"]["total"]["requests"]


def delete_mesh_keys(mesh_name):
    pattern = f"rm:v1:{{{mesh_name}}}:*"
    keys = subprocess.run(["redis-cli", "-u", REDIS, "--scan", "--pattern", pattern], capture_output=True, text=True).stdout.split()
    if keys:
        subprocess.run(["redis-cli", "-u", REDIS, "del", *keys], capture_output=True, check=True)


@pytest.fixture(params=["memory", "redis"])
def store(request, tmp_path):
    mesh_name = f"costpage-{uuid.uuid4().hex[:8]}" if request.param == "redis" else None
    large = MARKUP_LARGE if mesh_name else "large-model"
    cfg = config(mesh_name, large)
    cfg_path = tmp_path / "mesh.yaml"
    cfg_path.write_text(cfg)
    running = Running(["up"], cfg)
    yield request.param, running, cfg_path, large
    running.stop()
    if mesh_name:
        delete_mesh_keys(mesh_name)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
def test_the_cost_page_shows_what_the_reports_say(store, stubs):
    kind, mesh, cfg_path, large = store
    sent = workload(mesh, stubs, large)
    admin = "http://" + mesh.ready["admin"]
    # The report and the pages must cover the same hours: if an hour ends
    # between reading it and loading them, both are read again.
    for _ in range(3):
        hour = int(time.time() // 3600)
        overview = settled_overview(admin, sum(sent.values()))
        hourly = load(admin + "/")
        daily = load(admin + "/#daily")
        if int(time.time() // 3600) == hour:
            break
    assert overview["spend_source"] == ("shared" if kind == "redis" else "local")
    check_page(hourly, overview["cost"], overview, sent, large)
    check_page(daily, overview["daily"], overview, sent, large)
    assert daily.by_id["range-daily"]["class"] == "on"

    if kind == "redis":
        # Again read with the CLI, within one hour (an hour that ends between
        # the two readings moves both windows).
        # `hour`: when `overview` was read.
        for attempt in range(3):
            try:
                check_cli(cfg_path, overview, sent, large)
                break
            except AssertionError:
                if int(time.time() // 3600) == hour or attempt == 2:
                    raise
                hour = int(time.time() // 3600)
                overview = settled_overview(admin, sum(sent.values()))
    else:
        refused = cost_cli(cfg_path)
        assert refused.returncode != 0 and "/v1/cost" in refused.stderr, refused.stderr

    # The page fetches nothing but its own data: no external address in it.
    with urllib.request.urlopen(admin + "/", timeout=10) as r:
        page = r.read().decode()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "innerHTML" not in page and "Content-Security-Policy" in page

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / f"cost-page-{kind}.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1400,1800", "--hide-scrollbars", admin + "/")
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    if kind == "memory" and os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, README_SCREENSHOT)
    assert README_SCREENSHOT.exists() and "docs/cost-page.png" in (ROOT / "README.md").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
def test_behind_admin_auth_the_page_asks_for_the_token(tmp_path):
    token = "admin-" + uuid.uuid4().hex
    cfg = config(None, "large-model").replace(
        "  auth:\n",
        f"  admin_auth: {{sha256: {hashlib.sha256(token.encode()).hexdigest()}}}\n  auth:\n",
        1,
    )
    running = Running(["up"], cfg)
    try:
        admin = "http://" + running.ready["admin"]
        dumped = chromium("--window-size=1400,1200", "--dump-dom", admin + "/")
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        # The page loads (it holds no data), its data answers 401, and it asks.
        assert 'aria-label="admin token"' in dumped.stdout, dumped.stdout[-3000:]
        assert 'data-loaded="true"' not in dumped.stdout
        with pytest.raises(urllib.error.HTTPError) as refused:
            get_json(admin + "/v1/overview")
        assert refused.value.code == 401
        request = urllib.request.Request(admin + "/v1/overview", headers={"authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert "workers" in json.loads(r.read())
    finally:
        running.stop()
