"""The recorder's pending timeline: the pure-Python twin of ``Spool`` in native/eventenc.c.

Entries are pcapng enhanced packet blocks to be: a timestamp, a sequence number, an
interface, the data, comments and an optional lookup key (the bytes of an SMC message
inside the data, so that the event a message caused can comment on its frame). They are
written in (timestamp, sequence) order once they are older than the recorder's hold-back.

``ingest`` turns a batch of the recorder's inputs (events and soft-RoCE frames, in the
order they arrived) into entries. What needs the recorder's Python (a TCP flow for CLC, a
comment, a dropped frame, anything malformed) comes back as a *special*
``(seq, item, ts, record, cause)``: ``record`` is the encoded event (None: the recorder
must do everything, and will find the error), ``cause`` the last received message event
of the host when the item arrived. Sequence numbers step by ``SEQ_STEP``; the entries an
item gives rise to (TCP segments) take the numbers just below its own.

Both implementations give the same bytes for the same calls (tests/unit/test_spool.py).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections import deque

from stack.events import Event, _to_json_py, native_encoder
from stack.verbs.taprec import TAPREC
from stack.wire.inet import ipv4_udp_frame

from .pcapng import epb_block

SEQ_STEP = 8
MAX_COMMENT = 65532  # bytes of comment text in one block (an option's length is 16 bits)
FRAME_HDR = 42  # Ethernet + IPv4 + UDP
SEND_OPCODES = (0x00, 0x04, 0x05)  # SEND_FIRST, SEND_ONLY, SEND_ONLY_WITH_IMMEDIATE
_INT64 = (-(1 << 63), (1 << 63) - 1)
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def drain(dq: deque) -> list:
    """Everything in ``dq``, oldest first; items appended meanwhile by another thread stay."""
    return [dq.popleft() for _ in range(len(dq))]


def mac(ip: str) -> bytes:
    return b"\x02\x00" + ipaddress.IPv4Address(ip).packed  # what the soft devices use


def strict_ipv4(text) -> bool:
    """A dotted quad the fast paths take (ipaddress takes these and a few more)."""
    return type(text) is str and _DOTTED.fullmatch(text) is not None


def send_key(payload: bytes) -> tuple[int, int]:
    """(offset, length) of the SEND payload in a RoCEv2 UDP payload, as roce.decode_packet
    cuts it (BTH, ImmDt for SEND_ONLY_WITH_IMMEDIATE, pad count, ICRC); (-1, 0) for none."""
    if not payload or payload[0] not in SEND_OPCODES:
        return -1, 0
    dlen = max(len(payload) - 4, 0)
    start = 16 if payload[0] == 0x05 else 12
    if dlen < start:
        return -1, 0
    pad = (payload[1] >> 4) & 3
    if dlen - start < pad:
        return -1, 0
    return start, dlen - pad - start


def frame_header(src: str, dst: str, sport: int, dport: int, length: int) -> bytes:
    """Ethernet/IPv4/UDP in front of a RoCEv2 UDP payload of ``length`` bytes, as the soft
    devices send it (the twin of frame_header in native/eventenc.c)."""
    full = ipv4_udp_frame(mac(src), mac(dst), ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), sport, dport, bytes(length))
    return full[:FRAME_HDR]


def _event_ts(t, offset: int) -> int | None:
    """int(t * 1e9) + offset, when t is an exact float or int and it fits in 64 bits."""
    if type(t) is float:
        d = t
    elif type(t) is int:
        try:
            d = float(t)
        except OverflowError:
            return None
    else:
        return None
    d *= 1e9
    if not math.isfinite(d) or d >= 9.2e18 or d <= -9.2e18:
        return None
    s = int(d) + offset
    return s if _INT64[0] <= s <= _INT64[1] else None


class Spool:
    """See the module docstring; ``make_spool`` picks this or the compiled one."""

    def __init__(self, header: bytes, frame_iface: int, event_iface: int, offset_ns: int,
                 special_kinds: frozenset, message_kinds: frozenset) -> None:  # fmt: skip
        self.header = bytes(header)
        self.frame_iface, self.event_iface, self.offset_ns = frame_iface, event_iface, offset_ns
        self.special_kinds, self.message_kinds = special_kinds, message_kinds
        self.seq = 0
        self._entries: list[list] = []  # [ts, seq, iface, data, comments | None, key_off, key_len, bytes cut off]
        self._headers: dict[tuple, bytes] = {}

    @property
    def pending(self) -> int:
        return len(self._entries)

    def next_seq(self) -> int:
        self.seq += SEQ_STEP
        return self.seq

    def add(self, seq: int, ts: int, iface: int, data, comments: list[str] | None = None, key_off: int = -1) -> None:
        if not _INT64[0] <= ts <= _INT64[1]:
            raise OverflowError("add: ts does not fit in 64 bits")
        data = bytes(data)
        if comments is not None:
            if not isinstance(comments, list) or not all(isinstance(c, str) for c in comments):
                raise TypeError("add: comments is a list of str or None")
        key = (key_off, len(data) - key_off) if 0 <= key_off <= len(data) else (-1, 0)
        self._entries.append([ts, seq, iface, data, list(comments) if comments else None, *key, 0])

    def find(self, key: bytes) -> int:
        key = bytes(key)
        best = -1
        for e in self._entries:
            if e[5] >= 0 and e[6] == len(key) and e[1] > best and e[3][e[5] : e[5] + e[6]] == key:
                best = e[1]
        return best

    def comment(self, seq: int, text: str) -> bool:
        if not isinstance(text, str):
            raise TypeError("comment: text is a str")
        for e in reversed(self._entries):
            if e[1] == seq:
                if e[4] is None:
                    e[4] = []
                if text not in e[4]:
                    e[4].append(text)
                return True
        return False

    def take(self, limit: int | None = None) -> tuple[bytes, int]:
        self._entries.sort(key=lambda e: (e[0], e[1]))
        cut = len(self._entries)
        if limit is not None:
            cut = next((i for i, e in enumerate(self._entries) if e[0] > limit), cut)
        out = []
        for ts, _, iface, data, comments, _, _, cut_off in self._entries[:cut]:
            text = "\n".join(comments).encode("utf-8", "replace")[:MAX_COMMENT] if comments else None
            out.append(epb_block(iface, ts, data, text, len(data) + cut_off))
        del self._entries[:cut]
        return b"".join(out), cut

    def write(self, fd, limit: int | None = None) -> int:
        """take(limit), written to a file descriptor (or an object with fileno())."""
        data, count = self.take(limit)
        fd = fd if isinstance(fd, int) else fd.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return count

    # ------------------------------------------------------------------ ingest

    def ingest(self, items: list, local_addrs: set, last_rx: dict) -> tuple[int, int, list]:
        n_ev = n_fr = 0
        specials: list = []
        for item in items:
            if type(item) is bytes:  # a blob of the compiled engine's raw tap records
                n_fr += self._raw(item, local_addrs, specials)
                continue
            self.seq += SEQ_STEP
            if isinstance(item, Event):
                n_ev += self._event(item, self.seq, last_rx, specials)
            else:
                n_fr += self._frame(item, self.seq, local_addrs, specials)
        return n_ev, n_fr, specials

    def _raw(self, blob: bytes, local_addrs: set, specials: list) -> int:
        """The twin of ingest_raw in native/eventenc.c (the record layout: module.c tap_read_raw)."""
        from .recorder import Frame

        locals_ = set()
        for a in local_addrs:
            try:
                locals_.add(ipaddress.IPv4Address(a).packed) if strict_ipv4(a) else None
            except ValueError:
                pass
        n = 0
        pos = 0
        while pos + _TAPREC.size <= len(blob):
            size, direction, rlen, sport, dport, src, dst, length, orig, ts = _TAPREC.unpack_from(blob, pos)
            if size < _TAPREC.size or pos + size > len(blob):
                break
            rec, pos = blob[pos : pos + size], pos + size
            if _TAPREC.size + rlen + length > size or direction > 1:
                continue
            reason = rec[_TAPREC.size : _TAPREC.size + rlen]
            frame = rec[_TAPREC.size + rlen : _TAPREC.size + rlen + length]
            self.seq += SEQ_STEP
            if rlen:
                f = Frame("rx" if direction else "tx", ts, str(ipaddress.IPv4Address(src)), sport, str(ipaddress.IPv4Address(dst)), dport,
                          frame, reason.decode("utf-8", "replace"), orig if orig != length else None)  # fmt: skip
                specials.append((self.seq, f, None, None, None))
                continue
            if direction == 1 and src in locals_:
                continue
            if orig < length or orig > 65535 - 28:
                orig = length
            head = frame_header(str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)), sport, dport, orig)
            self._entries.append([ts, self.seq, self.frame_iface, head + frame, None, *self._frame_key(frame), orig - length])
            n += 1
        return n

    def _event(self, e: Event, seq: int, last_rx: dict, specials: list) -> int:
        fail = (seq, e, None, None, None)
        if type(e) is not Event:
            specials.append(fail)
            return 0
        ts = _event_ts(e.t, self.offset_ns)
        if ts is None:
            specials.append(fail)
            return 0
        try:
            record = self.header + _to_json_py(e).encode()
        except Exception:  # cannot be serialised: the recorder's Python path counts it
            specials.append(fail)
            return 0
        try:
            kind = e.kind
            if type(kind) is not str:
                raise TypeError
            special = kind in self.special_kinds
            rx = False
            if kind in self.message_kinds:
                if not isinstance(e.fields, dict):
                    raise TypeError
                d = dict.get(e.fields, "dir")
                rx = d is not None and bool(d == "rx")
            cause = last_rx.get(e.host) if special else None
            if rx:
                last_rx[e.host] = e
        except Exception:
            specials.append(fail)
            return 0
        if special:
            specials.append((seq, e, ts, record, cause))
            return 0
        self._entries.append([ts, seq, self.event_iface, record, None, -1, 0, 0])
        return 1

    def _frame(self, f, seq: int, local_addrs: set, specials: list) -> int:
        try:  # direction, dropped and src first: a receiver's copy we skip needs no more
            direction, dropped, src = f.direction, f.dropped, f.src
            fast = not dropped and type(direction) is str
            if fast and direction == "rx" and src in local_addrs:
                return 0  # we have the sender's copy
            if fast:
                tsv, sport, dst, dport, payload = f.timestamp_ns, f.sport, f.dst, f.dport, f.payload
        except Exception:
            fast = False
        if not (fast and type(payload) is bytes and len(payload) <= 65535 - 28 and strict_ipv4(src) and strict_ipv4(dst)
                and type(sport) is int and 0 <= sport <= 65535 and type(dport) is int and 0 <= dport <= 65535
                and type(tsv) is int and _INT64[0] <= tsv <= _INT64[1]):  # fmt: skip
            specials.append((seq, f, None, None, None))
            return 0
        length = getattr(f, "length", None)  # the frame on the wire, when the tap kept only its start
        orig = length if type(length) is int and len(payload) < length <= 65535 - 28 else len(payload)
        self._entries.append([tsv, seq, self.frame_iface, self.frame_header(src, dst, sport, dport, orig) + payload,
                              None, *self._frame_key(payload), orig - len(payload)])  # fmt: skip
        return 1

    @staticmethod
    def _frame_key(payload: bytes) -> tuple[int, int]:
        off, n = send_key(payload)
        return (FRAME_HDR + off, n) if off >= 0 else (-1, 0)

    def frame_header(self, src: str, dst: str, sport: int, dport: int, length: int) -> bytes:
        key = (src, dst, sport, dport, length)
        head = self._headers.get(key)
        if head is None:  # depends only on the addresses and the length (no UDP checksum): build once
            if len(self._headers) > 4096:
                self._headers.clear()
            head = self._headers[key] = frame_header(src, dst, sport, dport, length)
        return head


# a raw tap record's header (native/softroce/module.c tap_read_raw): size, direction, reason
# length, ports, addresses (network order), captured and wire length, timestamp
_TAPREC = TAPREC


def make_spool(native: bool | None, *args):
    """The compiled Spool when it is built (or ``native`` is True: then it must be), else this twin."""
    mod = native_encoder()
    if native is True and mod is None:
        raise RuntimeError("the compiled event encoder is not built: native/build_eventenc.sh")
    if mod is not None and native is not False:
        if hasattr(mod, "set_frame_factory"):
            from .recorder import Frame

            mod.set_frame_factory(Frame)  # what a dropped frame of a raw tap blob becomes
        return mod.Spool(*args), mod.drain
    return Spool(*args), drain
