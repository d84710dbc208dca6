"""Retransmissions in captures (#16 item 9): real RC retransmissions from the soft provider's
loss faults, recorded by smc-trace, counted once as messages and apart as retransmissions by
smc-trace (summary, decode, the events derived from the frames alone) and by tshark with the
Lua plugin, against the sender's engine statistics (every QP's ``tx``, ``seq_naks_rx``,
``timeouts``, ``retransmits``) and the stack's own message events.

Two captures: one frame dropped on purpose (go-back-N after a PSN sequence NAK: exact), and
10% loss both ways over twenty exchanges (retries after timeouts and NAKs, lost ACKs).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support import tshark
from support.capture_copies import MS, T0, US, VLAN, any_capture, nak, one_interface, send, sll2, two_interfaces, write
from support.stacks import run, two_stacks, until

from dissectors.capture import read_events
from dissectors.derive import dropped_at
from dissectors.pcapng import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, PcapngWriter, epb_block, read_packets
from dissectors.recorder import Recorder
from dissectors.roce_analysis import RoceAnalysis
from smctop.sources import load_events
from stack.wire import roce

pytestmark = pytest.mark.oracle

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "dissectors" / "wireshark" / "smctop.lua"
MESSAGES = ("cdc.msg", "llc.msg", "rdma.write")


def fresh_pair() -> tuple[str, str]:
    o1, o2 = random.randint(160, 205), random.randint(0, 255)
    return f"127.{o1}.{o2}.1", f"127.{o1}.{o2}.2"


async def _echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
    except ConnectionError:  # the "vanished" capture: the link group is gone
        pass
    w.close()


def record(path: Path, kind: str) -> dict:
    """A recorded echo session: ``go_back`` drops one frame, ``lossy`` loses 10% both ways,
    ``vanished`` takes the server's port down under a write (the client's QP retries until it
    gives up). Returns the stack's events, the engine statistics of every sender QP (keyed by
    its flow) and the recorder's stats."""

    async def main():
        async with two_stacks({}, {}, mtu=1024, pair=fresh_pair()) as (a, b, ca, sa):
            events = []
            rec = Recorder(str(path))
            events.extend((rec.attach(a), rec.attach(b)))
            a.bus.listen(events.append), b.bus.listen(events.append)
            await b.start_server(_echo, sa, 5000)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            w.write(b"a" * 3000)
            assert await r.readexactly(3000) == b"a" * 3000
            devices = [d.device for s in (a, b) for d in s.rdma.devs.values()]
            seen: dict = {}  # the latest statistics of every QP, also of those gone since

            def stats():
                out = {}
                for s, peer in ((a, sa), (b, ca)):
                    for q in s.rdma.qps.values():
                        out[(q.dev.device.addr, peer, q.path.remote_qpn)] = dict(q.qp.stats)
                seen.update(out)
                return out

            if kind == "lossy":
                for d in devices:
                    d.faults.loss = 0.1
                for _ in range(20):
                    data = os.urandom(2000)
                    w.write(data)
                    assert await r.readexactly(2000) == data
                for d in devices:
                    d.faults.loss = 0.0
            elif kind == "go_back":
                # nothing of the client's may be pending (a held ACK of the echo would be its next
                # frame, and a lost ACK is never sent again): wait until its QPs have sent nothing
                # for a while, then drop its next frame, the RDMA WRITE of these bytes
                last_tx, still = [None], [0]

                def client_quiet():  # nothing sent over five looks in a row (about 0.1 s)
                    now = sum(q.qp.stats["tx"] for q in a.rdma.qps.values())
                    still[0] = still[0] + 1 if now == last_tx[0] else 0
                    last_tx[0] = now
                    return still[0] >= 5

                await until(client_quiet, what="the client's QPs quiet")
                devices[0].faults.drop_next = 1
                w.write(b"z" * 500)
                assert await r.readexactly(500) == b"z" * 500
            if kind == "vanished":
                b.set_port(sa, False)
                w.write(b"v" * 100)  # an RDMA WRITE and its CDC, never acknowledged

                def gave_up():
                    stats()
                    return not a.rdma.qps

                await until(gave_up, what="the client's QP giving up and its link group going")
                await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="the connection gone on both sides")
                w.close()
                assert not stats(), "a QP is left, which could still send"
                rec_stats = rec.close()
                return {"events": list(events), "stats": dict(seen), "rec": rec_stats}
            w.write_eof()
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
            await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="the connection closed on both sides")
            last = [None]

            def quiet():  # nothing sent since the previous look
                now = stats()
                same, last[0] = now == last[0], now
                return same

            await until(quiet, what="the QPs quiet")
            rec_stats = rec.close()
            assert stats() == last[0], "frames sent while the recording closed"
            return {"events": list(events), "stats": last[0], "rec": rec_stats}

    return run(main())


