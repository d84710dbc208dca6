"""smc-trace files: captures we did not write (pcapng rewritten by tshark, classic pcap of
either byte order) decode into the same event model; damage gets an error naming the
block and offset, with what came before kept; the recorder counts what it drops."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from support import tshark
from support.pcapng_files import classic_pcap
from support.stacks import run, two_stacks, until
from support.traces import DIFFPREFIX, lgr_types, record_session

from dissectors import cli
from dissectors.capture import CaptureError, read_events
from dissectors.derive import PEERNOSMC
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter, read_packets
from dissectors.recorder import Recorder
from dissectors.records import RecordError, decode_record, encode_record
from dissectors.summary import summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from smctop.model import Model
from stack.events import Event, render, to_json


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "run.pcapng"
    events, stats = record_session(path, fallback=True)
    return path, events, stats


def frames_only_pcap(src, dst, order: str = "<", nanos: bool = False, drop=None) -> None:
    """A classic pcap of the Ethernet frames of ``src`` (what tcpdump on the wire would keep;
    ``drop(frame)`` true: a frame it lost)."""
    frames = [p for p in read_packets(src.read_bytes()) if p.linktype == LINKTYPE_ETHERNET and not (drop and drop(p.data))]
    dst.write_bytes(classic_pcap(frames, order, nanos))


def test_event_record_round_trip_and_foreign_records():
    e = Event(12.5, "conn.fallback", "h", "lgr1", 2, 7, {"reason": DIFFPREFIX, "raw": b"\x01\x02"})
    assert to_json(decode_record(encode_record(e))) == to_json(e)
    with pytest.raises(RecordError, match="SMCTOP"):
        decode_record(b"\x00\x0c\x00\x08json\x00\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(RecordError, match="runs past"):
        decode_record(encode_record(e)[:6])
    with pytest.raises(RecordError, match="not JSON"):
        decode_record(encode_record(e)[:-3])


@pytest.mark.parametrize("order,nanos", [("<", False), (">", True)])
def test_a_classic_pcap_of_the_wire_summarizes_like_the_recording(recorded, tmp_path, order, nanos):
    path, events, _ = recorded
    pcap = tmp_path / "wire.pcap"
    frames_only_pcap(path, pcap, order, nanos)
    derived = summarize(read_events(pcap)).to_dict()
    ours = summarize(events).to_dict()
    # the wire shows each connection from both of its ends, as the two recorded hosts do
    assert derived["connections"] == ours["connections"] == {"total": 3, "ends": 6, "modes": {"SMCR": 2, "TCP": 1}}
    # each end's own view, as the two recorded hosts had it: the server's DIFFPREFIX, the client's PEERDECL
    assert [f["reason"] for f in derived["fallbacks"]] == [f["reason"] for f in ours["fallbacks"]] == [DIFFPREFIX, 0x05000000]
    assert sorted(c["bytes_written"] for c in derived["conns"]) == sorted(c["bytes_written"] for c in ours["conns"])
    kinds = {e.kind for e in read_events(pcap)}
    assert {"conn.open", "clc.msg", "llc.msg", "cdc.msg", "rdma.write", "conn.mode", "conn.fallback"} <= kinds
    assert "trace.note" not in kinds


def _record_concurrent_on_two_links(path) -> list[Event]:
    """Two devices a side, recorded from the start: three connections at once (the first
    contact, and two that join while the second link is added), then three more once both
    links are up (each with an RMB of its own, confirmed on the links before the CLC message
    that names it), each echoing 20 KB; then the first link's port pulled under two open
    connections (whatever was on that link fails over), each of which echoes 40 KB in all,
    and a connection carried by the link left."""
    seen: list[Event] = []

    async def echo(r, w):
        w.write(await r.read())
        w.close()

    async def echo_as_it_comes(r, w):
        while data := await r.read(1 << 16):
            w.write(data)
        w.close()

    async def one(a, ca, sa, n):
        r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
        sent = bytes([n]) * 20_000
        w.write(sent)
        w.write_eof()
        assert await r.read() == sent
        w.close()
        await w.wait_closed()

    async def main():
        async with two_stacks(mtu=1024, client_dev=2, server_dev=2) as (a, b, ca, sa):
            await b.start_server(echo, sa, 5000)
            await b.start_server(echo_as_it_comes, sa, 5001)
            rec = Recorder(str(path))
            for s in (a, b):
                seen.append(rec.attach(s))
                s.bus.listen(seen.append)
            # the first contact makes the group, the other two join it while its second link is added
            await asyncio.gather(*(one(a, ca, sa, n) for n in (0, 1, 2)))
            await until(lambda: lgr_types(a) == lgr_types(b) == ["SYM"], what="both links up")
            await asyncio.gather(*(one(a, ca, sa, n) for n in (3, 4, 5)))
            # echoed back before the pull: every byte delivered, and none written again after the failover
            both = [await a.open_connection(sa, 5001, local_addr=(ca, 0)) for _ in range(2)]
            for r, w in both:
                w.write(b"o" * 20_000)
                assert await r.readexactly(20_000) == b"o" * 20_000
            b.set_port(sa, False)
            await until(lambda: b.snapshot()["failovers"] and a.snapshot()["failovers"], what="the failover on both sides")
            for r, w in both:
                w.write(b"o" * 20_000)
                w.write_eof()
                assert await r.read() == b"o" * 20_000
                w.close()
            await one(a, ca, sa, 6)
            await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="every connection closed")
            for s in (a, b):
                s.bus.unlisten(seen.append)
            rec.close()

    run(main())
    return seen


@pytest.fixture(scope="module")
def two_links(tmp_path_factory):
    """The session of _record_concurrent_on_two_links: its events, and its frames as a classic pcap."""
    d = tmp_path_factory.mktemp("two_links")
    events = _record_concurrent_on_two_links(d / "two_links.pcapng")
    frames_only_pcap(d / "two_links.pcapng", d / "wire.pcap")
    return events, d / "wire.pcap"


def test_a_pcap_of_two_links_gives_each_connection_its_bytes_and_each_host_one_row(two_links):
    """Derived from the wire (tcpdump of two hosts with two RoCE ports each), RDMA WRITEs with
    an rkey of the second link lost their connection when the RMB was confirmed before its
    CLC message named it, and the second port's address was a host of its own."""
    events, pcap = two_links
    derived = summarize(read_events(pcap)).to_dict()
    ours = summarize(events).to_dict()
    assert derived["connections"] == ours["connections"] == {"total": 9, "ends": 18, "modes": {"SMCR": 9}}  # each connection once, with both its ends
    links = {e.link for e in read_events(pcap) if e.kind == "rdma.write" and e.conn is not None}
    assert len(links) >= 2, links  # connections' WRITEs on more than one link
    assert not [e for e in read_events(pcap) if e.kind == "rdma.write" and e.conn is None]
    assert sorted(c["bytes_written"] for c in derived["conns"]) == sorted(c["bytes_written"] for c in ours["conns"])
    assert sorted(c["bytes_written"] for c in derived["conns"]) == [20_000] * 14 + [40_000] * 4, derived["conns"]
    # one host a side, named by the address its CLC came from
    assert len({c["host"] for c in derived["conns"]}) == 2 and all(c["local"] for c in derived["conns"]), derived["conns"]


