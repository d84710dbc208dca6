"""Per-call probes for every namespace of one process (issue 18): the kernel takes a probe on
a tracepoint (``t:`` sendmsg, recvmsg, link_down) once on the whole system, so a namespace
whose trace session was refused reads them through the session that has them: that
session's filter takes both namespaces' cookies and its records are handed over by their
``net``, each to its own namespace's tracker, listeners and host name."""

from __future__ import annotations

from pathlib import Path

from smckernel import trace as ktrace
from smckernel.source import KernelSource
from smckernel.tracing import TraceSession

CALL = {"sendmsg", "recvmsg", "link_down"}


def session_in(tmp: Path, installed: list[str], cookie: int | None = 1) -> TraceSession:
    """A TraceSession over a directory laid out as its instance (no tracefs needed)."""
    s = TraceSession.__new__(TraceSession)
    s.root, s.instance, s.group = str(tmp), str(tmp / "instances" / "smckernel-9"), "smck9"
    s.installed, s.net_cookie, s.shared, s.notes = list(installed), cookie, [], []
    for name in installed:
        d = tmp / "instances" / "smckernel-9" / "events" / "smck9" / name
        d.mkdir(parents=True)
        (d / "filter").write_text("none\n")
    return s


def test_share_with_widens_the_filter_of_the_tracepoint_probes_only(tmp_path: Path) -> None:
    s = session_in(tmp_path, ["sendmsg", "recvmsg", "link_down", "cdc_rx"])
    assert sorted(s.share_with(2)) == sorted(CALL)
    events = tmp_path / "instances" / "smckernel-9" / "events" / "smck9"
    assert (events / "sendmsg" / "filter").read_text() == "net == 1 || net == 2"
    assert (events / "cdc_rx" / "filter").read_text() == "none\n"  # a function probe each session has of its own
    s.share_with(3)
    s.share_with(2)
    assert (events / "link_down" / "filter").read_text() == "net == 1 || net == 2 || net == 3"


def test_an_unfiltered_session_shares_without_writing(tmp_path: Path) -> None:
    s = session_in(tmp_path, ["sendmsg", "cdc_rx"], cookie=None)
    assert s.share_with(2) == ["sendmsg"]
    assert (tmp_path / "instances" / "smckernel-9" / "events" / "smck9" / "sendmsg" / "filter").read_text() == "none\n"


class FakeSession:
    clock_mono = True

    def __init__(self, installed: set[str], shares: bool = True) -> None:
        self.installed, self.shares = installed, shares
        self.shared: list[int] = []
        self.disabled: list[str] = []
        self.notes: list[str] = []

    def share_with(self, cookie: int) -> list[str]:
        self.shared.append(cookie)
        return sorted(self.installed & CALL) if self.shares else []

    def disable_tracepoints(self, names: list[str]) -> None:
        self.disabled += names


def pair(shares: bool = True) -> tuple[KernelSource, KernelSource]:
    a, ns1 = KernelSource(host="a"), KernelSource(host="a/ns1", trace_tag=1)
    a.siblings = ns1.siblings = [a, ns1]
    for src, cookie, installed in ((a, 1, set(ktrace.PROBES)), (ns1, 2, set(ktrace.PROBES) - CALL)):
        src.tracing = FakeSession(installed, shares)
        src.net_cookie = src.tracker.net_cookie = cookie
        src.tracker.installed = set(installed)
        src.tracepoints = list(ktrace.TRACEPOINTS)
    return a, ns1


def send(net: int, n: int, sport: int) -> ktrace.TraceRecord:
    return ktrace.parse_line(f"python-179 [000] ...1. 5.000000: sendmsg: (__probestub_smc_tx_sendmsg+0x4/0x10 [smc]) token=0x1 len={n} "
                             f"listen=0x0 sport={sport} dport=35091 saddr=0x100020a daddr=0x200020a net={net}")  # fmt: skip


