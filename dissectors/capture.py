"""Read a capture into the event model: ``read_events(path)``.

* A file smc-trace recorded carries the events themselves (exported-PDU records): those
  are returned, exactly as the stack emitted them.
* Any other pcap or pcapng (a capture of a real host: CLC over TCP, Soft-RoCE frames)
  is decoded frame by frame into the same kinds of events (dissectors.derive).
* A JSONL file of events (``smc-trace export --jsonl``) is read back too: a file that is
  not pcap or pcapng by its magic and starts with text (after a BOM and blank lines).
* Any of these compressed with gzip, zstd or LZ4 (as tshark reads them) is decompressed
  first (dissectors.compressed); a compressed stream cut short is read as far as it goes.

Damage to the container raises :class:`CaptureError` naming the block (or record) and
byte offset, after the events read before it were yielded. Every event record (JSONL line,
exported PDU) is checked against the event schema (stack/events.py): a bad one is counted
and named in ``skipped`` and left out (without ``skipped`` it raises CaptureError). Only
regular files are read (a FIFO is refused without waiting for a writer), and at most
``MAX_FILE`` bytes of them. An error about the file itself (:class:`FileError`) names it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from stack.events import Event, Skipped, from_json

from .compressed import InflateError, inflate
from .compressed import kind as compressed_kind
from .derive import derive_events, observe
from .pcap import PCAP_MAGICS, CaptureError, is_pcapng, read_capture
from .pcapng import LINKTYPE_WIRESHARK_UPPER_PDU, Packet, capture_drops
from .records import RecordError, decode_record, is_event_record
from .roce_analysis import RoceAnalysis
from .timeorder import WallOffset

__all__ = ["CaptureError", "FileError", "read_events", "read_packets_and_error", "has_event_records"]


MAX_FILE = 4 << 30  # bytes: a capture is read whole
EVENT_LINKTYPES = frozenset({LINKTYPE_WIRESHARK_UPPER_PDU})  # where a recording of ours keeps its events


class FileError(CaptureError):
    """The file itself cannot be read or holds nothing: its message names the file."""


BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark some editors put first
TEXT_HEAD = 4096  # bytes of the first line looked at to tell text from a binary file


def _load(source: str | Path | bytes) -> tuple[bytes, str | None, str | None]:
    """The file's bytes, decompressed when it is gzip, zstd or LZ4 (as tshark reads them),
    what was wrong with its compressed stream part way (None: nothing), and which
    compression it had (None: none)."""
    data = _read(source)
    name = str(source) if isinstance(source, (str, Path)) else "the data"
    try:
        return (*inflate(data, name, MAX_FILE), compressed_kind(data))
    except InflateError as e:
        raise FileError(str(e)) from None


def _read(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    try:
        # O_NONBLOCK: a FIFO without a writer would block open() itself; it is refused below
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FileError(f"cannot read {source}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL in the path
        raise FileError(f"cannot read {source!r}: {e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # looked at before fdopen, which refuses a directory with a traceback
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FileError(f"cannot read {source}: {what}")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_FILE:
            raise FileError(f"cannot read {source}: {st.st_size:,} bytes is more than the {MAX_FILE:,} smc-trace reads")
        try:
            return f.read()
        except OSError as e:
            raise FileError(f"cannot read {source}: {e.strerror or e}") from None
        except MemoryError:
            raise FileError(f"cannot read {source}: not enough memory for the whole file") from None


def _text_start(data: bytes) -> int | None:
    """Where the text of a file of text lines starts (after a BOM), or None when it is not
    text: its first non-blank line has bytes no JSONL line has."""
    start = len(BOM) if data.startswith(BOM) else 0
    line, newline, _ = data[start : start + TEXT_HEAD].lstrip().partition(b"\n")
    if line[:1] == b"{":  # a JSON object: JSONL, whatever its first record holds
        return start
    if any(b < 0x20 and b not in b"\t\r" for b in line):
        return None
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        cut = not newline and len(data) > start + TEXT_HEAD  # the line goes on past what was looked at
        if not (cut and e.start >= len(line) - 3):  # only a character cut in two there is still text
            return None
    return start


class _NotJsonl(CaptureError):
    """Text without a single event record: the caller says what the file is not."""


def _bad_line(where: str, error: Exception, skipped: Skipped | None) -> None:
    if skipped is None:
        raise CaptureError(f"JSONL events: {where}: {error}")
    skipped.add(where, error)


def _read_jsonl(text: str, skipped: Skipped | None) -> Iterator[Event]:
    """The events of JSONL text. A bad line is counted in ``skipped`` and named by its line
    number (without ``skipped`` it raises CaptureError). Bad lines before the first good
    one are held back: a text file without a single event record is not JSONL, unless it
    looked like JSONL from its first character (``{``)."""
    held: list[tuple[str, Exception]] = []
    good = False
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = from_json(line)
        except ValueError as e:
            if good:
                _bad_line(f"line {n}", e, skipped)
            else:
                held.append((f"line {n}", e))
            continue
        if not good:
            good = True
            for where, e in held:
                _bad_line(where, e, skipped)
        yield event
    if not good and held:
        if text.lstrip()[:1] != "{":
            where, e = held[0]
            lines = "its only line is not" if len(held) == 1 else f"none of its {len(held)} lines is"
            raise _NotJsonl(f"not JSONL events either: {lines} an event record ({where}: {e})")
        for where, e in held:  # JSONL whose every record is bad: each counted, as anywhere else
            _bad_line(where, e, skipped)


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


def read_events(source: str | Path | bytes, skipped: Skipped | None = None, roce: RoceAnalysis | None = None,
                clock: WallOffset | None = None) -> Iterator[Event]:  # fmt: skip
    """The events of a capture (see the module's doc). ``roce``: an analysis that also sees
    every RoCEv2 frame, for retransmission counts (a frame sent again is never a new event).
    ``clock``: learns the recording's wall-clock offset from its first event record."""
    data, damage, packed = _load(source)
    try:
        yield from _read_data(data, source, skipped, roce, clock)
    except CaptureError as e:
        if packed and str(e).startswith("not a pcap or pcapng file"):  # its bytes were not what the reader saw
            e = CaptureError(f"{packed}-compressed, and what it holds is {e}")
        if damage is None:
            raise e from None
        raise CaptureError(f"{damage}; in what it held, {e}") from None
    if damage is not None:  # a compressed stream cut short or damaged: the events before it, then what was wrong
        raise CaptureError(damage)


def _read_data(data: bytes, source: str | Path | bytes, skipped: Skipped | None, roce: RoceAnalysis | None,
               clock: WallOffset | None) -> Iterator[Event]:  # fmt: skip
    if data[:4] not in PCAP_MAGICS and not is_pcapng(data):
        start = _text_start(data)
        if start is not None:
            text = data[start:].decode("utf-8", "replace")
            if not text.strip():
                name = source if isinstance(source, (str, Path)) else "the data"
                raise FileError(f"{name} holds no events: " + ("it is empty" if not data else "it has only blank lines"))
            try:
                yield from _read_jsonl(text, skipped)
            except _NotJsonl as e:
                raise CaptureError(f"not a pcap or pcapng file: it starts with {data[:4].hex()} at byte offset 0; {e}") from None
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
                    event = decode_record(p.data)
                    if clock is not None and clock.offset is None:
                        clock.offset = p.timestamp_ns / 1e9 - event.t
                    yield event
                except RecordError as e:
                    where = f"pcapng block {p.block} at byte offset {p.offset}"
                    if skipped is None:
                        raise CaptureError(f"{where}: {e}") from None
                    skipped.add(where, e)
    else:
        last = None
        for event in derive_events(packets, roce):
            last = event
            yield event
        yield from _capture_drops(data, packets, last)
    if error is not None:
        raise error


def _capture_drops(data: bytes, packets: list[Packet], last: Event | None) -> Iterator[Event]:
    """What the capturing host dropped (pcapng interface statistics, as dumpcap writes them):
    the capture is incomplete, and summary says by how much."""
    if not is_pcapng(data):
        return
    t = last.t if last is not None else (packets[-1].timestamp_ns / 1e9 if packets else 0.0)
    for d in capture_drops(data):
        where = f"the capture (interface {d.interface}{f' {d.name}' if d.name else ''})"
        why = f"the capturing host dropped them: {d.ifdrop} by the interface, {d.osdrop} by the OS"
        yield Event(t, "events.dropped", "", fields={"count": 0, "frames": d.ifdrop + d.osdrop, "by": where, "last_error": why})