def test_a_pcap_of_a_failover_shows_it_as_the_stacks_reported_it(two_links):
    """From the wire, a failover is each host's CDCs with the failover-validation flag on the
    link its connections moved to, from the first of them to the peer's ACK of the last
    (dissectors/wire_failover.py); summary listed none for a capture of real hosts."""
    events, pcap = two_links
    derived = summarize(read_events(pcap)).to_dict()["failovers"]
    ours = summarize(events).to_dict()["failovers"]
    hosts = {e.host: e.get("local", "").rpartition(":")[0] for e in events if e.kind == "conn.open"}  # client/server -> their address
    moved = sorted((hosts[f["host"]], f["from_link"], f["to_link"], f["conns"], f["failed"]) for f in ours if f["conns"])
    assert moved and sorted((f["host"], f["from_link"], f["to_link"], f["conns"], f["failed"]) for f in derived) == moved, (derived, ours)
    for f in derived:  # from the first validation CDC to the ACK of the last: within what the stack measured, which waits for its completion
        stack = next(o for o in ours if hosts[o["host"]] == f["host"] and o["conns"])
        assert 0 <= f["duration_ms"] <= stack["duration_ms"] + 1.0, (f, stack)


def test_one_failover_in_two_files_is_listed_once(two_links, tmp_path, capsys):
    """Two hosts' captures of one failover (here the same capture twice, as each host's
    tcpdump sees both ends' frames): each failover once, by the first file's name."""
    events, pcap = two_links
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        shutil.copy(pcap, tmp_path / d / "host.pcap")
    assert cli.main(["summary", "--json", str(pcap)]) == 0
    alone = json.loads(capsys.readouterr().out)["failovers"]
    assert cli.main(["summary", "--json", str(tmp_path / "a" / "host.pcap"), str(tmp_path / "b" / "host.pcap")]) == 0
    both = json.loads(capsys.readouterr().out)["failovers"]
    assert len(alone) == 2 and [(f["host"].partition("@")[0], f["from_link"], f["conns"]) for f in both] == [
        (f["host"], f["from_link"], f["conns"]) for f in alone
    ], (alone, both)


def test_one_link_deletion_in_two_files_counts_once(two_links, tmp_path, capsys):
    """The DELETE LINK of that failover, in each host's capture: its reason once, as in one
    file (it counted once a file)."""
    events, pcap = two_links
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(pcap, tmp_path / d / "host.pcap")
    assert cli.main(["summary", "--json", str(pcap)]) == 0
    alone = json.loads(capsys.readouterr().out)["delete_link_reasons"]
    assert cli.main(["summary", "--json", str(tmp_path / "a" / "host.pcap"), str(tmp_path / "b" / "host.pcap")]) == 0
    both = json.loads(capsys.readouterr().out)["delete_link_reasons"]
    assert alone == both and [r["count"] for r in alone] == [1], (alone, both)


