"""Each connection end's cursors as the CDCs on the wire show them, for what a capture
cannot see directly (dissectors/derive.py).

What a sender writes again after a failover: a link that fails may have lost data whose
CDC never completed, so the sender goes back (the kernel's smc_switch_cursor) to the
producer cursor of its last completed CDC, or to where the peer says it has read, if that
is further. Its failover-validation CDC carries the kernel's tx_cdc_seq_fin: the completed
send's ctrl_seq, which smc_cdc_add_pending_send takes before smc_cdc_msg_send numbers the
CDC, so one less than that CDC's own sequence number. The distance from there to the
furthest producer cursor it announced is what its next WRITEs send a second time; the stack reports it as a ``conn.cursor`` event
with ``rewound``, and a capture gives the same event, so that smctop and ``summary`` do not
count those bytes twice.

What a receiver learns from a CDC: the sender's producer cursor (how far it wrote) and
consumer cursor (how far it read), and so the room left in the sender's RMB; the stack
reports that as the receiver's ``conn.cursor`` event (side rx), and smctop counts what an
end received from it.

Pure: fed each CDC as it was captured, with the RMB sizes the CLC messages announced.
"""

from __future__ import annotations

from collections import OrderedDict

from stack.wire.cdc import CdcMessage, Cursor

KEEP = 256  # CDCs remembered per sender: a validation names one a send queue's depth back at most
WRAP = 1 << 16


def _ahead(old: Cursor, new: Cursor, size: int) -> int:
    """Bytes from ``old`` forward to ``new`` in a ring of ``size``; 0 when not ahead."""
    d = ((new.wrap - old.wrap) % WRAP) * size + new.count - old.count
    return d if 0 < d < WRAP * size // 2 else 0


class _Sender:
    def __init__(self) -> None:
        self.furthest: Cursor | None = None
        self.by_seqno: OrderedDict[int, Cursor] = OrderedDict()


class WireCursors:
    def __init__(self) -> None:
        self.senders: dict[tuple[str, int], _Sender] = {}
        self.rmb: dict[int, dict[str, int]] = {}  # conn -> host -> the size of that host's RMB
        self.read_to: dict[int, dict[str, Cursor]] = {}  # conn -> host -> its consumer cursor, as its CDCs said
        self.last: dict[tuple[str, int], tuple[Cursor, Cursor]] = {}  # (sender, conn) -> its last CDC's cursors

    def rmb_size(self, conn: int, host: str, size: int) -> None:
        self.rmb.setdefault(conn, {})[host] = size

    def cdc(self, host: str, conn: int, msg: CdcMessage) -> tuple[int, Cursor] | None:
        """A CDC ``host`` sent for ``conn``. For its failover-validation CDC: the bytes it
        will write again and the producer cursor it goes back to; None when nothing goes
        again or the capture cannot tell (the CDC it names, or the peer's RMB size, unknown)."""
        sender = self.senders.get((host, conn))
        if sender is None:
            sender = self.senders[(host, conn)] = _Sender()
        size = _other(self.rmb.get(conn), host) or 0  # the peer's RMB, which this end writes into
        if not msg.failover_validation:
            self.read_to.setdefault(conn, {})[host] = msg.cons
            sender.by_seqno[msg.seqno] = msg.prod
            sender.by_seqno.move_to_end(msg.seqno)
            if len(sender.by_seqno) > KEEP:
                sender.by_seqno.popitem(last=False)
            if sender.furthest is None or not size or _ahead(sender.furthest, msg.prod, size):
                sender.furthest = msg.prod
            return None
        back_to = sender.by_seqno.get((msg.seqno + 1) & 0xFFFF)  # the completed CDC: the one after the number named
        if back_to is None or sender.furthest is None or not size:
            return None
        read = _other(self.read_to.get(conn), host)
        if read is not None and _ahead(back_to, read, size):  # the peer read further: that is not sent again
            back_to = read
        again = _ahead(back_to, sender.furthest, size)
        return (again, back_to) if again else None

    def received(self, host: str, conn: int, msg: CdcMessage) -> dict | None:
        """The receiver's view of a CDC ``host`` sent (call after ``cdc``): the fields of its
        ``conn.cursor`` event, or None when the CDC moved neither cursor or the receiver's
        side is unknown. ``peer_rmbe_space``: the room the receiver has in the sender's RMB
        (its size less what the receiver wrote there and the sender has not read)."""
        if msg.failover_validation:
            return None
        moved = (msg.prod, msg.cons)
        if self.last.get((host, conn)) == moved:
            return None
        self.last[(host, conn)] = moved
        sizes = self.rmb.get(conn) or {}
        size = sizes.get(host)  # the sender's RMB, which the receiver writes into
        receiver = next((h for h in sizes if h != host), None)
        if not size or receiver is None:
            return None
        wrote = self.senders.get((receiver, conn))
        unread = _ahead(msg.cons, wrote.furthest, size) if wrote is not None and wrote.furthest is not None else 0
        return {"receiver": receiver, "side": "rx", "prod": msg.prod, "cons": msg.cons, "peer_rmbe_space": size - unread}


def _other(by_host: dict | None, host: str):
    """The value of the connection's other end (a connection has two)."""
    for h, v in (by_host or {}).items():
        if h != host:
            return v
    return None