def test_a_refused_namespace_reads_the_call_probes_through_its_sibling() -> None:
    a, ns1 = pair()
    ns1._share_call_probes()
    assert a.routes == {2: ns1} and a.tracing.shared == [2]
    assert ns1.tracker.installed >= CALL
    assert ns1.tracing.disabled == ["smcr_link_down", "smc_rx_recvmsg", "smc_tx_sendmsg"]  # their plain tracepoints: redundant now
    assert ns1.tracepoints == ["smc_switch_to_fallback"]
    assert "link_down, recvmsg, sendmsg: read through the probes of a's trace session" in ns1.notes[-1]
    got: dict[str, list] = {"a": [], "a/ns1": []}
    a.add_listener(lambda e: got[e.host].append(e))
    ns1.add_listener(lambda e: got[e.host].append(e))
    a._on_trace([send(2, 700, 40000), send(1, 300, 40001), send(2, 50, 40000)])  # what a's session read: both namespaces'
    assert [(e.kind, e.fields.get("len")) for e in got["a/ns1"]] == [("conn.open", None), ("conn.cursor", 700), ("conn.cursor", 50)]
    assert [(e.kind, e.fields.get("len")) for e in got["a"]] == [("conn.open", None), ("conn.cursor", 300)]
    assert got["a/ns1"][0].fields["local"] == "10.2.0.1:40000" and got["a"][0].fields["local"] == "10.2.0.1:40001"


def test_nothing_is_routed_when_no_sibling_can_share() -> None:
    a, ns1 = pair(shares=False)
    ns1._share_call_probes()
    assert a.routes == {} and not (ns1.tracker.installed & CALL) and ns1.tracing.disabled == []
    got = []
    a.add_listener(got.append)
    a._on_trace([send(2, 700, 40000)])
    assert got == [] and a.tracker.skipped["another network namespace"] == 1


# ---------------------------------------------------------------------------- drain at close (a reader behind)

LINE = ("python-179 [000] ...1. {t:.6f}: sendmsg: (__probestub_smc_tx_sendmsg+0x4/0x10 [smc]) token=0x1 len=100 listen=0x0 sport=40000 "
        "dport=35091 saddr=0x100020a daddr=0x200020a net=1\n")  # fmt: skip


def fifo_session(tmp: Path) -> tuple[TraceSession, Path]:
    """A session whose instance is a directory with a FIFO for trace_pipe (what the kernel's
    buffer would hold is what a writer puts in it)."""
    import os
    import threading

    s = session_in(tmp, [])
    inst = Path(s.instance)
    inst.mkdir(parents=True, exist_ok=True)
    (inst / "tracing_on").write_text("1\n")
    (inst / "per_cpu" / "cpu0").mkdir(parents=True)
    (inst / "per_cpu" / "cpu0" / "stats").write_text("entries: 17\noverrun: 0\n")
    os.mkfifo(inst / "trace_pipe")
    s.raw_log, s.errors, s.records, s.unread = None, 0, 0, 0
    s._stop, s._abort, s._thread = threading.Event(), threading.Event(), None
    return s, inst / "trace_pipe"


def test_drain_stops_the_instance_and_hands_over_everything_it_still_holds(tmp_path: Path) -> None:
    import os
    import threading

    s, pipe = fifo_session(tmp_path)
    got: list = []
    s.start(got.extend)
    w = os.open(pipe, os.O_WRONLY)  # (the reader opened it non-blocking: this open finds it)
    backlog = "".join(LINE.format(t=1 + i / 1000) for i in range(3000)).encode()
    writer = threading.Thread(target=lambda: (os.write(w, backlog[: len(backlog) // 2]), os.write(w, backlog[len(backlog) // 2 :])))
    writer.start()
    writer.join()
    s.drain(timeout=60.0)  # the writer stays open: the reader ends because it found the buffer empty
    os.close(w)
    assert (Path(s.instance) / "tracing_on").read_text() == "0"
    assert len(got) == 3000 and s.records == 3000 and s.unread == 0
    assert sum(int(r.args["len"]) for r in got) == 300_000
    assert not any("left unread" in n for n in s.notes), s.notes


def test_a_drain_that_runs_out_of_time_counts_what_is_left(tmp_path: Path) -> None:
    import os
    import time

    s, pipe = fifo_session(tmp_path)
    s.start(lambda recs: time.sleep(0.5))  # a reader far behind
    w = os.open(pipe, os.O_WRONLY)
    for i in range(50):
        os.write(w, LINE.format(t=1 + i).encode())
        time.sleep(0.001)
    s.drain(timeout=0.2)
    os.close(w)
    assert s.unread == 17 and not s._thread.is_alive()
    assert s.notes[-1] == "the trace reader was behind: 17 records left unread after reading for 0.2 s at close"
