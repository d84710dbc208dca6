"""Sources other than the synthetic one: a real stack's control socket, recorded files, and
the command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

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

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "session.jsonl"
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


def test_decline_on_an_attached_stack_says_what_the_stack_answered(tmp_path):
    """``d`` on an attached stack said "all attached hosts: the next connections fall back
    with ..." as soon as the command was written, before the stack answered: a stack that
    refused it (an error line) left the message line saying it was set. The message line now
    says each stack's answer: set (with the reason it echoed), or its error."""
    path = str(tmp_path / "h.sock")

    async def choose(app, pilot, reason):
        await pilot.press("d")
        await pilot.pause()
        options = app.screen.query_one("#decline-list")
        options.highlighted = next(i for i in range(options.option_count) if options.get_option_at_index(i).id == str(reason))
        app.status = ""
        await pilot.press("enter")
        for _ in range(100):  # the answer comes through the control socket
            await asyncio.sleep(0.05)
            if app.status.startswith(("solo: the next", "solo refused")):
                return app.status
        return app.status

    async def go():
        cfg = StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", DEV, DEV, None, 4096),), control_path=path, snapshot_interval=0.2)
        async with Stack(cfg) as stack:
            src = AttachSource([path])
            app = app_mod.SmctopApp(src, poll_interval=0.05)
            async with app.run_test(size=(180, 40)) as pilot:
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if src.hostnames.get(path) == "solo":
                        break
                status = await choose(app, pilot, 0x03030000)
                assert status == "solo: the next connections fall back with 0x03030000 NOSMCDEV"
                assert stack.host.config.forced_decline == 0x03030000

                def refuse(reason):
                    raise ValueError("declines are locked on this host")

                stack.force_decline = refuse  # the control socket answers {"type": "error", ...}
                status = await choose(app, pilot, 0x03070000)
                assert status == "solo refused decline: declines are locked on this host"
                assert "fall back with 0x03070000" not in app.screen_text()
                assert stack.host.config.forced_decline == 0x03030000
                assert not src.pending

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
    # another source's options are refused, not silently ignored
    (["--replay", str(GOLDEN), "--no-traffic"], "--no-traffic: the demo's traffic"),
    (["--replay", str(GOLDEN), "--every-event"], "--every-event goes with --attach"),
    (["--every-event"], "--every-event goes with --attach"),
    (["--paused"], "--paused goes with --replay"),
    (["--speed", "4"], "--speed goes with --replay"),
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


def test_the_message_line_says_where_a_replay_ended(tmp_path):
    """The message line kept a copy of the replay's position as it began ("0.0/3.0 s, event
    0/227, playing 1x: watching") while the header's first line said the replay was at its end."""
    from smctop.sources import ReplaySource

    events = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    t0 = events[0]["t"]
    for i, rec in enumerate(events):  # the same records spread over 3 s
        rec["t"] = t0 + 3.0 * i / (len(events) - 1)
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in events))
    wall = [0.0]
    src = ReplaySource(str(path), clock=lambda: wall[0])

    async def go():
        app = app_mod.SmctopApp(src, poll_interval=3600)
        async with app.run_test(size=(180, 40)) as pilot:
            await pilot.pause()
            assert "event 0/" not in app.status  # the header's first line keeps the position, not a stale copy
            wall[0] = 1.5
            app.sync(force=True)
            await pilot.pause()
            assert not src.done and 0 < src.i < len(events)
            wall[0] = 4.0
            app.sync(force=True)
            await pilot.pause()
            assert src.done
            assert app.status == f"the replay reached its end: 3.0/3.0 s, event {len(events)}/{len(events)} ([ seeks back)"
            head = "\n".join(app.screen_text().splitlines()[:3])
            assert f"3.0/3.0 s, event {len(events)}/{len(events)}, at the end" in head
            assert "event 0/" not in head and "reached its end" in head

    run(go())


def test_a_capture_cut_short_replays_what_it_holds_and_names_the_damage(tmp_path):
    """tcpdump killed mid-write leaves a last record cut short: smc-trace read what came
    before it, smctop --replay refused the whole file."""
    whole = Path(__file__).parents[1] / "lab" / "fixtures" / "kernel_interop_smcr.pcap"
    data = whole.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    skipped = Skipped()
    events = load_events(str(cut), skipped)
    all_events = load_events(str(whole))
    assert 0 < len(events) < len(all_events)
    assert [(e.t, e.kind) for e in events] == [(e.t, e.kind) for e in all_events[: len(events)]]
    assert skipped.count == 1 and "the file ends damaged after" in skipped.summary() and "pcap record" in skipped.summary()
    cut.write_bytes(data[:30])  # nothing to replay: still refused, in one line
    with pytest.raises(SourceError, match="cut.pcap"):
        load_events(str(cut))
