"""The recorder: events and RoCE frames into one pcapng timeline that Wireshark opens.

* RoCEv2 frames (LLC, CDC, RDMA WRITE, ACKs) as the soft devices sent them, in
  Ethernet/IPv4/UDP with the ICRC they carried (interface 0);
* CLC messages as TCP payload of their connection (a TCP flow with SYN, SYN-ACK and
  sequence numbers that follow the bytes), on interface 0 too;
* every event as an exported-PDU record of its canonical JSON (interface 1), which
  Wireshark's ``json`` dissector shows without a plugin;
* a comment on the frame whose arrival caused a state change, a fallback or a link event
  (``frame.comment`` in Wireshark), and on the event record itself.

It never blocks the stack: ``on_event`` and ``on_frame`` (called on the event loop and on
the device threads) only append to a bounded queue, a writer thread does the rest. What
does not fit is counted and written as an ``events.dropped`` record, never silent.

The writer thread holds the interpreter lock as little as it can: each batch is turned
into pcapng blocks by the spool (native/eventenc.c, or its twin dissectors/spool.py),
which encodes events and frames in C and sorts, merges and builds the blocks with the
lock released; only what needs a TCP flow or a comment runs Python here.

When both ends of a connection are recorded (two hosts in one process), each frame and
each CLC message is written once, as its sender sent it.
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO

from stack.events import Event, note_encoder_once, render
from stack.verbs.api import FrameRecord
from stack.verbs.taprec import count_raw

from .pcapng import LINKTYPE_ETHERNET, LINKTYPE_WIRESHARK_UPPER_PDU, PcapngWriter
from .records import HEADER, encode_record, field_bytes
from .spool import SEQ_STEP, Spool, frame_header, make_spool, send_key
from .tcpflow import Endpoint, TcpFlow

MESSAGE_KINDS = ("clc.msg", "llc.msg", "cdc.msg")
# RDMA WRITE frames are recorded with their headers and the first bytes of the data, as a
# capture with a snap length (the pcapng block keeps their length on the wire); every other
# frame (LLC, CDC, ACKs) whole. 0 records every frame whole.
WRITE_SNAP = 128
# Events worth a comment on the frame that caused them.
NOTABLE = {"conn.state", "conn.fallback", "conn.mode", "conn.error", "link.state", "lgr.state", "link.event"}
# Events the recorder's Python sees (TCP flows, comments); the spool does the others.
SPECIAL = frozenset({"conn.open", "clc.msg", *NOTABLE})
# What a malformed input (another process's control socket) can raise while converted.
MALFORMED = (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError, struct.error)


# A frame as the control socket streams it: the soft device's FrameRecord, one record for
# both (stack/verbs/api.py)
Frame = FrameRecord


@dataclass
class RecorderStats:
    events: int = 0
    frames: int = 0
    clc_frames: int = 0
    dropped_events: int = 0
    dropped_frames: int = 0
    written: int = 0
    last_error: str = ""  # why the last malformed item was dropped
    encoder: str = ""  # "compiled" (native/eventenc.c) or "python"
    # what the sources lost before it reached the recorder (a stack's queues, a stream cut short),
    # recorded as those sources' events.dropped events, not counted in dropped_events/frames
    source_dropped_events: int = 0
    source_dropped_frames: int = 0
    source_notes: list = field(default_factory=list)


def _flow_mac(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The MAC a TCP flow's frames carry: the soft devices' rule, from the IPv4 address (or
    the last four bytes of an IPv6 one)."""
    return b"\x02\x00" + ip.packed[-4:]