@pytest.fixture(scope="module", params=["go_back", "lossy", "vanished"])
def capture(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("retrans") / f"{request.param}.pcapng"
    got = record(path, request.param)
    assert got["rec"].dropped_frames == 0 and got["rec"].dropped_events == 0
    return request.param, path, got


def sent(events, kind: str) -> int:
    """Messages the stacks sent (their own events: one per message however often it went out)."""
    return sum(1 for e in events if e.kind == kind and (kind == "rdma.write" or e.get("dir") == "tx"))


def expected(got) -> dict:
    """What the engine statistics say the capture holds, summed over the sender QPs."""
    st = got["stats"].values()
    return {"frames": sum(s["tx"] for s in st), "naks": sum(s["seq_naks_rx"] for s in st), "rnr_naks": sum(s["rnr_naks_rx"] for s in st),
            "timeouts": sum(s["timeouts"] for s in st), "retransmits": sum(s["retransmits"] for s in st)}  # fmt: skip


def check_analysis(kind: str, ra: RoceAnalysis, got) -> None:
    flows = {(f.src, f.dst, f.qpn): f for f in ra.senders()}
    assert set(flows) == set(got["stats"]), (set(flows), set(got["stats"]))
    for key, st in got["stats"].items():
        f = flows[key]
        assert f.frames == st["tx"], (key, f.to_dict(), st)  # every frame the engine sent is in the capture
        assert f.retransmissions == f.duplicates == st["tx"] - f.packets, (key, f.to_dict(), st)
        assert f.naks == st["seq_naks_rx"] and f.rnr_naks == st["rnr_naks_rx"] == 0, (key, f.to_dict(), st)
        # a go-back the capture cannot see (every copy lost again, or a NAK for the PSN the requester was
        # resending anyway) makes the capture's go-backs at most the engine's. Their causes follow the
        # recording's order, which between two hosts' devices is not always the order of events (a NAK can
        # be written after the copy it caused): only the one-loss capture below pins them down.
        assert f.go_backs["NAK"] <= f.naks and sum(f.go_backs.values()) <= st["retransmits"], (key, f.to_dict(), st)
        assert f.not_captured == 0
    t = ra.totals()
    if kind == "go_back":  # one frame dropped: the client goes back once, after one NAK, and sends two frames again
        client = [f for f in flows.values() if f.retransmissions]
        assert len(client) == 1 and client[0].retransmissions == 2 and sum(client[0].go_backs.values()) == 1
        # the engine went back once, on the one NAK, and the capture names that cause: a frame sent is
        # stamped before its send, so the NAK comes before the copies it caused in the capture's order
        assert dict(client[0].go_backs) == {"NAK": 1}
        assert t["retransmissions"] == 2 and expected(got)["retransmits"] == expected(got)["naks"] == 1
    elif kind == "vanished":  # the client's QP retried its WRITE and CDC retry_cnt (7) times after timeouts, then gave up
        client = [f for f in flows.values() if f.retransmissions]
        st = got["stats"][(client[0].src, client[0].dst, client[0].qpn)]
        assert len(client) == 1 and st["retransmits"] == st["timeouts"] == 7
        assert dict(client[0].go_backs) == {"timeout": 7} and client[0].retransmissions == 14
        assert [r[5] for r in client[0].go_back_list] == [2] * 7 and len({r[2] for r in client[0].go_back_list}) == 1
    else:
        assert t["retransmissions"] > 0 and t["go_backs"]["timeout"] > 0, t  # loss of 10% over ~160 frames


def test_smc_trace_counts_each_message_once(capture):
    kind, path, got = capture
    ra = RoceAnalysis()
    events = list(read_events(path, None, ra))
    check_analysis(kind, ra, got)
    assert ra.totals()["frames"] == expected(got)["frames"]
    # a recording's events are the stacks' own: the frames sent again add none
    for k in MESSAGES:
        assert sum(1 for e in events if e.kind == k) == sum(1 for e in got["events"] if e.kind == k), k


def strip_records(path: Path, out: Path) -> None:
    """The recording's frames alone (interface 0, comments and lengths kept), as a capture of
    the wire that smc-trace has to decode frame by frame."""
    with open(path, "rb") as f:
        packets = [p for p in read_packets(f) if p.interface == 0]
    with open(out, "wb") as f:
        w = PcapngWriter(f)
        w.add_interface(LINKTYPE_ETHERNET, "lo")
        for p in packets:
            w.write_blocks(epb_block(0, p.timestamp_ns, p.data, "\n".join(p.comments).encode() if p.comments else None, p.original_length))


def test_events_derived_from_the_frames_count_each_message_once(capture, tmp_path):
    kind, path, got = capture
    wire = tmp_path / "wire.pcapng"
    strip_records(path, wire)
    with open(wire, "rb") as f:
        packets = list(read_packets(f))
    lost = Counter(dropped_at(p) for p in packets)  # the recording keeps lost frames, with a comment
    assert lost["tx"] == 1 if kind == "go_back" else lost["tx"] == 0 if kind == "vanished" else lost["tx"] > 0
    assert (lost["rx"] > 0) == (kind == "vanished")  # the server's port was down: its device dropped what came
    ra = RoceAnalysis()
    derived = list(read_events(wire, None, ra))
    check_analysis(kind, ra, got)
    for k in ("cdc.msg", "llc.msg"):
        assert sum(1 for e in derived if e.kind == k) == sent(got["events"], k), k
    assert sum(1 for e in derived if e.kind == "rdma.write") == sent(got["events"], "rdma.write")
    assert not [e for e in derived if e.kind == "trace.note"]
    # smctop --replay reads a capture through the same path: the same events, each message once
    assert [(e.kind, e.host, e.conn) for e in load_events(str(wire))] == [(e.kind, e.host, e.conn) for e in derived]


def smc_trace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dissectors.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_summary_and_decode_show_retransmissions_apart(capture):
    kind, path, got = capture
    exp = expected(got)
    res = smc_trace("summary", "--json", str(path))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["roce"]["frames"] == exp["frames"] and d["roce"]["naks"] == exp["naks"]
    assert d["roce"]["retransmissions"] == exp["frames"] - d["roce"]["packets"] > 0
    assert d["kinds"].get("cdc.msg") == sum(1 for e in got["events"] if e.kind == "cdc.msg")
    text = smc_trace("summary", str(path))
    assert text.returncode == 0, text.stderr
    assert f"retransmissions: {d['roce']['retransmissions']} frames" in text.stdout
    dec = smc_trace("decode", str(path))
    assert dec.returncode == 0, dec.stderr
    head, _, tail = dec.stdout.partition("\nRoCE retransmissions (")
    assert tail.startswith(f"{d['roce']['retransmissions']} frames, not counted as messages):")
    lines = [x for x in tail.splitlines()[1:] if x.strip()]
    assert len(lines) == sum(d["roce"]["go_backs"].values())
    # the frames of the go-backs: every retransmission but the copies lost again
    assert sum(int(x.split(" sent again, ")[1].split(" frame")[0]) for x in lines) <= d["roce"]["retransmissions"]
    if kind == "go_back":  # the cause, the one NAK (see check_analysis)
        assert len(lines) == 1 and "2 frames, after NAK (frame " in lines[0]
    if kind == "vanished":
        assert len(lines) == 7 and all("2 frames, after timeout" in x for x in lines)
    # a filtered timeline shows only what was asked for: no retransmission section
    only = smc_trace("decode", str(path), "--kind", "cdc.msg")
    assert only.returncode == 0 and only.stdout.strip(), only.stderr
    assert "RoCE retransmissions" not in only.stdout and all(" CDC " in x for x in only.stdout.splitlines())


# ---------------------------------------------------------------------------------------- tshark


def plugin_frames(path) -> list[dict]:
    proc = tshark.run(["-n", "-X", f"lua_script:{PLUGIN}", "-r", str(path), "-Y", "infiniband || smctop", "-T", "json", "--no-duplicate-keys"])
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr, proc.stderr
    return [p["_source"]["layers"] for p in json.loads(proc.stdout or "[]")]


def _values(node, key, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.extend(v if isinstance(v, list) else [v])
            else:
                _values(v, key, out)
    elif isinstance(node, list):
        for v in node:
            _values(v, key, out)
    return out


def one(layers, key):
    v = _values(layers, key, [])
    return v[0] if v else None


def plugin_mark(layers) -> tuple:
    cause = one(layers, "smctop.rc.go_back")
    return (one(layers, "smctop.rc.retransmission") == "1", one(layers, "smctop.rc.original"), cause and cause.removeprefix("after "),
            one(layers, "smctop.rc.cause_frame"), one(layers, "smctop.rc.ack"), one(layers, "smctop.rc.answers"),
            one(layers, "smctop.rc.dropped") == "1", one(layers, "smctop.rc.stale") == "1", one(layers, "smctop.rc.copy") == "1",
            one(layers, "smctop.rc.capture_copy"))  # fmt: skip


NOTHING = (False, None, None, None, None, None, False, False, False, None)  # what the plugin shows of a plain first copy


def python_mark(m) -> tuple:
    s = lambda v: None if v is None else str(v)  # noqa: E731 (tshark's JSON has strings)
    return (m.retransmission, s(m.original), m.cause, s(m.cause_frame), m.ack, s(m.answers), m.dropped, m.stale, m.copy,
            s(m.original) if m.capture_copy else None)  # fmt: skip


def same_marks(frames: list[dict], ra: RoceAnalysis) -> None:
    """The plugin marks every RoCE frame as dissectors/roce_analysis.py does (same rules, two languages)."""
    ib = {int(f["frame"]["frame.number"]): f for f in frames if "infiniband" in f}
    assert ib
    for n, layers in ib.items():
        m = ra.marks.get(n)
        want = python_mark(m) if m is not None else NOTHING
        if not (want[0] or want[4] or want[6] or want[9]):  # the plugin shows nothing for a plain first copy
            want = NOTHING
        assert plugin_mark(layers) == want, (n, plugin_mark(layers), want)


def test_plugin_and_python_agree_on_crafted_frames(tmp_path):
    """Cases real sessions rarely give: a capture of the wire that never saw the first copy,
    retries of a vanished peer, an RNR NAK, a stale NAK."""
    a, b, qa, qb, nak_seq = "10.1.0.1", "10.1.0.2", 0x111, 0x222, 3 << 5  # NAK: PSN sequence error
    path = tmp_path / "crafted.pcapng"
    plan = [("r", 1), ("r", 2), ("r", 4), ("r", 5), ("a", (3, nak_seq)), ("r", 3), ("r", 4), ("r", 5), ("a", (5, 0x1F)),
            ("r", 6), ("r", 6), ("r", 6), ("a", (6, (1 << 5) | 14)), ("r", 6), ("a", (3, nak_seq)), ("r", 7)]  # fmt: skip
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        i = w.add_interface(LINKTYPE_ETHERNET, "lo")
        for n, (what, arg) in enumerate(plan):
            if what == "r":
                pkt = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, qb, arg), payload=bytes(44))
                src, dst = a, b
            else:
                pkt = roce.RocePacket(roce.Bth(roce.Opcode.ACKNOWLEDGE, qa, arg[0]), aeth=roce.Aeth(arg[1], 1))
                src, dst = b, a
            # 150 ms apart: a PSN again is sent again (NAK, RNR NAK, the local ACK timeout), not captured twice
            w.write_packet(i, 1_700_000_000_000_000_000 + n * 150_000_000, roce.encode_frame(pkt, src, dst, 49152))
    ra = RoceAnalysis(keep_marks=True)
    list(read_events(path, None, ra))
    frames = plugin_frames(path)
    same_marks(frames, ra)
    t = ra.totals()
    assert (t["retransmissions"], t["go_backs"], t["rnr_naks"], t["naks"]) == (6, {"NAK": 1, "RNR NAK": 1, "timeout": 2}, 1, 1)
    assert sum(1 for f in frames if one(f, "smctop.rc.stale") == "1") == 1