def test_bytes_a_failover_writes_again_are_counted_once(tmp_path):
    """The server's port pulled just before the client writes: the client's first RMB-full
    goes out on the old link (the capture has it) and is lost, and after the failover it is
    written again on the other. Each byte counts once, in the stack's recording and from the
    wire: summary counted the WRITEs, 65,536 bytes too many."""
    total = 300_000
    seen: list[Event] = []

    async def sink(r, w):
        w.write(len(await r.read()).to_bytes(8, "big"))
        w.close()

    async def main():
        async with two_stacks(mtu=1024, client_dev=2, server_dev=2) as (a, b, ca, sa):
            await b.start_server(sink, sa, 5000)
            rec = Recorder(str(tmp_path / "run.pcapng"))
            for s in (a, b):
                seen.append(rec.attach(s))
                s.bus.listen(seen.append)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            w.write(b"x" * 1000)
            await w.drain()
            await until(lambda: lgr_types(a) == lgr_types(b) == ["SYM"], what="both links up")
            b.set_port(sa, False)
            w.write(b"y" * (total - 1000))  # posted on the old link before the client learns it is gone
            w.write_eof()
            assert int.from_bytes(await r.read(), "big") == total
            w.close()
            await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="the connection closed")
            for s in (a, b):
                s.bus.unlisten(seen.append)
            rec.close()

    run(main())
    rewound = sum(e.get("rewound") or 0 for e in seen if e.kind == "conn.cursor")
    assert rewound > 0, "no byte was written again: the case this test is about did not happen"
    frames_only_pcap(tmp_path / "run.pcapng", tmp_path / "wire.pcap")
    for events in (seen, list(read_events(tmp_path / "wire.pcap"))):
        d = summarize(events).to_dict()
        server, client = sorted(d["conns"], key=lambda c: c["bytes_written"])
        assert client["bytes_written"] == total + rewound  # the WRITEs, both copies
        assert (client["moved"], client["received"], server["moved"], server["received"]) == (total, 8, 8, total), d["conns"]
        assert d["moved"] == total + 8
    model = Model()
    for e in seen:
        model.feed(e)
    assert sorted((c.ev_tx, c.ev_rx) for c in model.conns.values()) == [(8, total), (total, 8)]
    # the wire tells what goes again as the stack did (its validation CDC names its last
    # completed one), and smctop's replay of the capture counts each byte once too
    derived = list(read_events(tmp_path / "wire.pcap"))
    ours = [(e.get("rewound"), e.get("prod")) for e in seen if e.kind == "conn.cursor" and e.get("rewound")]
    assert [(e.get("rewound"), e.get("prod")) for e in derived if e.kind == "conn.cursor" and e.get("side") == "tx"] == ours
    (told,) = [render(e) for e in derived if e.kind == "conn.cursor" and e.get("rewound")]
    assert f"{rewound} bytes to write again (failover)" in told, told  # as decode's timeline shows it
    model = Model()
    for e in derived:
        model.feed(e)
    assert sorted((c.ev_tx, c.ev_rx) for c in model.conns.values()) == [(8, total), (total, 8)]  # what each end received, too


