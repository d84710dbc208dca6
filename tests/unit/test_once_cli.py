"""``smctop --once [--json]`` (issue 18 item 3): the kernel's snapshot as smc-tools prints it
(on the lab kernel's recorded replies, no VM), the same through smctop's model for the other
sources, a host without SMC said in one line, and ``smctop --kernel`` feeding the model from
the kernel source's events and snapshots."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from smckernel import kio
from smckernel import model as kmodel
from smckernel.tracker import Tracker
from smctop.model import Model
from smctop.once import model_snapshots, render
from smctop.sources import KernelTuiSource, SourceError, feed_seeded

FIX = Path(__file__).resolve().parent / "fixtures" / "smckernel"
PROJECT = Path(__file__).resolve().parents[2]
KEYS = {"connections", "link_groups", "links", "devices", "stats"}


def smctop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from smctop.app import main; sys.exit(main(sys.argv[1:]))", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=PROJECT)  # fmt: skip


def test_kernel_once_prints_what_smc_tools_prints_from_saved_replies() -> None:
    r = smctop("--kernel", "--once", "--from-raw", str(FIX / "client-open"))
    assert r.returncode == 0, r.stderr
    ref = subprocess.run([sys.executable, "-m", "smckernel", "--once", "--from-raw", str(FIX / "client-open")], capture_output=True,
                         text=True, cwd=PROJECT)  # fmt: skip
    assert r.stdout == ref.stdout
    for head in ("# smcss -a", "# smcss -d", "# smcss -R", "# smcr linkgroup show", "# smcr linkgroup link-show", "# smcr device", "# smcr stats"):
        assert head in r.stdout
    assert "PEERDECL/NOSMCDEV" in r.stdout  # the fallback connection with its reason


def test_kernel_once_json_is_one_document_with_the_five_keys() -> None:
    r = smctop("--kernel", "--once", "--json", "--from-raw", str(FIX / "client-open"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert KEYS <= set(doc)
    modes = {c["mode"] for c in doc["connections"]}
    assert {"SMCR", "TCP"} <= modes
    tcp = next(c for c in doc["connections"] if c["mode"] == "TCP")
    assert tcp["fallback_reason"]["hex"] == "0x05000000" and tcp["peer_diagnosis"]["hex"] == "0x03030000"
    assert doc["link_groups"] and doc["links"] and doc["devices"]


@pytest.mark.skipif(Path("/sys/module/smc").exists() and Path("/sys/module/smc_diag").exists(), reason="this host has SMC: nothing is missing")
def test_kernel_once_on_a_host_without_smc_says_what_is_missing() -> None:
    for extra in ((), ("--json",)):
        r = smctop("--kernel", "--once", *extra)
        assert r.returncode == 2 and r.stdout == ""
        assert "Traceback" not in r.stderr and "smc_diag" in r.stderr and "modprobe" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [(["--json"], "--json goes with --once"), (["--once", "--from-raw", "x"], "--from-raw goes with --kernel --once"),
                                           (["--netns", "blue", "--once"], "--netns goes with --kernel")])  # fmt: skip
def test_options_that_do_not_go_together_are_usage_errors(args, message) -> None:
    r = smctop(*args, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def _kernel_events(name: str, t: float = 10.0):
    snap = kmodel.from_kernel(kio.load_raw(str(FIX / name)), t, "kern")
    return Tracker("kern", stats_every=1.0).snapshot(snap), snap


class FakeKernelSource:
    """What smctop --kernel uses of smckernel.source.KernelSource, giving recorded events."""

    def __init__(self, events) -> None:
        self.events, self.listeners, self.notes, self.host, self.closed = events, [], ["no tracepoints or probes: test"], "kern", False

    def add_listener(self, fn) -> None:
        self.listeners.append(fn)

    def start(self) -> None:
        for e in self.events:
            for fn in self.listeners:
                fn(e)

    def close(self) -> None:
        self.closed = True


def test_smctop_kernel_feeds_the_model_from_the_kernel_source() -> None:
    events, snap = _kernel_events("client-open")
    fake = FakeKernelSource(events)
    src = KernelTuiSource(factory=lambda: fake)
    m = Model()

    async def run() -> list:
        await src.start()
        fed = src.poll(m)
        await src.stop()
        return fed

    fed = asyncio.run(run())
    assert fed == events and fake.closed
    assert any("no tracepoints" in n for n in src.notices)
    smcr = [c for c in m.conns.values() if c.mode == "SMCR"]
    truth = [c for c in snap.connections if c.mode == "SMCR"]
    assert smcr and sorted(c.local for c in smcr) == sorted(c.local for c in truth)
    assert any(g.type != "NONE" for g in m.lgrs.values())
    (doc,) = [json.loads(render(model_snapshots(m, "kernel"), True))]
    assert KEYS <= set(doc) and {c["local"] for c in doc["connections"] if c["mode"] == "SMCR"} == {c.local for c in truth}


def test_a_kernel_that_cannot_be_read_is_a_source_error() -> None:
    def broken():
        raise kio.KernelUnavailable(2, "the smc module is not loaded")

    src = KernelTuiSource(factory=broken)
    with pytest.raises(SourceError, match="the smc module is not loaded"):
        asyncio.run(src.start())


def test_several_hosts_make_one_document_naming_each_host() -> None:
    m = Model()
    for host in ("a", "b"):
        m.apply_snapshot({"host": host, "t": 1.0, "stats": {}, "devices": [{"name": f"dev-{host}", "up": True}], "fallbacks": [],
                          "lgrs": [{"id": f"0000010{host == 'b':d}", "role": "client", "type": "SINGLE", "conns": 1,
                                    "links": [{"id": 1, "state": "LINK_ACTIVE", "device": f"dev-{host}", "qpn": 17, "gid": "::1"}]}],
                          "conns": [{"conn": 1, "state": "ACTIVE", "mode": "SMCR", "role": "client", "local": f"10.0.0.{1 + (host == 'b')}:1000",
                                     "peer": "10.0.0.9:5000", "lgr": f"0000010{host == 'b':d}", "link": 1}]})  # fmt: skip
    doc = json.loads(render(model_snapshots(m, "attach"), True))
    assert KEYS <= set(doc) and doc["hosts"] == ["a", "b"]
    assert sorted((c["host"], c["local"]) for c in doc["connections"]) == [("a", "10.0.0.1:1000"), ("b", "10.0.0.2:1000")]
    assert {(lk["host"], lk["qpn"]) for lk in doc["links"]} == {("a", 17), ("b", 17)}
    assert set(doc["stats"]) == {"a", "b"}
    text = render(model_snapshots(m, "attach"), False)
    assert text.count("# smcss -a") == 2 and "10.0.0.2:1000" in text


def test_feed_seeded_applies_a_recordings_starting_snapshot() -> None:
    from stack.events import Event

    start = {"host": "h", "t": 5.0, "stats": {}, "devices": [], "fallbacks": [], "conns": [
        {"conn": 4, "state": "ACTIVE", "mode": "SMCR", "role": "server", "local": "10.0.0.2:5000", "peer": "10.0.0.1:999", "lgr": "00000100", "link": 1}],
        "lgrs": [{"id": "00000100", "role": "server", "type": "SINGLE", "conns": 1,
                  "links": [{"id": 1, "state": "LINK_ACTIVE", "device": "d", "qpn": 33, "peer_qpn": 44, "gid": "::a", "peer_gid": "::b"}]}]}  # fmt: skip
    m = Model()
    feed_seeded(m, [Event(5.0, "stats", "h", fields={"cause": "recording started", "snapshot": start})])
    c = m.conns[("h", 4)]
    assert (c.state, c.mode, c.local, c.peer) == ("ACTIVE", "SMCR", "10.0.0.2:5000", "10.0.0.1:999")
    lk = m.lgrs[("h", "00000100")].links[1]
    assert (lk.state, lk.qpn, lk.peer_qpn, lk.gid, lk.peer_gid) == ("LINK_ACTIVE", 33, 44, "::a", "::b")


def test_demo_once_runs_the_demo_briefly_then_prints_every_host() -> None:
    r = smctop("--once", "--json", "--once-after", "2")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert KEYS <= set(doc) and doc["hosts"] == ["alpha", "beta", "gamma"]
    smcr = [c for c in doc["connections"] if c["mode"] == "SMCR" and c["state"] == "ACTIVE"]
    assert {c["host"] for c in smcr} == {"alpha", "beta"} and all(c["local"] and c["peer"] for c in smcr)
    assert doc["links"] and all(lk["qpn"] and lk["state"] == "LINK_ACTIVE" for lk in doc["links"])


def test_the_tui_on_the_kernel_source_shows_its_connections_and_says_when_it_cannot() -> None:
    from smctop.app import SmctopApp

    events, snap = _kernel_events("client-open", t=__import__("time").monotonic())
    truth = [c for c in snap.connections if c.mode == "SMCR"]

    async def go(source) -> tuple:
        app = SmctopApp(source)
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.pause()
            if app.started:
                app.sync(force=True)
                await pilot.pause()
            return app.return_code, app.screen_text() if app.started else ""

    code, text = asyncio.run(asyncio.wait_for(go(KernelTuiSource(factory=lambda: FakeKernelSource(events))), 60))
    assert code is None and truth and all(c.local in text for c in truth)

    def broken():
        raise kio.KernelUnavailable(2, "the smc module is not loaded")

    code, _ = asyncio.run(asyncio.wait_for(go(KernelTuiSource(factory=broken)), 60))
    assert code == 1


def test_kernel_once_json_is_the_document_smckernel_prints() -> None:
    r = smctop("--kernel", "--once", "--json", "--from-raw", str(FIX / "server-open"))
    ref = subprocess.run([sys.executable, "-m", "smckernel", "--once", "--json", "--from-raw", str(FIX / "server-open")], capture_output=True,
                         text=True, cwd=PROJECT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ours, theirs = json.loads(r.stdout), json.loads(ref.stdout)
    # smctop's --json has one shape for one host and for several (hosts at the top, each item
    # naming its host and namespace, stats by host); what it holds is the module's document
    (host,) = ours["hosts"]
    assert host == theirs["host"] and ours["stats"] == {host: theirs["stats"]}
    for key in ("connections", "link_groups", "links", "devices"):
        assert [{k: v for k, v in item.items() if k not in ("host", "netns")} for item in ours[key]] == theirs[key], key