class _Flow:
    def __init__(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        self.client, self.server = client, server
        ends = [ipaddress.ip_address(ip.strip("[]")) for ip in (client[0], server[0])]
        self.tcp = TcpFlow(Endpoint(ends[0], client[1], _flow_mac(ends[0])), Endpoint(ends[1], server[1], _flow_mac(ends[1])))
        self.recorded_ends: set[tuple[str, int]] = set()
        self.fin_sent: set[bool] = set()


def snapshot_event(t: float, snapshot: dict) -> Event:
    """What a stack already had when the recording started (connections, link groups), so a
    capture begun mid-session still names every connection it shows."""
    return Event(t, "stats", snapshot.get("host", ""), fields={"cause": "recording started", "snapshot": snapshot})


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Recorder:
    """Record to ``out`` (a path or a binary file). ``attach(stack)`` for an in-process stack;
    ``on_event``/``on_frame`` for any other source. ``close()`` writes what is left."""

    def __init__(self, out: str | BinaryIO, *, max_pending: int = 200_000, hold: float = 0.2, interval: float = 0.05,
                 native: bool | None = None, clock_offset_ns: int | None = None, write_snap: int = WRITE_SNAP) -> None:  # fmt: skip
        """``native``: None uses the compiled spool when it is built, False the Python twin,
        True requires the compiled one. ``clock_offset_ns`` (wall minus monotonic) is
        measured now unless given (tests give it to compare outputs)."""
        # a file of our own is unbuffered: the spool writes blocks to its descriptor itself
        self._file = open(out, "wb", buffering=0) if isinstance(out, str) else out
        self._own_file = isinstance(out, str)
        self._writer = PcapngWriter(self._file, application="smc-trace (smctop)")
        self._if_frames = self._writer.add_interface(LINKTYPE_ETHERNET, "smc")
        self._if_events = self._writer.add_interface(LINKTYPE_WIRESHARK_UPPER_PDU, "smctop events")
        self.max_pending = max_pending
        self.write_snap = write_snap  # bytes of each RDMA WRITE frame kept (0: whole frames)
        self.hold_ns = int(hold * 1e9)
        self.interval = interval
        self.stats = RecorderStats()
        self.local_addrs: set[str] = set()  # devices whose tx frames we get: their peers' rx copies are skipped
        self._offset_ns = time.time_ns() - time.monotonic_ns() if clock_offset_ns is None else clock_offset_ns  # event t -> wall
        self._in: deque = deque()
        self._spool, self._drain = make_spool(native, HEADER, self._if_frames, self._if_events, self._offset_ns, SPECIAL,
                                              frozenset(MESSAGE_KINDS))  # fmt: skip
        self.stats.encoder = "python" if isinstance(self._spool, Spool) else "compiled"
        if native is None:
            note_encoder_once()
        self._flows: dict[frozenset, _Flow] = {}
        self._conn_flow: dict[tuple[str, int], _Flow] = {}  # (host, conn) -> its TCP flow
        self._conn_end: dict[tuple[str, int], tuple[str, int]] = {}  # (host, conn) -> its own end
        self._last_rx: dict = {}  # host -> its last received message event (what a notable event's frame is)
        self._reported_drops = (0, 0)
        self._stacks: list = []
        self._headers: dict[tuple, bytes] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="smc-trace recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ sources (any thread, never block)

    def on_event(self, event: Event) -> None:
        if len(self._in) >= self.max_pending:
            self.stats.dropped_events += 1
        else:
            self._in.append(event)

    def on_frame(self, frame) -> None:
        if len(self._in) >= self.max_pending:
            self.stats.dropped_frames += 1
        else:
            self._in.append(frame)

    def on_frames(self, frames: list | bytes) -> None:
        """A batch of frames from a device's tap (what fits; the rest is counted as dropped),
        or the compiled engine's raw records (bytes) for the spool to take in C."""
        if type(frames) is bytes:
            if len(self._in) >= self.max_pending:
                self.stats.dropped_frames += count_raw(frames)
            else:
                self._in.append(frames)
            return
        room = self.max_pending - len(self._in)
        if room >= len(frames):
            self._in.extend(frames)
        else:
            self._in.extend(frames[: max(room, 0)])
            self.stats.dropped_frames += len(frames) - max(room, 0)

    def attach(self, stack) -> Event:
        """Record an in-process stack (stack.runtime.Stack): its bus and its soft devices' frames.
        Returns the first record: the stack's state as the recording starts."""
        start = snapshot_event(stack.now(), stack.snapshot())
        self.on_event(start)
        stack.bus.listen(self.on_event)
        self.local_addrs.update(stack.add_frame_tap(self.on_frames, batch=True, write_snap=self.write_snap, raw=True))
        self._stacks.append(stack)
        return start

    def close(self) -> RecorderStats:
        for stack in self._stacks:
            stack.bus.unlisten(self.on_event)
            if stack.rdma is not None:
                stack.remove_frame_tap(self.on_frames)
        self._stacks.clear()
        self._stop.set()
        self._thread.join()
        self._pump(final=True)
        self._writer.flush()
        if self._own_file:
            self._file.close()
        return self.stats

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._pump(final=False)

    def _pump(self, final: bool) -> None:
        with self._lock:
            items = self._drain(self._in)
            if items:
                events, frames, specials = self._spool.ingest(items, self.local_addrs, self._last_rx)
                self.stats.events += events
                self.stats.frames += frames
                for special in specials:
                    self._special(*special)
            self._note_drops()
            limit = None if final else time.time_ns() - self.hold_ns
            if self._own_file:  # straight from the frames' bytes to the file, without the interpreter lock
                self.stats.written += self._spool.write(self._file.fileno(), limit)
            else:
                blocks, count = self._spool.take(limit)
                if count:
                    self._writer.write_blocks(blocks)
                    self.stats.written += count
                    self._writer.flush()

    def _special(self, seq: int, item, ts: int | None, record: bytes | None, cause: Event | None) -> None:
        """An item the spool left to Python. A malformed one (e.g. from a remote stack's
        control socket) is counted as dropped and named in stats.last_error; it never
        stops the writer thread."""
        try:
            if not isinstance(item, Event):
                self._frame(item, seq)
            elif record is None:
                self._event(item, seq, None, None, None)
            else:
                self._event(item, seq, ts, record, cause)
        except MALFORMED as e:
            if isinstance(item, Event):
                self.stats.dropped_events += 1
            else:
                self.stats.dropped_frames += 1
            self.stats.last_error = f"{type(e).__name__}: {e}"

    def _note_drops(self) -> None:
        now = (self.stats.dropped_events, self.stats.dropped_frames)
        if now != self._reported_drops:
            ev, fr = now[0] - self._reported_drops[0], now[1] - self._reported_drops[1]
            self._reported_drops = now
            e = Event((time.time_ns() - self._offset_ns) / 1e9, "events.dropped", "smc-trace",
                      fields={"count": ev, "frames": fr, "by": "recorder", "total_events": now[0], "total_frames": now[1],
                              "last_error": self.stats.last_error})  # fmt: skip
            self._spool.add(self._spool.next_seq(), time.time_ns(), self._if_events, encode_record(e),
                            [f"smc-trace dropped {ev} events and {fr} frames: "
                             + (f"malformed ({self.stats.last_error})" if self.stats.last_error else "its queue was full")])  # fmt: skip

    # ------------------------------------------------------------------ frames

    def _frame(self, f, seq: int) -> None:
        """A frame the spool did not take (dropped by a fault, or unusual)."""
        if f.direction == "rx" and f.src in self.local_addrs and not f.dropped:
            return  # we have the sender's copy
        head = self._frame_header(f.src, f.dst, f.sport, f.dport, len(f.payload))
        data = head + f.payload
        comments = [f"dropped ({f.direction} at {f.src if f.direction == 'tx' else f.dst}): {f.dropped}"] if f.dropped else []
        key_off, _ = send_key(bytes(f.payload)) if not f.dropped else (-1, 0)
        self._spool.add(seq, f.timestamp_ns, self._if_frames, data, comments, len(head) + key_off if key_off >= 0 else -1)
        self.stats.frames += 1

    def _frame_header(self, src: str, dst: str, sport: int, dport: int, length: int) -> bytes:
        key = (src, dst, sport, dport, length)
        head = self._headers.get(key)
        if head is None:  # Ethernet/IPv4/UDP depend only on the addresses and the length: build once
            if len(self._headers) > 4096:
                self._headers.clear()
            head = self._headers[key] = frame_header(src, dst, sport, dport, length)
        return head

    # ------------------------------------------------------------------ events

    def _event(self, e: Event, seq: int, ts: int | None, record: bytes | None, cause: Event | None) -> None:
        """An event that needs Python: a TCP flow (conn.open, clc.msg), a comment (NOTABLE),
        or anything the spool could not take (``record`` None: all is done here)."""
        slow = record is None
        if slow:
            ts = int(e.t * 1e9) + self._offset_ns
            record = encode_record(e)  # an event that cannot be serialised is dropped (see _special)
        derived = iter(range(seq - SEQ_STEP + 1, seq))  # the seqs of the segments it gives rise to
        comments = []
        try:
            if e.kind == "conn.open":
                self._open_flow(e, ts, derived)
            elif e.kind == "clc.msg":
                self._clc(e, ts, derived)
        except (ValueError, TypeError, KeyError) as err:  # the event is kept; only its TCP segment is missing
            self.stats.last_error = f"{type(err).__name__}: {err}"
            comments.append(f"smc-trace could not put this in a TCP flow: {self.stats.last_error}")
        if e.kind in MESSAGE_KINDS and e.get("dir") == "rx":
            if slow:
                self._last_rx[e.host] = e
        elif e.kind in NOTABLE:
            if slow:
                cause = self._last_rx.get(e.host)
            text = f"{e.host}: {render(e)}"
            comments.append(text)
            if cause is not None and cause.t == e.t:
                target = self._spool.find(field_bytes(cause.get("raw")))
                if target >= 0:
                    self._spool.comment(target, text)
            if e.kind == "conn.state" and e.get("new") == "CLOSED":
                self._fin(e, ts, derived)
        self._spool.add(seq, ts, self._if_events, record, comments)
        self.stats.events += 1

    def _open_flow(self, e: Event, ts: int, seqs) -> None:
        local, peer = _endpoint(e.get("local", ":0")), _endpoint(e.get("peer", ":0"))
        if not local[0] or not peer[0]:
            return
        client, server = (local, peer) if e.get("role") == "client" else (peer, local)
        key = frozenset((client, server))
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow(client, server)
            for data in flow.tcp.handshake():
                self._spool.add(next(seqs), ts, self._if_frames, data)
        flow.recorded_ends.add(local)
        self._conn_flow[(e.host, e.conn)] = flow
        self._conn_end[(e.host, e.conn)] = local

    def _clc(self, e: Event, ts: int, seqs) -> None:
        flow = self._conn_flow.get((e.host, e.conn))
        if flow is None:
            return
        own_end = self._conn_end[(e.host, e.conn)]
        if e.get("dir") == "tx":
            sender = own_end
        elif len(flow.recorded_ends) > 1:
            return  # the sender is recorded too: its tx event wrote the segment
        else:
            sender = flow.server if own_end == flow.client else flow.client
        raw = field_bytes(e.get("raw"))
        data = flow.tcp.data(sender == flow.client, raw)
        self._spool.add(next(seqs), ts, self._if_frames, data, None, len(data) - len(raw))
        self.stats.clc_frames += 1

    def _fin(self, e: Event, ts: int, seqs) -> None:
        flow = self._conn_flow.get((e.host, e.conn))
        if flow is None:
            return
        from_client = self._conn_end[(e.host, e.conn)] == flow.client
        if from_client not in flow.fin_sent:
            flow.fin_sent.add(from_client)
            self._spool.add(next(seqs), ts, self._if_frames, flow.tcp.fin(from_client))
