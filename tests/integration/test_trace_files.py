"""smc-trace files: captures we did not write (pcapng rewritten by tshark, classic pcap of
either byte order) decode into the same event model; damage gets an error naming the
block and offset, with what came before kept; the recorder counts what it drops."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from support import tshark
from support.traces import DIFFPREFIX, record_session

from dissectors.capture import CaptureError, read_events
from dissectors.derive import PEERNOSMC
from dissectors.pcapng import LINKTYPE_ETHERNET, PcapngWriter, read_packets
from dissectors.records import RecordError, decode_record, encode_record
from dissectors.summary import summarize
from dissectors.tcpflow import Endpoint, TcpFlow
from stack.events import Event, to_json


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "run.pcapng"
    events, stats = record_session(path, fallback=True)
    return path, events, stats


def frames_only_pcap(src, dst, order: str = "<", nanos: bool = False) -> None:
    """A classic pcap of the Ethernet frames of ``src`` (what tcpdump on the wire would keep)."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET)]
    for p in read_packets(src.read_bytes()):
        if p.linktype == LINKTYPE_ETHERNET:
            sec, rest = divmod(p.timestamp_ns, 1_000_000_000)
            out.append(struct.pack(order + "IIII", sec, rest if nanos else rest // 1000, len(p.data), p.original_length) + p.data)
    dst.write_bytes(b"".join(out))


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
    assert derived["connections"] == ours["connections"] == {"total": 6, "modes": {"SMCR": 4, "TCP": 2}}
    assert [f["reason"] for f in derived["fallbacks"]] == [DIFFPREFIX]
    assert sorted(c["bytes_written"] for c in derived["conns"]) == sorted(c["bytes_written"] for c in ours["conns"])
    kinds = {e.kind for e in read_events(pcap)}
    assert {"conn.open", "clc.msg", "llc.msg", "cdc.msg", "rdma.write", "conn.mode", "conn.fallback"} <= kinds
    assert "trace.note" not in kinds


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


def test_a_tcp_connection_without_the_smc_option_is_a_peernosmc_fallback():
    import ipaddress

    flow = TcpFlow(Endpoint(ipaddress.IPv4Address("10.0.0.1"), 40000, smc=False), Endpoint(ipaddress.IPv4Address("10.0.0.2"), 80))
    import io

    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface(LINKTYPE_ETHERNET, "eth0")
    for i, frame in enumerate([*flow.handshake(), flow.data(True, b"GET / HTTP/1.0\r\n\r\n"), flow.data(False, b"HTTP/1.0 200 OK\r\n\r\n")]):
        w.write_packet(0, 1_000_000_000 + i, frame)
    s = summarize(read_events(buf.getvalue())).to_dict()
    assert s["connections"]["modes"] == {"TCP": 2}
    assert [f["reason"] for f in s["fallbacks"]] == [PEERNOSMC]


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
    assert s["connections"] == {"total": 8, "modes": {"SMCR": 8}}
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