def test_smctop_counts_what_a_lossy_capture_sent_from_its_cdcs(tmp_path):
    """tcpdump under load loses frames. smctop counted an end's bytes sent from the RDMA WRITEs
    it saw, so every WRITE whose first frame was lost was missing from Sent and from the
    total; the CDC that follows a WRITE carries the producer cursor, which tells it."""
    total = 1_000_000  # about 15 turns of the 64 KiB RMB: the cursor's wrap counts too
    seen: list[Event] = []

    async def sink(r, w):
        w.write(len(await r.read()).to_bytes(8, "big"))
        w.close()

    async def main():
        async with two_stacks(mtu=1024) as (a, b, ca, sa):
            await b.start_server(sink, sa, 5000)
            rec = Recorder(str(tmp_path / "run.pcapng"))
            for st in (a, b):
                seen.append(rec.attach(st))
                st.bus.listen(seen.append)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            for k in range(total // 10_000):
                w.write(bytes([k & 0xFF]) * 10_000)
                await w.drain()
            w.write_eof()
            assert int.from_bytes(await r.read(), "big") == total
            w.close()
            await until(lambda: not a.snapshot()["conns"] and not b.snapshot()["conns"], what="the connection closed")
            for st in (a, b):
                st.bus.unlisten(seen.append)
            rec.close()
            return sa

    server = ipaddress.ip_address(run(main())).packed
    writes = [0]

    def lose_some_writes(frame: bytes) -> bool:  # every third WRITE's first (or only) frame, and the server's only one
        if len(frame) < 43 or frame[12:14] != b"\x08\x00" or frame[23] != 17 or frame[36:38] != b"\x12\xb7":
            return False
        if frame[42] not in (0x06, 0x0A, 0x0B):  # RC RDMA WRITE First, Only, Only with immediate
            return False
        writes[0] += 1
        return writes[0] % 3 == 0 or frame[26:30] == server

    frames_only_pcap(tmp_path / "run.pcapng", tmp_path / "lossy.pcap", drop=lose_some_writes)
    assert writes[0] >= 12, writes  # enough WRITEs (the sender gathers about 50 kB in each) for the losses to matter
    derived = list(read_events(tmp_path / "lossy.pcap"))
    counted = sorted((c.moved, c.received) for c in summarize(derived).conns.values())
    assert counted == [(8, total), (total, 8)], counted  # summary counts from the cursors (the server's 8 bytes: its CDC)
    model = Model()
    model.feed_timed(derived)
    model.advance(derived[-1].t + 2 * model.interval)  # close the last samples
    ends = sorted((c.ev_tx, c.ev_rx) for c in model.conns.values())
    why = [(c.host, c.role, c.tx_prod, c.tx_pos, c.tx_cur, c.tx_wr, c.peer_rmb_size) for c in model.conns.values()]
    assert ends == [(8, total), (total, 8)], (ends, why)  # smctop's Sent too, though a third of the WRITEs are not in the capture
    assert model.bytes == total + 8  # the header's total moved: each byte once


def test_every_connection_end_of_a_capture_is_active_once_its_handshake_is_done(recorded, tmp_path):
    """Over SMC-R or fallen back, an open connection is ACTIVE (as the stack and smcss say):
    derived from the wire, an end went from nothing to CLOSED, and one still open when the
    capture ended showed INIT in smctop's replay."""
    path, events, _ = recorded
    pcap = tmp_path / "wire.pcap"
    frames_only_pcap(path, pcap)
    states: dict[tuple[str, int], list[str]] = {}
    for e in read_events(pcap):
        if e.kind == "conn.state":
            states.setdefault((e.host, e.conn), []).append(e.get("new"))
    ours = {(e.host, e.conn) for e in events if e.kind == "conn.state" and e.get("new") == "ACTIVE"}
    assert len(states) == len(ours) == 6, (states, ours)  # 3 connections (SMC-R and fallen back), each end
    assert all(s == ["ACTIVE", "CLOSED"] for s in states.values()), states


def test_a_pcapng_rewritten_by_tshark_without_our_records_is_derived(recorded, tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: run the README's test command")
    path, events, _ = recorded
    out = tmp_path / "tshark.pcapng"
    subprocess.run(["tshark", "-r", str(path), "-Y", "frame.interface_id == 0", "-w", str(out)], check=True, capture_output=True, env=tshark.env())
    derived = list(read_events(out))
    assert not any(e.kind == "trace.note" for e in derived)
    cdc_ours = sorted((e.get("seqno"), e.get("token")) for e in events if e.kind == "cdc.msg" and e.get("dir") == "tx")
    cdc_wire = sorted({(e.get("seqno"), e.get("token")) for e in derived if e.kind == "cdc.msg"})
    assert cdc_wire == sorted(set(cdc_ours))
    declines = [e for e in derived if e.kind == "clc.msg" and e.get("type") == "Decline"]
    assert [d.get("diagnosis") for d in declines] == [DIFFPREFIX]


def _http_over(client_smc: bool, server_smc: bool, tail_s: float = 0.0) -> bytes:
    """A TCP connection carrying HTTP, the client's SYN with the SMC option or not (the
    server echoes it only when it is an SMC socket and the SYN had it), and a last frame
    ``tail_s`` seconds later (the capture goes on)."""
    import io

    flow = TcpFlow(Endpoint(ipaddress.IPv4Address("10.0.0.1"), 40000, smc=client_smc), Endpoint(ipaddress.IPv4Address("10.0.0.2"), 80, smc=server_smc))
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    frames = [*flow.handshake(), flow.data(True, b"GET / HTTP/1.0\r\n\r\n"), flow.data(False, b"HTTP/1.0 200 OK\r\n\r\n")]
    for i, frame in enumerate(frames):
        w.write_packet(0, 1_000_000_000 + i, frame)
    w.write_packet(0, 1_000_000_000 + len(frames) + int(tail_s * 1e9), flow.ack(True))
    return buf.getvalue()


def test_tcp_that_never_offered_smc_is_not_a_connection_of_smcs():
    """No SMC option in the SYN (so none in the SYN-ACK) and no CLC: a plain TCP socket, an
    ssh or HTTP session in the same capture. It was listed as two PEERNOSMC fallbacks."""
    s = summarize(read_events(_http_over(False, True))).to_dict()
    assert s["connections"] == {"total": 0, "ends": 0, "modes": {}} and s["fallbacks"] == []


def test_a_client_whose_option_was_not_echoed_falls_back_with_peernosmc_when_its_data_begins():
    """The client offered SMC and the server's SYN-ACK did not: the client falls back with
    PEERNOSMC (smc_connect), the server is a plain TCP socket (reason 0); the fallback is
    dated when the data began, not when the capture ended (60 s later here)."""
    events = list(read_events(_http_over(True, False, tail_s=60.0)))
    fb = {e.host: (e.fields["reason"], e.t) for e in events if e.kind == "conn.fallback"}
    assert fb["10.0.0.1"][0] == PEERNOSMC and fb["10.0.0.2"][0] == 0
    assert fb["10.0.0.1"][1] == fb["10.0.0.2"][1] == 1.000000003  # the first data frame
    s = summarize(events).to_dict()
    assert s["connections"] == {"total": 1, "ends": 2, "modes": {"TCP": 1}}


def test_truncated_files_name_the_block_and_offset_and_keep_what_came_before(recorded):
    path, events, _ = recorded
    data = path.read_bytes()
    # a cut exactly between two blocks leaves a shorter file that is whole: not a truncation
    boundaries, off = set(), 0
    while off + 8 <= len(data):
        off += int.from_bytes(data[off + 4 : off + 8], "little")
        boundaries.add(off)
    rng = random.Random(5)
    cuts = [c for c in range(40, len(data) - 1) if c not in boundaries]
    for cut in sorted(rng.sample(cuts, 25)):
        got = []
        with pytest.raises(CaptureError) as info:
            for e in read_events(data[:cut]):
                got.append(e)
        msg = str(info.value)
        assert "block" in msg and "offset" in msg, msg
        assert [to_json(e) for e in got] == [to_json(e) for e in events[: len(got)]]


def test_corrupt_bytes_give_capture_errors_or_notes_never_a_crash(recorded):
    path, _, _ = recorded
    data = bytearray(path.read_bytes())
    rng = random.Random(9)
    outcomes = set()
    for _ in range(60):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            list(read_events(bytes(bad)))
            outcomes.add("read")
        except CaptureError as e:
            assert "offset" in str(e) or "record" in str(e), e
            outcomes.add("error")
    assert "error" in outcomes
    with pytest.raises(CaptureError, match="not a pcap or pcapng file: it starts with 47494638 at byte offset 0"):
        list(read_events(b"GIF89a..."))


def test_the_recorder_counts_and_records_what_it_drops(tmp_path):
    path = tmp_path / "drops.pcapng"
    events, stats = record_session(path, max_pending=20)
    assert stats.dropped_events + stats.dropped_frames > 0
    back = list(read_events(path))
    drops = [e for e in back if e.kind == "events.dropped"]
    assert sum(e.get("count") for e in drops) == stats.dropped_events
    assert sum(e.get("frames") for e in drops) == stats.dropped_frames
    assert len(back) - len(drops) == stats.events == len(events) - stats.dropped_events


KERNEL_CAPTURE = Path(__file__).parents[1] / "lab" / "fixtures" / "kernel_interop_smcr.pcap"


def test_summary_reads_a_capture_of_our_stack_and_the_linux_kernel():
    """tcpdump inside the kernel lab (tests/lab/test_kernel_interop.py): our stack and the
    kernel's SMC-R over Soft-RoCE, both directions, SMC-Rv2 with the kernel's little-endian
    LLC lengths. Port probes (SYN, RST) before the servers were up are not connections."""
    events = list(read_events(KERNEL_CAPTURE))
    assert not [e for e in events if e.kind == "trace.note"]
    s = summarize(events).to_dict()
    assert s["connections"] == {"total": 4, "ends": 8, "modes": {"SMCR": 4}}
    assert {(c["role"], c["local"].rsplit(":", 1)[1] if c["role"] == "server" else c["peer"].rsplit(":", 1)[1]) for c in s["conns"]} == {
        ("client", "5001"),
        ("client", "5002"),
        ("server", "5001"),
        ("server", "5002"),
    }
    assert all(c["state"] == "CLOSED" and c["bytes_written"] > 0 for c in s["conns"])
    llc_types = {e.get("type") for e in events if e.kind == "llc.msg"}
    assert {"LLC CONFIRM LINK v2", "LLC ADD LINK v2", "LLC DELETE LINK v2"} <= llc_types
    reject = [e for e in events if e.kind == "llc.msg" and e.get("type") == "LLC ADD LINK v2" and e.get("rejected")]
    assert reject and len(bytes.fromhex(reject[0].get("raw")) if isinstance(reject[0].get("raw"), str) else reject[0].get("raw")) == 44
    cdc = [e for e in events if e.kind == "cdc.msg"]
    assert cdc and all(e.conn is not None for e in cdc)  # tied to connections by their alert tokens
    writes = [e for e in events if e.kind == "rdma.write"]
    assert writes and all(e.conn is not None for e in writes)  # and by their rkeys


def test_a_recording_started_mid_session_still_names_its_connections(tmp_path):
    """The recorder's first record per stack is its state (conns, link groups), so the
    summary knows the mode and ends of connections opened before the recording began."""
    import asyncio

    from support.stacks import run, two_stacks

    from dissectors.recorder import Recorder

    path = tmp_path / "late.pcapng"

    async def main():
        async with two_stacks(mtu=1024) as (a, b, ca, sa):

            async def echo(r, w):
                while data := await r.read(4096):
                    w.write(data)
                w.close()

            await b.start_server(echo, sa, 5000)
            r, w = await a.open_connection(sa, 5000, local_addr=(ca, 0))
            w.write(b"before" * 100)
            await r.readexactly(600)
            rec = Recorder(str(path))
            rec.attach(a), rec.attach(b)
            w.write(b"during" * 1000)
            await r.readexactly(6000)
            w.close()
            await asyncio.sleep(0.2)
            rec.close()

    run(main())
    s = summarize(read_events(path)).to_dict()
    assert {(c["host"], c["role"], c["mode"]) for c in s["conns"]} == {("client", "client", "SMCR"), ("server", "server", "SMCR")}
    assert all(c["bytes_written"] >= 6000 for c in s["conns"])


def test_malformed_input_to_the_recorder_is_counted_and_recording_goes_on(tmp_path):
    """Frames and events can come from another process's control socket: a bad one is
    dropped, counted and named, and what follows is still written."""
    from dissectors.recorder import Frame, Recorder

    path = tmp_path / "bad.pcapng"
    rec = Recorder(str(path))
    rec.on_frame(Frame("tx", 1, "not-an-address", 4791, "10.0.0.2", 4791, b"\x04" + bytes(20)))
    rec.on_event(Event(1.0, "conn.open", "h", conn=1, fields={"role": "client", "local": "10.0.0.1:notaport", "peer": "10.0.0.2:5000"}))
    rec.on_event(Event(2.0, "conn.state", "h", conn=1, fields={"old": "INIT", "new": "ACTIVE"}))
    rec.on_event(Event(3.0, "conn.state", "h", conn=1, fields={"t": 1}))  # a reserved field name: cannot be a record
    rec.on_event(Event(4.0, "conn.state", "h", conn=1, fields={"old": "ACTIVE", "new": "CLOSED"}))
    stats = rec.close()
    assert (stats.dropped_frames, stats.dropped_events) == (1, 1) and "reserved" in stats.last_error
    back = list(read_events(path))
    assert [e.kind for e in back if e.kind != "events.dropped"] == ["conn.open", "conn.state", "conn.state"]  # the bad conn.open is kept
    drops = [e for e in back if e.kind == "events.dropped"]
    assert sum(e.get("count") for e in drops) == 1 and sum(e.get("frames") for e in drops) == 1
    assert drops[0].get("last_error")


def test_rdma_write_frames_are_recorded_with_a_snap_length(recorded, tmp_path):
    """The recorder keeps each RDMA WRITE frame's headers and first 128 bytes, as a capture
    with a snap length (the block says its length on the wire); LLC and CDC SENDs and ACKs
    whole. Summaries count the bytes the same either way."""
    from dissectors.recorder import WRITE_SNAP
    from stack.wire import roce

    path, events, _ = recorded
    writes = sends = 0
    for p in read_packets(path.read_bytes()):
        if p.linktype != LINKTYPE_ETHERNET or len(p.data) < 42 or p.data[23] != 17:
            continue
        udp_len = struct.unpack_from("!H", p.data, 38)[0] - 8
        opcode = p.data[42]
        assert p.original_length == 42 + udp_len
        if opcode in range(0x06, 0x0C) and udp_len > WRITE_SNAP:
            writes += 1
            assert len(p.data) == 42 + WRITE_SNAP
            reth = roce.decode_packet(p.data[42:], pad_cut=True).reth
            assert reth is None or reth.dma_len > 0
        else:
            sends += opcode in (roce.Opcode.SEND_ONLY, roce.Opcode.SEND_FIRST)
            assert len(p.data) == p.original_length
            assert roce.decode_frame(p.data, check_icrc=True).icrc_ok
    assert writes and sends
    derived = summarize(read_events(path)).to_dict()
    assert sorted(c["bytes_written"] for c in derived["conns"]) == sorted(c["bytes_written"] for c in summarize(events).to_dict()["conns"])


def _conn_lgr(events) -> dict[tuple[str, int], str]:
    return {(e.host, e.conn): e.lgr for e in events if e.kind == "conn.mode" and e.get("mode") == "SMCR"}


def test_a_kernel_capture_keeps_each_qp_with_its_own_hosts_link_group():
    """Two kernels number their QPs alike (both from 0x11); the lab's capture has a link
    group each way, each with a QP 0x11 and 0x12 on different hosts. A QP was looked up by its
    number alone, so lgr1's LLC messages (DELETE RKEY, the DELETE LINK of its link 2) went to
    lgr2, a group that had ended and never had a link 2."""
    events = list(read_events(KERNEL_CAPTURE))
    lgr_of = _conn_lgr(events)
    assert len(set(lgr_of.values())) == 2
    for e in events:
        if e.kind == "cdc.msg" and e.conn is not None:
            assert e.lgr == lgr_of[(e.host, e.conn)], e
    ended = {e.lgr: e.t for e in events if e.kind == "link.event" and e.get("event") == "deleted" and e.get("all")}
    assert ended  # a group deleted with all its links, early in the capture
    late = [e for e in events if e.kind in ("llc.msg", "link.event") and e.lgr in ended and e.t > ended[e.lgr] + 0.1]
    assert not late, late[:3]  # nothing of a group after it ended (its DELETE LINK response comes at once)
    lost = [e for e in events if e.kind == "link.event" and e.get("reason") == 0x00010000]  # LOST_PATH: lgr1's second link
    assert len(lost) == 1 and lost[0].t < ended.get(lost[0].lgr, float("inf"))  # in a group that was still there


VLAN_CAPTURE = KERNEL_CAPTURE.with_name("kernel_vlans_smcr.pcap")


def test_first_contact_makes_a_new_link_group_between_the_same_hosts():
    """tcpdump of two kernels with connections on VLAN 100, VLAN 200 and untagged (the lab's
    VLAN test; the RDMA WRITE middle frames taken out to keep the file small): one link group
    per VLAN, for each Confirm with first contact starts one; they were all one group,
    keyed by the two hosts' peer ids."""
    events = list(read_events(VLAN_CAPTURE))
    lgr_of = _conn_lgr(events)
    groups = {}
    for (host, _), lgr in lgr_of.items():
        groups.setdefault(lgr, set()).add(host.rsplit(".", 1)[0])  # the subnet: untagged 10.2.0, VLAN 100 10.3.100, VLAN 200 10.3.200
    assert sorted(map(sorted, groups.values())) == [["10.2.0"], ["10.3.100"], ["10.3.200"]], groups
    first = [e for e in events if e.kind == "clc.msg" and "Confirm" in str(e.get("type")) and e.get("first_contact")]
    assert len(first) == 3


def _segment(t: float, src: tuple[str, int], dst: tuple[str, int], seq: int, flags: int, payload: bytes = b"", options: bytes = b""):
    from dissectors.pcapng import Packet
    from stack.wire.inet import Tcp, ipv4_tcp_frame

    frame = ipv4_tcp_frame(
        b"\2" * 6, b"\4" * 6, ipaddress.IPv4Address(src[0]), ipaddress.IPv4Address(dst[0]), Tcp(src[1], dst[1], seq, 1, flags, options=options), payload
    )
    return Packet(0, LINKTYPE_ETHERNET, int(t * 1e9), frame, len(frame))


def test_a_captured_decline_gives_each_end_its_own_view():
    """A capture of a Decline said the decliner's reason at both ends; the kernel and the
    stack keep PEERDECL with the peer's diagnosis at the end that received it."""
    from dissectors.derive import derive_events
    from stack.wire import clc

    cli, srv = ("10.9.0.1", 40000), ("10.9.0.2", 5000)
    smc_opt = bytes.fromhex("fe06e2d4c3d9") + b"\x01\x01"  # the SMC experimental option, padded with NOPs
    decline = clc.Decline(peer_id=bytes(8), diagnosis=0x03030000).encode()  # NOSMCDEV, from the server
    packets = [
        _segment(1.0, cli, srv, 100, 0x02, options=smc_opt),  # SYN
        _segment(1.001, srv, cli, 500, 0x12, options=smc_opt),  # SYN-ACK
        _segment(1.003, srv, cli, 501, 0x18, decline),  # the server declines at once (as a kernel without a device does)
    ]
    events = list(derive_events(packets))
    fb = {e.host: e.fields for e in events if e.kind == "conn.fallback"}
    assert fb["10.9.0.2"]["reason"] == 0x03030000 and "peer_diagnosis" not in fb["10.9.0.2"]
    assert fb["10.9.0.1"]["reason"] == 0x05000000 and fb["10.9.0.1"]["peer_diagnosis"] == 0x03030000
    assert fb["10.9.0.1"]["declined_by"] == fb["10.9.0.2"]["declined_by"] == "10.9.0.2"
    s = summarize(events)
    assert dict(s.fallbacks) == {0x03030000: 1, 0x05000000: 1}


def test_a_capture_without_roce_frames_says_its_bytes_are_unknown():
    """tcpdump on a host with a hardware RNIC sees the CLC over TCP and none of the RDMA
    traffic: summary said "Moved: 0 bytes" and 0 for every SMC-R connection."""
    from dissectors.derive import derive_events, ip_header, ip_payload
    from dissectors.pcap import read_pcap
    from dissectors.summary import render

    tcp_only = [p for p in read_pcap(KERNEL_CAPTURE.read_bytes()) if ip_header(ip_payload(p), False)[2] == 6]
    s = summarize(derive_events(tcp_only))
    d = s.to_dict()
    assert d["connections"]["modes"] == {"SMCR": 4} and d["connections"]["ends"] == 8 and d["moved"] is None
    text = render(s)
    assert "Moved: unknown: the trace has SMC-R connections but no RoCEv2 frames" in text
    assert d["conns"] and all(line.split()[-4:-2] == ["?", "?"] for line in text.splitlines() if " SMCR " in line)
    assert summarize(read_events(KERNEL_CAPTURE)).to_dict()["moved"] == 65_604  # with the frames it is known


def test_roles_come_from_the_clc_when_the_capture_missed_the_syn_and_the_proposal():
    """A capture begun after a connection's SYN and Proposal: its first segment (the server's
    Accept) made the server the client; an Accept comes from the server, a Confirm from the
    client. A port probe whose RST is first in the file is no connection either way."""
    from dissectors.derive import derive_events, ip_header, ip_payload
    from dissectors.pcap import read_pcap
    from stack.wire.inet import decode_tcp

    keep, proposals = [], 0
    for p in read_pcap(KERNEL_CAPTURE.read_bytes()):
        ip = ip_payload(p)
        src, dst, proto, off, end = ip_header(ip, False)
        if proto == 6:
            tcp, poff = decode_tcp(ip, off)
            if tcp.flags & 0x02 or poff == end:  # SYN, SYN-ACK and bare ACKs: not captured
                continue
            if ip[poff:end][:4] == b"\xe2\xd4\xc3\xd9" and ip[poff + 4] == 1:  # a CLC Proposal: not captured
                proposals += 1
                continue
        keep.append(p)
    assert proposals == 4
    roles = {(e.get("role"), e.get("local"), e.get("peer")) for e in derive_events(keep) if e.kind == "conn.open"}
    whole = {(e.get("role"), e.get("local"), e.get("peer")) for e in read_events(KERNEL_CAPTURE) if e.kind == "conn.open"}
    assert roles == whole and len(roles) == 8  # (numbered in another order: by their first CLC message now)


def _kernel_packets():
    """The kernel capture's packets, each with its TCP header and payload when it has them."""
    from dissectors.derive import ip_header, ip_payload
    from dissectors.pcap import read_pcap
    from stack.wire.inet import decode_tcp

    out = []
    for p in read_pcap(KERNEL_CAPTURE.read_bytes()):
        ip = ip_payload(p)
        src, dst, proto, off, end = ip_header(ip, False)
        tcp, payload = None, b""
        if proto == 6:
            tcp, poff = decode_tcp(ip, off)
            payload = ip[poff:end]
        out.append((p, src, dst, tcp, payload))
    return out


def _tcp_packet(like, src: str, dst: str, tcp, payload: bytes, ns: int):
    from dissectors.pcapng import Packet
    from stack.wire.inet import ipv4_tcp_frame

    frame = ipv4_tcp_frame(like.data[6:12], like.data[:6], ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), replace(tcp, checksum=0), payload)
    return Packet(0, LINKTYPE_ETHERNET, ns, frame, len(frame))


CLC_EYECATCHER = b"\xe2\xd4\xc3\xd9"


def replace_seq(tcp, seq: int):
    return replace(tcp, seq=seq & 0xFFFFFFFF)


def test_clc_split_into_segments_that_arrive_out_of_order_is_read():
    """A busy host's capture can hold a message's second segment before its first. The CLC
    behind the gap was lost without a word: the whole session showed 8 connections of mode ?."""
    from dissectors.derive import derive_events
    from dissectors.summary import summarize as _summarize

    packets = []
    for p, src, dst, tcp, payload in _kernel_packets():
        if tcp is not None and payload.startswith(CLC_EYECATCHER):
            half = len(payload) // 2
            second = _tcp_packet(p, src, dst, replace_seq(tcp, tcp.seq + half), payload[half:], p.timestamp_ns)
            first = _tcp_packet(p, src, dst, tcp, payload[:half], p.timestamp_ns + 1)
            packets += [second, first]  # the second half captured first
        else:
            packets.append(p)
    s = _summarize(derive_events(packets)).to_dict()
    assert s["connections"] == {"total": 4, "ends": 8, "modes": {"SMCR": 4}} and s["moved"] == 65_604
    assert s["kinds"]["clc.msg"] == 12 and "trace.note" not in s["kinds"]


def test_clc_the_capture_cut_or_missed_is_named_not_lost_silently():
    """A snap length that kept 200 bytes of each frame cut most CLC messages, and a segment
    the capture dropped (the Accept) left a gap: both were passed over without a word."""
    from dissectors.derive import derive_events
    from dissectors.pcapng import Packet

    cut = [Packet(p.interface, p.linktype, p.timestamp_ns, p.data[:200], len(p.data)) for p, *_ in _kernel_packets()]
    notes = [e.get("error") for e in derive_events(cut) if e.kind == "trace.note"]
    assert any("cut by the capture's snap length" in n for n in notes), notes
    accepts = [i for i, (p, src, dst, tcp, payload) in enumerate(_kernel_packets()) if payload.startswith(CLC_EYECATCHER) and payload[4] == 2]
    dropped = [p for i, (p, *_) in enumerate(_kernel_packets()) if i != accepts[0]]
    notes = [e.get("error") for e in derive_events(dropped) if e.kind == "trace.note"]
    assert len(notes) == 1 and "CLC Accept of the connection" in notes[0] and "was not captured" in notes[0], notes


def test_a_four_tuple_used_again_is_a_new_connection():
    """The same session an hour later from the same ports, with new ISNs (a client that binds
    its port): it was taken for the first one, half the connections and CLC messages missing
    and their bytes given to the old rows."""
    from dissectors.derive import derive_events

    hour = 3600 * 10**9
    first = [p for p, *_ in _kernel_packets()]
    again = []
    for p, src, dst, tcp, payload in _kernel_packets():
        if tcp is None:
            again.append(type(p)(p.interface, p.linktype, p.timestamp_ns + hour, p.data, p.original_length))
        else:
            moved = replace_seq(tcp, tcp.seq + 0x10000000)
            moved = replace(moved, ack=(tcp.ack + 0x10000000) & 0xFFFFFFFF if tcp.flags & 0x10 else tcp.ack)
            again.append(_tcp_packet(p, src, dst, moved, payload, p.timestamp_ns + hour))
    events = list(derive_events(first + again))
    opens = [e for e in events if e.kind == "conn.open"]
    assert len(opens) == 16 and len({e.conn for e in opens}) == 8  # four connections a session, each opened at both ends
    assert sum(1 for e in events if e.kind == "clc.msg") == 24
    assert summarize(events).to_dict()["connections"] == {"total": 8, "ends": 16, "modes": {"SMCR": 8}}


def test_what_the_capturing_host_dropped_is_counted_and_named():
    """dumpcap ends a pcapng with interface statistics: packets the interface and the OS
    dropped. They were passed over, so an incomplete capture read as a complete one."""
    import io

    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    for p, *_ in _kernel_packets():
        w.write_packet(0, p.timestamp_ns, p.data)

    def opt(code: int, value: bytes) -> bytes:
        return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)

    body = struct.pack("<III", 0, 0, 0) + opt(5, struct.pack("<Q", 42)) + opt(7, struct.pack("<Q", 7)) + opt(0, b"")
    isb = struct.pack("<II", 5, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    s = summarize(read_events(buf.getvalue() + isb)).to_dict()
    assert s["dropped"]["frames"] == 49 and s["connections"]["total"] == 4 and s["connections"]["ends"] == 8
    (by,) = s["dropped"]["by"]
    assert by["by"] == "the capture (interface 0 eth0)" and by["frames"] == 49 and "42 by the interface, 7 by the OS" in by["why"]
