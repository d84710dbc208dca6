"""Read a capture into the event model: ``read_events(path)``.

* A file smc-trace recorded carries the events themselves (exported-PDU records): those
  are returned, exactly as the stack emitted them.
* Any other pcap or pcapng (a capture of a real host: CLC over TCP, Soft-RoCE frames)
  is decoded frame by frame into the same kinds of events (dissectors.derive).
* A JSONL file of events (``smc-trace export --jsonl``) is read back too.

Damage to the container raises :class:`CaptureError` naming the block (or record) and
byte offset, after the events read before it were yielded. Every event record (JSONL line,
exported PDU) is checked against the event schema (stack/events.py): a bad one is counted
and named in ``skipped`` and left out (without ``skipped`` it raises CaptureError). Only
regular files are read, and at most ``MAX_FILE`` bytes of them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from stack.events import Event, Skipped, read_jsonl

from .derive import derive_events, observe
from .pcap import CaptureError, is_pcapng, read_capture
from .pcapng import LINKTYPE_WIRESHARK_UPPER_PDU, Packet
from .records import RecordError, decode_record, is_event_record
from .roce_analysis import RoceAnalysis

__all__ = ["CaptureError", "read_events", "read_packets_and_error", "has_event_records"]


MAX_FILE = 4 << 30  # bytes: a capture is read whole
EVENT_LINKTYPES = frozenset({LINKTYPE_WIRESHARK_UPPER_PDU})  # where a recording of ours keeps its events


def _load(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    try:
        with open(source, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CaptureError(f"cannot read {source}: not a regular file")
            if st.st_size > MAX_FILE:
                raise CaptureError(f"cannot read {source}: {st.st_size:,} bytes is more than the {MAX_FILE:,} smc-trace reads")
            return f.read()
    except OSError as e:
        raise CaptureError(f"cannot read {source}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL in the path
        raise CaptureError(f"cannot read {source!r}: {e}") from None
    except MemoryError:
        raise CaptureError(f"cannot read {source}: not enough memory for the whole file") from None


def read_packets_and_error(data: bytes, linktypes: frozenset[int] | None = None) -> tuple[list[Packet], CaptureError | None]:
    packets: list[Packet] = []
    try:
        for p in read_capture(data, linktypes):
            packets.append(p)
    except CaptureError as e:
        return packets, e
    return packets, None


def has_event_records(packets: list[Packet]) -> bool:
    return any(p.linktype == LINKTYPE_WIRESHARK_UPPER_PDU and is_event_record(p.data) for p in packets)


def read_events(source: str | Path | bytes, skipped: Skipped | None = None, roce: RoceAnalysis | None = None) -> Iterator[Event]:
    """The events of a capture (see the module's doc). ``roce``: an analysis that also sees
    every RoCEv2 frame, for retransmission counts (a frame sent again is never a new event)."""
    data = _load(source)
    if data[:1] == b"{":
        try:
            yield from read_jsonl(data.decode("utf-8", "replace").splitlines(), skipped)
        except ValueError as e:
            raise CaptureError(f"JSONL events: {e}") from None
        return
    packets, error = None, None
    if roce is None and is_pcapng(data):  # a recording of ours is read for its events: its frames are passed over
        packets, error = read_packets_and_error(data, EVENT_LINKTYPES)
        if not has_event_records(packets):
            packets = None
    if packets is None:
        packets, error = read_packets_and_error(data)
    if has_event_records(packets):
        for n, p in enumerate(packets, 1):
            if roce is not None and p.linktype != LINKTYPE_WIRESHARK_UPPER_PDU:
                observe(roce, p, n)
            if p.linktype == LINKTYPE_WIRESHARK_UPPER_PDU and is_event_record(p.data):
                try:
                    yield decode_record(p.data)
                except RecordError as e:
                    where = f"pcapng block {p.block} at byte offset {p.offset}"
                    if skipped is None:
                        raise CaptureError(f"{where}: {e}") from None
                    skipped.add(where, e)
    else:
        yield from derive_events(packets, roce)
    if error is not None:
        raise error
