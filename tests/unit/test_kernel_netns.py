"""Several network namespaces at once (issue 18: "several network namespaces selectable"):
``--netns`` repeated or ``all`` on smctop, smc-trace record and python -m smckernel, each
namespace read by its own kernel source under its own host name (``host/ns``), so that the
same addresses in two namespaces never merge. On the lab kernel's recorded replies (no VM):
the same replies read as two namespaces must stay two sets of rows everywhere: the JSON
document, smctop's model, a recording and its summary."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dissectors.capture import read_events
from dissectors.summary import summarize
from smckernel import kio
from smckernel import model as kmodel
from smckernel.once import render_many, to_json_many
from smckernel.record import KernelRecording
from smckernel.source import KernelSource, hosts_for
from smckernel.tracker import Tracker
from smctop.app import build_source, parse_args
from smctop.model import Model
from smctop.once import model_snapshots, render
from smctop.sources import CombinedSource, KernelTuiSource
from stack.events import Event

FIX = Path(__file__).resolve().parent / "fixtures" / "smckernel"
PROJECT = Path(__file__).resolve().parents[2]


def snap(host: str, netns: str | None, name: str = "client-open", t: float = 5.0) -> kmodel.Snapshot:
    s = kmodel.from_kernel(kio.load_raw(str(FIX / name)), t, host, netns)
    Tracker(host, stats_every=None).snapshot(s)
    return s


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=PROJECT)


# ---------------------------------------------------------------------------- naming the namespaces


def test_all_is_this_namespace_and_every_named_one_each_once(tmp_path: Path) -> None:
    for name in ("blue", "red"):
        (tmp_path / name).write_text("")
    assert kio.list_netns(str(tmp_path)) == ["blue", "red"]
    got = kio.resolve_netns(["all"], directory=str(tmp_path))
    assert got == [None, str(tmp_path / "blue"), str(tmp_path / "red")]
    # the same one twice (all, then by path) is read once; order is kept
    assert kio.resolve_netns([str(tmp_path / "red"), "all"], directory=str(tmp_path)) == [str(tmp_path / "red"), None, str(tmp_path / "blue")]
    assert kio.resolve_netns(None) == [None] and kio.resolve_netns([]) == [None]
    assert kio.list_netns(str(tmp_path / "missing")) == []


def test_a_namespace_that_is_not_there_is_named_with_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "blue").write_text("")
    with pytest.raises(kio.KernelUnavailable) as e:
        kio.resolve_netns([str(tmp_path / "blue"), str(tmp_path / "green")], directory=str(tmp_path))
    assert f"network namespace '{tmp_path / 'green'}' not found" in e.value.strerror and "blue" in e.value.strerror
    for bad in ("", ".", "a\0b"):
        with pytest.raises(kio.KernelUnavailable, match="not a network namespace name"):
            kio.resolve_netns([bad])


def test_each_namespace_has_its_own_host_name_and_two_never_share_one() -> None:
    assert kio.netns_label("/proc/123/ns/net") == "pid123" and kio.netns_label("/run/netns/blue") == "blue" and kio.netns_label(None) is None
    assert hosts_for([None, "blue", "/proc/1/ns/net", "/elsewhere/blue", "/x/blue"], "vm-a") == [
        "vm-a", "vm-a/blue", "vm-a/pid1", "vm-a/blue#2", "vm-a/blue#3"]  # fmt: skip
    assert hosts_for([None])[0] == socket.gethostname()


# ---------------------------------------------------------------------------- the same addresses in two namespaces


def test_the_json_document_of_two_namespaces_names_each_entry_and_keeps_them_apart() -> None:
    one = snap("vm-a", None)
    two = snap("vm-a/blue", "blue")
    doc = to_json_many([one, two])
    assert doc["hosts"] == ["vm-a", "vm-a/blue"] and doc["namespaces"] == {"vm-a": None, "vm-a/blue": "blue"}
    n = len(one.connections)
    assert n and len(doc["connections"]) == 2 * n
    for key in ("connections", "link_groups", "links", "devices"):
        assert {(x["host"], x["netns"]) for x in doc[key]} == {("vm-a", None), ("vm-a/blue", "blue")}, key
    # the same addresses, twice: once per namespace
    by_ns = {ns: sorted((c["local"], c["peer"]) for c in doc["connections"] if c["netns"] == ns) for ns in (None, "blue")}
    assert by_ns[None] == by_ns["blue"]
    assert set(doc["stats"]) == {"vm-a", "vm-a/blue"} and doc["stats"]["vm-a"] == doc["stats"]["vm-a/blue"]
    # one namespace: the document python -m smckernel --once --json always printed
    assert to_json_many([one]) == json.loads(render_many([one], True)) and "hosts" not in to_json_many([one])
    text = render_many([one, two])
    assert "# kernel SMC on vm-a\n" in text and "# kernel SMC on vm-a/blue (network namespace blue)" in text
    assert render([one, two], True) == render_many([one, two], True)  # smctop --once prints the same document


class FakeKernelSource:
    """What smctop --kernel uses of a KernelSource, giving one namespace's recorded events."""

    def __init__(self, host: str, netns: str | None) -> None:
        s = kmodel.from_kernel(kio.load_raw(str(FIX / "client-open")), 10.0, host, netns)
        self.events = Tracker(host, stats_every=1.0).snapshot(s)
        self.listeners, self.notes, self.host, self.closed = [], [], host, False

    def add_listener(self, fn) -> None:
        self.listeners.append(fn)

    def start(self) -> None:
        for e in self.events:
            for fn in self.listeners:
                fn(e)

    def close(self) -> None:
        self.closed = True


