"""The data path sampled for a subscriber that does not need every event of it.

A stack running request/response emits several data-path events a round trip on each side
(cursor moves, a CDC each way, an RDMA WRITE, the RMB's fill): tens of thousands a second,
each built in Python. A live view (smctop attached to a control socket) needs what they add
up to, not each of them: building them cost the watched stacks half their rate, and parsing
them cost smctop more CPU than the traffic it watched. A subscription with ``coalesce`` set
is *sampled*: the bus builds no data-path event for it (``EventBus.data_events`` stays
false) and only notes which connections moved (``EventBus.touch``); at the end of each
interval the :class:`Sampler` reads those connections and writes, per connection, the
events it would have had last, with ``coalesced`` counting the ones they stand for (from the
connection's own counters: CDCs sent and received, RDMA WRITEs, CDCs that moved a cursor,
reads, times the peer's RMB filled up; an ``rdma.write``'s ``length`` is the bytes written
since the last sample).

Every other event comes as it happened, and a sample of its connection right after it (so a
connection's progress is told by its close, after the conn.mode that says its RMB's size),
and so do the data-path events that mark something: a CDC that closes, aborts or carries
urgent data, and a cursor move a failover caused; the stack builds those for any listener
(and the sample leaves them out of its counts). Cursors are positions, so the last one of an interval
says where the connection got to; the bytes in between are the difference, which readers
already compute.
"""

from __future__ import annotations

from stack.events import Event
from stack.wire.cdc import Cursor
from stack.wire.fields import cursor_text as _c

# what a connection had at its last sample: RDMA WRITEs and bytes written, CDCs sent and
# received, our producer cursor, the peer's as received, our consumer cursor (what the
# application had read), and its counts of CDCs that moved a cursor, reads and RMB fill-ups
_NOTHING = (0, 0, 0, 0, Cursor(), Cursor(), None, 0, 0, 0)


class Sampler:
    """The connections the data path moved since the last sample (``touched``, filled by the
    bus), turned into events by :meth:`sample`."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.touched: dict[int, object] = {}  # connection id -> the connection (EventBus.touch)
        self._last: dict[int, tuple] = {}  # connection id -> what its last sample told
        # CDCs that went as events of their own (marks_something) since a connection's last
        # sample: its counters hold them, its next sample leaves them out
        self._passed: dict[tuple[int, str], int] = {}

    def sample(self, now: float, conn_id: int | None = None) -> list[Event]:
        """Events for every touched connection (or for ``conn_id`` alone, when touched), dated
        ``now``: the connection as it is, so they come after every event emitted before."""
        if conn_id is not None:
            conn = self.touched.pop(conn_id, None)
            return self._events(conn, now) if conn is not None else []
        out: list[Event] = []
        touched, self.touched = self.touched, {}
        for conn in touched.values():
            out += self._events(conn, now)
        return out

    def passed(self, conn_id: int, direction: str) -> None:
        """A CDC of the connection went as an event of its own."""
        key = (conn_id, direction)
        self._passed[key] = self._passed.get(key, 0) + 1

    def forget(self, conn_id: int) -> None:
        """The connection closed and was sampled: what it had told is not needed again."""
        self._last.pop(conn_id, None)
        self.touched.pop(conn_id, None)
        self._passed.pop((conn_id, "tx"), None)
        self._passed.pop((conn_id, "rx"), None)

    def _events(self, c, now: float) -> list[Event]:
        writes, written, sent, received, tx_prod, rx_prod, cons, moves, reads, blocked = self._last.get(c.id, _NOTHING)
        cdcs_tx = c.cdc_sent - sent  # every CDC sent told its cursors (conn.cursor tx), whichever went as an event
        sent += self._passed.pop((c.id, "tx"), 0)
        received += self._passed.pop((c.id, "rx"), 0)
        lgr, link = c.lgr, c.link
        host, lgr_name, link_id = c.ctx.name, lgr.name if lgr else None, link.link_id if link else None
        out: list[Event] = []

        def ev(kind: str, n: int, **fields) -> None:
            if n > 1:
                fields["coalesced"] = n
            out.append(Event(now, kind, host, lgr_name, link_id, c.id, fields))

        n = c.rdma_writes - writes
        if n > 0:
            ev("rdma.write", n, length=max(0, c.bytes_sent - written))
        # a CDC that went as an event of its own is not counted here, but the cursors it moved
        # are told all the same (a closing CDC may carry the last bytes)
        n = c.cdc_sent - sent
        if n > 0:  # the last CDC sent carried our producer cursor and the consumer cursor we confirmed
            ev("cdc.msg", n, dir="tx", seqno=c.tx_seq, token=c.peer_token, prod=_c(c.tx_prod), cons=_c(c.cons_confirmed))
        if cdcs_tx > 0 or c.tx_prod != tx_prod:
            ev("conn.cursor", max(cdcs_tx, 1), side="tx", prod=_c(c.tx_prod), cons=_c(c.cons_confirmed), sent=_c(c.tx_sent), fin=_c(c.tx_fin))
        n = c.cdc_received - received
        if n > 0:
            ev("cdc.msg", n, dir="rx", seqno=c.rx_seq, token=c.token, prod=_c(c.rx_prod), cons=_c(c.rx_cons))
        # the counts of the connection's own counters: a CDC that moved no cursor told nothing
        n = c.rx_moves - moves
        if n > 0 or c.rx_prod != rx_prod:
            ev("conn.cursor", max(n, 1), side="rx", prod=_c(c.rx_prod), cons=_c(c.rx_cons), bytes_to_rcv=c.bytes_to_rcv,
               peer_rmbe_space=c.peer_rmbe_space)  # fmt: skip
        n += c.rmb_blocked - blocked
        if n > 0 or c.rx_prod != rx_prod:
            ev("conn.rmb", max(n, 1), fill=c.bytes_to_rcv, size=c.rmb_size, write_blocked=c.write_blocked, peer_write_blocked=c.peer_write_blocked)
        n = c.reads - reads
        if n > 0 or ((c.cons != cons) if cons is not None else c.bytes_received):  # the application read
            ev("conn.cursor", max(n, 1), side="rx", cons=_c(c.cons), prod=_c(c.rx_prod), bytes_to_rcv=c.bytes_to_rcv)
        self._last[c.id] = (c.rdma_writes, c.bytes_sent, c.cdc_sent, c.cdc_received, c.tx_prod, c.rx_prod, c.cons, c.rx_moves, c.reads, c.rmb_blocked)
        return out
