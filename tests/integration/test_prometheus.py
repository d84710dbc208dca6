"""smctop's Prometheus exporter scraped by a real Prometheus server (Debian's `prometheus`
package, started here with a config of its own on a free loopback port, one scrape a
second): what Prometheus's query API returns equals what smctop's model shows at the same
moment. Two runs: the embedded demo's real stacks with real traffic, a failover and
fallbacks, headless in this process (the model frozen while Prometheus scrapes it); and the
`smctop --replay FILE --prometheus ADDR:PORT --headless` command on a recording, stopped
by SIGTERM. The collector on known events: tests/tui/test_prometheus_collector.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from smctop import prometheus as prom
from smctop.model import Model
from smctop.sources import DemoSource, ReplaySource, SyntheticSource
from stack.events import to_json
from stack.wire import codes

ROOT = Path(__file__).resolve().parents[2]
JOBS = ("smctop-demo", "smctop-cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if path is None:  # as tshark and the lab: a missing tool fails, never skips
        pytest.fail("the prometheus binary is missing: scripts/setup.sh installs Debian's prometheus package", pytrace=False)
    return path


def stop_the_packaged_service() -> None:
    """Debian's package starts its own server (port 9090) where systemd runs: not needed here."""
    if shutil.which("systemctl") and subprocess.run(["systemctl", "is-active", "--quiet", "prometheus"], timeout=10).returncode == 0:
        subprocess.run(["systemctl", "stop", "prometheus"], timeout=60)