def test_smctop_shows_two_namespaces_with_the_same_addresses_as_two_sets_of_rows() -> None:
    parts = [KernelTuiSource(ns, host=h, factory=lambda h=h, ns=ns: FakeKernelSource(h, ns)) for ns, h in ((None, "vm-a"), ("blue", "vm-a/blue"))]
    src = CombinedSource(parts)
    m = Model()

    async def go() -> None:
        await src.start()
        src.poll(m)
        await src.stop()

    asyncio.run(go())
    truth = [c for c in snap("x", None).connections if c.mode == "SMCR"]
    for host in ("vm-a", "vm-a/blue"):
        mine = sorted(c.local for (h, _), c in m.conns.items() if h == host and c.mode == "SMCR")
        assert mine == sorted(c.local for c in truth), host
    assert {h for h, _ in m.lgrs} == {"vm-a", "vm-a/blue"}
    assert [s.host for s in model_snapshots(m, "kernel")] == ["vm-a", "vm-a/blue"]
    assert src.describe() == "kernel vm-a + kernel vm-a/blue"


def test_smctop_kernel_with_several_netns_builds_one_source_per_namespace(tmp_path: Path) -> None:
    for name in ("blue", "red"):
        (tmp_path / name).write_text("")
    args, ap = parse_args(["--kernel", "--netns", str(tmp_path / "blue"), "--netns", str(tmp_path / "red")])
    src = build_source(args, ap)
    assert isinstance(src, CombinedSource) and [p.netns for p in src.parts] == [str(tmp_path / "blue"), str(tmp_path / "red")]
    host = socket.gethostname()
    assert [p.host for p in src.parts] == [f"{host}/blue", f"{host}/red"] and [p.trace_tag for p in src.parts] == [0, 1]
    args, ap = parse_args(["--kernel", "--netns", str(tmp_path / "blue")])
    one = build_source(args, ap)
    assert isinstance(one, KernelTuiSource) and one.netns == str(tmp_path / "blue")


