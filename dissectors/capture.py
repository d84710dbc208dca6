"""Read a capture into the event model: ``read_events(path)``.

* A file smc-trace recorded carries the events themselves (exported-PDU records): those
  are returned, exactly as the stack emitted them.
* Any other pcap or pcapng (a capture of a real host: CLC over TCP, Soft-RoCE frames)
  is decoded frame by frame into the same kinds of events (dissectors.derive).
* A JSONL file of events (``smc-trace export --jsonl``) is read back too.

Damage raises :class:`CaptureError` naming the block (or record) and byte offset, after
the events read before it were yielded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from stack.events import Event, read_jsonl

from .derive import derive_events
from .pcap import CaptureError, read_capture
from .pcapng import LINKTYPE_WIRESHARK_UPPER_PDU, Packet
from .records import RecordError, decode_record, is_event_record

__all__ = ["CaptureError", "read_events", "read_packets_and_error", "has_event_records"]


def _load(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise CaptureError(f"cannot read {source}: {e.strerror or e}") from None


def read_packets_and_error(data: bytes) -> tuple[list[Packet], CaptureError | None]:
    packets: list[Packet] = []
    try:
        for p in read_capture(data):
            packets.append(p)
    except CaptureError as e:
        return packets, e
    return packets, None


def has_event_records(packets: list[Packet]) -> bool:
    return any(p.linktype == LINKTYPE_WIRESHARK_UPPER_PDU and is_event_record(p.data) for p in packets)


def read_events(source: str | Path | bytes) -> Iterator[Event]:
    data = _load(source)
    if data[:1] == b"{":
        try:
            yield from read_jsonl(data.decode("utf-8").splitlines())
        except (UnicodeDecodeError, ValueError) as e:
            raise CaptureError(f"JSONL events: {e}") from None
        return
    packets, error = read_packets_and_error(data)
    if has_event_records(packets):
        for p in packets:
            if p.linktype == LINKTYPE_WIRESHARK_UPPER_PDU and is_event_record(p.data):
                try:
                    yield decode_record(p.data)
                except RecordError as e:
                    raise CaptureError(f"pcapng block {p.block} at byte offset {p.offset}: {e}") from None
    else:
        yield from derive_events(packets)
    if error is not None:
        raise error
