"""Sources other than the synthetic one: a real stack's control socket, recorded files, and
the command line."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from support.stacks import addrs
from tuihelp import run

from smctop import app as app_mod
from smctop.model import Model
from smctop.sources import AttachSource, SourceError, load_events
from smctop.synthetic import SyntheticStack
from stack.core.config import SmcConfig
from stack.events import Skipped, to_json
from stack.runtime import DeviceSpec, Stack, StackConfig

DEV = addrs()[0]  # per run: two runs at once never share a device


def test_attach_follows_a_control_socket_and_sends_commands(tmp_path):
    path = str(tmp_path / "h.sock")

    async def go():
        cfg = StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", DEV, DEV, None, 4096),), control_path=path, snapshot_interval=0.2)
        async with Stack(cfg) as stack:
            src = AttachSource([path])
            await src.start()
            m = Model()
            try:
                for _ in range(50):
                    await asyncio.sleep(0.05)
                    src.poll(m)
                    if src.devices.get(path):
                        break
                assert "solo" in m.hosts and src.devices[path] == [DEV] and src.describe() == "attach solo"
                assert src.now() is not None
                assert "0x03030000 NOSMCDEV" in await src.decline(0x03030000)
                assert f"port of {DEV} pulled" in await src.fail_link()
                for _ in range(50):
                    await asyncio.sleep(0.05)
                    src.poll(m)
                    if stack.host.config.forced_decline == 0x03030000 and not stack.rdma.devs[DEV].port_up:
                        break
                assert stack.host.config.forced_decline == 0x03030000
                assert not stack.rdma.devs[DEV].port_up
                # the stack's own events came through the socket: the port fault
                assert any(e.kind == "link.event" and e.get("fault") == "port_down" for e in m.events)
                await src.restore_link()
                await src.decline(None)
                for _ in range(50):
                    await asyncio.sleep(0.05)
                    src.poll(m)
                    if stack.rdma.devs[DEV].port_up and stack.host.config.forced_decline is None:
                        break
                assert stack.rdma.devs[DEV].port_up and stack.host.config.forced_decline is None
                with pytest.raises(SourceError, match="traffic is not available with the attach source"):
                    await src.set_traffic(True)
            finally:
                await src.stop()

    run(go())


def test_attach_to_nothing_is_a_clear_error(tmp_path):
    async def go():
        with pytest.raises(SourceError, match="cannot attach to"):
            await AttachSource([str(tmp_path / "none.sock")]).start()

    run(go())


def test_load_events_reads_jsonl_in_time_order(tmp_path):
    s = SyntheticStack(1)
    events = s.setup(5.0) + s.step(6.0)
    path = tmp_path / "e.jsonl"
    path.write_text("".join(to_json(e) + "\n" for e in reversed(events)))
    got = load_events(str(path))
    assert len(got) == len(events) and [e.t for e in got] == sorted(e.t for e in events)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1, "kind": "stats"}\n{nope\n')
    skipped = Skipped()
    assert [e.kind for e in load_events(str(bad), skipped)] == ["stats"]  # a bad line is counted, named and left out
    assert skipped.count == 1 and skipped.named[0].startswith("line 2: not JSON")


def test_non_jsonl_files_go_to_dissectors_capture(tmp_path, monkeypatch):
    path = tmp_path / "x.pcapng"
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(60))
    with pytest.raises(SourceError) as err:  # dissectors.capture reads it and says what is wrong
        load_events(str(path))
    assert str(path) in str(err.value)
    monkeypatch.setitem(sys.modules, "dissectors.capture", None)  # as if smc-trace's reader were missing
    with pytest.raises(SourceError, match="pcapng replay needs dissectors.capture"):
        load_events(str(path))


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments"),
    (["--replay", "/nonexistent/file.jsonl"], "cannot read /nonexistent/file.jsonl"),
    (["--replay", "x", "--attach", "y"], "not allowed with argument"),
    (["--speed", "0"], "--speed 0.0: a finite number above 0"),
    (["--record-dir", "/nonexistent"], "no such folder"),
    (["--replay", ""], "--replay '': give a recording"),  # not the demo
    (["--record", "/nonexistent/x.pcapng"], "give a file in a folder that exists"),
    (["--record", "/tmp"], "give a file in a folder that exists"),
    (["--once", "--record", "x.pcapng"], "--record: not with --once"),
    (["--once", "--prometheus", "127.0.0.1:9717"], "--prometheus: not with --once"),
])  # fmt: skip
def test_bad_arguments_exit_2_with_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        app_mod.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_attach_to_a_file_that_is_not_a_socket_exits_2(tmp_path, capsys):
    f = tmp_path / "plain"
    f.write_text("")
    with pytest.raises(SystemExit) as exit_:
        app_mod.main(["--attach", str(f)])
    assert exit_.value.code == 2 and "not a unix socket" in capsys.readouterr().err


def test_help_names_the_sources(capsys):
    with pytest.raises(SystemExit) as exit_:
        app_mod.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--attach PATH" in out and "--replay FILE" in out and "embedded demo" in out


def test_a_host_whose_control_socket_closed_keeps_nothing_open(tmp_path):
    """When a stack's control socket closes (the stack exited, or was killed before it could
    say so), its connections close and its link groups end in the model: before, the rows
    stayed ACTIVE and LINK_ACTIVE for as long as smctop ran."""
    path = str(tmp_path / "h.sock")

    async def go():
        cfg = StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", DEV, DEV, None, 4096),), control_path=path, snapshot_interval=0.2)
        m = Model()
        src = AttachSource([path])
        async with Stack(cfg):
            await src.start()
            for _ in range(50):
                await asyncio.sleep(0.05)
                src.poll(m)
                if src.devices.get(path):
                    break
            # what the stack had open (as its events would have said), the other host's too
            for host in ("solo", "other"):
                c = m.conn(host, 1, 1.0)
                c.state = "ACTIVE"
                g = m.lgr(host, "00000001")
                m.link(host, "00000001", 1).state = "LINK_ACTIVE"
            src.poll(m)
            assert m.conns[("solo", 1)].state == "ACTIVE"
        for _ in range(50):  # the stack is gone: its socket closed
            await asyncio.sleep(0.05)
            src.poll(m)
            if path in src.closed:
                break
        await src.stop()
        assert path in src.closed
        assert m.conns[("solo", 1)].state == "CLOSED" and m.conns[("solo", 1)].closed is not None
        assert m.lgrs[("solo", "00000001")].terminated and m.lgrs[("solo", "00000001")].links[1].state == "LINK_UNUSED"
        assert m.conns[("other", 1)].state == "ACTIVE" and not g.terminated and g.links[1].state == "LINK_ACTIVE"

    run(go())


def test_attach_reattaches_when_a_new_stack_serves_the_socket_again(tmp_path):
    """A stack exits and a new one serves the same control socket: smctop used to say
    "control socket closed" once and keep the host frozen for ever. It tries again, quietly,
    and takes the new stack's snapshot; the model says the host was down meanwhile."""
    path = str(tmp_path / "h.sock")

    def cfg():
        return StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", DEV, DEV, None, 4096),), control_path=path, snapshot_interval=0.2)

    async def poll_until(src, m, done):
        for _ in range(200):
            await asyncio.sleep(0.05)
            src.poll(m)
            if done():
                return
        raise AssertionError("the source did not get there")

    async def go():
        m = Model()
        src = AttachSource([path], retry=0.1)
        try:
            async with Stack(cfg()):
                await src.start()
                await poll_until(src, m, lambda: "solo" in m.hosts and m.hosts["solo"].snapshot_t is not None)
                m.conn("solo", 1, 1.0).state = "ACTIVE"  # what the first stack had open
                first_t = m.hosts["solo"].snapshot_t
            await poll_until(src, m, lambda: path in src.closed)
            await asyncio.sleep(0.5)  # several tries while nothing serves the path
            src.poll(m)
            assert not m.hosts["solo"].up and m.conns[("solo", 1)].state == "CLOSED"
            assert src.describe() == "attach solo (1 closed)"
            async with Stack(cfg()):  # a new stack on the same path
                await poll_until(src, m, lambda: m.hosts["solo"].up)
                assert path not in src.closed and src.describe() == "attach solo"
                assert m.hosts["solo"].snapshot_t > first_t  # the new stack's snapshot
                assert ("solo", 1) not in m.conns  # the old run's connection went: the new run's number 1 is a new connection
                notices = list(src.notices)
                assert sum("control socket closed" in n for n in notices) == 1  # the tries in between were quiet
                assert notices[-1] == "solo: attached again"
        finally:
            await src.stop()

    run(go())


def test_a_fifo_to_replay_is_refused_at_once(tmp_path, capsys):
    """docs/security.md: a FIFO is refused before a byte is read; --once used to wait in open()
    for a writer for ever."""
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        load_events(str(fifo))
