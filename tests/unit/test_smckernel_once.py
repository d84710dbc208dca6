"""One snapshot as smc-tools prints it and as one JSON document (smckernel.once), on the lab
kernel's replies; the neutral snapshot from a stack's snapshot; the command line; the
recording helper; the import rule of the pure modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from smckernel import kio, model, once
from smckernel.tracker import Tracker

FIX = Path(__file__).resolve().parent / "fixtures" / "smckernel"
TRUTH = json.loads((FIX / "truth-client.json").read_text())
PROJECT = Path(__file__).resolve().parents[2]


def snap(name: str, host: str = "a") -> model.Snapshot:
    s = model.from_kernel(kio.load_raw(str(FIX / name)), 5.0, host)
    Tracker(host, stats_every=None).snapshot(s)
    return s


def test_smcss_prints_smc_tools_columns_with_reason_names_at_the_end() -> None:
    s = snap("client-open")
    out = once.smcss(s, all=True).splitlines()
    assert out[0] == "State          UID   Inode   Local Address           Peer Address            Intf Mode "
    (fb,) = [c for c in TRUTH["conns"] if c["fallback"]]
    (line,) = [x for x in out if fb["local"] in x]
    cols = line.split()
    assert cols[0] == "ACTIVE" and cols[1] == "00000" and cols[3:7] == [fb["local"], fb["peer"], "0000", "TCP"]
    assert cols[7] == "0x05000000/0x03030000" and cols[8] == "PEERDECL/NOSMCDEV"
    assert line.index(fb["local"]) == 29 and line.index(fb["peer"]) == 53  # the columns smcss pads to


def test_smcss_d_shows_cursors_as_smcss_writes_them() -> None:
    s = snap("client-open")
    out = once.smcss(s, debug=True).splitlines()
    c = next(c for c in TRUTH["conns"] if not c["fallback"])
    (line,) = [x for x in out if c["local"] in x]
    wrap, count = divmod(c["sent"], 65536)
    assert " <->  " in line and f"{wrap:04x}:{count:08x}" in line and "00010000 00010000 00010000" in line


def test_smcss_filters_as_smcss_does() -> None:
    server = snap("server-open", "b")
    assert not any("LISTEN" in x for x in once.smcss(server).splitlines())
    (listen,) = [x for x in once.smcss(server, all=True).splitlines() if x.startswith("LISTEN")]
    assert listen.split()[3] == "0.0.0.0:5001" and len(listen.split()) == 4
    assert once.smcss(server, listening=True).count("\n") == 2
    r = once.smcss(server, smcr=True).splitlines()
    assert len(r) == 1 + sum(not c["fallback"] for c in TRUTH["conns"]) and all(" SERV rxe0 " in x for x in r[1:])


def test_linkgroup_link_show_and_device_as_smcr_prints_them() -> None:
    s = snap("client-open")
    (g,) = s.link_groups
    lg = once.linkgroup_show(s).splitlines()
    assert lg[0] == "LG-ID    LG-Role  LG-Type  VLAN  #Conns  PNET-ID "
    assert lg[1].split() == [g.id, "CLNT", "SINGLE", "0", "2"]
    detail = once.linkgroup_show(s, detail=1)
    assert "Peer-Host: b\n" in detail and "EID      : SMCTOP-LAB\n" in detail and "Direct   : Yes" in detail
    ls = once.link_show(s, detail=2).splitlines()
    assert ls[1].split()[:6] == [g.id, "CLNT", "SINGLE", "eth0", "LINK_ACTIVE", "2"] and TRUTH["gid"] in ls[1]
    dev = once.device(s).splitlines()
    assert dev[1].split() == ["eth0", "rxe0", "1", "ACTIVE", "-", "Yes", "1"]  # "-": Soft-RoCE has no PCI type


def test_stats_summary_counts_connections_bytes_and_fallbacks() -> None:
    text = once.stats(snap("client-open"), detail=1)
    assert "  Total connections handled             3" in text
    assert "  SMC connections                       2 (client 2, server 0)" in text
    assert "  TCP fallback                          1 (client 1, server 0)" in text
    assert "     0x05000000 PEERDECL                   1" in text
    sent = sum(c["sent"] for c in TRUTH["conns"] if not c["fallback"])
    assert f"  Data transmitted (Bytes) {sent:14d} ({once.abbreviated(sent)})" in text


@pytest.mark.parametrize("n, text", [(0, "0"), (999, "999"), (1000, "1.000K"), (65536, "65.54K"), (131072, "131.1K"),
                                     (999999, " 1000K"), (1234567, "1.235M"), (12345678901, "12.35G")])  # fmt: skip
def test_abbreviations_fit_six_characters_as_smc_tools_writes_them(n: int, text: str) -> None:
    assert once.abbreviated(n) == text


def test_the_json_document_has_the_five_keys_and_reasons_as_hex_and_name() -> None:
    d = json.loads(once.render_json(snap("client-open")))
    assert {"connections", "link_groups", "links", "devices", "stats"} <= d.keys()
    by_local = {c["local"]: c for c in d["connections"]}
    for t in TRUTH["conns"]:
        c = by_local[t["local"]]
        assert c["peer"] == t["peer"] and c["state"] == "ACTIVE"
        if t["fallback"]:
            assert c["fallback_reason"] == {"code": 0x05000000, "hex": "0x05000000", "name": "PEERDECL", "text": "0x05000000 PEERDECL"}
            assert c["peer_diagnosis"]["name"] == "NOSMCDEV" and c["link_group"] is None
        else:
            assert c["fallback_reason"] is None and c["buffers"] == {"sndbuf": 65536, "rmb": 65536, "peer_rmb": 65536}
            wrap, count = divmod(t["sent"], 65536)
            assert c["cursors"]["tx_prod"] == {"wrap": wrap, "count": count} and c["bytes_sent"] == t["sent"]
            assert c["link_group"]["id"] == d["link_groups"][0]["id"] and c["link_group"]["gid"] == TRUTH["gid"]
    assert d["stats"]["fallback"]["reasons"][0]["text"] == "0x05000000 PEERDECL"


def test_a_stack_snapshot_renders_through_the_same_neutral_structure() -> None:
    from stack.events import check_snapshot

    kernel = snap("client-open")
    stack_shape = model.to_stack_snapshot(kernel)
    assert check_snapshot(stack_shape) is None
    neutral = model.from_stack_snapshot(stack_shape)
    assert neutral.source == "stack"
    key = lambda s: sorted((c.local, c.peer, c.mode, c.state, c.fallback_reason, c.cursors.get("tx_prod"), c.lgr) for c in s.connections if c.state != "LISTEN")  # noqa: E731
    assert key(neutral) == key(kernel)
    assert once.smcss(neutral, smcr=True).splitlines()[1].split()[6:9] == once.smcss(kernel, smcr=True).splitlines()[1].split()[6:9]
    assert once.linkgroup_show(neutral).splitlines()[1].split()[:3] == once.linkgroup_show(kernel).splitlines()[1].split()[:3]
    text = once.render_text(neutral)
    assert "# smcss -a" in text and "unknown (the stack source does not count them)" in text
    assert " -       -" in once.smcss(neutral).splitlines()[1][:30]  # no uid or inode: unknown, not zero


# ---------------------------------------------------------------------------- the command line


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smckernel", *args], capture_output=True, text=True, cwd=PROJECT, timeout=120)


def test_once_from_saved_replies_prints_text_and_json() -> None:
    r = run("--once", "--from-raw", str(FIX / "client-open"))
    assert r.returncode == 0 and "# smcr linkgroup link-show" in r.stdout and "LINK_ACTIVE" in r.stdout, r.stderr
    r = run("--once", "--json", "--from-raw", str(FIX / "client-open"))
    d = json.loads(r.stdout)
    assert len(d["connections"]) == 3 and d["source"] == "kernel (saved)"


def test_bad_input_is_one_line_and_no_traceback() -> None:
    r = run("--once", "--from-raw", "/nonexistent/dir")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such directory" in r.stderr
    r = run("--once", "--netns", "no-such-namespace-here")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("smckernel: "), r.stderr
    assert "no-such-namespace-here" in r.stderr or "neither smc_diag" in r.stderr


def test_this_hosts_kernel_answers_or_says_why_not_in_one_line() -> None:
    r = run("--once", "--json")
    if r.returncode == 0:
        assert "connections" in json.loads(r.stdout)
    else:
        assert r.returncode == 2 and r.stderr.startswith("smckernel: ") and "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------- recording


def test_a_recording_holds_the_events_and_frames_on_one_clock(tmp_path: Path) -> None:
    from dissectors.capture import read_events
    from dissectors.pcap import read_capture
    from dissectors.pcapng import LINKTYPE_ETHERNET
    from smckernel import capture
    from smckernel.record import KernelRecording
    from smckernel.source import KernelSource
    from stack.wire import cdc, roce

    src = KernelSource(stats_every=None)  # not started: events and frames are handed in as its threads would
    out = tmp_path / "k.pcapng"
    rec = KernelRecording(str(out), src)
    s = model.from_kernel(kio.load_raw(str(FIX / "client-open")), 100.0, "a")
    src._emit(src.tracker.snapshot(s, {"connections", "link_groups", "links", "devices"}))
    msg = cdc.CdcMessage(seqno=9, token=1, prod=cdc.Cursor(0, 5), cons=cdc.Cursor(1, 0))
    pkt = roce.RocePacket(roce.Bth(roce.Opcode.SEND_ONLY, dest_qp=17, psn=5), payload=msg.encode())
    frame = roce.encode_frame(pkt, "10.2.0.2", "10.2.0.1", 49152)
    ts = int(100.5 * 1e9) + src.clock_offset_ns  # 0.5 s after the snapshot, on the wall clock
    src._on_frame(ts, "rx", frame)
    rec.close()
    events = list(read_events(str(out)))
    assert [e.kind for e in events if e.kind == "cdc.msg"] == ["cdc.msg"]
    (c,) = [e for e in events if e.kind == "cdc.msg"]
    assert c.conn == next(x.id for x in s.connections if x.token == 1) and c.fields["source"] == "capture"
    assert abs(c.t - 100.5) < 1e-6
    packets = [p for p in read_capture(out.read_bytes()) if p.linktype == LINKTYPE_ETHERNET and len(p.data) > 42 and p.data[23] == 17]
    (p,) = packets
    assert p.timestamp_ns == ts and capture.decode(p.data).messages[0][1]["seqno"] == 9


# ---------------------------------------------------------------------------- import rule


PURE = ("netlink", "diag", "genl", "model", "once", "trace", "tracker")


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_no_io(name: str) -> None:
    tree = ast.parse((PROJECT / "smckernel" / f"{name}.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
    assert not imported & {"socket", "select", "time", "threading", "asyncio", "kio", "tracing", "capture", "source"}, imported


def test_the_source_hands_events_to_an_asyncio_iterator_in_order() -> None:
    import asyncio
    import threading

    from smckernel.source import KernelSource

    src = KernelSource(stats_every=None)  # not started: its threads' calls are made here
    events = src.tracker.snapshot(model.from_kernel(kio.load_raw(str(FIX / "client-open")), 1.0, "a"))

    async def consume() -> list:
        got = []
        it = src.events()
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)  # the iterator is listening now
        threading.Thread(target=src._emit, args=(events,)).start()  # as the poller thread would
        got.append(await asyncio.wait_for(first, 5))
        while len(got) < len(events):
            got.append(await asyncio.wait_for(it.__anext__(), 5))
        await it.aclose()
        return got

    got = asyncio.run(consume())
    assert [e.kind for e in got] == [e.kind for e in events] and src._listeners == []


def test_a_long_device_name_is_printed_whole() -> None:
    """Names are padded, never cut (as smcr's %-8s): soft devices are named by their address,
    and 127.30.28.1 and 127.30.2x.x cut to 8 characters read as one device."""
    import dataclasses

    s = snap("client-open")
    s.links = [dataclasses.replace(lk, ib_dev="127.30.28.1") for lk in s.links]
    s.devices = [dataclasses.replace(d, name="127.30.28.1") for d in s.devices]
    assert "127.30.28.1" in once.link_show(s, detail=1) and once.device(s).splitlines()[1].split()[1] == "127.30.28.1"


def _under(table: str, header: str, row: int = 1) -> str:
    """The value in ``row`` that starts in ``header``'s column."""
    lines = table.splitlines()
    at = lines[0].index(header)
    return lines[row][at:].split()[0]


def test_columns_stay_under_their_headers_with_long_names_and_no_shutdown() -> None:
    """A soft device's name (its address) overflowed the 8-wide IB-Dev column and shifted
    IB-P and the rest; a stack snapshot has no shutdown, and smcss -d left its column out, so
    the token stood under Shutd and every later value one column left."""
    import dataclasses

    s = snap("client-open")
    s.links = [dataclasses.replace(lk, ib_dev="127.213.47.1") for lk in s.links]
    s.devices = [dataclasses.replace(d, name="127.213.47.1") for d in s.devices]
    dev = once.device(s)
    assert _under(dev, "IB-Dev") == "127.213.47.1" and _under(dev, "IB-P") == str(s.devices[0].ports[0].port)
    assert _under(dev, "IB-State") == s.devices[0].ports[0].state
    show = once.link_show(s, detail=1)
    assert _under(show, "IB-Dev") == "127.213.47.1" and _under(show, "IB-P") == str(s.links[0].ib_port)
    neutral = model.from_stack_snapshot(model.to_stack_snapshot(snap("client-open")))
    conn = next(c for c in neutral.connections if c.token is not None)
    assert conn.shutdown is None
    table = once.smcss(neutral, debug=True)
    row = next(i for i, line in enumerate(table.splitlines()) if f"{conn.token:08x}" in line)
    assert _under(table, "Token", row) == f"{conn.token:08x}" and _under(table, "Shutd", row) == "-"
    assert _under(table, "Rcvbuf", row) == f"{conn.rmb_size:08x}" and _under(table, "rxprod-Cursor", row).count(":") == 1