@dataclass
class Prometheus:
    url: str
    targets: dict[str, int]  # job -> the port its exporter must listen on
    proc: subprocess.Popen
    log: Path

    def get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[frozenset, float]:
        """An instant query's vector as {labels (job and instance left out): value}."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return {frozenset((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__")): float(r["value"][1])
                for r in data["result"]}  # fmt: skip

    def wait_for_scrape_after(self, job: str, t: float, timeout: float = 30.0) -> None:
        """Until Prometheus has a successful scrape of ``job`` that started after ``t`` (wall clock)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            up = self.query(f'up{{job="{job}"}} == 1 and timestamp(up{{job="{job}"}}) > {t:.3f}')
            if up:
                return
            time.sleep(0.2)
        targets = self.get("/api/v1/targets")
        pytest.fail(f"Prometheus did not scrape {job} after {t}: {json.dumps(targets)[:2000]}\n{self.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory) -> Prometheus:
    binary = prometheus_binary()
    stop_the_packaged_service()
    d = tmp_path_factory.mktemp("prometheus")
    targets = {job: free_port() for job in JOBS}
    web = free_port()
    scrapes = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n" for job, port in targets.items())
    (d / "prometheus.yml").write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrapes}")
    log = d / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    p = Prometheus(f"http://127.0.0.1:{web}", targets, proc, log)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{p.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"prometheus did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield p
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def L(**labels) -> frozenset:
    return frozenset(labels.items())


def model_numbers(m: Model) -> dict[str, dict[frozenset, float]]:
    """What smctop's model shows, computed from it directly (not through the collector):
    open connections by host and mode, fallbacks by reason as the Fallbacks view lists them,
    bytes per host, link groups by type, failovers that moved connections."""
    conns = Counter((c.host, c.mode) for c in m.conns.values() if c.closed is None)
    lgrs = Counter((g.host, g.type, g.role) for g in m.lgrs.values() if not g.terminated)
    fo = Counter(f.host for f in m.failovers if f.conns)
    sent, received = Counter(), Counter()
    for c in m.conns.values():  # SMC-R bytes, as the model totals them (a fallback's TCP bytes reach it only by snapshot)
        smcr = c.mode != "TCP"
        sent[c.host] += c.bytes_sent if smcr else 0  # (a host with only fallbacks reads 0)
        received[c.host] += c.bytes_received if smcr else 0
    return {
        "conns": {L(host=h, mode=mode): n for (h, mode), n in conns.items()},
        "fallbacks": {L(host=r["host"], role=r["role"], reason=f"0x{r['reason']:08x}", reason_name=codes.DECLINE_REASONS.name(r["reason"])): r["count"]
                      for r in m.fallback_rows()},
        "sent": {L(host=h): v for h, v in sent.items()},
        "received": {L(host=h): v for h, v in received.items()},
        "lgrs": {L(host=h, type=t, role=r): n for (h, t, r), n in lgrs.items()},
        "failovers": {L(host=h): n for h, n in fo.items()},
    }  # fmt: skip


def prometheus_numbers(p: Prometheus, job: str) -> dict[str, dict[frozenset, float]]:
    sel = f'{{job="{job}"}}'
    return {
        "conns": p.query(f"sum by (host, mode) (smc_connections{sel}) > 0"),  # a known host's gauges read 0 (tests/tui has that)
        "fallbacks": p.query(f"smc_fallbacks_total{sel}"),
        "sent": p.query(f"smc_sent_bytes_total{sel}"),
        "received": p.query(f"smc_received_bytes_total{sel}"),
        "lgrs": p.query(f"smc_link_groups{sel}"),
        "failovers": p.query(f"smc_failovers_total{sel} > 0"),
    }


def test_prometheus_scrapes_the_live_demo_and_its_answers_equal_the_model(prometheus: Prometheus) -> None:
    async def scenario() -> tuple[dict, dict, dict]:
        model = Model(closed_keep=3600.0, max_closed=100_000)  # the model keeps every connection: its sums are the counters'
        exporter = prom.Exporter(model, host_label=True).serve(f"127.0.0.1:{prometheus.targets['smctop-demo']}")
        source = DemoSource(traffic=True)
        out = io.StringIO()
        runner = prom.Headless(source, exporter, out=out)
        task = asyncio.create_task(runner.run())
        try:
            deadline = time.monotonic() + 60
            while model.totals()["smcr"] < 6 or not model.fallbacks:  # bulk and two rr connections, from both ends
                assert time.monotonic() < deadline and not task.done(), out.getvalue()
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            await source.fail_link()  # beta's port: the connections fail over to the second link
            while not [f for f in model.failovers if f.conns and f.duration_ms is not None]:
                assert time.monotonic() < deadline, out.getvalue()
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            await source.restore_link()
            await asyncio.sleep(1.5)
            runner.paused = True  # the model stands still from here (the stacks and their traffic go on)
            frozen = time.time()
            await asyncio.to_thread(prometheus.wait_for_scrape_after, "smctop-demo", frozen)
            got = await asyncio.to_thread(prometheus_numbers, prometheus, "smctop-demo")
            want = model_numbers(model)
            totals = model.totals()
        finally:
            runner.stop()
            await task
            exporter.close()
        return got, want, totals

    got, want, totals = asyncio.run(scenario())
    assert got == want
    # what the header shows, through PromQL
    assert sum(v for k, v in got["conns"].items() if ("mode", "SMCR") in k) == totals["smcr"] >= 6
    assert sum(v for k, v in got["conns"].items() if ("mode", "TCP") in k) == totals["tcp"]
    assert sum(got["fallbacks"].values()) == totals["fallbacks"]
    # and what the demo is: real bytes both ways, gamma's declines by name, a failover on both ends, SYM groups
    assert got["sent"][L(host="alpha")] > 1e6 and got["received"][L(host="beta")] > 1e6
    assert got["fallbacks"][L(host="gamma", role="server", reason="0x03070000", reason_name="DIFFPREFIX")] > 0
    assert got["fallbacks"][L(host="alpha", role="client", reason="0x05000000", reason_name="PEERDECL")] > 0
    assert got["failovers"][L(host="alpha")] >= 1 and got["failovers"][L(host="beta")] >= 1
    assert sorted((dict(k)["host"], dict(k)["role"]) for k in got["lgrs"]) == [("alpha", "client"), ("beta", "server")]
    assert {dict(k)["type"] for k in got["lgrs"]} <= {"SYM", "ASYMP", "ASYML", "SINGLE"}  # back to SYM soon after the port returns


def test_the_headless_command_on_a_recording_answers_prometheus_with_the_models_numbers(prometheus: Prometheus, tmp_path: Path) -> None:
    """`smctop --replay FILE --prometheus ADDR:PORT --headless` as a fleet host runs it (here on a
    synthetic recording with a failover and fallbacks), stopped by SIGTERM."""
    src = SyntheticSource()
    events = list(src.pending)
    for second in range(1, 9):
        events.extend(src.stack.step(src.t + second))
        if second == 3:
            events.extend(src.stack.fail_link(src.t + second + 0.5))
        if second == 6:
            events.extend(src.stack.restore_link(src.t + second + 0.5))
    events.sort(key=lambda e: e.t)
    path = tmp_path / "recording.jsonl"
    path.write_text("".join(to_json(e) + "\n" for e in events))
    # what smctop's model shows at the end of that replay
    model = Model()
    replay = ReplaySource(str(path), speed=1e6, clock=iter(range(10**6)).__next__)
    asyncio.run(replay.start())
    while not replay.done:
        replay.poll(model)
        model.advance(replay.now())
    want = model_numbers(model)

    port = prometheus.targets["smctop-cli"]
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "smctop.app", "--replay", str(path), "--speed", "1000", "--prometheus", f"127.0.0.1:{port}",
                             "--headless"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        deadline = time.time() + 30
        while not prometheus.query('smc_host_info{job="smctop-cli"}'):
            assert proc.poll() is None and time.time() < deadline, proc.communicate(timeout=5)
            time.sleep(0.2)
        time.sleep(0.5)  # the replay (8 s at 1000x) ends in its first polls; one more scrape after that
        prometheus.wait_for_scrape_after("smctop-cli", time.time())
        got = prometheus_numbers(prometheus, "smctop-cli")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert got == want
    assert got["failovers"] == {L(host="alpha"): 1, L(host="beta"): 1}
    assert got["fallbacks"][L(host="gamma", role="server", reason="0x03070000", reason_name="DIFFPREFIX")] == 8
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics (headless" in err and "the replay reached its end" in err
    assert err.rstrip().endswith("smctop: stopped") and time.time() - started < 30


def test_the_real_prometheus_accepts_every_query_of_the_grafana_dashboard(prometheus: Prometheus) -> None:
    dash = json.loads((ROOT / "docs/grafana-smctop.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        expr = expr.replace("$instance", ".*").replace("$__rate_interval", "5s").replace("$__range", "1m")
        prometheus.get("/api/v1/query", query=expr)  # a query Prometheus cannot parse answers 400: urlopen raises
