"""A whole session through the sans-I/O core on a virtual clock, compared event by event
with a golden log: handshake (SMC-Rv2 first contact), the first link, data both ways
across several wraps of 16 KiB rings, and the close. Any change in what the stack does
or says shows up here as a diff.

Regenerate after an intended change:  SMCTOP_UPDATE_GOLDEN=1 ./scripts/test.sh tests/core
(the run that rewrites the file fails, by design: review the diff, then run again without it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import golden as golden_file
from support.fabric import open_conn, pair

from stack.core.config import SmcConfig
from stack.events import read_jsonl, to_json

GOLDEN = Path(__file__).parent.parent / "golden" / "session.jsonl"


def run_session() -> list[str]:
    cfg = {"rmb_size": 16384, "sndbuf_size": 16384}
    fabric, a, b = pair(SmcConfig(host="client", **cfg), SmcConfig(host="server", **cfg), seed=7)
    open_conn(fabric, a, b, 1)
    up = bytes(range(256)) * 160  # 40 KiB: 2.5 turns of the 16 KiB ring
    down = bytes(reversed(range(256))) * 120  # 30 KiB
    sent = {"a": 0, "b": 0}
    got = {"a": bytearray(), "b": bytearray()}
    for _ in range(10_000):
        for name, io, data in (("a", a, up), ("b", b, down)):
            if sent[name] < len(data):
                sent[name] += io.host.app_send(1, memoryview(data)[sent[name] :], fabric.now)
            got[name] += io.host.app_recv(1, 4096, fabric.now)  # read in 4 KiB steps: consumer updates by policy
        if len(got["b"]) == len(up) and len(got["a"]) == len(down):
            break
        fabric.run(until=fabric.now + 0.0001)
    assert bytes(got["b"]) == up and bytes(got["a"]) == down
    a.host.app_close(1, fabric.now)
    fabric.run(until=fabric.now + 0.01)
    b.host.app_close(1, fabric.now)
    fabric.run(until=fabric.now + 0.01)
    assert a.apps[1].closed and b.apps[1].closed
    events = sorted(a.events + b.events, key=lambda e: e.t)  # stable: each host's own order is kept
    return [to_json(e) for e in events]


def test_session_matches_the_golden_log():
    lines = run_session()
    if golden_file.update_requested():
        golden_file.rewrite_and_fail(GOLDEN, "\n".join(lines) + "\n")
    golden = GOLDEN.read_text().splitlines()
    for i, (ours, want) in enumerate(zip(lines, golden)):
        assert ours == want, f"event {i + 1} differs\n  now:    {ours}\n  golden: {want}"
    assert len(lines) == len(golden), f"{len(lines)} events now, {len(golden)} in the golden log"


def test_the_golden_log_tells_the_whole_story():
    """The golden file itself must show what the issue asks: every step an event."""
    events = list(read_jsonl(GOLDEN.read_text().splitlines()))
    kinds = {e.kind for e in events}
    assert {"conn.open", "clc.msg", "lgr.state", "link.state", "llc.msg", "conn.mode", "conn.state", "rdma.write",
            "cdc.msg", "conn.cursor", "conn.rmb"} <= kinds  # fmt: skip
    clc_types = [(e.host, e.get("dir"), e.get("type")) for e in events if e.kind == "clc.msg"]
    assert clc_types == [
        ("client", "tx", "Proposal"), ("server", "rx", "Proposal"), ("server", "tx", "Accept"),
        ("client", "rx", "Accept"), ("client", "tx", "Confirm"), ("server", "rx", "Confirm"),
    ]  # fmt: skip
    states = [(e.host, e.get("new")) for e in events if e.kind == "conn.state"]
    assert states == [("client", "ACTIVE"), ("server", "ACTIVE"), ("client", "PEERCLOSEWAIT1"),
                      ("server", "APPCLOSEWAIT1"), ("server", "CLOSED"), ("client", "CLOSED")]  # fmt: skip
    # the producer cursor wrapped: data crossed the ring's end several times
    wraps = {int(e.get("prod").split(":")[0]) for e in events if e.kind == "cdc.msg" and e.get("dir") == "tx" and e.host == "client"}
    assert max(wraps) >= 2
    # two WRITEs in one step where the ring wraps
    assert any(e.get("offset") == 0 for e in events if e.kind == "rdma.write")
    assert all(0 <= e.get("offset") < 16384 and e.get("length") <= 16384 for e in events if e.kind == "rdma.write")


def test_regenerating_the_golden_log_fails(tmp_path, monkeypatch):
    """SMCTOP_UPDATE_GOLDEN=1 writes the file, then the test fails: a regenerated golden can
    never pass by comparing with what it just wrote."""
    target = tmp_path / "session.jsonl"
    monkeypatch.setitem(globals(), "GOLDEN", target)
    monkeypatch.setenv("SMCTOP_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match="created"):
        test_session_matches_the_golden_log()
    now = "\n".join(run_session()) + "\n"
    assert target.read_text() == now  # what it wrote is this run's log
    with pytest.raises(pytest.fail.Exception, match="unchanged"):
        test_session_matches_the_golden_log()
    target.write_text(now.replace('"ACTIVE"', '"CLOSED"', 1))
    with pytest.raises(pytest.fail.Exception, match="rewritten"):
        test_session_matches_the_golden_log()
    monkeypatch.delenv("SMCTOP_UPDATE_GOLDEN")
    test_session_matches_the_golden_log()  # without the variable it compares again, and passes
    target.write_text(now.replace('"ACTIVE"', '"CLOSED"', 1))
    with pytest.raises(AssertionError, match="differs"):
        test_session_matches_the_golden_log()
