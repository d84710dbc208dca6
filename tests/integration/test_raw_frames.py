"""Frames over the control socket as raw batches (``"frames": "raw"``): the compiled
engine's tap records go as ``frames.raw`` + bytes instead of a JSON line per frame, which
is what lets ``smc-trace record --attach`` keep up with bulk. The batches carry exactly
the frames the JSON lines carry, and a recorder given a bad batch names the loss."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support.fakestack import FakeStack
from support.stacks import ROOT, addrs, config, run

from dissectors.capture import read_events
from dissectors.pcapng import LINKTYPE_WIRESHARK_UPPER_PDU, read_packets
from stack.runtime import Stack
from stack.runtime.control import ControlClient
from stack.traffic import runner
from stack.verbs.soft.native import parse_raw
from stack.verbs.taprec import TAPREC, count_raw

PY = sys.executable
SNAP = 128


def _native_available() -> bool:
    try:
        from native import softroce  # noqa: F401
    except ImportError:
        return False
    return True


async def _subscribe(path: str, frames) -> tuple[ControlClient, asyncio.Task]:
    client = await ControlClient.connect(path)
    msgs = client.messages()
    got: list[dict] = []
    ready = asyncio.get_running_loop().create_future()

    async def collect():
        async for m in msgs:
            if m["type"] == "reply" and m.get("cmd") == "subscribe" and not ready.done():
                ready.set_result(m)
            got.append(m)
        return got

    task = asyncio.create_task(collect())
    await client.send("subscribe", frames=frames, write_snap=SNAP, kinds=["conn.state"])
    reply = await asyncio.wait_for(ready, 10)
    assert reply["ok"] and reply["frames"], reply
    return client, task


def _key(direction, ts, src, sport, dst, dport, payload, length):
    return (direction, ts, src, sport, dst, dport, bytes(payload), length)


@pytest.mark.skipif(not _native_available(), reason="the compiled engine is not built (scripts/setup.sh builds it)")
def test_raw_batches_carry_exactly_the_frames_the_json_lines_carry(tmp_path):
    path = str(tmp_path / "ctl.sock")
    ca, sa = addrs()

    async def main():
        server = Stack(config("server", sa, control=path))
        client = Stack(config("client", ca))
        await server.start()
        await client.start()
        try:
            (_, json_t), (_, raw_t) = await _subscribe(path, True), await _subscribe(path, "raw")
            totals = runner.Totals()
            await server.start_server(lambda r, w: runner.serve(r, w, totals), sa, 5000)
            await runner.bulk(lambda: client.open_connection(sa, 5000), runner.Totals(), direction=runner.UP, total=2 << 20, duration=0, seed=1)
        finally:
            await client.close()
            await server.close()  # the sessions send what they hold, then "end"
        return await asyncio.wait_for(json_t, 30), await asyncio.wait_for(raw_t, 30)

    as_json, as_raw = run(main())
    from_json = [_key(m["frame"]["dir"], m["frame"]["ts"], m["frame"]["src"], m["frame"]["sport"], m["frame"]["dst"],
                      m["frame"]["dport"], bytes.fromhex(m["frame"]["payload"]), m["frame"].get("length"))
                 for m in as_json if m["type"] == "frame"]  # fmt: skip
    batches = [m["data"] for m in as_raw if m["type"] == "frames.raw"]
    assert not any(m["type"] == "frame" for m in as_raw)  # the compiled engine's frames only as batches
    from_raw = [_key(r.direction, r.timestamp_ns, r.src, r.sport, r.dst, r.dport, r.payload, getattr(r, "length", None))
                for b in batches for r in parse_raw(b)]  # fmt: skip
    assert sum(count_raw(b) for b in batches) == len(from_raw)
    assert len(from_json) > 500  # 2 MiB in 4 KiB frames, and their ACKs and CDC messages
    assert sorted(from_raw) == sorted(from_json)
    # RDMA WRITE frames cut to the snap length, with their length on the wire
    cut = [k for k in from_raw if k[7] is not None]
    assert cut and all(len(k[6]) <= SNAP + 40 and k[7] > len(k[6]) for k in cut)
    ends = [m for m in as_raw if m["type"] == "end"]
    assert ends and ends[-1]["frames_dropped"] == 0


HELLO = b'{"type":"hello","host":"fake","protocol":1}\n'


def _bth_send(psn: int) -> bytes:
    """A RoCEv2 UDP payload: BTH (SEND only, QP 0x000011, the PSN), 8 bytes, a 4-byte ICRC."""
    return struct.pack(">BBHII", 0x04, 0x40, 0xFFFF, 0x11, psn & 0xFFFFFF) + b"smctop!!" + bytes(4)


def _rec(payload: bytes, ts: int, size: int | None = None) -> bytes:
    src, dst = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    head = TAPREC.pack(size or TAPREC.size + len(payload), 0, 0, 49152, 4791, src, dst, len(payload), len(payload), ts)
    return head + payload


def _raw_line(blob: bytes, size: int | None = None) -> bytes:
    return b'{"type":"frames.raw","size":%d}\n' % (len(blob) if size is None else size) + blob


def _record(tmp_path, chunks) -> tuple[subprocess.CompletedProcess, Path]:
    sock = tmp_path / "fake.sock"
    FakeStack(sock, chunks)
    out = tmp_path / "fake.pcapng"
    res = subprocess.run([PY, "-m", "dissectors.cli", "record", "-w", str(out), "--attach", str(sock)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert "Traceback" not in res.stderr, res.stderr
    return res, out


def _summary(out: Path) -> dict:
    res = subprocess.run([PY, "-m", "dissectors.cli", "summary", "--json", str(out)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _frames(out: Path) -> list[bytes]:
    return [p.data for p in read_packets(out.read_bytes()) if p.linktype != LINKTYPE_WIRESHARK_UPPER_PDU]


def test_a_raw_batch_is_recorded_frame_by_frame_and_a_damaged_record_is_left_out(tmp_path):
    t0 = 1_700_000_000_000_000_000
    good = [_rec(_bth_send(i), t0 + i * 1000) for i in range(3)]
    damaged = _rec(_bth_send(9), t0 + 5000, size=TAPREC.size + 200)  # claims more bytes than the batch holds
    res, out = _record(tmp_path, [HELLO, _raw_line(b"".join(good)), _raw_line(damaged), b'{"type":"end","events_dropped":0,"frames_dropped":0}\n'])
    assert res.returncode == 0, res.stderr
    frames = _frames(out)
    assert len(frames) == 3
    for i, f in enumerate(frames):  # IPv4 + UDP around the payload as the tap gave it
        assert f.endswith(_bth_send(i)) and f[-len(_bth_send(i)) - 8 : -len(_bth_send(i)) - 6] == (49152).to_bytes(2, "big")


@pytest.mark.parametrize(
    "chunks,why",
    [
        ([HELLO, b'{"type":"frames.raw","size":-5}\n'], "a frames.raw line with a bad size (-5)"),
        ([HELLO, b'{"type":"frames.raw","size":"lots"}\n'], "a frames.raw line with a bad size (lots)"),
        ([HELLO, _raw_line(_rec(_bth_send(1), 1), size=200)[:150]], "ended inside a line"),
    ],
)
def test_a_bad_or_cut_raw_batch_is_named_as_a_loss_of_that_stack(tmp_path, chunks, why):
    res, out = _record(tmp_path, chunks)
    assert res.returncode == 0, res.stderr
    s = _summary(out)
    by = {d["by"]: d for d in s["dropped"]["by"]}
    assert why in by["fake control socket"]["why"], by
    assert list(read_events(out))  # the capture is whole and readable
