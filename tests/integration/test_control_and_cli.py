"""The control socket (what smctop attaches to) and the smc-traffic command line."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys

import pytest
from support.stacks import ROOT, TrafficServer, addrs, run, traffic_client, two_stacks

from stack.events import KINDS, read_jsonl
from stack.runtime.control import ControlClient
from stack.traffic import runner


async def _next(msgs, type_, timeout=5.0):
    async def find():
        async for m in msgs:
            if m["type"] == type_:
                return m
        raise EOFError("control socket closed")

    return await asyncio.wait_for(find(), timeout)


def test_control_socket_streams_events_and_snapshots_and_takes_commands(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def main():
        async with two_stacks(server_kw={}, client_kw={}) as (a, b, ca, sa):
            from support.stacks import config

            from stack.runtime import Stack

            ctl_stack = Stack(config("observed", addrs()[0], control=path))
            await ctl_stack.start()
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
                client = await ControlClient.connect(path)
                msgs = client.messages()
                hello = await _next(msgs, "hello")
                await client.send("subscribe", kinds=["conn.state", "clc.msg", "lgr.state"])
                sub = await _next(msgs, "reply")
                # traffic through the observed stack
                totals = runner.Totals()
                await b.start_server(lambda r, w: runner.serve(r, w, totals), sa, 5000)
                await runner.rr(lambda: ctl_stack.open_connection(sa, 5000), runner.Totals(), size=10, duration=0, count=3, seed=1)
                events = []
                while len(events) < 4:
                    m = await _next(msgs, "event")
                    events.append(m["event"])
                snap = await _next(msgs, "snapshot")
                # bad input never takes the socket down
                client.writer.write(b"this is not json\n")
                await client.send("no_such_command")
                await client.send("fail_link", lgr="nope", link=1)
                await client.send("decline", reason="NOT_A_REASON")
                await client.send("interval", seconds=-1)
                errors = [await _next(msgs, "error") for _ in range(5)]
                await client.send("decline", reason="DIFFPREFIX")
                ok = await _next(msgs, "reply")
                await client.send("ping")
                pong = await _next(msgs, "reply")
                lgr = ctl_stack.host.lgrs[0].name
                await client.send("fail_link", lgr=lgr, link=1)
                failed = await _next(msgs, "reply")
                await client.close()
                return mode, hello, sub, events, snap, errors, ok, pong, failed, ctl_stack.host.lgrs
            finally:
                await ctl_stack.close()

    mode, hello, sub, events, snap, errors, ok, pong, failed, lgrs_after = run(main())
    assert mode == 0o600
    assert hello["host"] == "observed" and "subscribe" in hello["commands"] and set(hello["kinds"]) == set(KINDS)
    assert sub["ok"] and sub["kinds"] == ["conn.state", "clc.msg", "lgr.state"]
    assert {e["kind"] for e in events} <= {"conn.state", "clc.msg", "lgr.state"}
    assert any(e["kind"] == "clc.msg" and e["type"] == "Proposal" for e in events)
    assert snap["snapshot"]["host"] == "observed" and "lgrs" in snap["snapshot"]
    texts = [e["error"] for e in errors]
    assert texts[0].startswith("not JSON")
    assert texts[1].startswith("unknown command 'no_such_command'")
    assert texts[2].startswith("no link group 'nope'; link groups: ")  # the group, not the link, is what is missing
    assert texts[3] == "unknown decline reason 'NOT_A_REASON'"
    assert texts[4] == "seconds must be a number >= 0"
    assert ok["reason"] == 0x03070000 and "pong" in pong and failed["ok"]
    assert not lgrs_after  # the failed single link took its link group down


def test_slow_subscriber_is_told_what_it_missed(tmp_path):
    path = str(tmp_path / "slow.sock")

    async def main():
        from support.stacks import config

        from stack.runtime import Stack

        host = Stack(config("busy", addrs()[0], control=path))
        await host.start()
        try:
            client = await ControlClient.connect(path)
            sub = await client.send("subscribe", queue=10)
            async for m in client.messages():  # the reply: the subscription is in place
                if m["type"] == "reply" and m.get("id") == sub:
                    break
            for i in range(500):  # far more than a 10-event queue, faster than anyone reads
                host.host.emit(host.now(), "conn.error", conn=i, reason="test")
            seen = []
            async for m in client.messages():
                if m["type"] == "event":
                    seen.append(m["event"])
                    if m["event"]["kind"] == "events.dropped" or len(seen) > 600:
                        break
            await client.close()
            return seen
        finally:
            await host.close()

    seen = run(main())
    dropped = [e for e in seen if e["kind"] == "events.dropped"]
    errors = [e["conn"] for e in seen if e["kind"] == "conn.error"]
    # the 500 are emitted without yielding: the 10-event queue keeps the first 10, and the record
    # that stands where the rest would have been counts exactly the 490 it lost
    assert errors == list(range(10)), errors
    assert len(dropped) == 1 and dropped[0]["count"] == 490, dropped
    assert seen[-1]["kind"] == "events.dropped"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack.traffic.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(
    "args,words",
    [
        (["client", "--connect", "nohost"], "is not HOST:PORT"),
        (["client", "--bytes", "12Q"], "is not a size"),
        (["client", "--versions", "3"], "SMC-R versions are 1 and 2"),
        (["server", "--decline", "WHATEVER"], "unknown decline reason 'WHATEVER'"),
        (["client", "--mode", "stream"], "invalid choice: 'stream'"),
        (["client", "--connections", "0"], "--connections must be at least 1"),
        (["client", "--ueid", "bad eid!"], "only A-Z, 0-9"),
    ],
)
def test_bad_arguments_get_a_clear_error(args, words):
    res = _cli(*args)
    assert res.returncode == 2 and words in res.stderr, res.stderr


def test_client_against_a_declining_server_reports_the_fallback_and_writes_events(tmp_path):
    ca, sa = addrs()
    events = tmp_path / "client.jsonl"
    server = TrafficServer(sa, "--count", "1", "--decline", "0x03070000")
    rc, rep, err = traffic_client(sa, ca, "--mode", "bulk", "--bytes", "1M", "--events", str(events))
    srep = server.report()
    assert rc == 0, err
    assert rep["modes"] == {"TCP": 1} and rep["fallbacks"] == {"0x05000000 PEERDECL": 1} and rep["verified"] == 1
    assert srep["fallbacks"] == {"0x03070000 DIFFPREFIX": 1}
    evs = list(read_jsonl(events.read_text().splitlines()))
    fb = [e for e in evs if e.kind == "conn.fallback"]
    assert fb and fb[0].get("reason") == 0x05000000 and fb[0].get("peer_diagnosis") == 0x03070000
    assert fb[0].get("peer_diagnosis_text") == "0x03070000 DIFFPREFIX"


def test_client_text_report(tmp_path):
    ca, sa = addrs()
    server = TrafficServer(sa, "--count", "5")
    res = subprocess.run(
        [sys.executable, "-m", "stack.traffic.cli", "client", "--connect", f"{sa}:5000", "--device", ca, "--mode", "crr",
         "--count", "5", "--no-progress"], capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    server.report()
    assert res.returncode == 0, res.stderr
    assert "mode crr: 5 connections" in res.stdout and "SMCR 5" in res.stdout and "latency:   p50" in res.stdout
    p50 = res.stdout.split("latency:   p50 ")[1].split("  ")[0]  # in the unit its size calls for, not "178009.3 us"
    assert p50.split()[1] in ("µs", "ms", "s") and float(p50.split()[0]) < 1000, p50
    assert "B/s)" in res.stdout.split("bytes:")[1].splitlines()[0]  # bytes a second with an SI prefix, as everywhere
    assert "verified:  5/5" in res.stdout


def test_an_address_in_use_is_named_not_quoted_from_python():
    """A port another server holds, and a device address another stack holds, each in one
    line that says what is in use and what to do (it was "[Errno 98] error while attempting
    to bind on address ...")."""
    import socket

    ca, sa = addrs()
    with socket.socket() as tcp:
        tcp.bind((sa, 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        res = _cli("server", "--listen", f"{sa}:{port}", "--device", ca, "--duration", "1")
    assert res.returncode == 2 and f"--listen {sa}:{port}: the port is in use (another server?)" in res.stderr, res.stderr
    assert "Errno" not in res.stderr and "Traceback" not in res.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # another stack's soft device on this address
        udp.bind((sa, 4791))
        res = _cli("server", "--listen", f"{sa}:5000", "--device", sa, "--duration", "1")
    assert res.returncode == 2, res.stderr
    assert f"{sa}:4791 is in use: another stack has {sa} as its RoCE device; give this one another address with --device" in res.stderr, res.stderr
    assert "Errno" not in res.stderr and "Traceback" not in res.stderr


def test_nothing_listening_is_a_clear_error():
    ca, sa = addrs()
    rc, rep, err = traffic_client(sa, ca, "--bytes", "1K")
    assert rc == 1 and any("Connect call failed" in e or "refused" in e for e in rep["errors"]), (rep, err)


def test_the_control_snapshot_lists_the_listeners_and_ueids(tmp_path):
    """smcss -a and the UEID view of an attached smctop: the listeners come in the stack's
    own snapshot (they were only added for stacks in smctop's process), and go with their
    server."""
    path = str(tmp_path / "ctl.sock")

    async def main():
        from support.stacks import config

        from stack.runtime import Stack

        ca, sa = addrs()
        stack = Stack(config("listening", sa, control=path, ueids=("SMCTOP", "LAB-UEID")))
        await stack.start()
        try:
            smc = await stack.start_server(lambda r, w: None, sa, 5000)
            await stack.start_server(lambda r, w: None, sa, 5001, smc=False)
            client = await ControlClient.connect(path)
            msgs = client.messages()
            await _next(msgs, "hello")
            await client.send("snapshot")
            first = (await _next(msgs, "reply"))["snapshot"]
            smc.close()
            await smc.wait_closed()
            await client.send("snapshot")
            second = (await _next(msgs, "reply"))["snapshot"]
            await client.close()
            return sa, first, second
        finally:
            await stack.close()

    sa, first, second = run(main())
    assert first["listeners"] == [{"local": f"{sa}:5000", "smc": True}, {"local": f"{sa}:5001", "smc": False}]
    assert second["listeners"] == [{"local": f"{sa}:5001", "smc": False}]
    assert first["ueids"] == ["SMCTOP", "LAB-UEID"]