def test_a_recording_of_two_namespaces_keeps_them_apart_on_one_clock(tmp_path: Path) -> None:
    srcs = [KernelSource(host="vm-a"), KernelSource(netns="blue", host="vm-a/blue")]
    srcs[1].clock_offset_ns += 5_000_000  # measured a moment later: the recording makes them one
    out = tmp_path / "two.pcapng"
    rec = KernelRecording(str(out), srcs)
    assert srcs[1].clock_offset_ns == srcs[0].clock_offset_ns
    sent = 0
    for src in srcs:
        s = kmodel.from_kernel(kio.load_raw(str(FIX / "client-open")), 10.0, src.host, src.netns)
        events = src.tracker.snapshot(s)
        src._emit(events)
        sent += len(events)
    st = rec.close()
    assert st.events == sent and not st.dropped_events
    events = list(read_events(str(out)))
    assert len(events) == sent and {e.host for e in events} == {"vm-a", "vm-a/blue"}
    s = summarize(events)
    per_host = {h: sorted(c.local for (hh, _), c in s.conns.items() if hh == h) for h in ("vm-a", "vm-a/blue")}
    assert per_host["vm-a"] and per_host["vm-a"] == per_host["vm-a/blue"]


# ---------------------------------------------------------------------------- the command lines


def test_a_namespace_that_is_not_there_is_one_line_naming_it_on_every_command(tmp_path: Path) -> None:
    ns = "smctop-no-such-netns"
    smctop = run("-c", "import sys; from smctop.app import main; sys.exit(main(sys.argv[1:]))", "--kernel", "--netns", ns)
    assert smctop.returncode == 2 and f"network namespace '{ns}' not found" in smctop.stderr and "Traceback" not in smctop.stderr
    once = run("-c", "import sys; from smctop.app import main; sys.exit(main(sys.argv[1:]))", "--kernel", "--once", "--netns", "all", "--netns", ns)
    assert once.returncode == 2 and f"network namespace '{ns}' not found" in once.stderr and "Traceback" not in once.stderr
    mod = run("-m", "smckernel", "--once", "--json", "--netns", ns)
    assert mod.returncode == 2 and mod.stdout == "" and len(mod.stderr.strip().splitlines()) == 1 and f"'{ns}'" in mod.stderr
    out = tmp_path / "k.pcapng"
    rec = run("-m", "dissectors.cli", "record", "--kernel", "-w", str(out), "--netns", ns, "--duration", "1")
    assert rec.returncode == 2 and f"'{ns}' not found" in rec.stderr and "Traceback" not in rec.stderr
    assert not out.exists()  # nothing left behind


def test_from_raw_renders_one_namespace() -> None:
    r = run("-m", "smckernel", "--once", "--from-raw", str(FIX / "client-open"), "--netns", "a", "--netns", "b")
    assert r.returncode == 2 and "at most one --netns" in r.stderr


@pytest.mark.skipif(os.path.exists("/sys/module/smc_diag"), reason="this host has SMC: nothing is missing")
def test_all_on_a_host_without_smc_says_what_is_missing() -> None:
    r = run("-m", "smckernel", "--once", "--netns", "all")
    assert r.returncode == 2 and "smc_diag" in r.stderr and "Traceback" not in r.stderr


def test_smctop_rates_come_from_the_kernels_per_call_counts() -> None:
    """As root the kernel source reports each send and receive call's length (source
    tracepoint); smctop's rates and byte counts are built from them (without them a kernel
    connection only moves when a stats snapshot arrives)."""
    m = Model()
    t = 100.0
    m.feed_timed([Event(t, "conn.open", "vm-a", conn=1, fields={"role": "client", "local": "10.2.0.1:40000", "peer": "10.2.0.2:5001"}),
                  Event(t, "conn.mode", "vm-a", conn=1, fields={"mode": "SMCR", "version": 2})])  # fmt: skip
    m.advance(t)
    for sec in (0, 1):  # 10 calls of 32 KiB sent in each of 2 seconds, 2 reads of 1000 bytes in the second
        for i in range(10):
            m.feed_timed([Event(t + sec + 0.05 * i, "conn.cursor", "vm-a", conn=1, fields={"side": "tx", "len": 32768, "source": "tracepoint"})])
    m.feed_timed([Event(t + 1.5, "conn.cursor", "vm-a", conn=1, fields={"side": "rx", "len": 1000, "source": "tracepoint"}),
                  Event(t + 1.6, "conn.cursor", "vm-a", conn=1, fields={"side": "rx", "len": 1000, "source": "tracepoint"}),
                  Event(t + 1.7, "conn.cursor", "vm-a", conn=1, fields={"side": "tx", "prod": "0:4096", "source": "snapshot"})])  # fmt: skip
    m.advance(t + 2.0)
    c = m.conns[("vm-a", 1)]
    assert (c.bytes_sent, c.bytes_received) == (20 * 32768, 2000)
    assert c.rate == 10 * 32768 + 2000  # the last second: its sends and reads, per second