def test_tshark_with_the_plugin_counts_each_message_once(capture):
    kind, path, got = capture
    exp = expected(got)
    frames = plugin_frames(path)
    ra = RoceAnalysis(keep_marks=True)
    list(read_events(path, None, ra))
    t = ra.totals()
    same_marks(frames, ra)
    retrans = [f for f in frames if one(f, "smctop.rc.retransmission") == "1"]
    assert len(retrans) == t["retransmissions"] == exp["frames"] - t["packets"]
    assert all(one(f, "smctop.rc.original") for f in retrans)  # a recording holds every first copy
    # the CDC messages tshark shows, without the copies sent again, are the stacks' own
    cdc = [f for f in frames if one(f, "smc.llc_msg") == "0xfe"]
    first = [f for f in cdc if one(f, "smctop.rc.copy") is None]
    assert len(first) == sent(got["events"], "cdc.msg") <= len(cdc) - (kind != "lossy")
    # NAKs name the request they answer, and each go-back names its cause
    naks = [f for f in frames if one(f, "smctop.rc.ack") == "NAK" and one(f, "smctop.rc.dropped") != "1" and one(f, "smctop.rc.stale") != "1"]
    assert len(naks) == exp["naks"] and all(one(f, "smctop.rc.answers") for f in naks)
    experts = [m for f in frames for m in _values(f, "_ws.expert.message", [])]
    assert sum(1 for m in experts if m.startswith("RC retransmission of PSN")) == len(retrans)
    assert sum(1 for m in experts if m.startswith("RC NAK, PSN sequence error")) == len([f for f in frames if one(f, "smctop.rc.ack") == "NAK"])
    go_backs = Counter(one(f, "smctop.rc.go_back") for f in retrans if one(f, "smctop.rc.go_back"))
    assert go_backs == Counter({f"after {c}": n for c, n in t["go_backs"].items() if n})
    assert not [m for m in experts if "producer cursor went backwards" in m]  # a CDC sent again is not a cursor going back
    if kind == "go_back":  # one go-back, after the one NAK (see check_analysis)
        assert go_backs == Counter({"after NAK": 1}) and len(retrans) == 2
    if kind == "vanished":
        assert go_backs == Counter({"after timeout": 7}) and len(retrans) == 14


