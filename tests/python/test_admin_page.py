"""The built-in overview page on the admin port, in headless Chromium: the
numbers it shows are the gateway's own (spend, savings, routing mix, worker
health), and a screenshot is kept as a test artefact."""

import html.parser
import json
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

import grpc
import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = ROOT / "target" / "test-artefacts"


class Dom(html.parser.HTMLParser):
    """Collects the attributes of elements with an id, and bar groups."""

    def __init__(self):
        super().__init__()
        self.by_id, self.bars, self.workers = {}, {}, {}
        self._worker = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.by_id[a["id"]] = a
        if a.get("class") == "bar":
            self.bars[a["data-model"]] = float(a["data-requests"])
        if "data-worker" in a:
            self._worker = a["data-worker"]
        if self._worker and tag == "td" and a.get("class") in ("ok", "down"):
            self.workers[self._worker] = a["class"]
            self._worker = None


def chromium(*args):
    profile = tempfile.mkdtemp(prefix="routemesh-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=8000", *args],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package chromium)")
def test_the_page_shows_spend_savings_routing_and_health(mesh, stubs):
    with grpc.insecure_channel(mesh.gateway) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        for model, n in (("small-model", 6), ("large-model", 2)):
            for _ in range(n):
                req = stubs.gateway.GenerateRequest(model=model, messages=[stubs.common.ChatMessage(role="user", content="What is routing?")])
                gw.Generate(req, timeout=10)
    admin = "http://" + mesh.ready["admin"]
    deadline = time.monotonic() + 10
    while True:
        overview = json.loads(urllib.request.urlopen(admin + "/v1/overview", timeout=10).read())
        if overview["cost"]["total"]["requests"] >= 8 and sum(m["requests"] for m in overview["models"]) >= 8:
            break
        assert time.monotonic() < deadline, overview
        time.sleep(0.1)

    dom = Dom()
    dumped = chromium("--dump-dom", admin + "/")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom.feed(dumped.stdout)
    assert "data-loaded=\"true\"" in dumped.stdout, "the page's script ran and rendered"
    total = overview["cost"]["total"]
    for element, key in (("requests", "requests"), ("spend", "cost_usd"), ("counterfactual", "counterfactual_usd"),
                         ("savings", "savings_usd"), ("savings-share", "savings_share")):
        shown = float(dom.by_id[element]["data-value"])
        assert shown == pytest.approx(total[key], rel=1e-9, abs=1e-15), element
    assert total["savings_usd"] > 0 and 0 < total["savings_share"] < 1
    assert float(dom.by_id["large-share"]["data-value"]) == pytest.approx(overview["large_share"])
    assert 0 < overview["large_share"] < 1
    assert dom.bars == {m["name"]: m["requests"] for m in overview["models"]}
    assert dom.bars["small-model"] >= 6 and dom.bars["large-model"] >= 2
    assert dom.workers == {"small-0": "ok", "large-0": "ok"}

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "admin-page.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1280,900", admin + "/")
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