class EventsSource:
    """A KernelSource stand-in that hands out given events (``installed``: the probes in place)."""

    def __init__(self, events, installed=()) -> None:
        self.events, self.listeners, self.notes, self.host = events, [], [], "vm-a"
        self.tracker = type("T", (), {"installed": set(installed)})()

    def add_listener(self, fn) -> None:
        self.listeners.append(fn)

    def start(self) -> None:
        for e in self.events:
            for fn in self.listeners:
                fn(e)

    def close(self) -> None:
        pass


def _cursor_run(installed=()) -> tuple[Model, list]:
    t = 100.0
    events = [Event(t, "conn.open", "vm-a", conn=1, fields={"role": "client", "local": "10.2.0.1:40000", "peer": "10.2.0.2:5001"}),
              Event(t, "conn.mode", "vm-a", conn=1, fields={"mode": "SMCR", "version": 2, "rmb_size": 65536, "peer_rmb_size": 16384}),
              Event(t, "conn.cursor", "vm-a", conn=1, fields={"side": "tx", "prod": "65534:100", "source": "snapshot"}),
              Event(t, "conn.cursor", "vm-a", conn=1, fields={"side": "rx", "prod": "0:0", "source": "snapshot"}),
              # a second later: tx wrapped 3 times (16 KiB buffer; the counter is 16 bits: 65535 -> 0 is
              # one wrap forward), rx moved 5000 bytes
              Event(t + 1, "conn.cursor", "vm-a", conn=1, fields={"side": "tx", "prod": "1:200", "source": "snapshot"}),
              Event(t + 1, "conn.cursor", "vm-a", conn=1, fields={"side": "rx", "prod": "0:5000", "source": "snapshot"}),
              # backwards (a counter reset, a wrong reading): nothing moved
              Event(t + 2, "conn.cursor", "vm-a", conn=1, fields={"side": "tx", "prod": "0:200", "source": "snapshot"}),
              Event(t + 3, "conn.cursor", "vm-a", conn=1, fields={"side": "tx", "prod": "1:200", "source": "snapshot"})]  # fmt: skip
    src = KernelTuiSource(factory=lambda: EventsSource(events, installed))
    m = Model()
    m.advance(t - 0.5)  # samples close at t + 0.5, t + 1.5, ...

    async def go() -> list:
        await src.start()
        fed = src.poll(m)
        await src.stop()
        return fed

    fed = asyncio.run(go())
    m.advance(t + 3.5)
    return m, fed


def test_unprivileged_smctop_moves_a_kernel_connections_bytes_with_its_cursors() -> None:
    m, fed = _cursor_run()
    moved = [e.fields.get("len") for e in fed if e.kind == "conn.cursor"]
    assert moved == [None, None, 3 * 16384 + 100, 5000, None, 16384]
    c = m.conns[("vm-a", 1)]
    assert (c.bytes_sent, c.bytes_received) == (3 * 16384 + 100 + 16384, 5000)
    assert c.rate == 16384  # the last second: one wrap of the peer's buffer


def test_with_the_per_call_probes_the_cursors_add_nothing() -> None:
    m, fed = _cursor_run(installed=("sendmsg", "recvmsg"))
    assert all("len" not in e.fields for e in fed if e.kind == "conn.cursor")
    assert m.conns[("vm-a", 1)].bytes_sent == 0  # the probes' own events count (none here)