# ------------------------------------------------------------------------ capture copies (tshark)
# A frame captured twice (tcpdump -i any with a VLAN or a bridge, a pcapng of two interfaces) is
# a capture copy, not a retransmission: the plugin names it as smc-trace does (same frames, same
# marks), and both count each message once. Captures from support/capture_copies.py, as smc-trace's
# own tests (tests/unit/test_capture_copies.py) build them.


def plugin_info(path) -> dict[int, str]:
    """Frame number -> the Info column, as tshark with the plugin writes it."""
    proc = tshark.run(["-n", "-X", f"lua_script:{PLUGIN}", "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "_ws.col.Info"])
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr, proc.stderr
    return {int(n): info for n, _, info in (line.partition("\t") for line in proc.stdout.splitlines())}


def experts_of(layers, prefix: str) -> list[str]:
    return [m for m in _values(layers, "_ws.expert.message", []) if m.startswith(prefix)]


def check_copies(tmp_path, data: bytes, copies: dict[int, int], retrans: set[int]) -> tuple[dict[int, dict], dict, list[dict]]:
    """tshark with the plugin on a capture: the frames in ``copies`` (copy -> its first capture)
    and only they are capture copies (field, Info, expert info), ``retrans`` and only they are
    retransmissions; every frame is marked as smc-trace marks it, and the counts agree with
    ``smc-trace summary`` and ``decode``. Returns the plugin's frames, summary's JSON and
    decode's events."""
    path = tmp_path / "copies.pcapng"
    path.write_bytes(data)
    frames = {int(f["frame"]["frame.number"]): f for f in plugin_frames(path)}
    info = plugin_info(path)
    assert set(frames) == set(info), "every frame is RoCE"
    assert not [n for n, f in frames.items() if "_ws.lua.text" in json.dumps(f)], "Lua errors in the tree"
    got = {n: int(one(f, "smctop.rc.capture_copy")) for n, f in frames.items() if one(f, "smctop.rc.capture_copy") is not None}
    assert got == copies, got
    for n, f in frames.items():
        text = experts_of(f, "Capture copy of frame")
        if n in copies:
            assert one(f, "smctop.rc.copy") == "1" and one(f, "smctop.rc.retransmission") is None, n
            assert f"[capture copy of frame {copies[n]}]" in info[n] and "[retransmission" not in info[n], (n, info[n])
            assert len(text) == 1 and text[0].startswith(f"Capture copy of frame {copies[n]} ("), (n, text)
            assert not experts_of(f, "RC "), n  # no retransmission, and a copy of a NAK is not another NAK
        else:
            assert "capture copy" not in info[n] and not text, (n, info[n], text)
        assert (one(f, "smctop.rc.retransmission") == "1") == (n in retrans), n
        assert ("[retransmission" in info[n]) == (n in retrans), (n, info[n])
    # smc-trace marks the same frames, and counts as the plugin does
    ra = RoceAnalysis(keep_marks=True)
    list(read_events(path, None, ra))
    same_marks(list(frames.values()), ra)
    assert {n for n, m in ra.marks.items() if m.capture_copy} == set(copies)
    res = smc_trace("summary", "--json", str(path))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["roce"]["capture_copies"] == len(copies)
    assert summary["roce"]["retransmissions"] == len(retrans)
    go_backs = Counter(one(f, "smctop.rc.go_back") for f in frames.values() if one(f, "smctop.rc.go_back"))
    assert go_backs == Counter({f"after {c}": n for c, n in summary["roce"]["go_backs"].items() if n})
    requests = [f for f in frames.values() if one(f, "smctop.rc.ack") is None]
    assert summary["roce"]["frames"] == sum(1 for f in requests if one(f, "smctop.rc.capture_copy") is None)
    text = smc_trace("decode", str(path))
    assert text.returncode == 0, text.stderr
    if copies:
        assert f"Capture copies: {len(copies)} RoCE frame{'s' if len(copies) != 1 else ''} captured twice" in text.stdout
    else:
        assert "Capture copies" not in text.stdout
    dec = smc_trace("decode", "--json", str(path))
    assert dec.returncode == 0, dec.stderr
    events = [json.loads(line) for line in dec.stdout.splitlines() if line.strip()]
    # each message once: what tshark shows without the copies (filter !smctop.rc.copy) is what smc-trace decodes
    cdc = [n for n, f in frames.items() if one(f, "smc.llc_msg") == "0xfe" and one(f, "smctop.rc.copy") is None]
    writes = [n for n, f in frames.items() if one(f, "infiniband.reth.r_key") is not None and one(f, "smctop.rc.copy") is None]
    assert len(cdc) == sum(1 for e in events if e["kind"] == "cdc.msg")
    assert len(writes) == sum(1 for e in events if e["kind"] == "rdma.write")
    assert not [e for e in events if e["kind"] == "trace.note"]
    return frames, summary, events


def test_plugin_sets_aside_the_copies_of_tcpdump_any_with_a_vlan(tmp_path):
    """SLL2: each frame on eth0.100 and, 5 us later, on eth0 with its tag; a last frame only on eth0."""
    sent = [(T0 + i * 100 * US, send(i)) for i in range(1, 4)] + [(T0 + 400 * US + i * 100 * US, write(i)) for i in range(4, 7)]
    data = any_capture(sent, extra=[(T0 + 2 * MS, sll2(send(7), 2, VLAN))])
    frames, summary, events = check_copies(tmp_path, data, {2 * i: 2 * i - 1 for i in range(1, 7)}, set())
    assert [e["seqno"] for e in events if e["kind"] == "cdc.msg"] == [1, 2, 3, 7]
    assert [n for n, f in frames.items() if one(f, "smc.llc_msg") == "0xfe" and one(f, "smctop.rc.copy") is None] == [1, 3, 5, 13]
    assert (summary["roce"]["frames"], summary["roce"]["packets"]) == (7, 7)


@pytest.mark.parametrize("how", ["cooked_v1", "two_interfaces"])
def test_plugin_sets_aside_the_copies_of_a_bridge_and_of_two_interfaces(tmp_path, how):
    """SLL v1 (both copies alike, 5 us apart: the same capture point) and a pcapng of eth0 and
    eth0.100 (the copy 2 ms later on the other interface)."""
    sent = [(T0 + i * 100 * US, send(i)) for i in range(1, 4)]
    data = any_capture(sent, LINKTYPE_LINUX_SLL) if how == "cooked_v1" else two_interfaces(sent)
    frames, summary, events = check_copies(tmp_path, data, {2: 1, 4: 3, 6: 5}, set())
    assert [e["seqno"] for e in events if e["kind"] == "cdc.msg"] == [1, 2, 3]


def test_plugin_still_marks_real_retransmissions_and_sets_their_copies_aside(tmp_path):
    """PSN 3 lost: a NAK, then 3 and 4 sent again 50 us later (soon, but after the NAK), and 4
    again after the ACK timeout (150 ms); tcpdump -i any saw every frame twice, the NAK too."""
    sent = [(T0, send(1)), (T0 + 10 * US, send(2)), (T0 + 20 * US, send(4)), (T0 + 30 * US, nak(3)),
            (T0 + 80 * US, send(3)), (T0 + 90 * US, send(4)), (T0 + 150 * MS, send(4))]  # fmt: skip
    frames, summary, events = check_copies(tmp_path, any_capture(sent), {2 * i: 2 * i - 1 for i in range(1, 8)}, {9, 11, 13})
    # frame 7 is the NAK (its copy, 8, is no other NAK); 9 goes back after it; 13 after the timeout
    assert one(frames[7], "smctop.rc.ack") == "NAK" and one(frames[7], "smctop.rc.answers") == "3"
    assert len(experts_of(frames[7], "RC NAK, PSN sequence error")) == 1
    assert one(frames[8], "smctop.rc.ack") == "NAK" and one(frames[8], "smctop.rc.answers") is None
    assert (one(frames[9], "smctop.rc.go_back"), one(frames[9], "smctop.rc.cause_frame"), one(frames[9], "smctop.rc.original")) == ("after NAK", "7", None)
    assert (one(frames[11], "smctop.rc.go_back"), one(frames[11], "smctop.rc.original")) == (None, "5")
    assert (one(frames[13], "smctop.rc.go_back"), one(frames[13], "smctop.rc.original")) == ("after timeout", "5")
    assert summary["roce"]["naks"] == 1 and summary["roce"]["go_backs"] == {"NAK": 1, "RNR NAK": 0, "timeout": 1}
    assert [e["seqno"] for e in events if e["kind"] == "cdc.msg"] == [1, 2, 4, 3]


def test_plugin_takes_the_same_frame_on_one_interface_for_a_copy_only_within_a_millisecond(tmp_path):
    data = one_interface([(T0, send(1)), (T0 + 20 * US, send(1)), (T0 + 5 * MS, send(1))])
    frames, summary, _ = check_copies(tmp_path, data, {2: 1}, {3})
    assert (one(frames[3], "smctop.rc.original"), one(frames[3], "smctop.rc.go_back")) == ("1", "after timeout")


def test_plugin_takes_an_answer_again_at_the_same_point_for_the_responders_own(tmp_path):
    """A request again within 1 ms at one point is a copy; an ACK or NAK again there is not: a
    responder answers every duplicate request with the same bytes (on another point it is)."""
    data = one_interface([(T0, send(1)), (T0 + 20 * US, send(1)), (T0 + 30 * US, send(2)), (T0 + 40 * US, send(4)),
                          (T0 + 50 * US, nak(3)), (T0 + 60 * US, nak(3))])  # fmt: skip
    frames, summary, _ = check_copies(tmp_path, data, {2: 1}, set())
    assert [one(frames[n], "smctop.rc.ack") for n in (5, 6)] == ["NAK", "NAK"]
    assert [len(experts_of(frames[n], "RC NAK, PSN sequence error")) for n in (5, 6)] == [1, 1]
    assert summary["roce"]["naks"] == 2
